"""The `nac` command: export models to `.nac`, run them, and inspect them.

    nac export minilm -o minilm.nac
    nac run minilm.nac "A man is eating food." "A man eats a meal." "The sky is blue."
    nac info minilm.nac
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from nac.errors import NacError

EPILOG = """examples:
  nac export efficientnet-lite0 -o effnet.nac     # the packaged real ImageNet model
  nac run effnet.nac photo.jpg                    # top-5 labels with probabilities
  nac export minilm -o minilm.nac                 # the packaged sentence encoder
  nac run minilm.nac "first sentence" "second"    # embeddings' cosine similarities
  nac export ./my-hf-model -o m.nac --task feature-extraction
  nac export mypkg.models:build -o m.nac          # build() returns (module, example_args)
  nac info m.nac                                  # sections, inputs, ops, parameters
  nac export ./bert-mlm -o mlm.nac                # a ...ForMaskedLM folder: fill-mask
  nac run mlm.nac "Paris is the [MASK] of France."
  nac export ./sentiment -o cls.nac               # a ...ForSequenceClassification folder
  nac run cls.nac --file reviews.txt              # label and probability per line
  nac export ./gpt2-dir -o gpt2.nac               # a causal LM folder: text generation with a KV cache
  nac run gpt2.nac "Once upon a time" -n 50 --stats
  nac emit minilm.nac --target riscv32 -o fw --shape seq=8 --verify   # C firmware, run under QEMU
  nac reconstruct minilm.nac                      # the graph as pseudo-code (--torch: a PyTorch module)
  nac visualize minilm.nac -o minilm.svg          # a picture (.mmd Mermaid, .svg, .png), collapsed by module
  nac ir minilm.nac -o minilm.ir.json             # the graph and weight table as JSON (no weight data)
  nac export ./llama-dir -o l.nac --weights none  # no weights read: every parameter's name, dtype, shape
  nac bind l.nac ./llama-dir/model.safetensors -o bound.nac    # fill them (checked), then optimise
  nac export minilm -o m.nac --bundle-inputs 3    # carry 3 inputs with torch's outputs in the file
  nac verify m.nac                                # replay them here; exit status 1 if any output differs
  nac zoo zoo.toml -o reports/                    # compile, verify and report a list of models
  nac serve minilm.nac smollm2.nac --port 8080    # OpenAI-compatible HTTP API and a web page
  nac batch minilm.nac corpus.jsonl -o emb.parquet [--ray [ADDRESS]]   # a corpus through a model
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nac", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Compile PyTorch models into one portable .nac file and run them without PyTorch.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    e = sub.add_parser("export", help="compile a model into a .nac file (needs torch)",
                       description="Compile a model into a .nac file. SOURCE is a packaged model name "
                                   "(minilm, efficientnet-lite0), a Hugging Face model folder, or a Python "
                                   "factory 'module:function' returning (module, example_args[, options]).")
    e.add_argument("source", metavar="SOURCE")
    e.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.nac", help="file to write")
    e.add_argument("--task", help="pipeline task: feature-extraction, image-classification, fill-mask, "
                                  "text-classification, text-generation, token-classification, "
                                  "zero-shot-classification, zero-shot-image-classification, "
                                  "image-feature-extraction, question-answering, (T5, BART) translation, "
                                  "summarization, text2text-generation, or (a diffusers folder) text-to-image "
                                  "(default: from the model's "
                                  "architecture; zero-shot-classification must be asked for)")
    e.add_argument("--weights", choices=["inline", "external", "none"], default="inline",
                   help="store parameters inside the file (default), in OUT.safetensors beside it, or not at all "
                        "(none: a Hugging Face folder is built from its config without reading weights; "
                        "`nac bind` fills them later)")
    e.add_argument("--bundle-inputs", type=int, default=0, metavar="N",
                   help="store N example inputs with the model's own outputs, for `nac verify` to replay")
    e.add_argument("--no-optimize", action="store_true", help="skip the graph optimisation passes")
    e.add_argument("--quantize", choices=["int8", "ternary", "int8+a8", "ternary+a8"],
                   help="store weights as int8 (per output channel) or 2-bit ternary (BitNet b1.58 absmean; "
                        "embeddings and the output layer stay int8); +a8 also quantises activations per token")

    r = sub.add_parser("run", help="run a .nac model on inputs",
                       description="Run a model; what INPUT means depends on the task in the file: image paths "
                                   "(image-classification), texts (feature-extraction, fill-mask with the model's "
                                   "mask token, text-classification), or .npy files (optionally NAME=file.npy) for "
                                   "any other model. For text tasks, '-' reads one text per line from stdin.")
    r.add_argument("model", type=Path, metavar="MODEL.nac")
    r.add_argument("inputs", nargs="*", metavar="INPUT")
    r.add_argument("--file", type=Path, help="text tasks: read one text per line from this file")
    g = r.add_argument_group("text generation")
    g.add_argument("-n", "--max-new-tokens", type=int, default=50, help="tokens to generate (default 50)")
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold in (0, 1]")
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--num-beams", type=int, default=None, help="beam search with this many beams")
    g.add_argument("--no-repeat-ngram-size", type=int, default=None, help="forbid repeating n-grams of this size")
    g.add_argument("--seed", type=int, help="random seed for sampling")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop once the completion contains TEXT (repeatable)")
    g.add_argument("--stats", action="store_true", help="print prefill and decode speed")
    d = r.add_argument_group("text-to-image")
    d.add_argument("--steps", type=int, default=None, help="denoising steps (default: the file's, 50)")
    d.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default 7.5)")
    d.add_argument("--negative", default=None, metavar="TEXT", help="negative prompt")
    d.add_argument("--scheduler", choices=["ddim", "euler", "pndm", "dpmsolver++"], help="default: the file's")
    d.add_argument("--height", type=int, help="image height in pixels")
    d.add_argument("--width", type=int, help="image width in pixels")
    z = r.add_argument_group("token classification and zero-shot")
    z.add_argument("--aggregation", choices=["none", "simple", "first", "average", "max"], default="simple",
                   help="token-classification: how tokens are grouped into entities (default simple)")
    z.add_argument("--labels", help="zero-shot: candidate labels, comma-separated")
    z.add_argument("--template", help="zero-shot: hypothesis template with {} for the label")
    z.add_argument("--multi-label", action="store_true", help="zero-shot-classification: score labels independently")
    z.add_argument("--pool", action="store_true", help="image-feature-extraction: the pooled output")
    z.add_argument("--question", help="question-answering: the question; the INPUTs are contexts")
    r.add_argument("-k", "--top-k", type=int, default=None,
                   help="classes or fillers to show (default 5); with --sample, sample from the k most likely tokens")
    r.add_argument("-o", "--out", type=Path, default=Path("nac-out"),
                   help="folder for .npy outputs; text-to-image: an image file (.png, .jpg) or a folder")
    r.add_argument("--embeddings", action="store_true", help="print embedding vectors, not similarities")
    r.add_argument("--json", action="store_true", help="print JSON")

    em = sub.add_parser("emit", help="emit a .nac model as a C project (bare-metal RISC-V or host)",
                        description="Write a C project (kernels, static arena, weights, linker script, Makefile "
                                    "with all/run/clean) computing the model; --verify builds it, runs it (QEMU for "
                                    "RISC-V) and compares its outputs with the engine.")
    em.add_argument("model", type=Path, metavar="MODEL.nac")
    em.add_argument("--target", choices=["host", "riscv32", "riscv64"], default="riscv32")
    em.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="project folder (replaced)")
    em.add_argument("--shape", action="append", default=[], metavar="NAME=VALUE",
                    help="fix a symbolic dimension (default: the export's example size)")
    em.add_argument("--offload", choices=["none", "acalsim"], default="none",
                    help="acalsim: matrix products and convolutions on the ACALSim compute device (MMIO)")
    em.add_argument("--register-map", default="scalar", metavar="NAME|FILE.json",
                    help="ACALSim register layout: 'scalar', 'command', or a JSON file (see accel/ACALSIM.md)")
    em.add_argument("--name", help="C name prefix (default: the file's stem)")
    em.add_argument("--rvv", action="store_true",
                    help="riscv64: kernels for the RISC-V vector extension 1.0 (built with clang; QEMU runs them "
                         "with -cpu rv64,v=true)")
    em.add_argument("--verify", action="store_true", help="build, run and compare with the engine")
    em.add_argument("--json", action="store_true", help="print the report as JSON")

    rc = sub.add_parser("reconstruct", help="print the graph as pseudo-code, or write it as a PyTorch module",
                        description="One line per node with its output shape, grouped by the module it came from; "
                                    "--torch writes a runnable torch.nn.Module source file that loads the file's "
                                    "weights (quantised ones dequantised) and reproduces its outputs.")
    rc.add_argument("model", type=Path, metavar="MODEL.nac")
    rc.add_argument("--torch", action="store_true", help="write PyTorch module source instead of pseudo-code")
    rc.add_argument("-o", "--output", type=Path, metavar="FILE", help="write to FILE (default: stdout)")

    vz = sub.add_parser("visualize", help="draw the graph (Mermaid, SVG, PNG)",
                        description="Nodes labelled with op and output shape, weights as dashed inputs; graphs "
                                    "with more than --max-nodes nodes are collapsed by module.")
    vz.add_argument("model", type=Path, metavar="MODEL.nac")
    vz.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                    help="graph.mmd (Mermaid), graph.md, graph.svg, graph.png or graph.dot")
    vz.add_argument("--max-nodes", type=int, default=60, metavar="N",
                    help="collapse by module when the graph has more nodes than this (default 60)")
    vz.add_argument("--collapse", type=int, metavar="DEPTH", help="collapse at this module depth (1 = top level)")
    vz.add_argument("--no-weights", action="store_true", help="do not draw weights")

    ir = sub.add_parser("ir", help="write the graph and weight table as JSON, or check such a document",
                        description="The IR document: the graph section, the weight table (names, shapes, dtypes, "
                                    "state_dict keys, byte offsets; no data) and the metadata. --check validates "
                                    "an IR or graph JSON document and lists every problem.")
    ir.add_argument("model", type=Path, metavar="MODEL.nac|DOC.json")
    ir.add_argument("-o", "--output", type=Path, metavar="OUT.json", help="write to OUT.json (default: stdout)")
    ir.add_argument("--check", action="store_true", help="validate a JSON document (exit status 1 if invalid)")

    bd = sub.add_parser("bind", help="fill a weight-free export with weights",
                        description="Read WEIGHTS (.safetensors, a sharded .safetensors.index.json, a folder, or a "
                                    "state_dict .bin/.pt), check every name, shape and dtype against MODEL.nac "
                                    "(exported with --weights none), then optimise and quantise as the export asked.")
    bd.add_argument("model", type=Path, metavar="MODEL.nac")
    bd.add_argument("weights", type=Path, metavar="WEIGHTS")
    bd.add_argument("-o", "--output", type=Path, required=True, metavar="BOUND.nac")
    bd.add_argument("--quantize", choices=["none", "int8", "ternary", "int8+a8", "ternary+a8"],
                    help="quantise now (default: what the export asked for)")
    bd.add_argument("--allow-unexpected", action="store_true", help="ignore weights the model does not use")
    bd.add_argument("--weights-layout", choices=["inline", "external"], default="inline")

    vf = sub.add_parser("verify", help="check the engine's outputs against bundled or live references",
                        description="Replay the test vectors stored in the file (nac export --bundle-inputs N), or "
                                    "compare with a live torch model (--reference), and print per output the shape, "
                                    "max/mean absolute and max relative difference. Exit status 1 on a failure.")
    vf.add_argument("model", type=Path, metavar="MODEL.nac")
    vf.add_argument("--reference", metavar="SOURCE", help="a packaged model name, a Hugging Face folder or "
                                                         "module:factory to run with torch on fresh inputs")
    vf.add_argument("--task", help="the task to build --reference for (default: the file's)")
    vf.add_argument("--tolerance", type=float, help="relative to each output's scale (default: bundled, or 1e-4)")
    vf.add_argument("--cases", type=int, default=3, help="fresh inputs to try with --reference (default 3)")
    vf.add_argument("--json", action="store_true", help="print the report as JSON")

    zo = sub.add_parser("zoo", help="compile, verify and report a list of models",
                        description="Compile every entry of ZOO.toml (packaged names, Hugging Face folders, "
                                    "module:function factories), verify each against its reference, keep going past "
                                    "failures, and write OUT/registry.json, OUT/SUMMARY.md and one OUT/NAME.md each.")
    zo.add_argument("zoo", type=Path, metavar="ZOO.toml")
    zo.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="folder for files and reports")
    zo.add_argument("--only", action="append", default=[], metavar="NAME", help="compile only these entries")

    sv = sub.add_parser("serve", help="serve models over HTTP (OpenAI-compatible API and a web page)",
                        description="Serve .nac files (each named by its file's stem): /v1/chat/completions and "
                                    "/v1/completions (text generation), /v1/embeddings, /v1/classify, /v1/fill-mask, "
                                    "/v1/models, /health, /metrics, and a web page at /. Needs nac[serve].")
    sv.add_argument("models", type=Path, nargs="+", metavar="MODEL.nac")
    sv.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--api-key", help="require Authorization: Bearer KEY (default: the NAC_API_KEY variable, if set)")
    sv.add_argument("--max-queue", type=int, default=64, metavar="N", help="requests admitted at once before 503")
    sv.add_argument("--threads", type=int, default=4, metavar="N", help="engine worker threads")
    sv.add_argument("--parallel", type=int, default=2, metavar="N",
                    help="generations in progress at once, each with its own KV cache (they take turns per step)")
    sv.add_argument("--timeout", type=float, default=300, metavar="SECONDS", help="per-request time limit")
    sv.add_argument("--max-body-mb", type=float, default=16, metavar="MB", help="request body limit")

    bt = sub.add_parser("batch", help="run a model over a corpus (local processes or a Ray cluster)",
                        description="INPUT: a .jsonl file (objects with a text column, or JSON strings), a text file "
                                    "(one text per line), a .parquet file, or a folder of images. Writes OUT.parquet "
                                    "(with --ray: a folder of Parquet parts). Needs pyarrow; --ray needs nac[scale].")
    bt.add_argument("model", type=Path, metavar="MODEL.nac")
    bt.add_argument("input", type=Path, metavar="INPUT")
    bt.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.parquet")
    bt.add_argument("--batch-size", type=int, default=64, metavar="N")
    bt.add_argument("--workers", type=int, metavar="N", help="processes (or Ray actors; default: the CPU count)")
    bt.add_argument("--column", default="text", help="the input text column (default: text)")
    bt.add_argument("--max-new-tokens", type=int, default=32, help="text generation: tokens per completion")
    bt.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                    help="run on Ray: a local cluster, 'auto', or ray://HOST:PORT (RAY_ADDRESS is honoured)")

    i = sub.add_parser("info", help="describe a .nac file", description="Header, sections, inputs and outputs "
                       "with symbolic shapes, op histogram, parameters, metadata.")
    i.add_argument("model", type=Path, metavar="MODEL.nac")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--tokenizer", action="store_true", help="print the TISA tokenizer program (disassembly)")
    i.add_argument("--plan", action="store_true",
                   help="print the memory plan: each step's op, inputs and outputs, and where each value lives "
                        "(arena offset, bytes, shape, strides, live range)")
    i.add_argument("--method", help="with --plan: the method to plan (default: the first)")
    i.add_argument("--shape", action="append", default=[], metavar="NAME=VALUE",
                   help="with --plan: fix a symbolic dimension (default: the export's example size)")
    return p


