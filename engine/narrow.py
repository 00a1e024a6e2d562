"""Logits for the last positions only: a causal LM's step graph, narrowed before its LM head.

A generation prefill needs the logits of the last prompt token, but the step graph computes them
for every position: for GPT-2 at 512 tokens the LM head alone is 512 x 768 x 50,257 multiply-adds,
a third of the prefill. transformers (``logits_to_keep``) and llama.cpp (a batch's ``logits``
flags) skip those rows, and so does `Method.run(..., logits_to_keep=k)` through `keep_last`.

The rewrite is safe by construction: it walks back from the ``logits`` output through ops that
act on each row (each position) independently -- ``linear``, ``layer_norm`` and ``rms_norm`` over
the last axis, ``reshape`` keeping the last axis, ``cast``, element-wise ops whose other operands
are single-element constants -- to the farthest value back shaped ``[batch, seq, hidden]`` whose
``seq`` is a named input dimension. A ``slice`` of the last ``k`` positions goes in there, and the
path's recorded shapes and reshape targets have ``seq`` replaced by ``min(seq, k)``, so the plan's
shape check (`nac.format.validate.check_shapes`) still verifies every value. A graph that does not
match the pattern is not narrowed (the caller runs the whole graph and slices: same answer, slower).
"""
from __future__ import annotations

import dataclasses
import re

from nac.format.graph import Graph, Node

#: Element-wise ops that are row-wise when every operand but the first is a one-element constant.
_ELEMENTWISE = frozenset({"add", "sub", "mul", "div", "pow", "tanh", "sigmoid", "gelu", "relu", "silu", "neg", "exp",
                          "clamp", "copy"})


def _rowwise(g: Graph, n: Node) -> bool:
    """Whether node ``n`` maps each row (all axes but the last) of its first input to the same
    row of its output, independently of the other rows."""
    others = [i for i in n.inputs[1:] if i]
    if n.op == "linear":
        return all(g.const_array(i) is not None for i in others)
    if n.op in ("layer_norm", "rms_norm"):
        return n.attrs.get("axes") == 1 and all(g.const_array(i) is not None for i in others)
    if n.op == "reshape":
        x, y = g.values[n.inputs[0]].shape, g.values[n.outputs[0]].shape
        return bool(x) and bool(y) and x[-1] == y[-1] and isinstance(x[-1], int)
    if n.op == "cast" or n.op in _ELEMENTWISE:
        for i in others:
            c = g.const_array(i)
            if c is None or c.size != 1:
                return False
        return True
    return False


def keep_last(g: Graph, k: int, output: str = "logits") -> Graph | None:
    """``g`` with ``output`` computed for the last ``k`` positions of the sequence only, cut as
    far back along the row-wise path as it goes (before the final norm, for the usual LM head).

    Args:
        g: a step graph (not modified; the result shares its unchanged values and nodes).
        k: how many trailing positions to keep (>= 1); a shorter sequence keeps all of it.
        output: the graph output to narrow, shaped ``[batch, seq, ...]``.
    Returns:
        The narrowed graph, whose ``output`` is ``[batch, min(seq, k), ...]`` and equal to the
        last ``k`` rows of the full graph's; or None when ``g`` does not have the pattern above
        (no row-wise path from a ``[batch, seq, hidden]`` value to ``output``).
    """
    if k < 1 or output not in g.outputs:
        return None
    named = {d for name in g.inputs for d in g.values[name].shape if isinstance(d, str) and d.isidentifier()}
    out_shape = g.values[output].shape
    if len(out_shape) < 2 or out_shape[1] not in named:
        return None
    seq = out_shape[1]
    producers, users = g.producers(), g.consumers()
    path, cut_at, name = [], 0, output  # cut before path[cut_at - 1], the farthest point back
    while True:
        n = producers.get(name)
        if n is None or len(n.outputs) != 1 or not _rowwise(g, n):
            break
        path.append(n)
        x = n.inputs[0]
        shape = g.values[x].shape
        if len(shape) == 3 and shape[:2] == out_shape[:2]:  # the same [batch, seq] rows as the output
            cut_at = len(path)
        if x in g.outputs or users.get(x) != [n]:
            break  # an intermediate read elsewhere must stay whole
        name = x
    if not cut_at:
        return None
    path = path[:cut_at]
    x = path[-1].inputs[0]
    shape = g.values[x].shape
    word = re.compile(rf"\b{re.escape(seq)}\b")
    short = f"min({seq}, {k})"

    def sub(d):
        return word.sub(short, d) if isinstance(d, str) else d

    out = dataclasses.replace(g, values=dict(g.values), nodes=list(g.nodes))
    sliced = out.add_value(f"{x}_last{k}", g.values[x].dtype, (shape[0], short, shape[2]))
    cut = Node("slice", [x], [sliced], {"dim": 1, "start": f"max(0, {seq} - {k})", "end": seq, "step": 1},
               path[-1].source)
    index = {id(n): i for i, n in enumerate(g.nodes)}
    for n in path:
        for o in n.outputs:
            out.values[o] = dataclasses.replace(g.values[o], shape=tuple(sub(d) for d in g.values[o].shape))
        attrs = dict(n.attrs)
        if n.op == "reshape":
            attrs["shape"] = [sub(d) for d in attrs["shape"]]
        inputs = [sliced if n is path[-1] and j == 0 else i for j, i in enumerate(n.inputs)]
        out.nodes[index[id(n)]] = Node(n.op, inputs, list(n.outputs), attrs, n.source)
    out.nodes.insert(index[id(path[-1])], cut)
    return out
