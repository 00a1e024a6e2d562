"""Scaled dot-product attention: BLAS for the two products, one Numba pass for scale, mask,
causal mask and a safe softmax (a fully masked row gives zeros, as ATen's math path does).

Source: Vaswani et al. 2017, "Attention Is All You Need", eq. 1; ATen
``scaled_dot_product_attention`` semantics for bool/float masks, ``is_causal`` and GQA.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from nac.engine import threads as T
from nac.engine.kernels.registry import kernel


@njit(cache=True, nogil=True)
def masked_softmax(s, mask, mode, scale, causal, lo, hi):
    """In place over scores s [B, H, L, S] (contiguous float32): s = softmax(s * scale + mask).

    mask: [B, H, L, S] view (may have zero strides); mode 0 = none, 1 = bool (True keeps),
    2 = additive float. causal keeps column j <= row i.
    """
    B, H, L, S = s.shape
    for r in range(lo, hi):
        b = r // (H * L)
        h = (r // L) % H
        i = r % L
        row = s[b, h, i]
        mx = -np.inf
        for j in range(S):
            v = row[j] * scale
            if mode == 1 and not mask[b, h, i, j]:
                v = -np.inf
            elif mode == 2:
                v += mask[b, h, i, j]
            if causal and j > i:
                v = -np.inf
            row[j] = v
            if v > mx:
                mx = v
        if mx == -np.inf:
            for j in range(S):
                row[j] = 0.0
            continue
        tot = 0.0
        for j in range(S):
            e = math.exp(row[j] - mx)
            row[j] = e
            tot += e
        inv = 1.0 / tot
        for j in range(S):
            row[j] = row[j] * inv


@kernel("scaled_dot_product_attention")
def sdpa(ins, outs, attrs):
    """q [*, H, L, E], k [*, Hk, S, E], v [*, Hk, S, Ev], mask broadcastable to [*, H, L, S] -> [*, H, L, Ev]."""
    q, k, v, mask = ins
    out = outs[0]
    lead = q.shape[:-3]
    H, L, E = q.shape[-3:]
    S = k.shape[-2]
    if attrs.get("enable_gqa") and k.shape[-3] != H:
        rep = H // k.shape[-3]
        k, v = np.repeat(k, rep, axis=-3), np.repeat(v, rep, axis=-3)
    B = int(np.prod(lead)) if lead else 1
    q4 = np.ascontiguousarray(q, np.float32).reshape(B, H, L, E)
    k4 = np.ascontiguousarray(np.broadcast_to(k, lead + (H, S, E)), np.float32).reshape(B, H, S, E)
    v4 = np.ascontiguousarray(np.broadcast_to(v, lead + (H, S, v.shape[-1])), np.float32).reshape(B, H, S, -1)
    scores = np.empty((B, H, L, S), np.float32)
    np.matmul(q4, k4.transpose(0, 1, 3, 2), out=scores)
    if mask is None:
        mode, m4 = 0, np.zeros((1, 1, 1, 1), np.float32)
    else:
        mode = 1 if mask.dtype == np.bool_ else 2
        m = np.broadcast_to(mask, lead + (H, L, S)).reshape(B, H, L, S) if lead else \
            np.broadcast_to(mask, (H, L, S)).reshape(1, H, L, S)
        m4 = m if mode == 1 else m.astype(np.float32, copy=False)
    T.parallel_range(masked_softmax, B * H * L, scores, m4, mode, np.float32(attrs["scale"]), bool(attrs.get("is_causal")),
                     work=scores.size * 4)  # an exp and a divide per element
    np.matmul(scores, v4, out=out.reshape(B, H, L, -1))
