"""The weight-side half of compilation, and binding weights to a weight-free export.

`finish_graph` is what runs after lowering: the optimisation passes, quantisation, and the record of
which state_dict key each stored tensor came from. It needs numpy only, so `bind` (and `nac bind`)
run it on a machine without PyTorch.

A weight-free export (``nac.export(model_on_meta, args, path, weights=None)``) stores the lowered,
unoptimised graph with every weight declared by name, dtype and shape but without data
(``metadata.compile.unbound``). `bind` reads the weights from a ``.safetensors`` file, a sharded
safetensors index (``model.safetensors.index.json``) or a PyTorch state_dict file (loaded with
``torch.load(weights_only=True)``), checks every name, shape and dtype, then finishes the graph
exactly as a direct export would have: a bound file equals a direct export of the same weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nac.errors import NacError, NacFormatError
from nac.format.graph import Graph, numpy_dtype

__all__ = ["finish_graph", "state_dict_keys", "load_weights", "bind"]


def finish_graph(graph: Graph, meta: dict, *, optimize_graph: bool = True, quantize=None, progress=None) -> Graph:
    """Optimise and quantise a lowered graph in place, recording in ``meta["compile"]`` the
    per-pass report (``passes``), the quantisation summary (``quantize``), for every stored
    tensor the state_dict key it was made from (``state_dict_keys``), and the tensors that kept
    their name but are stored transposed (``transposed``). Returns ``graph``.

    Raises:
        NacExportError: a bad quantisation spec (see `nac.compile.quantize`).
    """
    from nac.compile.passes import merge_sibling_linears, optimize
    from nac.compile.quantize import quantize_graph, summarize

    step = progress or (lambda stage: None)
    before = dict(graph.params)  # (references: a pass that changes a tensor stores a new array)
    original = set(before)
    step("optimising")
    if optimize_graph:
        meta.setdefault("compile", {})["passes"] = optimize(graph)
    step("quantising")
    report = quantize_graph(graph, quantize)
    if report:
        meta.setdefault("compile", {})["quantize"] = summarize(report, quantize)
    merged = {}
    if optimize_graph:  # after quantisation: each weight is quantised as its own layer
        count, merged = merge_sibling_linears(graph)
        meta["compile"]["passes"]["merge_sibling_linears"] = count
        meta["compile"]["passes"]["nodes_after"] = len(graph.nodes)
    meta.setdefault("compile", {})["state_dict_keys"] = state_dict_keys(graph, original, merged)
    transformed = sorted(name for name, a in graph.params.items() if name in before and a is not before[name]
                         and a.ndim == 2 and a.shape == before[name].shape[::-1] and np.array_equal(a, before[name].T))
    if transformed:  # kept their name but are stored transposed (see `transpose_linear_weights`)
        meta["compile"]["transposed"] = transformed
    return graph


def state_dict_keys(graph: Graph, original: set[str], merged: dict[str, list[str]] | None = None
                    ) -> dict[str, str | list[str]]:
    """For each stored tensor, the state_dict key it came from: its own name if it is one of
    ``original`` (the lowered graph's parameter names, which are state_dict keys), else the
    longest such key its name extends (``conv.weight.bn_folded``, ``fc.weight.scale``). A tensor
    `merge_sibling_linears` concatenated (``merged``: its name -> the names of its parts) gets the
    list of its parts' keys. Tensors computed at export (folded constants) have no key and are
    left out."""
    by_length = sorted((k for k in original if not k.startswith("folded.")), key=len, reverse=True)

    def key_of(name: str) -> str | None:
        if name in original and not name.startswith("folded."):
            return name
        return next((k for k in by_length if name.startswith(k + ".")), None)

    keys: dict[str, str | list[str]] = {}
    for name in graph.params:
        if name in (merged or {}):
            parts = [key_of(p) for p in merged[name]]
            if all(parts):
                keys[name] = parts
        elif (key := key_of(name)) is not None:
            keys[name] = key
    return dict(sorted(keys.items()))


# ------------------------------------------------------------------------------------------------
# reading weights
# ------------------------------------------------------------------------------------------------
_EXTRA = {"BF16": np.uint16, "F64": np.float64, "I16": np.int16}


def _safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as numpy arrays, read with NAC's checked reader (BF16
    widened to float32, F64 kept). Raises NacFormatError for a malformed file."""
    import mmap

    from nac.format.container import view_safetensors

    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    except OSError as exc:
        raise NacFormatError(f"cannot read weights file {path}: {exc.strerror}") from None
    arrays = view_safetensors(buf, 0, size, str(path), extra_dtypes=_EXTRA)
    # BF16 is read as uint16 (no NAC dtype is uint16): a bfloat16 is the top half of a float32
    return {k: (a.astype(np.uint32) << 16).view(np.float32) if a.dtype == np.uint16 else a for k, a in arrays.items()}


def _state_dict_file(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise NacError(f"{path}: reading a PyTorch state_dict file needs torch; convert it to .safetensors "
                       f"or install nac[export]") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or unsafe pickle
        raise NacFormatError(f"{path}: not a loadable state_dict ({type(exc).__name__}: "
                             f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise NacFormatError(f"{path}: expected a dict of tensors (a state_dict)")
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).detach().cpu().contiguous().numpy()
            for k, v in sd.items()}


def load_weights(source) -> dict[str, np.ndarray]:
    """Weights by state_dict key from ``source``: a ``.safetensors`` file, a sharded index
    (``*.safetensors.index.json``, whose shards must sit beside it), a folder holding either, a
    PyTorch state_dict file (``.bin``, ``.pt``, ``.pth``, ``.ckpt``; needs torch), or a dict of
    arrays.

    Raises:
        NacFormatError: the file is missing or malformed, or an index names a shard outside its
            folder.
        NacError: a state_dict file without torch installed.
    """
    if isinstance(source, dict):
        return {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in source.items()}
    path = Path(source)
    if path.is_dir():
        for name in ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return load_weights(path / name)
        found = sorted(path.glob("*.safetensors"))
        if len(found) == 1:
            return load_weights(found[0])
        raise NacFormatError(f"{path}: no model.safetensors, index or pytorch_model.bin in this folder")
    if not path.is_file():
        raise NacFormatError(f"weights file {path} does not exist")
    if path.name.endswith(".index.json"):
        from nac.format.container import parse_json

        doc = parse_json(path.read_bytes(), str(path))
        wmap = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
            raise NacFormatError(f"{path}: a sharded index needs a 'weight_map' of tensor name -> shard file")
        out: dict[str, np.ndarray] = {}
        for shard in sorted(set(wmap.values())):
            if Path(shard).name != shard or shard in (".", ".."):
                raise NacFormatError(f"{path}: shard {shard!r} is not a file beside the index")
            tensors = _safetensors(path.parent / shard)
            for key, file in wmap.items():
                if file == shard:
                    if key not in tensors:
                        raise NacFormatError(f"{path}: the index puts {key!r} in {shard}, which does not hold it")
                    out[key] = tensors[key]
        return out
    if path.suffix == ".safetensors":
        return _safetensors(path)
    if path.suffix in (".bin", ".pt", ".pth", ".ckpt"):
        return _state_dict_file(path)
    raise NacFormatError(f"{path}: unknown weights format (expected .safetensors, a .safetensors.index.json, "
                         f"or a state_dict .bin/.pt/.pth)")


# ------------------------------------------------------------------------------------------------
# binding
# ------------------------------------------------------------------------------------------------
def _unbound_file(path: Path):
    """(graph document, metadata, bound parameters, tokenizer blob) of a weight-free `.nac`, read
    and checked by the file reader (`read_documents`), the graph not yet built."""
    from nac.format.container import read_documents

    d = read_documents(path)
    return d.graph_doc, d.metadata, {k: np.array(v) for k, v in d.params.items()}, d.tokenizer


def _wrapper_prefix(keys: list[str], given) -> str:
    """The module-path prefix a wrapper added to the exported names (``model.`` when a Hugging Face
    model was exported inside a wrapper module) that the weights file does not have: the prefix,
    among "" and the names' first components, under which the most names are found."""
    best, hits = "", sum(k in given for k in keys)
    for p in sorted({k.split(".", 1)[0] + "." for k in keys if "." in k}):
        n = sum(k.startswith(p) and k[len(p):] in given for k in keys)
        if n > hits:
            best, hits = p, n
    return best


def bind(path, weights, out, *, quantize="recorded", strict: bool = True, weights_layout: str = "inline") -> Path:
    """Fill a weight-free `.nac` (exported with ``weights=None``) with weights, then optimise and
    quantise it as the export asked, and write ``out``.

    Args:
        path: the weight-free `.nac`.
        weights: see `load_weights` (a file, an index, a folder, or a dict of arrays).
        out: the `.nac` to write.
        quantize: ``"recorded"`` (what the export asked for), or a quantisation spec to use instead
            (None, ``"int8"``, ``"ternary"``, a dict; see `nac.compile.quantize`).
        strict: refuse weights the model does not use (as ``load_state_dict(strict=True)``).
        weights_layout: ``"inline"`` or ``"external"``, as for `nac.export`.
    Returns:
        ``out`` as a `pathlib.Path`.
    Raises:
        NacFormatError: ``path`` is not a weight-free export, or the weights file is malformed.
        NacError: the weights do not fit: every missing key, unexpected key (when ``strict``),
            shape mismatch and dtype mismatch is listed in one message. Floating-point weights
            stored in another float precision (float16, bfloat16, float64) are converted.
    """
    from nac.format.container import write_nac

    path = Path(path)
    doc, meta, params, tok = _unbound_file(path)
    record = (meta.get("compile") or {}).get("unbound")
    if not isinstance(record, dict) or not isinstance(record.get("tensors"), dict):
        raise NacFormatError(f"{path}: not a weight-free export (it has all its weights already)")
    given = load_weights(weights)
    wanted = {}
    for name, entry in record["tensors"].items():
        try:
            wanted[name] = (numpy_dtype(entry["dtype"]), tuple(int(d) for d in entry["shape"]),
                            [k for k in entry.get("keys", [name]) if isinstance(k, str)] or [name])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise NacFormatError(f"{path}: unbound tensor {name!r} has a malformed record") from None
    prefix = _wrapper_prefix([k for *_, keys in wanted.values() for k in keys], given)
    problems, used = [], set()
    for name, (want_dtype, want_shape, keys) in wanted.items():
        keys = [k[len(prefix):] if k.startswith(prefix) else k for k in keys]
        entry = record["tensors"][name]
        key = next((k for k in keys if k in given), None)
        if key is None:
            problems.append(f"missing: {keys[0]} ({entry['dtype']}{list(want_shape)})"
                            + (f", also looked for {', '.join(keys[1:])}" if len(keys) > 1 else ""))
            continue
        used.update(k for k in keys if k in given)
        a = given[key]
        if tuple(a.shape) != want_shape:
            problems.append(f"shape mismatch: {key} is {list(a.shape)} in the weights, the model needs {list(want_shape)}")
            continue
        if a.dtype != want_dtype:
            if a.dtype.kind == "f" and want_dtype.kind == "f":
                a = a.astype(want_dtype)
            else:
                problems.append(f"dtype mismatch: {key} is {a.dtype} in the weights, the model needs {want_dtype}")
                continue
        params[name] = np.asarray(a, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
    kept = [k for k in record.get("kept", []) if isinstance(k, str)]  # computed by the module, not loaded
    used.update(k[len(prefix):] if k.startswith(prefix) else k for k in kept)
    if strict:
        problems += [f"unexpected: {k} (not used by the model)" for k in sorted(set(given) - used)]
    if problems:
        raise NacError(f"{weights}: the weights do not fit {path.name} ({len(problems)} problem(s)):\n  "
                       + "\n  ".join(problems))
    meta = json.loads(json.dumps(meta))
    del meta["compile"]["unbound"]
    doc = {**doc, "params": sorted(set(doc["params"]) | set(record["tensors"]))}
    example = meta["compile"].get("example_dims")
    graph = Graph.from_json(doc, params, where=f"{path}: graph", example_dims=example if isinstance(example, dict) else None)
    spec = record.get("quantize") if quantize == "recorded" else quantize
    finish_graph(graph, meta, optimize_graph=bool(record.get("optimize", True)), quantize=spec)
    return write_nac(out, graph, meta, weights=weights_layout, tokenizer=tok)
