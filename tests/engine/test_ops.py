"""Every op in the op table against its ATen reference over generated shapes and values (hypothesis).

Each case draws inputs, attributes and the torch reference; the engine runs a one-node graph.
Tolerance: 1e-5 relative to the output's scale (exact for integer and bool outputs).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra.numpy import array_shapes, mutually_broadcastable_shapes

from conftest import assert_close, model_from_graph, one_node_graph
from nac.apps.reconstruct import TORCH_OPS, torch_module
from nac.format.graph import Node, dtype_name
from nac.format.ops import ACTIVATIONS, OPS

CASES = {}


def case(*ops):
    def deco(fn):
        for op in ops:
            CASES[op] = fn
        return fn
    return deco


def arr(draw, shape, lo=-3.0, hi=3.0, dtype=np.float32):
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.dtype(dtype).kind in "iu":
        return rng.integers(int(lo), int(hi) + 1, size=shape).astype(dtype)
    return rng.uniform(lo, hi, size=shape).astype(dtype)


def T(a):
    return torch.from_numpy(np.array(a, order="C"))  # (np.ascontiguousarray would make a 0-d array 1-d)


# -- elementwise -----------------------------------------------------------------------------------------
BINARY = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "pow": torch.pow,
          "maximum": torch.maximum, "minimum": torch.minimum, "remainder": torch.remainder,
          "eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge,
          "logical_and": torch.logical_and, "logical_or": torch.logical_or,
          "bitwise_and": torch.bitwise_and, "bitwise_or": torch.bitwise_or}


@case(*BINARY)
def binary(draw, op):
    shapes = draw(mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=5))
    sa, sb = shapes.input_shapes
    if op in ("logical_and", "logical_or", "bitwise_and", "bitwise_or"):
        a, b = arr(draw, sa, dtype=np.bool_), arr(draw, sb, dtype=np.bool_)
    elif op in ("eq", "ne", "lt", "le", "gt", "ge"):
        a, b = arr(draw, sa, -2, 2, np.int64).astype(np.float32), arr(draw, sb, -2, 2, np.int64).astype(np.float32)
    elif op == "pow":
        a, b = arr(draw, sa, 0.1, 3.0), arr(draw, sb, -2.0, 2.0)
    elif op in ("div", "remainder"):
        a, b = arr(draw, sa), arr(draw, sb, 0.5, 3.0) * np.where(arr(draw, sb, dtype=np.bool_), 1, -1).astype(np.float32)
    else:
        a, b = arr(draw, sa), arr(draw, sb)
    ref = BINARY[op](T(a), T(b))
    return [a, b], {}, ref


UNARY = {"neg": torch.neg, "abs": torch.abs, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt,
         "rsqrt": torch.rsqrt, "reciprocal": torch.reciprocal, "sin": torch.sin, "cos": torch.cos,
         "erf": torch.erf, "relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "silu": F.silu,
         "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid, "logical_not": torch.logical_not,
         "floor": torch.floor, "ceil": torch.ceil, "round": torch.round, "sign": torch.sign}


@case(*UNARY)
def unary(draw, op):
    shape = draw(array_shapes(min_dims=0, max_dims=4, max_side=6))
    if op == "logical_not":
        x = arr(draw, shape, dtype=np.bool_)
    elif op in ("log", "sqrt", "rsqrt", "reciprocal"):
        x = arr(draw, shape, 0.05, 5.0)
    elif op == "round":  # include exact halves: ties go to even in both
        x = (arr(draw, shape, -16, 16, np.int64) / 2).astype(np.float32)
    else:
        x = arr(draw, shape, -8.0, 8.0)
    return [x], {}, UNARY[op](T(x))


@case("gelu")
def gelu(draw, op):
    x = arr(draw, draw(array_shapes(max_dims=3, max_side=8)), -6, 6)
    approx = draw(st.sampled_from(["none", "tanh"]))
    return [x], {"approximate": approx}, F.gelu(T(x), approximate=approx)


@case("clamp")
def clamp(draw, op):
    x = arr(draw, draw(array_shapes(max_dims=3)), -8, 8)
    lo = draw(st.one_of(st.none(), st.floats(-4, 0, width=32)))
    hi = draw(st.one_of(st.none(), st.floats(0, 6, width=32)))
    ref = T(x) if lo is None and hi is None else torch.clamp(T(x), lo, hi)
    return [x], {"min": lo, "max": hi}, ref


@case("leaky_relu")
def leaky(draw, op):
    x = arr(draw, draw(array_shapes(max_dims=3)))
    s = draw(st.floats(0.0, 0.5, width=32))
    return [x], {"negative_slope": s}, F.leaky_relu(T(x), s)


@case("elu")
def elu(draw, op):
    x = arr(draw, draw(array_shapes(max_dims=3)))
    a = draw(st.floats(0.125, 2.0, width=32))
    return [x], {"alpha": a}, F.elu(T(x), a)


@case("cast")
def cast(draw, op):
    src, dst = draw(st.sampled_from([(np.float32, "int64"), (np.float32, "bool"), (np.int64, "float32"),
                                     (np.bool_, "float32"), (np.int64, "bool"), (np.bool_, "int64")]))
    x = arr(draw, draw(array_shapes(max_dims=3)), -5, 5, src)
    tdt = {"int64": torch.int64, "bool": torch.bool, "float32": torch.float32}[dst]
    return [x], {"dtype": dst}, T(x).to(tdt)


@case("where")
def where(draw, op):
    s = draw(mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=4)).input_shapes
    c, a, b = arr(draw, s[0], dtype=np.bool_), arr(draw, s[1]), arr(draw, s[2])
    return [c, a, b], {}, torch.where(T(c), T(a), T(b))


# -- linear algebra -------------------------------------------------------------------------------------
@case("matmul")
def matmul(draw, op):
    batch = draw(mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3)).input_shapes
    m, k, n = (draw(st.integers(1, 9)) for _ in range(3))
    a, b = arr(draw, batch[0] + (m, k)), arr(draw, batch[1] + (k, n))
    return [a, b], {}, torch.matmul(T(a), T(b))


def torch_act(y, act):
    return {"none": lambda v: v, "relu": torch.relu, "relu6": F.relu6, "gelu": F.gelu,
            "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"), "silu": F.silu, "sigmoid": torch.sigmoid,
            "tanh": torch.tanh, "hardswish": F.hardswish}[act](y)


@case("linear")
def linear(draw, op):
    lead = draw(array_shapes(min_dims=1, max_dims=3, max_side=4))
    k, n = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    x, w = arr(draw, lead + (k,)), arr(draw, (n, k))
    b = arr(draw, (n,)) if draw(st.booleans()) else None
    act = draw(st.sampled_from(ACTIVATIONS))
    ref = torch_act(F.linear(T(x), T(w), None if b is None else T(b)), act)
    if draw(st.booleans()):
        return [x, np.ascontiguousarray(w.T), b], {"activation": act, "weight_layout": "io"}, ref
    return [x, w, b], {"activation": act}, ref


@case("conv2d")
def conv2d(draw, op):
    n, groups = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    if draw(st.booleans()):  # depthwise
        cin = cout = groups
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = [draw(st.integers(0, 2)) for _ in range(4)]
    h = draw(st.integers(dh * (kh - 1) + 1, 9))
    wd = draw(st.integers(dw * (kw - 1) + 1, 9))
    x, w = arr(draw, (n, cin, h, wd)), arr(draw, (cout, cin // groups, kh, kw))
    b = arr(draw, (cout,)) if draw(st.booleans()) else None
    act = draw(st.sampled_from(ACTIVATIONS))
    xt = F.pad(T(x), (pads[2], pads[3], pads[0], pads[1]))
    pre = F.conv2d(xt, T(w), None if b is None else T(b), (sh, sw), 0, (dh, dw), groups)
    ins = [x, w, b]
    if draw(st.booleans()):  # a residual (skip connection), added before the activation
        r = arr(draw, tuple(pre.shape))
        pre, ins = pre + T(r), [x, w, b, r]
    return ins, {"stride": [sh, sw], "padding": pads, "dilation": [dh, dw], "groups": groups,
                 "activation": act}, torch_act(pre, act)


@case("scaled_dot_product_attention")
def sdpa(draw, op):
    b, h, l, s, e = (draw(st.integers(1, n)) for n in (2, 4, 6, 7, 8))
    gqa = draw(st.booleans()) and h % 2 == 0
    hk = h // 2 if gqa else h
    q, k, v = arr(draw, (b, h, l, e)), arr(draw, (b, hk, s, e)), arr(draw, (b, hk, s, draw(st.integers(1, 5))))
    kind = draw(st.sampled_from(["none", "bool", "float"]))
    mshape = draw(st.sampled_from([(b, 1, l, s), (1, 1, 1, s), (b, h, l, s), (l, s)]))
    mask = None if kind == "none" else arr(draw, mshape, dtype=np.bool_) if kind == "bool" else \
        np.where(arr(draw, mshape, dtype=np.bool_), 0.0, -np.inf).astype(np.float32) + arr(draw, mshape, -1, 1)
    causal = kind == "none" and draw(st.booleans())
    scale = draw(st.one_of(st.none(), st.floats(0.125, 2.0, width=32)))
    ref = F.scaled_dot_product_attention(T(q), T(k), T(v), attn_mask=None if mask is None else T(mask),
                                         is_causal=causal, scale=scale, enable_gqa=gqa)
    attrs = {"scale": scale if scale is not None else 1 / e ** 0.5, "is_causal": causal, "enable_gqa": gqa}
    if draw(st.booleans()):  # keys and values in two segments (a KV cache read in place): split at cut
        cut = draw(st.integers(0, s))
        kk = np.ascontiguousarray(k[:, :, :cut]) if draw(st.booleans()) else k[:, :, :cut]  # a view, too
        return [q, kk, v[:, :, :cut], mask, k[:, :, cut:], v[:, :, cut:]], attrs, ref
    return [q, k, v, mask], attrs, ref


@case("rotary_embedding")
def rotary(draw, op):
    lead = draw(array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4))
    shape = lead + (2 * draw(st.integers(0, 8)),)
    x = arr(draw, shape)
    if len(shape) >= 3 and draw(st.booleans()):  # a transposed view, as q and k reach it
        x = np.swapaxes(np.ascontiguousarray(np.swapaxes(x, -2, -3)), -2, -3)
    def angle():  # cos/sin: each axis of x's or 1, maybe fewer leading axes
        keep = draw(st.integers(0, len(shape)))
        return arr(draw, tuple(n if draw(st.booleans()) else 1 for n in shape[len(shape) - keep:]), -1, 1)
    c, s = angle(), angle()
    h = shape[-1] // 2
    ref = T(x) * T(c) + torch.cat([-T(x)[..., h:], T(x)[..., :h]], dim=-1) * T(s)
    return [x, c, s], {}, ref


# -- pooling -----------------------------------------------------------------------------------------------
def image(draw, lo=1, hi=9):
    return arr(draw, (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(lo, hi)),
                      draw(st.integers(lo, hi))))


@case("max_pool2d")
def max_pool(draw, op):
    k = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    d = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    p = [draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2))]
    s = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    x = image(draw, lo=max(d[0] * (k[0] - 1), d[1] * (k[1] - 1)) + 1)
    cm = draw(st.booleans())
    ref = F.max_pool2d(T(x), k, s, p, d, ceil_mode=cm)
    return [x], {"kernel": k, "stride": s, "padding": p, "dilation": d, "ceil_mode": cm}, ref


@case("avg_pool2d")
def avg_pool(draw, op):
    k = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    p = [draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2))]
    s = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    x = image(draw, lo=3)
    cm, cip = draw(st.booleans()), draw(st.booleans())
    div = draw(st.one_of(st.none(), st.integers(1, 5)))
    ref = F.avg_pool2d(T(x), k, s, p, cm, cip, div)
    return [x], {"kernel": k, "stride": s, "padding": p, "ceil_mode": cm, "count_include_pad": cip,
                 "divisor_override": div}, ref


@case("adaptive_avg_pool2d")
def adaptive(draw, op):
    x = image(draw)
    o = [draw(st.integers(1, 4)), draw(st.integers(1, 4))]
    return [x], {"output_size": o}, F.adaptive_avg_pool2d(T(x), o)


@case("upsample2d")
def upsample2d(draw, op):
    x = image(draw, lo=2)
    mode = draw(st.sampled_from(["nearest", "bilinear"]))
    ac = mode == "bilinear" and draw(st.booleans())
    if draw(st.booleans()):  # a scale factor (the output size is floor(in * factor)), as nn.Upsample
        f = [draw(st.sampled_from([0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 0.75])) for _ in range(2)]
        ref = F.interpolate(T(x), scale_factor=f, mode=mode, align_corners=ac if mode == "bilinear" else None)
        size, scales = list(ref.shape[2:]), f
    else:
        size = [draw(st.integers(1, 13)), draw(st.integers(1, 13))]
        ref = F.interpolate(T(x), size=size, mode=mode, align_corners=ac if mode == "bilinear" else None)
        scales = None
    return [x], {"mode": mode, "align_corners": ac, "size": size, "scales": scales}, ref


# -- reductions -----------------------------------------------------------------------------------------
REDUCE = {"sum": torch.sum, "mean": torch.mean, "amax": torch.amax, "amin": torch.amin, "prod": None,
          "any": torch.any, "all": torch.all}


@case(*REDUCE)
def reduce(draw, op):
    shape = draw(array_shapes(min_dims=1, max_dims=4, max_side=5))
    dims = sorted(draw(st.sets(st.integers(0, len(shape) - 1), min_size=0 if op != "prod" else 1, max_size=1
                               if op == "prod" else len(shape))))
    keep = draw(st.booleans())
    x = arr(draw, shape, dtype=np.bool_) if op in ("any", "all") else arr(draw, shape, 0.5, 1.5)
    t = T(x)
    if op == "prod":
        ref = torch.prod(t, dims[0], keepdim=keep)
    elif not dims:
        ref = REDUCE[op](t)
        if keep:
            ref = ref.reshape((1,) * len(shape))
    else:
        ref = REDUCE[op](t, dim=dims, keepdim=keep)
    return [x], {"dims": dims, "keepdim": keep}, ref


@case("var")
def var(draw, op):
    shape = draw(array_shapes(min_dims=1, max_dims=3, min_side=2, max_side=5))
    dims = sorted(draw(st.sets(st.integers(0, len(shape) - 1), min_size=1)))
    keep, corr = draw(st.booleans()), draw(st.sampled_from([0.0, 1.0]))
    x = arr(draw, shape)
    return [x], {"dims": dims, "keepdim": keep, "correction": corr}, torch.var(T(x), dims, correction=corr, keepdim=keep)


@case("argmax", "argmin")
def argm(draw, op):
    shape = draw(array_shapes(min_dims=1, max_dims=3, max_side=5))
    d, keep = draw(st.integers(0, len(shape) - 1)), draw(st.booleans())
    x = arr(draw, shape, -100, 100, np.int64).astype(np.float32)  # ties: first index, as ATen
    fn = torch.argmax if op == "argmax" else torch.argmin
    return [x], {"dim": d, "keepdim": keep}, fn(T(x), d, keep)


@case("cumsum")
def cumsum(draw, op):
    shape = draw(array_shapes(min_dims=1, max_dims=3, max_side=6))
    d = draw(st.integers(0, len(shape) - 1))
    x = arr(draw, shape)
    return [x], {"dim": d}, torch.cumsum(T(x), d)


def _sortable(draw):
    """Floats with ties (small integers) and, sometimes, NaN: the order of ties and NaN is what
    sort/topk implementations get wrong."""
    shape = draw(array_shapes(min_dims=1, max_dims=3, max_side=7))
    x = arr(draw, shape, -3, 3, np.int64).astype(np.float32)
    if draw(st.booleans()):
        x[arr(draw, shape, dtype=np.bool_) & arr(draw, shape, dtype=np.bool_)] = np.nan
    return x, draw(st.integers(-len(shape), len(shape) - 1))


@case("sort")
def sort_(draw, op):
    x, d = _sortable(draw)
    desc = draw(st.booleans())
    return [x], {"dim": d % x.ndim, "descending": desc}, tuple(torch.sort(T(x), dim=d, descending=desc, stable=True))


@case("topk")
def topk(draw, op):
    x, d = _sortable(draw)
    # ATen leaves the order of ties open (NaNs are ties too): distinct values, at most one NaN
    x = np.nan_to_num(x, nan=0.0) + np.linspace(0, 0.5, x.size, dtype=np.float32).reshape(x.shape)
    if draw(st.booleans()):
        x.flat[draw(st.integers(0, x.size - 1))] = np.nan
    k = draw(st.integers(0, x.shape[d]))
    largest = draw(st.booleans())
    return [x], {"k": k, "dim": d % x.ndim, "largest": largest}, tuple(torch.topk(T(x), k, dim=d, largest=largest))


# -- normalisation --------------------------------------------------------------------------------------
@case("softmax", "log_softmax")
def softmax(draw, op):
    shape = draw(array_shapes(min_dims=1, max_dims=4, max_side=6))
    d = draw(st.integers(0, len(shape) - 1))
    x = arr(draw, shape, -10, 10)
    fn = torch.softmax if op == "softmax" else torch.log_softmax
    return [x], {"dim": d}, fn(T(x), d)


@case("layer_norm")
def layer_norm(draw, op):
    shape = draw(array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6))
    axes = draw(st.integers(1, len(shape)))
    ns = shape[len(shape) - axes:]
    x = arr(draw, shape, -4, 4)
    w = arr(draw, ns) if draw(st.booleans()) else None
    b = arr(draw, ns) if draw(st.booleans()) else None
    eps = draw(st.sampled_from([1e-5, 1e-12, 1e-3]))
    ref = F.layer_norm(T(x), ns, None if w is None else T(w), None if b is None else T(b), eps)
    return [x, w, b], {"axes": axes, "eps": eps}, ref


@case("rms_norm")
def rms_norm(draw, op):
    shape = draw(array_shapes(min_dims=1, max_dims=3, max_side=6))
    axes = draw(st.integers(1, len(shape)))
    ns = shape[len(shape) - axes:]
    x = arr(draw, shape)
    w = arr(draw, ns) if draw(st.booleans()) else None
    eps = draw(st.sampled_from([1e-5, 1e-6]))
    return [x, w], {"axes": axes, "eps": eps}, F.rms_norm(T(x), ns, None if w is None else T(w), eps)


@case("batch_norm")
def batch_norm(draw, op):
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 4))) + draw(array_shapes(min_dims=0, max_dims=2, max_side=4))
    c = shape[1]
    x, mean, var = arr(draw, shape), arr(draw, (c,)), arr(draw, (c,), 0.1, 2)
    w = arr(draw, (c,)) if draw(st.booleans()) else None
    b = arr(draw, (c,)) if draw(st.booleans()) else None
    ref = F.batch_norm(T(x), T(mean), T(var), None if w is None else T(w), None if b is None else T(b), False, 0.1, 1e-5)
    return [x, w, b, mean, var], {"eps": 1e-5}, ref


# -- indexing -----------------------------------------------------------------------------------------------
@case("embedding")
def embedding(draw, op):
    v, d = draw(st.integers(1, 20)), draw(st.integers(1, 8))
    w = arr(draw, (v, d))
    idx = arr(draw, draw(array_shapes(min_dims=0, max_dims=2, max_side=5)), 0, v - 1, np.int64)
    return [w, idx], {}, F.embedding(T(idx), T(w))


@case("gather")
def gather(draw, op):
    shape = draw(array_shapes(min_dims=1, max_dims=3, max_side=5))
    d = draw(st.integers(0, len(shape) - 1))
    ishape = tuple(draw(st.integers(1, s)) if k != d else draw(st.integers(1, 6)) for k, s in enumerate(shape))
    x, idx = arr(draw, shape), arr(draw, ishape, 0, shape[d] - 1, np.int64)
    return [x, idx], {"dim": d}, torch.gather(T(x), d, T(idx))


@case("index_select")
def index_select(draw, op):
    shape = draw(array_shapes(min_dims=1, max_dims=3, max_side=5))
    d = draw(st.integers(0, len(shape) - 1))
    idx = arr(draw, (draw(st.integers(0, 6)),), 0, shape[d] - 1, np.int64)
    x = arr(draw, shape)
    return [x, idx], {"dim": d}, torch.index_select(T(x), d, T(idx))


@case("index")
def index(draw, op):
    shape = draw(array_shapes(min_dims=2, max_dims=3, max_side=5))
    ishape = draw(array_shapes(min_dims=1, max_dims=2, max_side=3))
    which = draw(st.sampled_from([(0,), (1,), (0, 1)]))
    idx = [arr(draw, ishape, 0, shape[k] - 1, np.int64) if k in which else None for k in range(max(which) + 1)]
    x = arr(draw, shape)
    ref = T(x)[tuple(slice(None) if i is None else T(i) for i in idx)]
    return [x] + idx, {}, ref


# -- shape ops ---------------------------------------------------------------------------------------------
@case("reshape")
def reshape(draw, op):
    shape = draw(array_shapes(min_dims=1, max_dims=4, max_side=4))
    x = arr(draw, shape)
    n = x.size
    new = draw(st.sampled_from([(n,), (1, n), (n, 1)] + ([(2, n // 2)] if n % 2 == 0 else [])))
    return [x], {"shape": list(new)}, T(x).reshape(new)


@case("permute")
def permute(draw, op):
    shape = draw(array_shapes(min_dims=1, max_dims=4, max_side=4))
    perm = draw(st.permutations(range(len(shape))))
    x = arr(draw, shape)
    return [x], {"perm": list(perm)}, T(x).permute(*perm)


@case("expand")
def expand(draw, op):
    shape = draw(array_shapes(min_dims=1, max_dims=3, max_side=3))
    x = arr(draw, tuple(1 if draw(st.booleans()) else s for s in shape))
    out = tuple(draw(st.integers(1, 4)) if a == 1 else a for a in x.shape)
    return [x], {"shape": list(out)}, T(x).expand(*out)


@case("slice")
def slice_(draw, op):
    shape = draw(array_shapes(min_dims=1, max_dims=3, max_side=7))
    d = draw(st.integers(0, len(shape) - 1))
    start, end = draw(st.integers(-8, 8)), draw(st.integers(-8, 2 ** 62))
    step = draw(st.integers(1, 3))
    x = arr(draw, shape)
    ref = torch.ops.aten.slice.Tensor(T(x), d, start, end, step)
    return [x], {"dim": d, "start": start, "end": end, "step": step}, ref


@case("select")
def select(draw, op):
    shape = draw(array_shapes(min_dims=1, max_dims=3, max_side=5))
    d = draw(st.integers(0, len(shape) - 1))
    i = draw(st.integers(-shape[d], shape[d] - 1))
    x = arr(draw, shape)
    return [x], {"dim": d, "index": i}, torch.select(T(x), d, i)


@case("flip")
def flip(draw, op):
    shape = draw(array_shapes(min_dims=1, max_dims=4, max_side=4))
    dims = draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, max_size=len(shape), unique=True))
    x = arr(draw, shape)
    return [x], {"dims": dims}, torch.flip(T(x), dims)


@case("cat")
def cat(draw, op):
    shape = draw(array_shapes(min_dims=1, max_dims=3, max_side=4))
    d = draw(st.integers(0, len(shape) - 1))
    xs = [arr(draw, shape[:d] + (draw(st.integers(1, 4)),) + shape[d + 1:]) for _ in range(draw(st.integers(1, 4)))]
    return xs, {"dim": d}, torch.cat([T(x) for x in xs], d)


@case("pad")
def pad(draw, op):
    shape = draw(array_shapes(min_dims=1, max_dims=4, min_side=2, max_side=5))
    npairs = draw(st.integers(1, len(shape)))
    pads = [draw(st.integers(-1, 3)) for _ in range(2 * npairs)]
    x = arr(draw, shape)
    v = draw(st.sampled_from([0.0, -1.5]))
    return [x], {"pads": pads, "value": v}, F.pad(T(x), pads, value=v)


@case("repeat")
def repeat(draw, op):
    shape = draw(array_shapes(min_dims=1, max_dims=3, max_side=3))
    reps = [draw(st.integers(1, 3)) for _ in range(len(shape) + draw(st.integers(0, 1)))]
    x = arr(draw, shape)
    return [x], {"repeats": reps}, T(x).repeat(*reps)


@case("copy")
def copy(draw, op):
    x = arr(draw, draw(array_shapes(max_dims=3)))
    return [x], {}, T(x).clone()


@case("arange")
def arange(draw, op):
    start, n, step = draw(st.integers(-5, 5)), draw(st.integers(0, 10)), draw(st.integers(1, 3))
    end = start + n
    return [], {"start": start, "end": end, "step": step, "dtype": "int64"}, torch.arange(start, end, step)


@case("full")
def full(draw, op):
    shape = draw(array_shapes(min_dims=0, max_dims=3, max_side=4))
    dtype = draw(st.sampled_from(["float32", "int64", "bool"]))
    value = {"float32": -2.5, "int64": 7, "bool": True}[dtype]
    tdt = {"float32": torch.float32, "int64": torch.int64, "bool": torch.bool}[dtype]
    return [], {"shape": list(shape), "value": value, "dtype": dtype}, torch.full(shape, value, dtype=tdt)


def test_every_op_has_a_case():
    assert sorted(set(OPS) - set(CASES)) == []


def test_every_op_has_a_torch_form():
    """`nac reconstruct --torch` can write every op of the table."""
    assert sorted(set(OPS) - TORCH_OPS) == []


def _stored(a: np.ndarray, channels_last: bool) -> np.ndarray:
    """``a`` [N, C, H, W] with the same values, stored NHWC when ``channels_last``."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2) if channels_last else a


