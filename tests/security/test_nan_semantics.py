"""Issue 11, item 7: NaN and infinities follow ATen through every activation (as an op and fused
into linear/conv2d), pooling, reductions and clamp. Each case runs the engine and torch on the
same inputs holding NaN, +inf and -inf; NaN positions must agree exactly, finite values within
1e-6 relative (infinities exactly)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import have, model_from_graph, one_node_graph

pytestmark = pytest.mark.skipif(not have("torch"), reason="needs torch (pip install 'nac[export]')")

SPECIAL = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1.5, -2.5, 7.0, -800.0, 3.0], np.float32)


def same(got, want, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, what
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN positions {got} vs {want}"
    fin = np.isfinite(want)
    assert np.array_equal(got[~fin & ~np.isnan(want)], want[~fin & ~np.isnan(want)]), f"{what}: infinities {got} vs {want}"
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-6, atol=1e-6, err_msg=what)


def run1(op, x, attrs=None, out_shape=None, out_dtype="float32", extra=()):
    g, feeds = one_node_graph(op, [x, *extra], attrs or {}, out_shape or x.shape, out_dtype,
                              params=tuple(range(1, 1 + len(extra))))
    return model_from_graph(g).run(feeds)[0]


UNARY = ["relu", "sigmoid", "tanh", "silu", "hardswish", "hardsigmoid", "erf", "rsqrt", "exp", "abs", "neg"]


@pytest.mark.parametrize("op", UNARY)
def test_unary_activations(op):
    import torch
    import torch.nn.functional as F

    ref = {"silu": F.silu, "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid}.get(op) or getattr(torch, op)
    same(run1(op, SPECIAL), ref(torch.from_numpy(SPECIAL)).numpy(), op)


@pytest.mark.parametrize("attrs,ref", [({"approximate": "none"}, "none"), ({"approximate": "tanh"}, "tanh")])
def test_gelu(attrs, ref):
    import torch
    import torch.nn.functional as F

    same(run1("gelu", SPECIAL, attrs), F.gelu(torch.from_numpy(SPECIAL), approximate=ref).numpy(), f"gelu {ref}")


@pytest.mark.parametrize("op,attrs", [("leaky_relu", {"negative_slope": 0.1}), ("elu", {"alpha": 1.0}),
                                      ("clamp", {"min": -1.0, "max": 2.0}), ("clamp", {"min": 0.0, "max": None}),
                                      ("clamp", {"min": None, "max": 6.0})])
def test_parametric(op, attrs):
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(SPECIAL)
    want = {"leaky_relu": lambda: F.leaky_relu(t, 0.1), "elu": lambda: F.elu(t, 1.0),
            "clamp": lambda: torch.clamp(t, attrs["min"], attrs["max"])}[op]()
    same(run1(op, SPECIAL, attrs), want.numpy(), f"{op} {attrs}")


ACTS = ["none", "relu", "relu6", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "hardswish"]


def torch_act(name, y):
    import torch
    import torch.nn.functional as F

    return {"none": lambda v: v, "relu": torch.relu, "relu6": F.relu6, "gelu": F.gelu,
            "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"), "silu": F.silu, "sigmoid": torch.sigmoid,
            "tanh": torch.tanh, "hardswish": F.hardswish}[name](y)


@pytest.mark.parametrize("act", ACTS)
def test_fused_linear_activation(act):
    """The issue's case: an all-NaN (and an inf) input through a linear with a fused activation."""
    import torch

    rng = np.random.default_rng(0)
    x = np.stack([SPECIAL, np.full(10, np.nan, np.float32), rng.normal(size=10).astype(np.float32)])
    w = rng.normal(size=(4, 10)).astype(np.float32)
    w[1] = 0.0  # 0 * inf = NaN, 0 * finite = 0: both paths through the product
    b = rng.normal(size=4).astype(np.float32)
    got = run1("linear", x, {"activation": act}, (3, 4), extra=(w, b))
    with torch.no_grad():
        want = torch_act(act, torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)))
    same(got, want.numpy(), f"linear + {act}")


@pytest.mark.parametrize("act", ["relu", "relu6", "silu", "hardswish"])
@pytest.mark.parametrize("groups", [1, 3])
def test_fused_conv_activation(act, groups):
    import torch

    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 3, 5, 5)).astype(np.float32)
    x[0, 0, 2, 2], x[0, 1, 0, 0], x[0, 2, 4, 4] = np.nan, np.inf, -np.inf
    w = rng.normal(size=(3, 3 // groups, 3, 3)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    attrs = {"stride": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": groups, "activation": act}
    got = run1("conv2d", x, attrs, (1, 3, 5, 5), extra=(w, b))
    with torch.no_grad():
        want = torch_act(act, torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                                         padding=1, groups=groups))
    same(got, want.numpy(), f"conv2d groups={groups} + {act}")


def test_pooling_and_reductions():
    import torch
    import torch.nn.functional as F

    x = np.arange(2 * 2 * 4 * 4, dtype=np.float32).reshape(2, 2, 4, 4)
    x[0, 0, 1, 1], x[0, 1, 2, 3], x[1, 0, 0, 0], x[1, 1, 3, 3] = np.nan, np.inf, -np.inf, np.nan
    t = torch.from_numpy(x)
    pool = {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0], "dilation": [1, 1], "ceil_mode": False}
    same(run1("max_pool2d", x, pool, (2, 2, 2, 2)), F.max_pool2d(t, 2).numpy(), "max_pool2d")
    avg = {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0], "ceil_mode": False, "count_include_pad": True,
           "divisor_override": None}
    same(run1("avg_pool2d", x, avg, (2, 2, 2, 2)), F.avg_pool2d(t, 2).numpy(), "avg_pool2d")
    same(run1("adaptive_avg_pool2d", x, {"output_size": [1, 1]}, (2, 2, 1, 1)),
         F.adaptive_avg_pool2d(t, 1).numpy(), "adaptive_avg_pool2d")
    for op, fn in [("amax", torch.amax), ("amin", torch.amin), ("sum", torch.sum), ("mean", torch.mean)]:
        same(run1(op, x, {"dims": [2, 3], "keepdim": False}, (2, 2)), fn(t, dim=(2, 3)).numpy(), op)
    for op, fn in [("argmax", torch.argmax), ("argmin", torch.argmin)]:
        flat = x.reshape(4, 16)
        got = run1(op, flat, {"dim": 1, "keepdim": False}, (4,), "int64")
        np.testing.assert_array_equal(got, fn(torch.from_numpy(flat), dim=1).numpy(), err_msg=op)
    same(run1("softmax", x.reshape(4, 16), {"dim": 1}), torch.softmax(torch.from_numpy(x.reshape(4, 16)), 1).numpy(),
         "softmax")