def cmd_export(args) -> int:
    from tqdm import tqdm

    from nac.apps.sources import resolve
    from nac.compile.export import attach_tokenizer, compile_graph
    from nac.format.container import write_nac

    if args.weights == "none":
        return _export_without_weights(args)
    with tqdm(total=5 + bool(args.bundle_inputs), desc="loading model", unit="step", file=sys.stderr, disable=None,
              bar_format="{desc:<28} {bar:20} {n_fmt}/{total_fmt} [{elapsed}]") as bar:
        job = resolve(args.source, args.task)
        blob = attach_tokenizer(job.tokenizer, job.metadata)

        def stage(name: str) -> None:
            bar.update()
            bar.set_description(name)

        if job.methods:
            from nac.compile.export import compile_methods

            if args.bundle_inputs:
                raise NacError("--bundle-inputs is for single-graph models; this one has methods "
                               f"{list(job.methods)}")
            bar.total += 2 * len(job.methods) - 1
            graphs, meta = compile_methods(job.methods, metadata=job.metadata, optimize_graph=not args.no_optimize,
                                           quantize=args.quantize, progress=stage)
            stage("writing")
            path = write_nac(args.output, graphs, meta, weights=args.weights, tokenizer=blob)
            stage("done")
            nodes = sum(len(g.nodes) for g in graphs.values())
            params = {n: a for g in graphs.values() for n, a in g.params.items()}
            print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB; methods {', '.join(graphs)}; {nodes} nodes; "
                  f"{sum(a.size for a in params.values()):,} stored values)")
            return 0
        graph, meta = compile_graph(job.module, job.args, kwargs=job.kwargs, dynamic_shapes=job.dynamic_shapes,
                                    metadata=job.metadata, optimize_graph=not args.no_optimize,
                                    quantize=args.quantize, progress=stage)
        vectors = None
        if args.bundle_inputs:
            from nac.apps.verify import bundle_vectors

            stage(f"bundling {args.bundle_inputs} test vectors")
            vectors = bundle_vectors(job.module, job.args, job.kwargs, graph, meta, args.bundle_inputs)
        stage("writing")
        path = write_nac(args.output, graph, meta, weights=args.weights, tokenizer=blob, test_vectors=vectors)
        stage("done")
    size = path.stat().st_size + (path.with_suffix(".safetensors").stat().st_size if args.weights == "external" else 0)
    print(f"wrote {path} ({size / 1e6:.1f} MB, {len(graph.nodes)} nodes, {graph.param_count():,} parameters)")
    return 0


