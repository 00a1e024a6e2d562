"""A second core for decode-sized products: one helper thread that waits inside Numba.

Serves the quantised product kernels of `nac.engine.kernels.quant` (`split`).

Splitting a ~100 us matrix-vector product over `threads.parallel_range` costs 50-130 us on this
VM: the pool thread sleeps between tasks and must be woken, then take the GIL, and the caller
sleeps until it is done. The helper instead polls an atomic flag in a nogil Numba loop and runs
the kernel itself from the raw pointers posted in a job array, so neither side touches the GIL
or the scheduler: while it polls, a hand-off costs a few hundred nanoseconds. Measured on GPT-2's
int8 decode products (one row): 768x2304 133 -> 73 us, 768x3072 256 -> 165 us.

It polls for `SPIN_SECONDS` after its last job (a decode step posts a product every few hundred
microseconds; a short window also keeps it off the core when BLAS threads want it), then sleeps
on a condition variable; the first product after that pays the slow wake-up (~0.4 ms). The
caller waits for its half the same way: polling briefly, then
yielding the core with ``time.sleep(0)`` so that an oversubscribed machine still makes progress.

Used only with two or more threads (`threads.num_threads`). One caller at a time: a call that
finds the helper busy (another Python thread) returns False and the caller uses the pool. After
``fork`` the child starts its own helper.
"""
from __future__ import annotations

import atexit
import os
import platform
import threading
import time

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from nac.engine import threads as T
from nac.engine.kernels.quant import gemm_int8_a8, gemm_ternary_a8, gemv_int8, gemv_ternary_lut

SPIN_SECONDS = 0.01
"""How long the helper polls for work after its last job before it sleeps (GPT-2 int8 decode,
alternating runs: 60 tok/s with 2 ms, 64 tok/s with 10 ms)."""

_IDLE, _GO, _DONE, _QUIT = 0, 1, 2, 3  # flags[0]
_INT8, _TERNARY_LUT, _INT8_A8, _TERNARY_A8 = 1, 2, 3, 4  # job[0]
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@intrinsic
def _atomic_load(typingctx, flags):
    """flags[0] read with acquire ordering (int64)."""
    sig = types.int64(flags)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.load_atomic(data, ordering="acquire", align=8)

    return sig, codegen


