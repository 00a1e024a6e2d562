"""Matrix products and convolution.

Dense products go to BLAS through ``numpy.matmul`` (measured faster than a Numba loop for every
shape NAC meets); bias and activation are then applied in one fused Numba pass.

Convolutions run channels-last (NHWC memory) whenever the plan stores their output so
(`nac.engine.plan.channels_last_values`: every convolution whose output only convolutions,
element-wise ops and pools read): depthwise as a direct stencil vectorised over channels (in
4-pixel x 16-channel register tiles, `simd.dw_tile_4x16`, where rows are wide), 1x1 as
one GEMM over all pixels with a repacked [Cin, Cout] weight, the rest as NHWC im2col + GEMM, each
with bias and activation applied to the product's rows. A contiguous (NCHW) output, as in the
plans `nac emit` compiles, takes the NCHW kernels: a per-plane depthwise stencil, im2col + BLAS,
and 1x1 stride-1 as a batched GEMM.
"""
from __future__ import annotations

import threading
import weakref

import numpy as np
from numba import njit

from nac.engine import threads as T
from nac.engine.kernels import activation as A
from nac.engine.kernels import quant as Q
from nac.engine.kernels import simd
from nac.engine.kernels.registry import kernel

_EMPTY = np.zeros(1, np.float32)


@kernel("matmul")
def matmul(ins, outs, attrs):
    """ATen matmul/mm/bmm: a [*, M, K] @ b [*, K, N] -> [*, M, N] with broadcast batch dims."""
    np.matmul(ins[0], ins[1], out=outs[0])


@kernel("linear")
def linear(ins, outs, attrs):
    """act(x [*, K] @ weight[N, K].T + bias[N]) -> [*, N] (ATen addmm/linear, fused activation);
    weight is [K, N] when attrs weight_layout is 'io'."""
    x, w, b = ins
    out = outs[0]
    code = A.CODES[attrs.get("activation", "none")]
    if isinstance(w, Q.QTensor):
        K, N = w.shape[1], w.shape[0]
        y = out.reshape(-1, N)
        Q.quant_matmul(x.reshape(-1, K), w, y, attrs.get("activation_quant", "none"))
        _bias_act_rows(y, b, code)
        return
    if attrs.get("weight_layout", "oi") == "io":
        (K, N), wmat = w.shape, w
    else:
        (N, K), wmat = w.shape, w.T
    y = out.reshape(-1, N)
    np.matmul(x.reshape(-1, K), wmat, out=y)
    _bias_act_rows(y, b, code)


