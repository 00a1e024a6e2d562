"""The vectorised float32 math (`vmath`), the fused activation epilogues and the blocked attention,
against float64 numpy and torch at stated tolerances, including the special values (NaN, +-inf,
fully masked rows) and the shapes that take each code path (tails of vector loops, several query
blocks, cache segments, GQA). `test_isa_builds` recompiles them for an AVX2-only CPU (and, with
`make test-isa`, for the x86-64 baseline), so the twins this machine does not pick are checked too."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numba import njit

from conftest import assert_close
from nac.engine.kernels import activation as A
from nac.engine.kernels import attention as AT
from nac.engine.kernels import simd
from nac.engine.kernels.vmath import exp32, row_max, sigmoid32, tanh32


@njit(fastmath=A.FASTMATH, error_model="numpy")
def _map(fn_code, x, out):
    """The functions called from a loop compiled with reassociation: LLVM inlines them there, and
    their own flags (no reassociation) must still hold."""
    for i in range(x.size):
        if fn_code == 0:
            out[i] = exp32(x[i])
        elif fn_code == 1:
            out[i] = sigmoid32(x[i])
        else:
            out[i] = tanh32(x[i])


def _ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ia, ib = a.view(np.int32).astype(np.int64), b.view(np.int32).astype(np.int64)
    ia = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = np.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return np.abs(ia - ib)


def test_exp32_within_two_ulp_of_the_correctly_rounded_value():
    x = np.concatenate([np.linspace(-87, 88.72, 1_000_003), np.float32(2.0) ** -np.arange(1, 30),
                        np.linspace(-110, -87.01, 1001)]).astype(np.float32)
    out = np.empty_like(x)
    _map(0, x, out)
    want = np.exp(x.astype(np.float64)).astype(np.float32)
    normal = x >= -87
    assert _ulp_distance(out[normal], want[normal]).max() <= 2
    assert (out[~normal] == 0).all() and want[~normal].max() < 1.7e-38


def test_exp_sigmoid_tanh_special_values():
    x = np.array([-np.inf, np.inf, np.nan, 0.0, -0.0, -100.0, 100.0, -87.5, 88.8, 1e-30], np.float32)
    out = np.empty_like(x)
    _map(0, x, out)
    np.testing.assert_array_equal(out[[0, 1, 3, 4, 5, 6, 7, 8]], [0, np.inf, 1, 1, 0, np.inf, 0, np.inf])
    assert np.isnan(out[2]) and out[9] == 1.0
    _map(1, x, out)
    np.testing.assert_array_equal(out[[0, 1, 3, 5, 6]], [0, 1, 0.5, 0, 1])
    assert np.isnan(out[2])
    _map(2, x, out)
    np.testing.assert_array_equal(out[[0, 1, 3, 5, 6, 9]], [-1, 1, 0, -1, 1, np.float32(1e-30)])
    assert np.isnan(out[2]) and np.signbit(out[4])


@pytest.mark.parametrize("code,lo,hi", [(1, -30, 30), (2, -12, 12)])
def test_sigmoid_tanh_against_float64(code, lo, hi):
    x = np.linspace(lo, hi, 600_001).astype(np.float32)
    out = np.empty_like(x)
    _map(code, x, out)
    x64 = x.astype(np.float64)
    want = 1 / (1 + np.exp(-x64)) if code == 1 else np.tanh(x64)
    rel = np.abs(out - want) / np.maximum(np.abs(want), 1e-30)
    assert rel.max() < 2e-6  # tanh's 1 - 2 / (e^2x + 1) loses a few bits just above |x| = 1/16


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 16, 37, 130])
def test_row_max_skips_nan_and_reads_every_element(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n + 3).astype(np.float32)
    x[n:] = 1e9  # beyond n: must not be read
    if n > 2:
        x[1] = np.nan
    want = np.nanmax(x[:n]) if n else -np.inf
    assert njit(lambda a, k: row_max(a, k))(x, n) == want
    if n:
        y = np.full(n, -np.inf, np.float32)
        y[n - 1] = 3.0  # the maximum in the scalar tail, or in the last lane
        assert njit(lambda a, k: row_max(a, k))(y, n) == 3.0


TORCH_ACT = {"none": lambda x: x, "relu": torch.relu, "relu6": F.relu6, "gelu": F.gelu,
             "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu, "sigmoid": torch.sigmoid,
             "tanh": torch.tanh, "hardswish": F.hardswish}


@pytest.mark.parametrize("act", A.ACTIVATIONS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_fused_epilogue_matches_torch(act, per_channel):
    rng = np.random.default_rng(len(act))
    y0 = (rng.standard_normal((5, 67)) * 6).astype(np.float32)
    y0[0, :7] = [np.nan, np.inf, -np.inf, 0.0, 100.0, -100.0, -0.0]
    bias = rng.standard_normal(67 if not per_channel else 5).astype(np.float32)
    y = y0.copy()
    code = A.CODES[act]
    if per_channel:  # conv2d's layout: one bias per channel (row here)
        A.bias_act_channels(y.reshape(1, 5, 67), bias, True, code, 0, 5)
        ref = TORCH_ACT[act](torch.from_numpy(y0) + torch.from_numpy(bias)[:, None]).numpy()
    else:
        A.bias_act_rows(y, bias, True, code, 0, 5)
        ref = TORCH_ACT[act](torch.from_numpy(y0) + torch.from_numpy(bias)).numpy()
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(y[~finite & ~np.isnan(ref)], ref[~finite & ~np.isnan(ref)])
    assert np.array_equal(np.isnan(y), np.isnan(ref)), act
    assert_close(y[finite], ref[finite], rel=2e-6, what=act)


def _torch_sdpa(q, k, v, mask, scale, causal, gqa):
    t = torch.from_numpy
    return F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=None if mask is None else t(mask),
                                          is_causal=causal, scale=scale, enable_gqa=gqa).numpy()


ATTENTION_CASES = [  # (B, H, Hk, L, S, E, Ev, mask kind, causal)
    (2, 4, 4, 37, 37, 16, 16, "bool", False),
    (1, 6, 2, 130, 130, 64, 32, "none", True),
    (2, 3, 3, 9, 70, 8, 8, "float", False),
    (1, 2, 1, 5, 5, 32, 32, "none", True),
    (3, 2, 2, 40, 17, 24, 40, "bool-rows", False),
    (1, 2, 2, 67, 100, 20, 24, "float-inf", False),
    (1, 3, 1, 70, 70, 16, 16, "none", True),
    # causal + left padding as a bool tensor (what exported decoders pass): batch 1's first block
    # of 64 query rows keeps no key at all, later blocks see only a prefix of the keys
    (2, 6, 2, 150, 150, 32, 32, "bool-causal", False),
]
#: ("tiled", None): `attend_tiled`; ("blocked", budget): `attend_blocked` with that score budget
#: (97: a block of one or a few query rows at a time)
PATHS = [("tiled", None), ("blocked", AT.SCORE_BUDGET), ("blocked", 97)]


def _take_path(monkeypatch, path):
    kind, budget = path
    if kind == "tiled":
        monkeypatch.setattr(AT, "TILED_MIN_KEYS", 0)
        monkeypatch.setattr(AT, "TILED_MIN_ROWS", 0)
        monkeypatch.setattr(AT, "TILED_MAX_DIM", 1 << 20)
    else:
        monkeypatch.setattr(AT, "TILED_MAX_DIM", 0)
        monkeypatch.setattr(AT, "SCORE_BUDGET", budget)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"{p[0]}-{p[1]}")
@pytest.mark.parametrize("shape", ATTENTION_CASES, ids=lambda c: "-".join(map(str, c)))
def test_attention_matches_torch(shape, path, monkeypatch):
    B, H, Hk, L, S, E, Ev, kind, causal = shape
    _take_path(monkeypatch, path)
    rng = np.random.default_rng(L * S)
    base = rng.standard_normal((B, L, H, E)).astype(np.float32)
    q = base.transpose(0, 2, 1, 3)  # a strided view, as the graph hands it over
    k = rng.standard_normal((B, Hk, S, E)).astype(np.float32)
    v = rng.standard_normal((B, Hk, S, Ev)).astype(np.float32)
    mask = None
    if kind == "bool":
        mask = rng.random((B, 1, 1, S)) < 0.8
        mask[..., 0] = True
    elif kind == "float":
        mask = rng.uniform(-2, 2, (1, H, L, S)).astype(np.float32)
    elif kind == "bool-rows":  # padded queries: some rows see no key at all and must give zeros
        mask = rng.random((B, 1, L, S)) < 0.7
        mask[:, :, ::5] = False
    elif kind == "bool-causal":
        pad = np.array([0, 70])[:B, None, None, None]
        mask = np.tril(np.ones((L, S), bool))[None, None] & (np.arange(S) >= pad)
    elif kind == "float-inf":  # additive with -inf entries, some rows entirely -inf
        mask = np.where(rng.random((B, H, L, S)) < 0.3, -np.inf, rng.uniform(-2, 2, (B, H, L, S))).astype(np.float32)
        mask[:, :, ::7] = -np.inf
    scale = 1 / E ** 0.5
    out = np.empty((B, H, L, Ev), np.float32)
    attrs = {"scale": scale, "is_causal": causal, "enable_gqa": Hk != H}
    AT.sdpa([q, k, v, mask], [out], attrs)
    want = _torch_sdpa(np.ascontiguousarray(q), k, v, mask, scale, causal, Hk != H)
    want = np.nan_to_num(want)  # torch gives NaN for a row with no key; ATen's math path and NAC give 0
    assert_close(out, want, rel=1e-5, what="attention")
    assert_close(out, AT.sdpa_reference(q, k, v, mask, scale, causal, Hk != H), rel=1e-5, what="reference")
    cut = S // 3  # the same keys in two segments (a prompt after a KV cache)
    seg = np.empty_like(out)
    AT.sdpa([q, k[:, :, :cut], v[:, :, :cut], mask, k[:, :, cut:], v[:, :, cut:]], [seg], attrs)
    assert_close(seg, out, rel=1e-6, what="segments")


@pytest.mark.parametrize("L", [1, 70])
def test_attention_with_keys_or_values_shared_by_the_batch(L):
    """Keys, or only values, with batch 1 against queries of batch 2 (the shape rule lets them
    broadcast): every path reads them as broadcast, never past their one batch row. The
    in-place paths had checked only the keys' batch; values of batch 1 were read as batch 2."""
    rng = np.random.default_rng(L)
    q = rng.standard_normal((2, 3, L, 16)).astype(np.float32)
    for kb, vb in ((2, 1), (1, 1), (1, 2)):
        k = rng.standard_normal((kb, 3, 80, 16)).astype(np.float32)
        v = rng.standard_normal((vb, 3, 80, 8)).astype(np.float32)
        out = np.full((2, 3, L, 8), np.nan, np.float32)
        AT.sdpa([q, k, v, None], [out], {"scale": 0.25, "is_causal": False, "enable_gqa": False})
        want = AT.sdpa_reference(q, k, v, None, 0.25, False, False)
        assert_close(out, want, rel=1e-5, what=f"keys batch {kb}, values batch {vb}")


