"""The in-memory graph shared by the exporter, the file format, the engine and the emitter.

A `Graph` is a list of `Node`s in execution (topological) order over named `Value`s. A value is
a tensor with a dtype and a shape whose dimensions are ints or symbolic expressions (see
`nac.format.symbolic`). Parameters (weights) are numpy arrays keyed by value name; small
constants (scalars, index lists) live inline in the graph.

This is exactly what the graph section of a `.nac` file stores (as JSON, see SPEC.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nac.errors import NacFormatError
from nac.format.ops import QUANTISED_INPUTS  # derived from the op table
from nac.format.symbolic import Dim, parse_dim

#: dtypes a graph value may have, with their numpy equivalents and safetensors names.
DTYPES = {
    "float32": (np.float32, "F32"),
    "float16": (np.float16, "F16"),
    "int64": (np.int64, "I64"),
    "int32": (np.int32, "I32"),
    "int8": (np.int8, "I8"),
    "uint8": (np.uint8, "U8"),
    "bool": (np.bool_, "BOOL"),
}


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a NAC dtype name. Raises NacFormatError for an unknown name."""
    try:
        return np.dtype(DTYPES[name][0])
    except KeyError:
        raise NacFormatError(f"unknown dtype {name!r}; NAC knows {sorted(DTYPES)}") from None


def dtype_name(dtype) -> str:
    """The NAC dtype name of a numpy dtype. Raises NacFormatError when NAC has none."""
    dt = np.dtype(dtype)
    for name, (np_type, _) in DTYPES.items():
        if np.dtype(np_type) == dt:
            return name
    raise NacFormatError(f"dtype {dt} is not supported by NAC (supported: {sorted(DTYPES)})")