def _export_without_weights(args) -> int:
    from nac.apps.sources import resolve, without_weights
    from nac.compile.export import attach_tokenizer, compile_unbound
    from nac.format.container import write_nac

    if args.bundle_inputs:
        raise NacError("--bundle-inputs needs the weights; bundle when exporting with them")
    with without_weights():
        job = resolve(args.source, args.task)
    if job.methods:
        raise NacError(f"--weights none is for single-graph models; this one has methods {list(job.methods)}")
    blob = attach_tokenizer(job.tokenizer, job.metadata)
    graph, meta = compile_unbound(job.module, job.args, kwargs=job.kwargs, dynamic_shapes=job.dynamic_shapes,
                                  metadata=job.metadata, optimize_graph=not args.no_optimize, quantize=args.quantize)
    path = write_nac(args.output, graph, meta, tokenizer=blob)
    record = meta["compile"]["unbound"]["tensors"]
    count = sum(int(__import__("math").prod(t["shape"])) for t in record.values())
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {len(graph.nodes)} nodes; {len(record)} weights, "
          f"{count:,} parameters, to fill with `nac bind`)")
    return 0


def _default_method_only(path: Path) -> None:
    """Tell the user (stderr) that a command shows only the default method of a multi-method file
    (read from the section table and the methods section alone: the command loads the file itself)."""
    from nac.format import schema
    from nac.format.container import METHODS, parse_json, read_header

    try:
        _, sections, buf, _ = read_header(path)
        s = next((s for s in sections if s.kind == METHODS), None)
        if s is None:
            return
        doc = parse_json(bytes(buf[s.offset:s.offset + s.length]), str(path))
        schema.validate(doc, "methods", str(path))
    except NacError:
        return  # the command itself reports a malformed file
    names = [m["name"] for m in doc["methods"]]  # (a methods section names at least two)
    print(f"nac: note: {path.name} has methods {', '.join(names)}; this shows the default one, {names[0]!r}",
          file=sys.stderr)


