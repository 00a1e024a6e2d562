"""Quantised export: BitLinear stored losslessly in 2 bits, int8/ternary policies, real MiniLM int8,
and the real-data ternary classifier example."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import nac
from conftest import assert_close, have
from nac.apps.cli import describe
from nac.compile import BitLinear, ternarize

ROOT = Path(__file__).resolve().parents[2]


class Net(nn.Module):
    def __init__(self, k=130):
        super().__init__()
        self.emb = nn.Embedding(40, k)
        self.up = nn.Linear(k, 256)
        self.down = nn.Linear(256, k)
        self.head = nn.Linear(k, 40, bias=False)
        self.norm = nn.LayerNorm(k)

    def forward(self, ids):
        h = self.emb(ids)
        h = self.norm(h + self.down(torch.relu(self.up(h))))
        return self.head(h)


@pytest.mark.parametrize("shape", [(3, 7), (1, 5)], ids=["prefill-sized", "decode-sized"])
def test_bitlinear_export_is_ternary_and_exact(tmp_path, shape):
    """21 rows dequantise into BLAS; 5 rows run the compressed-weight kernel (table lookup on
    AVX-512 machines)."""
    torch.manual_seed(0)
    model = ternarize(Net(), include=["up", "down"]).eval()
    assert isinstance(model.up, BitLinear) and type(model.head) is nn.Linear
    ids = torch.randint(0, 40, shape)
    path = nac.export(model, (ids,), tmp_path / "bit.nac")
    info = describe(path)
    q = {x["name"]: x for x in info["quantized"]}
    assert {x["scheme"] for x in q.values()} == {"ternary"} and len(q) == 2
    assert all(x["bits_per_weight"] <= 2.1 for x in q.values())
    with torch.no_grad():
        want = model(ids).numpy()
    got = nac.load(path).run([ids.numpy()])[0]
    assert_close(got, want, 1e-5, "BitLinear net")


def test_bitlinear_trains_with_straight_through_gradients():
    torch.manual_seed(0)
    layer = BitLinear(16, 4)
    x = torch.randn(8, 16)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    with torch.no_grad():
        layer.eval()
        w = layer.quantized_weight()
        s = layer.weight.abs().mean()
        assert set(torch.unique(torch.round(w / s)).tolist()) <= {-1.0, 0.0, 1.0}


def test_ternarize_needs_a_match():
    with pytest.raises(nac.NacExportError, match="no nn.Linear layer matches"):
        ternarize(Net(), include="nothing.*")


@pytest.mark.parametrize("spec, want", [
    ("int8", {"emb.weight": "int8", "up.weight": "int8", "down.weight": "int8", "head.weight": "int8"}),
    ("ternary", {"emb.weight": "int8", "up.weight": "ternary", "down.weight": "ternary", "head.weight": "int8"}),
    ({"up": "ternary", "down": "int8+a8"}, {"up.weight": "ternary", "down.weight": "int8+a8"}),
])
def test_policies(tmp_path, spec, want):
    torch.manual_seed(0)
    model = Net().eval()
    ids = torch.randint(0, 40, (2, 5))
    path = nac.export(model, (ids,), tmp_path / "q.nac", quantize=spec)
    m = nac.load(path)
    got = {n: v.quant["scheme"] for n, v in m.graph.values.items() if v.quant}
    a8 = {n.inputs[1] for n in m.graph.nodes if n.op == "linear" and n.attrs.get("activation_quant") == "int8"}
    got = {n: s + ("+a8" if n in a8 else "") for n, s in got.items()}
    assert got == want
    with torch.no_grad():
        ref = model(ids).numpy()
    out = m.run([ids.numpy()])[0]
    assert np.abs(out - ref).max() <= 0.35 * np.abs(ref).max()  # quantised, but still the same function


def test_quantising_a_layer_that_cannot_be_quantised(tmp_path):
    with pytest.raises(nac.NacExportError, match="cannot quantise 'norm' \\(layer_norm"):
        nac.export(Net().eval(), (torch.randint(0, 40, (2, 5)),), tmp_path / "q.nac", quantize={"norm": "int8"})
    with pytest.raises(nac.NacExportError, match="unknown quantisation scheme 'int4'"):
        nac.export(Net().eval(), (torch.randint(0, 40, (2, 5)),), tmp_path / "q.nac", quantize="int4")
    assert list(tmp_path.iterdir()) == []


QUERIES = ["How do I cook pasta?", "What is the weather like today?", "Which animal is the fastest on land?"]
DOCS = ["Boil the spaghetti in salted water for ten minutes.", "The cheetah can run faster than any other land animal.",
        "It will be sunny with a light breeze this afternoon.", "The stock market closed higher on Friday.",
        "A recipe for tomato sauce with garlic and basil.", "Heavy rain is expected over the weekend.",
        "Lions hunt in groups on the savanna.", "Python is a popular programming language."]


def test_minilm_int8(minilm_nac, sbert, tmp_path):
    from nac.apps import tasks

    path, job = minilm_nac
    q8 = nac.export(job.module, job.args, tmp_path / "minilm-int8.nac", kwargs=job.kwargs,
                    dynamic_shapes=job.dynamic_shapes, metadata=job.metadata, tokenizer=job.tokenizer, quantize="int8")
    assert q8.stat().st_size <= 0.3 * path.stat().st_size
    model = nac.load(q8)
    sentences = QUERIES + DOCS
    got = tasks.embed_sentences(model, sentences)
    want = sbert.encode(sentences, convert_to_numpy=True)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.995, cos
    nq = len(QUERIES)
    rank = lambda e: np.argsort(-(e[:nq] @ e[nq:].T), axis=1)[:, :3]  # noqa: E731
    np.testing.assert_array_equal(rank(got), rank(want))


@pytest.mark.skipif(not have("sklearn"), reason="needs scikit-learn for its digits data set")
def test_ternary_digits_example_within_two_points():
    sys.path.insert(0, str(ROOT / "examples"))
    from train_ternary_digits import run

    r = run(epochs=60, seed=0)
    assert r["ternary_nac"] == r["ternary"]  # the engine reproduces the torch ternary model's predictions
    assert r["fp32"] - r["ternary"] <= 0.02, r
    assert sorted(r["schemes"].values()) == ["ternary", "ternary"]
