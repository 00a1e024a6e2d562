"""NAC vs torch eager (vs ONNX Runtime) on the real models, in one process, same thread count.

    python bench/bench_models.py [--quick] [--json bench/results/models.json]

Reports median latency (ms) per model/shape for each runtime (NAC, torch and ONNX Runtime measured
in alternating rounds), the ratio NAC / torch (below 1.0 means NAC is faster), the machine, BLAS settings, and the engine's start-up cost (a fresh
process's time to its first MiniLM result with a warm Numba cache, and with an empty one; NAC's
modules byte-compiled first, as an installed copy is).

Two columns say whether the machine's cores were really there: NAC on one thread (alternating
rounds with NAC on all of them; ``threads speed-up`` = one thread's time / all threads' time),
and ``steal %``, the share of the cores' time the hypervisor gave to other guests while the case
ran (/proc/stat; empty elsewhere). On a VM whose second vCPU is mostly stolen, every
multi-threaded runtime slows down, and ratios between runs stop meaning much.

OPENBLAS_CORETYPE=Haswell (set on these machines) halves numpy's GEMM speed on AVX-512; `make
bench` unsets it and OPENBLAS_L2_SIZE; the report says which was measured.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")  # what `import nac` sets when it loads numpy first

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from threadpoolctl import threadpool_info

    import torch

    from nac.engine.threads import num_threads

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__, "nac_threads": num_threads(), "torch_threads": torch.get_num_threads(),
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
            "OPENBLAS_THREAD_TIMEOUT": os.environ.get("OPENBLAS_THREAD_TIMEOUT", "(unset)"),
            "blas": [{k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                     for i in threadpool_info() if i.get("user_api") == "blas"]}


def median_ms(fn, repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


#: seconds of rest before each runtime's round in `interleaved`: ONNX Runtime's intra-op threads
#: keep spinning after a call, and NAC measured right after ONNX Runtime's round was 31 % slower
#: (EfficientNet-Lite0 b1, 2 threads: 27.8 against 21.2 ms; 21.4 ms after a 0.3 s rest)
SETTLE_S = 0.3
#: seconds each runtime runs untimed at the start of its round, after the rest: on these VMs the
#: first ~5 calls after a 0.3 s rest ran 40-60 % slower than the rest (MiniLM b1 seq16, NAC on one
#: or two threads: 6-8 against 4.5-5 ms; 2026-12-03), and a round of 4 timed calls after one
#: warm-up measured that instead of the runtime
WARM_S = 0.05


def warm(fn, seconds: float = WARM_S) -> None:
    """Call ``fn`` until ``seconds`` have passed (at least once)."""
    end = time.perf_counter() + seconds
    fn()
    while time.perf_counter() < end:
        fn()


def interleaved(fns: dict, repeat: int, rounds: int = 5, settle: float = SETTLE_S) -> dict:
    """Median ms per call of each runtime, measured in ``rounds`` alternating rounds (each the
    median of ``repeat // rounds`` calls after a warm-up, after ``settle`` seconds in which the
    other runtimes' idle threads stop spinning), so that a slow spell of a noisy VM falls on
    every runtime alike and no runtime pays for another's spinning threads; the result is the
    median over rounds. Each round first runs its runtime untimed for `WARM_S` seconds."""
    per = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for k, fn in fns.items():
            time.sleep(settle)
            warm(fn)
            per[k].append(median_ms(fn, max(1, repeat // rounds), warmup=0))
    return {k: statistics.median(v) for k, v in per.items()}


def onnx_session(job, names, dynamic):
    try:
        import io

        import onnxruntime as ort
        import torch
    except ImportError:
        return None, "onnxruntime not installed"
    try:
        f = io.BytesIO()
        args = tuple(job.kwargs.values()) if job.kwargs else job.args
        torch.onnx.export(job.module, args, f, input_names=names, dynamic_axes=dynamic, dynamo=False, opset_version=17)
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        so.inter_op_num_threads = 1
        return ort.InferenceSession(f.getvalue(), so, providers=["CPUExecutionProvider"]), None
    except Exception as exc:  # report, do not fail the benchmark
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"


class Steal:
    """The share of the cores' time stolen by the hypervisor between `start` and `stop`
    (the ``steal`` column of /proc/stat; None where there is no /proc/stat)."""

    @staticmethod
    def _ticks():
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()
            return int(fields[8]), time.perf_counter()
        except (OSError, IndexError, ValueError):
            return None

    def start(self):
        self.t0 = self._ticks()
        return self

    def stop(self):
        t1 = self._ticks()
        if self.t0 is None or t1 is None:
            return None
        wall = (t1[1] - self.t0[1]) * (os.cpu_count() or 1) * os.sysconf("SC_CLK_TCK")
        return round(100.0 * (t1[0] - self.t0[0]) / max(wall, 1e-9), 1)


def thread_scaling(run, repeat: int, rounds: int = 5) -> tuple[float, float]:
    """Median ms of ``run`` on one NAC thread (BLAS limited alike) and on all of them, in
    alternating rounds; returns (one thread, all threads)."""
    from nac.engine import threads

    n = threads.num_threads()
    per = {1: [], n: []}
    try:
        for _ in range(rounds):
            for k in per:
                threads.set_num_threads(k)
                per[k].append(median_ms(run, max(1, repeat // rounds), warmup=1))
    finally:
        threads.set_num_threads(n)
    return statistics.median(per[1]), statistics.median(per[n])


def bench_model(name, job, path, cases, repeat):
    import torch

    import nac

    model = nac.load(path)
    names = list(job.kwargs) if job.kwargs else model.input_names
    dynamic = {n: ({0: "batch", 1: "seq"} if job.kwargs else {0: "batch"}) for n in names}
    sess, why = onnx_session(job, names, dynamic)
    rows = []
    for label, feeds in cases:
        tfeeds = [torch.from_numpy(v) for v in feeds.values()]

        def run_torch():
            with torch.no_grad():
                job.module(*tfeeds)
        fns = {"torch": run_torch, "nac": lambda: model.run(list(feeds.values()))}
        if sess:
            fns["ort"] = lambda: sess.run(None, dict(zip(names, feeds.values())))
        steal = Steal().start()
        t = interleaved(fns, repeat)
        t_torch, t_nac, t_ort = t["torch"], t["nac"], t.get("ort")
        one, every = thread_scaling(fns["nac"], repeat)
        stolen = steal.stop()
        rows.append({"model": name, "case": label, "nac_ms": round(t_nac, 3), "torch_ms": round(t_torch, 3),
                     "ort_ms": None if t_ort is None else round(t_ort, 3), "nac_over_torch": round(t_nac / t_torch, 3),
                     "nac_over_ort": None if t_ort is None else round(t_nac / t_ort, 3),
                     "nac_one_thread_ms": round(one, 3), "threads_speedup": round(one / every, 3),
                     "steal_pct": stolen})
        print(f"  {name:<18} {label:<14} nac {t_nac:8.2f} ms   torch {t_torch:8.2f} ms   "
              f"ort {'n/a' if t_ort is None else f'{t_ort:8.2f} ms'}   nac/torch {t_nac / t_torch:5.2f}   "
              f"nac 1 thread {one:8.2f} ms   steal {stolen}%", flush=True)
    return rows, why


_NO_SCIPY = ("import importlib.abc, sys\n"
             "class B(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name.split('.')[0] == 'scipy': raise ImportError(name)\n"
             "sys.meta_path.insert(0, B())\n")


def _compile_bytecode() -> None:
    """Write the ``.pyc`` files of NAC's modules, as ``pip install`` does for a wheel: an editable
    install under ``PYTHONDONTWRITEBYTECODE`` (set on these machines) would otherwise compile
    NAC's source in every fresh process, ~0.1 s that no installed copy pays."""
    import compileall
    import importlib.util

    for pkg in ("nac", "nac.engine", "nac.format", "nac.compile", "nac.tokenizer_vm", "nac.apps", "nac.accel"):
        for folder in importlib.util.find_spec(pkg).submodule_search_locations:
            compileall.compile_dir(folder, quiet=1)


def start_up(path: Path) -> dict:
    """Seconds from a fresh interpreter's start to its first MiniLM result (import, load, plan, run):
    with an empty Numba cache, with a warm one, and with a warm one where scipy cannot be imported
    (a machine with only NAC's runtime dependencies: Numba imports scipy.linalg on its first
    dispatch when scipy is installed, ~0.2 s)."""
    _compile_bytecode()
    code = ("import time; t=time.perf_counter()\n%s"
            "import numpy as np, nac; m=nac.load(%r); "
            "m.run({'input_ids': np.array([[101, 7592, 102]]), 'attention_mask': np.ones((1, 3), np.int64)}); "
            "print(time.perf_counter()-t)")
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("first_ever_compile_s", "warm_cache_s", "warm_cache_without_scipy_s"):
            t0 = time.perf_counter()
            prog = code % (_NO_SCIPY if "without_scipy" in label else "", str(path))
            r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, env=env, timeout=900)
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                raise RuntimeError(r.stderr)
            out[label] = round(wall, 3)
            out[label[:-2] + "_in_process_s"] = round(float(r.stdout.strip()), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "models.json")
    args = ap.parse_args()
    import torch

    from nac.apps.sources import efficientnet_lite0, minilm, mobilenet_v2
    from nac.errors import NacExportError
    from nac.engine.threads import num_threads

    import nac

    torch.set_num_threads(num_threads())
    repeat = 5 if args.quick else 20
    info = machine()
    print(json.dumps(info, indent=1))
    rows, notes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        job = minilm()
        mpath = nac.export(job.module, job.args, tmp / "minilm.nac", kwargs=job.kwargs,
                           dynamic_shapes=job.dynamic_shapes, metadata=job.metadata, tokenizer=job.tokenizer)
        rng = np.random.default_rng(0)
        cases = []
        for b, s in [(1, 16), (1, 128), (8, 16), (8, 128)]:
            ids = rng.integers(1000, 29000, (b, s)).astype(np.int64)
            ids[:, 0], ids[:, -1] = 101, 102
            cases.append((f"b{b} seq{s}", {"input_ids": ids, "attention_mask": np.ones((b, s), np.int64)}))
        r, why = bench_model("minilm", job, mpath, cases, repeat)
        rows += r
        if why:
            notes["minilm_ort"] = why
        job = efficientnet_lite0()
        epath = nac.export(job.module, job.args, tmp / "effnet.nac", dynamic_shapes=job.dynamic_shapes,
                           metadata=job.metadata)
        cases = [(f"b{b} 224x224", {"inputs": rng.standard_normal((b, 3, 224, 224)).astype(np.float32)}) for b in (1, 8)]
        r, why = bench_model("efficientnet-lite0", job, epath, cases, repeat)
        rows += r
        if why:
            notes["effnet_ort"] = why
        try:
            job = mobilenet_v2()
        except NacExportError as exc:  # the weights package is optional here
            notes["mobilenet_v2"] = str(exc)
        else:
            mpath2 = nac.export(job.module, job.args, tmp / "mobilenet_v2.nac", dynamic_shapes=job.dynamic_shapes,
                                metadata=job.metadata)
            cases = [("b1 224x224", {"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)})]
            r, why = bench_model("mobilenet-v2", job, mpath2, cases, repeat)
            rows += r
            if why:
                notes["mobilenet_v2_ort"] = why
        startup = start_up(mpath)
        print("start-up:", startup)
    result = {"machine": info, "results": rows, "startup_minilm": startup, "notes": notes,
              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print("\n| model | case | NAC ms | torch eager ms | ONNX Runtime ms | NAC / torch | NAC / ONNX Runtime "
          "| NAC 1 thread ms | threads speed-up | steal % |\n|---|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        ort = "n/a" if x["ort_ms"] is None else f"{x['ort_ms']:.2f}"
        vs_ort = "n/a" if x["nac_over_ort"] is None else f"{x['nac_over_ort']:.2f}"
        stolen = "n/a" if x["steal_pct"] is None else f"{x['steal_pct']:.0f}"
        print(f"| {x['model']} | {x['case']} | {x['nac_ms']:.2f} | {x['torch_ms']:.2f} | {ort} | "
              f"{x['nac_over_torch']:.2f} | {vs_ort} | {x['nac_one_thread_ms']:.2f} | {x['threads_speedup']:.2f} "
              f"| {stolen} |")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