def cmd_reconstruct(args) -> int:
    from nac.apps.reconstruct import reconstruct

    _default_method_only(args.model)
    text = reconstruct(args.model, torch=args.torch)
    return _write_or_print(text, args.output)


def _write_or_print(text: str, output: Path | None) -> int:
    if output is None:
        sys.stdout.write(text)
        return 0
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise NacError(f"cannot write {output}: {exc.strerror}") from None
    print(f"wrote {output} ({len(text):,} characters)")
    return 0


def cmd_visualize(args) -> int:
    from nac.apps.visualize import render

    _default_method_only(args.model)
    path, v = render(args.model, args.output, max_nodes=args.max_nodes, collapse=args.collapse,
                     weights=not args.no_weights)
    how = f"collapsed at module depth {v.depth}" if v.depth else "every node"
    print(f"wrote {path} ({v.count() - v.count('weight')} boxes, {v.count('weight')} weight boxes; {how})")
    return 0


def cmd_ir(args) -> int:
    from nac.format.ir import to_json, validate

    if args.check:
        try:
            problems = validate(args.model.read_bytes())
        except OSError as exc:
            raise NacError(f"cannot read {args.model}: {exc.strerror}") from None
        for p in problems:
            print(p)
        print(f"{args.model}: {'valid' if not problems else f'{len(problems)} problem(s)'}", file=sys.stderr)
        return 1 if problems else 0
    _default_method_only(args.model)
    return _write_or_print(to_json(args.model) + "\n", args.output)


def cmd_bind(args) -> int:
    from nac.compile.binding import bind

    quantize = "recorded" if args.quantize is None else (None if args.quantize == "none" else args.quantize)
    path = bind(args.model, args.weights, args.output, quantize=quantize, strict=not args.allow_unexpected,
                weights_layout=args.weights_layout)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_verify(args) -> int:
    from nac.apps.verify import verify

    report = verify(args.model, reference=args.reference, task=args.task, tolerance=args.tolerance, cases=args.cases)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(f"{report.model} against {report.reference} (tolerance {report.tolerance:g} of each output's scale)")
        print(report.table())
        bad = sum(not c.passed for c in report.checks)
        print(f"{'PASS' if report.passed else 'FAIL'}: {len(report.checks) - bad} of {len(report.checks)} outputs agree")
    return 0 if report.passed else 1


def cmd_zoo(args) -> int:
    from nac.apps.zoo import run_zoo

    result = run_zoo(args.zoo, args.output, only=args.only or None)
    failed = [r for r in result if r["status"] != "ok"]
    print(f"{len(result) - len(failed)} of {len(result)} models compiled and verified; reports in {args.output}")
    return 1 if failed else 0


def cmd_serve(args) -> int:
    import os

    try:
        from nac.apps.serve import ServeConfig, serve
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise NacError('nac serve needs the serve extra: pip install "nac[serve]"') from None
    key = args.api_key or os.environ.get("NAC_API_KEY") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not key:
        print(f"nac: warning: listening on {args.host} without --api-key: anyone who can reach it may use it",
              file=sys.stderr)
    cfg = ServeConfig(host=args.host, port=args.port, api_key=key, max_queue=args.max_queue, threads=args.threads,
                      parallel=args.parallel, timeout=args.timeout, max_body=int(args.max_body_mb * (1 << 20)))
    serve(args.models, cfg)
    return 0


