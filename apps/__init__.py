"""`nac.apps`: the `nac` command and the task apps (image classification, sentence embeddings)."""
