"""Scaled dot-product attention: BLAS for the two products and vectorised numpy for scale, mask,
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

#: query rows up to which attention over a cache is computed row by row (no score matrix, no copy)
DECODE_ROWS = 4


@njit(cache=True, nogil=True)
def attend_segments(q, k1, v1, k2, v2, mask, mode, scale, causal, rep, out, lo, hi):
    """Attention for a few query rows over keys/values in two segments (a KV cache and the new
    tokens), reading both where they lie. q [B, H, L, E]; k1/v1 [B, Hk, S1, *]; k2/v2 [B, Hk, S2, *];
    mask [B, H, L, S1 + S2] (any strides) with ``mode`` 0 none, 1 bool keep, 2 additive; query head
    h reads key head h // rep; out [B, H, L, Ev]. Rows whose every key is masked give zeros.
    Parallel over ``lo..hi`` of B * H."""
    B, H, L, E = q.shape
    S1, S2, Ev = k1.shape[2], k2.shape[2], v1.shape[3]
    S = S1 + S2
    s = np.empty(S, np.float32)
    acc = np.empty(Ev, np.float32)
    for bh in range(lo, hi):
        b, h = bh // H, bh % H
        hk = h // rep
        for i in range(L):
            mx = -np.inf
            for j in range(S):
                x = np.float32(0.0)
                if j < S1:
                    for e in range(E):
                        x += q[b, h, i, e] * k1[b, hk, j, e]
                else:
                    for e in range(E):
                        x += q[b, h, i, e] * k2[b, hk, j - S1, e]
                x *= scale
                if mode == 1:
                    if not mask[b, h, i, j]:
                        x = -np.inf
                elif mode == 2:
                    x += mask[b, h, i, j]
                if causal and j > i:
                    x = -np.inf
                s[j] = x
                if x > mx:
                    mx = x
            for e in range(Ev):
                acc[e] = 0.0
            if mx == -np.inf or mx != mx:
                for e in range(Ev):
                    out[b, h, i, e] = 0.0
                continue
            total = np.float32(0.0)
            for j in range(S):
                p = np.float32(math.exp(s[j] - mx))
                total += p
                if p == 0.0:
                    continue
                if j < S1:
                    for e in range(Ev):
                        acc[e] += p * v1[b, hk, j, e]
                else:
                    for e in range(Ev):
                        acc[e] += p * v2[b, hk, j - S1, e]
            for e in range(Ev):
                out[b, h, i, e] = acc[e] / total


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
    """q [*, H, L, E], k [*, Hk, S, E], v [*, Hk, S, Ev], mask broadcastable to [*, H, L, S] -> [*, H, L, Ev].
    With k_tail/v_tail [*, Hk, S2, *], the keys are k then k_tail: a decode step (L <= DECODE_ROWS,
    4-D) reads both segments in place; otherwise they are joined first."""
    q, k, v, mask = ins[:4]
    k_tail, v_tail = (ins + [None, None])[4:6]
    out = outs[0]
    if k_tail is not None:
        if q.ndim == 4 and q.shape[2] <= DECODE_ROWS and k.shape[0] == q.shape[0]:
            _decode_segments(q, k, v, k_tail, v_tail, mask, attrs, out)
            return
        k, v = np.concatenate([k, k_tail], axis=-2), np.concatenate([v, v_tail], axis=-2)
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


def _decode_segments(q, k1, v1, k2, v2, mask, attrs, out) -> None:
    B, H, L, E = q.shape
    S = k1.shape[2] + k2.shape[2]
    rep = H // k1.shape[1] if attrs.get("enable_gqa") and k1.shape[1] != H else 1
    if mask is None:
        mode, m = 0, np.zeros((1, 1, 1, 1), np.float32)
    else:
        mode = 1 if mask.dtype == np.bool_ else 2
        m = np.broadcast_to(mask, (B, H, L, S))
        m = m if mode == 1 else m.astype(np.float32, copy=False)
    f32 = [a if a.dtype == np.float32 else a.astype(np.float32) for a in (q, k1, v1, k2, v2)]
    T.parallel_range(attend_segments, B * H, *f32, m, mode, np.float32(attrs["scale"]), bool(attrs.get("is_causal")),
                     rep, out, work=B * H * L * S * E * 2)
