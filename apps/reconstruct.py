"""`nac reconstruct`: a compiled graph as text a person can read, or as a runnable PyTorch module.

`pseudo_code(graph)` writes one line per node, ``y = op(inputs, attr=value)  # [batch, seq, 384]``,
grouped under a comment naming the module each run of nodes came from. `torch_source(graph)`
writes a self-contained Python file defining ``class Reconstructed(torch.nn.Module)``: one
statement per node in plain ``torch`` / ``torch.nn.functional`` calls, the parameters as buffers
(quantised weights dequantised, ternary ones unpacked), and ``Reconstructed.from_nac(path)`` to
load them from the `.nac` file. Its outputs equal the engine's within float32 rounding (the test
suite checks every op, and whole models, at 1e-5 of the output scale).
"""
from __future__ import annotations

import keyword
import re
from pathlib import Path

from nac.errors import NacError
from nac.format.graph import Graph
from nac.format.ops import operands

__all__ = ["pseudo_code", "torch_source", "torch_module", "reconstruct"]

_TORCH_DTYPE = {"float32": "torch.float32", "float16": "torch.float16", "int64": "torch.int64",
                "int32": "torch.int32", "int8": "torch.int8", "uint8": "torch.uint8", "bool": "torch.bool"}


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _graph_of(model_or_path) -> tuple[Graph, str]:
    """(graph, name) of a `Model`, a `Graph` or a `.nac` path."""
    if isinstance(model_or_path, Graph):
        return model_or_path, "graph"
    if isinstance(model_or_path, (str, Path)):
        from nac.format.container import read_nac

        return read_nac(model_or_path).graph, Path(model_or_path).name
    graph = getattr(model_or_path, "graph", None)
    if not isinstance(graph, Graph):
        raise NacError(f"expected a .nac path, a nac.Model or a Graph, got {type(model_or_path).__name__}")
    return graph, getattr(getattr(model_or_path, "file", None), "path", Path("model")).name


