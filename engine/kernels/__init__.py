"""The kernel registry: op name -> kernel.

A kernel is ``kernel(ins, outs, attrs)``: ``ins`` are the input arrays (None for an absent optional
input), ``outs`` are preallocated output arrays of the recorded shapes and dtypes, and ``attrs``
has its dimension expressions already evaluated. A kernel writes into ``outs`` and returns None;
the *view* ops (`VIEW_OPS`) instead return a numpy view of their input (or None when no view is
possible, and then the planner gives them an output buffer and calls them again to copy). An op
may also have a *binder* (`registry.binder`), which a plan asks once for a call with the
kernel's arguments worked out in advance, and a pair of ops a *pair binder*
(`registry.pair_binder`), which makes one call for two consecutive steps.

Hot loops are ``numba.njit(cache=True)`` functions in this package; where numpy already does an
op in one vectorised pass (elementwise arithmetic, BLAS matrix products) the kernel calls numpy.
"""
from nac.engine.kernels.registry import BINDERS, KERNELS, PAIR_BINDERS, VIEW_OPS, binder, kernel, pair_binder
from nac.engine.kernels import attention, elementwise, linalg, nn, shape  # noqa: F401  (register kernels)

__all__ = ["BINDERS", "KERNELS", "PAIR_BINDERS", "VIEW_OPS", "binder", "kernel", "pair_binder"]
