"""Encoder-decoder generation speed: NAC vs torch eager (transformers ``generate``) in one
process, same thread count, on a T5-small-sized model (random init: 6 + 6 layers, d_model 512,
8 heads, d_ff 2048, vocabulary 32,128; no weights needed).

Reports the encoder time for a 32-token input, greedy decode tokens/s (64 new tokens, EOS
suppressed with ``min_new_tokens``) and 4-beam decode tokens/s, with the ratio NAC / torch, the
machine, and the OpenBLAS settings it ran under. Writes ``bench/results/seq2seq.json``.

    python bench/bench_seq2seq.py [--threads 2] [--new-tokens 64] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")  # what `import nac` sets when it loads numpy first

import numpy as np


def _machine() -> dict:
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "?")
    return {"cpu": model, "avx512": " avx512f " in flags, "cores": os.cpu_count(), "python": platform.python_version(),
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)")}


def median_seconds(fn, repeat: int) -> float:
    """The median wall time of ``repeat`` calls of ``fn``, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import torch
    import transformers

    import nac
    from nac.apps.seq2seq import seq2seq
    from nac.compile.export import compile_methods
    from nac.format.container import write_nac

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                                decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    hf = transformers.T5ForConditionalGeneration(cfg).eval()
    job = seq2seq(hf, "t5-small-random")
    with tempfile.TemporaryDirectory() as tmp:
        graphs, meta = compile_methods(job.methods, metadata=job.metadata)
        m = nac.load(write_nac(Path(tmp) / "t5.nac", graphs, meta))
        rng = np.random.default_rng(0)
        ids = np.concatenate([rng.integers(3, 32000, (1, 31)), [[1]]], 1)
        mask = np.ones_like(ids)
        n = args.new_tokens

        def timed(fn) -> float:
            return median_seconds(fn, args.repeat)

        rows = {}
        t_enc_nac = timed(lambda: m.run({"input_ids": ids, "attention_mask": mask}))
        with torch.no_grad():
            t_enc_hf = timed(lambda: hf.get_encoder()(input_ids=torch.from_numpy(ids)))
        rows["encoder, 32 tokens (ms)"] = (t_enc_nac * 1e3, t_enc_hf * 1e3)
        for label, kw in (("greedy", {}), ("4 beams", {"num_beams": 4})):
            t_nac = timed(lambda: m.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw))
            with torch.no_grad():
                t_hf = timed(lambda: hf.generate(torch.from_numpy(ids), max_new_tokens=n, min_new_tokens=n,
                                                 do_sample=False, **kw))
            rows[f"{label} decode, {n} tokens (tokens/s)"] = (n / t_nac, n / t_hf)
    out = {"machine": _machine(), "threads": args.threads, "rows": {k: {"nac": a, "torch": b} for k, (a, b) in rows.items()}}
    print(json.dumps(out["machine"]))
    print(f"{'work':<36} {'NAC':>10} {'torch':>10} {'NAC/torch':>10}")
    for k, (a, b) in rows.items():
        ratio = a / b if "tokens/s" in k else b / a  # > 1: NAC faster
        print(f"{k:<36} {a:>10.1f} {b:>10.1f} {ratio:>9.2f}x")
    Path(__file__).with_name("results").mkdir(exist_ok=True)
    Path(__file__).with_name("results").joinpath("seq2seq.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
