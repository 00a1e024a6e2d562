"""Matrix products and convolution.

Dense products go to BLAS through ``numpy.matmul`` (measured faster than a Numba loop for every
shape NAC meets); bias and activation are then applied in one fused Numba pass. Depthwise
convolution is a direct Numba stencil; other convolutions are im2col (Numba) + BLAS, and 1x1
stride-1 convolutions are a plain batched GEMM over NCHW.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from nac.engine import threads as T
from nac.engine.kernels import activation as A
from nac.engine.kernels import quant as Q
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
        if b is not None or code:
            T.parallel_range(A.bias_act_rows, y.shape[0], y, _EMPTY if b is None else b, b is not None, code,
                             work=y.size * (4 if code else 1))
        return
    if attrs.get("weight_layout", "oi") == "io":
        (K, N), wmat = w.shape, w
    else:
        (N, K), wmat = w.shape, w.T
    y = out.reshape(-1, N)
    np.matmul(x.reshape(-1, K), wmat, out=y)
    if b is not None or code:
        T.parallel_range(A.bias_act_rows, y.shape[0], y, _EMPTY if b is None else b, b is not None, code,
                         work=y.size * (4 if code else 1))


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
def depthwise_conv2d_nhwc(xt, wt, b, has_bias, sh, sw, pt, pl, dh, dw, code, yt, lo, hi):
    """Depthwise 2-D cross-correlation in channels-last layout, for small planes.

    xt: [N, H, W, C] float32; wt: [kh, kw, C]; yt: [N, OH, OW, C]; rows ``lo..hi`` of N*OH.
    The innermost loop runs over channels, which are many where planes are small (7x7 to 28x28
    in MobileNet/EfficientNet), so it fills the vector units where a loop over output columns
    cannot.
    """
    N, H, W, C = xt.shape
    kh, kw = wt.shape[0], wt.shape[1]
    OH, OW = yt.shape[1], yt.shape[2]
    for r in range(lo, hi):
        n = r // OH
        oh = r % OH
        for ow in range(OW):
            acc = yt[n, oh, ow]
            for c in range(C):
                acc[c] = b[c] if has_bias else np.float32(0.0)
            for i in range(kh):
                ih = oh * sh - pt + i * dh
                if ih < 0 or ih >= H:
                    continue
                for j in range(kw):
                    iw = ow * sw - pl + j * dw
                    if iw < 0 or iw >= W:
                        continue
                    xv = xt[n, ih, iw]
                    wv = wt[i, j]
                    for c in range(C):
                        acc[c] += wv[c] * xv[c]
            A.bias_act_scalar(acc, np.float32(0.0), code)


#: output planes up to this many pixels use the channels-last depthwise kernel (measured faster)
NHWC_DEPTHWISE_MAX_PIXELS = 28 * 28


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
    x = np.ascontiguousarray(x, dtype=np.float32)
    N, C, H, W = x.shape
    cout, cg, kh, kw = w.shape
    sh, sw = attrs["stride"]
    pt, pb, pl, pr = attrs["padding"]
    dh, dw = attrs["dilation"]
    groups = attrs["groups"]
    code = A.CODES[attrs.get("activation", "none")]
    OH, OW = out.shape[2], out.shape[3]
    bias = _EMPTY if b is None else b
    if groups == C and cout == C and cg == 1 and OH * OW <= NHWC_DEPTHWISE_MAX_PIXELS:
        xt = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        wt = np.ascontiguousarray(w[:, 0].transpose(1, 2, 0))
        yt = np.empty((N, OH, OW, C), np.float32)
        T.parallel_range(depthwise_conv2d_nhwc, N * OH, xt, wt, bias, b is not None, sh, sw, pt, pl, dh, dw, code, yt,
                         work=yt.size * kh * kw)
        out[...] = yt.transpose(0, 3, 1, 2)
        return
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
