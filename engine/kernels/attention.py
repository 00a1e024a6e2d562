"""Scaled dot-product attention: BLAS for the two products and vectorised numpy for scale, mask,
causal mask and a safe softmax (a fully masked row gives zeros, as ATen's math path does).

Source: Vaswani et al. 2017, "Attention Is All You Need", eq. 1; ATen
``scaled_dot_product_attention`` semantics for bool/float masks, ``is_causal`` and GQA.
"""
from __future__ import annotations

import numpy as np

from nac.engine.kernels.registry import kernel


def masked_softmax(s: np.ndarray, mask, mode: int, scale: float, causal: bool) -> None:
    """In place over scores s [B, H, L, S] float32: s = softmax(s * scale + mask) along S.

    mask: broadcastable to s; mode 0 = none, 1 = bool (True keeps), 2 = additive float. causal
    keeps column j <= row i. A row with every position masked becomes zeros (ATen's math path).
    numpy's float32 exp is vectorised (AVX-512); a scalar exp in Numba (no SVML here) was 3x
    slower over a 9 x 512 x 512 block even on two threads.
    """
    s *= scale
    if mode == 1:
        np.copyto(s, -np.inf, where=~np.broadcast_to(mask, s.shape))
    elif mode == 2:
        s += mask
    if causal:
        L, S = s.shape[-2:]
        np.copyto(s, -np.inf, where=np.triu(np.ones((L, S), bool), 1))
    mx = s.max(axis=-1, keepdims=True)
    dead = ~np.isfinite(mx)
    mx[dead] = 0.0
    s -= mx
    np.exp(s, out=s)
    with np.errstate(invalid="ignore", divide="ignore"):  # fully masked rows: 0 / 0, zeroed below
        s /= s.sum(axis=-1, keepdims=True)
    if dead.any():
        s[np.broadcast_to(dead, s.shape)] = 0.0


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
        mode, m4 = 0, None
    else:
        mode = 1 if mask.dtype == np.bool_ else 2
        m = np.broadcast_to(mask, lead + (H, L, S)).reshape(B, H, L, S) if lead else \
            np.broadcast_to(mask, (H, L, S)).reshape(1, H, L, S)
        m4 = m if mode == 1 else m.astype(np.float32, copy=False)
    masked_softmax(scores, m4, mode, np.float32(attrs["scale"]), bool(attrs.get("is_causal")))
    np.matmul(scores, v4, out=out.reshape(B, H, L, -1))
