"""`NacPredictor`: a `.nac` model as a Ray Data ``map_batches`` class (one model per actor).

    import ray
    from nac.integrations.ray import NacPredictor

    ds = ray.data.read_json("corpus.jsonl", lines=True)
    ds = ds.map_batches(NacPredictor, fn_constructor_kwargs={"path": "minilm.nac"},
                        batch_size=64, concurrency=4)
    ds.write_parquet("embeddings/")

The class itself needs neither Ray nor torch: it is a callable over column batches (dicts of
numpy arrays), so `nac batch` uses the same class in local worker processes, and any other
framework that maps over column batches can too. Ray is only needed to run the pipeline
(``pip install "nac[scale]"``).
"""
from __future__ import annotations

import io
import json

import numpy as np

from nac.errors import NacError, NacInputError

__all__ = ["NacPredictor", "OUTPUTS"]

#: the columns a predictor adds, by task
OUTPUTS = {
    "feature-extraction": ("embedding",),
    "text-classification": ("label", "score"),
    "image-classification": ("label", "score", "class"),
    "fill-mask": ("token_str", "score", "sequence"),
    "text-generation": ("completion",),
}


class NacPredictor:
    """Runs a `.nac` model over a batch of rows; loads the file once (per actor or process).

    Input columns: ``text`` (or the column named by ``column``) for text tasks; for
    image-classification, ``bytes`` (the encoded image, as Ray's ``read_binary_files`` gives it)
    or ``path``. Every input column except ``bytes`` is passed through; the task's `OUTPUTS`
    columns are added: ``embedding`` (float32 vectors), ``label``/``score`` (the top class),
    ``class`` (its index), ``token_str``/``score``/``sequence`` (the best filler of the first mask),
    ``completion`` (greedy, ``max_new_tokens``).

    Args:
        path: the `.nac` file (every node of a cluster must see it at this path).
        column: the input text column (default ``text``).
        max_new_tokens: text-generation only.
    Raises:
        NacError: the file's task has no batch form (see `OUTPUTS`), or an input column is missing.
    """

    def __init__(self, path, column: str = "text", max_new_tokens: int = 32):
        import nac

        self.model = nac.load(path)
        self.task = self.model.metadata.get("task")
        if self.task not in OUTPUTS:
            raise NacError(f"{path}: task {self.task!r} has no batch form (supported: {', '.join(OUTPUTS)})")
        self.column, self.max_new_tokens = column, max_new_tokens

    def __call__(self, batch: dict) -> dict:
        from nac.apps import tasks

        out = {k: np.asarray(v) for k, v in batch.items() if k != "bytes"}
        if self.task == "image-classification":
            preds = tasks.classify_pixels(self.model, self._pixels(batch), 1)
            out["label"] = np.array([p[0].label for p in preds], dtype=object)
            out["score"] = np.array([p[0].probability for p in preds], np.float64)
            out["class"] = np.array([p[0].index for p in preds], np.int64)
            return out
        if self.column not in batch:
            raise NacError(f"the batch has no column {self.column!r} (columns: {sorted(batch)})")
        texts = [str(t) for t in batch[self.column]]
        if self.task == "feature-extraction":
            emb = tasks.embed_sentences(self.model, texts).astype(np.float32)
            out["embedding"] = np.array(list(emb) + [None], dtype=object)[:-1]  # a column of vectors
        elif self.task == "text-classification":
            labels = tasks.classify_texts(self.model, texts)
            out["label"] = np.array([r[0].label for r in labels], dtype=object)
            out["score"] = np.array([r[0].score for r in labels], np.float64)
        elif self.task == "fill-mask":
            fills = [tasks.fill_mask(self.model, [t], 1)[0][0][0] for t in texts]
            out["token_str"] = np.array([f.token_str for f in fills], dtype=object)
            out["score"] = np.array([f.score for f in fills], np.float64)
            out["sequence"] = np.array([f.sequence for f in fills], dtype=object)
        else:
            from nac.apps.generate import generate_text

            out["completion"] = np.array([generate_text(self.model, t, max_new_tokens=self.max_new_tokens)
                                          for t in texts], dtype=object)
        return out

    def _pixels(self, batch: dict) -> np.ndarray:
        from nac.apps import tasks

        prep = self.model.metadata["preprocess"]
        if "bytes" in batch:
            return np.stack([tasks.load_image(io.BytesIO(bytes(b)), prep) for b in batch["bytes"]])
        if "path" in batch:
            return np.stack([tasks.load_image(str(p), prep) for p in batch["path"]])
        raise NacInputError(f"an image batch needs a 'bytes' or 'path' column (columns: {sorted(batch)})")

    def __repr__(self) -> str:
        return f"NacPredictor({json.dumps(str(self.model.path))}, task={self.task!r})"
