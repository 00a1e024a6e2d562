"""Scaled dot-product attention.

- Prefill, transformer-sized heads (`attend_tiled`): one Numba pass per head and block of 64
  query rows, both products in 4 x 16 register tiles (`simd.mm_tile_4x16`), the softmax in place
  (`softmax_row`: scale, mask, causal mask, vectorised exp; a fully masked row gives zeros, as
  ATen's math path does). The [L, S] score matrix is never materialised.
- Prefill, other shapes (`attend_blocked`): per block of query rows, BLAS scores every head at
  once, `softmax_row` normalises each row, and BLAS multiplies by the values. At most
  `SCORE_BUDGET` scores exist at a time; no copies of q/k/v, and GQA reads each key head in place
  for its group of query heads.
- Decode (`attend_segments`, a few query rows): row by row over the KV cache and the new tokens,
  read in place as two segments.

Source: Vaswani et al. 2017, "Attention Is All You Need", eq. 1; ATen
``scaled_dot_product_attention`` semantics for bool/float masks, ``is_causal`` (top-left aligned:
query i sees keys j <= i) and GQA. `sdpa_reference` is the unfused numpy form the kernels are
tested against.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit

from nac.engine import threads as T
from nac.engine.kernels.registry import binder, kernel
from nac.engine.kernels.simd import mm_tile_4x16
from nac.engine.kernels.vmath import EXP_FLAGS, NUMPY_ERRORS, exp_shifted_sum, row_max

#: query rows up to which attention over a cache is computed row by row (no score matrix, no copy)
DECODE_ROWS = 4


#: the decode attention's flags: `EXP_FLAGS` plus reassociation, so that each query-key dot
#: product is summed in vector lanes (the exp itself is `vmath.exp_shifted_sum`'s, compiled with
#: its own flags); infinities and NaN keep their meaning (no ``ninf``/``nnan``)
DECODE_FLAGS = EXP_FLAGS | {"reassoc"}


@njit(cache=True, nogil=True, fastmath=DECODE_FLAGS, error_model=NUMPY_ERRORS)
def attend_segments(q, k1, v1, k2, v2, mask, mode, scale, causal, rep, out, lo, hi):
    """Attention for a few query rows over keys/values in two segments (a KV cache and the new
    tokens), reading both where they lie. q [B, H, L, E]; k1/v1 [B, Hk, S1, *]; k2/v2 [B, Hk, S2, *];
    mask [B, H, L, S1 + S2] (any strides) with ``mode`` 0 none, 1 bool keep, 2 additive; query head
    h reads key head h // rep; out [B, H, L, Ev]. Rows whose every key is masked give zeros
    (ATen's math path); a NaN score makes its row NaN. Parallel over ``lo..hi`` of B * H.

    A key that the bool mask (or causality) drops costs no dot product (a decode step's cache has
    free slots up to its capacity); each dot product is summed in vector lanes, the exponentials
    are `vmath.exp_shifted_sum`'s, and each kept value row is added once, scaled by its weight.
    SmolLM2's decode attention (9 heads, 160 slots, 96 filled, one thread): 63 -> 12.5 us for
    this kernel, 90-110 -> 34-39 us for the whole step (AMD EPYC VM)."""
    B, H, L, E = q.shape
    S1, S2, Ev = k1.shape[2], k2.shape[2], v1.shape[3]
    S = S1 + S2
    s = np.empty(S, np.float32)
    qv = np.empty(E, np.float32)
    acc = np.empty(Ev, np.float32)
    for bh in range(lo, hi):
        b, h = bh // H, bh % H
        hk = h // rep
        for i in range(L):
            for e in range(E):
                qv[e] = q[b, h, i, e]
            for j in range(S):
                if (mode == 1 and not mask[b, h, i, j]) or (causal and j > i):
                    s[j] = -np.inf
                    continue
                x = np.float32(0.0)
                if j < S1:
                    for e in range(E):
                        x += qv[e] * k1[b, hk, j, e]
                else:
                    for e in range(E):
                        x += qv[e] * k2[b, hk, j - S1, e]
                x *= scale
                if mode == 2:
                    x += mask[b, h, i, j]
                s[j] = x
            top = row_max(s, S)
            if not top > -np.inf:  # every key masked (or no keys): zeros
                for e in range(Ev):
                    out[b, h, i, e] = 0.0
                continue
            total = exp_shifted_sum(s, S, top, np.float32(1.0))
            for e in range(Ev):
                acc[e] = 0.0
            for j in range(S):
                p = s[j]
                if p == 0.0:
                    continue
                if j < S1:
                    for e in range(Ev):
                        acc[e] += p * v1[b, hk, j, e]
                else:
                    for e in range(Ev):
                        acc[e] += p * v2[b, hk, j - S1, e]
            inv = np.float32(1.0) / total
            for e in range(Ev):
                out[b, h, i, e] = acc[e] * inv


@njit(cache=True, nogil=True, error_model=NUMPY_ERRORS)
def rotary_rows(x, c, s, out, lo, hi):
    """Rows ``lo..hi`` of the rotary position embedding over x [A, B, C, D] (any strides; D even):
    out = x * c + rotate_half(x) * s, rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2]), with c and
    s 4-D, each axis x's length or 1 (broadcast here: numpy's broadcast_to costs ~2.5 us a call,
    more than a decode step's whole rotation). Row r is (r // (B*C), r // C % B, r % C). Each
    output is two float32 products and a sum, rounded as the unfused ops round them (no
    contraction to FMA), so the result is bit-identical to mul, neg, cat, mul, add."""
    _, B, C, D = x.shape
    h = D // 2
    for r in range(lo, hi):
        a, b, i = r // (B * C), (r // C) % B, r % C
        xr, o = x[a, b, i], out[a, b, i]
        cr = c[min(a, c.shape[0] - 1), min(b, c.shape[1] - 1), min(i, c.shape[2] - 1)]
        sr = s[min(a, s.shape[0] - 1), min(b, s.shape[1] - 1), min(i, s.shape[2] - 1)]
        cj, sj = 1 if cr.shape[0] > 1 else 0, 1 if sr.shape[0] > 1 else 0
        for j in range(h):
            x1, x2 = xr[j], xr[j + h]
            o[j] = x1 * cr[j * cj] + (-x2) * sr[j * sj]
            o[j + h] = x2 * cr[(j + h) * cj] + x1 * sr[(j + h) * sj]


def rotary_reference(x, c, s) -> np.ndarray:
    """The unfused rotary embedding (numpy, float32) the kernel is tested against and the rare
    rank-5+ input runs on: x * c + cat(-x[..., D/2:], x[..., :D/2]) * s, c and s broadcasting to x."""
    h = x.shape[-1] // 2
    rot = np.concatenate([np.negative(x[..., h:]), x[..., :h]], axis=-1)
    return np.add(np.multiply(x, c, dtype=np.float32), np.multiply(rot, s, dtype=np.float32), dtype=np.float32)


@kernel("rotary_embedding")
def rotary_embedding(ins, outs, attrs):
    """x [*, D] float32 (D even), cos and sin broadcasting to x -> out [*, D] float32: the rotary
    position embedding in transformers' half-split layout (Su et al. 2021, "RoFormer", eq. 34;
    transformers' ``apply_rotary_pos_emb`` / ``rotate_half``). One pass, rows split across the
    thread team; the shape rule has checked the shapes and dtypes."""
    x, c, s = ins
    out = outs[0]
    if x.ndim > 4:
        out[...] = rotary_reference(x, c, s)
        return
    T.parallel_range(*_rotary_job(x, c, s, out), work=x.size * 2)


def _rotary_job(x, c, s, out) -> tuple:
    """`rotary_rows`' `parallel_range` arguments for x of rank <= 4: every operand as a 4-D view."""
    x4, c4, s4, o4 = (t if t.ndim == 4 else t.reshape((1,) * (4 - t.ndim) + t.shape) for t in (x, c, s, out))
    return rotary_rows, x4.shape[0] * x4.shape[1] * x4.shape[2], x4, c4, s4, o4


