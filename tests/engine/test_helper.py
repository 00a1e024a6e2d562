"""The helper thread that takes half of a decode-sized int8 product: same result as one thread,
after sleeping too, and it steps aside when busy or given arrays it cannot read."""
from __future__ import annotations

import time

import numpy as np
import pytest

from nac.engine import helper as H
from nac.engine.kernels import quant as Q
from nac.format.quant import quantize_int8


def _operands(m, n, k, seed=0):
    rng = np.random.default_rng(seed)
    q, s = quantize_int8(rng.standard_normal((n, k)).astype(np.float32))
    return rng.standard_normal((m, k)).astype(np.float32), q, s


@pytest.fixture
def own_helper():
    h = H.Helper(spin_seconds=0.001)
    yield h
    h.close()
    assert not h.thread.is_alive()


@pytest.mark.parametrize("m, n, k", [(1, 2304, 768), (3, 1001, 300), (8, 33, 64), (1, 1, 7)])
def test_split_equals_one_thread(own_helper, m, n, k):
    x, q, s = _operands(m, n, k)
    want = np.empty((m, n), np.float32)
    Q.gemv_int8(x, q, s, want, 0, n)
    got = np.full((m, n), np.nan, np.float32)
    assert own_helper.run(H._INT8, Q.gemv_int8, (x, q, s, got), (m, k, n), n)
    np.testing.assert_array_equal(got, want)  # the same kernel on each row: bitwise equal


def test_wakes_after_sleeping(own_helper):
    x, q, s = _operands(1, 300, 128)
    want = np.empty((1, 300), np.float32)
    Q.gemv_int8(x, q, s, want, 0, 300)
    for _ in range(3):
        deadline = time.monotonic() + 5.0
        while not own_helper.asleep and time.monotonic() < deadline:  # past its 1 ms of polling
            time.sleep(0.005)
        assert own_helper.asleep
        got = np.zeros((1, 300), np.float32)
        assert own_helper.run(H._INT8, Q.gemv_int8, (x, q, s, got), (1, 128, 300), 300)
        np.testing.assert_array_equal(got, want)


def test_busy_helper_steps_aside(own_helper):
    x, q, s = _operands(1, 64, 64)
    out = np.zeros((1, 64), np.float32)
    with own_helper.busy:
        assert not own_helper.run(H._INT8, Q.gemv_int8, (x, q, s, out), (1, 64, 64), 64)
    assert not out.any()


def test_strided_arrays_are_refused():
    x, q, s = _operands(1, 128, 64)
    out = np.zeros((1, 128), np.float32)
    assert not H.split(Q.gemv_int8, 128, x, q[:, ::2], s, out, shape=(1, 32, 128))
    assert not out.any()


def test_quant_matmul_uses_it_and_stays_exact():
    """A product above the helper's threshold through the engine's entry point."""
    x, q, s = _operands(2, 2304, 768, seed=5)
    w = Q.QTensor("int8", q, s, (2304, 768))
    y = np.empty((2, 2304), np.float32)
    Q.quant_matmul(x, w, y)
    want = x.astype(np.float64) @ (q.astype(np.float64) * s[:, None]).T
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    if H.helper() is not None:
        assert H.helper().thread.is_alive()


@pytest.mark.skipif(not Q.AVX512, reason="the table-lookup kernel needs AVX-512")
@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("m, n, k", [(1, 2304, 768), (2, 37, 131), (1, 16, 4)])
def test_ternary_lut_split_equals_one_thread(own_helper, per_row, m, n, k):
    from nac.format.quant import pack_ternary_rows, quantize_ternary

    rng = np.random.default_rng(n)
    t, s = quantize_ternary(rng.standard_normal((n, k)).astype(np.float32), per_channel=per_row)
    w = Q.QTensor("ternary", pack_ternary_rows(t), s, (n, k))
    x = rng.standard_normal((m, k)).astype(np.float32)
    tables = np.empty((m, 2 * w.data.shape[1], 16), np.float32)
    Q.ternary_pair_tables(x, tables)
    want = np.empty((m, n), np.float32)
    Q.gemv_ternary_lut(tables, w.row_blocks, w.scale, per_row, want, 0, w.row_blocks.shape[0])
    got = np.full((m, n), np.nan, np.float32)
    nb = w.row_blocks.shape[0]
    assert own_helper.run(H._TERNARY_LUT, Q.gemv_ternary_lut, (tables, w.row_blocks, w.scale, per_row, got),
                          (m, w.data.shape[1], n), nb, scale_size=w.scale.shape[0])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("scheme, per_row", [("int8", True), ("ternary", True), ("ternary", False)])
@pytest.mark.parametrize("m, n, k", [(1, 2304, 768), (3, 517, 200)])
def test_int8_activation_kernels_split_equal_one_thread(own_helper, scheme, per_row, m, n, k):
    """W8A8 and W1.58A8 through the helper: the exact integer results of one thread."""
    from nac.format.quant import pack_ternary_rows, quantize_ternary

    rng = np.random.default_rng(k)
    wf = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    xs = np.empty(m, np.float32)
    want, got = np.empty((m, n), np.float32), np.full((m, n), np.nan, np.float32)
    if scheme == "int8":
        q, s = quantize_int8(wf)
        w = Q.QTensor("int8", q, s, (n, k))
        xq, xu = np.empty((m, k), np.int8), np.empty((m, k), np.uint8)
        Q.quantize_rows(x, xq, xu, xs)
        args = (xq, xu, xs, q, w.block_row_sums, s)
        Q.gemm_int8_a8(*args, want, 0, n)
        assert own_helper.run(H._INT8_A8, Q.gemm_int8_a8, (*args, got), (m, k, n), n)
    else:
        t, s = quantize_ternary(wf, per_channel=per_row)
        packed = pack_ternary_rows(t)
        kb = packed.shape[1]
        x4q, xsum = np.empty((m, 4, kb), np.int8), np.empty(m, np.int32)
        Q.quantize_rows_deinterleaved(x, x4q, xs, xsum)
        args = (x4q, xsum, xs, packed, s, per_row)
        Q.gemm_ternary_a8(*args, want, 0, n)
        assert own_helper.run(H._TERNARY_A8, Q.gemm_ternary_a8, (*args, got), (m, kb, n), n, scale_size=s.shape[0])
    np.testing.assert_array_equal(got, want)
