"""Who owns the cores while the engine runs.

- Matrix products call BLAS through numpy and use BLAS's own threads. Measured on 2 cores:
  OpenBLAS's threading beat splitting products over the team below on every shape NAC meets
  (128x384x1536: 664 us vs 756 us by columns with one-threaded BLAS; 1x768x3072: 165 vs 264 us).
- Numba kernels are serial and release the GIL (``nogil=True``); a large one is split into
  contiguous ranges run at once by a `Team` (`parallel_range`). No Numba ``parallel=True``: its
  OpenMP workers spin after each region and, next to BLAS threads, made EfficientNet-Lite0 13x
  slower.
- A team member waits for work by spinning on an atomic flag (``pause`` between reads) for
  `SPIN_US`, then sleeps on a condition variable, so it never holds a core for long while BLAS
  or another program needs it. Handing a range to a spinning member costs ~2 us here (a
  ThreadPoolExecutor took 12 us warm and ~55 us once its thread slept); the caller runs a share
  itself and takes back every range no member has claimed yet, so a slow wake-up never makes a
  split slower than running serially.
- A member needs the GIL to dispatch a Python-level range, and taking it while the caller runs
  Python costs both of them a sleep on the GIL (10-40 us on a VM). The GEMM's jobs are *native*
  (`parallel_native`): the caller publishes the kernel's arguments in `Team.words`, and members
  claim ranges with a compare-and-swap and run `linalg.gemm_panels` inside their wait
  (`linalg.gemm_member_wait`), never touching the GIL. A 16 x 384 x 1536 product on two threads
  went 158 -> 137 us, 196 x 112 x 672 215 -> 171 us (AMD EPYC VM).
  The caller's side of such a job (publish, post, claim, run, wait) is one compiled call as
  well where the kernel registers a runner (`NATIVE_RUNNERS`).

The number of threads is `set_num_threads`'s (``nac.load(..., num_threads=N)``), else
NAC_NUM_THREADS, else the cores this process may use; an explicit number also limits numpy's BLAS
to it (threadpoolctl), so ``num_threads=1`` keeps a model on one core.
"""
from __future__ import annotations

import functools
import itertools
import os
import platform
import threading
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: element-operations (elements x taps) below which one thread is faster. The team hands a range
#: over in ~2 us, but a member spinning next to BLAS's threads costs them a core: measured on
#: MiniLM and GPT-2, 1 << 16 was 3-6 % slower than 1 << 18 (the pool's old threshold) at batch 1.
_MIN_PARALLEL_WORK = 1 << 18
#: how long an idle team member spins before it sleeps (microseconds)
SPIN_US = 50.0
#: how long a member that has seen a new job waits (spinning, without the GIL) before it takes
#: the GIL, so that the caller has finished calling its own share (a Numba dispatch holds the
#: GIL for a few microseconds) and the GIL is free: a member that asks for it while the caller
#: holds it sleeps in the GIL's condition variable and wakes 10-40 us later on a VM. Two ranges
#: of ~3 us each took 50 us without the wait, 15 with 3 us; 2 x ~12 us, 84 against 37 us.
GIL_SETTLE_US = 4.0


_requested: int | None = None
_resolved: int | None = None  # `num_threads` without a number set, once worked out
_blas_limited: int | None = None


def num_threads() -> int:
    """Threads the engine uses: `set_num_threads`'s number, else NAC_NUM_THREADS, else the usable
    cores. Without a number set, it is worked out at the first call (as the team is sized then)
    and kept: reading the environment and the CPU affinity took 1.5 us, a quarter of a split
    product's hand-off, on every split."""
    global _resolved
    if _requested is not None:
        return _requested
    if _resolved is None:
        env = os.environ.get("NAC_NUM_THREADS")
        if env and env.isdigit() and int(env) > 0:
            _resolved = int(env)
        else:
            try:
                _resolved = max(1, len(os.sched_getaffinity(0)))
            except AttributeError:  # not on Linux
                _resolved = max(1, os.cpu_count() or 1)
    return _resolved


@intrinsic
def _atomic_load(typingctx, arr, idx):
    """arr[idx] of a 1-D int64 array as an acquire load (never hoisted out of a loop)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1
            and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.load_atomic(builder.gep(a.data, [args[1]]), "acquire", 8)

    return types.int64(arr, idx), codegen


@intrinsic
def _pause(typingctx):
    """The x86 spin-wait hint (``pause``); nothing on other machines."""
    def codegen(context, builder, signature, args):
        if platform.machine().lower() in ("x86_64", "amd64", "i686"):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _atomic_store(typingctx, arr, idx, value):
    """arr[idx] = value for a 1-D int64 array, as a release store (every write before it is
    visible to a thread that reads the value with `_atomic_load`)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1
            and isinstance(idx, types.Integer) and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        v = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store_atomic(v, builder.gep(a.data, [args[1]]), "release", 8)
        return context.get_dummy_value()

    return types.void(arr, idx, value), codegen


