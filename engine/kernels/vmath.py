"""Float32 transcendental functions that LLVM vectorises inside Numba loops.

This llvmlite has no SVML, so ``math.exp`` in a Numba loop stays a scalar libm call, and Numba's
default error model turns every float division into a branch that raises ZeroDivisionError, which
also stops the vectoriser. The functions here use only multiply, add, compare/select, one
float->int conversion and a bit cast, so a loop calling them runs 8 or 16 lanes at a time.
Kernels that divide elementwise are compiled with ``error_model="numpy"`` (`NUMPY_ERRORS`), where
x / 0 is inf or NaN as in numpy instead of an exception.

`exp32` is Cephes' ``expf`` (S. Moshier, Cephes Math Library 2.2, ``expf.c``): Cody-Waite range
reduction x = n ln 2 + r, |r| <= ln(2) / 2, and a degree-5 minimax polynomial for e^r, then
multiplied by 2^n by adding n to the result's exponent bits. Measured against the correctly
rounded float32 value on [-87, 88.72]: at most 2 ulp. Below -87 it returns 0 where the true value
is under 1.7e-38 (numpy gives a denormal there).

These are plain Numba functions, not ``inline="always"``: LLVM inlines them into the caller's
loop, where they keep their own fast-math flags (`EXP_FLAGS`, no reassociation, which would fold
the two halves of ln 2 back together: 68 ulp at |x| = 72 without FMA), and Numba compiles each
once (inlining at Numba's level made an epilogue kernel take 40 s to compile).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

#: keyword for ``njit`` in kernels that divide inside vectorised loops (see the module docstring)
NUMPY_ERRORS = "numpy"
#: fast-math flags of these functions and of the kernels built on them: contraction (FMA) and
#: reciprocal division, no reassociation (see `exp32`); reductions keep explicit partial sums
EXP_FLAGS = {"nsz", "arcp", "contract"}

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # Cody-Waite split of ln 2: hi has few bits, so n * hi is exact
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_LO = np.float32(-87.0)  # below: 0 (the true value is under 1.7e-38)
_EXP_HI = np.float32(88.72283)  # above: inf (float32 max is e^88.7228391)


@intrinsic
def f32_from_bits(typingctx, bits):
    """The float32 whose IEEE-754 bit pattern is the low 32 bits of the integer ``bits``
    (LLVM ``bitcast``; a vectorisable scalar version of ``np.int32(...).view(np.float32)``)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        width = v.type.width
        if width > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif width < 32:
            v = builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def bits_of_f32(typingctx, x):
    """The IEEE-754 bit pattern of a float32 as an int32 (LLVM ``bitcast``)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(x), codegen


@njit(fastmath=EXP_FLAGS, error_model=NUMPY_ERRORS)
def exp32(x):
    """e^x for a float32 ``x`` (Cephes ``expf``; see the module docstring for accuracy).
    exp32(-inf) = 0, exp32(inf) = inf, exp32(NaN) = NaN. No reassociation: the range reduction
    relies on the exact order of its operations."""
    xc = _EXP_LO if x < _EXP_LO else (_EXP_HI if x > _EXP_HI else x)
    k = np.int32(xc * _LOG2E + np.float32(127.5))  # n + 127 in [1, 255]: positive, so truncation is floor(. + 0.5)
    n = np.float32(k - 127)
    r = xc - n * _LN2_HI
    r = r - n * _LN2_LO
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    y = p * r * r + r + np.float32(1.0)
    y = f32_from_bits(bits_of_f32(y) + ((k - 127) << 23))  # y * 2^n by adding n to y's exponent: exact, and
    # integer arithmetic, so the kernels' reassociation cannot fold it into y * 2^128 = inf
    y = np.float32(0.0) if x < _EXP_LO else y
    y = np.float32(np.inf) if x > _EXP_HI else y
    return y if x == x else x


@njit(fastmath=EXP_FLAGS, error_model=NUMPY_ERRORS)
def sigmoid32(x):
    """1 / (1 + e^-x) for a float32 ``x`` (ATen ``sigmoid``); 0 at -inf, 1 at inf, NaN at NaN."""
    return np.float32(1.0) / (np.float32(1.0) + exp32(-x))


@njit(fastmath=EXP_FLAGS, error_model=NUMPY_ERRORS)
def tanh32(x):
    """tanh(x) for a float32 ``x`` as 1 - 2 / (e^2x + 1), and x itself where |x| < 0.0625 (there
    the subtraction would cancel; x - x^3/3 + 2x^5/15 is used instead). +-1 at +-inf, NaN at NaN."""
    e = exp32(np.float32(2.0) * x)
    t = np.float32(1.0) - np.float32(2.0) / (e + np.float32(1.0))
    x2 = x * x
    small = x * (np.float32(1.0) + x2 * (np.float32(-1.0 / 3.0) + x2 * np.float32(2.0 / 15.0)))
    return small if abs(x) < np.float32(0.0625) else t


@njit(fastmath=EXP_FLAGS)
def row_max(x, n):
    """max(x[0..n]) of a 1-D float32 array, -inf when n == 0; NaN elements are skipped. Eight
    running maxima, so the loop vectorises (a single max reduction needs no-NaN math to)."""
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = np.float32(-np.inf)
    n8 = n - n % 8
    for j in range(0, n8, 8):
        m0 = x[j] if x[j] > m0 else m0
        m1 = x[j + 1] if x[j + 1] > m1 else m1
        m2 = x[j + 2] if x[j + 2] > m2 else m2
        m3 = x[j + 3] if x[j + 3] > m3 else m3
        m4 = x[j + 4] if x[j + 4] > m4 else m4
        m5 = x[j + 5] if x[j + 5] > m5 else m5
        m6 = x[j + 6] if x[j + 6] > m6 else m6
        m7 = x[j + 7] if x[j + 7] > m7 else m7
    for j in range(n8, n):
        m0 = x[j] if x[j] > m0 else m0
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    m4 = m5 if m5 > m4 else m4
    m6 = m7 if m7 > m6 else m6
    m0 = m2 if m2 > m0 else m0
    m4 = m6 if m6 > m4 else m4
    return m4 if m4 > m0 else m0


@njit(fastmath=EXP_FLAGS)
def row_sum(x, n):
    """sum(x[0..n]) of a 1-D float32 array in float32, over eight partial sums so the loop
    vectorises without reassociation."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
    n8 = n - n % 8
    for j in range(0, n8, 8):
        s0 += x[j]
        s1 += x[j + 1]
        s2 += x[j + 2]
        s3 += x[j + 3]
        s4 += x[j + 4]
        s5 += x[j + 5]
        s6 += x[j + 6]
        s7 += x[j + 7]
    for j in range(n8, n):
        s0 += x[j]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(fastmath=EXP_FLAGS, error_model=NUMPY_ERRORS)
def exp_shifted_sum(x, n, top, scale):
    """In place x[j] = e^((x[j] - top) * scale) for j < n (float32); returns their float32 sum
    (`row_sum`)."""
    for j in range(n):
        x[j] = exp32((x[j] - top) * scale)
    return row_sum(x, n)
