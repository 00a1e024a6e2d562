"""Graph validation: everything about a graph that must hold before the engine may plan it.

`check_graph` runs when a file is loaded (`Graph.from_json`, which has already checked the
document's schema and that every value is defined once, before it is read): op arity, required
inputs, dimension expressions that parse and
name only dimensions the inputs bind, inline constants that match their declared shape, and
the recorded shapes against shape inference (`nac.format.shapes`) at sample points of the
dimension ranges. `check_shapes` is the exact form of the last check, for one binding of the
named dimensions; the planner runs it for every input-shape signature before any buffer is
sized, so kernels only ever see outputs of the size their inputs produce.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from nac.errors import NacFormatError, NacInputError
from nac.format.graph import Graph, numpy_dtype
from nac.format.ops import DIM_ATTRS, OPS
from nac.format.shapes import ShapeError, infer
from nac.format.symbolic import eval_dim, eval_shape, parse_dim, symbols_of

MAX_CONST_ELEMENTS = 1 << 16  # inline constants are small by definition; tensors go in the parameters


def _node_name(g: Graph, k: int) -> str:
    n = g.nodes[k]
    return f"node {k} ({n.op}{', from ' + n.source if n.source else ''})"


def resolve_attrs(op: str, attrs: dict, env: Mapping[str, int]) -> dict:
    """The node's attributes with every dimension expression (`DIM_ATTRS`, and a `full` fill
    value given as an expression) evaluated for ``env``.

    Raises:
        NacFormatError: a malformed expression, or one that divides by zero.
        NacInputError: an expression names a dimension ``env`` does not bind.
    """
    out = dict(attrs)
    if op == "full" and isinstance(attrs.get("value"), str):
        out["value"] = eval_dim(attrs["value"], env)
    for k in DIM_ATTRS.intersection(attrs):
        v = attrs[k]
        if isinstance(v, list):
            out[k] = [eval_dim(d, env) if isinstance(d, (str, int)) and not isinstance(d, bool) else d for d in v]
        elif isinstance(v, (str, int)) and not isinstance(v, bool):
            out[k] = eval_dim(v, env)
    return out


def input_shape(g: Graph, name: str, vshape: Mapping[str, tuple]) -> tuple:
    """What a kernel sees of input ``name``: a quantised weight's logical shape, else its shape."""
    q = g.values[name].quant
    return tuple(int(d) for d in q["shape"]) if q is not None else vshape[name]


def input_dtype(g: Graph, name: str) -> str:
    """What a kernel sees of input ``name``'s dtype: float32 for a quantised weight (its kernels
    compute in float32), else the recorded dtype."""
    return "float32" if g.values[name].quant is not None else g.values[name].dtype


def check_shapes(g: Graph, vshape: Mapping[str, tuple], env: Mapping[str, int], where: str) -> list[dict]:
    """Check every node's recorded outputs against shape inference, for one binding ``env``.

    Args:
        vshape: every value's shape evaluated for ``env``.
    Returns:
        The resolved attributes, one dict per node.
    Raises:
        NacFormatError: a node's attributes are invalid, its inputs do not fit the op, or an
            output's recorded shape or dtype differs from what the op produces; the message
            names the node, its op and the module it came from.
    """
    resolved = []
    for k, n in enumerate(g.nodes):
        try:
            at = resolve_attrs(n.op, n.attrs, env)
            ins = [input_shape(g, i, vshape) if i else None for i in n.inputs]
            dts = [input_dtype(g, i) if i else None for i in n.inputs]
            outs = infer(n.op, ins, dts, at)
        except ShapeError as exc:
            raise NacFormatError(f"{where}: {_node_name(g, k)} is invalid for {dict(env)}: {exc}") from None
        resolved.append(at)
        if len(outs) != len(n.outputs):
            raise NacFormatError(f"{where}: {_node_name(g, k)} lists {len(n.outputs)} outputs; the op has {len(outs)}")
        for o, (shape, dtype) in zip(n.outputs, outs):
            rec = vshape[o]
            if shape is not None and tuple(shape) != tuple(rec):
                raise NacFormatError(f"{where}: {_node_name(g, k)} records output {o!r} as {list(g.values[o].shape)}"
                                     f" = {list(rec)} for {dict(env)}, but its inputs give {list(shape)}")
            if dtype is not None and dtype != g.values[o].dtype:
                raise NacFormatError(f"{where}: {_node_name(g, k)} records output {o!r} as {g.values[o].dtype}; "
                                     f"the op produces {dtype}")
    return resolved