@njit
def _tile(a, ao, lda, b, bo, ldb, c, co, ldc, k):
    simd.mm_tile_4x16(a, ao, lda, b, bo, ldb, c, co, ldc, k)


def test_mm_tile_matches_its_loop_twin():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((7, 45)).astype(np.float32)
    b = rng.standard_normal((45, 37)).astype(np.float32)
    for k in (0, 1, 17, 44):
        c1, c2 = np.full(7 * 37, 9.0, np.float32), np.full(7 * 37, 9.0, np.float32)
        _tile(a.reshape(-1), 45 + 1, 45, b.reshape(-1), 3, 37, c1, 37 * 2 + 5, 37, k)
        simd.loop_mm_tile_4x16(a.reshape(-1), 45 + 1, 45, b.reshape(-1), 3, 37, c2, 37 * 2 + 5, 37, k)
        want = np.full((7, 37), 9.0, np.float32)
        want[2:6, 5:21] = a[1:5, 1:1 + k].astype(np.float64) @ b[:k, 3:19]
        assert_close(c1.reshape(7, 37), want, rel=1e-6, what=f"tile k={k}")
        assert_close(c2.reshape(7, 37), want, rel=1e-6, what=f"loop twin k={k}")


@pytest.mark.parametrize("rows", [8, 6, 4, 3, 2, 1])
def test_panel_tiles_match_their_loop_twin(rows):
    """Each GEMM register tile (through `linalg._panel_rows`: kind 0 holds the 8-, 4-, 2- and
    1-row tiles, kind 1 the 6-row (two 6 x 16 halves, both through `simd.panel_tile_fast`) and
    3-row ones), at offsets inside larger
    arrays and with output strides wider than the tile, writes exactly its block (bias + product)
    and nothing else, as its plain twin (kind 2) does."""
    from nac.engine.kernels import linalg as L

    rng = np.random.default_rng(rows)
    a = rng.standard_normal((10, 45)).astype(np.float32)
    b = rng.standard_normal((45, L.PANEL)).astype(np.float32)
    bias = rng.standard_normal(40).astype(np.float32)
    for k in (0, 1, 2, 17, 44):  # chained tiles: k below, at and past the chain count, with a remainder
        want = np.full((10, 37), 9.0, np.float32)
        want[1:1 + rows, 5:37] = bias[3:35] + a[2:2 + rows, 1:1 + k].astype(np.float64) @ b[:k]
        for kind in (1 if rows in (6, 3) else 0, 2):
            c = np.full(10 * 37, 9.0, np.float32)
            L._panel_rows(kind, rows, a.reshape(-1), 2 * 45 + 1, 45, b.reshape(-1), 0, bias, 3, c, 37 + 5, 37, k)
            assert_close(c.reshape(10, 37), want, rel=1e-6, what=f"{rows}-row tile, kind {kind}, k={k}")


