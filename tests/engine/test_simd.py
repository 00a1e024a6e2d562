"""The VNNI byte dot products (LLVM IR intrinsics) and their plain-loop twins against numpy's
int64 arithmetic, including the extreme byte values."""
from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from nac.engine.kernels import simd

needs_vnni = pytest.mark.skipif(not simd.VNNI, reason="this CPU has no AVX512-VNNI (the loop twins are tested)")
needs_avx2 = pytest.mark.skipif(not simd.AVX2, reason="this CPU has no AVX2 (the loop twins are tested)")


def _wrap(dot_u8s8, dot_ternary):
    @njit
    def u8s8(u, s, nblk):
        return dot_u8s8(u, s, nblk)

    @njit
    def ternary(p, a, nblk):
        return dot_ternary(p, a[0], a[1], a[2], a[3], nblk)

    return u8s8, ternary


IMPLEMENTATIONS = {
    "loop": pytest.param(_wrap(simd._loop_dot_u8s8, simd._loop_dot_ternary_codes_s8), id="loop"),
    "vnni": pytest.param(_wrap(simd._vnni_dot_u8s8, simd._vnni_dot_ternary_codes_s8), id="vnni", marks=needs_vnni),
    "avx2": pytest.param(_wrap(simd._loop_dot_u8s8, simd._avx2_dot_ternary_codes_s8), id="avx2", marks=needs_avx2),
}
SIGNED = {
    "loop": pytest.param(simd._loop_dot_s8s8, id="loop"),
    "avx2": pytest.param(njit(lambda x, w, n: simd._avx2_dot_s8s8(x, w, n)), id="avx2", marks=needs_avx2),
}


@pytest.mark.parametrize("s8s8", SIGNED.values())
@pytest.mark.parametrize("nblk", [0, 1, 3, 16])
@pytest.mark.parametrize("extreme", [False, True])
def test_dot_s8s8(s8s8, nblk, extreme):
    """Signed byte products, exact for activations in [-127, 127] against any weight byte."""
    rng = np.random.default_rng(7 + nblk)
    n = 64 * nblk + 37  # bytes beyond the blocks must not be read into the sum
    if extreme:  # the largest pair sums vpmaddubsw can meet: 2 * 128 * 127
        x, w = np.tile(np.array([127, -127], np.int8), n)[:n], np.full(n, -128, np.int8)
    else:
        x, w = rng.integers(-127, 128, n).astype(np.int8), rng.integers(-128, 128, n).astype(np.int8)
    want = int(x[:64 * nblk].astype(np.int64) @ w[:64 * nblk].astype(np.int64))
    assert s8s8(x, w, nblk) == want


@pytest.mark.parametrize("impl", IMPLEMENTATIONS.values())
@pytest.mark.parametrize("nblk", [0, 1, 3, 16])
@pytest.mark.parametrize("extreme", [False, True])
def test_dot_u8s8(impl, nblk, extreme):
    u8s8, _ = impl
    rng = np.random.default_rng(nblk)
    n = 64 * nblk + 37  # bytes beyond the blocks must not be read into the sum
    if extreme:
        u, s = np.full(n, 255, np.uint8), np.full(n, -128, np.int8)
    else:
        u, s = rng.integers(0, 256, n).astype(np.uint8), rng.integers(-128, 128, n).astype(np.int8)
    want = int(u[:64 * nblk].astype(np.int64) @ s[:64 * nblk].astype(np.int64))
    assert u8s8(u, s, nblk) == want


@pytest.mark.parametrize("impl", IMPLEMENTATIONS.values())
@pytest.mark.parametrize("nblk", [0, 1, 2, 12])
def test_dot_ternary_codes(impl, nblk):
    _, ternary = impl
    rng = np.random.default_rng(100 + nblk)
    kb = 64 * nblk + 5
    codes = rng.integers(0, 3, (4, kb)).astype(np.uint8)
    packed = (codes[0] | codes[1] << 2 | codes[2] << 4 | codes[3] << 6).astype(np.uint8)
    a = rng.integers(-128, 128, (4, kb)).astype(np.int8)
    a[:, :3] = -128  # the most negative activation beside the largest code
    codes[:, :3] = 2
    packed[:3] = 0b10101010
    want = int((codes[:, :64 * nblk].astype(np.int64) * a[:, :64 * nblk]).sum())
    assert ternary(packed, a, nblk) == want


