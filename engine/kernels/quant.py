"""Kernels for quantised weights (schemes in `nac.format.quant`).

A quantised parameter reaches kernels as a `QTensor` (stored data + scales + logical shape).
`linear` and `embedding` dispatch here when their weight is one:

- few rows (decode, GEMV): Numba kernels that read the compressed weight directly: int8 x float
  (W8A32, dequantised in the inner loop), ternary x float (2-bit fields unpacked in registers),
  and with per-token int8 activations (``activation_quant="int8"``): int8 x int8 (W8A8) and
  ternary x int8, both accumulating in int32;
- many rows (prefill, GEMM): dequantise the weight to float32 in row blocks and call BLAS.

Ternary x int8 uses dot(t, a) = dot(t + 1, a) - sum(a): the codes t + 1 are unsigned {0, 1, 2},
so the products are unsigned x signed byte multiply-adds (the VNNI ``vpdpbusd`` pattern).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from nac.engine import threads as T
from nac.format.quant import unpack_ternary_rows

SMALL_M = 8  # rows up to which the compressed-weight kernels beat dequantise + BLAS


@dataclass(frozen=True)
class QTensor:
    """A quantised 2-D weight: ``scheme`` int8 ([N, K] int8 data) or ternary ([N, ceil(K/4)]
    uint8 data); ``scale`` float32 [N] (or [1] for a per-tensor ternary scale); ``shape`` (N, K)."""

    scheme: str
    data: np.ndarray
    scale: np.ndarray
    shape: tuple

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
@njit(cache=True, nogil=True, fastmath=True)
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


@njit(cache=True, nogil=True, fastmath=True)
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
                acc += (a0[j] * np.float32(b & 3) + a1[j] * np.float32((b >> 2) & 3)
                        + a2[j] * np.float32((b >> 4) & 3) + a3[j] * np.float32(b >> 6))
            out[m, n] = (acc - xsum[m]) * s


# -- int8 activations (per-token dynamic scales) ----------------------------------------------------------
def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8: (xq [M, K] int8, scale [M] float32), x ~= xq * scale[:, None]."""
    amax = np.abs(x).max(axis=1)
    s = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    return np.clip(np.rint(x / s[:, None]), -127, 127).astype(np.int8), s


@njit(cache=True, nogil=True)
def gemm_int8_a8(xq, xs, q, scale, out, lo, hi):
    """W8A8: out[m, n] = xs[m] * scale[n] * sum_k int32(xq[m, k]) * int32(q[n, k])."""
    M, K = xq.shape
    for n in range(lo, hi):
        row = q[n]
        for m in range(M):
            xm = xq[m]
            acc = np.int32(0)
            for k in range(K):
                acc += np.int32(xm[k]) * np.int32(row[k])
            out[m, n] = np.float32(acc) * xs[m] * scale[n]


@njit(cache=True, nogil=True)
def gemm_ternary_a8(x4q, xsum, xs, packed, scale, per_row, out, lo, hi):
    """W1.58A8: out[m, n] = xs[m] * s_n * (sum_k code[n, k] * xq[m, k] - sum_k xq[m, k]) with
    code = t + 1 in {0, 1, 2} (unsigned) and int8 activations xq (x4q deinterleaved)."""
    M = x4q.shape[0]
    KB = packed.shape[1]
    for n in range(lo, hi):
        row = packed[n]
        s = scale[n] if per_row else scale[0]
        for m in range(M):
            a0, a1, a2, a3 = x4q[m, 0], x4q[m, 1], x4q[m, 2], x4q[m, 3]
            acc = np.int32(0)
            for j in range(KB):
                b = np.int32(row[j])
                acc += (np.int32(a0[j]) * (b & 3) + np.int32(a1[j]) * ((b >> 2) & 3)
                        + np.int32(a2[j]) * ((b >> 4) & 3) + np.int32(a3[j]) * (b >> 6))
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
    KB = packed.shape[1]
    for i in range(lo, hi):
        s = scale[r0 + i] if per_row else scale[0]
        row, o = packed[r0 + i], out[i]
        for j in range(KB):
            b = row[j]
            for f in range(4):
                k = 4 * j + f
                if k < K:
                    o[k] = np.float32(np.int32((b >> (2 * f)) & 3) - 1) * s


def quant_matmul(x2: np.ndarray, w: QTensor, y: np.ndarray, activation_quant: str = "none") -> None:
    """y [M, N] = x2 [M, K] @ dequant(w).T for a quantised weight (no bias/activation)."""
    M, K = x2.shape
    N = w.shape[0]
    x2 = np.ascontiguousarray(x2, np.float32)
    work = M * N * K
    if activation_quant == "int8":
        xq, xs = quantize_activations(x2)
        if w.scheme == "int8":
            T.parallel_range(gemm_int8_a8, N, xq, xs, w.data, w.scale, y, work=work)
        else:
            x4q = deinterleave(xq, w.data.shape[1], np.int8)
            xsum = xq.astype(np.int32).sum(axis=1).astype(np.int32)
            T.parallel_range(gemm_ternary_a8, N, x4q, xsum, xs, w.data, w.scale, w.per_row, y, work=work)
        return
    if M <= SMALL_M:
        if w.scheme == "int8":
            T.parallel_range(gemv_int8, N, x2, w.data, w.scale, y, work=work)
        else:
            x4 = deinterleave(x2, w.data.shape[1])
            xsum = x2.sum(axis=1, dtype=np.float32)
            T.parallel_range(gemv_ternary, N, x4, xsum, w.data, w.scale, w.per_row, y, work=work)
        return
    block = min(N, max(1, (1 << 22) // max(K, 1)))  # dequantise ~16 MB of float32 at a time
    buf = np.empty((block, K), np.float32)
    for r0 in range(0, N, block):
        r1 = min(N, r0 + block)
        wf = buf[:r1 - r0]
        if w.scheme == "int8":
            T.parallel_range(dequant_int8, r1 - r0, w.data, w.scale, r0, wf, work=wf.size)
        else:
            T.parallel_range(dequant_ternary, r1 - r0, w.data, w.scale, w.per_row, r0, wf, work=wf.size * 2)
        np.matmul(x2, wf.T, out=y[:, r0:r1])


def quant_embedding(w: QTensor, idx: np.ndarray, out: np.ndarray) -> None:
    """out[...] = dequant(w)[idx] for a quantised table [V, D] (only the rows looked up)."""
    flat = idx.reshape(-1)
    out.reshape(-1, w.shape[1])[...] = w.dequantize(flat) if flat.size else np.zeros((0, w.shape[1]), np.float32)