# ------------------------------------------------------------------------------------------------
# pseudo-code
# ------------------------------------------------------------------------------------------------
def pseudo_code(model_or_path) -> str:
    """The graph as Python-like pseudo-code.

    Lines: a header listing the inputs (with their symbolic shapes), the named dimensions and
    their ranges; then one ``outputs = op(inputs, attrs)  # shape`` line per node, with a
    ``# -- module.path`` comment wherever the module the nodes came from changes; then the
    ``return`` of the outputs. Parameters appear by name, quantised ones with their scheme.

    Args:
        model_or_path: a `.nac` path, a `nac.Model` or a `Graph`.
    Raises:
        NacFormatError: the file is not a valid `.nac`.
    """
    g, name = _graph_of(model_or_path)
    lines = [f"# {_text(name)}: {len(g.nodes)} nodes, {g.param_count():,} parameters"]
    for d, r in g.dims.items():
        lines.append(f"# dimension {d} in [{r.get('min')}, {r.get('max') if r.get('max') is not None else 'inf'}]")
    args = ", ".join(f"{i}: {g.values[i].dtype}{_shape_text(g.values[i].shape)}" for i in g.inputs)
    lines.append(f"def forward({args}):")

    def ref(v: str) -> str:
        if not v:
            return "None"
        val = g.values[v]
        if val.const is not None and len(str(val.const)) <= 40:
            return str(val.const)
        if val.quant is not None:
            return f"{v}<{val.quant['scheme']}>"
        return v

    source = None
    for n in g.nodes:
        if n.source != source:
            source = n.source
            lines.append(f"    # -- {_text(source) or '(top level)'}")
        args = [ref(i) for i in n.inputs] + [f"{k}={v!r}" for k, v in n.attrs.items()]
        outs = ", ".join(n.outputs)
        shapes = "; ".join(f"{g.values[o].dtype}{_shape_text(g.values[o].shape)}" for o in n.outputs)
        lines.append(f"    {outs} = {n.op}({', '.join(args)})  # {shapes}")
    lines.append(f"    return {', '.join(g.outputs)}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# a PyTorch module
# ------------------------------------------------------------------------------------------------
_PRELUDE = '''
def _attention(q, k, v, mask, k_tail, v_tail, scale, is_causal, enable_gqa):
    """softmax(q @ k^T * scale + mask) @ v, as NAC's scaled_dot_product_attention: keys are k then
    k_tail; a bool mask keeps True; causal keeps j <= i; a fully masked row gives zeros."""
    if k_tail is not None:
        k, v = torch.cat([k, k_tail], dim=-2), torch.cat([v, v_tail], dim=-2)
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)
    s = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    if is_causal:
        L, S = s.shape[-2:]
        s = s.masked_fill(torch.ones(L, S, dtype=torch.bool).triu(1), float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.nan_to_num(p, nan=0.0) @ v


def _activation(y, name):
    """The activation a linear or conv2d node applies to its result (NAC's ACTIVATIONS)."""
    return {"none": lambda t: t, "relu": F.relu, "relu6": F.relu6, "gelu": F.gelu,
            "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "silu": F.silu, "sigmoid": torch.sigmoid,
            "tanh": torch.tanh, "hardswish": F.hardswish}[name](y)


def _quantize_rows(x):
    """Per-row symmetric int8 fake quantisation (NAC's activation_quant='int8'): x -> q * s,
    s = max|x_row| / 127 (1 for a zero row), q = clip(round(x / s), -127, 127)."""
    amax = x.abs().amax(dim=-1, keepdim=True)
    s = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    return torch.clamp(torch.round(x / s), -127, 127) * s


def _conv2d(x, w, b, stride, padding, dilation, groups):
    """Cross-correlation with NAC's [top, bottom, left, right] zero padding."""
    top, bottom, left, right = padding
    if top == bottom and left == right:
        return F.conv2d(x, w, b, stride, (top, left), dilation, groups)
    return F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride, 0, dilation, groups)


def _topk(x, k, dim, largest):
    """The k largest (smallest) along dim in order, ties in index order (a stable sort)."""
    values, indices = torch.sort(x, dim=dim, descending=largest, stable=True)
    return values.narrow(dim, 0, k), indices.narrow(dim, 0, k)


def _rotary(x, cos, sin):
    """NAC's rotary_embedding: x * cos + rotate_half(x) * sin (transformers' half-split layout)."""
    h = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., h:], x[..., :h]], dim=-1) * sin


def _dequantize(data, scale, scheme, shape):
    """A quantised weight as float32 [N, K]: int8 rows times their scale, or 2-bit ternary codes
    (t + 1, four to a byte, least significant first) times the per-row or per-tensor scale."""
    n, k = shape
    if scheme == "int8":
        return data.float() * scale[:, None]
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
    codes = ((data[:, :, None] >> shifts) & 3).reshape(n, -1)[:, :k]
    return (codes.float() - 1.0) * scale.reshape(-1, 1)
'''


class _Names:
    """Python identifiers for graph values and parameters (unique, never a keyword or a name the
    generated code uses itself)."""

    RESERVED = {"torch", "F", "self", "max", "min", "float", "int", "range", "_attention", "_activation",
                "_quantize_rows", "_conv2d", "_topk", "_rotary", "_dequantize", "None", "True", "False"}

    def __init__(self, taken=()):
        self.taken = set(self.RESERVED) | set(taken)
        self.names: dict[str, str] = {}

    def __call__(self, value: str, prefix: str = "") -> str:
        if value in self.names:
            return self.names[value]
        base = prefix + (re.sub(r"\W", "_", value) or "v")
        if base[0].isdigit():
            base = "v_" + base
        name, k = base, 1
        while name in self.taken or keyword.iskeyword(name):
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        self.names[value] = name
        return name


def _text(value) -> str:
    """File text (a module path, a file name) made safe for one line of a comment or docstring:
    line breaks and other control characters escaped, so nothing in a file becomes code."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value)).replace('"""', '\\"\\"\\"')


def _int(v) -> str:
    """An integer attribute as code. Raises NacError for anything else (never pasted as text)."""
    if type(v) is not int:
        raise NacError(f"reconstruct --torch: expected an integer attribute, found {v!r:.60}")
    return str(v)


def _dim(d) -> str:
    """A dimension as a Python expression: an int, or an expression the file's validator parsed
    (integers, dimension names, + - * // %, max, min; see `nac.format.symbolic`)."""
    if isinstance(d, str):
        from nac.format.symbolic import parse_dim

        parse_dim(d)  # the whitelist, again: this text becomes code
        return f"({d})"
    return _int(d)


def _dims(ds) -> str:
    return "[" + ", ".join(_dim(d) for d in ds) + "]"


def _ints(v) -> str:
    """A list of integers as code. Raises NacError for anything else."""
    if not isinstance(v, (list, tuple)):
        raise NacError(f"reconstruct --torch: expected a list of integers, found {v!r:.60}")
    return "[" + ", ".join(_int(x) for x in v) + "]"


def _index_expr(rank_before: int, item: str) -> str:
    return "[" + ":, " * rank_before + item + "]"


def _reduction(fn: str):
    def emit(x, a, rank):
        dims = [int(_int(d)) for d in a.get("dims") or range(rank)]
        kd = bool(a.get("keepdim"))
        if fn == "prod":  # torch.prod reduces one axis at a time
            expr = x
            for d in sorted((d % rank for d in dims), reverse=True) if rank else []:
                expr = f"torch.prod({expr}, dim={d}, keepdim={kd})"
            return expr
        if not dims:
            return x if fn not in ("any", "all") else f"{x}.to(torch.bool)"
        return f"torch.{fn}({x}, dim={tuple(dims)}, keepdim={kd})"
    return emit


_BINARY = {"add": "({a} + {b})", "sub": "({a} - {b})", "mul": "({a} * {b})", "div": "({a} / {b})",
           "pow": "torch.pow({a}, {b})", "maximum": "torch.maximum({a}, {b})", "minimum": "torch.minimum({a}, {b})",
           "remainder": "torch.remainder({a}, {b})", "eq": "({a} == {b})", "ne": "({a} != {b})", "lt": "({a} < {b})",
           "le": "({a} <= {b})", "gt": "({a} > {b})", "ge": "({a} >= {b})", "logical_and": "torch.logical_and({a}, {b})",
           "logical_or": "torch.logical_or({a}, {b})", "bitwise_and": "({a} & {b})", "bitwise_or": "({a} | {b})"}
_UNARY = {"neg": "torch.neg", "abs": "torch.abs", "exp": "torch.exp", "log": "torch.log", "sqrt": "torch.sqrt",
          "rsqrt": "torch.rsqrt", "reciprocal": "torch.reciprocal", "sin": "torch.sin", "cos": "torch.cos",
          "erf": "torch.erf", "relu": "torch.relu", "sigmoid": "torch.sigmoid", "tanh": "torch.tanh", "silu": "F.silu",
          "hardswish": "F.hardswish", "hardsigmoid": "F.hardsigmoid", "logical_not": "torch.logical_not",
          "floor": "torch.floor", "ceil": "torch.ceil", "round": "torch.round", "sign": "torch.sign"}


def _call(n, g: Graph, ins: list[str]) -> str:
    """The torch expression computing node ``n`` (``ins``: its inputs as Python expressions,
    "None" for an absent optional one)."""
    a, op = n.attrs, n.op
    rank = lambda k: len(g.values[n.inputs[k]].shape)  # noqa: E731
    out_dtype = _TORCH_DTYPE[g.values[n.outputs[0]].dtype]
    if op in _BINARY:
        return _BINARY[op].format(a=ins[0], b=ins[1])
    if op in _UNARY:
        return f"{_UNARY[op]}({ins[0]})"
    x = ins[0] if ins else None
    if op == "gelu":
        return f"F.gelu({x}, approximate={a.get('approximate', 'none')!r})"
    if op == "clamp":
        if a.get("min") is None and a.get("max") is None:
            return f"{x}.clone()"
        return f"torch.clamp({x}, min={a.get('min')!r}, max={a.get('max')!r})"
    if op == "leaky_relu":
        return f"F.leaky_relu({x}, {a['negative_slope']!r})"
    if op == "elu":
        return f"F.elu({x}, alpha={a.get('alpha', 1.0)!r})"
    if op == "cast":
        return f"{x}.to({_TORCH_DTYPE[a['dtype']]})"
    if op == "where":
        return f"torch.where({ins[0]}, {ins[1]}, {ins[2]})"
    if op == "matmul":
        return f"torch.matmul({ins[0]}, {ins[1]})"
    if op == "linear":
        w = ins[1] if a.get("weight_layout", "oi") == "oi" else f"{ins[1]}.T"
        xin = f"_quantize_rows({x})" if a.get("activation_quant", "none") == "int8" else x
        y = f"F.linear({xin}, {w}, {ins[2] if len(ins) > 2 else 'None'})"
        act = a.get("activation", "none")
        return y if act == "none" else f"_activation({y}, {act!r})"
    if op == "conv2d":
        y = (f"_conv2d({x}, {ins[1]}, {ins[2] if len(ins) > 2 else 'None'}, {_ints(a.get('stride', [1, 1]))}, "
             f"{_ints(a.get('padding', [0, 0, 0, 0]))}, {_ints(a.get('dilation', [1, 1]))}, {_int(a.get('groups', 1))})")
        if len(ins) > 3 and ins[3] != "None":  # the residual (skip connection), before the activation
            y = f"({y} + {ins[3]})"
        act = a.get("activation", "none")
        return y if act == "none" else f"_activation({y}, {act!r})"
    if op == "scaled_dot_product_attention":
        q, k, v, m, kt, vt = (ins + ["None"] * 6)[:6]
        return (f"_attention({q}, {k}, {v}, {m}, {kt}, {vt}, scale={a['scale']!r}, "
                f"is_causal={bool(a.get('is_causal'))}, enable_gqa={bool(a.get('enable_gqa'))})")
    if op == "max_pool2d":
        return (f"F.max_pool2d({x}, {_ints(a['kernel'])}, {_ints(a['stride'])}, {_ints(a['padding'])}, "
                f"{_ints(a.get('dilation', [1, 1]))}, ceil_mode={bool(a.get('ceil_mode'))})")
    if op == "avg_pool2d":
        return (f"F.avg_pool2d({x}, {_ints(a['kernel'])}, {_ints(a['stride'])}, {_ints(a['padding'])}, "
                f"ceil_mode={bool(a.get('ceil_mode'))}, count_include_pad={bool(a.get('count_include_pad', True))}, "
                f"divisor_override={a.get('divisor_override')!r})")
    if op == "adaptive_avg_pool2d":
        return f"F.adaptive_avg_pool2d({x}, {_ints(a['output_size'])})"
    if op == "upsample2d":
        sh, sw = a.get("scales") or (None, None)
        if a.get("mode") == "bilinear":
            return (f"torch.ops.aten.upsample_bilinear2d.default({x}, {_dims(a['size'])}, "
                    f"{bool(a.get('align_corners'))}, {sh!r}, {sw!r})")
        return f"torch.ops.aten.upsample_nearest2d.default({x}, {_dims(a['size'])}, {sh!r}, {sw!r})"
    if op in ("sum", "mean", "amax", "amin", "prod", "any", "all"):
        return _reduction(op)(x, a, rank(0))
    if op == "var":
        dims = [int(_int(d)) for d in a.get("dims") or range(rank(0))]
        return (f"torch.var({x}, dim={tuple(dims)}, correction={a.get('correction', 1)!r}, "
                f"keepdim={bool(a.get('keepdim'))})")
    if op in ("argmax", "argmin"):
        return f"torch.{op}({x}, dim={_int(a['dim'])}, keepdim={bool(a.get('keepdim'))})"
    if op == "cumsum":
        return f"torch.cumsum({x}, dim={_int(a['dim'])}).to({out_dtype})"
    if op == "sort":
        return f"torch.sort({x}, dim={_int(a['dim'])}, descending={bool(a.get('descending'))}, stable=True)"
    if op == "topk":
        return f"_topk({x}, {_dim(a['k'])}, {_int(a['dim'])}, {bool(a.get('largest', True))})"
    if op in ("softmax", "log_softmax"):
        return f"torch.{op}({x}, dim={_int(a['dim'])})"
    if op == "rotary_embedding":
        return f"_rotary({x}, {ins[1]}, {ins[2]})"
    if op == "layer_norm":
        axes = int(_int(a.get("axes", 1)))
        return f"F.layer_norm({x}, {x}.shape[-{axes}:], {ins[1]}, {ins[2]}, eps={a['eps']!r})"
    if op == "rms_norm":
        axes = int(_int(a.get("axes", 1)))
        return f"F.rms_norm({x}, {x}.shape[-{axes}:], {ins[1]}, eps={a['eps']!r})"
    if op == "batch_norm":
        return f"F.batch_norm({x}, {ins[3]}, {ins[4]}, {ins[1]}, {ins[2]}, False, 0.0, {a['eps']!r})"
    if op == "embedding":
        return f"F.embedding({ins[1]}, {ins[0]})"
    if op == "gather":
        return f"torch.gather({x}, {_int(a['dim'])}, {ins[1]})"
    if op == "index_select":
        return f"torch.index_select({x}, {_int(a['dim'])}, {ins[1]})"
    if op == "index":
        return f"{x}[{', '.join(':' if i == 'None' else i for i in ins[1:])}]"
    if op == "reshape":
        return f"{x}.reshape({_dims(a['shape'])})"
    if op == "permute":
        return f"{x}.permute({_ints(a['perm'])})"
    if op == "expand":
        return f"{x}.expand({_dims(a['shape'])})"
    if op == "slice":
        d = int(_int(a["dim"])) % max(rank(0), 1)
        return f"{x}" + _index_expr(d, f"{_dim(a['start'])}:{_dim(a['end'])}:{_dim(a.get('step', 1))}")
    if op == "select":
        return f"{x}" + _index_expr(int(_int(a["dim"])) % max(rank(0), 1), _dim(a["index"]))
    if op == "flip":
        return f"torch.flip({x}, {_ints(a['dims'])})"
    if op == "cat":
        return f"torch.cat([{', '.join(ins)}], dim={_int(a['dim'])})"
    if op == "pad":
        return f"F.pad({x}, {_dims(a['pads'])}, value={a.get('value', 0.0)!r})"
    if op == "repeat":
        return f"torch.tile({x}, {_dims(a['repeats'])})"
    if op == "copy":
        return f"{x}.clone()"
    if op == "arange":
        return f"torch.arange({_dim(a['start'])}, {_dim(a['end'])}, {_dim(a.get('step', 1))}, dtype={_TORCH_DTYPE[a['dtype']]})"
    if op == "full":
        value = _dim(a["value"]) if isinstance(a["value"], str) else repr(a["value"])
        return f"torch.full({_dims(a['shape'])}, {value}, dtype={_TORCH_DTYPE[a['dtype']]})"
    raise NacError(f"reconstruct --torch: no PyTorch form for op {op!r}")


#: every op `torch_source` writes (the registry test checks this covers the op table).
TORCH_OPS = frozenset(_BINARY) | frozenset(_UNARY) | {
    "gelu", "clamp", "leaky_relu", "elu", "cast", "where", "matmul", "linear", "conv2d",
    "scaled_dot_product_attention", "rotary_embedding", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
    "upsample2d", "sum", "mean", "amax", "amin", "prod", "any", "all", "var", "argmax", "argmin", "cumsum", "sort",
    "topk", "softmax",
    "log_softmax", "layer_norm", "rms_norm", "batch_norm", "embedding", "gather", "index_select", "index", "reshape",
    "permute", "expand", "slice", "select", "flip", "cat", "pad", "repeat", "copy", "arange", "full"}


def torch_source(model_or_path, class_name: str = "Reconstructed") -> str:
    """Python source of a ``torch.nn.Module`` that computes the graph with PyTorch.

    The file defines ``class <class_name>(torch.nn.Module)`` with ``__init__(params)`` (a dict of
    parameter name -> numpy array or tensor, as `nac.load(path).graph.params`), ``from_nac(path)``
    (loads a `.nac` with NAC's reader) and ``forward(*inputs)`` taking the graph's inputs in order
    and returning its outputs (a tuple when there are several). Quantised weights become float32
    buffers when loaded (int8 times the per-row scale; ternary unpacked times its scale).

    Args:
        model_or_path: a `.nac` path, a `nac.Model` or a `Graph`.
        class_name: the module class's name.
    Raises:
        NacError: an input dimension is an expression rather than a name (the module could not
            recover it from the input's shape), or a node uses an op with no PyTorch form.
    """
    g, name = _graph_of(model_or_path)
    local = _Names(g.dims)
    attr = _Names()
    buffers = []  # (attribute, value name)
    for v in g.values.values():
        if v.name in g.params and v.name not in {q.quant["scale"] for q in g.values.values() if q.quant}:
            buffers.append((attr(v.name), v.name))
    expr: dict[str, str] = {}
    for alias, target in g.param_aliases.items():
        expr[alias] = f"self.{attr(target)}"
    for a, v in buffers:
        expr[v] = f"self.{a}"
    consts = []
    for v in g.values.values():
        if v.const is not None and v.name not in expr:
            a = attr(v.name, "c_")
            consts.append((a, v))
            expr[v.name] = f"self.{a}"

    if not class_name.isidentifier() or keyword.iskeyword(class_name):
        raise NacError(f"reconstruct --torch: class name {class_name!r} is not a Python identifier")
    reserved = sorted(d for d in g.dims if d in _Names.RESERVED or keyword.iskeyword(d))
    if reserved:
        raise NacError(f"reconstruct --torch: dimension name(s) {reserved} clash with names the module uses")
    name = _text(name)
    lines = [f'"""{name} as a PyTorch module, written by `nac reconstruct --torch`.',
             "",
             f"    model = {class_name}.from_nac({name!r})",
             f"    outputs = model({', '.join(g.inputs)})",
             '"""',
             "import torch",
             "import torch.nn.functional as F",
             _PRELUDE,
             "",
             f"class {class_name}(torch.nn.Module):",
             f'    """{len(g.nodes)} nodes, {g.param_count():,} parameters. Inputs: '
             + ", ".join(f"{i} {g.values[i].dtype}{_shape_text(g.values[i].shape)}" for i in g.inputs)
             + '."""',
             "",
             "    def __init__(self, params):",
             "        super().__init__()",
             "        p = {k: torch.as_tensor(v).clone() if isinstance(v, torch.Tensor) else torch.tensor(v)",
             "             for k, v in params.items()}"]
    for a, v in buffers:
        q = g.values[v].quant
        if q is None:
            lines.append(f"        self.register_buffer({a!r}, p[{v!r}])")
        else:
            lines.append(f"        self.register_buffer({a!r}, _dequantize(p[{v!r}], p[{q['scale']!r}], "
                         f"{q['scheme']!r}, {list(q['shape'])}))")
    for a, v in consts:
        lines.append(f"        self.register_buffer({a!r}, torch.tensor({v.const!r}, dtype={_TORCH_DTYPE[v.dtype]})"
                     f".reshape({list(v.shape)}))")
    lines += ["", "    @classmethod", "    def from_nac(cls, path):",
              '        """Load the parameters from a .nac file with NAC\'s reader (checked, zero-copy)."""',
              "        from nac.format.container import read_nac", "",
              "        return cls(read_nac(path).graph.params).eval()", ""]
    args = [local(i) for i in g.inputs]
    for i in g.inputs:
        expr[i] = local(i)
    lines.append(f"    def forward(self, {', '.join(args)}):")
    bound = set()
    for i in g.inputs:
        for axis, d in enumerate(g.values[i].shape):
            if isinstance(d, str) and d not in bound:
                if not d.isidentifier():
                    continue
                lines.append(f"        {d} = {expr[i]}.shape[{axis}]")
                bound.add(d)
    unbound = set(g.dims) - bound
    if unbound:
        raise NacError(f"reconstruct --torch: dimension(s) {sorted(unbound)} are not the size of an input axis")
    source = None
    for n in g.nodes:
        if n.source != source:
            source = n.source
            lines.append(f"        # {_text(source) or '(top level)'}")
        ins = [expr[i] if i else "None" for i in operands(n.op, n.inputs)]  # left-out inputs: None
        outs = [local(o) for o in n.outputs]
        shape = "; ".join(_shape_text(g.values[o].shape) for o in n.outputs)
        lines.append(f"        {', '.join(outs)} = {_call(n, g, ins)}  # {shape}")
        for o, py in zip(n.outputs, outs):
            expr[o] = py
    rets = [expr[o] for o in g.outputs]
    lines.append(f"        return {rets[0] if len(rets) == 1 else '(' + ', '.join(rets) + ')'}")
    return "\n".join(lines) + "\n"


def torch_module(model_or_path, class_name: str = "Reconstructed"):
    """The `torch_source` module, executed and instantiated over the graph's parameters: a
    ``torch.nn.Module`` in eval mode. Needs torch. Raises as `torch_source`."""
    g, _ = _graph_of(model_or_path)
    namespace: dict = {"__name__": f"nac_reconstructed_{class_name}"}
    exec(compile(torch_source(g, class_name), f"<reconstructed {class_name}>", "exec"), namespace)  # noqa: S102
    return namespace[class_name](g.params).eval()


def reconstruct(model_or_path, torch: bool = False) -> str:
    """`pseudo_code` or (``torch=True``) `torch_source` of a `.nac` file, `Model` or `Graph`."""
    return torch_source(model_or_path) if torch else pseudo_code(model_or_path)
