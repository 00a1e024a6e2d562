"""Kernels for quantised weights (schemes in `nac.format.quant`).

A quantised parameter reaches kernels as a `QTensor` (stored data + scales + logical shape).
`linear` and `embedding` dispatch here when their weight is one:

- few rows (decode, GEMV): Numba kernels that read the compressed weight directly: int8 x float
  (W8A32, dequantised in the inner loop), ternary x float (with AVX-512: table lookup over
  sixteen rows at a time, T-MAC style, `gemv_ternary_lut`; else 2-bit fields unpacked in
  registers, `gemv_ternary`), and with per-token int8 activations (``activation_quant="int8"``):
  int8 x int8 (W8A8) and ternary x int8, both accumulating in int32;
- many rows (prefill, GEMM): int8 x int8 on VNNI register tiles over int8 weight panels
  (`gemm_int8_panels`); int8 x float through `linalg.gemm_dequant_panels` (each 32-column panel
  converted in cache and swept by the float32 GEMM tiles); ternary x float, and every product
  with ``NAC_GEMM=blas``, dequantise the weight to float32 in row blocks and call BLAS.

Ternary x int8 uses dot(t, a) = dot(t + 1, a) - sum(a): the codes t + 1 are unsigned {0, 1, 2},
so the products are unsigned x signed byte multiply-adds, which run as AVX512-VNNI ``vpdpbusd``
(64 per instruction, `nac.engine.kernels.simd`) where the CPU has it. Int8 x int8 shifts the
activations by 128 into unsigned bytes for the same instruction.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np
from numba import njit

from nac.engine import threads as T
from nac.engine.kernels import activation as A
from nac.engine.kernels import simd
from nac.engine.kernels.simd import AVX512, dot_s8s8, dot_ternary_codes_s8, dot_u8s8, lut16_ternary_rows
from nac.format.quant import unpack_ternary_rows

SMALL_M = 8  # rows up to which the compressed-weight kernels beat dequantise + BLAS
#: W8A8 products of more than SMALL_M rows run `gemm_int8_panels` (VNNI register tiles) where the
#: CPU has VNNI; the tests turn it off to compare with `gemm_int8_a8`
INT8_PANELS = simd.VNNI

# Multiply-adds that cost one thread as much as one element-operation of the elementwise kernels
# `threads.parallel_range`'s threshold was set on, per kernel. Single-thread rates on 4096x4096 at
# one row: int8 x float ~13 G/s, ternary x float ~20 G/s (~45 G/s by table lookup), int8 x int8
# ~30 G/s, ternary x int8 ~110 G/s, against ~1.75 G element-ops/s. Handing half a product to the
# pool costs 50-130 us on this VM, so GPT-2-sized decode products (768x2304: 133 us on one
# thread, 173 us on two) stay on one thread and only ones like the 50257-row LM head are split.
_MACS_PER_WORK = {("int8", "none"): 16, ("ternary", "none"): 16, ("ternary-lut", "none"): 32,
                  ("int8", "int8"): 32, ("ternary", "int8"): 128}


@dataclass(frozen=True)
class QTensor:
    """A quantised 2-D weight: ``scheme`` int8 ([N, K] int8 data) or ternary ([N, ceil(K/4)]
    uint8 data); ``scale`` float32 [N] (or [1] for a per-tensor ternary scale); ``shape`` (N, K)."""

    scheme: str
    data: np.ndarray
    scale: np.ndarray
    shape: tuple

    @functools.cached_property
    def block_row_sums(self) -> np.ndarray:
        """int32 [N]: sum of each int8 row over its first 64 * (K // 64) columns (the part the
        unsigned x signed byte products of `gemm_int8_a8` cover), computed once per weight."""
        head = 64 * (self.shape[1] // 64)
        return self.data[:, :head].sum(axis=1, dtype=np.int64).astype(np.int32)

    @functools.cached_property
    def int8_panels(self) -> tuple[np.ndarray, np.ndarray]:
        """The int8 weight [N, K] as `int8_tile`'s panels, made once per weight:
        (int8 [ceil(N / 32), ceil(K / 4), 32, 4] with ``panels[g, j, t, i] = data[32 g + t, 4 j + i]``
        (zeros past N and K), int32 [32 ceil(N / 32)] = 128 * each row's sum (zeros past N): the
        correction for activations shifted by 128 into unsigned bytes)."""
        n, k = self.shape
        g, k4 = -(-n // 32), -(-k // 4)
        padded = np.zeros((g * 32, k4 * 4), np.int8)
        padded[:n, :k] = self.data
        panels = np.ascontiguousarray(padded.reshape(g, 32, k4, 4).transpose(0, 2, 1, 3))
        sums = np.zeros(g * 32, np.int32)
        sums[:n] = 128 * self.data.sum(axis=1, dtype=np.int64)
        return panels, sums

    @functools.cached_property
    def column_panels(self) -> np.ndarray:
        """The int8 weight [N, K] as int8 [ceil(N / 32), K, 32], ``column_panels[g, k, t] =
        data[32 g + t, k]`` (zeros past N): `linalg.gemm_dequant_panels` dequantises one panel
        with contiguous, vectorised loads and stores. Made once per weight (N * K bytes)."""
        n, k = self.shape
        g = -(-n // 32)
        padded = np.zeros((g * 32, k), np.int8)
        padded[:n] = self.data
        return np.ascontiguousarray(padded.reshape(g, 32, k).transpose(0, 2, 1))

    @functools.cached_property
    def row_blocks(self) -> np.ndarray:
        """uint8 [ceil(N / 16), KB, 16]: the packed ternary rows regrouped sixteen at a time,
        ``row_blocks[b, j, r] = data[16 b + r, j]`` (missing rows hold zeros, code 0b01), the layout
        `gemv_ternary_lut` reads; made once per weight (N * KB bytes)."""
        n, kb = self.data.shape
        nb = -(-n // 16)
        blocks = np.full((nb * 16, kb), 0x55, np.uint8)
        blocks[:n] = self.data
        return np.ascontiguousarray(blocks.reshape(nb, 16, kb).transpose(0, 2, 1))

    @property
    def per_row(self) -> bool:
        return self.scale.shape[0] == self.shape[0]

    def dequantize(self, rows=slice(None)) -> np.ndarray:
        """float32 [rows, K]: q * scale (int8) or t * scale (ternary)."""
        s = self.scale[rows] if self.per_row else self.scale[0]
        s = s[:, None] if self.per_row else s
        if self.scheme == "int8":
            return self.data[rows].astype(np.float32) * s
        return unpack_ternary_rows(self.data[rows], self.shape[1]).astype(np.float32) * s


# -- float activations ---------------------------------------------------------------------------------
@njit(cache=True, nogil=True, fastmath=A.FASTMATH)
def gemv_int8(x, q, scale, out, lo, hi):
    """out[m, n] = scale[n] * sum_k x[m, k] * q[n, k] for n in lo..hi (W8A32).

    x: [M, K] float32; q: [N, K] int8; scale: [N] float32; out: [M, N] float32.
    """
    M, K = x.shape
    for n in range(lo, hi):
        row = q[n]
        for m in range(M):
            xm = x[m]
            acc = np.float32(0.0)
            for k in range(K):
                acc += xm[k] * np.float32(row[k])
            out[m, n] = acc * scale[n]


def deinterleave(x: np.ndarray, kb: int, dtype=np.float32) -> np.ndarray:
    """[M, K] -> [M, 4, kb] with out[m, f, j] = x[m, 4j + f] (zero beyond K), so that the four
    2-bit fields of packed byte j meet four contiguous activation streams."""
    M, K = x.shape
    buf = np.zeros((M, kb * 4), dtype)
    buf[:, :K] = x
    return np.ascontiguousarray(buf.reshape(M, kb, 4).transpose(0, 2, 1))


@njit(cache=True, nogil=True, fastmath=A.FASTMATH)
def gemv_ternary(x4, xsum, packed, scale, per_row, out, lo, hi):
    """out[m, n] = s_n * sum_k t[n, k] x[m, k], ternary t packed 4 per byte (W1.58A32).

    x4: [M, 4, KB] deinterleaved activations (`deinterleave`); xsum: [M] sum_k x[m, k];
    packed: [N, KB] uint8; scale: [N] or [1]. Uses sum_k t x = sum_k (t + 1) x - sum_k x.
    """
    M = x4.shape[0]
    KB = packed.shape[1]
    for n in range(lo, hi):
        row = packed[n]
        s = scale[n] if per_row else scale[0]
        for m in range(M):
            a0, a1, a2, a3 = x4[m, 0], x4[m, 1], x4[m, 2], x4[m, 3]
            acc = np.float32(0.0)
            for j in range(KB):
                b = row[j]
                acc += (a0[j] * np.float32(np.int32(b & 3)) + a1[j] * np.float32(np.int32((b >> 2) & 3))
                        + a2[j] * np.float32(np.int32((b >> 4) & 3)) + a3[j] * np.float32(np.int32(b >> 6)))
            out[m, n] = (acc - xsum[m]) * s


@njit(cache=True, nogil=True)
def ternary_pair_tables(x, tables):
    """tables[m, g, c0 + 4 c1] = (c0 - 1) x[m, 2g] + (c1 - 1) x[m, 2g + 1] (x zero beyond K):
    the 16 sums one activation pair can take for the 2-bit codes c0, c1 of two ternary weights.

    x: [M, K] float32; tables: [M, 2 KB, 16] float32 with KB = ceil(K / 4).
    """
    M, K = x.shape
    for m in range(M):
        for g in range(tables.shape[1]):
            x0 = x[m, 2 * g] if 2 * g < K else np.float32(0.0)
            x1 = x[m, 2 * g + 1] if 2 * g + 1 < K else np.float32(0.0)
            for c1 in range(4):
                for c0 in range(4):
                    tables[m, g, c0 + 4 * c1] = np.float32(c0 - 1) * x0 + np.float32(c1 - 1) * x1


@njit(cache=True, nogil=True)
def gemv_ternary_lut(tables, blocks, scale, per_row, out, lo, hi):
    """out[m, n] = s_n * sum_k t[n, k] x[m, k] for the row blocks lo..hi, by table lookup
    (`simd.lut16_ternary_rows`, T-MAC): tables from `ternary_pair_tables`, blocks from
    `QTensor.row_blocks`. Needs `simd.AVX512`."""
    M, N = out.shape
    acc = np.empty(16, np.float32)
    for b in range(lo, hi):
        for m in range(M):
            lut16_ternary_rows(tables[m], blocks[b], acc)
            for r in range(min(16, N - 16 * b)):
                n = 16 * b + r
                out[m, n] = acc[r] * (scale[n] if per_row else scale[0])


# -- int8 activations (per-token dynamic scales) ----------------------------------------------------------
@njit(cache=True, nogil=True)
def _row_scale(xm):
    amax = np.float32(0.0)
    for k in range(xm.shape[0]):
        amax = max(amax, abs(xm[k]))
    return amax / np.float32(127.0) if amax > 0 else np.float32(1.0)


@njit(cache=True, nogil=True)
def _quantize(v, s):
    return np.int8(min(max(np.rint(v / s), np.float32(-127.0)), np.float32(127.0)))


@njit(cache=True, nogil=True)
def quantize_rows(x, xq, xu, xs):
    """Per-row symmetric int8 of x [M, K] float32: xs[m] = max|x[m]| / 127 (1 for a zero row),
    xq[m, k] = clip(rint(x[m, k] / xs[m]), -127, 127) int8, and xu = xq + 128 as uint8."""
    M, K = x.shape
    for m in range(M):
        s = _row_scale(x[m])
        xs[m] = s
        for k in range(K):
            q = _quantize(x[m, k], s)
            xq[m, k] = q
            xu[m, k] = np.uint8(np.int32(q) + 128)


@njit(cache=True, nogil=True)
def quantize_rows_deinterleaved(x, x4q, xs, xsum):
    """`quantize_rows` written in the `deinterleave` layout x4q [M, 4, KB] int8 (zero beyond K)
    for packed ternary weights, with xsum[m] = sum_k xq[m, k] (int32)."""
    M, K = x.shape
    x4q[...] = 0
    for m in range(M):
        s = _row_scale(x[m])
        xs[m] = s
        total = np.int32(0)
        for k in range(K):
            q = _quantize(x[m, k], s)
            x4q[m, k & 3, k >> 2] = q
            total += np.int32(q)
        xsum[m] = total


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8: (xq [M, K] int8, scale [M] float32), x ~= xq * scale[:, None]
    (`quantize_rows`)."""
    x = np.ascontiguousarray(x, np.float32)
    xq, xu, xs = np.empty(x.shape, np.int8), np.empty(x.shape, np.uint8), np.empty(x.shape[0], np.float32)
    quantize_rows(x, xq, xu, xs)
    return xq, xs


