"""The registry itself (kept apart so kernel modules can import the decorator)."""
from __future__ import annotations

from typing import Callable

from nac.format.ops import VIEW_OPS  # noqa: F401  (re-exported: the op table says which ops are views)

KERNELS: dict[str, Callable] = {}


def kernel(*ops: str):
    """Register the decorated function as the kernel of each op in ``ops``."""
    def deco(fn):
        for op in ops:
            if op in KERNELS:
                raise ValueError(f"kernel for {op!r} registered twice")
            KERNELS[op] = fn
        return fn
    return deco
