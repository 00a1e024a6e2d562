"""Who owns the cores while the engine runs.

Numba's parallel kernels and OpenBLAS each keep a thread pool, and on a small machine the two
spin against each other (measured: EfficientNet-Lite0 took 330 ms instead of 26 ms). So while a
plan runs, BLAS is limited to one thread (through threadpoolctl), and large matrix products are
split by rows over a small pool of Python threads (BLAS releases the GIL), one block per core.
"""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_MIN_PARALLEL_WORK = 1 << 21  # multiply-adds below which one thread is faster than two
_pool: ThreadPoolExecutor | None = None
_blas = None


def num_threads() -> int:
    """Threads the engine uses: NUMBA_NUM_THREADS if set, else the usable cores."""
    env = os.environ.get("NUMBA_NUM_THREADS")
    if env and env.isdigit():
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _blas_controllers():
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController

            _blas = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
        except Exception:  # threadpoolctl cannot inspect this BLAS: leave it alone
            _blas = []
    return _blas


@contextlib.contextmanager
def single_threaded_blas():
    """Within the block, BLAS uses one thread; the previous counts are restored after."""
    ctls = _blas_controllers()
    before = [c.num_threads for c in ctls]
    for c in ctls:
        c.set_num_threads(1)
    try:
        yield
    finally:
        for c, n in zip(ctls, before):
            c.set_num_threads(n)


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``numpy.matmul(a, b, out=out)``, split over the rows of ``a`` (axis -2) across threads when large.

    Shapes as numpy.matmul with ``a`` at least 2-D; ``out`` rows are written by exactly one thread.
    """
    global _pool
    n = num_threads()
    M = out.shape[-2] if out.ndim >= 2 else 1
    if n == 1 or a.ndim < 2 or M < 2 * n or out.size * a.shape[-1] < _MIN_PARALLEL_WORK:
        np.matmul(a, b, out=out)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="nac-gemm")
    bounds = [M * k // n for k in range(n + 1)]
    futures = [_pool.submit(np.matmul, a[..., s:e, :], b, out=out[..., s:e, :])
               for s, e in zip(bounds[1:-1], bounds[2:])]
    np.matmul(a[..., :bounds[1], :], b, out=out[..., :bounds[1], :])
    for f in futures:
        f.result()
