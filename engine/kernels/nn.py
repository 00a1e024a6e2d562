"""Normalisation, softmax, pooling, reductions and indexing kernels."""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit

from nac.engine import threads as T
from nac.engine.kernels import quant as Q
from nac.errors import NacInputError
from nac.engine.kernels.registry import binder, kernel
from nac.engine.kernels.vmath import EXP_FLAGS, NUMPY_ERRORS, exp_shifted_sum, row_max, row_sum


# -- normalisation -------------------------------------------------------------------------------------
@njit(fastmath=EXP_FLAGS)
def row_moments(x, n, squares_only):
    """(mean, sum_j (x[j] - mean)^2) over j < n of a float32 row, in float32 like ATen's CPU
    kernels, over eight partial sums so both passes vectorise (measured 2x faster than float64
    partial sums); with ``squares_only`` the mean is taken as 0 and the second is sum_j x[j]^2
    (RMS norm). Two passes (the mean first), so large means do not cancel the variance."""
    z = np.float32(0.0)
    n8 = n - n % 8
    mean = z
    if not squares_only and n > 0:
        mean = row_sum(x, n) / np.float32(n)
    b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = z
    for j in range(0, n8, 8):
        d0, d1, d2, d3 = x[j] - mean, x[j + 1] - mean, x[j + 2] - mean, x[j + 3] - mean
        d4, d5, d6, d7 = x[j + 4] - mean, x[j + 5] - mean, x[j + 6] - mean, x[j + 7] - mean
        b0 += d0 * d0
        b1 += d1 * d1
        b2 += d2 * d2
        b3 += d3 * d3
        b4 += d4 * d4
        b5 += d5 * d5
        b6 += d6 * d6
        b7 += d7 * d7
    for j in range(n8, n):
        d = x[j] - mean
        b0 += d * d
    return mean, ((b0 + b1) + (b2 + b3)) + ((b4 + b5) + (b6 + b7))


@njit(cache=True, nogil=True, fastmath=EXP_FLAGS)
def layer_norm_rows(x, w, b, has_w, has_b, eps, out, lo, hi):
    """Row-wise layer norm of a 2-D float32 array (ATen native_layer_norm; biased variance).

    x, out: [M, N]; w, b: [N]. Mean and variance in float32 over partial sums (`row_moments`), as
    ATen's CPU kernel accumulates in float; every loop vectorises.
    """
    M, N = x.shape
    for m in range(lo, hi):
        xr = x[m]
        mu, ss = row_moments(xr, N, False)
        rstd = np.float32(1.0 / math.sqrt(float(ss) / N + eps))
        y = out[m]
        if has_w and has_b:
            for n in range(N):
                y[n] = (xr[n] - mu) * rstd * w[n] + b[n]
        elif has_w:
            for n in range(N):
                y[n] = (xr[n] - mu) * rstd * w[n]
        elif has_b:
            for n in range(N):
                y[n] = (xr[n] - mu) * rstd + b[n]
        else:
            for n in range(N):
                y[n] = (xr[n] - mu) * rstd


@njit(cache=True, nogil=True, fastmath=EXP_FLAGS)
def rms_norm_rows(x, w, has_w, eps, out, lo, hi):
    """Row-wise RMS norm: x / sqrt(mean(x**2) + eps) * w (Zhang & Sennrich 2019; ATen rms_norm);
    the mean square is accumulated in float32 over partial sums."""
    M, N = x.shape
    for m in range(lo, hi):
        xr = x[m]
        _, ss = row_moments(xr, N, True)
        r = np.float32(1.0 / math.sqrt(float(ss) / N + eps))
        y = out[m]
        if has_w:
            for n in range(N):
                y[n] = xr[n] * r * w[n]
        else:
            for n in range(N):
                y[n] = xr[n] * r