@binder("rotary_embedding")
def bind_rotary(ins, outs, attrs):
    """A plan's rotary_embedding step with its 4-D views made once (None above rank 4)."""
    x = ins[0]
    return None if x.ndim > 4 else functools.partial(T.parallel_range, *_rotary_job(*ins, outs[0]), work=x.size * 2)


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
        softmax_row(sc[b, h, c], n, mask, b, h, r0 + c, mode, scale, causal)


@njit(cache=True, nogil=True, fastmath=EXP_FLAGS, error_model=NUMPY_ERRORS)
def softmax_row(x, n, mask, b, h, i, mode, scale, causal):
    """In place over x[0..n], the scores of query i (batch b, head h): x = softmax(x * scale +
    mask[b, h, i]) with ``mode`` 0 no mask, 1 bool mask (True keeps), 2 additive float mask;
    causal keeps key j <= i. A row whose every key is masked becomes zeros (ATen's math path).
    One pass for max, one for exp (vectorised `exp32`) and sum, one to normalise."""
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
        return
    inv = np.float32(1.0) / exp_shifted_sum(x, n, top, post)
    for j in range(n):
        x[j] *= inv


#: query rows per unit of the tiled attention (each unit copies its keys and values once)
TILE_ROWS = 64
#: when `sdpa` takes the tiled kernel rather than the BLAS-blocked one (measured on the 2-core
#: AVX-512 VM, 2 threads): head sizes up to TILED_MAX_DIM (a 512-wide single head, as in a VAE's
#: mid-block, is 8x faster through BLAS), at least TILED_MIN_KEYS keys and TILED_MIN_ROWS query
#: rows. Tiled / blocked time: 12 heads x 16 rows x 16 keys (MiniLM, seq 16) 0.88, 32 x 32 0.60,
#: 8 heads x 16 x 77 (cross-attention) 0.73, 16 x 512 0.98; below 16 rows or keys BLAS wins
#: (12 x 12 x 12: 1.19, 9 x 9 batch 4: 1.38, 8 rows x 1,024 keys: 1.31)
TILED_MAX_DIM = 128
TILED_MIN_KEYS = 16
TILED_MIN_ROWS = 16


