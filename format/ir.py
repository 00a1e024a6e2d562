"""The IR as JSON: a `.nac` file's graph, weight table and metadata, without the weight data.

    doc = nac.to_json("minilm.nac")          # str
    ir = nac.from_json(doc)                   # IR: graph (weights as zero stand-ins), weights, metadata
    problems = nac.validate(doc)              # [] or every problem found, each naming its field or node

Document (``"format": "nac-ir"``, ``"version": 1``):

- ``graph``: the graph section's document exactly as SPEC.md defines it;
- ``weights``: one entry per stored tensor: ``name``, ``dtype``, ``shape``, ``bytes``, ``file`` and
  ``offset`` (the byte offset of its data in that file: the `.nac`, or the sibling
  ``.safetensors`` of an external-weights file), ``key`` (the state_dict key it was made from, when
  the exporter recorded it; null for a constant computed at export; a list of keys for a weight
  concatenated from several, such as attention's Q, K and V), ``derived`` (true when a pass
  transformed it: batch norm folded in, transposed, quantised, merged), and for a quantised tensor its
  ``quant`` descriptor;
- ``metadata``: the metadata section.

`validate` checks a graph document (or an IR document's graph) against the graph schema and then
against the op table and shape rules, and lists every problem rather than stopping at the first.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nac.errors import NacError, NacFormatError
from nac.format.graph import Graph, numpy_dtype

__all__ = ["IR", "to_json", "from_json", "validate"]

FORMAT, VERSION = "nac-ir", 1


@dataclass
class IR:
    """An IR document read back: the graph (its parameters are read-only zero stand-ins of the
    right dtype and shape, so shapes and counts work but values do not), the weight table and the
    metadata."""

    graph: Graph
    weights: list[dict] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    model: str = ""

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "model": self.model, "graph": self.graph.to_json(),
                "weights": self.weights, "metadata": self.metadata}

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)


def _weight_offsets(nacfile) -> dict[str, tuple[str, int]]:
    """name -> (file name, absolute byte offset of its data) from the safetensors header."""
    from nac.format.container import PARAMS

    if nacfile.weights_path is not None:
        buf, base, fname = nacfile._maps[1], 0, nacfile.weights_path.name
    else:
        s = next((s for s in nacfile.sections if s.kind == PARAMS), None)
        if s is None:
            return {}
        buf, base, fname = nacfile._maps[0], s.offset, nacfile.path.name
    (hlen,) = struct.unpack_from("<Q", buf, base)
    header = json.loads(bytes(buf[base + 8: base + 8 + hlen]))  # already checked by the reader
    data0 = base + 8 + hlen
    return {k: (fname, data0 + v["data_offsets"][0]) for k, v in header.items() if k != "__metadata__"}


def _load(model_or_path):
    """(graph, metadata, offsets, name) of a `.nac` path or a loaded `nac.Model`."""
    from nac.format.container import read_nac

    f = read_nac(model_or_path) if isinstance(model_or_path, (str, Path)) else getattr(model_or_path, "file", None)
    if f is None:
        raise NacError(f"to_json expects a .nac path or a nac.Model, not {type(model_or_path).__name__}")
    return f.graph, f.metadata, _weight_offsets(f), f.path.name


def to_json(model_or_path, indent: int | None = 1) -> str:
    """The IR document of a `.nac` file or loaded `nac.Model`, as JSON text (no weight data).

    Raises:
        NacFormatError: the file is not a valid `.nac`.
    """
    g, meta, offsets, name = _load(model_or_path)
    keys = (meta.get("compile") or {}).get("state_dict_keys") or {}
    transposed = set((meta.get("compile") or {}).get("transposed") or [])
    weights = []
    for pname in sorted(g.params):
        a = g.params[pname]
        v = g.values[pname]
        entry = {"name": pname, "dtype": v.dtype, "shape": list(a.shape), "bytes": int(a.nbytes),
                 "file": offsets.get(pname, (None, None))[0], "offset": offsets.get(pname, (None, None))[1],
                 "key": keys.get(pname), "derived": keys.get(pname) not in (None, pname) or pname in transposed}
        if v.quant is not None:
            entry["quant"] = v.quant
        weights.append(entry)
    return IR(g, weights, meta, name).to_json(indent)


def _stand_ins(doc: dict) -> dict[str, np.ndarray]:
    """Zero-stride arrays of each parameter's declared dtype and shape (no memory)."""
    shapes = {v["name"]: v for v in doc["values"]}
    out = {}
    for name in doc["params"]:
        v = shapes.get(name)
        if v is None or not all(isinstance(d, int) for d in v["shape"]):
            raise NacFormatError(f"IR: parameter {name!r} has no value with a static shape")
        out[name] = np.broadcast_to(np.zeros((), numpy_dtype(v["dtype"])), tuple(v["shape"]))
    return out