@njit(cache=True, nogil=True, fastmath=EXP_FLAGS, error_model=NUMPY_ERRORS)
def softmax_rows(x, out, log, lo, hi):
    """Row-wise (log-)softmax over the last axis of a 2-D float32 array (ATen _softmax), in float32
    with the vectorised exp. A row with every element -inf gives NaN, as ATen does."""
    M, N = x.shape
    for m in range(lo, hi):
        xr = x[m]
        y = out[m]
        mx = row_max(xr, N)
        if mx == -np.inf:  # a fully masked row: ATen gives NaN (exp(-inf - 0) = 0, 0 / 0)
            mx = np.float32(0.0)
        for n in range(N):
            y[n] = xr[n]
        total = exp_shifted_sum(y, N, mx, np.float32(1.0))
        if log:
            ls = np.float32(math.log(total))
            for n in range(N):
                y[n] = xr[n] - mx - ls
        else:
            inv = np.float32(1.0) / total
            for n in range(N):
                y[n] *= inv


def _rows(x: np.ndarray, axes: int) -> np.ndarray:
    """x as float32 rows [prod(leading axes), prod(trailing ``axes`` axes)] (a view when it can be;
    math.prod, not np.prod: this runs per call of a decode step's norms, 1-2 us saved each)."""
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x, dtype=np.float32)
    return x.reshape(-1, math.prod(x.shape[x.ndim - axes:]) if axes else 1)


_EMPTY = np.zeros(1, np.float32)


@kernel("layer_norm")
def layer_norm(ins, outs, attrs):
    """(x - mean) / sqrt(var + eps) * weight + bias over the trailing ``axes`` axes of x (ATen
    native_layer_norm); weight and bias optional, also when left out of ``ins``."""
    T.parallel_range(*_norm_job("layer_norm", ins, outs[0], attrs), work=ins[0].size * 3)


@kernel("rms_norm")
def rms_norm(ins, outs, attrs):
    """x / sqrt(mean(x**2) + eps) * weight over the trailing ``axes`` axes of x (ATen rms_norm);
    weight optional, also when left out of ``ins``."""
    T.parallel_range(*_norm_job("rms_norm", ins, outs[0], attrs), work=ins[0].size * 3)


def _norm_job(op: str, ins, out, attrs) -> tuple:
    """``op``'s `parallel_range` arguments: x as float32 rows (`_rows`: a view when it can be),
    the weight (and layer_norm's bias) flat, or a placeholder when absent, eps and out as rows."""
    params = (list(ins[1:]) + [None, None])[:2 if op == "layer_norm" else 1]
    x2 = _rows(ins[0], attrs["axes"])
    flat = [_EMPTY if t is None else t.reshape(-1) for t in params]
    present = [t is not None for t in params]
    rows = layer_norm_rows if op == "layer_norm" else rms_norm_rows
    return (rows, x2.shape[0], x2, *flat, *present, attrs["eps"], out.reshape(x2.shape))


def _bind_norm(op: str, ins, outs, attrs):
    """A plan's ``op`` step with its row views and weights worked out once (the kernel's
    `_norm_job`); None (the plan calls the kernel) when the input, output, weight or bias is not
    contiguous (float32 input), where a reshape would copy."""
    x, out = ins[0], outs[0]
    if (x.dtype != np.float32 or not x.flags.c_contiguous or not out.flags.c_contiguous
            or any(t is not None and not t.flags.c_contiguous for t in ins[1:])):
        return None
    return functools.partial(T.parallel_range, *_norm_job(op, ins, out, attrs), work=x.size * 3)


@binder("layer_norm")
def bind_layer_norm(ins, outs, attrs):
    """`_bind_norm` for layer_norm."""
    return _bind_norm("layer_norm", ins, outs, attrs)


@binder("rms_norm")
def bind_rms_norm(ins, outs, attrs):
    """`_bind_norm` for rms_norm."""
    return _bind_norm("rms_norm", ins, outs, attrs)