def cmd_batch(args) -> int:
    import time

    from nac.apps.batch import run_local, run_ray

    t0 = time.perf_counter()
    kw = dict(batch_size=args.batch_size, workers=args.workers, column=args.column, max_new_tokens=args.max_new_tokens)
    if args.ray:
        n = run_ray(args.model, args.input, args.output, address=args.ray, **kw)
    else:
        n = run_local(args.model, args.input, args.output, **kw)
    dt = time.perf_counter() - t0
    print(f"wrote {args.output} ({n:,} rows in {dt:.1f} s, {n / dt:,.0f} rows/s)")
    return 0


def cmd_run(args) -> int:
    import numpy as np

    import nac
    from nac.apps import tasks
    from nac.format.generation import TEXT2TEXT_TASKS

    model = nac.load(args.model)
    task = model.metadata.get("task")
    if task in ("feature-extraction", "fill-mask", "text-classification", "token-classification",
                "zero-shot-classification", "question-answering"):
        texts = list(args.inputs)
        if texts == ["-"]:
            texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        if args.file is not None:
            try:
                texts += [line.rstrip("\n") for line in args.file.read_text(encoding="utf-8").splitlines() if line.strip()]
            except OSError as exc:
                raise NacError(f"cannot read {args.file}: {exc.strerror}") from None
        args.inputs = texts
    if task == "text-generation":
        return _run_generation(model, args)
    if task in TEXT2TEXT_TASKS:
        return _run_text2text(model, args)
    if task == "text-to-image":
        return _run_text_to_image(model, args)
    top_k_given = args.top_k
    args.top_k = 5 if args.top_k is None else args.top_k
    if not args.inputs:
        raise NacError("no input given (pass inputs, '-' for stdin, or --file)")
    if task == "fill-mask":
        results = tasks.fill_mask(model, args.inputs, args.top_k)
        if args.json:
            print(json.dumps([[[vars(f) for f in m] for m in r] for r in results], indent=1, ensure_ascii=False))
            return 0
        for text, per_mask in zip(args.inputs, results):
            print(text)
            for k, fills in enumerate(per_mask):
                if len(per_mask) > 1:
                    print(f" mask {k + 1}:")
                for f in fills:
                    print(f"  {f.score:7.2%}  {f.token_str:<15} {f.sequence}")
        return 0
    if task in ("zero-shot-classification", "zero-shot-image-classification"):
        return _run_zero_shot(model, task, args)
    if task == "token-classification":
        from nac.apps.token_classification import classify_tokens

        results = classify_tokens(model, args.inputs, aggregation_strategy=args.aggregation)
        return _report(args, results, lambda e: f"  {e.entity:<8} {e.score:7.2%}  {e.start:>4}-{e.end:<4} {e.word}")
    if task == "question-answering":
        from nac.apps.question_answering import answer_questions

        if not args.question:
            raise NacError("question-answering needs --question 'the question'; the inputs are contexts")
        results = answer_questions(model, [args.question] * len(args.inputs), args.inputs, top_k=top_k_given or 1)
        if args.json:
            print(json.dumps([[vars(a) for a in r] for r in results], indent=1, ensure_ascii=False))
            return 0
        for answers in results:
            for a in answers:
                print(f"{a.score:7.2%}  {a.start}-{a.end}  {a.answer}")
        return 0
    if task == "image-feature-extraction":
        feats = tasks.image_features(model, args.inputs, pool=args.pool)
        if args.json:
            print(json.dumps({p: f.tolist() for p, f in zip(args.inputs, feats)}))
            return 0
        np.set_printoptions(precision=4, suppress=True, linewidth=120, threshold=12)
        for p, f in zip(args.inputs, feats):
            print(f"{p}: {'x'.join(map(str, f.shape))} {f}")
        return 0
    if task == "text-classification":
        results = tasks.classify_texts(model, args.inputs)
        if args.json:
            print(json.dumps([[vars(x) for x in r] for r in results], indent=1, ensure_ascii=False))
            return 0
        for text, labels in zip(args.inputs, results):
            print(f"{labels[0].label}\t{labels[0].score:.4f}\t{text}")
        return 0
    if task == "image-classification":
        results = tasks.classify_images(model, args.inputs, args.top_k)
        if args.json:
            print(json.dumps({p: [vars(x) for x in r] for p, r in zip(args.inputs, results)}, indent=2))
        for path, preds in ([] if args.json else zip(args.inputs, results)):
            print(path)
            for x in preds:
                print(f"  {x.probability:7.2%}  {x.label}  ({x.index})")
    elif task == "feature-extraction":
        emb = tasks.embed_sentences(model, args.inputs)
        if args.json:
            print(json.dumps({"embeddings": emb.tolist(), "cosine": tasks.cosine_matrix(emb).tolist()}))
        elif args.embeddings or len(args.inputs) == 1:
            np.set_printoptions(precision=4, suppress=True, linewidth=120, threshold=12)
            for s, v in zip(args.inputs, emb):
                print(f"{s!r}: {v.shape[0]}-d {v}")
        else:
            sims = tasks.cosine_matrix(emb)
            pairs = sorted(((sims[i, j], i, j) for i in range(len(emb)) for j in range(i + 1, len(emb))), reverse=True)
            print("cosine similarity, most similar first:")
            for s, i, j in pairs:
                print(f"  {s:+.4f}  {args.inputs[i]!r} ~ {args.inputs[j]!r}")
    else:
        for p in tasks.run_npy(model, args.inputs, args.out):
            print(f"wrote {p}")
    return 0


