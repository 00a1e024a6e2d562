"""Scalar activations shared by the fused kernels (linear, conv2d) and the unary ops.

Codes index `nac.format.ops.ACTIVATIONS`. The fusable activations (the epilogues of linear and
conv2d, and the unary ops of the same name) are float32 and vectorise; the other element-wise
functions (`act`) are done in float64 and rounded once to float32. Sources: GELU (Hendrycks &
Gimpel 2016; ATen ``gelu`` with approximate none/tanh), SiLU (ATen ``silu``), hardswish (Howard
et al. 2019, ATen ``hardswish``).
"""
import math

import numpy as np
from numba import njit

from nac.engine.kernels.vmath import EXP_FLAGS, NUMPY_ERRORS, sigmoid32, tanh32
from nac.format.ops import ACTIVATIONS

CODES = {name: i for i, name in enumerate(ACTIVATIONS)}
N_FUSABLE = len(ACTIVATIONS)
#: Fast-math flags for the kernels: reassociation and contraction (what vectorises), but not
#: ``nnan``/``ninf``, which would let LLVM assume no NaN or infinity and drop their semantics.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
# extra element-wise functions that are not producer-fusable activations
ERF, HARDSIGMOID, RSQRT, LEAKY_RELU, ELU = 100, 101, 102, 103, 104


@njit(fastmath=FASTMATH)
def erf32(x):
    """float32 erf as a rational function (max abs error 3.3e-7 against libm), clamped to
    [-4, 4] where erf is +-1 in float32. Only multiply, add and divide, so loops over it
    vectorise (this llvmlite has no SVML for ``math.erf``). Coefficients: Eigen's
    ``generic_fast_erf_float`` / XLA's ErfImpl32. NaN stays NaN (both comparisons are false)."""
    x = np.float32(-4.0) if x < np.float32(-4.0) else (np.float32(4.0) if x > np.float32(4.0) else x)
    x2 = x * x
    p = x2 * np.float32(-2.72614225801306e-10) + np.float32(2.77068142495902e-08)
    p = p * x2 + np.float32(-2.10102402082508e-06)
    p = p * x2 + np.float32(-5.69250639462346e-05)
    p = p * x2 + np.float32(-7.34990630326855e-04)
    p = p * x2 + np.float32(-2.95459980854025e-03)
    p = p * x2 + np.float32(-1.60960333262415e-02)
    q = x2 * np.float32(-1.45660718464996e-05) + np.float32(-2.13374055278905e-04)
    q = q * x2 + np.float32(-1.68282697438203e-03)
    q = q * x2 + np.float32(-7.37332916720468e-03)
    q = q * x2 + np.float32(-1.42647390514189e-02)
    return x * p / q


@njit(fastmath=FASTMATH)
def gelu32(v):
    """GELU, erf form, in float32: 0.5 * v * (1 + erf(v / sqrt(2))); NaN for a non-finite v, as
    ATen's CPU kernel gives. Branch-free, so loops over it vectorise."""
    g = np.float32(0.5) * v * (np.float32(1.0) + erf32(v * np.float32(0.7071067811865476)))
    return g if abs(v) < np.float32(np.inf) else np.float32(np.nan)


@njit(inline="always")
def relu6(x):
    """min(max(x, 0), 6), NaN passing through (ATen hardtanh)."""
    return 0.0 if x <= 0.0 else (6.0 if x >= 6.0 else x)


@njit(inline="always")
def act(v, code, p):
    """The element-wise function ``code`` (ERF, HARDSIGMOID, RSQRT, LEAKY_RELU, ELU; parameter
    ``p`` for leaky_relu/elu) of a scalar, in float64; the fusable activations are the float32
    functions below (`bias_act_scalar`)."""
    x = float(v)
    if code == ERF:
        return erf32(np.float32(v))
    if code == HARDSIGMOID:
        return relu6(x + 3.0) / 6.0
    if code == RSQRT:
        return 1.0 / math.sqrt(x) if x > 0.0 else (math.copysign(math.inf, x) if x == 0.0 else math.nan)
    if code == LEAKY_RELU:
        return x if x > 0.0 else p * x
    if code == ELU:
        return x if x > 0.0 else p * (math.exp(x) - 1.0)
    return x


@njit(cache=True, nogil=True, fastmath=EXP_FLAGS, error_model=NUMPY_ERRORS)
def map_activation(x, out, code, p, lo, hi):
    """out[i] = f(x[i]) for 1-D contiguous float32 arrays (``x`` may be ``out``): a fusable
    activation (code < len(ACTIVATIONS)) through the vectorised `bias_act_scalar`, any other
    function through `act`."""
    if code < N_FUSABLE:
        part = out[lo:hi]
        part[:] = x[lo:hi]
        bias_act_scalar(part, np.float32(0.0), code)
        return
    for i in range(lo, hi):
        out[i] = act(x[i], code, p)


