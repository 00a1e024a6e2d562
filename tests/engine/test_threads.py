"""The thread team behind `parallel_range`: every index is run exactly once, errors reach the
caller, many caller threads at once, the thread count (`set_num_threads`, ``nac.load``), and a
forked child."""
from __future__ import annotations

import multiprocessing
import threading
import time

import numpy as np
import pytest
from numba import njit

from nac.engine import threads as T


@njit(nogil=True)
def _count(hits, lo, hi):
    for i in range(lo, hi):
        hits[i] += 1


@pytest.fixture
def two_threads():
    before = T._requested
    T.set_num_threads(2)
    yield T._get_team()
    if before is None:
        T._requested = None
    else:
        T.set_num_threads(before)


@pytest.mark.parametrize("total", [2, 3, 1000, 100_003])
def test_every_index_once(two_threads, total):
    hits = np.zeros(total, np.int64)
    for _ in range(50):
        T.parallel_range(_count, total, hits, work=1 << 30)
    assert (hits == 50).all()


def test_members_take_ranges_and_sleep_when_idle(two_threads):
    seen = set()

    def who(lo, hi):  # releases the GIL for a while, as a Numba kernel does
        time.sleep(0.0005)
        seen.add(threading.current_thread().name)

    for _ in range(200):
        T.parallel_range(who, 2, work=1 << 30)
    assert "nac-1" in seen  # a member did claim work (the caller takes back only what is unclaimed)
    time.sleep(0.05)  # far longer than SPIN_US: the member is asleep now, and must still wake for work
    seen.clear()
    for _ in range(20):
        T.parallel_range(who, 2, work=1 << 30)
        time.sleep(0.002)
    assert "nac-1" in seen


def test_an_error_in_any_range_reaches_the_caller(two_threads):
    def fail_high(lo, hi):
        if hi == 10:
            raise ValueError(f"range {lo}..{hi}")

    for _ in range(20):
        with pytest.raises(ValueError, match=r"range 5\.\.10"):
            T.parallel_range(fail_high, 10, work=1 << 30)
    hits = np.zeros(10, np.int64)  # the team still works afterwards
    T.parallel_range(_count, 10, hits, work=1 << 30)
    assert (hits == 1).all()


def _callers(body, n: int, timeout: float) -> None:
    """Run ``body(seed)`` on ``n`` threads at once; every one must finish in ``timeout`` seconds
    without raising."""
    errors = []

    def caller(seed):
        try:
            body(seed)
        except BaseException as exc:  # reported below
            errors.append(exc)

    ts = [threading.Thread(target=caller, args=(k,)) for k in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout)
    assert not errors and not any(t.is_alive() for t in ts)


def test_many_caller_threads(two_threads):
    def body(seed):
        for _ in range(100):
            hits = np.zeros(777 + seed, np.int64)
            T.parallel_range(_count, hits.size, hits, work=1 << 30)
            assert (hits == 1).all()

    _callers(body, 8, 60)


def test_set_num_threads_validates_and_limits_blas(two_threads):
    from threadpoolctl import threadpool_info

    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError):
            T.set_num_threads(bad)
    T.set_num_threads(1)
    assert T.num_threads() == 1
    assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")
    names = []
    T.parallel_range(lambda lo, hi: names.append(threading.current_thread().name), 10, work=1 << 30)
    assert names == [threading.current_thread().name]  # one thread: the caller alone
    T.set_num_threads(2)
    assert all(i["num_threads"] == 2 for i in threadpool_info() if i["user_api"] == "blas")


def _child(q):
    hits = np.zeros(1000, np.int64)
    T.parallel_range(_count, 1000, hits, work=1 << 30)
    q.put(int(hits.sum()))


def test_a_forked_child_gets_its_own_team(two_threads):
    T.parallel_range(_count, 10, np.zeros(10, np.int64), work=1 << 30)  # the parent's team exists
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(60)
    assert p.exitcode == 0 and q.get(timeout=5) == 1000


def _gemm_case(rng, M, K, N):
    from nac.engine.kernels import linalg as L

    x = rng.standard_normal((M, K)).astype(np.float32)
    panels = L.pack_panels(rng.standard_normal((K, N)).astype(np.float32))
    bias = np.zeros(panels.shape[0] * L.PANEL, np.float32)
    bias[:N] = rng.standard_normal(N)
    res = rng.standard_normal((M, N)).astype(np.float32)
    want = np.empty((M, N), np.float32)  # the same kernel over the whole product on this thread
    rb = L.row_block(M)
    L.gemm_panels(x.reshape(-1), M, K, panels.reshape(-1), bias, N, want.reshape(-1), 1, res.reshape(-1), True,
                  L.GEMM_KINDS[L.GEMM], rb, 0, -(-M // rb) * panels.shape[0])
    return x, panels, bias, res, want


@pytest.mark.parametrize("runner", [True, False], ids=["compiled-runner", "python-hand-off"])
def test_native_jobs_are_run_by_members_and_match_one_thread(two_threads, runner, monkeypatch):
    """`linalg.gemm` posts native jobs (`threads.parallel_native`): members claim and run ranges
    inside their wait, without the GIL; the caller does not run every range itself, and the
    result is bit-identical to the whole product on one thread, also after the members slept.
    Both for the caller's side in one compiled call (`linalg.gemm_team_run`) and in Python."""
    from nac.engine.kernels import linalg as L

    assert T.member_wait is L.gemm_member_wait
    assert T.NATIVE_RUNNERS.get(L.gemm_panels) is L.gemm_team_run
    if not runner:
        monkeypatch.delitem(T.NATIVE_RUNNERS, L.gemm_panels)
    rng = np.random.default_rng(7)
    x, panels, bias, res, want = _gemm_case(rng, 96, 384, 1536)
    members_ran = 0
    for k in range(300):
        if k == 150:
            time.sleep(0.05)  # the member is asleep now, and must still wake for a native job
        y = np.full(want.shape, np.nan, np.float32)
        L.gemm(x, panels, bias, y, 1, L.GEMM_KINDS[L.GEMM], res)
        np.testing.assert_array_equal(y, want)
        members_ran += two_threads.caller_ranges < 2
    assert members_ran > 0


def test_native_and_python_jobs_from_many_caller_threads(two_threads):
    """Callers on several threads at once alternate native GEMM jobs and Python-dispatched ranges
    (the team runs one job at a time; a caller that finds it busy runs serially): every result
    is exact and no range runs twice."""
    from nac.engine.kernels import linalg as L

    def body(seed):
        rng = np.random.default_rng(seed)
        for _ in range(40):
            M, K, N = (int(v) for v in rng.integers(1, 200, 3))
            x, panels, bias, res, want = _gemm_case(rng, M, K, N)
            y = np.full(want.shape, np.nan, np.float32)
            L.T.parallel_native(*L._gemm_job(x, panels, bias, y, 1, L.GEMM_KINDS[L.GEMM], res), work=1 << 30)
            np.testing.assert_array_equal(y, want)
            hits = np.zeros(500 + seed, np.int64)
            T.parallel_range(_count, hits.size, hits, work=1 << 30)
            assert (hits == 1).all()

    _callers(body, 6, 120)