def _run_zero_shot(model, task: str, args) -> int:
    from nac.apps.zero_shot import classify_images_zero_shot, classify_zero_shot

    if not args.labels:
        raise NacError(f"{task} needs candidate labels: --labels 'label one, label two, ...'")
    kw = {"hypothesis_template": args.template} if args.template else {}
    if task == "zero-shot-classification":
        results = classify_zero_shot(model, args.inputs, args.labels, multi_label=args.multi_label, **kw)
        if args.json:
            print(json.dumps([vars(r) for r in results], indent=1, ensure_ascii=False))
            return 0
        for r in results:
            print(r.sequence)
            for label, score in zip(r.labels, r.scores):
                print(f"  {score:7.2%}  {label}")
        return 0
    results = classify_images_zero_shot(model, args.inputs, args.labels, **kw)
    return _report(args, results, lambda x: f"  {x.score:7.2%}  {x.label}",
                   as_json=lambda: {p: [vars(x) for x in r] for p, r in zip(args.inputs, results)})


def _report(args, results: list, line, as_json=None) -> int:
    """Print each input and one line per item of its result, or (--json) the results as JSON
    (``as_json()``, default: a list of lists of the items' fields)."""
    if args.json:
        print(json.dumps(as_json() if as_json else [[vars(x) for x in r] for r in results], indent=1,
                         ensure_ascii=False))
        return 0
    for head, items in zip(args.inputs, results):
        print(head)
        for x in items:
            print(line(x))
    return 0