@njit
def _fast_tile(kind, rows, width, a, a_off, lda, b, b_off, ldb, bias, bias_off, c, c_off, ldc, k):
    # the prefetch of another panel (here b's start) has no effect on any value
    return simd.panel_tile_fast(kind, rows, width, a, a_off, lda, b, b_off, ldb, bias, bias_off, c, c_off, ldc, k, 0)


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_fast_panel_tile_takes_its_cases_and_declines_the_rest(kind):
    """`simd.panel_tile_fast` computes a full row tile of ``kind`` (8 rows for kind 0, 6 for kind
    1) and the one-row tile of either exactly as the plain loop does, bias included, and stores
    only the first ``width`` columns (up to 32; a masked store below 32), writing nothing else;
    for every other row count and kind (the plain loop's 2) it returns False and writes nothing."""
    rng = np.random.default_rng(40 + kind)
    a = rng.standard_normal((10, 45)).astype(np.float32)
    b = rng.standard_normal((45, 32)).astype(np.float32)
    bias = rng.standard_normal(40).astype(np.float32)
    for rows in (8, 6, 4, 3, 2, 1):
        for width in (0, 1, 8, 15, 16, 17, 24, 31, 32, 33, 40):
            for k in (0, 1, 44):
                c = np.full(10 * 48, 9.0, np.float32)
                done = _fast_tile(kind, rows, width, a.reshape(-1), 2 * 45 + 1, 45, b.reshape(-1), 0, 32, bias, 3, c,
                                  48 + 5, 48, k)
                cols = min(width, 32) if (kind, rows) in ((0, 8), (1, 6), (0, 1), (1, 1)) else 0
                want = np.full((10, 48), 9.0, np.float32)
                if cols:
                    want[1:1 + rows, 5:5 + cols] = bias[3:3 + cols] + a[2:2 + rows, 1:1 + k].astype(np.float64) @ b[:k, :cols]
                assert done == bool(cols), (kind, rows, width)
                assert_close(c.reshape(10, 48), want, rel=1e-6, what=f"kind {kind}, {rows} rows, width {width}, k={k}")