def from_json(text) -> IR:
    """Read an IR document (JSON text, bytes, or an already-parsed dict) back into an `IR`.

    Raises:
        NacFormatError: not an IR document, or its graph is invalid (the first problem; `validate`
            lists them all).
    """
    from nac.format.container import parse_json

    doc = text if isinstance(text, dict) else parse_json(text.encode() if isinstance(text, str) else bytes(text), "IR")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise NacFormatError(f"IR: not a NAC IR document (field 'format' must be {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise NacFormatError(f"IR: field 'version' is {doc.get('version')!r}; this NAC reads version {VERSION}")
    if not isinstance(doc.get("graph"), dict):
        raise NacFormatError("IR: field 'graph' must be an object (the graph document)")
    weights, meta = doc.get("weights", []), doc.get("metadata", {})
    if not isinstance(weights, list) or not isinstance(meta, dict):
        raise NacFormatError("IR: field 'weights' must be a list and 'metadata' an object")
    from nac.format import schema

    schema.validate(doc["graph"], "graph", "IR graph")
    example = (meta.get("compile") or {}).get("example_dims")
    g = Graph.from_json(doc["graph"], _stand_ins(doc["graph"]), where="IR graph",
                        example_dims=example if isinstance(example, dict) else None)
    return IR(g, weights, meta, str(doc.get("model", "")))


# ------------------------------------------------------------------------------------------------
# validation that reports everything
# ------------------------------------------------------------------------------------------------
def _schema_problems(doc) -> list[str]:
    from nac.format.schema import GRAPH

    try:
        import jsonschema
    except ImportError:  # the runtime's validator: first problem only
        from nac.format import schema

        try:
            schema.validate(doc, "graph", "graph")
            return []
        except NacFormatError as exc:
            return [str(exc)]
    problems = []
    for err in sorted(jsonschema.Draft7Validator(GRAPH).iter_errors(doc), key=lambda e: list(map(str, e.path))):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.path).lstrip(".") or "(document)"
        problems.append(f"field {path}: {err.message[:300]}")
    return problems


def validate(doc) -> list[str]:
    """Every problem of a graph document (or of an IR document's ``graph``), as messages naming
    the field, value or node; an empty list when it is valid.

    Checks, in order: the graph schema (every violation, via ``jsonschema`` when installed); values
    declared twice or with a bad dtype or dimension; for each node, an unknown op, inputs read
    before they are defined, outputs undeclared or defined twice, the op's arity and attributes;
    graph inputs and outputs that are not defined; then, if the structure is sound, each node's
    recorded output shapes against the op's shape rule at the corners of the dimension ranges.

    Args:
        doc: JSON text, bytes, or a parsed dict (an IR document or a bare graph document).
    """
    from nac.format.container import parse_json

    try:
        if not isinstance(doc, dict):
            doc = parse_json(doc.encode() if isinstance(doc, str) else bytes(doc), "document")
    except NacFormatError as exc:
        return [str(exc)]
    if isinstance(doc, dict) and doc.get("format") == FORMAT:
        meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        doc = doc.get("graph")
    else:
        meta = {}
    problems = _schema_problems(doc)
    try:
        problems += _structure_problems(doc)
    except (KeyError, TypeError, AttributeError):  # too malformed to walk: the schema problems say why
        return problems or ["the graph document is malformed"]
    if problems:
        return list(dict.fromkeys(problems))
    return _all_shape_problems(doc, meta)