def sample_envs(g: Graph, extra: Mapping[str, int] | None = None) -> list[dict[str, int]]:
    """Bindings of the named dimensions to check a graph at: every dimension at its minimum, every
    one at its maximum (unbounded ones at minimum + 7), and ``extra`` (e.g. the export example)."""
    names = sorted(g.dims)
    lo = {d: int(g.dims[d].get("min") or 0) for d in names}
    hi = {d: int(g.dims[d]["max"]) if g.dims[d].get("max") is not None else lo[d] + 7 for d in names}
    envs = [lo, hi]
    if extra and set(extra) == set(names) and all(type(extra[d]) is int and lo[d] <= extra[d] <= hi[d]
                                                  for d in names):
        envs.append(dict(extra))
    out = []
    for e in envs:
        if e not in out:
            out.append(e)
    return out


def check_graph(g: Graph, where: str, example: Mapping[str, int] | None = None) -> None:
    """Structural and shape validation of a whole graph (see the module docstring).

    Raises:
        NacFormatError: naming the value or node that is wrong and what is wrong with it.
    """
    bound = set()
    for name in g.inputs:
        for d in g.values[name].shape:
            if isinstance(d, str) and d.isidentifier():
                bound.add(d)
            elif isinstance(d, str) and len(symbols_of(d)) == 1:  # a derived size: the planner solves it
                bound |= symbols_of(d)
    for d, rng in g.dims.items():
        lo, hi = rng.get("min") or 0, rng.get("max")
        if hi is not None and hi < lo:
            raise NacFormatError(f"{where}: dimension {d!r} has an empty range [{lo}, {hi}]")
    unbound = bound - set(g.dims)
    if unbound:
        raise NacFormatError(f"{where}: input dimension(s) {sorted(unbound)} have no range in 'dims'")

    def symbols(d, what: str) -> None:
        if isinstance(d, str):
            parse_dim(d)
            extra = symbols_of(d) - bound
            if extra:
                raise NacFormatError(f"{where}: {what} uses dimension(s) {sorted(extra)} that no input binds")

    for v in g.values.values():
        for d in v.shape:
            symbols(d, f"value {v.name!r}")
        if v.const is not None:
            if not v.is_static or int(np.prod(v.shape, dtype=np.int64)) > MAX_CONST_ELEMENTS:
                raise NacFormatError(f"{where}: inline constant {v.name!r} must have a small static shape, "
                                     f"not {list(v.shape)}")
            try:
                arr = np.asarray(v.const, dtype=numpy_dtype(v.dtype))
                ok = arr.size == int(np.prod(v.shape, dtype=np.int64))
            except (ValueError, TypeError, OverflowError, RecursionError):
                ok = False
            if not ok:
                raise NacFormatError(f"{where}: inline constant {v.name!r} does not hold {v.dtype}{list(v.shape)}")

    if len(set(g.inputs)) != len(g.inputs):
        raise NacFormatError(f"{where}: an input is listed twice in {g.inputs}")
    if set(g.inputs) & (set(g.params) | set(g.param_aliases)):
        raise NacFormatError(f"{where}: input(s) {sorted(set(g.inputs) & set(g.params))} are also parameters")
    for k, n in enumerate(g.nodes):
        schema = OPS[n.op]
        fewest, most = schema.arity()
        if not fewest <= len(n.inputs) <= (most if most is not None else len(n.inputs)):
            raise NacFormatError(f"{where}: {_node_name(g, k)} has {len(n.inputs)} inputs; {n.op} takes "
                                 f"{fewest}{'' if most == fewest else f' to {most}' if most else ' or more'}")
        for pos, i in enumerate(n.inputs):
            if not i and (pos < fewest and not schema.inputs[min(pos, len(schema.inputs) - 1)].endswith("*")):
                raise NacFormatError(f"{where}: {_node_name(g, k)} leaves required input {pos} empty")
        unknown = set(n.attrs) - set(schema.attrs)
        if unknown:  # every attribute a kernel may read is declared (and checked by the shape rule)
            raise NacFormatError(f"{where}: {_node_name(g, k)} has attribute(s) {sorted(unknown)[:5]} that {n.op} "
                                 f"does not take (it takes {sorted(schema.attrs) or 'none'})")
        for key in DIM_ATTRS.intersection(n.attrs):
            v = n.attrs[key]
            for d in v if isinstance(v, list) else [v]:
                symbols(d, f"{_node_name(g, k)} attribute {key!r}")
        if n.op == "full" and isinstance(n.attrs.get("value"), str):
            symbols(n.attrs["value"], f"{_node_name(g, k)} attribute 'value'")
    if len(set(g.outputs)) != len(g.outputs):
        raise NacFormatError(f"{where}: an output is listed twice in {g.outputs}")

    for env in sample_envs(g, example):
        try:
            vshape = {name: eval_shape(v.shape, env) for name, v in g.values.items()}
        except NacInputError as exc:
            raise NacFormatError(f"{where}: {exc}") from None
        for name, s in vshape.items():
            if any(d < 0 for d in s):
                raise NacFormatError(f"{where}: value {name!r} has negative shape {list(s)} for {env}")
        check_shapes(g, vshape, env, where)