@njit(cache=True, nogil=True)
def visible_keys(mask, b, h0, heads, r0, rows, n):
    """1 + the last key column (below ``n``) that any of query rows r0..r0+rows of heads
    h0..h0+heads keeps in the bool mask [B, H, L, S], or 0 when they keep none: the columns past
    it are masked for every row of the block, so they add exactly nothing to its softmax."""
    last = 0
    for h in range(h0, h0 + heads):
        for r in range(r0, r0 + rows):
            mrow = mask[b, h, r]
            j = n
            while j > last and not mrow[j - 1]:
                j -= 1
            last = j
            if last == n:
                return n
    return last


@njit(cache=True, nogil=True, fastmath=EXP_FLAGS, error_model=NUMPY_ERRORS)
def attend_tiled(q, k1, v1, k2, v2, mask, mode, scale, causal, rep, out, lo, hi):
    """Fused attention for units ``lo..hi`` of B * Hk * ceil(L / TILE_ROWS) (a key head with its
    ``rep`` query heads, and a block of up to TILE_ROWS query rows each), with both products in
    4 x 16 register tiles (`simd.mm_tile_4x16`). Units go first, last, second, ... row block, so
    the contiguous ranges `threads.parallel_range` hands out get equal work when keys are causal.

    q [B, H, L, E]; k1/v1 [B, Hk, S1, E/Ev] and k2/v2 [B, Hk, S2, E/Ev] are the keys/values in
    two segments (S2 may be 0), any strides; mask [B, H, L, S1 + S2] as in `softmax_row`; query
    head h reads key head h // rep; out [B, H, L, Ev] float32. Per unit, the visible keys are
    copied transposed and zero-padded to a multiple of 16 ([E, n16]), the values padded to
    [n16, Ev16], once for the ``rep`` query heads that share them; the queries are padded to a
    multiple of 4 rows; scores [rows, n16] are normalised row by row in place and multiplied by
    the values. Visible means below the causal limit and, with a bool mask, up to the last column
    a row of the block keeps (`visible_keys`: a causal mask given as a tensor costs what
    ``is_causal`` does). Memory per thread is O(S (E + Ev + TILE_ROWS)).
    """
    B, H, L, E = q.shape
    S1, S2, Ev = k1.shape[2], k2.shape[2], v1.shape[3]
    S = S1 + S2
    Hk = H // rep
    chunks = (L + TILE_ROWS - 1) // TILE_ROWS
    S16 = (S + 15) // 16 * 16
    Ev16 = (Ev + 15) // 16 * 16
    kt = np.empty(E * S16, np.float32)
    vs = np.empty(S16 * Ev16, np.float32)
    qs = np.empty(TILE_ROWS * E, np.float32)
    sc = np.empty(TILE_ROWS * S16, np.float32)
    o = np.empty(TILE_ROWS * Ev16, np.float32)
    for unit in range(lo, hi):
        bh = unit % (B * Hk)
        b, hk = bh // Hk, bh % Hk
        slot = unit // (B * Hk)  # blocks 0, C-1, 1, C-2, ...: contiguous unit ranges get equal causal work
        r0 = (slot // 2 if slot % 2 == 0 else chunks - 1 - slot // 2) * TILE_ROWS
        R = min(L, r0 + TILE_ROWS) - r0
        R4 = (R + 3) // 4 * 4
        n = min(S, r0 + R) if causal else S  # a causal block's last row sees keys < r0 + R
        if mode == 1:
            n = visible_keys(mask, b, hk * rep, rep, r0, R, n)
        n16 = (n + 15) // 16 * 16
        for e in range(E):
            row = kt[e * n16:(e + 1) * n16]
            for j in range(min(n, S1)):
                row[j] = k1[b, hk, j, e]
            for j in range(S1, n):
                row[j] = k2[b, hk, j - S1, e]
            for j in range(n, n16):
                row[j] = 0.0
        for j in range(n16):
            row = vs[j * Ev16:(j + 1) * Ev16]
            if j < n:
                for c in range(Ev):
                    row[c] = v1[b, hk, j, c] if j < S1 else v2[b, hk, j - S1, c]
                for c in range(Ev, Ev16):
                    row[c] = 0.0
            else:
                for c in range(Ev16):
                    row[c] = 0.0
        for h in range(hk * rep, (hk + 1) * rep):
            for r in range(R4):
                for e in range(E):
                    qs[r * E + e] = q[b, h, r0 + r, e] if r < R else np.float32(0.0)
            for rr in range(0, R4, 4):
                for j0 in range(0, n16, 16):
                    mm_tile_4x16(qs, rr * E, E, kt, j0, n16, sc, rr * n16 + j0, n16, E)
            for r in range(R):
                x = sc[r * n16:(r + 1) * n16]
                softmax_row(x, n, mask, b, h, r0 + r, mode, scale, causal)
                for j in range(n, n16):
                    x[j] = 0.0
            for r in range(R, R4):
                for j in range(n16):
                    sc[r * n16 + j] = 0.0
            for rr in range(0, R4, 4):
                for c0 in range(0, Ev16, 16):
                    mm_tile_4x16(sc, rr * n16, n16, vs, c0, Ev16, o, rr * Ev16 + c0, Ev16, n16)
            for r in range(R):
                for c in range(Ev):
                    out[b, h, r0 + r, c] = o[r * Ev16 + c]


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

    With k_tail/v_tail [*, Hk, S2, *], the keys are k then k_tail: a decode step (L <= DECODE_ROWS)
    reads both in place row by row (`attend_segments`); a longer one goes to `attend_tiled` (which
    also reads both in place) or `attend_blocked` (see the TILED_* thresholds).
    """
    args = _operands4(ins, outs[0], attrs)
    job = _attend_job(*args)
    if job is not None:
        T.parallel_range(*job[:-1], work=job[-1])
        return
    q4, k4, v4, k5, v5, m4, mode, scale, causal, rep, out4 = args
    if k5.shape[2]:  # a prompt after a cache: join the two segments
        k4, v4 = np.concatenate([k4, k5], axis=2), np.concatenate([v4, v5], axis=2)
    attend_blocked(q4, k4, v4, m4, mode, scale, causal, rep, out4)


def _operands4(ins, out, attrs, copy: bool = True) -> tuple | None:
    """`sdpa`'s operands as the kernels take them, (q4, k4, v4, k5, v5, m4, mode, scale, causal,
    rep, out4): [B, H, L, E] views where the batch is one 4-D axis shared by every operand, else
    flattened copies; float32; the mask as a [B, H, L, S] view (`_mask4`). With ``copy=False``,
    None where any of them would be a copy (a plan's binder cannot keep those)."""
    q, k, v, mask = ins[:4]
    k_tail, v_tail = (ins + [None, None])[4:6]
    H, L, E = q.shape[-3:]
    S = k.shape[-2] + (0 if k_tail is None else k_tail.shape[-2])
    Hk = k.shape[-3]
    rep = H // Hk if attrs.get("enable_gqa") and Hk != H else 1
    lead = q.shape[:-3]
    B = math.prod(lead)
    in_place = q.ndim == 4 and all(a is None or a.shape[0] == B for a in (k, v, k_tail, v_tail))
    if not copy and (not in_place or any(a is not None and a.dtype != np.float32 for a in (q, k, v, k_tail, v_tail))
                     or (mask is not None and mask.dtype not in (np.bool_, np.float32))):
        return None
    if in_place:
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
    mode, m4 = _mask4(mask, lead, (B, H, L, S))
    m4 = _NO_MASK if m4 is None else m4
    q4, k4, v4, k5, v5 = (a if a.dtype == np.float32 else a.astype(np.float32) for a in (q4, k4, v4, k5, v5))
    return q4, k4, v4, k5, v5, m4, mode, np.float32(attrs["scale"]), bool(attrs.get("is_causal")), rep, out4


def _attend_job(q4, k4, v4, k5, v5, m4, mode, scale, causal, rep, out4) -> tuple | None:
    """The `parallel_range` arguments (kernel, units, its arguments..., work) of the attention
    kernel that reads q/k/v in place for these 4-D operands (`attend_segments` for a decode
    step, `attend_tiled` for a transformer-sized prefill), or None for `attend_blocked`."""
    B, H, L, E = q4.shape
    S = k4.shape[2] + k5.shape[2]
    args = (q4, k4, v4, k5, v5, m4, mode, scale, causal, rep, out4)
    if L <= DECODE_ROWS:
        return (attend_segments, B * H, *args, B * H * L * S * E * 2)
    if E <= TILED_MAX_DIM and out4.shape[-1] <= TILED_MAX_DIM and S >= TILED_MIN_KEYS and L >= TILED_MIN_ROWS:
        return (attend_tiled, B * (H // rep) * -(-L // TILE_ROWS), *args, B * H * L * S * (E + out4.shape[-1]))
    return None


@binder("scaled_dot_product_attention")
def bind_sdpa(ins, outs, attrs):
    """A plan's attention step with the mask's broadcast view (~5 us a call) and the kernel's
    arguments made once, where the kernel reads everything in place (`_operands4` needs no copy
    and `_attend_job` has a kernel for them); None otherwise (the plan calls `sdpa`)."""
    args = _operands4(ins, outs[0], attrs, copy=False)
    job = None if args is None else _attend_job(*args)
    return None if job is None else functools.partial(T.parallel_range, *job[:-1], work=job[-1])


_NO_MASK = np.broadcast_to(np.zeros(1, np.float32), (1, 1, 1, 1))


def _mask4(mask, lead: tuple, shape4: tuple):
    """(mode, mask as a [B, H, L, S] view or None): mode 0 no mask, 1 bool (True keeps), 2 additive
    float32; ``mask`` broadcasts to ``lead + shape4[1:]``."""
    if mask is None:
        return 0, None
    mode = 1 if mask.dtype == np.bool_ else 2
    m4 = np.broadcast_to(mask, lead + shape4[1:]).reshape(shape4)
    return mode, (m4 if mode == 1 else m4.astype(np.float32, copy=False))


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
    mode, m4 = _mask4(mask, lead, (B, H, L, S))
    masked_softmax(scores, m4, mode, np.float32(scale), is_causal)
    return np.matmul(scores, v4).reshape(lead + (H, L, -1))