@pytest.mark.parametrize("layout", ["nchw", "nhwc-out", "nhwc-in", "nhwc"])
@pytest.mark.parametrize("kind", ["depthwise", "dense", "grouped"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_conv_layouts(kind, layout, data):
    """Every convolution path (NCHW per-plane depthwise / im2col / 1x1 GEMM; channels-last
    depthwise stencil / NHWC im2col / 1x1 GEMM over pixels / NCHW im2col into an NHWC output;
    the grouped fallback) agrees with torch for either input and output memory format, with or
    without a residual in either memory format (the 1x1 GEMM's epilogue or the add after), within
    1e-5 of the largest pre-activation value."""
    from nac.engine.kernels import KERNELS

    c = data.draw(st.integers(1, 20)) * (2 if kind == "grouped" else 1)
    groups = {"depthwise": c, "dense": 1, "grouped": 2}[kind]
    cout = c if kind == "depthwise" else data.draw(st.integers(1, 12)) * (2 if kind == "grouped" else 1)
    k, s, d = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    pads = [data.draw(st.integers(0, 2)) for _ in range(4)]
    h = data.draw(st.integers(d * (k - 1) + 1, 12))
    x = arr(data.draw, (data.draw(st.integers(1, 3)), c, h, h + 1))
    w, b = arr(data.draw, (cout, c // groups, k, k)), arr(data.draw, (cout,))
    use_bias = data.draw(st.booleans())
    act = data.draw(st.sampled_from(ACTIVATIONS))
    residual = data.draw(st.sampled_from([None, "nchw", "nhwc"]))  # a skip connection in either memory format
    xt = F.pad(T(x), (pads[2], pads[3], pads[0], pads[1]))
    pre = F.conv2d(xt, T(w), T(b) if use_bias else None, s, 0, d, groups)
    extra = []
    if residual:
        r = arr(data.draw, tuple(pre.shape))
        pre, extra = pre + T(r), [_stored(r, residual == "nhwc")]
    ref = torch_act(pre, act).numpy()
    attrs = {"stride": [s, s], "padding": pads, "dilation": [d, d], "groups": groups, "activation": act}
    # float32 sums in another order: the error scales with the pre-activation, not the output
    scale = max(1.0, float(pre.abs().max())) if pre.numel() else 1.0
    out = _stored(np.full(ref.shape, np.nan, np.float32), layout in ("nhwc", "nhwc-out"))
    w.flags.writeable = False  # as a loaded model's weights: the repacked forms are cached
    KERNELS["conv2d"]([_stored(x, layout in ("nhwc", "nhwc-in")), w, b if use_bias else None, *extra], [out], attrs)
    assert_close(out, ref, 1e-5 * scale, f"{kind} conv, {layout}, residual {residual}")


@pytest.mark.parametrize("c,h,w", [(1, 1, 2), (1, 3, 4), (5, 1, 1)])
def test_residual_reaches_convolutions_whose_output_is_both_layouts(c, h, w):
    """An output of one channel (or one pixel) is contiguous and channels-last at once, and a
    one-channel 1x1 convolution counts as depthwise: the residual is still added (it was dropped
    once, found by `test_conv_layouts`)."""
    from nac.engine.kernels import KERNELS

    rng = np.random.default_rng(c * 100 + h * 10 + w)
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((c, c, 1, 1)).astype(np.float32)
    wt.flags.writeable = False
    r = rng.standard_normal((2, c, h, w)).astype(np.float32)
    want = F.relu(F.conv2d(T(x), T(wt)) + T(r)).numpy()
    attrs = {"stride": [1, 1], "padding": [0, 0, 0, 0], "dilation": [1, 1], "groups": 1, "activation": "relu"}
    for residual in (r, _stored(r, True)):
        out = np.full(want.shape, np.nan, np.float32)
        KERNELS["conv2d"]([x, wt, None, residual], [out], attrs)
        assert_close(out, want, 1e-5, f"1x1 conv of {c} channels over {h}x{w} + residual")


@pytest.mark.parametrize("op", sorted(OPS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_op_matches_torch(op, data):
    inputs, attrs, ref = CASES[op](data.draw, op)
    refs = [r.numpy() for r in ref] if isinstance(ref, tuple) else [ref.numpy()]
    g, feeds = one_node_graph(op, inputs, attrs, [r.shape for r in refs], [dtype_name(r.dtype) for r in refs])
    for k, (got, want) in enumerate(zip(model_from_graph(g).run(feeds), refs)):
        assert got.dtype == want.dtype
        assert_close(got, want, 1e-5, f"{op} output {k}")
    # `nac reconstruct --torch` writes this node as PyTorch code: it computes the same
    with torch.no_grad():
        rebuilt = torch_module(g)(*[T(feeds[i]) for i in g.inputs])
    for k, (got, want) in enumerate(zip(rebuilt if isinstance(rebuilt, tuple) else [rebuilt], refs)):
        assert got.numpy().dtype == want.dtype, f"reconstructed {op} output {k}"
        assert_close(got.numpy(), want, 1e-5, f"reconstructed {op} output {k}")


@pytest.mark.parametrize("e", [2.0, 3.0, 4.0, 0.5, 1.7, -1.0])
def test_pow_constant_exponents(e):
    """The fast paths for x ** 2, 3, 4 and 0.5 agree with torch (and the generic path for others)."""
    x = np.random.default_rng(0).uniform(0.1, 3.0, (4, 33)).astype(np.float32)
    c = np.array(e, np.float32)
    g, feeds = one_node_graph("pow", [x, c], {}, x.shape, "float32", params=(1,))
    assert_close(model_from_graph(g).run(feeds)[0], torch.pow(T(x), e).numpy(), 1e-6, f"x ** {e}")


@pytest.mark.parametrize("op,listed", [("layer_norm", 1), ("layer_norm", 2), ("rms_norm", 1)])
def test_norms_with_trailing_optional_inputs_left_out(op, listed):
    """A norm node may list fewer inputs than its op has (the optional weight/bias left out, as
    the op table allows): the plan's kernel and its binder both read the missing ones as absent,
    and agree with torch, as does `nac reconstruct --torch`'s module. A layer_norm listing x and
    weight once took the binder's RMS-norm path, and the kernel and reconstruct raised IndexError."""
    rng = np.random.default_rng(listed)
    x = rng.standard_normal((3, 5, 16)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, 16).astype(np.float32)
    inputs = [x, w][:listed]
    if op == "layer_norm":
        ref = F.layer_norm(T(x), (16,), T(w) if listed > 1 else None, None, 1e-5)
    else:
        ref = F.rms_norm(T(x), (16,), None, 1e-5)
    g, feeds = one_node_graph(op, inputs, {"axes": 1, "eps": 1e-5}, ref.shape, "float32", params=(1,))
    got = model_from_graph(g).run(feeds)[0]
    assert_close(got, ref.numpy(), 1e-5, f"{op} with {listed} input(s)")
    with torch.no_grad():  # `nac reconstruct --torch` reads the missing inputs as absent too
        rebuilt = torch_module(g)(*[T(feeds[i]) for i in g.inputs])
    assert_close(rebuilt.numpy(), ref.numpy(), 1e-5, f"reconstructed {op} with {listed} input(s)")


@pytest.mark.parametrize("op", ["linear", "scaled_dot_product_attention"])
def test_products_with_trailing_optional_inputs_left_out(op):
    """A linear listing only x and weight, and an attention listing only q, k and v (as the op
    table allows), run in a plan, fold as constants and rebuild in PyTorch, agreeing with torch
    at 1e-5. Their kernels once unpacked every input and failed with NacRuntimeError."""
    from nac.compile.passes import fold_constants

    rng = np.random.default_rng(3)
    if op == "linear":
        inputs = [rng.standard_normal((2, 4, 8)).astype(np.float32), rng.standard_normal((6, 8)).astype(np.float32)]
        attrs, ref = {"activation": "none"}, F.linear(T(inputs[0]), T(inputs[1]))
    else:
        inputs = [rng.standard_normal((1, 2, 4, 8)).astype(np.float32) for _ in range(3)]
        attrs = {"scale": 0.3, "is_causal": True}
        ref = F.scaled_dot_product_attention(*map(T, inputs), is_causal=True, scale=0.3)
    g, feeds = one_node_graph(op, inputs, attrs, ref.shape, "float32", params=(1,))
    assert_close(model_from_graph(g).run(feeds)[0], ref.numpy(), 1e-5, f"{op} in a plan")
    with torch.no_grad():
        assert_close(torch_module(g)(*[T(feeds[i]) for i in g.inputs]).numpy(), ref.numpy(), 1e-5,
                     f"reconstructed {op}")
    const, _ = one_node_graph(op, inputs, attrs, ref.shape, "float32", params=range(len(inputs)))
    const.nodes.append(Node("copy", [const.outputs[0]], [const.add_value("copied", "float32", tuple(ref.shape))]))
    const.outputs[:] = ["copied"]
    assert fold_constants(const) == 1, f"{op} of constants folds"
    assert_close(const.const_array(const.nodes[0].inputs[0]), ref.numpy(), 1e-5, f"folded {op}")
