"""Element-wise kernels: numpy ufuncs with ``out=`` for arithmetic (one vectorised pass, with
numpy/ATen broadcasting), Numba loops for transcendental activations."""
from __future__ import annotations

import numpy as np

from nac.engine import threads as T
from nac.engine.kernels import activation as A
from nac.engine.kernels.registry import kernel

_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide, "pow": np.power,
    "maximum": np.maximum, "minimum": np.minimum, "remainder": np.remainder,
    "eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater,
    "ge": np.greater_equal, "logical_and": np.logical_and, "logical_or": np.logical_or,
    "bitwise_and": np.bitwise_and, "bitwise_or": np.bitwise_or,
}
_UNARY_NUMPY = {
    "neg": np.negative, "abs": np.abs, "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "reciprocal": np.reciprocal,
    "sin": np.sin, "cos": np.cos, "tanh": np.tanh, "floor": np.floor, "ceil": np.ceil,
    "logical_not": np.logical_not, "round": np.rint,
}
_UNARY_NUMBA = {"relu": A.CODES["relu"], "sigmoid": A.CODES["sigmoid"], "silu": A.CODES["silu"],
                "hardswish": A.CODES["hardswish"], "erf": A.ERF, "hardsigmoid": A.HARDSIGMOID, "rsqrt": A.RSQRT}


def _binary_kernel(ufunc):
    def run(ins, outs, attrs):
        """Broadcasting ``ufunc(a, b)`` into the output (ATen type promotion is recorded on it)."""
        a, b = ins
        if ufunc is np.true_divide and a.dtype.kind in "iub" and b.dtype.kind in "iub":
            a = a.astype(np.float64)
        ufunc(a, b, out=outs[0], casting="unsafe")
    run.__name__ = f"{ufunc.__name__}_kernel"
    return run


for _op, _uf in _BINARY.items():
    if _op != "pow":
        kernel(_op)(_binary_kernel(_uf))

_generic_pow = _binary_kernel(np.power)


@kernel("pow")
def pow_(ins, outs, attrs):
    """ATen pow: a ** b. A constant exponent of 2, 3, 4 or 0.5 (GPT-2's tanh GELU writes x ** 3)
    uses multiplies or sqrt: numpy's generic power takes ~50x longer."""
    a, b = ins
    out = outs[0]
    if b.size == 1 and a.dtype.kind == "f" and out.dtype == a.dtype and out.shape == a.shape:
        e = float(b.reshape(-1)[0])
        if e == 2.0:
            np.multiply(a, a, out=out)
            return
        if e in (3.0, 4.0):
            np.multiply(a, a, out=out)
            np.multiply(out, a if e == 3.0 else out, out=out)
            return
        if e == 0.5:
            np.sqrt(a, out=out)
            return
    _generic_pow(ins, outs, attrs)


def _unary_numpy(ufunc):
    def run(ins, outs, attrs):
        with np.errstate(all="ignore"):  # IEEE results as torch's (log(0) = -inf), without numpy's warnings
            ufunc(ins[0], out=outs[0], casting="unsafe")
    return run


for _op, _uf in _UNARY_NUMPY.items():
    kernel(_op)(_unary_numpy(_uf))


def _float_map(x: np.ndarray, out: np.ndarray, code: int, p: float = 0.0) -> None:
    if out.ndim == 4 and x.shape == out.shape and x.strides == out.strides and not out.flags.c_contiguous \
            and out.transpose(0, 2, 3, 1).flags.c_contiguous:  # both channels-last: map in memory order
        x, out = x.transpose(0, 2, 3, 1), out.transpose(0, 2, 3, 1)
    if out.dtype == np.float32 and out.flags.c_contiguous:
        xf, of = A.flat(x.astype(np.float32, copy=False)), out.reshape(-1)
        T.parallel_range(A.map_activation, of.size, xf, of, code, p)
    else:  # other dtypes: compute in float32, then cast
        tmp = np.empty(out.shape, np.float32)
        xf, of = A.flat(np.broadcast_to(x, out.shape).astype(np.float32)), tmp.reshape(-1)
        T.parallel_range(A.map_activation, of.size, xf, of, code, p)
        np.copyto(out, tmp, casting="unsafe")


def _unary_numba(code):
    def run(ins, outs, attrs):
        _float_map(ins[0], outs[0], code)
    return run


for _op, _code in _UNARY_NUMBA.items():
    kernel(_op)(_unary_numba(_code))


@kernel("sign")
def sign(ins, outs, attrs):
    """ATen sign: (x > 0) - (x < 0), so NaN and -0 give 0 (numpy's sign would give NaN)."""
    x, out = ins[0], outs[0]
    np.subtract(np.greater(x, 0), np.less(x, 0), out=out, dtype=np.int8, casting="unsafe")


@kernel("gelu")
def gelu(ins, outs, attrs):
    """ATen gelu: x * Phi(x) (erf form), or the tanh approximation when approximate='tanh'."""
    _float_map(ins[0], outs[0], A.CODES["gelu_tanh" if attrs.get("approximate") == "tanh" else "gelu"])


@kernel("leaky_relu")
def leaky_relu(ins, outs, attrs):
    _float_map(ins[0], outs[0], A.LEAKY_RELU, float(attrs["negative_slope"]))


@kernel("elu")
def elu(ins, outs, attrs):
    _float_map(ins[0], outs[0], A.ELU, float(attrs["alpha"]))


@kernel("clamp")
def clamp(ins, outs, attrs):
    """ATen clamp/hardtanh: min(max(x, min), max); a null bound is open."""
    x, out = ins[0], outs[0]
    lo, hi = attrs.get("min"), attrs.get("max")
    if x.dtype.kind in "iu":
        lo = None if lo is None else int(np.ceil(lo))
        hi = None if hi is None else int(np.floor(hi))
    if lo is None and hi is None:
        np.copyto(out, x)
    elif lo is None:
        np.minimum(x, hi, out=out, casting="unsafe")
    elif hi is None:
        np.maximum(x, lo, out=out, casting="unsafe")
    else:
        np.clip(x, lo, hi, out=out, casting="unsafe")


@kernel("cast")
def cast(ins, outs, attrs):
    """Convert dtype as ATen ``_to_copy``: float -> int truncates toward zero, nonzero -> True
    (a non-finite float gives the platform's value, as in torch, and no warning)."""
    with np.errstate(invalid="ignore"):
        np.copyto(outs[0], ins[0], casting="unsafe")


@kernel("where")
def where(ins, outs, attrs):
    """ATen where.self: a where cond else b, broadcasting all three."""
    c, a, b = ins
    np.copyto(outs[0], b, casting="unsafe")
    np.copyto(outs[0], a, casting="unsafe", where=np.broadcast_to(c, outs[0].shape).astype(bool, copy=False))


@kernel("copy")
def copy(ins, outs, attrs):
    np.copyto(outs[0], ins[0])
