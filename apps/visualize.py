"""`nac visualize`: a compiled graph as a picture (Mermaid text, or SVG/PNG through Graphviz).

Every node is a box labelled with its op and output shape; graph inputs and outputs are rounded;
weights are dashed inputs. A large graph is collapsed by module: the nodes whose source module
path shares its first ``depth`` components (``encoder.layer.3`` at depth 3) become one box listing
how many nodes of each op it holds, so a 30-layer model is thirty boxes, not three thousand.
`view` computes that picture once; `mermaid` and `graphviz_source` only draw it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from nac.errors import NacError
from nac.format.graph import Graph

__all__ = ["View", "view", "mermaid", "graphviz_source", "render"]

DEFAULT_MAX_NODES = 60


@dataclass
class Box:
    """One drawn node: ``kind`` is op, input, output, weight or module."""

    id: str
    kind: str
    label: str
    detail: str = ""


@dataclass
class View:
    """The picture of a graph: boxes and edges (``(from, to, dashed)``), and the collapse depth
    used (None when every node is drawn)."""

    boxes: list[Box] = field(default_factory=list)
    edges: list[tuple[str, str, bool]] = field(default_factory=list)
    depth: int | None = None

    def count(self, kind: str | None = None) -> int:
        return sum(1 for b in self.boxes if kind is None or b.kind == kind)


def _shape(g: Graph, name: str) -> str:
    return "[" + ", ".join(str(d) for d in g.values[name].shape) + "]"


def _module_key(source: str, depth: int) -> str:
    # a node's source reads ``encoder.layer.0.attention (BertAttention)``: the path is the first word
    path = source.split(" ", 1)[0]
    return ".".join(path.split(".")[:depth]) if path else ""


def _collapsed_count(g: Graph, depth: int) -> int:
    keys = {_module_key(n.source, depth) or f"#{k}" for k, n in enumerate(g.nodes)}
    return len(keys)


def view(model_or_path, *, max_nodes: int | None = DEFAULT_MAX_NODES, collapse: int | None = None,
         weights: bool = True) -> View:
    """The picture of a graph.

    Args:
        model_or_path: a `.nac` path, a `nac.Model` or a `Graph`.
        max_nodes: when the graph has more op nodes than this and ``collapse`` is not given, collapse
            at the deepest module depth that draws at most this many boxes (depth 1 if none does).
            None never collapses on its own.
        collapse: collapse at this module depth (1 = top-level modules); 0 or None: by ``max_nodes``.
        weights: draw parameters as dashed inputs (one per weight, or one summary per module box).
    Raises:
        NacError: ``collapse`` or ``max_nodes`` is negative.
    """
    from nac.apps.reconstruct import _graph_of

    g, _ = _graph_of(model_or_path)
    if (collapse is not None and collapse < 0) or (max_nodes is not None and max_nodes < 1):
        raise NacError("collapse must be >= 0 and max_nodes >= 1")
    depth = collapse or None
    if depth is None and max_nodes is not None and len(g.nodes) > max_nodes:
        deepest = max((len(n.source.split(" ", 1)[0].split(".")) for n in g.nodes if n.source), default=1)
        fitting = [d for d in range(1, deepest + 1) if _collapsed_count(g, d) <= max_nodes]
        depth = fitting[-1] if fitting else 1
    v = View(depth=depth)
    box_of: dict[str, str] = {}  # value name -> the box that produces it
    for i in g.inputs:
        bid = f"in{len(v.boxes)}"
        v.boxes.append(Box(bid, "input", i, f"{g.values[i].dtype}{_shape(g, i)}"))
        box_of[i] = bid
    params = set(g.params) | set(g.param_aliases)
    groups: dict[str, list] = {}
    order: list[str] = []
    for k, n in enumerate(g.nodes):
        key = (_module_key(n.source, depth) if depth else "") or f"#{k}"
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(n)
    for gi, key in enumerate(order):  # every value's producing box first: a module's nodes may interleave
        for n in groups[key]:
            for o in n.outputs:
                box_of[o] = f"n{gi}"
    weight_ids: dict[str, str] = {}
    for gi, key in enumerate(order):
        nodes = groups[key]
        bid = f"n{gi}"
        last = nodes[-1].outputs[0]
        if key.startswith("#"):
            n = nodes[0]
            v.boxes.append(Box(bid, "op", n.op, _shape(g, n.outputs[0])))
        else:
            ops = Counter(n.op for n in nodes)
            summary = ", ".join(f"{op}×{c}" if c > 1 else op for op, c in ops.most_common(4))
            more = "" if len(ops) <= 4 else ", …"
            v.boxes.append(Box(bid, "module", key, f"{len(nodes)} node{'s' if len(nodes) > 1 else ''}: "
                                                   f"{summary}{more} → {_shape(g, last)}"))
        sources, module_weights = [], []
        for n in nodes:
            for i in n.inputs:
                if not i:
                    continue
                if i in params:
                    module_weights.append(i)
                elif i in box_of and box_of[i] != bid and box_of[i] not in sources:
                    sources.append(box_of[i])
        for s in sources:
            v.edges.append((s, bid, False))
        if weights and module_weights:
            unique = list(dict.fromkeys(module_weights))
            if key.startswith("#"):
                for w in unique:
                    if w not in weight_ids:
                        weight_ids[w] = f"w{len(weight_ids)}"
                        v.boxes.append(Box(weight_ids[w], "weight", w, _weight_detail(g, w)))
                    v.edges.append((weight_ids[w], bid, True))
            else:
                wid = f"w{len(weight_ids)}_{gi}"
                weight_ids[wid] = wid
                count = sum(_elements(g, w) for w in unique)
                v.boxes.append(Box(wid, "weight", f"{len(unique)} weight{'s' if len(unique) > 1 else ''}",
                                   f"{count:,} parameters"))
                v.edges.append((wid, bid, True))
    for o in g.outputs:
        bid = f"out{len(v.boxes)}"
        v.boxes.append(Box(bid, "output", o, f"{g.values[o].dtype}{_shape(g, o)}"))
        if o in box_of:
            v.edges.append((box_of[o], bid, False))
    return v


def _elements(g: Graph, name: str) -> int:
    name = g.param_aliases.get(name, name)
    q = g.values[name].quant
    shape = q["shape"] if q else g.params[name].shape
    out = 1
    for d in shape:
        out *= int(d)
    return out


def _weight_detail(g: Graph, name: str) -> str:
    target = g.param_aliases.get(name, name)
    q = g.values[target].quant
    return f"{q['scheme']}{list(q['shape'])}" if q else f"{g.values[target].dtype}{_shape(g, target)}"


# ------------------------------------------------------------------------------------------------
# drawing
# ------------------------------------------------------------------------------------------------
def _mermaid_text(s: str) -> str:
    """Label text for Mermaid: one line (control characters become spaces), markup escaped."""
    s = "".join(c if c.isprintable() else " " for c in s)
    return s.replace("&", "&amp;").replace('"', "#quot;").replace("<", "&lt;").replace(">", "&gt;")


def mermaid(v: View, direction: str = "TD") -> str:
    """Mermaid flowchart text of a `View` (renders on GitHub, in Markdown previews, mermaid.live)."""
    shapes = {"input": ('(["', '"])'), "output": ('(["', '"])'), "op": ('["', '"]'), "module": ('[["', '"]]'),
              "weight": ('[/"', '"/]')}
    lines = [f"flowchart {direction}"]
    for b in v.boxes:
        lo, hi = shapes[b.kind]
        text = _mermaid_text(b.label) + (f"<br/><small>{_mermaid_text(b.detail)}</small>" if b.detail else "")
        lines.append(f"  {b.id}{lo}{text}{hi}")
    for a, b, dashed in v.edges:
        lines.append(f"  {a} {'-.->' if dashed else '-->'} {b}")
    lines += ["  classDef weight stroke-dasharray: 4 3,fill:#f7f7f7,color:#555",
              "  classDef io fill:#e8f0fe"]
    w = [b.id for b in v.boxes if b.kind == "weight"]
    io = [b.id for b in v.boxes if b.kind in ("input", "output")]
    if w:
        lines.append(f"  class {','.join(w)} weight")
    if io:
        lines.append(f"  class {','.join(io)} io")
    return "\n".join(lines) + "\n"


def graphviz_source(v: View, name: str = "nac"):
    """A ``graphviz.Digraph`` of a `View` (needs the ``graphviz`` package; rendering needs the
    Graphviz ``dot`` program). Raises NacError when the package is missing."""
    try:
        import graphviz
    except ImportError:
        raise NacError("SVG/PNG output needs the graphviz package (pip install 'nac[tools]') and Graphviz's "
                       "dot (apt install graphviz); Mermaid output (.mmd) needs neither") from None
    dot = graphviz.Digraph(name, graph_attr={"rankdir": "TB", "fontname": "Helvetica"},
                           node_attr={"fontname": "Helvetica", "fontsize": "10"},
                           edge_attr={"arrowsize": "0.6"})
    style = {"input": {"shape": "box", "style": "rounded,filled", "fillcolor": "#e8f0fe"},
             "output": {"shape": "box", "style": "rounded,filled", "fillcolor": "#e8f0fe"},
             "op": {"shape": "box"},
             "module": {"shape": "box3d", "style": "filled", "fillcolor": "#fff8e1"},
             "weight": {"shape": "note", "style": "dashed", "fontcolor": "#555555", "fontsize": "8"}}
    for b in v.boxes:
        label = b.label + (f"\n{b.detail}" if b.detail else "")
        dot.node(b.id, label, **style[b.kind])
    for a, b, dashed in v.edges:
        dot.edge(a, b, **({"style": "dashed", "color": "#888888"} if dashed else {}))
    return dot


def render(model_or_path, output, *, max_nodes: int | None = DEFAULT_MAX_NODES, collapse: int | None = None,
           weights: bool = True) -> tuple[Path, View]:
    """Draw a graph to ``output``: ``.mmd`` (Mermaid), ``.md`` (Mermaid in a fenced block),
    ``.svg``, ``.png`` or ``.dot``. Returns (the path written, the `View`).

    Raises:
        NacError: an unknown extension, or SVG/PNG without graphviz (package or ``dot`` program).
    """
    output = Path(output)
    v = view(model_or_path, max_nodes=max_nodes, collapse=collapse, weights=weights)
    ext = output.suffix.lower()
    if ext in (".mmd", ".mermaid"):
        output.write_text(mermaid(v), encoding="utf-8")
    elif ext == ".md":
        output.write_text("```mermaid\n" + mermaid(v) + "```\n", encoding="utf-8")
    elif ext in (".svg", ".png", ".dot"):
        dot = graphviz_source(v)
        if ext == ".dot":
            output.write_text(dot.source, encoding="utf-8")
        else:
            import graphviz

            try:
                data = dot.pipe(format=ext[1:])
            except graphviz.ExecutableNotFound:
                raise NacError("Graphviz's dot program is not installed (apt install graphviz, or `make setup`); "
                               "write .mmd for Mermaid instead") from None
            output.write_bytes(data)
    else:
        raise NacError(f"{output}: unknown picture format {ext!r} (use .mmd, .md, .svg, .png or .dot)")
    return output, v
