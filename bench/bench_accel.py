"""What `nac emit` produces, per model: firmware code size (RV32 .text without the weights, picolibc
included), weight bytes, arena vs. the naive sum of all
activations, instructions retired on RV32 (QEMU, `-icount shift=0`), and the host build's run
time beside the engine's on the same input, and RV64 instructions retired without and with the
vector extension (``--rvv``, QEMU ``-cpu rv64,v=true,vlen=128``).

    python bench/bench_accel.py [--json bench/results/accel.json] [--no-minilm]

Every emitted program is first checked against the engine (max relative error ≤ 1e-4). Host times
are the fastest of 20 runs inside the program (``NAC_REPEAT``, its own clock, excluding file I/O)
for two builds: the fast one (``make FAST=1 OPENMP=1``, the default: tiled, vectorised kernels
over as many OpenMP threads as the engine uses) and the plain portable loops (``FAST=0
OPENMP=0``, what the RISC-V cores run). The engine time is the median of 20 runs in this
process, after a warm-up; the ratio is fast C / engine (below 1.0: the C program is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")  # what `import nac` sets when it loads numpy first

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def engine_ms(model, inputs) -> float:
    model.run(inputs)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        model.run(inputs)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def measure(name: str, path: Path, work: Path, shapes=None, inputs=None) -> dict:
    import nac
    from nac.accel import verify
    from nac.accel.verify import example_inputs

    from nac.engine.threads import num_threads

    m = nac.load(path)
    rv, rv_res = verify(m, "riscv32", shapes=shapes, out_dir=work / f"{name}-rv32", inputs=inputs)
    xs = inputs if inputs is not None else example_inputs(m, rv)
    env = {"NAC_REPEAT": 20, "OMP_NUM_THREADS": num_threads()}
    host, host_res = verify(m, "host", shapes=shapes, out_dir=work / f"{name}-host", inputs=xs, env=env)
    _, plain_res = verify(m, "host", shapes=shapes, out_dir=work / f"{name}-plain", inputs=xs, env=env,
                          make_vars={"FAST": 0, "OPENMP": 0})
    _, rv64 = verify(m, "riscv64", shapes=shapes, out_dir=work / f"{name}-rv64", inputs=xs)
    _, rvv = verify(m, "riscv64", shapes=shapes, out_dir=work / f"{name}-rvv", inputs=xs, rvv=True)
    import subprocess

    sizes = subprocess.run(["riscv64-unknown-elf-size", "-B", str(rv.folder / f"{rv.name}.elf")], capture_output=True,
                           text=True, check=True).stdout.splitlines()[1].split()
    text, data, bss = (int(x) for x in sizes[:3])
    return {"model": name, "dims": rv.dims, "steps": rv.steps, "elf_file_bytes": rv_res.elf_bytes,
            "code_bytes": text - rv.weight_bytes, "data_bytes": data, "bss_bytes": bss,
            "weight_bytes": rv.weight_bytes, "arena_bytes": rv.arena_bytes, "naive_activation_bytes": rv.naive_bytes,
            "rv32_instret": rv_res.instret, "host_ms": host_res.time_ns / 1e6, "host_plain_ms": plain_res.time_ns / 1e6,
            "engine_ms": engine_ms(m, xs), "threads": num_threads(), "rv64_instret": rv64.instret,
            "rv64_rvv_instret": rvv.instret,
            "max_rel_err": max(rv_res.max_rel_err + host_res.max_rel_err + plain_res.max_rel_err + rv64.max_rel_err
                               + rvv.max_rel_err)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-minilm", action="store_true")
    args = ap.parse_args()
    import torch

    import nac
    from accel_zoo import ZOO, build

    rows = []
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        for name in ZOO:
            module, ex, dyn = build(name)
            path = nac.export(module.eval(), ex, work / f"{name}.nac", dynamic_shapes=dyn)
            rows.append(measure(name, path, work))
        if not args.no_minilm:
            from nac.apps.sources import minilm
            job = minilm()
            path = nac.export(job.module, job.args, work / "minilm.nac", kwargs=job.kwargs,
                              dynamic_shapes=job.dynamic_shapes, metadata=job.metadata)
            ids = np.array([[101, 1037, 2158, 2003, 5983, 2833, 1012, 102]])
            rows.append(measure("minilm (seq 8)", path, work, {"batch": 1, "seq": 8}, [ids, np.ones_like(ids)]))
    print(f"{'model':<16} {'code':>8} {'weights':>12} {'arena':>10} {'naive':>11} {'RV32 instret':>14} "
          f"{'C fast ms':>10} {'C plain ms':>10} {'engine ms':>10} {'fast/engine':>11}")
    for r in rows:
        print(f"{r['model']:<16} {r['code_bytes']:>8,} {r['weight_bytes']:>12,} {r['arena_bytes']:>10,} "
              f"{r['naive_activation_bytes']:>11,} {r['rv32_instret']:>14,} {r['host_ms']:>10.3f} "
              f"{r['host_plain_ms']:>10.3f} {r['engine_ms']:>10.3f} {r['host_ms'] / r['engine_ms']:>11.2f}")
    print(f"{platform.processor() or platform.machine()}, {rows[0]['threads']} threads")
    print(f"\n{'model':<16} {'RV64 instret':>14} {'RV64+RVV instret':>17} {'RVV / plain':>11}")
    for r in rows:
        print(f"{r['model']:<16} {r['rv64_instret']:>14,} {r['rv64_rvv_instret']:>17,} "
              f"{r['rv64_rvv_instret'] / r['rv64_instret']:>11.2f}")
    print(f"torch {torch.__version__}; all outputs within {max(r['max_rel_err'] for r in rows):.2g} of the engine")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