def test_row_blocks_cover_the_product_evenly():
    """`linalg.row_block`: as few blocks as keep each at most `GEMM_ROW_BLOCK` rows, covering
    every row, and (but the last) all of one size, the last at most one row short of it: so
    the team's equal counts of (block, panel) items are equal work."""
    from nac.engine.kernels import linalg as L

    for M in range(1, 2000):
        rb = L.row_block(M)
        blocks = -(-M // rb)
        assert 0 < rb <= L.GEMM_ROW_BLOCK and blocks * rb >= M > (blocks - 1) * rb, M
        assert blocks == -(-M // L.GEMM_ROW_BLOCK), M
        assert rb - (M - (blocks - 1) * rb) < blocks, M  # the last block is short by under a row per block


def test_aligned_empty_starts_on_a_cache_line():
    """`simd.aligned_empty` returns a C-contiguous array of the asked shape and dtype whose first
    byte is 64-byte aligned (when it has one), for sizes that numpy itself would place 16 bytes
    off; the plan aligns its arena to the same boundary."""
    from nac.engine.plan import ALIGN

    for shape, dtype in (((3, 5), np.float32), (7, np.uint8), ((2, 1, 33), np.int64), ((0,), np.float32),
                         ((1000, 17), np.float32)):
        for _ in range(8):  # several allocations: a lucky numpy address must not pass the test
            a = simd.aligned_empty(shape, dtype)
            assert a.shape == ((shape,) if isinstance(shape, int) else shape) and a.dtype == dtype
            assert a.flags.c_contiguous and a.flags.writeable
            assert a.size == 0 or a.ctypes.data % simd.VECTOR_ALIGN == 0  # an empty array has no element to load
    assert ALIGN == simd.VECTOR_ALIGN


GEMM_SHAPES = [(1, 7, 5), (1, 203, 70), (1, 64, 32), (3, 64, 32), (5, 33, 64), (13, 300, 100), (8, 1, 33), (130, 40, 31), (300, 3, 1),
               (17, 96, 96), (24, 20, 48), (9, 70, 24), (14, 16, 40),  # last panels of 16, 24 and 8 columns
               (19, 520, 150)]  # panels past GEMM_L2_PANELS: each panel sweeps the row tiles, prefetching the next


@pytest.mark.parametrize("kind", ["avx512", "avx2", "plain"])
@pytest.mark.parametrize("act", ["none", "relu6", "gelu", "silu"])
def test_gemm_on_packed_panels_matches_torch(kind, act):
    """`linalg.gemm` (packed weight panels, bias in registers, activation fused) for every tile
    kind, at shapes with a row remainder for each tile height, a last panel narrower than 32,
    K = 1 and several row blocks, with and without a bias, against torch's addmm + activation;
    split into arbitrary work ranges (as the thread team splits it), the result is the same."""
    from nac.engine.kernels import linalg as L

    rng = np.random.default_rng(len(act))
    kid = L.GEMM_KINDS[kind]
    assert any(-(-N // L.PANEL) * K * L.PANEL * 4 > L.GEMM_L2_PANELS for _, K, N in GEMM_SHAPES)  # both paths
    for M, K, N in GEMM_SHAPES:
        x = rng.standard_normal((M, K)).astype(np.float32)
        w = rng.standard_normal((K, N)).astype(np.float32)
        b = rng.standard_normal(N).astype(np.float32)
        panels = L.pack_panels(w)
        for bias in (b, None):
            padded = np.zeros(panels.shape[0] * L.PANEL, np.float32)
            padded[:N] = 0.0 if bias is None else bias
            pre = torch.from_numpy(x).double() @ torch.from_numpy(w).double()
            if bias is not None:
                pre = pre + torch.from_numpy(bias).double()
            want = TORCH_ACT[act](pre.float()).numpy()
            y = np.full((M, N), np.nan, np.float32)
            L.gemm(x, panels, padded, y, A.CODES[act], kid)
            assert_close(y, want, rel=2e-6 * max(8, K) ** 0.5, what=f"{kind} {act} {M, K, N}")
            rb = L.row_block(M)
            items = -(-M // rb) * panels.shape[0]
            cuts = sorted({0, items, *rng.integers(0, items + 1, 3).tolist()})
            split = np.full((M, N), np.nan, np.float32)
            for lo, hi in zip(cuts, cuts[1:]):
                L.gemm_panels(x.reshape(-1), M, K, panels.reshape(-1), padded, N, split.reshape(-1), A.CODES[act],
                              L._EMPTY, False, kid, rb, lo, hi)
            np.testing.assert_array_equal(split, y)
            res = rng.standard_normal((M, N)).astype(np.float32)  # a residual, added before the activation
            y = np.full((M, N), np.nan, np.float32)
            L.gemm(x, panels, padded, y, A.CODES[act], kid, res)
            want = TORCH_ACT[act]((pre + torch.from_numpy(res).double()).float()).numpy()
            assert_close(y, want, rel=2e-6 * max(8, K) ** 0.5, what=f"{kind} {act} {M, K, N} + residual")
            split = np.full((M, N), np.nan, np.float32)  # each element gets the residual once, whatever the cuts
            for lo, hi in zip(cuts, cuts[1:]):
                L.gemm_panels(x.reshape(-1), M, K, panels.reshape(-1), padded, N, split.reshape(-1), A.CODES[act],
                              res.reshape(-1), True, kid, rb, lo, hi)
            np.testing.assert_array_equal(split, y)


def test_gemm_propagates_nan_and_inf_like_blas():
    """A NaN or an infinity in a row of x reaches that row's outputs, as in BLAS (no fast-math
    folding), and the other rows are untouched."""
    from nac.engine.kernels import linalg as L

    x = np.ones((9, 40), np.float32)
    x[2, 5], x[7, 0] = np.nan, np.inf
    w = np.ones((40, 33), np.float32)
    w[0, 1] = -1.0
    panels = L.pack_panels(w)
    bias = np.zeros(panels.shape[0] * L.PANEL, np.float32)
    for kind in (0, 1, 2):
        y = np.zeros((9, 33), np.float32)
        L.gemm(x, panels, bias, y, 0, kind)
        np.testing.assert_array_equal(y, x.astype(np.float64) @ w)


def test_gemm_rejects_operands_that_disagree():
    """The tiles do not bounds-check, so `gemm` refuses mismatched shapes, dtypes and layouts."""
    from nac.engine.kernels import linalg as L

    x, w = np.ones((4, 8), np.float32), np.ones((8, 40), np.float32)
    panels, bias, y = L.pack_panels(w), np.zeros(64, np.float32), np.empty((4, 40), np.float32)
    L.gemm(x, panels, bias, y, 0, 0)
    bad = [(np.ones((4, 9), np.float32), panels, bias, y), (x, panels, bias, np.empty((4, 70), np.float32)),
           (x, panels, np.zeros(32, np.float32), y), (x.astype(np.float64), panels, bias, y),
           (x, panels, bias, np.empty((40, 4), np.float32).T), (x, panels, bias, np.empty((5, 40), np.float32))]
    for args in bad:
        with pytest.raises(ValueError, match="do not agree"):
            L.gemm(*args, 0, 0)
    with pytest.raises(ValueError, match="do not agree"):
        L.gemm(x, panels, bias, y, 0, 7)


@pytest.mark.parametrize("gemm", ["avx512", "avx2", "plain", "blas"])
def test_linear_with_a_loaded_weight_matches_torch(gemm, monkeypatch):
    """The linear kernel with read-only weights (a loaded model's, which take the packed panels;
    packed once, reused) in both layouts, with GELU fused, against torch; `NAC_GEMM`'s choices,
    for a prefill's rows and a decode step's single row."""
    from nac.engine.kernels import KERNELS
    from nac.engine.kernels import linalg as L

    monkeypatch.setattr(L, "GEMM", gemm)
    rng = np.random.default_rng(11)
    w = rng.standard_normal((80, 96)).astype(np.float32)
    b = rng.standard_normal(80).astype(np.float32)
    for shape in ((2, 7, 96), (1, 1, 96)):
        x = rng.standard_normal(shape).astype(np.float32)
        want = F.gelu(F.linear(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b))).numpy()
        for layout, weight in (("oi", w.copy()), ("io", np.ascontiguousarray(w.T))):
            weight.flags.writeable = False
            bias = b.copy()
            bias.flags.writeable = False
            for _ in range(2):
                out = np.full(shape[:2] + (80,), np.nan, np.float32)
                KERNELS["linear"]([x, weight, bias], [out], {"activation": "gelu", "weight_layout": layout})
                assert_close(out, want, rel=1e-5, what=f"{gemm} {layout} {shape}")


CONV_CASES = [  # (N, C, H, W, Cout, k, stride, padding, dilation, groups)
    (2, 24, 13, 11, 24, 3, 1, 1, 1, 24), (1, 40, 9, 9, 40, 5, 2, 2, 1, 40), (1, 19, 7, 8, 19, 3, 1, 2, 2, 19),
    (2, 16, 10, 9, 24, 1, 1, 0, 1, 1), (1, 8, 12, 12, 12, 1, 2, 0, 1, 1), (2, 3, 17, 15, 16, 3, 2, 1, 1, 1),
    (1, 12, 9, 9, 10, 3, 1, 1, 1, 1), (1, 8, 9, 9, 6, 3, 1, 1, 1, 2), (2, 80, 6, 7, 40, 1, 1, 0, 1, 1),
    # the register-tiled depthwise kernel: 16-channel tiles with a tail of 8, stride 2, dilation
    # 2, padding wider than the taps reach, fewer channels than one tile, planes of 7x7 and 3x3
    # (every pixel at the border), a 5x5 kernel larger than the plane
    (1, 40, 20, 24, 40, 3, 1, 1, 1, 40), (2, 32, 18, 37, 32, 5, 2, 2, 1, 32), (1, 16, 17, 21, 16, 3, 1, 2, 2, 16),
    (1, 7, 5, 19, 7, 3, 1, 3, 1, 7), (2, 48, 7, 7, 48, 3, 1, 1, 1, 48), (1, 32, 7, 7, 32, 5, 1, 2, 1, 32),
    (1, 16, 3, 3, 16, 5, 1, 2, 1, 16), (1, 24, 14, 14, 24, 5, 2, 2, 1, 24),
    # `simd.dw_run`'s rows: a 5x5 kernel over 3 interior groups of 4 pixels (one 8-pixel tile,
    # then a 4-pixel one) with a tail of 8 channels
    (1, 40, 9, 18, 40, 5, 1, 2, 1, 40),
    # `simd.dw_run_rows` with neighbouring pixels two apart (stride 2 = dilation 2)
    (1, 32, 15, 17, 32, 3, 2, 2, 2, 32),
    # more channels than one block of `DEPTHWISE_BLOCK` (the last block partial, with a tail of
    # 8): few rows (work split by channel blocks) and 33 rows (split by rows)
    (2, 280, 7, 7, 280, 5, 1, 2, 1, 280), (1, 152, 33, 6, 152, 3, 1, 1, 1, 152),
    # an NCHW image into `conv2d_patches`: a partial second panel, dilation, a 5x5 patch of 125
    (2, 3, 16, 15, 40, 3, 2, 1, 2, 1), (1, 5, 9, 11, 33, 5, 1, 2, 1, 1),
    # into `conv2d_direct` (a multiple of 16 channels out): a ResNet-style 7x7 stem, a 3x3 one
    (1, 3, 30, 31, 64, 7, 2, 3, 1, 1), (1, 3, 23, 22, 32, 3, 2, 1, 1, 1)]


@njit
def _dw_tile(x, xo, px, taps, w, wo, ldw, b, bo, y, yo, py):
    simd.dw_tile_4x16(x, xo, px, taps, w, wo, ldw, b, bo, y, yo, py)


def test_dw_tile_matches_its_loop_twin():
    """`simd.dw_tile_4x16` and its plain twin against float64 numpy, at unaligned offsets."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal(4000).astype(np.float32)
    w = rng.standard_normal(9 * 40).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    for taps in (np.array([0, 40, 80, 400, 440, 480, 800, 840, 880], np.int64), np.array([3], np.int64),
                 np.empty(0, np.int64)):
        want = np.full(600, 7.0, np.float32)
        for r in range(4):
            acc = b[5:21].astype(np.float64).copy()
            for q, t in enumerate(taps):
                acc += w[5 + q * 40:21 + q * 40].astype(np.float64) * x[17 + r * 80 + t:33 + r * 80 + t]
            want[3 + r * 40:19 + r * 40] = acc
        for fn in (_dw_tile, simd.loop_dw_tile_4x16):
            y = np.full(600, 7.0, np.float32)
            fn(x, 17, 80, taps, w, 5, 40, b, 5, y, 3, 40)
            assert_close(y, want, rel=1e-6, what=f"{fn.__name__} taps={taps.size}")


@njit
def _dw_run(x, xo, px, taps, ntaps, pixels, w, wo, ldw, b, bo, y, yo, py, groups):
    if ntaps == 9 and pixels == 4:
        simd.dw_run(x, xo, px, taps, 9, 4, w, wo, ldw, b, bo, y, yo, py, groups)
    elif ntaps == 9:
        simd.dw_run(x, xo, px, taps, 9, 8, w, wo, ldw, b, bo, y, yo, py, groups)
    elif pixels == 4:
        simd.dw_run(x, xo, px, taps, 25, 4, w, wo, ldw, b, bo, y, yo, py, groups)
    else:
        simd.dw_run(x, xo, px, taps, 25, 8, w, wo, ldw, b, bo, y, yo, py, groups)


@njit
def _dw_run_rows(x, xo, px, taps, side, pixels, w, wo, ldw, b, bo, y, yo, py, groups):
    if side == 3 and pixels == 4:
        simd.dw_run_rows(x, xo, px, taps, 3, 4, w, wo, ldw, b, bo, y, yo, py, groups)
    elif side == 3:
        simd.dw_run_rows(x, xo, px, taps, 3, 8, w, wo, ldw, b, bo, y, yo, py, groups)
    elif pixels == 4:
        simd.dw_run_rows(x, xo, px, taps, 5, 4, w, wo, ldw, b, bo, y, yo, py, groups)
    else:
        simd.dw_run_rows(x, xo, px, taps, 5, 8, w, wo, ldw, b, bo, y, yo, py, groups)


@pytest.mark.parametrize("pixels", simd.DW_RUN_PIXELS)
@pytest.mark.parametrize("side", [3, 5])
def test_dw_run_rows_is_dw_run_bit_for_bit(side, pixels):
    """`simd.dw_run_rows` (a row's input vectors loaded once for all the tile's pixels) gives
    exactly `simd.dw_run`'s results when the taps along a row step by the pixel stride (stride 1,
    and stride 2 with dilation 2), at unaligned offsets, for 0, 1 and 3 groups, writing nothing
    past the last group; `linalg.shared_rows` takes exactly those tap layouts."""
    from nac.engine.kernels import linalg as L

    rng = np.random.default_rng(side * 10 + pixels)
    C = 40
    x = rng.standard_normal(30000).astype(np.float32)
    w = rng.standard_normal(side * side * C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    row = 40 * C  # a 40-pixel-wide plane
    for step in (1, 2):  # pixels (and taps along a row) `step` apart
        px = step * C
        taps = np.array([(i * step * row + j * px) for i in range(side) for j in range(side)], np.int64)
        assert L.shared_rows(taps, side, side, px) == side
        for groups in (0, 1, 3):
            want = np.full(1500, 7.0, np.float32)
            _dw_run(x, 17, px, taps, side * side, pixels, w, 5, C, b, 5, want, 3, C, groups)
            y = np.full(1500, 7.0, np.float32)
            _dw_run_rows(x, 17, px, taps, side, pixels, w, 5, C, b, 5, y, 3, C, groups)
            np.testing.assert_array_equal(y, want, err_msg=f"{side}x{side}, {pixels} pixels, step {step}, {groups} groups")
            y = np.full(1500, 7.0, np.float32)
            simd.loop_dw_run(x, 17, px, taps, side * side, pixels, w, 5, C, b, 5, y, 3, C, groups)
            assert_close(y, want, rel=1e-5, what=f"loop_dw_run {side}x{side} step {step}")
    taps = np.array([(i * row + j * 2 * C) for i in range(side) for j in range(side)], np.int64)
    assert L.shared_rows(taps, side, side, C) == 0  # dilation 2 at stride 1: dw_run
    assert L.shared_rows(taps[:side * (side - 1)], side - 1, side, 2 * C) == 0  # not square


@pytest.mark.parametrize("pixels", simd.DW_RUN_PIXELS)
@pytest.mark.parametrize("ntaps", simd.DW_RUN_TAPS)
def test_dw_run_is_its_tiles_bit_for_bit(ntaps, pixels):
    """`simd.dw_run` (a row's runs of 4- or 8-pixel tiles, the tap loop unrolled) gives exactly
    what `dw_tile_4x16` gives 4 pixels at a time (the same multiply-adds in the same order), at
    unaligned offsets, for 0, 1 and 3 groups, and writes nothing past the last group; its plain
    twin (multiply, then add: no fused multiply-add) agrees within float32 rounding."""
    rng = np.random.default_rng(ntaps + pixels)
    C = 40
    side = 5 if ntaps == 25 else 3
    x = rng.standard_normal(24000).astype(np.float32)
    w = rng.standard_normal(ntaps * C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    row = 30 * C  # a 30-pixel-wide plane
    taps = np.array([(i * row + j * C) for i in range(side) for j in range(side)], np.int64)
    for groups in (0, 1, 3):
        want = np.full(1200, 7.0, np.float32)
        for g in range(groups * pixels // 4):
            _dw_tile(x, 17 + 4 * g * 2 * C, 2 * C, taps, w, 5, C, b, 5, want, 3 + 4 * g * C, C)
        y = np.full(1200, 7.0, np.float32)
        _dw_run(x, 17, 2 * C, taps, ntaps, pixels, w, 5, C, b, 5, y, 3, C, groups)
        np.testing.assert_array_equal(y, want, err_msg=f"dw_run {ntaps} taps x {pixels} pixels, {groups} groups")
        y = np.full(1200, 7.0, np.float32)
        simd.loop_dw_run(x, 17, 2 * C, taps, ntaps, pixels, w, 5, C, b, 5, y, 3, C, groups)
        assert_close(y, want, rel=1e-5, what=f"loop_dw_run {ntaps} taps x {pixels} pixels, {groups} groups")


@njit
def _dw_tile_1(x, xo, toff, tw, n, w, wo, ldw, b, bo, y, yo):
    simd.dw_tile_1x16(x, xo, toff, tw, n, w, wo, ldw, b, bo, y, yo)


def test_dw_border_tile_matches_its_loop_twin():
    """`simd.dw_tile_1x16` (a border pixel over a list of taps) and its plain twin against
    float64 numpy, at unaligned offsets, with taps skipped, and with none."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal(4000).astype(np.float32)
    w = rng.standard_normal(9 * 40).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    for toff, tw in ((np.array([0, 40, 400, 880], np.int64), np.array([0, 1, 3, 8], np.int64)),
                     (np.array([7], np.int64), np.array([5], np.int64)), (np.empty(0, np.int64), np.empty(0, np.int64))):
        want = np.full(60, 7.0, np.float32)
        acc = b[5:21].astype(np.float64).copy()
        for off, row in zip(toff, tw):
            acc += w[5 + row * 40:21 + row * 40].astype(np.float64) * x[17 + off:33 + off]
        want[3:19] = acc
        for fn in (_dw_tile_1, simd.loop_dw_tile_1x16):
            y = np.full(60, 7.0, np.float32)
            fn(x, 17, toff, tw, toff.size, w, 5, 40, b, 5, y, 3)
            assert_close(y, want, rel=1e-6, what=f"{fn.__name__} taps={toff.size}")


@njit
def _patch_run(x, xo, px, taps, pixels, vectors, w, wo, ldw, b, bo, y, yo, py, groups):
    if pixels == 8 and vectors == 2:
        simd.patch_run(x, xo, px, taps, 8, 2, w, wo, ldw, b, bo, y, yo, py, groups)
    elif pixels == 8:
        simd.patch_run(x, xo, px, taps, 8, 1, w, wo, ldw, b, bo, y, yo, py, groups)
    elif pixels == 4:
        simd.patch_run(x, xo, px, taps, 4, 1, w, wo, ldw, b, bo, y, yo, py, groups)
    elif vectors == 2:
        simd.patch_run(x, xo, px, taps, 1, 2, w, wo, ldw, b, bo, y, yo, py, groups)
    else:
        simd.patch_run(x, xo, px, taps, 1, 1, w, wo, ldw, b, bo, y, yo, py, groups)


@pytest.mark.parametrize("tile", simd.PATCH_RUN_TILES)
def test_patch_run_and_its_loop_twin_match_float64(tile):
    """`simd.patch_run` (pixels x 16 vectors channels, each input value broadcast against a
    weight row) and its plain twin against float64 numpy, at unaligned offsets, for 0, 1 and 3
    groups and 27 or no taps; neither writes past the last group's pixels and channels."""
    pixels, vectors = tile
    rng = np.random.default_rng(pixels * 10 + vectors)
    width, ldw = 16 * vectors, 16 * vectors + 8  # the tile's channels of a wider weight
    x = rng.standard_normal(3000).astype(np.float32)
    w = rng.standard_normal(27 * ldw).astype(np.float32)
    b = rng.standard_normal(ldw).astype(np.float32)
    py = width + 5
    for taps in (np.array([(c * 30 + i) * 20 + j for c in range(3) for i in range(3) for j in range(3)], np.int64),
                 np.empty(0, np.int64)):
        for groups in (0, 1, 3):
            want = np.full(2000, 7.0, np.float32)
            for p in range(groups * pixels):
                acc = b[3:3 + width].astype(np.float64).copy()
                for q, t in enumerate(taps):
                    acc += w[3 + q * ldw:3 + q * ldw + width].astype(np.float64) * np.float64(x[11 + 2 * p + t])
                want[5 + p * py:5 + p * py + width] = acc
            for fn in (_patch_run, simd.loop_patch_run):
                y = np.full(2000, 7.0, np.float32)
                fn(x, 11, 2, taps, pixels, vectors, w, 3, ldw, b, 3, y, 5, py, groups)
                assert_close(y, want, rel=1e-6, what=f"{fn.__name__} {tile} taps={taps.size} groups={groups}")


@pytest.mark.parametrize("gemm", ["avx512", "avx2", "plain"])
def test_image_stem_direct_kernel_matches_torch(gemm, monkeypatch):
    """`linalg.conv2d_direct` (an NCHW image of few channels into a multiple of 16 channels,
    interior pixels read in place, border pixels' patches gathered) through each kind's tiles:
    32 and 64 channels (the 8 x 32 tile) and 48 (8 x 16), stride 1 and 2, dilation, padding
    wider than the kernel reaches, a plane smaller than the kernel (every pixel at the border),
    with and without a bias, against torch with ReLU6 fused."""
    import torch
    import torch.nn.functional as F

    from nac.engine.kernels import KERNELS
    from nac.engine.kernels import linalg as L

    monkeypatch.setattr(L, "GEMM", gemm)
    rng = np.random.default_rng(9)
    for n, c, h, w, cout, k, st, pad, dil in [(2, 3, 33, 29, 32, 3, 2, 1, 1), (1, 3, 30, 31, 64, 7, 2, 3, 1),
                                             (1, 4, 19, 21, 48, 5, 1, 4, 2), (1, 3, 4, 5, 32, 7, 1, 3, 1),
                                             (1, 1, 12, 40, 16, 3, 1, 1, 1)]:
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        wt = rng.standard_normal((cout, c, k, k)).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32)
        attrs = {"stride": [st, st], "padding": [pad] * 4, "dilation": [dil, dil], "groups": 1,
                 "activation": "relu6"}
        for bias in (b, None):
            pre = F.conv2d(torch.from_numpy(x), torch.from_numpy(wt), None if bias is None else torch.from_numpy(b),
                           st, pad, dil)
            out = np.full((n, pre.shape[2], pre.shape[3], cout), np.nan, np.float32).transpose(0, 3, 1, 2)
            KERNELS["conv2d"]([x, wt, bias], [out], attrs)
            assert_close(out, F.relu6(pre).numpy(), rel=1e-5 * max(1.0, float(pre.abs().max())),
                         what=f"{gemm} stem {n, c, h, w, cout, k, st, pad, dil} bias={bias is not None}")


def test_channels_last_convolutions_match_torch():
    """The channels-last convolution kernels (depthwise stencil over channel blocks, the 1x1
    product over pixels, NHWC and NCHW im2col, the grouped fallback), from an NCHW and an NHWC
    input into an NHWC output, against torch at float32 with ReLU6 and bias fused."""
    import torch
    import torch.nn.functional as F

    from nac.engine.kernels import KERNELS

    rng = np.random.default_rng(5)
    for n, c, h, w, cout, k, st, pad, dil, groups in CONV_CASES:
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        wt = rng.standard_normal((cout, c // groups, k, k)).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32)
        pre = F.conv2d(torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(b), st, pad, dil, groups)
        want = F.relu6(pre).numpy()
        attrs = {"stride": [st, st], "padding": [pad] * 4, "dilation": [dil, dil], "groups": groups,
                 "activation": "relu6"}
        loaded_wt, loaded_b = wt.copy(), b.copy()  # a loaded model's (read-only): deep products take the panels
        loaded_wt.flags.writeable = loaded_b.flags.writeable = False
        for x_in in (x, np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)):
            for weights in ((wt, b), (loaded_wt, loaded_b)):
                out = np.full((n, want.shape[2], want.shape[3], cout), np.nan, np.float32).transpose(0, 3, 1, 2)
                KERNELS["conv2d"]([x_in, *weights], [out], attrs)
                assert_close(out, want, rel=1e-5 * max(1.0, float(pre.abs().max())), what=f"conv {n, c, h, w, cout, k}")


ISA_SCRIPT = """
import numpy as np, sys
sys.path.insert(0, {tests!r})
from test_fused_kernels import ATTENTION_CASES, test_attention_matches_torch, test_fused_epilogue_matches_torch
from test_fused_kernels import test_mm_tile_matches_its_loop_twin
from test_fused_kernels import test_exp32_within_two_ulp_of_the_correctly_rounded_value, test_row_max_skips_nan_and_reads_every_element
from nac.engine.kernels import activation as A, simd
class MP:
    def setattr(self, obj, name, value): setattr(obj, name, value)
assert not simd.VNNI and not simd.AVX512
test_exp32_within_two_ulp_of_the_correctly_rounded_value()
for n in (0, 9, 37):
    test_row_max_skips_nan_and_reads_every_element(n)
for act in A.ACTIVATIONS:
    test_fused_epilogue_matches_torch(act, False)
from test_fused_kernels import PATHS
for case in ATTENTION_CASES:
    for path in PATHS:
        test_attention_matches_torch(case, path, MP())
test_mm_tile_matches_its_loop_twin()
from test_fused_kernels import test_panel_tiles_match_their_loop_twin, test_gemm_on_packed_panels_matches_torch
from test_fused_kernels import test_gemm_propagates_nan_and_inf_like_blas
for rows in (8, 6, 4, 3, 2, 1):
    test_panel_tiles_match_their_loop_twin(rows)
from test_fused_kernels import test_fast_panel_tile_takes_its_cases_and_declines_the_rest
for kind in (0, 1, 2):
    test_fast_panel_tile_takes_its_cases_and_declines_the_rest(kind)
for kind in ("avx512", "avx2", "plain"):
    for act in ("none", "gelu"):
        test_gemm_on_packed_panels_matches_torch(kind, act)
test_gemm_propagates_nan_and_inf_like_blas()
from test_fused_kernels import test_channels_last_convolutions_match_torch, test_dw_tile_matches_its_loop_twin
from test_fused_kernels import test_dw_border_tile_matches_its_loop_twin, test_dw_run_is_its_tiles_bit_for_bit
test_channels_last_convolutions_match_torch()
test_dw_tile_matches_its_loop_twin()
for ntaps in simd.DW_RUN_TAPS:
    for pixels in simd.DW_RUN_PIXELS:
        test_dw_run_is_its_tiles_bit_for_bit(ntaps, pixels)
from test_fused_kernels import test_dw_run_rows_is_dw_run_bit_for_bit
for side in (3, 5):
    for pixels in simd.DW_RUN_PIXELS:
        test_dw_run_rows_is_dw_run_bit_for_bit(side, pixels)
test_dw_border_tile_matches_its_loop_twin()
from test_fused_kernels import test_patch_run_and_its_loop_twin_match_float64
from test_fused_kernels import test_image_stem_direct_kernel_matches_torch
for tile in simd.PATCH_RUN_TILES:
    test_patch_run_and_its_loop_twin_match_float64(tile)
from test_fused_kernels import test_expand_depthwise_matches_torch
for kind in ("avx512", "avx2", "plain"):
    test_image_stem_direct_kernel_matches_torch(kind, MP())
    test_expand_depthwise_matches_torch(kind, MP())
print("ok")
"""


#: The CPUs the kernels are rebuilt for, in a fresh process each (about 75 s of compiling on 2
#: cores): Haswell, the AVX2-only fast path, in every run; the x86-64 baseline (SSE2) as well with
#: ``NAC_TEST_ISAS="haswell x86-64"`` (`make test-isa`). The plain loop references themselves run
#: in this process in every run.
TEST_ISAS = os.environ.get("NAC_TEST_ISAS", "haswell").split()


@pytest.mark.heavy
@pytest.mark.parametrize("cpu", TEST_ISAS)
def test_isa_builds(cpu, tmp_path):
    """The same checks with the kernels compiled for ``cpu`` (an AVX2-only Haswell, or the x86-64
    baseline with SSE2 only), in a fresh process with its own Numba cache."""
    if os.uname().machine != "x86_64":
        pytest.skip("x86-64 CPU names")
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES="", NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", ISA_SCRIPT.format(tests=str(Path(__file__).parent.parent))],
                       capture_output=True, text=True, env=env, timeout=900, cwd=Path(__file__).parent)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_channels_last_convolutions_of_empty_tensors():
    """An empty batch (torch's answer), and a convolution over zero input channels (an empty sum:
    the output is act(bias), which torch does not compute), into channels-last outputs."""
    from nac.engine.kernels import KERNELS

    attrs = {"stride": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1, "activation": "relu6"}
    b = np.array([-1.0, 0.5, 7.0], np.float32)
    for x, w in ((np.zeros((0, 4, 5, 5), np.float32), np.ones((3, 4, 3, 3), np.float32)),
                 (np.zeros((2, 0, 5, 5), np.float32), np.ones((3, 0, 3, 3), np.float32))):
        if x.shape[1]:
            want = F.relu6(F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), 1, 1)).numpy()
        else:
            want = np.broadcast_to(np.clip(b, 0, 6)[None, :, None, None], (2, 3, 5, 5))
        out = np.full((x.shape[0], 5, 5, 3), np.nan, np.float32).transpose(0, 3, 1, 2)
        KERNELS["conv2d"]([x, w, b], [out], attrs)
        np.testing.assert_array_equal(out, want)


def test_float_reductions_match_torch():
    """``sum`` and ``mean`` of float32 over consecutive axes through `nn.sums_over_middle` and
    `nn.sums_over_last`: a 4-D tensor's last two axes (a CNN's global average pooling) stored
    channels-last or contiguous, the axes in any order and sign, kept or dropped; a 3-D tensor's
    middle, first and last axis (MiniLM's mean pooling over tokens); NaN and infinity carried
    through. A strided input (the numpy fallback) agrees too. Against torch at float32 rounding."""
    from nac.engine.kernels import KERNELS

    rng = np.random.default_rng(12)
    base = rng.standard_normal((3, 40, 7, 9)).astype(np.float32)
    base[1, 5, 2, 3], base[2, 7, 0, 0] = np.nan, np.inf
    tokens = rng.standard_normal((2, 16, 384)).astype(np.float32)
    cases = [(base, x, dims) for x in (base, np.ascontiguousarray(base.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
                                       np.repeat(base, 2, axis=3)[..., ::2])
             for dims in ([2, 3], [-1, -2], [3, 2])]
    cases += [(base, base, [1, 2]), (tokens, tokens, [1]), (tokens, tokens, [0]), (tokens, tokens, [-1])]
    for op in ("sum", "mean"):
        for ref, x, dims in cases:
            for keep in (True, False):
                want = getattr(torch, op)(torch.from_numpy(ref), dim=dims, keepdim=keep).numpy()
                out = np.full(want.shape, 7.0, np.float32)
                KERNELS[op]([x], [out], {"dims": dims, "keepdim": keep})
                np.testing.assert_allclose(out, want, rtol=2e-6, atol=1e-6,
                                           err_msg=f"{op} {x.shape} {x.strides} {dims} {keep}")


EXPAND_DW_CASES = [  # (N, Cin, H, W, C, k, stride, padding, dilation)
    (2, 8, 13, 11, 32, 3, 1, 1, 1), (2, 8, 13, 11, 32, 5, 2, 2, 1), (1, 6, 9, 10, 48, 3, 1, 2, 2),
    (1, 16, 3, 3, 16, 5, 1, 2, 1), (3, 4, 8, 7, 16, 3, 2, 1, 1), (1, 5, 12, 18, 32, 7, 1, 3, 1),
    (2, 24, 20, 20, 144, 3, 2, 1, 1)]


@pytest.mark.parametrize("gemm", ["avx512", "avx2", "plain"])
def test_expand_depthwise_matches_torch(gemm, monkeypatch):
    """`linalg.expand_depthwise` (a 1x1 expansion and a depthwise convolution in one pass over a
    ring of expanded rows) against torch's two convolutions with ReLU6 after each: stride 1 and 2,
    3x3, 5x5 and 7x7 kernels (7x7: no `simd.dw_run`), dilation, padding wider than the taps
    reach, planes narrower than a 4-pixel group, a batch, several channel panels, split over
    the threads and run as one range; each `NAC_GEMM` tile kind for the expansion."""
    from nac.engine import threads as T
    from nac.engine.kernels import activation as A
    from nac.engine.kernels import linalg as L

    monkeypatch.setattr(L, "GEMM", gemm)
    rng = np.random.default_rng(21)
    for n, cin, h, w, c, k, st, pad, dil in EXPAND_DW_CASES:
        x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
        params = [rng.standard_normal(s).astype(np.float32) * 0.3 for s in ((c, cin, 1, 1), (c,), (c, 1, k, k), (c,))]
        e = F.relu6(F.conv2d(torch.from_numpy(x), torch.from_numpy(params[0]), torch.from_numpy(params[1])))
        pre = F.conv2d(e, torch.from_numpy(params[2]), torch.from_numpy(params[3]), st, pad, dil, c)
        want = F.relu6(pre).numpy().transpose(0, 2, 3, 1)
        for p in params:
            p.flags.writeable = False
        xt = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        attrs = {"stride": [st, st], "padding": [pad] * 4, "dilation": [dil, dil], "groups": c}
        code = A.CODES["relu6"]
        for split in (True, False):
            yt = np.full(want.shape, np.nan, np.float32)
            job = L._expand_depthwise_job(xt, params[0], params[1], code, params[2], params[3], attrs, code, yt)
            if split:
                T.parallel_range(*job, work=1 << 40)
            else:
                job[0](*job[2:], 0, job[1])
            assert_close(yt, want, rel=1e-5 * max(1.0, float(pre.abs().max())),
                         what=f"{gemm} {n, cin, h, w, c, k, st, pad, dil} split={split}")