@njit(cache=True, nogil=True, fastmath=A.FASTMATH)
def depthwise_conv2d(x, w, b, has_bias, sh, sw, pt, pb, pl, pr, dh, dw, code, out, lo, hi):
    """Depthwise 2-D cross-correlation (groups == C_in == C_out), NCHW, fused bias + activation,
    for planes ``lo..hi`` of N*C.

    x: [N, C, H, W] float32; w: [C, 1, kh, kw]; out: [N, C, OH, OW]; zero padding
    (top, bottom, left, right). Each plane is copied into a zero-padded scratch plane split into
    ``sw`` column phases (column k*sw + p goes to phase p, column k), so every tap reads a
    contiguous run of columns and the loop over output columns vectorises at any stride. Matches
    ATen convolution with groups = C.
    """
    N, C, H, W = x.shape
    kh, kw = w.shape[2], w.shape[3]
    OH, OW = out.shape[2], out.shape[3]
    Hp = max(H + pt + pb, (OH - 1) * sh + (kh - 1) * dh + 1)
    Wp = max(W + pl + pr, (OW - 1) * sw + (kw - 1) * dw + 1)
    Wq = (Wp + sw - 1) // sw
    xp = np.zeros((Hp, Wp), np.float32)  # the padding border stays zero; the interior is rewritten per plane
    xq = np.zeros((sw, Hp, Wq), np.float32)
    for nc in range(lo, hi):
        n = nc // C
        c = nc % C
        xp[pt:pt + H, pl:pl + W] = x[n, c]
        if sw > 1:
            for ph in range(sw):
                for col in range(Wq):
                    src = col * sw + ph
                    if src < Wp:
                        for row in range(Hp):
                            xq[ph, row, col] = xp[row, src]
        wc = w[c, 0]
        plane = out[n, c]
        bias = b[c] if has_bias else np.float32(0.0)
        for oh in range(OH):
            acc = plane[oh]
            for ow in range(OW):
                acc[ow] = 0.0
            for i in range(kh):
                row = oh * sh + i * dh
                for j in range(kw):
                    wv = wc[i, j]
                    o = j * dw
                    if sw == 1:
                        r = xp[row, o:o + OW]
                    else:
                        r = xq[o % sw, row, o // sw:o // sw + OW]
                    for ow in range(OW):
                        acc[ow] += wv * r[ow]
            A.bias_act_scalar(acc, bias, code)


@njit(cache=True, nogil=True, fastmath=A.FASTMATH)
def _depthwise_pixel(xt, wt, b, n, oh, ow, sh, sw, pt, pl, dh, dw, yt, c0, c1):
    """One output pixel, channels ``c0..c1``, of a channels-last depthwise convolution, bias
    included, taps outside the plane skipped (the stencil's step, and the tiled kernel's border)."""
    H, W = xt.shape[1], xt.shape[2]
    acc = yt[n, oh, ow, c0:c1]
    acc[:] = b[c0:c1]
    for i in range(wt.shape[0]):
        ih = oh * sh - pt + i * dh
        if ih < 0 or ih >= H:
            continue
        for j in range(wt.shape[1]):
            iw = ow * sw - pl + j * dw
            if iw < 0 or iw >= W:
                continue
            xv = xt[n, ih, iw, c0:c1]
            wv = wt[i, j, c0:c1]
            for c in range(c1 - c0):
                acc[c] += wv[c] * xv[c]


@njit(cache=True, nogil=True, fastmath=A.FASTMATH)
def depthwise_conv2d_nhwc(xt, wt, b, has_bias, sh, sw, pt, pl, dh, dw, code, yt, cblk, lo, hi):
    """Depthwise 2-D cross-correlation in channels-last layout, fused bias + activation.

    xt: [N, H, W, C] float32; wt: [kh, kw, C]; yt: [N, OH, OW, C]; work items ``lo..hi`` of
    N * OH * ceil(C / cblk): one output row of one block of ``cblk`` channels each (channel
    blocks let few rows, as at 7x7, still split over every core). The innermost loop runs over
    the channels of a block, which are adjacent in memory, so it fills the vector units at any
    stride; the block's accumulator row stays in L1. Zero padding (top ``pt``, left ``pl``;
    bottom and right follow from the shapes). Matches ATen convolution with groups = C.
    """
    C = xt.shape[3]
    OH, OW = yt.shape[1], yt.shape[2]
    bias = b if has_bias else np.zeros(C, np.float32)
    nb = (C + cblk - 1) // cblk
    for r in range(lo, hi):
        row = r // nb
        c0 = (r % nb) * cblk
        c1 = min(c0 + cblk, C)
        n = row // OH
        oh = row % OH
        for ow in range(OW):
            _depthwise_pixel(xt, wt, bias, n, oh, ow, sh, sw, pt, pl, dh, dw, yt, c0, c1)
            A.bias_act_scalar(yt[n, oh, ow, c0:c1], np.float32(0.0), code)


@njit(cache=True, nogil=True, fastmath=A.FASTMATH, error_model="numpy")
def depthwise_conv2d_nhwc_tiled(xt, wt, b, sh, sw, pt, pl, dh, dw, code, yt, taps, lo, hi):
    """Depthwise 2-D cross-correlation in channels-last layout for wide planes, fused bias +
    activation: interior pixels in `simd.dw_tile_4x16` register tiles (4 pixels x 16 channels,
    every tap accumulated in registers), the border pixels and the channels past the last full 16
    one pixel at a time. Rows ``lo..hi`` of N * OH.

    xt: [N, H, W, C] float32; wt: [kh, kw, C]; b: [C] (zeros for no bias); yt: [N, OH, OW, C];
    taps: int64 [kh * kw], tap (i, j)'s offset ``(i dh W + j dw) C`` in xt's elements. Matches
    `depthwise_conv2d_nhwc` exactly (same summation order per channel)."""
    N, H, W, C = xt.shape
    kh, kw = wt.shape[0], wt.shape[1]
    OH, OW = yt.shape[1], yt.shape[2]
    xf, wf, yf = xt.reshape(-1), wt.reshape(-1), yt.reshape(-1)
    c16 = C - C % 16
    ow_lo = min(OW, (pl + sw - 1) // sw)  # first output column whose taps are all inside
    last = W - 1 - (kw - 1) * dw + pl
    ow_hi = max(ow_lo, min(OW, last // sw + 1)) if last >= 0 else ow_lo
    for r in range(lo, hi):
        n = r // OH
        oh = r % OH
        ih0 = oh * sh - pt
        ow = 0
        if ih0 >= 0 and ih0 + (kh - 1) * dh < H:
            for ow in range(ow_lo):
                _depthwise_pixel(xt, wt, b, n, oh, ow, sh, sw, pt, pl, dh, dw, yt, 0, C)
            ow = ow_lo
            while ow + 4 <= ow_hi:
                xo = ((n * H + ih0) * W + ow * sw - pl) * C
                yo = ((n * OH + oh) * OW + ow) * C
                for c0 in range(0, c16, 16):
                    simd.dw_tile_4x16(xf, xo + c0, sw * C, taps, wf, c0, C, b, c0, yf, yo + c0, C)
                for k in range(4 if c16 < C else 0):
                    _depthwise_pixel(xt, wt, b, n, oh, ow + k, sh, sw, pt, pl, dh, dw, yt, c16, C)
                ow += 4
        for o in range(ow, OW):
            _depthwise_pixel(xt, wt, b, n, oh, o, sh, sw, pt, pl, dh, dw, yt, 0, C)
        A.bias_act_scalar(yf[(n * OH + oh) * OW * C:(n * OH + oh + 1) * OW * C], np.float32(0.0), code)


#: output rows at least this wide take the register-tiled depthwise kernel (measured faster from
#: 28 pixels; at 7x7 and 14x14 most pixels touch the border, and channel blocks split better)
TILED_DEPTHWISE_MIN_WIDTH = 16


@njit(cache=True, nogil=True)
def im2col_nhwc(xt, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW, p0, cols, lo, hi):
    """cols[p - p0, c*kh*kw + i*kw + j] = xt[n, oh*sh - pt + i*dh, ow*sw - pl + j*dw, c] (0 outside)
    for output pixels p = (n*OH + oh)*OW + ow in ``p0 + lo .. p0 + hi``.

    xt: [N, H, W, C] float32; cols: [rows, C*kh*kw]. The column order is that of an OIHW
    weight's rows, so the product needs no repacked weight.
    """
    H, W, C = xt.shape[1], xt.shape[2], xt.shape[3]
    kk = kh * kw
    for q in range(lo, hi):
        p = p0 + q
        n = p // (OH * OW)
        oh = (p // OW) % OH
        ow = p % OW
        out = cols[q]
        for i in range(kh):
            ih = oh * sh - pt + i * dh
            for j in range(kw):
                iw = ow * sw - pl + j * dw
                t = i * kw + j
                if ih < 0 or ih >= H or iw < 0 or iw >= W:
                    for c in range(C):
                        out[c * kk + t] = 0.0
                else:
                    src = xt[n, ih, iw]
                    for c in range(C):
                        out[c * kk + t] = src[c]


#: im2col scratch per block of output pixels, in float32 elements (bounds the scratch of a large
#: convolution: 4 MiB)
IM2COL_BLOCK = 1 << 20

_PACKED: dict[tuple[int, str], tuple[weakref.ref, np.ndarray]] = {}
_PACKED_LOCK = threading.Lock()


def _packed(w: np.ndarray, how: str) -> np.ndarray:
    """A convolution weight [Cout, Cin/groups, kh, kw] repacked for the channels-last kernels,
    once per weight of a loaded model (read-only arrays; others are repacked per call):
    ``"taps"``: a depthwise weight as [kh, kw, C]; ``"io"``: as [Cin*kh*kw, Cout] (the GEMM's B
    operand in row-major order, which BLAS streams without a transposed pack). An entry lives as
    long as its original (a weak reference; unloading the model frees it); the mapped
    original's pages are then no longer read."""
    key = (id(w), how)
    hit = _PACKED.get(key)
    if hit is not None and hit[0]() is w:
        return hit[1]
    if how == "taps":
        packed = np.ascontiguousarray(w[:, 0].transpose(1, 2, 0), dtype=np.float32)
    else:
        packed = np.ascontiguousarray(w.reshape(w.shape[0], -1).T, dtype=np.float32)
    if not w.flags.writeable:
        with _PACKED_LOCK:
            _PACKED[key] = (weakref.ref(w), packed)
        weakref.finalize(w, _PACKED.pop, key, None)
    return packed


def is_channels_last(a: np.ndarray) -> bool:
    """True when 4-D ``a`` [N, C, H, W] is stored channels-last: ``a.transpose(0, 2, 3, 1)``
    is C-contiguous (PyTorch's ``torch.channels_last`` memory format)."""
    return a.ndim == 4 and a.transpose(0, 2, 3, 1).flags.c_contiguous


def _geometry(attrs) -> tuple:
    """A conv2d node's ``(stride, padding [top, bottom, left, right], dilation, groups)``."""
    return tuple(attrs["stride"]), tuple(attrs["padding"]), tuple(attrs["dilation"]), attrs["groups"]


def _conv2d_nhwc(x, w, b, code, attrs, yt) -> bool:
    """Convolution into the channels-last output ``yt`` [N, OH, OW, Cout] (contiguous), fused
    bias + activation. Depthwise: a direct kernel; 1x1: one GEMM over all pixels; other
    ungrouped kernels: NHWC im2col in blocks of pixels + GEMM. Returns False (nothing written)
    for grouped convolutions that are not depthwise, and for empty inputs or outputs."""
    N, C, H, W = x.shape
    cout, cg, kh, kw = w.shape
    (sh, sw), (pt, pb, pl, pr), (dh, dw), groups = _geometry(attrs)
    OH, OW = yt.shape[1], yt.shape[2]
    depthwise = groups == C and cout == C and cg == 1
    if (groups != 1 and not depthwise) or yt.size == 0 or C * kh * kw == 0:  # the NCHW kernels handle the rest
        return False
    bias = _EMPTY if b is None else b
    if not depthwise and not (kh == kw == 1) and not is_channels_last(x):
        # an NCHW input (the graph's image): NCHW im2col per image, the product transposed
        x = np.ascontiguousarray(x, dtype=np.float32)
        y3 = yt.reshape(N, OH * OW, cout)
        cols = np.empty((C * kh * kw, OH * OW), np.float32)
        wmat = _packed(w, "io")
        for n in range(N):
            T.parallel_range(im2col, C * kh * kw, x[n], 0, C, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW, cols,
                             work=cols.size)
            np.matmul(cols.T, wmat, out=y3[n])
        _bias_act_rows(yt.reshape(N * OH * OW, cout), b, code)
        return True
    xt = x.transpose(0, 2, 3, 1)
    if not xt.flags.c_contiguous or xt.dtype != np.float32:
        xt = np.ascontiguousarray(xt, dtype=np.float32)
    if depthwise and OW >= TILED_DEPTHWISE_MIN_WIDTH:
        taps = np.array([(i * dh * W + j * dw) * C for i in range(kh) for j in range(kw)], np.int64)
        bvec = np.zeros(C, np.float32) if b is None else np.ascontiguousarray(b, dtype=np.float32)
        T.parallel_range(depthwise_conv2d_nhwc_tiled, N * OH, xt, _packed(w, "taps"), bvec, sh, sw, pt, pl, dh, dw,
                         code, yt, taps, work=yt.size * kh * kw)
        return True
    if depthwise:
        rows = N * OH
        cblk = C if rows >= 8 * T.num_threads() or C <= 64 else max(64, -(-C // (8 * T.num_threads() // rows + 1)))
        cblk = -(-cblk // 16) * 16
        nb = -(-C // cblk)
        T.parallel_range(depthwise_conv2d_nhwc, rows * nb, xt, _packed(w, "taps"), bias, b is not None, sh, sw, pt, pl,
                         dh, dw, code, yt, cblk, work=yt.size * kh * kw)
        return True
    y2 = yt.reshape(N * OH * OW, cout)
    wmat = _packed(w, "io")
    if kh == kw == 1 and pt == pb == pl == pr == 0:
        src = xt if sh == sw == 1 else np.ascontiguousarray(xt[:, ::sh, ::sw][:, :OH, :OW])
        np.matmul(src.reshape(-1, C), wmat, out=y2)
    else:
        pixels = N * OH * OW
        step = max(1, min(pixels, IM2COL_BLOCK // (C * kh * kw)))
        cols = np.empty((step, C * kh * kw), np.float32)
        for p0 in range(0, pixels, step):
            n = min(step, pixels - p0)
            T.parallel_range(im2col_nhwc, n, xt, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW, p0, cols, work=n * C * kh * kw)
            np.matmul(cols[:n], wmat, out=y2[p0:p0 + n])
    _bias_act_rows(y2, b, code)
    return True


def _bias_act_rows(y2: np.ndarray, b, code: int) -> None:
    """In place over a contiguous [rows, N] float32 product: act(y + bias[N]), over the cores."""
    if b is not None or code:
        T.parallel_range(A.bias_act_rows, y2.shape[0], y2, _EMPTY if b is None else b, b is not None, code,
                         work=y2.size * (4 if code else 1))


@njit(cache=True, nogil=True)
def im2col(x, c0, cg, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW, cols, lo, hi):
    """cols[(c, i, j), (oh, ow)] = x[c0 + c, oh*sh - pt + i*dh, ow*sw - pl + j*dw] (0 outside).

    x: [C, H, W] float32 (one image); cols: [cg*kh*kw, OH*OW].
    """
    H, W = x.shape[1], x.shape[2]
    for r in range(lo, hi):
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        for oh in range(OH):
            ih = oh * sh - pt + i * dh
            base = oh * OW
            if ih < 0 or ih >= H:
                for ow in range(OW):
                    cols[r, base + ow] = 0.0
                continue
            for ow in range(OW):
                iw = ow * sw - pl + j * dw
                cols[r, base + ow] = x[c0 + c, ih, iw] if 0 <= iw < W else 0.0


@kernel("conv2d")
def conv2d(ins, outs, attrs):
    """ATen convolution (2-D, NCHW): act(conv(x, weight, stride, padding, dilation, groups) + bias).

    x [N, Cin, H, W], weight [Cout, Cin/groups, kh, kw], bias [Cout] or None, padding
    [top, bottom, left, right]; out [N, Cout, OH, OW].
    """
    x, w, b = ins
    out = outs[0]
    channels_last = is_channels_last(out)
    if not out.flags.c_contiguous and not channels_last:
        raise ValueError("conv2d writes a contiguous or channels-last output")
    if channels_last and _conv2d_nhwc(x, w, b, A.CODES[attrs.get("activation", "none")], attrs,
                                      out.transpose(0, 2, 3, 1)):
        return
    if not out.flags.c_contiguous:  # a grouped convolution: computed in NCHW, then stored channels-last
        tmp = np.empty(out.shape, np.float32)
        conv2d([x, w, b], [tmp], attrs)
        out[...] = tmp
        return
    x = np.ascontiguousarray(x, dtype=np.float32)
    N, C, H, W = x.shape
    cout, cg, kh, kw = w.shape
    (sh, sw), (pt, pb, pl, pr), (dh, dw), groups = _geometry(attrs)
    code = A.CODES[attrs.get("activation", "none")]
    OH, OW = out.shape[2], out.shape[3]
    bias = _EMPTY if b is None else b
    if groups == C and cout == C and cg == 1:
        T.parallel_range(depthwise_conv2d, N * C, x, w, bias, b is not None, sh, sw, pt, pb, pl, pr, dh, dw, code, out,
                         work=out.size * kh * kw)
        return
    y = out.reshape(N, cout, OH * OW)
    if groups == 1 and kh == kw == 1 and sh == sw == 1 and pt == pb == pl == pr == 0:
        np.matmul(w.reshape(cout, C), x.reshape(N, C, H * W), out=y)
    else:
        cog = cout // groups
        cols = np.empty((cg * kh * kw, OH * OW), np.float32)
        for n in range(N):
            for g in range(groups):
                T.parallel_range(im2col, cg * kh * kw, x[n], g * cg, cg, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW, cols,
                                 work=cols.size)
                np.matmul(w[g * cog:(g + 1) * cog].reshape(cog, -1), cols, out=y[n, g * cog:(g + 1) * cog])
    if b is not None or code:
        T.parallel_range(A.bias_act_channels, N * cout, y, bias, b is not None, code, work=y.size)
