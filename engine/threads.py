"""Who owns the cores while the engine runs.

- Matrix products call BLAS through numpy and use BLAS's own threads. Measured on 2 cores:
  OpenBLAS's threading beat splitting products over Python threads on every shape NAC meets
  (64x768x3072: 1131 us vs 1146 us by columns and 1612 us by rows).
- Numba kernels are serial and release the GIL (``nogil=True``); a large one is split into
  contiguous ranges run at once on a small pool of Python threads (`parallel_range`), whose idle
  threads block instead of spinning. No Numba ``parallel=True``: its OpenMP workers spin after
  each region and, next to BLAS threads, made EfficientNet-Lite0 13x slower.
- Handing a range to a pool thread costs ~55 us here (thread wake-up; measured with a no-op
  nogil kernel), so only work worth ~150 us or more on one thread is split.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_MIN_PARALLEL_WORK = 1 << 18  # element-operations (elements x taps) below which one thread is faster
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def num_threads() -> int:
    """Threads the engine's own kernels use: NAC_NUM_THREADS if set, else the usable cores."""
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
        with _pool_lock:  # several threads may run a Model at once: make one pool, not several
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=max(1, num_threads() - 1), thread_name_prefix="nac")
    return _pool


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
