"""Quantised kernels vs numpy float32, in one process, and what LLVM made of their inner loops.

    python bench/bench_quant.py [--quick] [--json bench/results/quant.json]

Matrix-vector (decode, M=1) and matrix-matrix (M=64) products for a 4096x4096 weight and GPT-2
124M's shapes: numpy float32 (BLAS, its default threads) vs NAC int8 (W8A32), ternary (W1.58A32),
int8 with int8 activations (W8A8) and ternary with int8 activations (W1.58A8), all through the
engine's kernel entry point with the engine's thread policy. Reports median microseconds and the
speed-up over numpy, plus the count of AVX-512 (zmm), VNNI (vpdpbusd, vpdpwssd) and permute
(vpermd/vpermps, the table lookups) instructions in each kernel's machine code.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")  # what `import nac` sets when it loads numpy first

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_models import interleaved, machine  # noqa: E402

from nac.engine.kernels import quant as Q  # noqa: E402
from nac.format.quant import pack_ternary_rows, quantize_int8, quantize_ternary  # noqa: E402

SHAPES = {"4096x4096": (4096, 4096), "gpt2 attn.c_attn 768->2304": (2304, 768),
          "gpt2 mlp.c_fc 768->3072": (3072, 768), "gpt2 mlp.c_proj 3072->768": (768, 3072)}


def median_us(fn, repeat):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e6


def asm_report() -> dict:
    import numba

    out = {}
    for name in ("gemv_int8", "gemv_ternary", "gemv_ternary_lut", "gemm_int8_a8", "gemm_ternary_a8"):
        if not getattr(Q, name).signatures:  # not used on this machine (e.g. no AVX-512)
            continue
        fn = getattr(Q, name)
        # kernels loaded from the on-disk cache carry no assembly: recompile, uncached, for the
        # signatures the benchmark used
        fresh = numba.njit(nogil=True, fastmath=fn.targetoptions.get("fastmath", False))(fn.py_func)
        for sig in fn.signatures:
            fresh.compile(sig)
        text = "\n".join(fresh.inspect_asm().values())
        out[name] = {"zmm": len(re.findall(r"%zmm", text)), "ymm": len(re.findall(r"%ymm", text)),
                     "vpdpbusd": len(re.findall(r"vpdpbusd", text)), "vpmaddubsw": len(re.findall(r"vpmaddubsw", text)),
                     "vpmaddwd": len(re.findall(r"vpmaddwd", text)), "vpdpwssd": len(re.findall(r"vpdpwssd", text)),
                     "vpermd/vpermps": len(re.findall(r"vperm[dp]s?\b", text)),
                     "vfmadd": len(re.findall(r"vfmadd", text))}
    return out


def bench_minilm(repeat: int) -> list[dict]:
    """MiniLM float32 vs int8 (and int8+a8) .nac files: size and latency on the same inputs, in
    alternating rounds (`bench_models.interleaved`)."""
    import tempfile

    import nac
    from nac.apps.sources import minilm

    job = minilm()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for q in (None, "int8", "int8+a8"):
            path = nac.export(job.module, job.args, Path(tmp) / f"minilm-{q}.nac", kwargs=job.kwargs,
                              dynamic_shapes=job.dynamic_shapes, metadata=job.metadata, quantize=q)
            models[q or "fp32"] = (nac.load(path), path.stat().st_size)
        rng = np.random.default_rng(0)
        for b, s in [(1, 16), (1, 128)]:
            feeds = {"input_ids": rng.integers(1000, 29000, (b, s)), "attention_mask": np.ones((b, s), np.int64)}
            row = {"case": f"b{b} seq{s}"}
            times = interleaved({name: (lambda m=m: m.run(feeds)) for name, (m, _) in models.items()}, max(10, repeat))
            for name, (m, size) in models.items():
                row[f"{name}_ms"] = round(times[name], 2)
                row[f"{name}_MB"] = round(size / 1e6, 1)
            out.append(row)
            print("minilm", json.dumps(row), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "quant.json")
    args = ap.parse_args()
    repeat = 10 if args.quick else 50
    rng = np.random.default_rng(0)
    rows = []
    print(json.dumps(machine(), indent=1))
    for label, (n, k) in SHAPES.items():
        w = rng.standard_normal((n, k)).astype(np.float32)
        q8, s8 = quantize_int8(w)
        t, st = quantize_ternary(w)
        weights = {"int8": Q.QTensor("int8", q8, s8, (n, k)),
                   "ternary": Q.QTensor("ternary", pack_ternary_rows(t), st, (n, k))}
        for m in (1, 64):
            x = rng.standard_normal((m, k)).astype(np.float32)
            y = np.empty((m, n), np.float32)
            t_np = median_us(lambda: np.matmul(x, w.T, out=y), repeat)
            row = {"shape": label, "M": m, "numpy_fp32_us": round(t_np, 1)}
            for scheme, qt in weights.items():
                for act in ("none", "int8"):
                    key = scheme + ("+a8" if act == "int8" else "")
                    tq = median_us(lambda: Q.quant_matmul(x, qt, y, act), repeat)
                    row[f"{key}_us"] = round(tq, 1)
                    row[f"{key}_speedup"] = round(t_np / tq, 2)
            rows.append(row)
            print(f"{label:<28} M={m:<3} numpy {t_np:9.1f} us | " + " | ".join(
                f"{s} {row[s + '_us']:8.1f} us ({row[s + '_speedup']:.2f}x)"
                for s in ("int8", "ternary", "int8+a8", "ternary+a8")), flush=True)
    model_rows = bench_minilm(repeat)
    asm = asm_report()
    print("machine code of the kernels (instruction counts):", json.dumps(asm, indent=1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine(), "results": rows, "minilm": model_rows, "asm": asm,
                                     "when": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
