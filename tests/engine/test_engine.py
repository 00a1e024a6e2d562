"""Engine behaviour: input checking with clear errors, plan reuse, memory planning, no torch at run time."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import nac
from nac.format.container import write_nac
from nac.format.graph import Graph, Node


@pytest.fixture
def two_input_model(tmp_path):
    """out = softmax(a @ W + b_in) with a: [batch, seq, 4] float32, ids: [batch, seq] int64."""
    g = Graph()
    a = g.add_value("a", "float32", ("batch", "seq", 4))
    ids = g.add_value("ids", "int64", ("batch", "seq"))
    g.inputs += [a, ids]
    w = g.add_param("w", np.ones((3, 4), np.float32))
    emb = g.add_param("emb", np.arange(30, dtype=np.float32).reshape(10, 3))
    h = g.add_value("h", "float32", ("batch", "seq", 3))
    e = g.add_value("e", "float32", ("batch", "seq", 3))
    s = g.add_value("s", "float32", ("batch", "seq", 3))
    out = g.add_value("out", "float32", ("batch", "seq", 3))
    g.nodes += [Node("linear", [a, w, ""], [h]), Node("embedding", [emb, ids], [e]), Node("add", [h, e], [s]),
                Node("softmax", [s], [out], {"dim": 2})]
    g.outputs.append(out)
    g.dims = {"batch": {"min": 1, "max": 4}, "seq": {"min": 1, "max": 16}}
    return nac.load(write_nac(tmp_path / "two.nac", g, {}))


def feeds(b=2, s=5):
    return {"a": np.random.rand(b, s, 4).astype(np.float32), "ids": np.random.randint(0, 10, (b, s))}


def test_dict_and_sequence_inputs(two_input_model):
    f = feeds()
    by_name = two_input_model.run(f)[0]
    by_order = two_input_model.run([f["a"], f["ids"]])[0]
    np.testing.assert_array_equal(by_name, by_order)


def test_outputs_are_owned_by_the_caller(two_input_model):
    f = feeds()
    first = two_input_model.run(f)[0]
    keep = first.copy()
    two_input_model.run(feeds())
    np.testing.assert_array_equal(first, keep)


@pytest.mark.parametrize("bad, match", [
    ({"a": 1}, "missing input"),
    ({"b": 1, "a": 1, "ids": 1}, "unknown input name"),
])
def test_wrong_names(two_input_model, bad, match):
    with pytest.raises(nac.NacInputError, match=match):
        two_input_model.run(bad)


def test_wrong_count(two_input_model):
    with pytest.raises(nac.NacInputError, match="1 input\\(s\\) given; two.nac takes 2"):
        two_input_model.run([np.zeros((1, 1, 4), np.float32)])


def test_wrong_dtype(two_input_model):
    f = feeds()
    f["ids"] = f["ids"].astype(np.float32)
    with pytest.raises(nac.NacInputError, match="input 'ids' has dtype float32; the model expects int64"):
        two_input_model.run(f)


def test_wrong_rank(two_input_model):
    f = feeds()
    f["a"] = f["a"][0]
    with pytest.raises(nac.NacInputError, match="input 'a' has rank 2"):
        two_input_model.run(f)


def test_static_dim_mismatch(two_input_model):
    f = feeds()
    f["a"] = np.zeros((2, 5, 3), np.float32)
    with pytest.raises(nac.NacInputError, match="input 'a' axis 2 has size 3; the model was exported with size 4"):
        two_input_model.run(f)


def test_inconsistent_named_dim(two_input_model):
    f = feeds()
    f["ids"] = f["ids"][:, :3]
    with pytest.raises(nac.NacInputError, match="axis 1 \\(seq\\) has size 3, but another input gave seq = 5"):
        two_input_model.run(f)


def test_dim_outside_range(two_input_model):
    with pytest.raises(nac.NacInputError, match="seq = 17 is outside the range .*\\[1, 16\\]"):
        two_input_model.run(feeds(2, 17))


def test_token_id_out_of_range(two_input_model):
    f = feeds()
    f["ids"][0, 0] = 10
    with pytest.raises(nac.NacInputError, match="id 10 is outside the table of 10 rows"):
        two_input_model.run(f)


def test_int32_ids_and_float64_accepted(two_input_model):
    f = feeds()
    want = two_input_model.run(f)[0]
    got = two_input_model.run({"a": f["a"].astype(np.float64), "ids": f["ids"].astype(np.int32)})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_plans_are_cached_and_arena_reused(two_input_model):
    two_input_model.run(feeds(2, 5))
    with two_input_model.session({"a": (2, 5, 4), "ids": (2, 5)}) as p1:
        pass
    two_input_model.run(feeds(2, 5))
    with two_input_model.session({"a": (2, 5, 4), "ids": (2, 5)}) as p2:
        assert p2 is p1  # an idle plan for the same shapes is reused
        with two_input_model.session({"a": (2, 5, 4), "ids": (2, 5)}) as p3:
            assert p3 is not p1  # while one is checked out, another caller gets its own
    assert p1.arena_bytes < p1.naive_bytes  # buffers of dead values are reused


def test_idle_plan_pool_is_bounded_while_plans_are_checked_out(two_input_model):
    """A plan checked out while other shapes are returned: the pool evicts the least recently
    returned plans and stays at MAX_IDLE_PLANS (this raised IndexError when a checked-out shape
    left an empty entry behind, seen with threads sharing a model in CI)."""
    from nac.engine.model import MAX_IDLE_PLANS

    m = two_input_model
    shapes = [{"a": (b, s, 4), "ids": (b, s)} for b in (1, 2, 3, 4) for s in (2, 3, 5)]  # 12 > MAX_IDLE_PLANS
    with m.session(shapes[0]):
        pass
    with m.session(shapes[0]):  # the only idle plan for this shape is checked out ...
        for sh in shapes[1:]:  # ... while more shapes than the pool holds come back
            with m.session(sh):
                pass
    assert sum(map(len, m._plans.values())) == MAX_IDLE_PLANS and all(m._plans.values())
    f = feeds(2, 5)
    np.testing.assert_array_equal(m.run(f)[0], m.run(f)[0])


def test_threads_over_more_shapes_than_the_pool_holds(two_input_model):
    """8 threads, 400 calls over 12 input shapes: plans are created, reused and evicted
    concurrently, and every call gets its sequential answer."""
    from concurrent.futures import ThreadPoolExecutor

    m = two_input_model
    rng = np.random.default_rng(3)
    cases = []
    for k in range(400):
        b, s = int(rng.integers(1, 5)), int(rng.choice([2, 3, 5]))
        cases.append({"a": rng.random((b, s, 4), dtype=np.float32), "ids": rng.integers(0, 10, (b, s))})
    want = [m.run(c)[0] for c in cases]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda c: m.run(c)[0], cases))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_run_never_imports_torch(two_input_model):
    code = ("import sys, numpy as np, nac\n"
            f"m = nac.load({str(two_input_model.path)!r})\n"
            "m.run({'a': np.zeros((1, 2, 4), np.float32), 'ids': np.zeros((1, 2), np.int64)})\n"
            "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'transformers'))\n"
            "assert not bad, bad\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_profile_times_every_step_and_computes_the_same(two_input_model):
    """`Plan.profile` (bench/profile_ops.py): one row per step, in order, and the plan's outputs
    afterwards are those of a plain run."""
    f = feeds(2, 5)
    want = two_input_model.run(f)[0]
    plan = two_input_model.plan({"a": (2, 5, 4), "ids": (2, 5)})
    for name, arr in f.items():
        plan.inputs[name][...] = arr
    rows = plan.profile(runs=3)
    assert [r["op"] for r in rows] == [s.op for s in plan.steps]
    assert all(r["ms"] >= 0 for r in rows)
    np.testing.assert_array_equal(plan.outputs[0], want)


@pytest.fixture
def view_model(tmp_path):
    """out = permute(x @ W.T, [0, 2, 1]) @ slice(x, 3 of 4 features) + flip(c): a view of the arena
    (permute), of the input (slice), and of a constant (flip), read by real kernels."""
    g = Graph()
    x = g.add_value("x", "float32", ("batch", 5, 4))
    g.inputs.append(x)
    w = g.add_param("w", np.arange(12, dtype=np.float32).reshape(3, 4) / 10)
    c = g.add_param("c", np.arange(9, dtype=np.float32).reshape(3, 3))
    h = g.add_value("h", "float32", ("batch", 5, 3))
    t = g.add_value("t", "float32", ("batch", 3, 5))
    xs = g.add_value("xs", "float32", ("batch", 5, 3))
    m = g.add_value("m", "float32", ("batch", 3, 3))
    cf = g.add_value("cf", "float32", (3, 3))
    out = g.add_value("out", "float32", ("batch", 3, 3))
    g.nodes += [Node("linear", [x, w, ""], [h]), Node("permute", [h], [t], {"perm": [0, 2, 1]}),
                Node("slice", [x], [xs], {"dim": 2, "start": 1, "end": 4, "step": 1}),
                Node("matmul", [t, xs], [m]), Node("flip", [c], [cf], {"dims": [1]}), Node("add", [m, cf], [out])]
    g.outputs.append(out)
    g.dims = {"batch": {"min": 1, "max": 4}}
    return nac.load(write_nac(tmp_path / "views.nac", g, {}))


def test_plan_data_locates_every_value(view_model):
    """Every `Tensor` (region, buffer, offset, shape, strides) addresses exactly the array the
    kernels are bound to; views name the buffer they alias; the model's answer is numpy's."""
    plan = view_model.plan({"x": (2, 5, 4)})
    x = np.random.default_rng(0).random((2, 5, 4), dtype=np.float32)
    plan.inputs["x"][...] = x
    plan.run()
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    c = np.arange(9, dtype=np.float32).reshape(3, 3)
    want = np.swapaxes(x @ w.T, 1, 2) @ x[:, :, 1:4] + c[:, ::-1]
    np.testing.assert_allclose(plan.outputs[0], want, rtol=1e-5)
    ts = plan.tensors
    assert (ts["t"].region, ts["t"].buffer, ts["t"].contiguous) == ("arena", "h", False)
    assert (ts["xs"].region, ts["xs"].buffer, ts["xs"].offset) == ("input", "x", 4)
    assert (ts["cf"].region, ts["cf"].buffer, ts["cf"].strides) == ("constant", "c", (12, -4))
    assert [s.op for s in plan.steps] == ["linear", "matmul", "add"]  # views are not steps
    for name, t in ts.items():
        a = plan.array(name)
        r = np.ndarray(t.shape, t.dtype, buffer=_storage(plan, t), offset=t.offset, strides=t.strides)
        assert r.__array_interface__["data"][0] == a.__array_interface__["data"][0], name
        assert r.strides == a.strides and r.shape == a.shape, name
        np.testing.assert_array_equal(r, a)


def _storage(plan, t):
    if t.region == "arena":
        return plan.arena
    base = plan.inputs[t.buffer] if t.region == "input" else plan.constants[t.buffer]
    return base.reshape(-1).view(np.uint8)


def test_plan_arena_buffers_never_overlap_while_live(two_input_model, view_model):
    """Two arena buffers whose live ranges intersect never share a byte, and each starts on a
    64-byte boundary of memory (the arena itself is aligned: numpy's own allocation is 16 bytes
    off as often as not)."""
    for model, shapes in ((two_input_model, {"a": (3, 7, 4), "ids": (3, 7)}), (view_model, {"x": (4, 5, 4)})):
        plan = model.plan(shapes)
        owners = [t for t in plan.tensors.values() if t.live is not None]
        assert owners
        assert plan.arena.ctypes.data % 64 == 0
        assert all(a.ctypes.data % 64 == 0 for a in plan.inputs.values() if a.size)
        for i, a in enumerate(owners):
            assert a.region == "arena" and a.buffer == a.name and a.offset % 64 == 0
            assert a.offset + a.nbytes <= plan.arena_bytes
            for b in owners[i + 1:]:
                if a.live[0] <= b.live[1] and b.live[0] <= a.live[1]:
                    assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset, (a, b)


def test_plan_steps_rerun_from_public_data(view_model):
    """Running each step's registry kernel on the arrays its `Step` names reproduces `run`."""
    from nac.engine.kernels import KERNELS

    plan = view_model.plan({"x": (3, 5, 4)})
    plan.inputs["x"][...] = np.random.default_rng(1).random((3, 5, 4), dtype=np.float32)
    plan.run()
    want = plan.outputs[0].copy()
    plan.arena[...] = 0
    for s in plan.steps:
        KERNELS[s.op]([plan.array(v) if v else None for v in s.inputs], [plan.array(v) for v in s.outputs], s.attrs)
    np.testing.assert_array_equal(plan.outputs[0], want)