@intrinsic
def _atomic_cas(typingctx, arr, idx, expected, value):
    """Compare-and-swap arr[idx] (1-D int64): store ``value`` if it holds ``expected``; returns
    what it held (sequentially consistent)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1
            and all(isinstance(x, types.Integer) for x in (idx, expected, value))):
        return None

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        old, new = (context.cast(builder, args[i], signature.args[i], types.int64) for i in (2, 3))
        pair = builder.cmpxchg(builder.gep(a.data, [args[1]]), old, new, "seq_cst", "seq_cst")
        return builder.extract_value(pair, 0)

    return types.int64(arr, idx, expected, value), codegen


@intrinsic
def data_address(typingctx, arr):
    """The address of a 1-D float32 array's first element, as an int64 (for `float32_at`)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.ptrtoint(a.data, ir.IntType(64))

    return types.int64(arr), codegen


@intrinsic
def float32_at(typingctx, address):
    """The int64 ``address`` as a float32 pointer (for ``numba.carray``): a team member's view of
    an array the caller published with `data_address`, valid while the caller waits for it."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.PointerType(ir.FloatType()))

    return types.CPointer(types.float32)(address), codegen


#: `Team.words`: [0] the claim word of the posted job (its epoch << CLAIM_SHIFT, NATIVE_JOB for a
#: job the members run without the GIL, and the next range to claim), [1] its range count, [2]
#: its total; from [3] on, a native job's arguments (`linalg.gemm_member_wait`)
CLAIM_SHIFT = 10
NATIVE_JOB = 1 << 9
WORD_ARGS = 3


@njit(cache=True, nogil=True)
def claim_native(words, epoch):
    """Claim the next range of native job ``epoch`` (`Team.words`): its index, or -1 when none
    is left, the posted job is another, or it is not native. Lock-free (compare-and-swap), so
    it needs no GIL; a claimed range keeps its job open, so its arguments stay valid until the
    claimer marks the range finished."""
    while True:
        w = _atomic_load(words, 0)
        if (w >> CLAIM_SHIFT) != epoch or not (w & NATIVE_JOB):
            return -1
        k = w & (NATIVE_JOB - 1)
        if k >= words[1]:
            return -1
        if _atomic_cas(words, 0, w, w + 1) == w:
            return k


@njit(cache=True, nogil=True)
def publish_and_spin(flags, words, done, seen, spins, settle_spins):
    """A team member's wait, without the GIL: flags[done] = ``seen`` (the range it just ran in
    job ``seen`` is finished; nothing if ``done`` < 0), then at most ``spins`` reads until
    flags[0] differs from ``seen`` (a new job), then `settle`. Returns the last flags[0] read
    (``seen``: no job came). flags: 1-D int64, `Team.flags`; words: `Team.words` (unused here:
    the wait without native jobs, until `nac.engine.kernels.linalg` installs
    `linalg.gemm_member_wait` as `member_wait`)."""
    if done >= 0:
        _atomic_store(flags, done, seen)
    epoch = spin(flags, 0, seen, False, spins)
    if epoch != seen:
        settle(settle_spins)
    return epoch


@njit(cache=True, nogil=True)
def settle(spins):
    """Spin ``spins`` ``pause`` hints without the GIL (`GIL_SETTLE_US`)."""
    for _ in range(spins):
        _pause()


@njit(cache=True, nogil=True)
def spin(flags, i, value, until, spins):
    """Spin (without the GIL), at most ``spins`` reads, until flags[i] == value (``until``) or
    while it is (not ``until``); returns the last value read. flags: 1-D int64."""
    for _ in range(spins):
        v = _atomic_load(flags, i)
        if (v == value) == until:
            return v
        _pause()
    return _atomic_load(flags, i)


class _Job:
    __slots__ = ("fn", "args", "bounds", "claim", "epoch", "errors", "mine", "native")

    def __init__(self, fn, args, bounds, epoch, native=False):
        self.fn, self.args, self.bounds, self.epoch, self.native = fn, args, bounds, epoch, native
        self.claim = itertools.count()  # next() is atomic under the GIL: each range is claimed once
        self.errors: list[BaseException] = []
        self.mine: list[int] = []


class Team:
    """``n - 1`` daemon threads that, with the calling thread, run one split kernel at a time.

    flags (int64): [0] the epoch of the posted job; [1 + k] the epoch in which range k finished.
    One job runs at a time; a thread that finds the team busy (another `Model` running on another
    thread) runs its kernel serially instead of waiting.
    """

    def __init__(self, n: int):
        self.n = n
        self._closed = False
        self.flags = np.zeros(1 + n, np.int64)
        self.words = np.zeros(WORD_ARGS + 32, np.int64)
        self._job: _Job | None = None
        self._cond = threading.Condition()
        self._sleepers = 0
        self._busy = threading.Lock()
        self.caller_ranges = 0  # how many ranges of the last job the caller ran itself
        self.spins = _spins_for(SPIN_US)
        self.settle_spins = _spins_for(GIL_SETTLE_US, floor=1)
        for k in range(n - 1):
            threading.Thread(target=self._member, name=f"nac-{k + 1}", daemon=True).start()

    def _member(self) -> None:
        seen = 0
        done = -1  # the flag of the last range this member ran, published without the GIL
        while not self._closed:
            # native jobs run inside the wait, without the GIL; it returns for a Python job or idleness
            epoch = member_wait(self.flags, self.words, done, seen, self.spins, self.settle_spins)
            done = -1
            if epoch == seen:
                with self._cond:
                    self._sleepers += 1
                    while self.flags[0] == seen and not self._closed:
                        self._cond.wait()
                    self._sleepers -= 1
                continue  # the wait sees the new job at once
            seen = epoch
            job = self._job
            if job is not None and job.epoch == epoch and not job.native:
                done = self._work(job, caller=False)

    def _work(self, job: _Job, caller: bool) -> int:
        """Run ranges of ``job`` until none is left to claim. A member marks each range it ran
        finished, except the last, whose flag index it returns (-1 if none) for
        `publish_and_spin` to set once the member has let go of the GIL: the caller, spinning
        on that flag, then finds the GIL free."""
        b = job.bounds
        last = -1
        for k in job.claim:
            if k >= len(b) - 1:
                break
            if last >= 0:
                self.flags[last] = job.epoch
            try:
                job.fn(*job.args, b[k], b[k + 1])
            except BaseException as exc:  # handed to the caller, which raises it
                job.errors.append(exc)
            if caller:
                job.mine.append(k)
            else:
                last = 1 + k
        return last

    def close(self) -> None:
        """Let the members exit (after any job in progress)."""
        with self._busy:
            self._closed = True
            self.flags[0] += 1
            with self._cond:
                self._cond.notify_all()

    def run(self, fn, total: int, args: tuple, pack=None) -> None:
        """``fn(*args, lo, hi)`` over ``[0, total)`` in one contiguous range per thread.

        With ``pack`` (a native job: ``fn`` is `linalg.gemm_panels`), ``pack(words, *args)``
        writes the arguments into `words`, and members run their ranges inside their wait
        (`linalg.gemm_member_wait`) without taking the GIL; the caller runs its own through ``fn``.
        Where ``fn`` has a runner in `NATIVE_RUNNERS` and no member sleeps on the condition
        variable, the caller's whole part (publish, post, claim and run, wait) is that one
        compiled call.

        Raises: whatever ``fn`` raised (the first, after every range has finished)."""
        if not self._busy.acquire(blocking=False):
            fn(*args, 0, total)
            return
        n = min(self.n, total)
        runner = NATIVE_RUNNERS.get(fn) if pack is not None else None
        if runner is not None and not self._sleepers and n < NATIVE_JOB:
            try:  # the whole hand-off in one compiled call (no member sleeps on the condition)
                self.caller_ranges = runner(self.flags, self.words, int(self.flags[0]) + 1, n, total, *args)
            finally:
                self._busy.release()
            return
        try:
            if n >= NATIVE_JOB:  # more ranges than the claim word counts: members take them with the GIL
                pack = None
            epoch = int(self.flags[0]) + 1
            job = _Job(fn, args, [total * k // n for k in range(n + 1)], epoch, pack is not None)
            self._job = job
            if pack is not None:
                self.words[1], self.words[2] = n, total
                pack(self.words, *args)
            self.words[0] = epoch << CLAIM_SHIFT | (NATIVE_JOB if pack is not None else 0)
            self.flags[0] = epoch  # after the words: a member that sees the epoch reads this job's
            if self._sleepers:
                with self._cond:
                    self._cond.notify_all()
            if pack is None:
                self._work(job, caller=True)
            else:
                b = job.bounds
                while (k := claim_native(self.words, epoch)) >= 0:
                    job.mine.append(k)
                    try:
                        fn(*args, b[k], b[k + 1])
                    except BaseException as exc:  # raised once the members' ranges are finished
                        job.errors.append(exc)
            for k in range(n):  # ranges a member claimed: wait for them (they are running)
                if k not in job.mine:
                    while spin(self.flags, 1 + k, epoch, True, self.spins) != epoch:
                        time.sleep(0)
            self.caller_ranges = len(job.mine)
            if job.errors:
                raise job.errors[0]
        finally:
            self._busy.release()


@functools.lru_cache(maxsize=None)
def _seconds_per_spin() -> float:
    """What one `spin` read takes on this CPU (``pause`` costs from ~10 to ~140 cycles depending
    on the core), measured once."""
    probe = np.zeros(1, np.int64)
    spin(probe, 0, 0, False, 1)  # compile / load
    t = time.perf_counter()
    spin(probe, 0, 0, False, 20000)
    return max((time.perf_counter() - t) / 20000, 1e-9)


def _spins_for(us: float, floor: int = 100) -> int:
    """How many `spin` reads take about ``us`` microseconds (at least ``floor``)."""
    return max(floor, int(us * 1e-6 / _seconds_per_spin()))


#: the wait team members run between jobs; `nac.engine.kernels.linalg` installs one that also
#: runs native jobs (`linalg.gemm_member_wait`, same arguments)
member_wait = publish_and_spin
#: a native job's kernel -> the compiled call that runs the caller's side of it whole:
#: ``runner(flags, words, epoch, ranges, total, *args)`` publishes the arguments, posts job
#: ``epoch``, runs the ranges it claims, waits for the members' and returns how many it ran
#: (`linalg.gemm_team_run`). A 16 x 64 x 64 product on two threads, 2.0 us on one: 5.9 us
#: through `Team.run`'s Python (five Numba dispatches and the job's bookkeeping), 3.3 us through
#: the runner; in one process, alternating, MiniLM b1 seq16 0.94x and MobileNetV2 b1 0.91x the
#: time (AMD EPYC VM, 10 rounds).
NATIVE_RUNNERS: dict = {}

_team: Team | None = None
_team_lock = threading.Lock()


def _get_team() -> Team:
    global _team
    if _team is None:
        with _team_lock:  # several threads may run a Model at once: make one team, not several
            if _team is None:
                _team = Team(num_threads())
    return _team


def set_num_threads(n: int) -> None:
    """Use ``n`` threads from now on, process-wide: for NAC's kernels and for numpy's BLAS.

    Raises:
        ValueError: ``n`` is not a positive integer.
    """
    global _requested, _team
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_threads must be a positive integer, not {n!r}")
    _requested = n
    with _team_lock:
        stale = _team if _team is not None and _team.n != n else None
        if stale is not None:
            _team = None  # the next split builds a team of n
    if stale is not None:
        stale.close()
    limit_blas(n)


def limit_blas(n: int) -> None:
    """Limit numpy's BLAS to ``n`` threads (once per distinct n; threadpoolctl)."""
    global _blas_limited
    if _blas_limited == n:
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n, user_api="blas")
    _blas_limited = n


