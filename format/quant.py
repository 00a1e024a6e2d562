"""Quantised tensors: the schemes a `.nac` file can store, and the public packing functions.

Schemes (SPEC.md, "Quantised tensors", is normative):

- ``int8``: symmetric, per output channel (row): ``w ~= q * scale[row]`` with ``q`` int8 in
  [-127, 127] and ``scale = max |w_row| / 127`` (float32; 1.0 for an all-zero row).
- ``ternary``: BitNet b1.58 weights ``w ~= t * scale`` with ``t`` in {-1, 0, +1}, 2 bits each,
  four to a byte, with a float32 scale per output channel or one per tensor. Source: Ma et al.
  2024, "The Era of 1-bit LLMs" (absmean quantisation: scale = mean |W|,
  t = round(clip(W / scale, -1, 1))).

Ternary bit layout: value ``i`` of a run goes to byte ``i // 4``, bits ``2*(i % 4)`` and
``2*(i % 4) + 1`` (least significant first), as the code ``t + 1``: ``0b00`` = -1, ``0b01`` = 0,
``0b10`` = +1; ``0b11`` is invalid. Unused fields of a last byte hold ``0b01`` (zero). A 2-D
weight [N, K] packs each row separately into ``ceil(K / 4)`` bytes, so rows start on byte
boundaries.
"""
from __future__ import annotations

import numpy as np

from nac.errors import NacError

SCHEMES = ("int8", "ternary")
_SHIFTS = np.array([0, 2, 4, 6], np.uint8)


def pack_ternary(values) -> np.ndarray:
    """Pack ternary values four to a byte (layout in the module docstring).

    Args:
        values: array-like of integers in {-1, 0, 1}, any shape (packed in C order), any length.
    Returns:
        uint8 array of ``ceil(n / 4)`` bytes.
    Raises:
        NacError: a value is not -1, 0 or 1 (the message gives the first offending index).
    """
    v = np.asarray(values).reshape(-1)
    if v.size and not np.issubdtype(v.dtype, np.number):
        raise NacError(f"pack_ternary expects numbers in {{-1, 0, 1}}, got dtype {v.dtype}")
    bad = np.flatnonzero((v != -1) & (v != 0) & (v != 1))
    if bad.size:
        raise NacError(f"pack_ternary: value {v[bad[0]]!r} at index {bad[0]} is not in {{-1, 0, 1}}")
    n = v.size
    codes = np.ones(-(-n // 4) * 4, np.uint8)  # padding = code 0b01 (zero)
    codes[:n] = (v + 1).astype(np.uint8)
    return np.bitwise_or.reduce(codes.reshape(-1, 4) << _SHIFTS, axis=1).astype(np.uint8)


def unpack_ternary(packed, count: int) -> np.ndarray:
    """Inverse of `pack_ternary`: the first ``count`` values as int8 in {-1, 0, 1}.

    Raises:
        NacError: ``count`` needs more bytes than given, or a field holds the invalid code 0b11.
    """
    p = np.asarray(packed, np.uint8).reshape(-1)
    if count < 0 or count > 4 * p.size:
        raise NacError(f"unpack_ternary: {count} values need {-(-count // 4)} bytes, got {p.size}")
    codes = ((p[:, None] >> _SHIFTS) & 3).reshape(-1)[:count]
    if (codes == 3).any():
        i = int(np.flatnonzero(codes == 3)[0])
        raise NacError(f"unpack_ternary: invalid code 0b11 at value {i} (ternary values are -1, 0, 1)")
    return codes.astype(np.int8) - 1


def pack_ternary_rows(t: np.ndarray) -> np.ndarray:
    """[N, K] ternary int8 -> [N, ceil(K/4)] uint8, each row packed separately."""
    t = np.asarray(t)
    n, k = t.shape
    kb = -(-k // 4)
    codes = np.ones((n, kb * 4), np.uint8)
    codes[:, :k] = (t + 1).astype(np.uint8)
    return np.bitwise_or.reduce(codes.reshape(n, kb, 4) << _SHIFTS, axis=2).astype(np.uint8)


def unpack_ternary_rows(packed: np.ndarray, k: int) -> np.ndarray:
    """[N, ceil(K/4)] uint8 -> [N, K] int8 in {-1, 0, 1} (codes are not checked here)."""
    n = packed.shape[0]
    return (((packed[:, :, None] >> _SHIFTS) & 3).reshape(n, -1)[:, :k]).astype(np.int8) - 1


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: returns (q [N, K] int8, scale [N] float32) with w ~= q * scale[:, None]."""
    w = np.asarray(w, np.float32)
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def quantize_ternary(w: np.ndarray, per_channel: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """BitNet b1.58 absmean ternarisation: scale = mean |W| (per tensor, or per row),
    t = round(clip(W / scale, -1, 1)). Returns (t [N, K] int8, scale [N] or [1] float32)."""
    w = np.asarray(w, np.float32)
    if per_channel:
        scale = np.maximum(np.abs(w).mean(axis=1), 1e-5).astype(np.float32)
        t = np.rint(np.clip(w / scale[:, None], -1, 1))
    else:
        scale = np.array([max(float(np.abs(w).mean()), 1e-5)], np.float32)
        t = np.rint(np.clip(w / scale[0], -1, 1))
    return t.astype(np.int8), scale


def exact_ternary(w: np.ndarray) -> np.ndarray | None:
    """If every row of ``w`` is exactly t * s for one s per tensor (as a BitLinear layer exports),
    return the scale as a [1] float32 array; else None."""
    a = np.abs(np.asarray(w, np.float32))
    nz = a[a != 0]
    if nz.size == 0:
        return None
    s = nz[0]
    return np.array([s], np.float32) if np.all(nz == s) else None
