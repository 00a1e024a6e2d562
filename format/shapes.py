"""Shape inference: the output shape (and, where the op fixes it, the dtype) of every NAC op,
computed from its input shapes and attributes, with every attribute checked on the way.

The exporter records each value's shape in the graph, but a file is untrusted: the engine's
kernels write into buffers sized from those recorded shapes, so a wrong one would let a kernel
write past its slot. `infer` is therefore run for every node when a graph is loaded (at sample
points of the dimension ranges) and, exactly, whenever a plan is built for concrete shapes; a
node whose recorded outputs disagree is refused (`nac.format.validate`).

Each rule mirrors the ATen op the NAC op lowers from (see `nac.format.ops`). Shapes here are
tuples of Python ints, so nothing overflows.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

Shape = tuple[int, ...]
#: (shape, dtype or None): None where the recorded dtype is free (type promotion is recorded).
Out = tuple[Shape, "str | None"]

MAX_RANK = 16


class ShapeError(ValueError):
    """Inputs or attributes that the op cannot accept; the message says which and why."""


# -- attribute readers (each raises ShapeError naming the attribute) ---------------------------------
def _get(attrs: dict, key: str, default):
    """The attribute, or ``default`` written into ``attrs`` (so kernels see every attribute)."""
    if key not in attrs and default is not None:
        attrs[key] = default
    return attrs.get(key, default)


def _int(attrs: dict, key: str, default=None, lo: int | None = None, hi: int | None = None) -> int:
    v = _get(attrs, key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ShapeError(f"attribute {key!r} must be an integer, not {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ShapeError(f"attribute {key!r} = {v} is outside [{lo}, {hi if hi is not None else 'inf'}]")
    return v


def _ints(attrs: dict, key: str, n: int | None = None, lo: int | None = None, default=None) -> list[int]:
    v = _get(attrs, key, default)
    if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, int) for x in v):
        raise ShapeError(f"attribute {key!r} must be a list of integers, not {v!r}")
    if n is not None and len(v) != n:
        raise ShapeError(f"attribute {key!r} must have {n} entries, not {len(v)}")
    if lo is not None and any(x < lo for x in v):
        raise ShapeError(f"attribute {key!r} = {v} has an entry below {lo}")
    return v


def _bool(attrs: dict, key: str, default=False) -> bool:
    v = _get(attrs, key, default)
    if not isinstance(v, bool):
        raise ShapeError(f"attribute {key!r} must be true or false, not {v!r}")
    return v


def _float(attrs: dict, key: str, default=None, optional: bool = False):
    v = _get(attrs, key, default)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ShapeError(f"attribute {key!r} must be a number, not {v!r}")
    return float(v)


def _choice(attrs: dict, key: str, choices: Sequence[str], default: str) -> str:
    v = _get(attrs, key, default)
    if v not in choices:
        raise ShapeError(f"attribute {key!r} must be one of {list(choices)}, not {v!r}")
    return v


def _axis(d: int, rank: int, key: str = "dim") -> int:
    if not -max(rank, 1) <= d < max(rank, 1):
        raise ShapeError(f"attribute {key!r} = {d} is out of range for rank {rank}")
    return d % max(rank, 1)


def _dtype(attrs: dict) -> str:
    from nac.format.graph import DTYPES

    v = attrs.get("dtype")
    if v not in DTYPES:
        raise ShapeError(f"attribute 'dtype' must be one of {sorted(DTYPES)}, not {v!r}")
    return v


def _need(ins: list, k: int, op: str) -> Shape:
    if k >= len(ins) or ins[k] is None:
        raise ShapeError(f"{op} needs input {k}")
    return ins[k]


def broadcast(*shapes: Shape) -> Shape:
    """numpy/ATen broadcasting of ``shapes``; raises ShapeError when they do not broadcast."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for k in range(rank):
        dims = {s[len(s) - rank + k] for s in shapes if len(s) - rank + k >= 0} - {1}
        if len(dims) > 1:
            raise ShapeError(f"shapes {[list(s) for s in shapes]} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


# -- rules -------------------------------------------------------------------------------------------
RULES: dict[str, Callable] = {}


def rule(*ops: str):
    """Register the decorated ``fn(op, input_shapes, input_dtypes, attrs) -> [(shape, dtype)]`` as
    the shape rule of each op in ``ops``."""
    def deco(fn):
        for op in ops:
            RULES[op] = fn
        return fn
    return deco


_COMPARE = ("eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or")
_ARITH = ("add", "sub", "mul", "div", "pow", "maximum", "minimum", "remainder", "bitwise_and", "bitwise_or")
_UNARY = ("neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal", "sin", "cos", "erf", "relu", "sigmoid", "tanh",
          "silu", "hardswish", "hardsigmoid", "floor", "ceil", "round", "sign", "copy")


@rule(*_COMPARE, *_ARITH)
def _binary(op, ins, dts, attrs):
    return [(broadcast(_need(ins, 0, op), _need(ins, 1, op)), "bool" if op in _COMPARE else None)]


@rule(*_UNARY)
def _unary(op, ins, dts, attrs):
    return [(_need(ins, 0, op), None)]


@rule("logical_not")
def _logical_not(op, ins, dts, attrs):
    return [(_need(ins, 0, op), "bool")]


@rule("gelu")
def _gelu(op, ins, dts, attrs):
    _choice(attrs, "approximate", ("none", "tanh"), "none")
    return [(_need(ins, 0, op), None)]


@rule("clamp")
def _clamp(op, ins, dts, attrs):
    _float(attrs, "min", optional=True)
    _float(attrs, "max", optional=True)
    return [(_need(ins, 0, op), None)]


@rule("leaky_relu")
def _leaky(op, ins, dts, attrs):
    _float(attrs, "negative_slope")
    return [(_need(ins, 0, op), None)]


@rule("elu")
def _elu(op, ins, dts, attrs):
    _float(attrs, "alpha")
    return [(_need(ins, 0, op), None)]


@rule("cast")
def _cast(op, ins, dts, attrs):
    return [(_need(ins, 0, op), _dtype(attrs))]


@rule("where")
def _where(op, ins, dts, attrs):
    return [(broadcast(_need(ins, 0, op), _need(ins, 1, op), _need(ins, 2, op)), None)]


@rule("matmul")
def _matmul(op, ins, dts, attrs):
    a, b = _need(ins, 0, op), _need(ins, 1, op)
    if not a or not b:
        raise ShapeError("matmul inputs must have rank >= 1")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise ShapeError(f"matmul inner dimensions differ: {list(a)} @ {list(b)}")
    out = broadcast(a2[:-2], b2[:-2]) + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return [(out, None)]


def _activation(attrs: dict) -> None:
    from nac.format.ops import ACTIVATIONS

    _choice(attrs, "activation", ACTIVATIONS, "none")


@rule("linear")
def _linear(op, ins, dts, attrs):
    x, w = _need(ins, 0, op), _need(ins, 1, op)
    _activation(attrs)
    layout = _choice(attrs, "weight_layout", ("oi", "io"), "oi")
    _choice(attrs, "activation_quant", ("none", "int8"), "none")
    if len(x) < 1 or len(w) != 2:
        raise ShapeError(f"linear needs x of rank >= 1 and a 2-D weight, got {list(x)} and {list(w)}")
    n, k = (w[1], w[0]) if layout == "io" else w
    if x[-1] != k:
        raise ShapeError(f"linear: x has {x[-1]} features, the weight {list(w)} ({layout}) takes {k}")
    if len(ins) > 2 and ins[2] is not None and ins[2] != (n,):
        raise ShapeError(f"linear: bias {list(ins[2])} should be [{n}]")
    return [(x[:-1] + (n,), "float32")]


@rule("conv2d")
def _conv2d(op, ins, dts, attrs):
    x, w = _need(ins, 0, op), _need(ins, 1, op)
    _activation(attrs)
    sh, sw = _ints(attrs, "stride", 2, lo=1)
    pads = _ints(attrs, "padding", 4, lo=0)
    dh, dw = _ints(attrs, "dilation", 2, lo=1, default=[1, 1])
    groups = _int(attrs, "groups", 1, lo=1)
    if len(x) != 4 or len(w) != 4:
        raise ShapeError(f"conv2d needs 4-D input and weight, got {list(x)} and {list(w)}")
    n, c, h, wd = x
    co, cg, kh, kw = w
    if c % groups or co % groups or cg * groups != c:
        raise ShapeError(f"conv2d: {c} input channels, weight {list(w)} and groups={groups} do not fit")
    if len(ins) > 2 and ins[2] is not None and ins[2] != (co,):
        raise ShapeError(f"conv2d: bias {list(ins[2])} should be [{co}]")
    oh = (h + pads[0] + pads[1] - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pads[2] + pads[3] - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1 or kh < 1 or kw < 1:
        raise ShapeError(f"conv2d: output size {oh}x{ow} is empty for input {list(x)} and weight {list(w)}")
    if len(ins) > 3 and ins[3] is not None:
        if tuple(ins[3]) != (n, co, oh, ow):
            raise ShapeError(f"conv2d: residual {list(ins[3])} should be the output's shape {[n, co, oh, ow]}")
        if len(dts) > 3 and dts[3] not in (None, "float32"):
            raise ShapeError(f"conv2d: residual is {dts[3]}, not float32")
    return [((n, co, oh, ow), "float32")]


@rule("scaled_dot_product_attention")
def _sdpa(op, ins, dts, attrs):
    q, k, v = _need(ins, 0, op), _need(ins, 1, op), _need(ins, 2, op)
    _float(attrs, "scale")
    _bool(attrs, "is_causal")
    gqa = _bool(attrs, "enable_gqa")
    if len(q) < 3 or len(k) != len(q) or len(v) != len(q):
        raise ShapeError(f"attention needs q, k, v of one rank >= 3, got {list(q)}, {list(k)}, {list(v)}")
    H, L, E = q[-3:]
    hk, S, ek = k[-3:]
    if ek != E or v[-2] != S or v[-3] != hk:
        raise ShapeError(f"attention: q {list(q)}, k {list(k)}, v {list(v)} do not fit together")
    if hk != H and not (gqa and hk > 0 and H % hk == 0):
        raise ShapeError(f"attention: {H} query heads and {hk} key heads need enable_gqa with a divisor")
    lead = broadcast(q[:-3], k[:-3], v[:-3])
    if lead != q[:-3]:
        raise ShapeError(f"attention: key/value batch dims {list(k[:-3])} do not broadcast to {list(q[:-3])}")
    tails = [ins[i] if len(ins) > i else None for i in (4, 5)]
    if (tails[0] is None) != (tails[1] is None):
        raise ShapeError("attention: k_tail and v_tail come together")
    if tails[0] is not None:
        kt, vt = tails
        if len(kt) != len(k) or kt[:-2] != k[:-2] or kt[-1] != E or len(vt) != len(v) or vt[:-2] != v[:-2] \
                or vt[-1] != v[-1] or vt[-2] != kt[-2]:
            raise ShapeError(f"attention: k_tail {list(kt)} / v_tail {list(vt)} do not continue k {list(k)} / v {list(v)}")
        S += kt[-2]
    if len(ins) > 3 and ins[3] is not None:
        if broadcast(ins[3], q[:-3] + (H, L, S)) != q[:-3] + (H, L, S):
            raise ShapeError(f"attention: mask {list(ins[3])} does not broadcast to {list(q[:-3] + (H, L, S))}")
    return [(q[:-3] + (H, L, v[-1]), "float32")]


@rule("rotary_embedding")
def _rotary(op, ins, dts, attrs):
    x, c, s = _need(ins, 0, op), _need(ins, 1, op), _need(ins, 2, op)
    if not x or x[-1] % 2:
        raise ShapeError(f"rotary_embedding needs an even last axis, got {list(x)}")
    for k, name in enumerate(("x", "cos", "sin")):
        if len(dts) > k and dts[k] not in (None, "float32"):
            raise ShapeError(f"rotary_embedding: {name} is {dts[k]}, not float32")
    for name, t in (("cos", c), ("sin", s)):
        try:
            fits = broadcast(t, x) == x
        except ShapeError:
            fits = False
        if not fits:
            raise ShapeError(f"rotary_embedding: {name} {list(t)} does not broadcast to x {list(x)}")
    return [(x, "float32")]


def _pool_out(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """ATen pooling_output_shape: windows that start in the padding on the right are dropped."""
    span = n + 2 * p - d * (k - 1) - 1
    o = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (o - 1) * s >= n + p:
        o -= 1
    return o


def _pool(op, ins, attrs, dilation: bool):
    x = _need(ins, 0, op)
    kh, kw = _ints(attrs, "kernel", 2, lo=1)
    sh, sw = _ints(attrs, "stride", 2, lo=1)
    ph, pw = _ints(attrs, "padding", 2, lo=0)
    dh, dw = _ints(attrs, "dilation", 2, lo=1, default=[1, 1]) if dilation else (1, 1)
    ceil_mode = _bool(attrs, "ceil_mode")
    if len(x) != 4:
        raise ShapeError(f"{op} needs a 4-D input, got {list(x)}")
    if ph > kh // 2 or pw > kw // 2:
        raise ShapeError(f"{op}: padding {[ph, pw]} exceeds half the kernel {[kh, kw]}")
    oh, ow = _pool_out(x[2], kh, sh, ph, dh, ceil_mode), _pool_out(x[3], kw, sw, pw, dw, ceil_mode)
    if oh < 1 or ow < 1:
        raise ShapeError(f"{op}: output size {oh}x{ow} is empty for input {list(x)}")
    return [((x[0], x[1], oh, ow), "float32")]


@rule("max_pool2d")
def _max_pool(op, ins, dts, attrs):
    return _pool(op, ins, attrs, True)


@rule("avg_pool2d")
def _avg_pool(op, ins, dts, attrs):
    _bool(attrs, "count_include_pad", True)
    if attrs.get("divisor_override") is not None:
        _int(attrs, "divisor_override", lo=1)
    return _pool(op, ins, attrs, False)


@rule("adaptive_avg_pool2d")
def _adaptive(op, ins, dts, attrs):
    x = _need(ins, 0, op)
    oh, ow = _ints(attrs, "output_size", 2, lo=1)
    if len(x) != 4 or x[2] < 1 or x[3] < 1:
        raise ShapeError(f"adaptive_avg_pool2d needs a non-empty 4-D input, got {list(x)}")
    return [((x[0], x[1], oh, ow), "float32")]


@rule("upsample2d")
def _upsample2d(op, ins, dts, attrs):
    x = _need(ins, 0, op)
    mode = _choice(attrs, "mode", ("nearest", "bilinear"), "nearest")
    _bool(attrs, "align_corners", False)
    if mode == "nearest" and attrs["align_corners"]:
        raise ShapeError("upsample2d: align_corners applies to bilinear mode only")
    oh, ow = _ints(attrs, "size", 2, lo=1)
    scales = attrs.get("scales")
    if scales is not None and (not isinstance(scales, list) or len(scales) != 2 or any(
            isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < 1e6 for s in scales)):
        raise ShapeError(f"attribute 'scales' must be null or two positive numbers, not {scales!r}")
    if len(x) != 4 or x[2] < 1 or x[3] < 1:
        raise ShapeError(f"upsample2d needs a non-empty 4-D input, got {list(x)}")
    return [((x[0], x[1], oh, ow), "float32")]


def _reduced(x: Shape, dims: list[int], keepdim: bool) -> Shape:
    axes = {_axis(d, len(x), "dims") for d in dims} if dims else set(range(len(x)))
    if len(axes) != len(dims or axes):
        raise ShapeError(f"attribute 'dims' = {dims} repeats an axis")
    return tuple(1 if k in axes else s for k, s in enumerate(x) if keepdim or k not in axes)


@rule("sum", "mean", "amax", "amin", "prod", "any", "all", "var")
def _reduce(op, ins, dts, attrs):
    x = _need(ins, 0, op)
    dims = _ints(attrs, "dims", default=[])
    keep = _bool(attrs, "keepdim")
    if op == "var":
        _float(attrs, "correction", 1.0)
    out = _reduced(x, dims, keep)
    if op in ("amax", "amin") and any(x[d % len(x)] == 0 for d in (dims or range(len(x)))):
        raise ShapeError(f"{op} over an empty axis")
    return [(out, "bool" if op in ("any", "all") else None)]


@rule("argmax", "argmin")
def _arg(op, ins, dts, attrs):
    x = _need(ins, 0, op)
    d = _axis(_int(attrs, "dim"), len(x))
    if x and x[d] == 0:
        raise ShapeError(f"{op} over an empty axis")
    return [(_reduced(x, [d], _bool(attrs, "keepdim")) if x else (), "int64")]


@rule("sort", "topk")
def _sort(op, ins, dts, attrs):
    x = _need(ins, 0, op)
    if not x:
        raise ShapeError(f"{op} needs an input of rank 1 or more")
    d = _axis(_int(attrs, "dim", -1), len(x))
    _bool(attrs, "descending" if op == "sort" else "largest", op == "topk")
    out = list(x)
    if op == "topk":
        out[d] = _int(attrs, "k", lo=0, hi=x[d])
    return [(tuple(out), None), (tuple(out), "int64")]


@rule("cumsum", "softmax", "log_softmax")
def _along(op, ins, dts, attrs):
    x = _need(ins, 0, op)
    _axis(_int(attrs, "dim"), len(x))
    return [(x, None)]


@rule("layer_norm", "rms_norm")
def _norm(op, ins, dts, attrs):
    x = _need(ins, 0, op)
    axes = _int(attrs, "axes", lo=0, hi=len(x))
    _float(attrs, "eps")
    tail = x[len(x) - axes:]
    for k in (1, 2) if op == "layer_norm" else (1,):
        if len(ins) > k and ins[k] is not None and math.prod(ins[k]) != math.prod(tail):
            raise ShapeError(f"{op}: weight/bias {list(ins[k])} should match the normalised axes {list(tail)}")
    return [(x, "float32")]


@rule("batch_norm")
def _batch_norm(op, ins, dts, attrs):
    x = _need(ins, 0, op)
    _float(attrs, "eps")
    if len(x) < 2:
        raise ShapeError(f"batch_norm needs rank >= 2, got {list(x)}")
    for k in range(1, 5):
        if len(ins) > k and ins[k] is not None and ins[k] != (x[1],):
            raise ShapeError(f"batch_norm: input {k} {list(ins[k])} should be [{x[1]}]")
    _need(ins, 3, op)
    _need(ins, 4, op)
    return [(x, "float32")]


@rule("embedding")
def _embedding(op, ins, dts, attrs):
    w, idx = _need(ins, 0, op), _need(ins, 1, op)
    if len(w) != 2:
        raise ShapeError(f"embedding needs a 2-D table, got {list(w)}")
    if len(dts) > 1 and dts[1] is not None and dts[1] not in ("int64", "int32", "int8", "uint8"):
        raise ShapeError(f"embedding indices must be integers, not {dts[1]}")
    return [(idx + (w[1],), None)]


def _int_index(dts, k: int, op: str) -> None:
    if len(dts) > k and dts[k] is not None and dts[k] not in ("int64", "int32", "int8", "uint8"):
        raise ShapeError(f"{op} indices must be integers, not {dts[k]}")


@rule("gather")
def _gather(op, ins, dts, attrs):
    x, idx = _need(ins, 0, op), _need(ins, 1, op)
    d = _axis(_int(attrs, "dim"), len(x))
    _int_index(dts, 1, op)
    if len(idx) != len(x) or any(i > s for k, (i, s) in enumerate(zip(idx, x)) if k != d):
        raise ShapeError(f"gather: index {list(idx)} does not fit input {list(x)} along dim {d}")
    return [(idx, None)]


@rule("index_select")
def _index_select(op, ins, dts, attrs):
    x, idx = _need(ins, 0, op), _need(ins, 1, op)
    d = _axis(_int(attrs, "dim"), len(x))
    _int_index(dts, 1, op)
    if len(idx) > 1:
        raise ShapeError(f"index_select needs a 1-D index, got {list(idx)}")
    return [(x[:d] + (math.prod(idx),) + x[d + 1:], None)]


@rule("index")
def _index(op, ins, dts, attrs):
    x = _need(ins, 0, op)
    idx = list(ins[1:])
    if len(idx) > len(x):
        raise ShapeError(f"index: {len(idx)} indices for rank {len(x)}")
    used = [k for k, i in enumerate(idx) if i is not None]
    if any(dts[k + 1] == "bool" for k in used if len(dts) > k + 1):
        return [(None, None)]  # a boolean mask: the size depends on the data (the kernel checks it)
    for k in used:
        _int_index(dts, k + 1, op)
    if not used:
        return [(x, None)]
    b = broadcast(*[idx[k] for k in used])
    rest = [s for k, s in enumerate(x) if k >= len(idx) or idx[k] is None]
    if used == list(range(used[0], used[-1] + 1)):  # adjacent: the result takes their place
        out = tuple(x[:used[0]]) + b + tuple(x[used[-1] + 1:])
    else:
        out = b + tuple(rest)
    return [(out, None)]


def _target_shape(attrs: dict, key: str) -> list[int]:
    shape = _ints(attrs, key, lo=-1)
    if len(shape) > MAX_RANK:
        raise ShapeError(f"attribute {key!r} has rank {len(shape)} (at most {MAX_RANK})")
    return shape


@rule("reshape")
def _reshape(op, ins, dts, attrs):
    x = _need(ins, 0, op)
    shape = _target_shape(attrs, "shape")
    n = math.prod(x)
    if shape.count(-1) > 1:
        raise ShapeError(f"reshape: shape {shape} has more than one -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if known == 0 or n % known:
            raise ShapeError(f"reshape: cannot infer -1 in {shape} for {n} elements")
        shape = [n // known if s == -1 else s for s in shape]
    if math.prod(shape) != n:
        raise ShapeError(f"reshape: {list(x)} ({n} elements) cannot become {shape}")
    return [(tuple(shape), None)]


@rule("permute")
def _permute(op, ins, dts, attrs):
    x = _need(ins, 0, op)
    perm = _ints(attrs, "perm")
    if sorted(p % max(len(x), 1) if -len(x) <= p < len(x) else -1 for p in perm) != list(range(len(x))):
        raise ShapeError(f"permute: {perm} is not a permutation of the {len(x)} axes")
    return [(tuple(x[p] for p in perm), None)]


@rule("expand")
def _expand(op, ins, dts, attrs):
    x = _need(ins, 0, op)
    shape = _target_shape(attrs, "shape")
    if len(shape) < len(x):
        raise ShapeError(f"expand: shape {shape} has fewer axes than the input {list(x)}")
    lead = len(shape) - len(x)
    out = []
    for k, s in enumerate(shape):
        have = x[k - lead] if k >= lead else None
        if s == -1:
            if have is None:
                raise ShapeError(f"expand: -1 at new leading axis {k} of {shape}")
            s = have
        if have is not None and have != s and have != 1:
            raise ShapeError(f"expand: input {list(x)} cannot expand to {shape}")
        out.append(s)
    return [(tuple(out), None)]


@rule("slice")
def _slice(op, ins, dts, attrs):
    x = _need(ins, 0, op)
    d = _axis(_int(attrs, "dim"), len(x))
    start, end = _int(attrs, "start", 0), _int(attrs, "end", x[d])
    step = _int(attrs, "step", 1, lo=1)
    return [(x[:d] + (len(range(*slice(start, end, step).indices(x[d]))),) + x[d + 1:], None)]


@rule("select")
def _select(op, ins, dts, attrs):
    x = _need(ins, 0, op)
    d = _axis(_int(attrs, "dim"), len(x))
    i = _int(attrs, "index")
    if not -x[d] <= i < x[d]:
        raise ShapeError(f"select: index {i} is out of range for size {x[d]}")
    return [(x[:d] + x[d + 1:], None)]


@rule("flip")
def _flip(op, ins, dts, attrs):
    x = _need(ins, 0, op)
    dims = _ints(attrs, "dims")
    axes = [_axis(d, len(x), "dims") for d in dims]
    if len(set(axes)) != len(axes):
        raise ShapeError(f"flip: attribute 'dims' = {dims} repeats an axis")
    return [(x, None)]


@rule("cat")
def _cat(op, ins, dts, attrs):
    xs = [s for s in ins if s is not None]
    if not xs or len(xs) != len(ins):
        raise ShapeError("cat needs one or more inputs, none absent")
    d = _axis(_int(attrs, "dim"), len(xs[0]))
    for s in xs:
        if len(s) != len(xs[0]) or s[:d] + s[d + 1:] != xs[0][:d] + xs[0][d + 1:]:
            raise ShapeError(f"cat: shapes {[list(s) for s in xs]} differ outside dim {d}")
    return [(xs[0][:d] + (sum(s[d] for s in xs),) + xs[0][d + 1:], None)]


@rule("pad")
def _pad(op, ins, dts, attrs):
    x = _need(ins, 0, op)
    pads = _ints(attrs, "pads")
    _float(attrs, "value", 0.0)
    if len(pads) % 2 or len(pads) > 2 * len(x):
        raise ShapeError(f"pad: {len(pads)} pads for rank {len(x)}")
    out = list(x)
    for k in range(len(pads) // 2):
        axis = len(x) - 1 - k
        out[axis] = x[axis] + pads[2 * k] + pads[2 * k + 1]
        if out[axis] < 0:
            raise ShapeError(f"pad: axis {axis} of size {x[axis]} cannot be cropped by {pads[2 * k:2 * k + 2]}")
    return [(tuple(out), None)]


@rule("repeat")
def _repeat(op, ins, dts, attrs):
    x = _need(ins, 0, op)
    reps = _ints(attrs, "repeats", lo=0)
    if len(reps) < len(x) or len(reps) > MAX_RANK:
        raise ShapeError(f"repeat: {len(reps)} repeats for rank {len(x)}")
    full = (1,) * (len(reps) - len(x)) + x
    return [(tuple(a * b for a, b in zip(full, reps)), None)]


@rule("arange")
def _arange(op, ins, dts, attrs):
    start, end, step = (_float(attrs, k, d) for k, d in (("start", 0), ("end", None), ("step", 1)))
    dt = _dtype(attrs)
    if step == 0 or not all(math.isfinite(v) for v in (start, end, step)):
        raise ShapeError(f"arange: start {start}, end {end}, step {step} give no finite range")
    return [((max(0, math.ceil((end - start) / step)),), dt)]


@rule("full")
def _full(op, ins, dts, attrs):
    shape = _ints(attrs, "shape", lo=0)
    if len(shape) > MAX_RANK:
        raise ShapeError(f"full: rank {len(shape)} (at most {MAX_RANK})")
    v = attrs.get("value")
    if not isinstance(v, (bool, int, float)):
        raise ShapeError(f"attribute 'value' must be a number, not {v!r}")
    return [(tuple(shape), _dtype(attrs))]


def infer(op: str, ins: Sequence[Shape | None], dtypes: Sequence[str | None], attrs: dict) -> list[Out]:
    """The outputs ``[(shape, dtype or None), ...]`` of ``op`` for input shapes ``ins`` (None for
    an absent optional input; a quantised weight gives its logical shape), input dtypes and
    attributes whose dimension expressions are already evaluated. A shape of None means the
    size depends on the data (boolean-mask indexing); its kernel checks the output itself.

    Raises:
        ShapeError: the op is unknown, an attribute is missing or ill-typed, or the inputs do not
            fit the op (the message says which and why).
    """
    fn = RULES.get(op)
    if fn is None:
        raise ShapeError(f"no shape rule for op {op!r}")
    if not isinstance(attrs, dict):
        raise ShapeError(f"attributes must be an object, not {type(attrs).__name__}")
    try:
        return fn(op, list(ins), list(dtypes), attrs)
    except (TypeError, IndexError, ZeroDivisionError, OverflowError) as exc:  # a malformed attribute
        raise ShapeError(f"{type(exc).__name__}: {exc}") from None