def apply_env() -> None:
    """If NAC_NUM_THREADS is set and no number was given, limit numpy's BLAS to it as well."""
    if _requested is None and os.environ.get("NAC_NUM_THREADS", "").isdigit():
        limit_blas(num_threads())


def _forget_team() -> None:  # a forked child has none of the parent's threads (and may have other cores)
    global _team, _resolved
    _team = _resolved = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_team)


def split_range(fn, total: int, *args) -> None:
    """Run ``fn(*args, lo, hi)`` over ``[0, total)`` in one contiguous range per thread, whatever
    its size: for a caller that has already judged the work worth splitting (the tokenizer's
    ``encode_batch``). ``fn`` should release the GIL for most of its time and write disjoint
    outputs for disjoint ranges. Serial when there is one thread or the team is busy.

    Raises: whatever ``fn`` raised."""
    if total <= 1 or num_threads() <= 1:
        fn(*args, 0, total)
        return
    _get_team().run(fn, total, args)


def parallel_native(fn, pack, total: int, *args, work: int) -> None:
    """`parallel_range` for a kernel the team members can run without the GIL (a native job,
    see `Team.run`): ``pack(words, *args)`` publishes the arguments.

    Raises: whatever ``fn`` raised."""
    if total <= 1 or work < _MIN_PARALLEL_WORK or num_threads() <= 1:
        fn(*args, 0, total)
        return
    _get_team().run(fn, total, args, pack)


def parallel_range(fn, total: int, *args, work: int | None = None) -> None:
    """Run ``fn(*args, lo, hi)`` over ``[0, total)``, split into one contiguous range per thread
    when ``work`` (default: ``total``) is large enough; ``fn`` must release the GIL and write
    disjoint outputs for disjoint ranges.

    Raises: whatever ``fn`` raised."""
    # the size test first: most calls of a decode step are too small to split (SmolLM2: ~120 a token)
    if total <= 1 or (total if work is None else work) < _MIN_PARALLEL_WORK or num_threads() <= 1:
        fn(*args, 0, total)
        return
    _get_team().run(fn, total, args)