def _softmax(ins, outs, attrs, log):
    x, out = ins[0], outs[0]
    d = attrs["dim"]
    if x.ndim == 0:
        out[...] = 0.0 if log else 1.0
        return
    if d == x.ndim - 1:
        x2 = _rows(x, 1)
        T.parallel_range(softmax_rows, x2.shape[0], x2, out.reshape(x2.shape), log, work=x2.size * 4)
        return
    xm = np.moveaxis(np.asarray(x, np.float32), d, -1)
    tmp = np.empty(xm.shape, np.float32)
    x2 = np.ascontiguousarray(xm).reshape(-1, xm.shape[-1])
    T.parallel_range(softmax_rows, x2.shape[0], x2, tmp.reshape(x2.shape), log, work=x2.size * 4)
    out[...] = np.moveaxis(tmp, -1, d)


@kernel("softmax")
def softmax(ins, outs, attrs):
    _softmax(ins, outs, attrs, False)


@kernel("log_softmax")
def log_softmax(ins, outs, attrs):
    _softmax(ins, outs, attrs, True)


@kernel("batch_norm")
def batch_norm(ins, outs, attrs):
    """Inference batch norm over axis 1 (ATen _native_batch_norm_legit_no_training)."""
    x, w, b, mean, var = ins
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = 1.0 / np.sqrt(var.astype(np.float64) + attrs["eps"])
    if w is not None:
        scale = scale * w
    shift = -mean * scale + (0.0 if b is None else b)
    np.multiply(x, scale.astype(np.float32).reshape(shape), out=outs[0])
    np.add(outs[0], shift.astype(np.float32).reshape(shape), out=outs[0])


# -- pooling -------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def max_pool2d_nchw(x, kh, kw, sh, sw, ph, pw, dh, dw, out, lo, hi):
    """Max pooling, NCHW float32, implicit -inf padding (ATen max_pool2d)."""
    N, C, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    for nc in range(lo, hi):
        n = nc // C
        c = nc % C
        for oh in range(OH):
            for ow in range(OW):
                m = -np.inf
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= H:
                        continue
                    for j in range(kw):
                        iw = ow * sw - pw + j * dw
                        if 0 <= iw < W:
                            v = x[n, c, ih, iw]
                            if v > m or v != v:
                                m = v
                out[n, c, oh, ow] = m


@njit(cache=True, nogil=True)
def avg_pool2d_nchw(x, kh, kw, sh, sw, ph, pw, include_pad, divisor, out, lo, hi):
    """Average pooling, NCHW float32, with ATen's divisor rules (count_include_pad, override)."""
    N, C, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    for nc in range(lo, hi):
        n = nc // C
        c = nc % C
        for oh in range(OH):
            for ow in range(OW):
                h0 = oh * sh - ph
                w0 = ow * sw - pw
                h1 = min(h0 + kh, H + ph)
                w1 = min(w0 + kw, W + pw)
                pool = (h1 - h0) * (w1 - w0)
                h0 = max(h0, 0)
                w0 = max(w0, 0)
                h1 = min(h1, H)
                w1 = min(w1, W)
                s = 0.0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        s += x[n, c, ih, iw]
                if divisor > 0:
                    d = divisor
                elif include_pad:
                    d = pool
                else:
                    d = (h1 - h0) * (w1 - w0)
                out[n, c, oh, ow] = s / d if d > 0 else 0.0


