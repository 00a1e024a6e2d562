"""TISA vs Hugging Face ``tokenizers``: single-threaded encode throughput on the 100k-line corpus,
and what the tokenizer adds to a warm ``nac run`` start.

    python bench/bench_tokenizer.py [--threads=N] [--json bench/results/tokenizer.json]

Both run in this process on one thread (``RAYON_NUM_THREADS=1`` and ``NAC_NUM_THREADS=1``, set
before either is imported), or on ``N`` with ``--threads=N`` (each tokenizer's ``encode_batch``
then splits a batch over its threads). Throughput is reported for whole-corpus batches
(``encode_batch`` in batches of 1,000 lines) and for one ``encode`` call per line, in MB/s of UTF-8 input and tokens/s, with the ratio
TISA / tokenizers (above 1.0 means TISA is faster). Start-up: two fresh processes with a warm
Numba cache load real MiniLM and embed two sentences, then time loading the file's TISA
tokenizer and encoding the sentences: what the tokenizer adds to a `nac run`.
"""
from __future__ import annotations

import os
import sys

#: threads for both tokenizers: read here, before either library is imported and reads its variable
THREADS = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--threads=")), 1)
os.environ["RAYON_NUM_THREADS"] = os.environ["NAC_NUM_THREADS"] = str(THREADS)
os.environ["TOKENIZERS_PARALLELISM"] = "true" if THREADS > 1 else "false"

import argparse  # noqa: E402
import json  # noqa: E402
import lzma  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "tokenizer_vm"))


def corpus() -> list[str]:
    with lzma.open(ROOT / "tests" / "data" / "corpus.jsonl.xz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def throughput(name: str, ref, ours, lines: list[str], repeat: int) -> dict:
    mb = sum(len(s.encode()) for s in lines) / 1e6
    ntok = sum(len(e.ids) for e in ref.encode_batch(lines))
    batches = [lines[i:i + 1000] for i in range(0, len(lines), 1000)]
    ours.encode_batch(lines[:100])  # compile / load the kernels
    out = {"tokenizer": name, "lines": len(lines), "MB": round(mb, 2), "tokens": ntok}
    for mode, r_fn, o_fn in (
            ("batch", lambda: [ref.encode_batch(b) for b in batches], lambda: [ours.encode_batch(b) for b in batches]),
            ("per-line", lambda: [ref.encode(s) for s in lines], lambda: [ours.encode(s) for s in lines])):
        tr, to = best_of(r_fn, repeat), best_of(o_fn, repeat)
        out[mode] = {"tokenizers_MB_s": round(mb / tr, 2), "tisa_MB_s": round(mb / to, 2),
                     "tokenizers_Mtok_s": round(ntok / tr / 1e6, 3), "tisa_Mtok_s": round(ntok / to / 1e6, 3),
                     "ratio": round(tr / to, 2)}
    return out


START = r"""
import sys, time, numpy as np
t0 = time.perf_counter()
import nac
m = nac.load(sys.argv[1])
ids = np.array(eval(sys.argv[2])); mask = np.ones_like(ids)
m.run({"input_ids": ids, "attention_mask": mask})  # the engine's start (Numba's own start-up included)
t1 = time.perf_counter()
enc = m.tokenizer.encode_batch(["A man is eating food.", "A man is riding a horse."])
t2 = time.perf_counter()
assert [e.ids for e in enc] == ids.tolist()
print(t1 - t0, t2 - t1)
"""


def start_up(repeat: int) -> dict:
    """In fresh processes with a warm Numba cache: the time to load real MiniLM and embed two
    sentences from ids, then the time the tokenizer takes to load and encode them (median)."""
    import nac
    from nac.apps.sources import minilm

    with tempfile.TemporaryDirectory() as d:
        job = minilm()
        path = nac.export(job.module, job.args, Path(d) / "minilm.nac", kwargs=job.kwargs,
                          dynamic_shapes=job.dynamic_shapes, metadata=job.metadata, tokenizer=job.tokenizer)
        pre = repr([e.ids for e in nac.load(path).tokenizer.encode_batch(["A man is eating food.", "A man is riding a horse."])])
        engine, tokenizer = [], []
        # as an installed NAC runs: bytecode cached (these machines set PYTHONDONTWRITEBYTECODE)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "NAC_NUM_THREADS")}
        for i in range(repeat + 1):  # the first run warms the Numba and bytecode caches
            out = subprocess.run([sys.executable, "-c", START, str(path), pre], capture_output=True, text=True,
                                 check=True, env=env)
            a, b = map(float, out.stdout.split())
            if i:
                engine.append(a)
                tokenizer.append(b)
        return {"engine_start_s": round(statistics.median(engine), 3),
                "tokenizer_adds_ms": round(1e3 * statistics.median(tokenizer), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--threads", type=int, default=1, help="threads for both tokenizers (give it as --threads=N)")
    args = ap.parse_args()
    from conftest import build_reference  # the same references the parity tests use

    from nac.tokenizer_vm import Tokenizer, compile_tokenizer

    lines = corpus()
    report = {"machine": {"cpu": _cpu(), "python": sys.version.split()[0], "threads": THREADS,
                          "tokenizers": __import__("tokenizers").__version__}, "results": []}
    with tempfile.TemporaryDirectory() as d:
        for name in ("wordpiece", "gpt2"):
            ref = build_reference(name, lines, Path(d))
            ours = Tokenizer(compile_tokenizer(ref.to_str()))
            r = throughput(name, ref, ours, lines, args.repeat)
            report["results"].append(r)
            print(f"{name:>10}: {r['lines']} lines, {r['MB']} MB, {r['tokens']:,} tokens")
            for mode in ("batch", "per-line"):
                x = r[mode]
                print(f"  {mode:>9}: tokenizers {x['tokenizers_MB_s']:6.2f} MB/s {x['tokenizers_Mtok_s']:6.3f} Mtok/s | "
                      f"TISA {x['tisa_MB_s']:6.2f} MB/s {x['tisa_Mtok_s']:6.3f} Mtok/s | TISA/tokenizers {x['ratio']:.2f}x")
        report["start_up"] = start_up(max(args.repeat, 5))
        s = report["start_up"]
        print(f"start-up (warm cache, fresh processes): engine {s['engine_start_s']:.3f} s to the first MiniLM "
              f"result; loading the tokenizer and encoding adds {s['tokenizer_adds_ms']} ms")
    print("machine:", json.dumps(report["machine"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