# One small function per fusable activation, float32 and branch-free. They are plain Numba
# functions, not inlined by Numba: LLVM inlines them into each loop (and vectorises it), while
# Numba compiles each once; inlining them at Numba's level made one epilogue kernel take 40 s
# to compile. exp and tanh are `nac.engine.kernels.vmath`'s (at most 2 ulp from numpy's).
@njit(fastmath=EXP_FLAGS)
def relu32(v):
    """max(v, 0), NaN passing through (ATen relu)."""
    return np.float32(0.0) if v <= np.float32(0.0) else v


@njit(fastmath=EXP_FLAGS)
def relu6_32(v):
    """min(max(v, 0), 6), NaN passing through (ATen hardtanh(0, 6))."""
    return np.float32(0.0) if v <= np.float32(0.0) else (np.float32(6.0) if v >= np.float32(6.0) else v)


@njit(fastmath=EXP_FLAGS, error_model=NUMPY_ERRORS)
def gelu_tanh32(v):
    """ATen gelu(approximate='tanh'): 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3)))."""
    inner = np.float32(0.7978845608028654) * (v + np.float32(0.044715) * v * v * v)
    return np.float32(0.5) * v * (np.float32(1.0) + tanh32(inner))


@njit(fastmath=EXP_FLAGS, error_model=NUMPY_ERRORS)
def silu32(v):
    """v * sigmoid(v) (ATen silu)."""
    return v * sigmoid32(v)


@njit(fastmath=EXP_FLAGS)
def hardswish32(v):
    """v * relu6(v + 3) / 6 (ATen hardswish)."""
    return v * relu6_32(v + np.float32(3.0)) * np.float32(1.0 / 6.0)


@njit(fastmath=EXP_FLAGS, error_model=NUMPY_ERRORS)
def bias_act_vector(y, bias, code):
    """In place over a 1-D float32 row: y[i] = act(y[i] + bias[i]) for fusable activation ``code``
    (0-8, `nac.format.ops.ACTIVATIONS`); one loop per activation, so each vectorises."""
    n = y.size
    if code == 0:
        for i in range(n):
            y[i] += bias[i]
    elif code == 1:
        for i in range(n):
            y[i] = relu32(y[i] + bias[i])
    elif code == 2:
        for i in range(n):
            y[i] = relu6_32(y[i] + bias[i])
    elif code == 3:
        for i in range(n):
            y[i] = gelu32(y[i] + bias[i])
    elif code == 4:
        for i in range(n):
            y[i] = gelu_tanh32(y[i] + bias[i])
    elif code == 5:
        for i in range(n):
            y[i] = silu32(y[i] + bias[i])
    elif code == 6:
        for i in range(n):
            y[i] = sigmoid32(y[i] + bias[i])
    elif code == 7:
        for i in range(n):
            y[i] = tanh32(y[i] + bias[i])
    elif code == 8:
        for i in range(n):
            y[i] = hardswish32(y[i] + bias[i])


@njit(fastmath=EXP_FLAGS, error_model=NUMPY_ERRORS)
def bias_act_scalar(y, b, code):
    """In place over a 1-D float32 row: y[i] = act(y[i] + b) for fusable activation ``code``."""
    n = y.size
    if code == 0:
        for i in range(n):
            y[i] += b
    elif code == 1:
        for i in range(n):
            y[i] = relu32(y[i] + b)
    elif code == 2:
        for i in range(n):
            y[i] = relu6_32(y[i] + b)
    elif code == 3:
        for i in range(n):
            y[i] = gelu32(y[i] + b)
    elif code == 4:
        for i in range(n):
            y[i] = gelu_tanh32(y[i] + b)
    elif code == 5:
        for i in range(n):
            y[i] = silu32(y[i] + b)
    elif code == 6:
        for i in range(n):
            y[i] = sigmoid32(y[i] + b)
    elif code == 7:
        for i in range(n):
            y[i] = tanh32(y[i] + b)
    elif code == 8:
        for i in range(n):
            y[i] = hardswish32(y[i] + b)


@njit(cache=True, nogil=True, fastmath=EXP_FLAGS, error_model=NUMPY_ERRORS)
def bias_act_rows(y, bias, has_bias, code, lo, hi):
    """In place: y[m, n] = act(y[m, n] + bias[n]) for a 2-D contiguous float32 ``y`` (no bias
    unless ``has_bias``)."""
    if not has_bias:
        if code == 0:
            return
        bias = np.zeros(y.shape[1], np.float32)
    for m in range(lo, hi):
        bias_act_vector(y[m], bias, code)


@njit(cache=True, nogil=True, fastmath=EXP_FLAGS, error_model=NUMPY_ERRORS)
def bias_act_channels(y, bias, has_bias, code, lo, hi):
    """In place: y[n, c, i] = act(y[n, c, i] + bias[c]) for a 3-D contiguous float32 ``y``."""
    N, C, S = y.shape
    for nc in range(lo, hi):
        n = nc // C
        c = nc % C
        bias_act_scalar(y[n, c], bias[c] if has_bias else np.float32(0.0), code)


def flat(a: np.ndarray) -> np.ndarray:
    """A 1-D contiguous view (or copy, if ``a`` is strided) of ``a``."""
    return np.ascontiguousarray(a).reshape(-1)