def _run_generation(model, args) -> int:
    import time

    from nac.apps.generate import generate_text

    if not args.inputs:
        from nac.apps.repl import repl

        return repl(model)
    for prompt in args.inputs:
        sys.stdout.write(prompt)
        sys.stdout.flush()
        t0 = time.perf_counter()
        steps = []
        def emit(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()
            steps.append(time.perf_counter())

        text = generate_text(model, prompt, stream=emit if not (args.num_beams or 1) > 1 else None,
                             max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                             stop=args.stop, top_k=args.top_k or 0, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                             seed=args.seed, num_beams=args.num_beams, no_repeat_ngram_size=args.no_repeat_ngram_size)
        if (args.num_beams or 1) > 1:
            emit(text)
        sys.stdout.write("\n")
        if args.stats and steps:
            decode = (steps[-1] - steps[0]) / max(len(steps) - 1, 1)
            print(f"[first token after {(steps[0] - t0) * 1e3:.0f} ms; decode {1 / decode if decode else 0:.1f} "
                  f"tokens/s over {len(steps)} text chunks; {len(text)} characters]", file=sys.stderr)
    return 0


def _run_text_to_image(model, args) -> int:
    from nac.apps.text_to_image import TextToImage

    if not args.inputs:
        raise NacError("give a prompt (class-conditional models: a class label)")
    images = TextToImage(model)(list(args.inputs), negative_prompt=args.negative, num_inference_steps=args.steps,
                                guidance_scale=args.guidance, height=args.height, width=args.width, seed=args.seed,
                                scheduler=args.scheduler, progress=True)
    out = args.out
    single = out.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp")
    if single and len(images) > 1:
        raise NacError(f"{len(images)} images: give a folder for -o, not {out.name}")
    paths = [out] if single else [out / f"image-{k}.png" for k in range(len(images))]
    try:
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        for img, path in zip(images, paths):
            img.save(path)
    except (OSError, ValueError) as exc:
        raise NacError(f"cannot write {paths[0]}: {exc}") from None
    for path in paths:
        print(f"wrote {path}")
    return 0


def _run_text2text(model, args) -> int:
    from nac.apps.generate import text2text

    texts = list(args.inputs)
    if texts == ["-"]:
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise NacError("no input given (pass texts, or '-' for one text per line on stdin)")
    kw = dict(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, do_sample=args.sample or None,
              temperature=args.temperature if args.sample else None, top_p=args.top_p if args.sample else None,
              top_k=args.top_k if args.sample else None, repetition_penalty=args.repetition_penalty,
              no_repeat_ngram_size=args.no_repeat_ngram_size, seed=args.seed)
    outs = text2text(model, texts, **{k: v for k, v in kw.items() if v is not None})
    if args.json:
        print(json.dumps([o[0] for o in outs], indent=1, ensure_ascii=False))
        return 0
    for o in outs:
        print(o[0])
    return 0


def describe(path: Path) -> dict:
    """The facts `nac info` prints, as a dict (also its --json output).

    A file that fails validation is still described as far as it can be: ``valid`` is False,
    ``problem`` names what is wrong, and the sections, metadata and graph summary that did parse
    are there.

    Raises:
        NacFormatError: the file is missing or its header and section table are unreadable.
    """
    import nac
    from nac.apps.verify import bundled_status
    from nac.format.container import read_header

    path = Path(path)
    version, sections, buf, size = read_header(path)
    d = {"file": str(path), "format_version": ".".join(map(str, version)), "bytes": size, "valid": True,
         "problem": None, "sections": [{"name": s.name, "offset": s.offset, "bytes": s.length} for s in sections]}
    try:
        model = nac.load(path)
    except NacError as exc:
        d.update(valid=False, problem=str(exc), **_partial_summary(buf, sections, path))
        return d
    g, f = model.graph, model.file
    tensors = {n: a for m in model.methods.values() for n, a in m.graph.params.items()}  # shared by the methods
    param_bytes = sum(a.nbytes for a in tensors.values())
    quantised = []
    for name, v in g.values.items():
        if v.quant is not None and name not in g.param_aliases:
            n, k = v.quant["shape"]
            stored = g.params[name].nbytes + g.params[v.quant["scale"]].nbytes
            quantised.append({"name": name, "scheme": v.quant["scheme"], "shape": [n, k], "bytes": stored,
                              "float32_bytes": n * k * 4, "bits_per_weight": round(8 * stored / max(n * k, 1), 3)})
    d.update({
        "weights": "external: " + f.weights_path.name if f.weights_path else "inline",
        "inputs": [{"name": n, "dtype": dt, "shape": list(s)} for n, dt, s in model.input_spec()],
        "outputs": [{"name": n, "dtype": g.values[n].dtype, "shape": list(g.values[n].shape)} for n in g.outputs],
        "dims": g.dims,
        "ops": dict(Counter(n.op for n in g.nodes).most_common()),
        "nodes": len(g.nodes),
        "parameters": {"count": g.param_count() if len(model.methods) == 1 else int(sum(a.size for a in tensors.values())),
                       "bytes": param_bytes, "tensors": len(tensors), "shared": len(g.param_aliases)},
        "quantized": quantised,
        "passes": (model.metadata.get("compile") or {}).get("passes"),
        "methods": [{"name": name, "inputs": [{"name": n, "dtype": dt, "shape": list(s)} for n, dt, s in m.input_spec()],
                     "outputs": [{"name": n, "dtype": m.graph.values[n].dtype, "shape": list(m.graph.values[n].shape)}
                                 for n in m.graph.outputs],
                     "nodes": len(m.graph.nodes), "ops": dict(Counter(n.op for n in m.graph.nodes).most_common())}
                    for name, m in model.methods.items()],
        "test_vectors": bundled_status(model),
        "metadata": _shown_metadata(model.metadata),
    })
    return d


def _shown_metadata(meta: dict) -> dict:
    """The metadata as `nac info` shows it: labels counted, the compile report without the parts
    shown on their own (passes) or too long to read (the state_dict key of every tensor)."""
    shown = {k: (v if k != "labels" else f"{len(v)} labels") for k, v in meta.items()}
    if isinstance(shown.get("compile"), dict):
        shown["compile"] = {k: v for k, v in shown["compile"].items()
                            if k not in ("passes", "state_dict_keys", "transposed", "methods", "method_example_dims")}
    return shown


def _partial_summary(buf, sections, path: Path) -> dict:
    """What can be said of a file that failed validation: its metadata and the outline of its
    graph, each only if that document alone is valid JSON that passes its schema."""
    import zlib

    from nac.format import schema
    from nac.format.container import GRAPH, METADATA, parse_json

    out: dict = {}
    for s in sections:
        if s.kind not in (GRAPH, METADATA) or zlib.crc32(buf[s.offset:s.offset + s.length]) != s.crc32:
            continue
        try:
            doc = parse_json(bytes(buf[s.offset:s.offset + s.length]), f"{path}: {s.name} section")
            schema.validate(doc, s.name, str(path))
        except NacError:
            continue
        if s.kind == METADATA:
            out["metadata"] = {k: (v if k != "labels" else f"{len(v)} labels") for k, v in doc.items()}
        else:
            shapes = {v["name"]: v for v in doc["values"]}
            out["inputs"] = [{"name": n, "dtype": shapes.get(n, {}).get("dtype", "?"),
                              "shape": shapes.get(n, {}).get("shape", "?")} for n in doc["inputs"]]
            out["outputs"] = [{"name": n, "dtype": shapes.get(n, {}).get("dtype", "?"),
                               "shape": shapes.get(n, {}).get("shape", "?")} for n in doc["outputs"]]
            out["dims"] = doc["dims"]
            out["ops"] = dict(Counter(n["op"] for n in doc["nodes"]).most_common())
            out["nodes"] = len(doc["nodes"])
    return out


def _shape_options(items) -> dict[str, int]:
    """``["seq=16", ...]`` (repeated --shape options) -> ``{"seq": 16, ...}``.

    Raises:
        NacError: an item is not NAME=INTEGER."""
    shapes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value.strip().lstrip("-").isdigit():
            raise NacError(f"--shape {item!r}: expected NAME=INTEGER (e.g. --shape seq=16)")
        shapes[key] = int(value)
    return shapes


def cmd_emit(args) -> int:
    from nac.accel import emit, verify

    shapes = _shape_options(args.shape)
    kw = dict(target=args.target, shapes=shapes, offload=args.offload, register_map=args.register_map, name=args.name,
              rvv=args.rvv)
    if args.verify:
        report, result = verify(args.model, out_dir=args.output, **kw)
    else:
        report, result = emit(args.model, args.output, **kw), None
    d = {"folder": str(report.folder), "target": report.target, "dims": report.dims, "steps": report.steps,
         "arena_bytes": report.arena_bytes, "naive_activation_bytes": report.naive_bytes,
         "scratch_bytes": report.scratch_bytes, "weight_bytes": report.weight_bytes, "offload": report.offload,
         "passes": report.passes, "ops": report.ops}
    if result is not None:
        d.update({"max_rel_err": result.max_rel_err, "instret": result.instret, "cycles": result.cycles,
                  "time_ns": result.time_ns, "program_bytes": result.elf_bytes})
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"wrote {report.folder} ({report.target}, {report.steps} steps, dims {report.dims})")
    print(f"  activations: {report.arena_bytes:,} bytes in one arena (the sum of all would be "
          f"{report.naive_bytes:,}); scratch {report.scratch_bytes:,}; weights {report.weight_bytes:,} bytes")
    if report.passes:
        print("  graph passes: " + ", ".join(f"{k} {v}" for k, v in report.passes.items()))
    if result is not None:
        cost = f"{result.instret:,} instructions retired" if result.instret is not None else f"{result.time_ns / 1e6:.3f} ms"
        print(f"  verified: outputs match the engine (max relative error {max(result.max_rel_err, default=0):.2g}); {cost}")
    else:
        print(f"  build and run: make -C {report.folder} run  (inputs in input.bin, outputs to output.bin)")
    return 0


