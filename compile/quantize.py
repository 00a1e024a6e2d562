"""Post-training quantisation of a NAC graph's weights (after the optimisation passes).

``quantize`` is None, ``"int8"``, ``"ternary"``, or ``{module glob: scheme}`` with schemes
``"int8"``, ``"ternary"``, ``"none"`` (keep float), each optionally suffixed ``"+a8"`` to run that
layer with per-token int8 activations (W8A8 / W1.58A8). Globs match the module path of the layer
(``encoder.layer.*.intermediate.dense``); the first matching entry wins.

- ``"int8"``: every linear weight (per output channel) and every embedding table (per row).
- ``"ternary"``: every linear weight by absmean rounding (BitNet b1.58), except embedding tables,
  weights tied to one, and linears that produce a graph output (the LM head), which get int8
  unless a dict names them.
- Independently of ``quantize``, a linear weight that is already exactly ternary times one scale
  (what a `BitLinear` layer exports) is stored ternary: lossless and 16x smaller than float32.
"""
from __future__ import annotations

import fnmatch

import numpy as np

from nac.errors import NacExportError
from nac.format.graph import Graph
from nac.format.ops import QUANTISED_INPUTS, VIEW_OPS
from nac.format.quant import exact_ternary, pack_ternary_rows, quantize_int8, quantize_ternary


QUANTISABLE = dict(QUANTISED_INPUTS)  # op -> index of its weight input (from the op table)
_SHAPE_OPS = VIEW_OPS | {"copy", "cast"}  # ops a value passes through unchanged in content


def _feeds_output(g: Graph, value: str, users: dict) -> bool:
    """True if ``value`` is a graph output, directly or through shape-only ops (an output layer)."""
    seen, todo = set(), [value]
    while todo:
        v = todo.pop()
        if v in g.outputs:
            return True
        if v in seen:
            continue
        seen.add(v)
        todo += [o for u in users.get(v, []) if u.op in _SHAPE_OPS for o in u.outputs]
    return False


def _module(node) -> str:
    return node.source.split(" (", 1)[0]


def _rules(spec) -> list[tuple[str, str]]:
    if spec is None:
        return []
    if isinstance(spec, str):
        return [("*", spec)]
    if isinstance(spec, dict):
        return list(spec.items())
    raise NacExportError(f"quantize must be None, 'int8', 'ternary' or a dict of module glob -> scheme, "
                         f"not {type(spec).__name__}")


def _check_scheme(s: str) -> tuple[str, str]:
    base, _, act = str(s).partition("+")
    if base not in ("int8", "ternary", "none") or act not in ("", "a8"):
        raise NacExportError(f"unknown quantisation scheme {s!r}; use int8, ternary or none, optionally with +a8")
    return base, "int8" if act else "none"


def quantize_graph(g: Graph, spec) -> dict:
    """Quantise ``g``'s weights in place as ``spec`` says; returns a per-tensor report.

    Raises:
        NacExportError: an unknown scheme, or a glob that names layers which cannot be quantised
            (their weights are not the 2-D weight of a linear or an embedding table).
    """
    rules = [(glob, *_check_scheme(s)) for glob, s in _rules(spec)]
    explicit = isinstance(spec, dict)
    users = g.consumers()
    aliases_of: dict[str, list[str]] = {}
    for a, t in g.param_aliases.items():
        aliases_of.setdefault(t, []).append(a)

    if explicit:  # every glob must name something quantisable
        for glob, _, _ in rules:
            hits = [n for n in g.nodes if fnmatch.fnmatchcase(_module(n), glob)]
            weighted = [n for n in hits if any(i in g.params or i in g.param_aliases for i in n.inputs)]
            if weighted and not any(n.op in QUANTISABLE for n in weighted):
                n = weighted[0]
                shapes = [list(g.values[i].shape) for i in n.inputs if i in g.params]
                raise NacExportError(f"cannot quantise {_module(n)!r} ({n.op}, weights {shapes}): only the 2-D "
                                     f"weights of linear layers and embedding tables can be quantised")

    decisions: dict[str, tuple[str, str, list]] = {}  # param -> (scheme, act quant, nodes)
    for n in g.nodes:
        if n.op not in QUANTISABLE:
            continue
        name = n.inputs[QUANTISABLE[n.op]]
        canon = g.param_aliases.get(name, name)
        w = g.params.get(canon)
        if w is None or w.ndim != 2 or w.dtype != np.float32:
            continue
        scheme, act = "none", "none"
        for glob, s, a in rules:
            if fnmatch.fnmatchcase(_module(n), glob):
                scheme, act = s, a
                break
        if scheme == "ternary" and not explicit and (
                n.op == "embedding" or any(u.op == "embedding" for r in [canon, *aliases_of.get(canon, [])]
                                           for u in users.get(r, [])) or any(_feeds_output(g, o, users)
                                                                             for o in n.outputs)):
            scheme = "int8"  # embeddings and the LM head stay int8 unless asked
        if scheme == "none" and n.op == "linear" and exact_ternary(w) is not None:
            scheme = "ternary"  # a BitLinear weight: store it losslessly
        prev = decisions.get(canon)
        if prev is not None and prev[0] != scheme:
            scheme = "int8" if "none" not in (prev[0], scheme) else "none"  # conflicting uses: the safer one
        decisions[canon] = (scheme, act, (prev[2] if prev else []) + [n])

    report = {}
    for canon, (scheme, act, nodes) in decisions.items():
        readers = [u for r in [canon, *aliases_of.get(canon, [])] for u in users.get(r, [])]
        if scheme == "none" or any(u.op not in QUANTISABLE or u.inputs.index(r) != QUANTISABLE[u.op]
                                   for r in [canon, *aliases_of.get(canon, [])] for u in users.get(r, [])
                                   if r in u.inputs):
            continue
        w = g.params[canon]
        if any(u.attrs.get("weight_layout", "oi") == "io" for u in readers if u.op == "linear"):
            w = np.ascontiguousarray(w.T)  # back to [out, in]: scales are per output channel
            for u in readers:
                if u.op == "linear":
                    u.attrs["weight_layout"] = "oi"
        before = w.nbytes
        if scheme == "int8":
            data, scale = quantize_int8(w)
        else:
            s = exact_ternary(w)
            t, scale = (np.rint(w / s[0]).astype(np.int8), s) if s is not None else quantize_ternary(w)
            data = pack_ternary_rows(t)
        g.params[canon] = data
        v = g.values[canon]
        v.dtype, v.shape = str(data.dtype), tuple(data.shape)
        scale_name = g.add_param(f"{canon}.scale", scale)
        v.quant = {"scheme": scheme, "scale": scale_name, "shape": list(w.shape)}
        for a in aliases_of.get(canon, []):
            g.values[a].dtype, g.values[a].shape, g.values[a].quant = v.dtype, v.shape, dict(v.quant)
        if act != "none":
            for u in readers:
                if u.op == "linear":
                    u.attrs["activation_quant"] = act
        report[canon] = {"scheme": scheme + ("+a8" if act != "none" else ""), "float_bytes": before,
                         "bytes": data.nbytes + scale.nbytes}
    return report


def summarize(report: dict, spec) -> dict:
    """The metadata entry for a quantisation report (``compile.quantize`` in the file)."""
    return {"spec": dict(spec) if isinstance(spec, dict) else spec, "tensors": len(report),
            "float_bytes": sum(r["float_bytes"] for r in report.values()),
            "bytes": sum(r["bytes"] for r in report.values())}
