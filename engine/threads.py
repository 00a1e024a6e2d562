"""Who owns the cores while the engine runs.

One kind of parallelism at a time, because on a small machine thread pools that spin while
idle starve each other (measured: Numba's OpenMP workers spinning next to OpenBLAS threads made
EfficientNet-Lite0 13x slower). So:

- while a plan runs, BLAS is limited to one thread (threadpoolctl): OpenBLAS's idle workers
  spin-yield for a long time after each product and starve everything else (measured: depthwise
  convolutions took 20 ms instead of 11 ms next to them);
- Numba kernels are serial and release the GIL (``nogil=True``); a large one is split into
  ranges run at once on a small pool of Python threads (`parallel_range`), and so is a large
  matrix product (`matmul`: by rows, or by output columns when there are few rows). The pool's
  idle threads block on a queue instead of spinning.
"""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Handing a range to a pool thread costs ~55 us here (thread wake-up; measured with a no-op
# nogil kernel), so only work worth ~150 us or more on one thread is split.
_MIN_PARALLEL_WORK = 1 << 18  # element-operations (elements x taps)
_MIN_PARALLEL_MACS = 1 << 23  # multiply-adds of one matrix product
_pool: ThreadPoolExecutor | None = None
_blas = None


def num_threads() -> int:
    """Threads the engine uses: NAC_NUM_THREADS if set, else the usable cores."""
    env = os.environ.get("NAC_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(1, num_threads() - 1), thread_name_prefix="nac")
    return _pool


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
    """Within the block BLAS uses one thread; the previous thread counts are restored after."""
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
    """``numpy.matmul(a, b, out=out)`` (a, b at least 2-D), split over the pool when large: by
    rows of ``a`` when there are enough, else by columns of ``b``; each thread writes its own block
    of ``out``."""
    n = num_threads()
    M, N = out.shape[-2], out.shape[-1]
    if n > 1 and out.size * a.shape[-1] >= _MIN_PARALLEL_MACS:
        if M >= 32 * n:
            cut = [M * k // n for k in range(n + 1)]
            jobs = [(a[..., s:e, :], b, out[..., s:e, :]) for s, e in zip(cut, cut[1:])]
        elif N >= 64 * n:
            cut = [N * k // n for k in range(n + 1)]
            jobs = [(a, b[..., :, s:e], out[..., :, s:e]) for s, e in zip(cut, cut[1:])]
        else:
            jobs = None
        if jobs:
            futures = [_get_pool().submit(np.matmul, x, y, out=o) for x, y, o in jobs[1:]]
            np.matmul(*jobs[0][:2], out=jobs[0][2])
            for f in futures:
                f.result()
            return
    np.matmul(a, b, out=out)


def parallel_range(fn, total: int, *args, work: int | None = None) -> None:
    """Run ``fn(*args, lo, hi)`` over ``[0, total)``, split into one contiguous range per thread
    when ``work`` (default: ``total``) is large enough; ``fn`` must release the GIL and write
    disjoint outputs for disjoint ranges."""
    n = min(num_threads(), total)
    if n <= 1 or (total if work is None else work) < _MIN_PARALLEL_WORK:
        fn(*args, 0, total)
        return
    bounds = [total * k // n for k in range(n + 1)]
    futures = [_get_pool().submit(fn, *args, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    fn(*args, 0, bounds[1])
    for f in futures:
        f.result()