@njit(cache=True, nogil=True)
def gemm_int8_a8(xq, xu, xs, q, row_sums, scale, out, signed, lo, hi):
    """W8A8: out[m, n] = xs[m] * scale[n] * sum_k int32(xq[m, k]) * int32(q[n, k]).

    xq: [M, K] int8 activations; xu: [M, K] uint8, xq + 128; q: [N, K] int8; row_sums: int32 [N]
    (`QTensor.block_row_sums`). The first 64 * (K // 64) columns run as unsigned x signed byte dot
    products (`simd.dot_u8s8`, VNNI ``vpdpbusd`` where the CPU has it):
    sum xq q = sum (xq + 128) q - 128 sum q; with ``signed`` (`simd.SIGNED_INT8_DOT`: AVX2
    without VNNI), as signed byte products (`simd.dot_s8s8`, ``vpmaddubsw``).
    """
    M, K = xq.shape
    nblk = K // 64
    for n in range(lo, hi):
        row = q[n]
        bias = np.int32(128) * row_sums[n]
        for m in range(M):
            xm = xq[m]
            if signed:  # AVX2: signed bytes directly (activations are in [-127, 127])
                acc = dot_s8s8(xm, row, nblk)
            else:
                acc = np.int32(dot_u8s8(xu[m], row, nblk) - bias)
            for k in range(64 * nblk, K):
                acc = np.int32(acc + np.int32(xm[k]) * np.int32(row[k]))
            out[m, n] = np.float32(acc) * xs[m] * scale[n]