def _print_plan(args) -> int:
    import nac
    from nac.engine.plan import concrete_shapes

    m = nac.load(args.model)
    method = m.methods.get(args.method or next(iter(m.methods)))
    if method is None:
        raise NacError(f"{args.model.name} has no method {args.method!r}; it has {list(m.methods)}")
    dims = dict(m.metadata.get("compile", {}).get("example_dims", {}))
    dims.update(_shape_options(args.shape))
    plan = method.plan(concrete_shapes(method.graph, dims))
    d = plan.describe()
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"{args.model.name}, method {method.name}, dims {d['dims']}: {len(d['steps'])} steps, arena "
          f"{d['arena_bytes']:,} bytes (the sum of all intermediates would be {d['naive_bytes']:,})")
    where = {}
    for t in plan.tensors.values():
        place = f"{t.region} +{t.offset}" + (f" in {t.buffer}" if t.region != "arena" or t.buffer != t.name else "")
        live = f", live {t.live[0]}..{t.live[1]}" if t.live else ""
        view = "" if t.contiguous else f", strides {list(t.strides)}"
        where[t.name] = f"{t.dtype.name}{list(t.shape)} at {place}{view}{live}" + (f" ({t.quant})" if t.quant else "")
    for s in plan.steps:
        print(f"step {s.index}: {s.op}" + (f" ({s.source})" if s.source else ""))
        for v in s.inputs:
            if v:
                print(f"    in  {v}: {where[v]}")
        for v in s.outputs:
            print(f"    out {v}: {where[v]}")
    return 0


def cmd_info(args) -> int:
    if args.plan:
        return _print_plan(args)
    if args.tokenizer:
        import nac

        print(nac.load(args.model).tokenizer.program.disassemble())
        return 0
    d = describe(args.model)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0 if d["valid"] else 2
    print(f"{d['file']}: NAC format {d['format_version']}, {d['bytes']:,} bytes"
          + (f", weights {d['weights']}" if "weights" in d else ""))
    print("sections:")
    for s in d["sections"]:
        print(f"  {s['name']:<20} {s['bytes']:>12,} bytes at {s['offset']}")
    methods = d.get("methods") or []
    if len(methods) > 1:  # each method with its inputs, outputs and op histogram
        for m in methods:
            print(f"method {m['name']}{' (default)' if m is methods[0] else ''}:")
            for key in ("inputs", "outputs"):
                print(f"  {key}: " + ", ".join(f"{x['name']}: {x['dtype']}{x['shape']}" for x in m[key]))
            print(f"  ops ({m['nodes']} nodes): " + ", ".join(f"{k} {v}" for k, v in m["ops"].items()))
    for key in ("inputs", "outputs") if len(methods) <= 1 else ():
        if key in d:
            print(f"{key}:")
            for x in d[key]:
                print(f"  {x['name']}: {x['dtype']}{x['shape']}")
    for name, r in d.get("dims", {}).items():
        print(f"dimension {name}: {r.get('min')} .. {r.get('max') if r.get('max') is not None else 'inf'}")
    if "parameters" in d:
        p = d["parameters"]
        print(f"parameters: {p['count']:,} in {p['tensors']} tensors, {p['bytes']:,} bytes"
              + (f" ({p['shared']} shared)" if p["shared"] else ""))
    if d.get("quantized"):
        fb = sum(q["float32_bytes"] for q in d["quantized"])
        qb = sum(q["bytes"] for q in d["quantized"])
        print(f"quantized tensors: {len(d['quantized'])}, {qb:,} bytes instead of {fb:,} as float32 "
              f"(saves {fb - qb:,} bytes, {fb / max(qb, 1):.1f}x)")
        for q in d["quantized"]:
            print(f"  {q['name']}: {q['scheme']}{q['shape']}, {q['bytes']:,} bytes ({q['bits_per_weight']} bits/weight)")
    if "ops" in d and len(methods) <= 1:
        print(f"ops ({d['nodes']} nodes): " + ", ".join(f"{k} {v}" for k, v in d["ops"].items()))
    if d.get("passes"):
        print("passes: " + ", ".join(f"{k} {v}" for k, v in d["passes"].items()))
    if d.get("test_vectors"):
        tv = d["test_vectors"]
        print(f"test vectors: {tv['cases']} case(s) from {tv.get('reference')}, tolerance {tv.get('tolerance')} "
              f"(nac verify replays them)" if "problem" not in tv else f"test vectors: unreadable: {tv['problem']}")
    if "metadata" in d:
        print("metadata: " + json.dumps(d["metadata"], ensure_ascii=False)[:2000])
    if not d["valid"]:
        print(f"nac: error: {d['problem']}", file=sys.stderr)
        return 2
    return 0


def parse(argv) -> argparse.Namespace:
    """Parse a command line; a subcommand's options may come anywhere among its inputs
    (``nac run f.nac "a" --json "b"``), as argparse's intermixed parsing allows.

    Raises:
        SystemExit: status 2 with argparse's message for a bad command line (0 for --help).
    """
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if argv and argv[0] in sub.choices:
        args = sub.choices[argv[0]].parse_intermixed_args(argv[1:])
        args.command = argv[0]
        return args
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Entry point of the `nac` console command. Returns the exit status: 2 on any error, which
    is one line on stderr (``nac: error: ...``; set NAC_DEBUG=1 for the traceback of an error
    that is not a NacError)."""
    args = parse(argv)
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        # `kill` (SIGTERM) unwinds like Ctrl-C, so a half-written .nac's temporary is removed
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return {"export": cmd_export, "run": cmd_run, "info": cmd_info, "emit": cmd_emit, "reconstruct": cmd_reconstruct,
                "visualize": cmd_visualize, "ir": cmd_ir, "bind": cmd_bind, "verify": cmd_verify,
                "zoo": cmd_zoo, "serve": cmd_serve, "batch": cmd_batch}[args.command](args)
    except NacError as exc:
        print(f"nac: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nac: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`nac info m.nac | head`): not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # e.g. transformers refusing a folder: still one line, not a traceback
        import os

        if os.environ.get("NAC_DEBUG"):
            raise
        print(f"nac: error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
              f" (NAC_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