def _structure_problems(doc: dict) -> list[str]:
    """Declarations, definitions, arity and attributes (see `validate`), every problem."""
    from nac.format.ops import OPS

    problems: list[str] = []
    names = [v["name"] for v in doc["values"]]
    seen: set = set()
    for n in names:
        if n in seen:
            problems.append(f"value {n!r} is declared twice")
        seen.add(n)
    values = {v["name"]: v for v in doc["values"]}
    for v in doc["values"]:
        for d in v["shape"]:
            if isinstance(d, str):
                try:
                    from nac.format.symbolic import parse_dim

                    parse_dim(d)
                except NacError as exc:
                    problems.append(f"value {v['name']!r}: {exc}")
    defined = set(doc["inputs"]) | set(doc["params"]) | set(doc.get("param_aliases", {})) | {
        v["name"] for v in doc["values"] if "const" in v}
    for p in doc["params"]:
        if p not in values:
            problems.append(f"parameter {p!r} has no value declaration")
    for k, n in enumerate(doc["nodes"]):
        where = f"node {k} ({n['op']}{', from ' + n['source'] if n.get('source') else ''})"
        schema_ = OPS.get(n["op"])
        if schema_ is None:
            problems.append(f"{where}: unknown op {n['op']!r}")
        else:
            fewest, most = schema_.arity()
            if not fewest <= len(n["inputs"]) <= (most if most is not None else len(n["inputs"])):
                problems.append(f"{where}: has {len(n['inputs'])} inputs; {n['op']} takes {fewest}"
                                f"{'' if most == fewest else f' to {most}' if most else ' or more'}")
            unknown = set(n.get("attrs", {})) - set(schema_.attrs)
            if unknown:
                problems.append(f"{where}: attribute(s) {sorted(unknown)} are not attributes of {n['op']}")
        for i in n["inputs"]:
            if i and i not in defined:
                problems.append(f"{where}: reads {i!r} before it is defined")
        for o in n["outputs"]:
            if o not in values:
                problems.append(f"{where}: defines undeclared value {o!r}")
            elif o in defined:
                problems.append(f"{where}: redefines value {o!r}")
            defined.add(o)
    for name in doc["inputs"] + doc["outputs"]:
        if name not in defined:
            problems.append(f"graph input/output {name!r} is not defined")
    for v in doc["values"]:
        try:
            numpy_dtype(v["dtype"])
        except NacFormatError as exc:
            problems.append(f"value {v['name']!r}: {exc}")
    return problems


def _all_shape_problems(doc: dict, meta: dict) -> list[str]:
    """The shape rules over a structurally sound graph document (see `validate`)."""
    example = (meta.get("compile") or {}).get("example_dims")
    example = example if isinstance(example, dict) else None
    try:  # the structure is sound: the loader's own check first
        Graph.from_json(doc, _stand_ins(doc), where="graph", example_dims=example)
        return []
    except NacFormatError as exc:
        first = str(exc)
    from nac.format.graph import Node, Value

    g = Graph(inputs=list(doc["inputs"]), outputs=list(doc["outputs"]), dims=dict(doc["dims"]),
              param_aliases=dict(doc.get("param_aliases", {})))
    g.values = {v["name"]: Value(v["name"], v["dtype"], tuple(v["shape"]), v.get("const"), v.get("quant"))
                for v in doc["values"]}
    g.params = _stand_ins(doc)
    g.nodes = [Node(n["op"], list(n["inputs"]), list(n["outputs"]), dict(n.get("attrs", {})), n.get("source", ""))
               for n in doc["nodes"]]
    return _shape_problems(g, example) or [first]


def _shape_problems(g: Graph, example) -> list[str]:
    """Each node's recorded outputs against shape inference at the sample points of the dimension
    ranges, every node checked (a wrong node's own recorded outputs are used downstream)."""
    from nac.format.shapes import ShapeError, infer
    from nac.format.symbolic import eval_shape
    from nac.format.validate import input_dtype, input_shape, resolve_attrs, sample_envs

    problems: list[str] = []
    for env in sample_envs(g, example):
        try:
            vshape = {name: eval_shape(v.shape, env) for name, v in g.values.items()}
        except NacError as exc:
            problems.append(f"dimensions {env}: {exc}")
            continue
        for k, n in enumerate(g.nodes):
            where = f"node {k} ({n.op}{', from ' + n.source if n.source else ''})"
            try:
                at = resolve_attrs(n.op, n.attrs, env)
                outs = infer(n.op, [input_shape(g, i, vshape) if i else None for i in n.inputs],
                             [input_dtype(g, i) if i else None for i in n.inputs], at)
            except (ShapeError, NacError) as exc:
                problems.append(f"{where} is invalid for {env}: {exc}")
                continue
            if len(outs) != len(n.outputs):
                problems.append(f"{where}: lists {len(n.outputs)} outputs; the op has {len(outs)}")
                continue
            for o, (shape, dtype) in zip(n.outputs, outs):
                if shape is not None and tuple(shape) != tuple(vshape[o]):
                    problems.append(f"{where}: records output {o!r} as {list(g.values[o].shape)} = {list(vshape[o])} "
                                    f"for {env}, but its inputs give {list(shape)}")
                if dtype is not None and dtype != g.values[o].dtype:
                    problems.append(f"{where}: records output {o!r} as {g.values[o].dtype}; the op produces {dtype}")
    return list(dict.fromkeys(problems))
