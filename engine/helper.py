"""A second core for decode-sized products: one helper thread that waits inside Numba.

Serves the float-activation decode kernels `quant.gemv_int8` and `quant.gemv_ternary_lut`.

Splitting a ~100 us matrix-vector product over `threads.parallel_range` costs 50-130 us on this
VM: the pool thread sleeps between tasks and must be woken, then take the GIL, and the caller
sleeps until it is done. The helper instead polls an atomic flag in a nogil Numba loop and runs
the kernel itself from the raw pointers posted in a job array, so neither side touches the GIL
or the scheduler: while it polls, a hand-off costs a few hundred nanoseconds. Measured on GPT-2's
int8 decode products (one row): 768x2304 133 -> 73 us, 768x3072 256 -> 165 us.

It polls for `SPIN_SECONDS` after its last job (a decode step posts a product every few hundred
microseconds), then sleeps on a condition variable; the first product after that pays the
slow wake-up (~0.4 ms). The caller waits for its half the same way: polling briefly, then
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
from nac.engine.kernels.quant import gemv_int8, gemv_ternary_lut

SPIN_SECONDS = 0.01
"""How long the helper polls for work after its last job before it sleeps."""

_IDLE, _GO, _DONE, _QUIT = 0, 1, 2, 3  # flags[0]
_INT8, _TERNARY_LUT = 1, 2  # job[0]
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

    job[0] is the kernel, then its shapes, the addresses of its arrays and the range lo, hi:
    - `_INT8`: M, K, N, x [M, K] float32, q [N, K] int8, scale [N] float32, out [M, N] float32
      (`gemv_int8`);
    - `_TERNARY_LUT`: M, KB, N, tables [M, 2 KB, 16] float32, blocks [ceil(N / 16), KB, 16]
      uint8, scale [S] float32 (S = N, or 1 for a per-tensor scale), out [M, N] float32
      (`gemv_ternary_lut`, ranges in row blocks).
    """
    while _poll(flags, spins):
        if _atomic_load(flags) == _QUIT:
            return 1
        m, k, n = job[1], job[2], job[3]
        out = carray(_f32_pointer(job[7]), (m, n))
        if job[0] == _INT8:
            x = carray(_f32_pointer(job[4]), (m, k))
            q = carray(_i8_pointer(job[5]), (n, k))
            gemv_int8(x, q, carray(_f32_pointer(job[6]), (n,)), out, job[8], job[9])
        else:
            tables = carray(_f32_pointer(job[4]), (m, 2 * k, 16))
            blocks = carray(_u8_pointer(job[5]), ((n + 15) // 16, k, 16))
            scale = carray(_f32_pointer(job[6]), (job[10],))
            gemv_ternary_lut(tables, blocks, scale, job[10] == n, out, job[8], job[9])
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

    def run(self, job: tuple, kernel, args: tuple, lo: int, mid: int, hi: int) -> bool:
        """Post ``job`` (the `_serve` layout up to the range) for rows mid..hi, run
        ``kernel(*args, lo, mid)`` here, and wait for the helper. The arrays behind the job must
        stay alive until this returns (the caller holds them). False, having done nothing, when
        another thread is using the helper."""
        if not self.busy.acquire(blocking=False):
            return False
        try:
            self.job[:len(job) + 2] = (*job[:8], mid, hi, *job[8:])
            _set(self.flags, _GO)
            with self.wake:
                if self.asleep:
                    self.wake.notify()
            try:
                kernel(*args, lo, mid)
            finally:  # the helper reads these arrays until it is done
                while not _wait_done(self.flags, self.wait_spins):
                    time.sleep(0)  # the helper is not running: let the scheduler give it a core
            return True
        finally:
            self.busy.release()

    def gemv_int8(self, x: np.ndarray, q: np.ndarray, scale: np.ndarray, out: np.ndarray) -> bool:
        """out [M, N] = `gemv_int8` of x [M, K] float32 and q [N, K] int8 (scale [N] float32), the
        rows split between the caller and the helper. All arrays C-contiguous."""
        (m, k), n = x.shape, q.shape[0]
        job = (_INT8, m, k, n, x.ctypes.data, q.ctypes.data, scale.ctypes.data, out.ctypes.data)
        return self.run(job, gemv_int8, (x, q, scale, out), 0, n // 2, n)

    def gemv_ternary_lut(self, tables: np.ndarray, blocks: np.ndarray, scale: np.ndarray,
                         out: np.ndarray) -> bool:
        """`gemv_ternary_lut` over all row blocks, split between the caller and the helper. All
        arrays C-contiguous; a per-tensor scale has one element."""
        m, n = out.shape
        nb, kb = blocks.shape[:2]
        job = (_TERNARY_LUT, m, kb, n, tables.ctypes.data, blocks.ctypes.data, scale.ctypes.data, out.ctypes.data,
               scale.shape[0])
        return self.run(job, gemv_ternary_lut, (tables, blocks, scale, scale.shape[0] == n, out), 0, nb // 2, nb)

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


def split_gemv_int8(x: np.ndarray, q: np.ndarray, scale: np.ndarray, out: np.ndarray) -> bool:
    """`gemv_int8` over all rows on two cores through the helper; False (nothing done) when there
    is no helper, it is busy, or an array is not C-contiguous."""
    if not all(a.flags.c_contiguous for a in (x, q, scale, out)):
        return False
    h = helper()
    return h is not None and h.gemv_int8(x, q, scale, out)


def split_gemv_ternary_lut(tables: np.ndarray, blocks: np.ndarray, scale: np.ndarray, out: np.ndarray) -> bool:
    """`gemv_ternary_lut` over all row blocks on two cores through the helper; False (nothing
    done) as for `split_gemv_int8`."""
    if not all(a.flags.c_contiguous for a in (tables, blocks, scale, out)):
        return False
    h = helper()
    return h is not None and h.gemv_ternary_lut(tables, blocks, scale, out)