@intrinsic
def _atomic_store(typingctx, flags, value):
    """flags[0] = value with release ordering (int64)."""
    sig = types.void(flags, types.int64)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        builder.store_atomic(args[1], data, ordering="release", align=8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _pause(typingctx):
    """The x86 spin-wait hint (``pause``); nothing elsewhere."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


def _pointer_to(dtype):
    @intrinsic
    def pointer(typingctx, address):
        """An int64 address as a typed pointer, for `numba.carray`."""
        sig = types.CPointer(dtype)(types.int64)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(types.CPointer(dtype)))

        return sig, codegen

    return pointer


_f32_pointer = _pointer_to(types.float32)
_i8_pointer = _pointer_to(types.int8)
_u8_pointer = _pointer_to(types.uint8)
_i32_pointer = _pointer_to(types.int32)


@njit(cache=True, nogil=True)
def _poll(flags, spins):
    """True once flags[0] is GO or QUIT, False after ``spins`` polls without either."""
    for _ in range(spins):
        state = _atomic_load(flags)
        if state == _GO or state == _QUIT:
            return True
        _pause()
    return False


@njit(cache=True, nogil=True)
def _serve(flags, job, spins):
    """Run posted jobs until ``spins`` polls pass without one; returns 1 on QUIT, else 0.

    job: kernel, M, K (KB, packed bytes per row, for ternary), N, lo, hi, S (scale elements: N,
    or 1 for a per-tensor ternary scale), then the addresses of the kernel's arrays:
    - `_INT8` (`gemv_int8`): x [M, K] float32, q [N, K] int8, scale [N] float32, out [M, N];
    - `_TERNARY_LUT` (`gemv_ternary_lut`, lo..hi in 16-row blocks): tables [M, 2 KB, 16]
      float32, blocks [ceil(N / 16), KB, 16] uint8, scale [S] float32, out [M, N];
    - `_INT8_A8` (`gemm_int8_a8`): xq [M, K] int8, xu [M, K] uint8, xs [M] float32, q [N, K]
      int8, row_sums [N] int32, scale [N] float32, out [M, N];
    - `_TERNARY_A8` (`gemm_ternary_a8`): x4q [M, 4, KB] int8, xsum [M] int32, xs [M] float32,
      packed [N, KB] uint8, scale [S] float32, out [M, N].
    """
    while _poll(flags, spins):
        if _atomic_load(flags) == _QUIT:
            return 1
        kind, m, k, n, lo, hi, ns = job[0], job[1], job[2], job[3], job[4], job[5], job[6]
        a = job[7:]
        if kind == _INT8:
            gemv_int8(carray(_f32_pointer(a[0]), (m, k)), carray(_i8_pointer(a[1]), (n, k)),
                      carray(_f32_pointer(a[2]), (n,)), carray(_f32_pointer(a[3]), (m, n)), lo, hi)
        elif kind == _TERNARY_LUT:
            gemv_ternary_lut(carray(_f32_pointer(a[0]), (m, 2 * k, 16)),
                             carray(_u8_pointer(a[1]), ((n + 15) // 16, k, 16)),
                             carray(_f32_pointer(a[2]), (ns,)), ns == n, carray(_f32_pointer(a[3]), (m, n)), lo, hi)
        elif kind == _INT8_A8:
            gemm_int8_a8(carray(_i8_pointer(a[0]), (m, k)), carray(_u8_pointer(a[1]), (m, k)),
                         carray(_f32_pointer(a[2]), (m,)), carray(_i8_pointer(a[3]), (n, k)),
                         carray(_i32_pointer(a[4]), (n,)), carray(_f32_pointer(a[5]), (n,)),
                         carray(_f32_pointer(a[6]), (m, n)), lo, hi)
        else:
            gemm_ternary_a8(carray(_i8_pointer(a[0]), (m, 4, k)), carray(_i32_pointer(a[1]), (m,)),
                            carray(_f32_pointer(a[2]), (m,)), carray(_u8_pointer(a[3]), (n, k)),
                            carray(_f32_pointer(a[4]), (ns,)), ns == n, carray(_f32_pointer(a[5]), (m, n)), lo, hi)
        _atomic_store(flags, _DONE)
    return 0


@njit(cache=True, nogil=True)
def _wait_done(flags, spins):
    """True (and flags reset to IDLE) once the helper has marked its job DONE within ``spins`` polls."""
    for _ in range(spins):
        if _atomic_load(flags) == _DONE:
            _atomic_store(flags, _IDLE)
            return True
        _pause()
    return False


@njit(cache=True, nogil=True)
def _set(flags, value):
    _atomic_store(flags, value)


def _polls_per_second() -> int:
    flags = np.zeros(8, np.int64)
    _poll(flags, 1000)
    t = time.perf_counter()
    _poll(flags, 200_000)
    return int(200_000 / max(time.perf_counter() - t, 1e-6))


class Helper:
    """The helper thread and its job slot (see the module docstring)."""

    def __init__(self, spin_seconds: float = SPIN_SECONDS):
        self.flags = np.zeros(8, np.int64)  # flags[0]: IDLE / GO / DONE / QUIT
        self.job = np.zeros(16, np.int64)
        rate = _polls_per_second()
        self.spins = max(1000, int(spin_seconds * rate))
        self.wait_spins = max(1000, int(0.001 * rate))
        self.busy = threading.Lock()  # one caller at a time
        self.wake = threading.Condition()
        self.asleep = False
        self.pid = os.getpid()
        self.thread = threading.Thread(target=self._run, name="nac-helper", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            if _serve(self.flags, self.job, self.spins):
                return
            with self.wake:
                self.asleep = True
                while self.flags[0] not in (_GO, _QUIT):
                    self.wake.wait()
                self.asleep = False

    def run(self, kind: int, kernel, args: tuple, shape: tuple, total: int, scale_size: int = 0) -> bool:
        """Run ``kernel(*args, lo, hi)`` over ``[0, total)``: the first half here, the second on
        the helper, which rebuilds ``args`` from their addresses (the `_serve` layout for
        ``kind``; ``shape`` is its M, K, N). Every array argument must be C-contiguous and stays
        alive until this returns. False, having done nothing, when another thread is using the
        helper."""
        if not self.busy.acquire(blocking=False):
            return False
        try:
            mid = total // 2
            addresses = [a.ctypes.data for a in args if isinstance(a, np.ndarray)]
            self.job[:7 + len(addresses)] = (kind, *shape, mid, total, scale_size, *addresses)
            _set(self.flags, _GO)
            with self.wake:
                if self.asleep:
                    self.wake.notify()
            try:
                kernel(*args, 0, mid)
            finally:  # the helper reads these arrays until it is done
                while not _wait_done(self.flags, self.wait_spins):
                    time.sleep(0)  # the helper is not running: let the scheduler give it a core
            return True
        finally:
            self.busy.release()

    def close(self) -> None:
        """Stop the thread (at interpreter exit)."""
        _set(self.flags, _QUIT)
        with self.wake:
            self.wake.notify()
        self.thread.join(timeout=1.0)


_helper: Helper | None = None
_lock = threading.Lock()


def helper() -> Helper | None:
    """The process's helper, started on first use; None with fewer than two threads."""
    global _helper
    if T.num_threads() < 2:
        return None
    h = _helper
    if h is None or h.pid != os.getpid():
        with _lock:
            if _helper is None or _helper.pid != os.getpid():
                _helper = Helper()
                atexit.register(_helper.close)
            h = _helper
    return h


_KINDS = {gemv_int8: _INT8, gemv_ternary_lut: _TERNARY_LUT, gemm_int8_a8: _INT8_A8, gemm_ternary_a8: _TERNARY_A8}


def split(kernel, total: int, *args, shape: tuple, scale_size: int = 0) -> bool:
    """``kernel(*args, lo, hi)`` over ``[0, total)`` on two cores through the helper, for the
    kernels `_serve` knows (`gemv_int8`, `gemv_ternary_lut`, `gemm_int8_a8`, `gemm_ternary_a8`,
    with their arguments in order; ``shape`` = (M, K or KB, N), ``scale_size`` the elements of a
    ternary scale). False, having done nothing, when there is no helper (one thread), it is busy,
    or an array is not C-contiguous; the caller then runs the kernel its usual way."""
    if not all(a.flags.c_contiguous for a in args if isinstance(a, np.ndarray)):
        return False
    h = helper()
    return h is not None and h.run(_KINDS[kernel], kernel, args, shape, total, scale_size)