#: rows of activations per block of `gemm_int8_panels`' work (a block's bytes stay in L2 while a
#: thread sweeps its panels)
INT8_ROW_BLOCK = 256


@njit(cache=True, nogil=True)
def gemm_int8_panels(xu, M, K4, panels, sums128, xs, scale, out, lo, hi):
    """W8A8 on packed panels: out[m, n] = xs[m] * scale[n] * sum_k int32(xq[m, k]) * int32(q[n, k]),
    bit for bit what `gemm_int8_a8` writes, for work items ``lo..hi``: (block of `INT8_ROW_BLOCK`
    rows, panel of 32 columns) pairs, row block major.

    xu: uint8 [M, 4 K4], xq + 128 (128 past K); panels, sums128: `QTensor.int8_panels`; xs:
    float32 [M]; scale: float32 [N]; out: float32 [M, N]. Each tile of 8 (then 4, then 1) rows x
    32 columns sums in int32 (`simd.int8_tile`: AVX512-VNNI ``vpdpbusd``, 64 byte products per
    instruction); sum (xq + 128) q - 128 sum q is exact."""
    M, N = out.shape
    G = (N + 31) // 32
    acc = np.empty(8 * 32, np.int32)
    lda = 4 * K4
    for item in range(lo, hi):
        g = item % G
        m0 = (item // G) * INT8_ROW_BLOCK
        m1 = min(M, m0 + INT8_ROW_BLOCK)
        n0 = 32 * g
        width = min(32, N - n0)
        m = m0
        while m < m1:
            rows = 8 if m1 - m >= 8 else (4 if m1 - m >= 4 else 1)
            simd.int8_tile(rows, xu, m * lda, lda, panels, g * K4 * 128, K4, acc)
            sums, sc = sums128[n0:n0 + width], scale[n0:n0 + width]
            for r in range(rows):
                s = xs[m + r]
                o, tile = out[m + r, n0:n0 + width], acc[32 * r:32 * r + width]
                for t in range(width):  # indices from 0 over slices: no wrap-around checks
                    o[t] = np.float32(np.int32(tile[t] - sums[t])) * s * sc[t]
            m += rows


@njit(cache=True, nogil=True)
def gemm_ternary_a8(x4q, xsum, xs, packed, scale, per_row, out, lo, hi):
    """W1.58A8: out[m, n] = xs[m] * s_n * (sum_k code[n, k] * xq[m, k] - sum_k xq[m, k]) with
    code = t + 1 in {0, 1, 2} (unsigned) and int8 activations xq (x4q deinterleaved). The first
    64 * (KB // 64) packed bytes run as byte dot products (`simd.dot_ternary_codes_s8`, VNNI
    ``vpdpbusd`` where the CPU has it)."""
    M = x4q.shape[0]
    KB = packed.shape[1]
    nblk = KB // 64
    for n in range(lo, hi):
        row = packed[n]
        s = scale[n] if per_row else scale[0]
        for m in range(M):
            a0, a1, a2, a3 = x4q[m, 0], x4q[m, 1], x4q[m, 2], x4q[m, 3]
            acc = dot_ternary_codes_s8(row, a0, a1, a2, a3, nblk)
            for j in range(64 * nblk, KB):
                b = row[j]
                acc = np.int32(acc + np.int32(b & 3) * np.int32(a0[j]) + np.int32((b >> 2) & 3) * np.int32(a1[j])
                               + np.int32((b >> 4) & 3) * np.int32(a2[j]) + np.int32(b >> 6) * np.int32(a3[j]))
            out[m, n] = np.float32(acc - xsum[m]) * xs[m] * s


@njit(cache=True, nogil=True)
def dequant_int8(q, scale, r0, out, lo, hi):
    """out[i, k] = q[r0 + i, k] * scale[r0 + i] for i in lo..hi (float32 rows for BLAS)."""
    K = q.shape[1]
    for i in range(lo, hi):
        s = scale[r0 + i]
        row, o = q[r0 + i], out[i]
        for k in range(K):
            o[k] = np.float32(row[k]) * s


@njit(cache=True, nogil=True)
def dequant_ternary(packed, scale, per_row, r0, out, lo, hi):
    """out[i, 4j + f] = (code_f(packed[r0 + i, j]) - 1) * s for i in lo..hi (K = out.shape[1])."""
    K = out.shape[1]
    full = K // 4  # whole bytes: four unrolled stores vectorise; the last partial byte after
    for i in range(lo, hi):
        s = scale[r0 + i] if per_row else scale[0]
        row, o = packed[r0 + i], out[i]
        for j in range(full):
            b = row[j]
            o[4 * j] = np.float32(np.int32(b & 3) - 1) * s
            o[4 * j + 1] = np.float32(np.int32((b >> 2) & 3) - 1) * s
            o[4 * j + 2] = np.float32(np.int32((b >> 4) & 3) - 1) * s
            o[4 * j + 3] = np.float32(np.int32(b >> 6) - 1) * s
        for k in range(4 * full, K):
            o[k] = np.float32(np.int32((row[full] >> (2 * (k & 3))) & 3) - 1) * s


_DEQUANT_FLOATS = 1 << 20  # dequantise ~4 MB of float32 rows at a time, then BLAS on them
_local = threading.local()


def _scratch(n: int) -> np.ndarray:
    """A float32 buffer of n elements reused by this thread's calls: a fresh multi-megabyte array
    per call costs a page fault per 4 KB (~1 ms for GPT-2's 768x2304 weight)."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < n:
        buf = _local.buf = np.empty(n, np.float32)
    return buf[:n]


def quant_matmul(x2: np.ndarray, w: QTensor, y: np.ndarray, activation_quant: str = "none") -> None:
    """y [M, N] = x2 [M, K] @ dequant(w).T for a quantised weight (no bias/activation)."""
    M, K = x2.shape
    N = w.shape[0]
    x2 = np.ascontiguousarray(x2, np.float32)
    work = M * N * K // _MACS_PER_WORK[w.scheme, activation_quant]
    if activation_quant == "int8":
        quantize, product, xu, xs = _a8_calls(x2, w, y, work)
        quantize()
        if w.scheme == "int8" and INT8_PANELS and not simd.SIGNED_INT8_DOT and M > SMALL_M:
            if y.shape != (M, N) or y.dtype != np.float32:  # the tiles do not bounds-check
                raise ValueError(f"quant_matmul: output {y.shape} {y.dtype} for [{M}, {K}] x {w.shape}")
            panels, sums = w.int8_panels
            if K % 4:
                xu = np.pad(xu, ((0, 0), (0, 4 * panels.shape[1] - K)), constant_values=128)
            items = -(-M // INT8_ROW_BLOCK) * panels.shape[0]
            T.parallel_range(gemm_int8_panels, items, xu.reshape(-1), M, panels.shape[1], panels.reshape(-1), sums,
                             xs, w.scale, y, work=work)
            return
        product()
        return
    if M <= SMALL_M:
        if w.scheme == "int8":
            T.parallel_range(gemv_int8, N, x2, w.data, w.scale, y, work=work)
        elif AVX512:
            tables = np.empty((M, 2 * w.data.shape[1], 16), np.float32)
            ternary_pair_tables(x2, tables)
            blocks = w.row_blocks
            T.parallel_range(gemv_ternary_lut, blocks.shape[0], tables, blocks, w.scale, w.per_row, y,
                             work=M * N * K // _MACS_PER_WORK["ternary-lut", "none"])
        else:
            x4 = deinterleave(x2, w.data.shape[1])
            xsum = x2.sum(axis=1, dtype=np.float32)
            T.parallel_range(gemv_ternary, N, x4, xsum, w.data, w.scale, w.per_row, y, work=work)
        return
    block = min(N, max(1, _DEQUANT_FLOATS // max(K, 1)))
    buf = _scratch(block * K).reshape(block, K)
    for r0 in range(0, N, block):
        r1 = min(N, r0 + block)
        wf = buf[:r1 - r0]
        if w.scheme == "int8":
            T.parallel_range(dequant_int8, r1 - r0, w.data, w.scale, r0, wf, work=wf.size)
        else:
            T.parallel_range(dequant_ternary, r1 - r0, w.data, w.scale, w.per_row, r0, wf, work=wf.size)
        np.matmul(x2, wf.T, out=y[:, r0:r1])


def _a8_calls(x2: np.ndarray, w: QTensor, y: np.ndarray, work: int) -> tuple:
    """The int8-activation product y [M, N] = x2 [M, K] @ dequant(w).T over new activation
    buffers: (quantize, product, xu, xs), two no-argument calls (x2's rows quantised into the
    buffers, then the VNNI/AVX2/plain product of the weight's scheme) and, for an int8 weight,
    the unsigned activations [M, K] uint8 and their scales [M] float32 (None, scales for ternary)."""
    M, K = x2.shape
    N = w.shape[0]
    xs = np.empty(M, np.float32)
    if w.scheme == "int8":
        xq, xu = np.empty((M, K), np.int8), np.empty((M, K), np.uint8)
        return (functools.partial(quantize_rows, x2, xq, xu, xs),
                functools.partial(T.parallel_range, gemm_int8_a8, N, xq, xu, xs, w.data, w.block_row_sums, w.scale,
                                  y, simd.SIGNED_INT8_DOT, work=work), xu, xs)
    x4q, xsum = np.empty((M, 4, w.data.shape[1]), np.int8), np.empty(M, np.int32)
    return (functools.partial(quantize_rows_deinterleaved, x2, x4q, xs, xsum),
            functools.partial(T.parallel_range, gemm_ternary_a8, N, x4q, xsum, xs, w.data, w.scale, w.per_row, y,
                              work=work), None, xs)


def bind_a8(x2: np.ndarray, w: QTensor, y: np.ndarray):
    """``quant_matmul(x2, w, y, "int8")`` for up to `SMALL_M` rows (a decode step's products) as
    one call with its int8 activation buffers allocated once (a plan's binder, see
    `registry.binder`), or None where it does not apply (more rows, or operands that are not
    contiguous float32 of matching shapes)."""
    M, K = x2.shape
    N = w.shape[0]
    if (M > SMALL_M or x2.dtype != np.float32 or not x2.flags.c_contiguous or y.shape != (M, N)
            or y.dtype != np.float32 or not y.flags.c_contiguous):
        return None
    quantize, product, _, _ = _a8_calls(x2, w, y, M * N * K // _MACS_PER_WORK[w.scheme, "int8"])

    def call():
        quantize()
        product()

    return call


def quant_embedding(w: QTensor, idx: np.ndarray, out: np.ndarray) -> None:
    """out[...] = dequant(w)[idx] for a quantised table [V, D] (only the rows looked up)."""
    flat = idx.reshape(-1)
    out.reshape(-1, w.shape[1])[...] = w.dequantize(flat) if flat.size else np.zeros((0, w.shape[1]), np.float32)