def _check_quant(g: "Graph", v: Value, where: str) -> None:
    """Validate a quantised parameter: scheme, logical/stored shapes, scales, ternary codes."""
    from nac.format.quant import SCHEMES

    q = v.quant
    try:
        scheme, scale_name, (n, k) = q["scheme"], q["scale"], [int(d) for d in q["shape"]]
    except (KeyError, TypeError, ValueError):
        raise NacFormatError(f"{where}: quantised tensor {v.name!r} has a malformed descriptor {q!r}") from None
    if scheme not in SCHEMES:
        raise NacFormatError(f"{where}: tensor {v.name!r} uses unknown quantisation scheme {scheme!r} "
                             f"(this NAC knows {list(SCHEMES)})")
    data = g.params.get(v.name)
    want = (n, k) if scheme == "int8" else (n, -(-k // 4))
    want_dtype = np.int8 if scheme == "int8" else np.uint8
    if data is None or data.shape != want or data.dtype != want_dtype:
        raise NacFormatError(f"{where}: {scheme} tensor {v.name!r} must be stored as {np.dtype(want_dtype)}"
                             f"{list(want)}, found {None if data is None else f'{data.dtype}{list(data.shape)}'}")
    scale = g.params.get(scale_name)
    sizes = (n,) if scheme == "int8" else (n, 1)
    if scale is None or scale.dtype != np.float32 or scale.ndim != 1 or scale.shape[0] not in sizes:
        raise NacFormatError(f"{where}: scale {scale_name!r} of {v.name!r} must be float32 of shape "
                             f"{' or '.join(f'[{s}]' for s in sizes)}")
    if not np.all(np.isfinite(scale)) or (scale < 0).any():
        raise NacFormatError(f"{where}: scale {scale_name!r} of {v.name!r} is corrupt (non-finite or negative)")
    if scheme == "ternary":
        codes = np.stack([(data >> s) & 3 for s in (0, 2, 4, 6)])
        if (codes == 3).any():
            raise NacFormatError(f"{where}: ternary tensor {v.name!r} holds values outside {{-1, 0, 1}} "
                                 f"(invalid 2-bit code 0b11)")


@dataclass
class Value:
    """A tensor in the graph.

    Attributes:
        name: unique name; graph inputs keep the model's argument names.
        dtype: a key of `DTYPES`.
        shape: one entry per axis: an int, or an expression over named dimensions.
        const: for a small inline constant, its data (nested lists); None otherwise.
        quant: for a quantised parameter, ``{"scheme": "int8" | "ternary", "scale": value name,
            "shape": [N, K]}`` (the logical shape; ``dtype``/``shape`` describe the stored data:
            int8 [N, K], or uint8 [N, ceil(K/4)] for ternary). None otherwise.
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    const: Any = None
    quant: dict | None = None

    def to_json(self) -> dict:
        d = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.const is not None:
            d["const"] = self.const
        if self.quant is not None:
            d["quant"] = self.quant
        return d

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)


@dataclass
class Node:
    """One op application.

    Attributes:
        op: a name from the op table (`nac.format.ops.OPS`).
        inputs: value names; "" marks an absent optional input.
        outputs: value names this node defines.
        attrs: JSON-serialisable attributes (ints, floats, strings, lists; dims may be expressions).
        source: the module path it came from (e.g. ``encoder.layer.0.attention``), for messages.
    """

    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    source: str = ""

    def to_json(self) -> dict:
        d = {"op": self.op, "inputs": self.inputs, "outputs": self.outputs}
        if self.attrs:
            d["attrs"] = self.attrs
        if self.source:
            d["source"] = self.source
        return d


@dataclass
class Graph:
    """A whole model: inputs, outputs, values, nodes, parameters and dimension ranges.

    Attributes:
        inputs / outputs: value names, in call order.
        values: every value by name (inputs, parameters, constants, intermediates, outputs).
        nodes: in a valid execution order.
        params: weights by value name (numpy arrays; views into the file once loaded).
        dims: the named dimensions with their allowed range, ``{"seq": {"min": 1, "max": 512}}``.
        param_aliases: value name -> name of a parameter with identical contents (stored once).
    """

    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    values: dict[str, Value] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    dims: dict[str, dict] = field(default_factory=dict)
    param_aliases: dict[str, str] = field(default_factory=dict)

    # -- construction -------------------------------------------------------------------------
    def add_value(self, name: str, dtype: str, shape, const=None) -> str:
        """Declare a value and return its name (made unique if taken)."""
        base, i = name, 1
        while name in self.values:
            name = f"{base}_{i}"
            i += 1
        self.values[name] = Value(name, dtype, tuple(shape), const)
        return name

    def add_param(self, name: str, array: np.ndarray) -> str:
        """Declare a parameter value holding ``array`` and return its name."""
        array = np.asarray(array, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        name = self.add_value(name, dtype_name(array.dtype), array.shape)
        self.params[name] = array
        return name

    def add_const(self, name: str, data, dtype: str) -> str:
        """Declare a small inline constant (a scalar or short list) and return its name."""
        arr = np.asarray(data, dtype=numpy_dtype(dtype))
        return self.add_value(name, dtype, arr.shape, const=arr.tolist())

    def rename_value(self, old: str, new: str) -> None:
        """Rename a value everywhere it is named: values, nodes, inputs/outputs, parameters,
        aliases and quantisation scales. ``new`` must be free."""
        if new in self.values:
            raise NacFormatError(f"cannot rename {old!r}: {new!r} is taken")
        v = self.values.pop(old)
        v.name = new
        self.values[new] = v
        for n in self.nodes:
            n.inputs = [new if i == old else i for i in n.inputs]
            n.outputs = [new if o == old else o for o in n.outputs]
        self.inputs = [new if i == old else i for i in self.inputs]
        self.outputs = [new if o == old else o for o in self.outputs]
        if old in self.params:
            self.params[new] = self.params.pop(old)
        self.param_aliases = {(new if a == old else a): (new if t == old else t) for a, t in self.param_aliases.items()}
        for other in self.values.values():
            if other.quant is not None and other.quant.get("scale") == old:
                other.quant = {**other.quant, "scale": new}

    # -- queries ------------------------------------------------------------------------------
    def producers(self) -> dict[str, Node]:
        """Map each value name to the node that defines it."""
        return {o: n for n in self.nodes for o in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        """Map each value name to the nodes that read it (graph outputs are not nodes)."""
        users: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    users.setdefault(i, []).append(n)
        return users

    def const_array(self, name: str) -> np.ndarray | None:
        """The data of a parameter or inline constant, or None for a computed value."""
        name = self.param_aliases.get(name, name)
        if name in self.params:
            return self.params[name]
        v = self.values.get(name)
        if v is not None and v.const is not None:
            return np.asarray(v.const, dtype=numpy_dtype(v.dtype)).reshape(v.shape)
        return None

    def param_count(self) -> int:
        """Number of model weights (a quantised tensor counts its logical elements; scales do not count)."""
        scales = {v.quant["scale"] for v in self.values.values() if v.quant}
        total = 0
        for name, a in self.params.items():
            q = self.values[name].quant
            if q is not None:
                total += int(np.prod(q["shape"]))
            elif name not in scales:
                total += a.size
        return int(total)

    # -- (de)serialisation --------------------------------------------------------------------
    def to_json(self) -> dict:
        """The graph section's JSON document (parameters are referenced by name, not included)."""
        return {
            "inputs": self.inputs,
            "outputs": self.outputs,
            "dims": self.dims,
            "values": [v.to_json() for v in self.values.values()],
            "params": sorted(self.params),
            "param_aliases": self.param_aliases,
            "nodes": [n.to_json() for n in self.nodes],
        }

    @classmethod
    def from_json(cls, doc: dict, params: dict[str, np.ndarray], where: str = "graph",
                  example_dims: dict | None = None) -> "Graph":
        """Rebuild a graph from its JSON document and its parameter arrays, checking it
        (`nac.format.validate.check_graph`: structure, dimension expressions, and every recorded
        shape against shape inference at the corners of the dimension ranges and at
        ``example_dims``).

        Raises:
            NacFormatError: a field is missing or ill-typed, a node names an unknown value or op,
                a parameter is missing or its dtype/shape disagrees with its value, a recorded
                shape disagrees with the op's shape rule.
        """
        from nac.format import schema
        from nac.format.ops import OPS
        from nac.format.validate import check_graph

        schema.validate(doc, "graph", where)
        names = [v["name"] for v in doc["values"]]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise NacFormatError(f"{where}: value {dup!r} is declared twice")
        try:
            g = cls(inputs=list(doc["inputs"]), outputs=list(doc["outputs"]), dims=dict(doc["dims"]),
                    param_aliases=dict(doc.get("param_aliases", {})))
            for v in doc["values"]:
                shape = tuple(v["shape"])
                for d in shape:
                    if isinstance(d, str):
                        parse_dim(d)
                    elif not isinstance(d, int) or d < 0:
                        raise NacFormatError(f"{where}: value {v['name']!r} has invalid dimension {d!r}")
                numpy_dtype(v["dtype"])
                g.values[v["name"]] = Value(v["name"], v["dtype"], shape, v.get("const"), v.get("quant"))
            for n in doc["nodes"]:
                g.nodes.append(Node(n["op"], list(n["inputs"]), list(n["outputs"]), dict(n.get("attrs", {})),
                                    n.get("source", "")))
            param_names = list(doc["params"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise NacFormatError(f"{where}: malformed graph document ({type(exc).__name__}: {exc})") from None

        for name in param_names:
            if name not in params:
                raise NacFormatError(f"{where}: parameter {name!r} is missing from the weights")
            v = g.values.get(name)
            arr = params[name]
            if v is None or numpy_dtype(v.dtype) != arr.dtype or tuple(v.shape) != arr.shape:
                raise NacFormatError(f"{where}: parameter {name!r} is {arr.dtype}{list(arr.shape)} in the weights "
                                     f"but {v.dtype if v else '?'}{list(v.shape) if v else '?'} in the graph")
            g.params[name] = arr
        for v in g.values.values():
            if v.quant is not None:
                _check_quant(g, v, where)
        for alias, target in g.param_aliases.items():
            if target not in g.params or alias not in g.values:
                raise NacFormatError(f"{where}: parameter alias {alias!r} -> {target!r} names no parameter")
        defined = set(g.inputs) | set(g.params) | set(g.param_aliases) | {
            n for n, v in g.values.items() if v.const is not None}
        for k, n in enumerate(g.nodes):
            if n.op not in OPS:
                raise NacFormatError(f"{where}: node {k} uses unknown op {n.op!r} (this NAC knows {len(OPS)} ops)")
            for i in n.inputs:
                if i and i not in defined:
                    raise NacFormatError(f"{where}: node {k} ({n.op}) reads {i!r} before it is defined")
            for o in n.outputs:
                if o not in g.values:
                    raise NacFormatError(f"{where}: node {k} ({n.op}) defines undeclared value {o!r}")
                if o in defined:
                    raise NacFormatError(f"{where}: node {k} ({n.op}) redefines value {o!r}")
                defined.add(o)
        for name in g.inputs + g.outputs:
            if name not in g.values or name not in defined:
                raise NacFormatError(f"{where}: graph input/output {name!r} is not defined")
        for name in g.inputs:
            if g.values[name].quant is not None or g.values[name].const is not None:
                raise NacFormatError(f"{where}: graph input {name!r} cannot be a constant or quantised")
        quantised = {n for n, v in g.values.items() if v.quant is not None}
        for k, n in enumerate(g.nodes):
            for pos, i in enumerate(n.inputs):
                if i in quantised and (n.op, pos) not in QUANTISED_INPUTS:
                    raise NacFormatError(f"{where}: node {k} ({n.op}) reads quantised tensor {i!r} as input {pos}; "
                                         f"only {sorted(QUANTISED_INPUTS)} take quantised weights")
        check_graph(g, where, example_dims)
        return g
