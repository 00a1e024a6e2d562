"""Scaled dot-product attention.

- Prefill (`attend_blocked`): per block of query rows, BLAS scores every head at once, one Numba
  pass per row applies scale, mask and causal mask and a safe softmax (vectorised exp; a fully
  masked row gives zeros, as ATen's math path does), and BLAS multiplies by the values. At most
  `SCORE_BUDGET` scores exist at a time, so memory stays bounded at any sequence length; no
  copies of q/k/v, and GQA reads each key head in place for its group of query heads.
- Decode (`attend_segments`, a few query rows): row by row over the KV cache and the new tokens,
  read in place as two segments.

Source: Vaswani et al. 2017, "Attention Is All You Need", eq. 1; ATen
``scaled_dot_product_attention`` semantics for bool/float masks, ``is_causal`` (top-left aligned:
query i sees keys j <= i) and GQA. `sdpa_reference` is the unfused numpy form the kernels are
tested against.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from nac.engine import threads as T
from nac.engine.kernels.registry import kernel
from nac.engine.kernels.vmath import EXP_FLAGS, NUMPY_ERRORS, exp_shifted_sum, row_max

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


#: score elements (rows x keys, all heads) held at once by the blocked prefill attention: 16 MB
SCORE_BUDGET = 1 << 22


@njit(cache=True, nogil=True, fastmath=EXP_FLAGS, error_model=NUMPY_ERRORS)
def softmax_scores(sc, mask, mode, scale, causal, r0, lo, hi):
    """In place over rows ``lo..hi`` of score blocks sc [B, H, C, n] (query rows r0..r0+C, keys
    0..n): sc = softmax(sc * scale + mask) along keys, with ``mode`` 0 no mask, 1 bool mask (True
    keeps), 2 additive float mask, mask [B, H, L, S] any strides; causal keeps key j <= query i.
    A row whose every key is masked becomes zeros (ATen's math path). One pass for max, one for
    exp (vectorised `exp32`) and sum, one to normalise."""
    B, H, C, n = sc.shape
    for row in range(lo, hi):
        b = row // (H * C)
        h = (row // C) % H
        c = row % C
        i = r0 + c
        x = sc[b, h, c]
        post = scale  # scale > 0 commutes with the max: applied inside exp, no pass of its own
        if mode == 2 or not scale > 0:
            post = np.float32(1.0)
            if mode == 2:
                mrow = mask[b, h, i]
                for j in range(n):
                    x[j] = x[j] * scale + mrow[j]
            else:
                for j in range(n):
                    x[j] *= scale
        elif mode == 1:
            mrow = mask[b, h, i]
            for j in range(n):
                if not mrow[j]:
                    x[j] = -np.inf
        if causal:
            for j in range(i + 1, n):
                x[j] = -np.inf
        top = row_max(x, n)
        if not top > -np.inf:  # every key masked: zeros, as ATen's math path
            for j in range(n):
                x[j] = 0.0
            continue
        inv = np.float32(1.0) / exp_shifted_sum(x, n, top, post)
        for j in range(n):
            x[j] *= inv


def attend_blocked(q, k, v, mask, mode: int, scale, causal: bool, rep: int, out) -> None:
    """Prefill attention in blocks of query rows: for each block, BLAS computes the scores of every
    head at once, `softmax_scores` normalises them in place on all cores, and BLAS multiplies them
    into the block's rows of ``out``. At most `SCORE_BUDGET` scores exist at a time, whatever L.

    q [B, H, L, E], k [B, Hk, S, E], v [B, Hk, S, Ev] float32 (any strides with a unit last one);
    query head h reads key head h // rep (no repeated copies of k/v); mask [B, H, L, S] as in
    `softmax_scores`; out [B, H, L, Ev] float32. Causal blocks only score the keys they can see.
    """
    B, H, L, E = q.shape
    Hk, S, Ev = k.shape[1], k.shape[2], v.shape[3]
    chunk = max(1, min(L, SCORE_BUDGET // max(1, B * H * S)))
    scratch = np.empty(B * H * chunk * S, np.float32)
    kt = k.transpose(0, 1, 3, 2)[:, :, None]  # [B, Hk, 1, E, S]: broadcast over the rep query heads of a group
    vg = v[:, :, None]
    for r0 in range(0, L, chunk):
        r1 = min(L, r0 + chunk)
        c = r1 - r0
        n = min(S, r1) if causal else S  # a causal block's last row sees keys < r1
        sc = scratch[:B * H * c * n].reshape(B, Hk, rep, c, n)
        np.matmul(q[:, :, r0:r1].reshape(B, Hk, rep, c, E), kt[..., :n], out=sc)
        T.parallel_range(softmax_scores, B * H * c, sc.reshape(B, H, c, n), mask, mode, scale, causal, r0,
                         work=B * H * c * n * 8)
        if c == L and out.flags.c_contiguous:
            np.matmul(sc, vg[:, :, :, :n], out=out.reshape(B, Hk, rep, L, Ev))
        else:
            out[:, :, r0:r1] = np.matmul(sc, vg[:, :, :, :n]).reshape(B, H, c, Ev)


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

    With k_tail/v_tail [*, Hk, S2, *], the keys are k then k_tail, both read in place: a decode step
    (L <= DECODE_ROWS) row by row (`attend_segments`), anything longer in blocks of query rows (`attend_blocked`).
    """
    q, k, v, mask = ins[:4]
    k_tail, v_tail = (ins + [None, None])[4:6]
    out = outs[0]
    H, L, E = q.shape[-3:]
    S = k.shape[-2] + (0 if k_tail is None else k_tail.shape[-2])
    Hk = k.shape[-3]
    rep = H // Hk if attrs.get("enable_gqa") and Hk != H else 1
    lead = q.shape[:-3]
    B = math.prod(lead)
    if q.ndim == 4 and k.shape[0] == B and (k_tail is None or k_tail.shape[0] == B):
        q4, k4, v4, out4 = q, k, v, out
        k5, v5 = (k_tail, v_tail) if k_tail is not None else (_no_keys(k), _no_keys(v))
    else:  # other batch ranks, or keys broadcast over the batch: flatten (copies)
        if k_tail is not None:
            k, v = np.concatenate([k, k_tail], axis=-2), np.concatenate([v, v_tail], axis=-2)
        q4 = q.reshape(B, H, L, E)
        k4 = np.broadcast_to(k, lead + k.shape[-3:]).reshape(B, Hk, S, E)
        v4 = np.broadcast_to(v, lead + v.shape[-3:]).reshape(B, Hk, S, -1)
        k5, v5 = _no_keys(k4), _no_keys(v4)
        out4 = out.reshape(B, H, L, -1)
    if mask is None:
        mode, m4 = 0, _NO_MASK
    else:
        mode = 1 if mask.dtype == np.bool_ else 2
        m4 = np.broadcast_to(mask, lead + (H, L, S)).reshape(B, H, L, S)
        m4 = m4 if mode == 1 else m4.astype(np.float32, copy=False)
    q4, k4, v4, k5, v5 = (a if a.dtype == np.float32 else a.astype(np.float32) for a in (q4, k4, v4, k5, v5))
    scale, causal = np.float32(attrs["scale"]), bool(attrs.get("is_causal"))
    if L <= DECODE_ROWS:
        T.parallel_range(attend_segments, B * H, q4, k4, v4, k5, v5, m4, mode, scale, causal, rep, out4,
                         work=B * H * L * S * E * 2)
        return
    if k5.shape[2]:  # a prompt after a cache: join the two segments
        k4, v4 = np.concatenate([k4, k5], axis=2), np.concatenate([v4, v5], axis=2)
    attend_blocked(q4, k4, v4, m4, mode, scale, causal, rep, out4)


_NO_MASK = np.broadcast_to(np.zeros(1, np.float32), (1, 1, 1, 1))


def _no_keys(k: np.ndarray) -> np.ndarray:
    """An empty second key/value segment shaped like ``k`` (S2 = 0)."""
    return np.empty(k.shape[:2] + (0, k.shape[3]), np.float32)


def sdpa_reference(q, k, v, mask, scale: float, is_causal: bool, enable_gqa: bool) -> np.ndarray:
    """The unfused attention (BLAS products, numpy softmax) that the fused kernels are tested
    against: q [*, H, L, E], k [*, Hk, S, E], v [*, Hk, S, Ev], mask broadcastable to [*, H, L, S]
    (bool keeps True, float adds) -> float32 [*, H, L, Ev]."""
    lead = q.shape[:-3]
    H, L, E = q.shape[-3:]
    S = k.shape[-2]
    if enable_gqa and k.shape[-3] != H:
        rep = H // k.shape[-3]
        k, v = np.repeat(k, rep, axis=-3), np.repeat(v, rep, axis=-3)
    B = math.prod(lead)
    q4 = np.ascontiguousarray(q, np.float32).reshape(B, H, L, E)
    k4 = np.ascontiguousarray(np.broadcast_to(k, lead + (H, S, E)), np.float32).reshape(B, H, S, E)
    v4 = np.ascontiguousarray(np.broadcast_to(v, lead + (H, S, v.shape[-1])), np.float32).reshape(B, H, S, -1)
    scores = np.matmul(q4, k4.transpose(0, 1, 3, 2))
    if mask is None:
        mode, m4 = 0, None
    else:
        mode = 1 if mask.dtype == np.bool_ else 2
        m4 = np.broadcast_to(mask, lead + (H, L, S)).reshape(B, H, L, S)
        m4 = m4 if mode == 1 else m4.astype(np.float32, copy=False)
    masked_softmax(scores, m4, mode, np.float32(scale), is_causal)
    return np.matmul(scores, v4).reshape(lead + (H, L, -1))
