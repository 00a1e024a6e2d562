"""Quantised linear / embedding kernels against the exact arithmetic they implement."""
from __future__ import annotations

import numpy as np
import pytest

from nac.engine.kernels import quant as Q
from nac.format.quant import pack_ternary_rows, quantize_int8, quantize_ternary


def qtensor(scheme, n, k, per_row, rng):
    w = rng.standard_normal((n, k)).astype(np.float32)
    if scheme == "int8":
        q, s = quantize_int8(w)
        return Q.QTensor("int8", q, s, (n, k)), q.astype(np.float64) * s[:, None]
    t, s = quantize_ternary(w, per_channel=per_row)
    deq = t.astype(np.float64) * (s[:, None] if per_row else s[0])
    return Q.QTensor("ternary", pack_ternary_rows(t), s, (n, k)), deq


@pytest.mark.parametrize("scheme, per_row", [("int8", True), ("ternary", True), ("ternary", False)])
@pytest.mark.parametrize("m", [1, 3, 8, 9, 40])
@pytest.mark.parametrize("k", [1, 5, 64, 131])
def test_float_activations(scheme, per_row, m, k):
    rng = np.random.default_rng(m * 1000 + k)
    w, deq = qtensor(scheme, 37, k, per_row, rng)
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = np.empty((m, 37), np.float32)
    Q.quant_matmul(x, w, y)
    want = x.astype(np.float64) @ deq.T
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("scheme, per_row", [("int8", True), ("ternary", True), ("ternary", False)])
@pytest.mark.parametrize("gemm", ["avx512", "avx2", "plain", "blas"])
def test_linear_prefill_dequantises_panel_by_panel(scheme, per_row, gemm, monkeypatch):
    """The linear kernel with a quantised weight and float activations, at prefill sizes: each
    panel of 32 output columns is dequantised into cache and swept by the GEMM tiles (every tile
    kind; "blas" is the dequantise-into-BLAS path), bias and GELU fused after, against float64
    on the dequantised weight. Shapes with K not a multiple of 4 and a last panel of 5 columns."""
    import torch
    import torch.nn.functional as F

    from nac.engine.kernels import KERNELS
    from nac.engine.kernels import linalg as L

    monkeypatch.setattr(L, "GEMM", gemm)
    rng = np.random.default_rng(7)
    for m, k, n in [(9, 131, 37), (40, 64, 64), (130, 5, 70)]:
        w, deq = qtensor(scheme, n, k, per_row, rng)
        x = rng.standard_normal((1, m, k)).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        out = np.full((1, m, n), np.nan, np.float32)
        KERNELS["linear"]([x, w, b], [out], {"activation": "gelu"})
        want = F.gelu(torch.from_numpy(x.astype(np.float64) @ deq.T + b)).numpy()
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("scheme", ["int8", "ternary"])
@pytest.mark.parametrize("m, k", [(1, 64), (5, 131), (16, 7), (3, 1000), (2, 4096)])
def test_int8_activations_are_exact_integer_arithmetic(scheme, m, k):
    rng = np.random.default_rng(k)
    w, _ = qtensor(scheme, 29, k, True, rng)
    x = rng.standard_normal((m, k)).astype(np.float32)
    xq, xs = Q.quantize_activations(x)
    y = np.empty((m, 29), np.float32)
    Q.quant_matmul(x, w, y, "int8")
    if scheme == "int8":
        acc = xq.astype(np.int64) @ w.data.astype(np.int64).T
    else:
        from nac.format.quant import unpack_ternary_rows

        acc = xq.astype(np.int64) @ unpack_ternary_rows(w.data, k).astype(np.int64).T
    want = acc * xs[:, None].astype(np.float64) * w.scale[None, :].astype(np.float64)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    # and it approximates the float product
    deq = w.dequantize().astype(np.float64)
    ref = x @ deq.T
    assert np.abs(y - ref).max() <= 0.05 * np.abs(ref).max()