@njit(cache=True, nogil=True)
def adaptive_avg_pool2d_nchw(x, out, lo, hi):
    """Adaptive average pooling: bin i covers [floor(i*H/OH), ceil((i+1)*H/OH)) (ATen)."""
    N, C, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    for nc in range(lo, hi):
        n = nc // C
        c = nc % C
        for oh in range(OH):
            h0 = (oh * H) // OH
            h1 = -((-(oh + 1) * H) // OH)
            for ow in range(OW):
                w0 = (ow * W) // OW
                w1 = -((-(ow + 1) * W) // OW)
                s = 0.0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        s += x[n, c, ih, iw]
                out[n, c, oh, ow] = s / ((h1 - h0) * (w1 - w0))


def _f32(x):
    return np.ascontiguousarray(x, dtype=np.float32)


@kernel("max_pool2d")
def max_pool2d(ins, outs, attrs):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["padding"], attrs["dilation"]
    x = _f32(ins[0])
    T.parallel_range(max_pool2d_nchw, x.shape[0] * x.shape[1], x, kh, kw, sh, sw, ph, pw, dh, dw, outs[0],
                     work=outs[0].size * kh * kw)


@kernel("avg_pool2d")
def avg_pool2d(ins, outs, attrs):
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
    x = _f32(ins[0])
    T.parallel_range(avg_pool2d_nchw, x.shape[0] * x.shape[1], x, kh, kw, sh, sw, ph, pw, bool(attrs["count_include_pad"]),
                     int(attrs.get("divisor_override") or 0), outs[0], work=outs[0].size * kh * kw)


@kernel("adaptive_avg_pool2d")
def adaptive_avg_pool2d(ins, outs, attrs):
    x = _f32(ins[0])
    T.parallel_range(adaptive_avg_pool2d_nchw, x.shape[0] * x.shape[1], x, outs[0], work=x.size)


@njit(cache=True, nogil=True)
def upsample_planes(x, out, ih0, ih1, wh1, iw0, iw1, ww1, bilinear, lo, hi):
    """Resample planes ``x`` [P, H, W] -> ``out`` [P, OH, OW] from precomputed source rows/columns
    (i0, i1) and the weight of the second tap (ATen upsample_nearest2d / upsample_bilinear2d:
    ``(1-wh)*((1-ww)*x00 + ww*x01) + wh*((1-ww)*x10 + ww*x11)``, in float32)."""
    OH, OW = out.shape[1], out.shape[2]
    one = np.float32(1.0)
    for p in range(lo, hi):
        for i in range(OH):
            a, b, lh = ih0[i], ih1[i], wh1[i]
            for j in range(OW):
                if bilinear:
                    lw = ww1[j]
                    top = (one - lw) * x[p, a, iw0[j]] + lw * x[p, a, iw1[j]]
                    bottom = (one - lw) * x[p, b, iw0[j]] + lw * x[p, b, iw1[j]]
                    out[p, i, j] = (one - lh) * top + lh * bottom
                else:
                    out[p, i, j] = x[p, a, iw0[j]]


def upsample_taps(n_in: int, n_out: int, mode: str, align_corners: bool, scale):
    """Source indices (i0, i1: int64 [n_out]) and second-tap weights (float32 [n_out]) along one
    axis, by ATen's rules (UpSample.h): nearest: ``min(floor(dst * s), n_in - 1)`` with
    s = 1/scale if a scale was given else n_in/n_out (identity and exact 2x are special cases);
    bilinear: src = s * dst (align_corners, s = (n_in-1)/(n_out-1)) or max(s * (dst + 0.5) - 0.5, 0),
    i0 = min(floor(src), n_in - 1), i1 = i0 + 1 clamped, weight = src - i0 clamped to [0, 1]."""
    dst = np.arange(n_out, dtype=np.float32)
    given = scale is not None and scale > 0
    if mode == "nearest":
        if n_out == n_in:
            i0 = np.arange(n_out, dtype=np.int64)
        elif n_out == 2 * n_in:
            i0 = np.arange(n_out, dtype=np.int64) >> 1
        else:
            s = np.float32(1.0 / scale) if given else np.float32(n_in) / np.float32(n_out)
            i0 = np.minimum(np.floor(dst * s).astype(np.int64), n_in - 1)
        return i0, i0, np.zeros(n_out, np.float32)
    if align_corners:
        s = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
        src = dst * s
    else:
        s = np.float32(1.0 / scale) if given else np.float32(n_in) / np.float32(n_out)
        src = np.maximum(s * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    return i0, i1, w1


@kernel("upsample2d")
def upsample2d(ins, outs, attrs):
    x, out = _f32(ins[0]), outs[0]
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    scales = attrs.get("scales") or [None, None]
    mode, ac = attrs["mode"], bool(attrs.get("align_corners", False))
    ih0, ih1, wh1 = upsample_taps(h, oh, mode, ac, scales[0])
    iw0, iw1, ww1 = upsample_taps(w, ow, mode, ac, scales[1])
    T.parallel_range(upsample_planes, n * c, x.reshape(n * c, h, w), out.reshape(n * c, oh, ow), ih0, ih1, wh1,
                     iw0, iw1, ww1, mode == "bilinear", work=out.size * 4)


# -- sorting -------------------------------------------------------------------------------------------
def _stable_order(x: np.ndarray, axis: int, descending: bool) -> np.ndarray:
    """int64 indices that sort ``x`` along ``axis``, ties in index order, NaN above every number
    (ATen sort with stable=True). Descending sorts the reversed axis ascending and reverses back,
    which keeps ties in index order and puts NaN first."""
    if not descending:
        return np.argsort(x, axis=axis, kind="stable")
    n = x.shape[axis]
    rev = np.argsort(np.flip(x, axis), axis=axis, kind="stable")
    return (n - 1 - np.flip(rev, axis)).astype(np.int64)


@kernel("sort")
def sort(ins, outs, attrs):
    x, axis = ins[0], attrs["dim"] % ins[0].ndim
    idx = _stable_order(x, axis, bool(attrs["descending"]))
    outs[1][...] = idx
    outs[0][...] = np.take_along_axis(x, idx, axis)


@kernel("topk")
def topk(ins, outs, attrs):
    x, axis, k = ins[0], attrs["dim"] % ins[0].ndim, outs[0].shape[attrs["dim"] % ins[0].ndim]
    idx = np.take(_stable_order(x, axis, bool(attrs["largest"])), np.arange(k), axis=axis)
    outs[1][...] = idx
    outs[0][...] = np.take_along_axis(x, idx, axis)


# -- reductions ----------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def sums_over_middle(x3, count, out2):
    """out2[a, b] = sum_r x3[a, r, b] / count, summed in float64 in order of r, rounded once to
    float32. x3: [A, R, B] float32, C-contiguous; out2: [A, B] float32. The inner loop runs over
    adjacent elements b, so it fills the vector units (a channels-last plane's channels)."""
    A_, R, B = x3.shape
    acc = np.empty(B, np.float64)
    for a in range(A_):
        acc[:] = 0.0
        for r in range(R):
            for b in range(B):
                acc[b] += x3[a, r, b]
        for b in range(B):
            out2[a, b] = acc[b] / count


@njit(cache=True, nogil=True)
def sums_over_last(x2, count, out1):
    """out1[a] = sum_r x2[a, r] / count, summed in float64 in order of r, rounded once to
    float32. x2: [A, R] float32, C-contiguous; out1: [A] float32."""
    for a in range(x2.shape[0]):
        acc = 0.0
        for r in range(x2.shape[1]):
            acc += x2[a, r]
        out1[a] = acc / count


def _float_reduction(x: np.ndarray, out: np.ndarray, axis, mean: bool) -> bool:
    """Sum or mean of float32 ``x`` over consecutive axes into a C-contiguous output, for a
    C-contiguous ``x`` or a channels-last 4-D one over its last two axes (a CNN's global average
    pooling, ``x.mean((2, 3))``): ``x`` seen as [A, R, B] (R the reduced elements) through
    `sums_over_middle`, or `sums_over_last` when B is 1. numpy's strided reduction took
    100-160 us in MobileNetV2's plan over its 1,280 x 7 x 7 channels-last head (10 us when
    repeated back to back), and 25 us over MiniLM's 16 x 384 token embeddings; these take 10-57.
    Returns False (nothing written) for anything else."""
    if axis is None or x.dtype != np.float32 or out.dtype != np.float32 or not out.flags.c_contiguous or x.size == 0:
        return False
    axes = sorted(a % x.ndim for a in axis)
    if len(set(axes)) != len(axes) or axes != list(range(axes[0], axes[-1] + 1)):
        return False
    if x.flags.c_contiguous:
        lo, hi = axes[0], axes[-1] + 1
    elif x.ndim == 4 and axes == [2, 3] and x.transpose(0, 2, 3, 1).flags.c_contiguous:
        x, lo, hi = x.transpose(0, 2, 3, 1), 1, 3  # [N, H, W, C]: reduce H and W
    else:
        return False
    a_, r_, b_ = math.prod(x.shape[:lo]), math.prod(x.shape[lo:hi]), math.prod(x.shape[hi:])
    count = float(r_) if mean else 1.0
    if b_ == 1:
        sums_over_last(x.reshape(a_, r_), count, out.reshape(a_))
    else:
        sums_over_middle(x.reshape(a_, r_, b_), count, out.reshape(a_, b_))
    return True


def _reduce_kernel(fn, planes: bool = False):
    """A reduction op's kernel: ``fn`` (a numpy reduction), or with ``planes`` (sum, mean)
    `_float_reduction` where it applies."""
    def run(ins, outs, attrs):
        axis = tuple(attrs["dims"]) or None
        if planes and _float_reduction(ins[0], outs[0], axis, fn is np.mean):
            return
        fn(ins[0], axis=axis, keepdims=attrs["keepdim"], out=outs[0])
    return run


for _op, _fn in {"sum": np.sum, "mean": np.mean, "amax": np.max, "amin": np.min, "prod": np.prod,
                 "any": np.any, "all": np.all}.items():
    kernel(_op)(_reduce_kernel(_fn, planes=_op in ("sum", "mean")))


@kernel("var")
def var(ins, outs, attrs):
    axis = tuple(attrs["dims"]) or None
    np.var(ins[0], axis=axis, ddof=attrs["correction"], keepdims=attrs["keepdim"], out=outs[0])


@kernel("argmax")
def argmax(ins, outs, attrs):
    np.argmax(ins[0], axis=attrs["dim"], keepdims=attrs["keepdim"], out=outs[0])


@kernel("argmin")
def argmin(ins, outs, attrs):
    np.argmin(ins[0], axis=attrs["dim"], keepdims=attrs["keepdim"], out=outs[0])


@kernel("cumsum")
def cumsum(ins, outs, attrs):
    np.cumsum(ins[0], axis=attrs["dim"], out=outs[0])


# -- indexing ----------------------------------------------------------------------------------------
def _check_index(idx: np.ndarray, size: int, what: str) -> None:
    if idx.size and (idx.min() < -size or idx.max() >= size):
        bad = idx[(idx < -size) | (idx >= size)].flat[0]
        raise NacInputError(f"{what}: index {int(bad)} is out of range for a dimension of size {size}")


@kernel("embedding")
def embedding(ins, outs, attrs):
    """ATen embedding: weight[indices]; an id outside [0, vocab) raises NacInputError."""
    w, idx = ins
    if idx.size and (idx.min() < 0 or idx.max() >= w.shape[0]):
        bad = idx[(idx < 0) | (idx >= w.shape[0])].flat[0]
        raise NacInputError(f"embedding: id {int(bad)} is outside the table of {w.shape[0]} rows")
    if isinstance(w, Q.QTensor):
        Q.quant_embedding(w, idx, outs[0])
        return
    outs[0][...] = w[idx]


@kernel("gather")
def gather(ins, outs, attrs):
    x, idx = ins
    d = attrs["dim"]
    _check_index(idx, x.shape[d], "gather")
    # ATen lets the index be smaller than x along the other axes: gather from that corner of x
    x = x[tuple(slice(None) if k == d else slice(0, s) for k, s in enumerate(idx.shape))]
    outs[0][...] = np.take_along_axis(x, idx, axis=d)


@kernel("index_select")
def index_select(ins, outs, attrs):
    x, idx = ins
    _check_index(idx, x.shape[attrs["dim"]], "index_select")
    outs[0][...] = np.take(x, idx, axis=attrs["dim"])


@kernel("index")
def index(ins, outs, attrs):
    """ATen index.Tensor: numpy advanced indexing; absent indices are full slices."""
    x, idx = ins[0], ins[1:]
    for axis, i in enumerate(idx):
        if i is not None and i.dtype != np.bool_:
            _check_index(i, x.shape[axis], "index")
    outs[0][...] = x[tuple(slice(None) if i is None else i for i in idx)]
