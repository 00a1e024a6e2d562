"""`nac zoo`: compile a list of models, verify each, and write a registry and Markdown reports.

ZOO.toml::

    python_path = ["."]                  # folders (relative to this file) to import factories from

    [[model]]
    name = "minilm"                      # the file is OUT/minilm.nac, the report OUT/minilm.md
    source = "minilm"                    # packaged name, Hugging Face folder (relative paths: to
                                         # this file), or module:function
    task = "feature-extraction"          # optional: as `nac export --task`
    quantize = "int8"                    # optional: int8, ternary, int8+a8, ternary+a8
    dynamic = false                      # optional: export with static shapes (default: the source's)
    arguments = { name = "bert" }        # optional: keywords for a module:function factory
    bundle_inputs = 2                    # optional: test vectors stored and verified (default 2)
    tolerance = 1e-4                     # optional: verification tolerance (relative to output scale)

Every entry is compiled with test vectors from the reference model and verified by replaying them
with the engine; a failing entry is recorded (with its error) and the rest still run.
Writes ``OUT/registry.json`` (every file: ops, parameters, size, SHA-256, verification),
``OUT/SUMMARY.md`` (one row per model) and ``OUT/NAME.md`` per model (summary, verification table,
Mermaid graph collapsed by module, Mermaid pie of the op distribution, a collapsible node table,
the weight table).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from pathlib import Path

from nac.errors import NacError

__all__ = ["load_zoo", "run_zoo", "model_report"]

_KEYS = {"name", "source", "task", "quantize", "dynamic", "arguments", "bundle_inputs", "tolerance"}


def load_zoo(path) -> tuple[list[dict], list[Path]]:
    """The entries of a ZOO.toml and its import folders.

    Raises:
        NacError: the file is missing or not TOML, an entry lacks ``name`` or ``source``, has an
            unknown key, or two entries share a name (each problem named).
    """
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise NacError(f"cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise NacError(f"{path} is not valid TOML: {exc}") from None
    entries = doc.get("model")
    if not isinstance(entries, list) or not entries:
        raise NacError(f"{path}: no [[model]] entries")
    problems, names = [], set()
    for k, e in enumerate(entries):
        where = f"[[model]] {k + 1}"
        if not isinstance(e.get("name"), str) or not e["name"].replace("-", "").replace("_", "").replace(".", "").isalnum():
            problems.append(f"{where}: 'name' must be a file-name-safe string")
        elif e["name"] in names:
            problems.append(f"{where}: name {e['name']!r} is used twice")
        else:
            names.add(e["name"])
        if not isinstance(e.get("source"), str):
            problems.append(f"{where}: 'source' is missing")
        unknown = set(e) - _KEYS
        if unknown:
            problems.append(f"{where}: unknown key(s) {sorted(unknown)} (known: {sorted(_KEYS)})")
    if problems:
        raise NacError(f"{path}: " + "; ".join(problems))
    paths = [(path.parent / p).resolve() for p in doc.get("python_path", [])]
    return entries, paths


def _source(entry: dict, base: Path) -> str:
    src = entry["source"]
    candidate = base / src
    return str(candidate) if not Path(src).is_absolute() and candidate.exists() else src


def compile_entry(entry: dict, base: Path, out: Path) -> dict:
    """Compile, bundle and verify one zoo entry; returns its registry record (``status`` "ok",
    "verify-failed" or "error" with ``error``). Never raises for a model's failure."""
    from nac.apps.sources import factory, resolve
    from nac.apps.verify import bundle_vectors, verify
    from nac.compile.export import attach_tokenizer, compile_graph
    from nac.format.container import write_nac

    rec = {"name": entry["name"], "source": entry["source"], "task": entry.get("task"),
           "quantize": entry.get("quantize"), "status": "error", "error": None}
    t0 = time.perf_counter()
    try:
        src = _source(entry, base)
        if entry.get("arguments") is not None:
            job = factory(src, dict(entry["arguments"]))
        else:
            job = resolve(src, entry.get("task"))
        blob = attach_tokenizer(job.tokenizer, job.metadata)
        graph, meta = compile_graph(job.module, job.args, kwargs=job.kwargs,
                                    dynamic_shapes=job.dynamic_shapes if entry.get("dynamic", True) else None,
                                    metadata=job.metadata, quantize=entry.get("quantize"))
        cases = int(entry.get("bundle_inputs", 2))
        vectors = bundle_vectors(job.module, job.args, job.kwargs, graph, meta, cases,
                                 tolerance=entry.get("tolerance"))
        path = write_nac(out / f"{entry['name']}.nac", graph, meta, tokenizer=blob, test_vectors=vectors)
        rec["compile_s"] = round(time.perf_counter() - t0, 2)
        report = verify(path)
    except Exception as exc:  # a factory or a model may raise anything: recorded, and the zoo goes on
        rec["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:400] if str(exc).strip() else ''}"
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        return rec
    data = path.read_bytes()
    rec.update({
        "file": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
        "nodes": len(graph.nodes), "parameters": graph.param_count(),
        "ops": dict(Counter(n.op for n in graph.nodes).most_common()),
        "inputs": {i: [graph.values[i].dtype, list(graph.values[i].shape)] for i in graph.inputs},
        "outputs": {o: [graph.values[o].dtype, list(graph.values[o].shape)] for o in graph.outputs},
        "verification": report.to_dict(), "max_rel": report.max_rel,
        "status": "ok" if report.passed else "verify-failed",
        "seconds": round(time.perf_counter() - t0, 2),
    })
    if not report.passed:
        rec["error"] = f"outputs differ from the reference by {report.max_rel:.3g} of their scale " \
                       f"(tolerance {report.tolerance:g})"
    return rec


def run_zoo(zoo, out, *, only: list[str] | None = None, progress: bool | None = None) -> list[dict]:
    """Compile and verify every entry of ``zoo`` (a ZOO.toml path) into folder ``out`` and write the
    registry and reports (module docstring). Returns the registry records in entry order.

    Raises:
        NacError: the zoo file is invalid, or ``only`` names an entry it lacks.
    """
    from tqdm import tqdm

    zoo, out = Path(zoo), Path(out)
    entries, paths = load_zoo(zoo)
    if only:
        missing = set(only) - {e["name"] for e in entries}
        if missing:
            raise NacError(f"{zoo}: no entries named {sorted(missing)}")
        entries = [e for e in entries if e["name"] in only]
    out.mkdir(parents=True, exist_ok=True)
    for p in paths:
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    records = []
    with tqdm(entries, desc="zoo", unit="model", file=sys.stderr, disable=None if progress is None else not progress) as bar:
        for entry in bar:
            bar.set_description(entry["name"])
            rec = compile_entry(entry, zoo.parent, out)
            records.append(rec)
            (out / f"{entry['name']}.md").write_text(model_report(rec, out), encoding="utf-8")
    registry = {"zoo": str(zoo), "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "models": records}
    (out / "registry.json").write_text(json.dumps(registry, indent=1), encoding="utf-8")
    (out / "SUMMARY.md").write_text(summary_report(records, zoo), encoding="utf-8")
    return records


# ------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------
def _keys_text(key) -> str:
    """A weight's state_dict key, or its parts' keys joined (a merged weight: a list)."""
    return " + ".join(key) if isinstance(key, list) else str(key)


def _cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def summary_report(records: list[dict], zoo: Path) -> str:
    """SUMMARY.md: one row per model."""
    ok = sum(r["status"] == "ok" for r in records)
    lines = [f"# NAC zoo: {ok} of {len(records)} models compiled and verified", "",
             f"From `{zoo.name}`. Max diff is the largest engine-vs-reference difference relative to the output's "
             f"scale over the bundled test vectors.", "",
             "| model | status | nodes | parameters | size | max diff | time |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in records:
        diff = "" if r.get("max_rel") is None else f"{r['max_rel']:.2e}"
        status = "✅ ok" if r["status"] == "ok" else f"❌ {r['status']}: {_cell(r.get('error') or '')[:120]}"
        lines.append(f"| [{r['name']}]({r['name']}.md) | {status} | {r.get('nodes', '')} | "
                     f"{r.get('parameters', 0):,} | {r.get('bytes', 0) / 1e6:.2f} MB | "
                     f"{diff} | {r.get('seconds', '')} s |")
    return "\n".join(lines) + "\n"


def model_report(rec: dict, out: Path) -> str:
    """OUT/NAME.md for one registry record (see the module docstring)."""
    lines = [f"# {rec['name']}", "", "| | |", "|---|---|", f"| source | `{_cell(rec['source'])}` |",
             f"| task | {rec.get('task') or '(from the source)'} |", f"| status | {rec['status']} |"]
    if rec.get("error"):
        lines.append(f"| error | {_cell(rec['error'])} |")
    if rec.get("file") is None:
        return "\n".join(lines) + "\n"
    lines += [f"| file | `{rec['file']}` ({rec['bytes']:,} bytes) |", f"| sha256 | `{rec['sha256']}` |",
              f"| nodes | {rec['nodes']} |", f"| parameters | {rec['parameters']:,} |",
              f"| quantisation | {rec.get('quantize') or 'none (float32)'} |",
              f"| inputs | {', '.join(f'{k} {v[0]}{v[1]}' for k, v in rec['inputs'].items())} |",
              f"| outputs | {', '.join(f'{k} {v[0]}{v[1]}' for k, v in rec['outputs'].items())} |",
              f"| compile | {rec.get('compile_s')} s |", ""]
    ver = rec["verification"]
    lines += ["## Verification", "", f"Reference: {ver['reference']}; tolerance {ver['tolerance']:g} of each output's "
              f"scale. Replay anywhere with `nac verify {rec['file']}`.", "",
              "| case | output | shape | max abs | mean abs | max rel | result |", "|---:|---|---|---:|---:|---:|---|"]
    for c in ver["checks"]:
        lines.append(f"| {c['case']} | {c['name']} | {c['shape']} | {c['max_abs']:.3g} | {c['mean_abs']:.3g} | "
                     f"{c['max_rel']:.3g} | {'pass' if c['passed'] else '**FAIL**'} |")
    import nac
    from nac.apps.visualize import mermaid, view

    model = nac.load(out / rec["file"])
    g = model.graph
    v = view(model, max_nodes=40)
    lines += ["", "## Graph", "", f"{'Collapsed at module depth ' + str(v.depth) if v.depth else 'Every node'}; "
              f"`nac visualize {rec['file']} -o graph.svg` draws it.", "", "```mermaid", mermaid(v).rstrip(), "```",
              "", "## Ops", "", "```mermaid", "pie showData title Nodes per op"]
    lines += [f'    "{op}" : {count}' for op, count in rec["ops"].items()]
    lines += ["```", "", "<details><summary>Node table</summary>", "", "| # | op | inputs | output | shape | module |",
              "|---:|---|---|---|---|---|"]
    for k, n in enumerate(g.nodes):
        shape = ", ".join(f"{g.values[o].dtype}{list(g.values[o].shape)}" for o in n.outputs)
        lines.append(f"| {k} | {n.op} | {_cell(', '.join(i or '∅' for i in n.inputs))[:160]} | {_cell(', '.join(n.outputs))} | "
                     f"{_cell(shape)} | {_cell(n.source)} |")
    lines += ["", "</details>", "", "<details><summary>Weight table</summary>", "",
              "| name | dtype | shape | bytes | state_dict key |", "|---|---|---|---:|---|"]
    keys = (model.metadata.get("compile") or {}).get("state_dict_keys") or {}
    for name in sorted(g.params):
        a = g.params[name]
        q = g.values[name].quant
        dtype = f"{q['scheme']} (logical {q['shape']})" if q else g.values[name].dtype
        lines.append(f"| {_cell(name)} | {dtype} | {list(a.shape)} | {a.nbytes:,} | {_cell(_keys_text(keys.get(name, '—')))} |")
    lines += ["", "</details>"]
    return "\n".join(lines) + "\n"