def test_nac_info_plan_json(view_model, capsys):
    """`nac info --plan --json` prints `Plan.describe` for the example or given dimensions."""
    import json

    from nac.apps.cli import main

    assert main(["info", str(view_model.path), "--plan", "--shape", "batch=2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["dims"] == {"batch": 2}
    assert [s["op"] for s in d["steps"]] == ["linear", "matmul", "add"]
    by_name = {t["name"]: t for t in d["tensors"]}
    assert by_name["xs"]["region"] == "input" and by_name["xs"]["shape"] == [2, 5, 3]
    assert by_name["out"]["live"] == [5, 6]  # defined by node 5, alive until the caller copies it
    assert main(["info", str(view_model.path), "--plan"]) == 2  # batch is symbolic and has no example size
    assert "--shape batch=N" in capsys.readouterr().err


def test_channels_last_plan_matches_torch(tmp_path):
    """A small MobileNet-style graph (3x3 stem on the NCHW image, depthwise, 1x1, residual add,
    ReLU, global mean, and one convolution read by a reshape): the default plan stores the
    convolutions' outputs and the add NHWC, but not the one a reshape reads nor the graph's
    outputs; it agrees with torch and with the all-contiguous plan."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    p = {k: rng.standard_normal(s).astype(np.float32) * 0.3 for k, s in
         {"w0": (8, 3, 3, 3), "b0": (8,), "w1": (8, 1, 3, 3), "w2": (8, 8, 1, 1), "w3": (4, 8, 1, 1)}.items()}
    g = Graph()
    x = g.add_value("x", "float32", ("n", 3, 9, 11))
    g.inputs.append(x)
    prm = {k: g.add_param(k, v) for k, v in p.items()}
    v = {k: g.add_value(k, "float32", s) for k, s in {
        "a": ("n", 8, 5, 6), "d": ("n", 8, 5, 6), "e": ("n", 8, 5, 6), "r": ("n", 8, 5, 6), "y": ("n", 8, 5, 6),
        "m": ("n", 8, 1, 1), "z": ("n", 4, 5, 6), "zf": ("n", 120)}.items()}
    conv = lambda **a: {"stride": [1, 1], "padding": [0, 0, 0, 0], "dilation": [1, 1], "groups": 1, **a}
    g.nodes += [
        Node("conv2d", [x, prm["w0"], prm["b0"]], [v["a"]], conv(stride=[2, 2], padding=[1, 1, 1, 1], activation="relu6")),
        Node("conv2d", [v["a"], prm["w1"], ""], [v["d"]], conv(padding=[1, 1, 1, 1], groups=8, activation="relu")),
        Node("conv2d", [v["d"], prm["w2"], ""], [v["e"]], conv()),
        Node("add", [v["e"], v["a"]], [v["r"]]),
        Node("relu", [v["r"]], [v["y"]]),
        Node("mean", [v["y"]], [v["m"]], {"dims": [2, 3], "keepdim": True}),
        Node("conv2d", [v["y"], prm["w3"], ""], [v["z"]], conv()),
        Node("reshape", [v["z"]], [v["zf"]], {"shape": ["n", 120]}),
    ]
    g.outputs += [v["m"], v["zf"]]
    g.dims = {"n": {"min": 1, "max": 4}}
    model = nac.load(write_nac(tmp_path / "cnn.nac", g, {}))
    xin = rng.standard_normal((3, 3, 9, 11)).astype(np.float32)
    t = {k: torch.from_numpy(a) for k, a in p.items()}
    with torch.no_grad():
        a = F.relu6(F.conv2d(torch.from_numpy(xin), t["w0"], t["b0"], 2, 1))
        y = F.relu(F.conv2d(F.relu(F.conv2d(a, t["w1"], None, 1, 1, 1, 8)), t["w2"]) + a)
        want = [y.mean((2, 3), keepdim=True).numpy(), F.conv2d(y, t["w3"]).reshape(3, 120).numpy()]
    plan = model.plan({"x": xin.shape})
    cl = {name for name, tn in plan.tensors.items() if tn.strides is not None and len(tn.shape) == 4
          and not plan.array(name).flags.c_contiguous}
    assert cl == {"a", "d", "e", "r", "y"}
    for channels_last in (True, False):
        plan = model.plan({"x": xin.shape}, channels_last=channels_last)
        plan.inputs["x"][...] = xin
        plan.run()
        for got, w in zip(plan.outputs, want):
            np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5)
    for got, w in zip(model.run({"x": xin}), want):
        assert got.flags.c_contiguous
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quantize", [None, "int8+a8", "ternary+a8"])
def test_bound_steps_compute_what_their_kernels_compute(quantize, tmp_path, monkeypatch):
    """A plan's steps call their op's binder (`registry.binder`) where it has one: a Llama step
    graph (linear, rms_norm, rotary_embedding, attention over the KV cache), float32 or with
    quantised weights and int8 activations, gives bit-identical outputs with and without
    binders, for a decode step (one token after 7 cached) and prompts of 19 and 9 tokens (no cache);
    a bound linear still answers correctly after `NAC_GEMM`'s choice changes under it (it falls
    back to the kernel)."""
    transformers = pytest.importorskip("transformers", reason="the decoder is a transformers Llama")
    import functools

    from nac.apps.generate import _cache_shapes
    from nac.apps.sources import causal_lm
    from nac.engine import plan as P
    from nac.engine.kernels import KERNELS
    from nac.engine.kernels import attention as AT
    from nac.engine.kernels import linalg as L

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
                                   intermediate_size=96, vocab_size=80, max_position_embeddings=64)
    job = causal_lm(transformers.AutoModelForCausalLM.from_config(cfg).eval(), "llama")
    m = nac.load(nac.export(job.module, job.args, tmp_path / "l.nac", dynamic_shapes=job.dynamic_shapes,
                            metadata=job.metadata, quantize=quantize))
    gen = m.generation_config
    step = m.methods[gen.methods["step"]]
    rng = np.random.default_rng(0)
    for seq, past in ((1, 8), (19, 0), (9, 0)):
        shapes = {"input_ids": (1, seq), "attention_mask": (1, seq), **_cache_shapes(gen.cache, 1, past)}
        feeds = {"input_ids": rng.integers(0, 80, (1, seq)), "attention_mask": np.ones((1, seq), np.int64),
                 "past_mask": (np.arange(past) < past - 1)[None].astype(np.int64)}
        for name in ("past_keys", "past_values"):
            feeds[name] = rng.standard_normal(shapes[name]).astype(np.float32)
        outs = {}
        for bound in (True, False):
            with monkeypatch.context() as mp:
                if not bound:
                    mp.setattr(P, "BINDERS", {})
                plan = step.plan(shapes)
            kinds = {s.op for s in plan.steps if not (isinstance(s.call, functools.partial)
                                                      and s.call.func is KERNELS[s.op])}
            # a 9-token prompt's attention takes the blocked kernel, which copies, and a prompt's
            # quantised products dequantise into BLAS: those stay unbound
            want_kinds = {"rms_norm", "rotary_embedding"}
            if seq == 1 or quantize is None:
                want_kinds.add("linear")
            if seq == 1 or seq >= AT.TILED_MIN_ROWS:
                want_kinds.add("scaled_dot_product_attention")
            assert kinds == (want_kinds if bound else set())
            if bound and quantize and seq == 1:  # the quantised products themselves are bound
                from nac.engine.kernels.quant import QTensor

                assert any(isinstance(plan.constants.get(s.inputs[1]), QTensor)
                           and not isinstance(s.call, functools.partial) for s in plan.steps if s.op == "linear")
            for name, a in feeds.items():
                plan.inputs[name][...] = a
            plan.run()
            outs[bound] = [o.copy() for o in plan.outputs]
            if bound:
                with monkeypatch.context() as mp:
                    mp.setattr(L, "GEMM", "plain")  # the bound products now call the kernel
                    plan.run()
                for got, want in zip(plan.outputs, outs[True]):
                    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        for got, want in zip(outs[True], outs[False]):
            np.testing.assert_array_equal(got, want)


def _run_and_on_plain_gemm(plan, name: str, x, plain_too: bool, monkeypatch):
    """The plan's first output for input ``name`` = ``x``; with ``plain_too``, run again with every GEMM
    tile on the plain loop (``NAC_GEMM=plain``), which must agree within 1e-5."""
    from nac.engine.kernels import linalg as L

    plan.inputs[name][...] = x
    plan.run()
    out = plan.outputs[0].copy()
    if plain_too:
        with monkeypatch.context() as mp:
            mp.setattr(L, "GEMM", "plain")
            plan.run()
        np.testing.assert_allclose(plan.outputs[0], out, rtol=1e-5, atol=1e-5)
    return out


def test_bound_convolutions_compute_what_their_kernel_computes(tmp_path, monkeypatch):
    """An inverted-residual block after a stem and before a pooling head (1x1 expand, 3x3
    depthwise over 32 channels, 1x1 project with the skip connection in its epilogue, all
    channels-last) runs its three block convolutions and the stem (16 channels from the NCHW
    image, `linalg.conv2d_direct`) through `linalg.bind_conv2d` and gives bit-identical outputs
    without binders, and torch's at 1e-5; a stem of 8 channels stays on the kernel. After
    `NAC_GEMM`'s choice changes, the bound steps fall back to the kernel and still agree."""
    torch = pytest.importorskip("torch")
    import functools

    from torch import nn

    from nac.engine import plan as P
    from nac.engine.kernels import KERNELS

    class Net(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.stem = nn.Conv2d(3, width, 3, stride=2, padding=1)
            self.expand, self.dw = nn.Conv2d(width, 32, 1), nn.Conv2d(32, 32, 3, padding=1, groups=32)
            self.project = nn.Conv2d(32, width, 1)

        def forward(self, x):
            h = torch.relu(self.stem(x))
            y = h + self.project(nn.functional.relu6(self.dw(nn.functional.relu6(self.expand(h)))))
            return y.mean((2, 3))  # a pooling head: the convolutions' outputs all stay inside the plan

    torch.manual_seed(0)
    for width, binds in ((8, 3), (16, 4)):
        x, net = torch.randn(2, 3, 19, 17), Net(width).eval()
        m = nac.load(nac.export(net, (x,), tmp_path / f"net{width}.nac"))
        outs = {}
        for bound in (True, False):
            with monkeypatch.context() as mp:
                if not bound:
                    mp.setattr(P, "BINDERS", {})
                plan = m.plan({m.graph.inputs[0]: tuple(x.shape)})
            calls = [s.call for s in plan.steps if s.op == "conv2d"]
            assert sum(not (isinstance(c, functools.partial) and c.func is KERNELS["conv2d"]) for c in calls) == \
                (binds if bound else 0)
            outs[bound] = _run_and_on_plain_gemm(plan, m.graph.inputs[0], x.numpy(), bound, monkeypatch)
        np.testing.assert_array_equal(outs[True], outs[False])
        with torch.no_grad():
            np.testing.assert_allclose(outs[True], net(x).numpy(), rtol=1e-5, atol=1e-5)


def test_a_failing_binder_is_named(two_input_model, monkeypatch):
    """A binder that raises while a plan is built gives `NacRuntimeError` naming the op (and
    `NacInputError` when it runs out of memory), never a bare exception."""
    from nac.engine import plan as P
    from nac.errors import NacInputError, NacRuntimeError

    def broken(ins, outs, attrs):
        raise ValueError("bad operands")

    def hungry(ins, outs, attrs):
        raise MemoryError

    monkeypatch.setitem(P.BINDERS, "softmax", broken)
    with pytest.raises(NacRuntimeError, match="softmax .*bad operands"):
        two_input_model.plan({"a": (2, 5, 4), "ids": (2, 5)})
    monkeypatch.setitem(P.BINDERS, "softmax", hungry)
    with pytest.raises(NacInputError, match="softmax .*out of memory"):
        two_input_model.plan({"a": (2, 5, 4), "ids": (2, 5)})


def test_plan_folds_what_depends_only_on_constants(tmp_path):
    """BERT's embedding prologue in small: positions from ``arange(seq)`` and a buffer's slice,
    their embeddings, added to the token embeddings. The plan computes the position side once
    per shape (`plan.fold_static`): no step for it, read-only arrays planned as constants, and
    the results stay right over runs with other inputs and for another sequence length; a
    folded node with an index out of range is refused with `NacInputError` when planning."""
    rng = np.random.default_rng(3)
    tok, pos = rng.standard_normal((10, 8)).astype(np.float32), rng.standard_normal((32, 8)).astype(np.float32)
    g = Graph()
    ids = g.add_value("ids", "int64", (1, "seq"))
    g.inputs.append(ids)
    p = {"tok": g.add_param("tok", tok), "pos": g.add_param("pos", pos),
         "pid": g.add_param("pid", np.arange(32, dtype=np.int64)[None])}
    v = {k: g.add_value(k, dt, s) for k, (dt, s) in {
        "r": ("int64", ("seq",)), "sl": ("int64", (1, "seq")), "s": ("int64", (1, "seq")),
        "pe": ("float32", (1, "seq", 8)), "pe2": ("float32", ("seq", 8)), "te": ("float32", (1, "seq", 8)),
        "y": ("float32", (1, "seq", 8)), "out": ("float32", (1, "seq", 8))}.items()}
    g.nodes += [
        Node("arange", [], [v["r"]], {"start": 0, "end": "seq", "step": 1, "dtype": "int64"}),
        Node("slice", [p["pid"]], [v["sl"]], {"dim": 1, "start": 0, "end": "seq", "step": 1}),
        Node("add", [v["sl"], v["r"]], [v["s"]]),  # 2 * position
        Node("embedding", [p["pos"], v["s"]], [v["pe"]]),
        Node("embedding", [p["pos"], v["r"]], [v["pe2"]]),
        Node("embedding", [p["tok"], ids], [v["te"]]),
        Node("add", [v["te"], v["pe"]], [v["y"]]),
        Node("add", [v["y"], v["pe2"]], [v["out"]]),
    ]
    g.outputs.append(v["out"])
    g.dims = {"seq": {"min": 1, "max": 16}}
    model = nac.load(write_nac(tmp_path / "emb.nac", g, {}))
    for seq in (5, 9):
        plan = model.plan({"ids": (1, seq)})
        assert [s.op for s in plan.steps] == ["embedding", "add", "add"]
        assert set(plan.folded) == {"r", "s", "pe", "pe2"}
        assert all(not a.flags.writeable for a in plan.folded.values())
        assert plan.tensors["pe"].region == "constant"
        for _ in range(2):
            x = rng.integers(0, 10, (1, seq))
            plan.inputs["ids"][...] = x
            plan.run()
            want = tok[x] + pos[2 * np.arange(seq)][None] + pos[np.arange(seq)]
            np.testing.assert_allclose(plan.outputs[0], want, rtol=1e-6)
    with pytest.raises(nac.NacInputError, match="id 32 is outside the table of 32 rows"):
        model.plan({"ids": (1, 16)})  # positions 2 * 15 = 30 < 32 are fine ...
        g.dims["seq"]["max"] = 17
        nac.load(write_nac(tmp_path / "emb17.nac", g, {})).plan({"ids": (1, 17)})  # ... 2 * 16 = 32 is not


def test_expansion_and_depthwise_fuse_in_a_plan(tmp_path, monkeypatch):
    """Two inverted-residual blocks (1x1 expansion, 3x3 depthwise, 1x1 projection; the second
    with stride 2): with the size threshold lowered, each expansion is fused into its depthwise
    step (`Step.fused_into`, `linalg.bind_expand_depthwise`); the fused call's input stays
    alive through the depthwise step (its arena bytes never overlap the output's, which reuse
    them when unfused), and the outputs match the unfused plan at 1e-6 and torch at 1e-5, also
    after `NAC_GEMM`'s choice changes (the call then runs the two kernels). Without the lowered
    threshold nothing this small fuses."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from nac.engine import plan as P
    from nac.engine.kernels import linalg as L

    class Block(nn.Module):
        def __init__(self, cin, stride):
            super().__init__()
            self.expand = nn.Conv2d(cin, 4 * cin, 1)
            self.dw = nn.Conv2d(4 * cin, 4 * cin, 3, stride=stride, padding=1, groups=4 * cin)
            self.project = nn.Conv2d(4 * cin, cin, 1)

        def forward(self, x):
            return self.project(nn.functional.relu6(self.dw(nn.functional.relu6(self.expand(x)))))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), Block(16, 1), Block(16, 2)

        def forward(self, x):
            h = self.a(torch.relu(self.stem(x)))  # read by the second expansion alone: unfused, the
            return self.b(h).mean((2, 3))  # second depthwise output takes its bytes

    torch.manual_seed(0)
    x, net = torch.randn(2, 3, 18, 20), Net().eval()
    m = nac.load(nac.export(net, (x,), tmp_path / "net.nac"))
    assert not any(s.fused_into is not None for s in m.plan({m.graph.inputs[0]: tuple(x.shape)}).steps)
    monkeypatch.setattr(L, "EXPAND_DEPTHWISE_MIN_BYTES", 0)
    outs = {}
    for fused in (True, False):
        with monkeypatch.context() as mp:
            if not fused:
                mp.setattr(P, "PAIR_BINDERS", {})
            plan = m.plan({m.graph.inputs[0]: tuple(x.shape)})
        pairs = [(s, plan.steps[k + 1]) for k, s in enumerate(plan.steps) if s.fused_into is not None]
        assert len(pairs) == (2 if fused else 0)
        for first, second in pairs:
            assert second.index == first.fused_into and second.inputs[0] == first.outputs[0]
            assert not np.shares_memory(plan.array(first.inputs[0]), plan.array(second.outputs[0]))
        outs[fused] = _run_and_on_plain_gemm(plan, m.graph.inputs[0], x.numpy(), fused, monkeypatch)
    np.testing.assert_allclose(outs[True], outs[False], rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(outs[True], net(x).numpy(), rtol=1e-5, atol=1e-5)