def test_kernels_use_vnni_when_the_cpu_has_it():
    assert (simd.dot_u8s8 is simd._vnni_dot_u8s8) == simd.VNNI
    assert (simd.dot_ternary_codes_s8 is simd._vnni_dot_ternary_codes_s8) == simd.VNNI
    assert (simd.dot_ternary_codes_s8 is simd._avx2_dot_ternary_codes_s8) == (simd.AVX2 and not simd.VNNI)
    assert (simd.dot_s8s8 is simd._avx2_dot_s8s8) == simd.AVX2


@njit
def _int8_tile(rows, a, a_off, lda, b, b_off, k4, c):
    simd.int8_tile(rows, a, a_off, lda, b, b_off, k4, c)


@pytest.mark.parametrize("tile", [pytest.param(_int8_tile, id="int8_tile"),
                                  pytest.param(simd.loop_int8_tile, id="loop")])
@pytest.mark.parametrize("rows", [8, 4, 1])
@pytest.mark.parametrize("k4", [0, 1, 5, 200])
def test_int8_tile_against_integer_arithmetic(tile, rows, k4):
    """The int8 GEMM tile (VNNI where the CPU has it) and its loop twin, at offsets inside larger
    arrays, against numpy's int64 products, including 255 x -128 everywhere (no saturation)."""
    rng = np.random.default_rng(rows * 1000 + k4)
    lda = 4 * k4 + 12
    for extreme in (False, True):
        a = rng.integers(0, 256, (rows + 2) * lda, dtype=np.uint8)
        b = rng.integers(-128, 128, 7 + k4 * 128, dtype=np.int8)
        if extreme:
            a[:], b[:] = 255, -128
        c = np.full(8 * 32, 7, np.int32)
        tile(rows, a, lda + 3, lda, b, 7, k4, c)
        left = a[lda + 3:lda + 3 + rows * lda].reshape(rows, lda)[:, :4 * k4].astype(np.int64)
        panel = b[7:7 + k4 * 128].reshape(k4, 32, 4).transpose(0, 2, 1).reshape(4 * k4, 32).astype(np.int64)
        np.testing.assert_array_equal(c[:32 * rows].reshape(rows, 32), left @ panel)
        assert (c[32 * rows:] == 7).all()


@pytest.mark.parametrize("path", ["signed", "unsigned"])
def test_int8_products_through_each_byte_path(path, tmp_path):
    """The W8A8 GEMM through `dot_s8s8` (the AVX2 path) and through `dot_u8s8` (VNNI or loop),
    forced with NAC_INT8_DOT in a fresh process, against exact integer arithmetic."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import sys; sys.path.insert(0, %r)\n"
        "from nac.engine.kernels import simd\n"
        "assert simd.SIGNED_INT8_DOT == (%r == 'signed')\n"
        "from test_quant_kernels import test_int8_activations_are_exact_integer_arithmetic as t\n"
        "for mk in [(1, 64), (5, 131), (3, 1000), (2, 4096)]:\n"
        "    t('int8', *mk)\n"
        "print('ok')\n") % (str(Path(__file__).parent.parent), path)
    env = dict(os.environ, NAC_INT8_DOT=path, NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600,
                       cwd=Path(__file__).parent)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


@needs_vnni
def test_intrinsics_refuse_arrays_they_cannot_read():
    """They read raw memory: a strided or wrongly typed array is a typing error, not wrong sums."""
    from numba.core.errors import TypingError

    u8s8, _ = IMPLEMENTATIONS["vnni"].values[0]
    u = np.zeros(256, np.uint8)
    with pytest.raises(TypingError):
        u8s8(u[::2], np.zeros(128, np.int8), 1)
    with pytest.raises(TypingError):
        u8s8(u, np.zeros(256, np.uint8), 1)