@pytest.mark.parametrize("m, k, n", [(9, 64, 32), (13, 131, 29), (300, 96, 70), (17, 4096, 33), (20, 1, 40)])
def test_int8_panels_equal_the_dot_product_kernel(m, k, n, monkeypatch):
    """W8A8 over `int8_tile` panels (taken on VNNI CPUs for more than SMALL_M rows; the loop twin
    elsewhere) writes bit for bit what the row-by-row dot-product kernel writes: shapes with
    a K that is not a multiple of 4, a last panel narrower than 32 columns, row remainders of
    each tile height and two row blocks; extreme bytes included."""
    rng = np.random.default_rng(m * k)
    q = rng.integers(-127, 128, (n, k)).astype(np.int8)
    q[0, :] = 127
    w = Q.QTensor("int8", q, rng.random(n).astype(np.float32) + 0.01, (n, k))
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[1, :] = 3.0  # a row that quantises to +127 everywhere
    got, want = np.full((m, n), np.nan, np.float32), np.full((m, n), np.nan, np.float32)
    monkeypatch.setattr(Q.simd, "SIGNED_INT8_DOT", False)
    monkeypatch.setattr(Q, "INT8_PANELS", False)
    Q.quant_matmul(x, w, want, "int8")
    monkeypatch.setattr(Q, "INT8_PANELS", True)
    Q.quant_matmul(x, w, got, "int8")
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("scheme", ["int8", "ternary"])
def test_embedding_rows(scheme):
    rng = np.random.default_rng(3)
    w, deq = qtensor(scheme, 50, 12, True, rng)
    idx = rng.integers(0, 50, (3, 4))
    out = np.empty((3, 4, 12), np.float32)
    Q.quant_embedding(w, idx, out)
    np.testing.assert_allclose(out, deq[idx], rtol=1e-6, atol=1e-6)


def test_activation_quantisation_matches_the_numpy_formula():
    """Per-token int8: scale max|x| / 127, round half to even, clip to +-127; a zero row gets scale 1."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 300)).astype(np.float32)
    x[1] = 0.0
    x[2, :4] = [127.0, 0.5, 1.5, -2.5]  # scale 1: ties round to even
    amax = np.abs(x).max(axis=1)
    s = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    want = np.clip(np.rint(x / s[:, None]), -127, 127).astype(np.int8)
    xq, xs = Q.quantize_activations(x)
    np.testing.assert_array_equal(xs, s)
    np.testing.assert_array_equal(xq, want)
    assert list(xq[2, :4]) == [127, 0, 2, -2]
    x4q, xs4, xsum = np.empty((5, 4, 75), np.int8), np.empty(5, np.float32), np.empty(5, np.int32)
    Q.quantize_rows_deinterleaved(x, x4q, xs4, xsum)
    np.testing.assert_array_equal(x4q, Q.deinterleave(want, 75, np.int8))
    np.testing.assert_array_equal(xsum, want.astype(np.int64).sum(axis=1))


@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("m, k", [(1, 5), (3, 131), (8, 1000)])
def test_ternary_float_kernels_agree(per_row, m, k):
    """The table-lookup kernel (AVX-512 machines) and the unpack-in-registers kernel (the others)
    both give the float product."""
    rng = np.random.default_rng(k)
    w, deq = qtensor("ternary", 45, k, per_row, rng)
    x = rng.standard_normal((m, k)).astype(np.float32)
    want = x.astype(np.float64) @ deq.T
    y = np.empty((m, 45), np.float32)
    Q.gemv_ternary(Q.deinterleave(x, w.data.shape[1]), x.sum(axis=1, dtype=np.float32), w.data, w.scale, per_row,
                   y, 0, 45)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    if not Q.AVX512:
        pytest.skip("no AVX-512 on this CPU: the table-lookup kernel is not used here")
    tables = np.empty((m, 2 * w.data.shape[1], 16), np.float32)
    Q.ternary_pair_tables(x, tables)
    y[...] = np.nan
    Q.gemv_ternary_lut(tables, w.row_blocks, w.scale, per_row, y, 0, w.row_blocks.shape[0])
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
