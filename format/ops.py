"""The NAC op table: one `OpSchema` per op. It drives the spec (SPEC.md's op table is generated
from it, and a test keeps them in sync), the engine's kernel registry (every op must have a
kernel), the exporter's lowering rules and `nac info`.

The exporter records every value's (possibly symbolic) shape in the graph; each op's shape rule
(`OpSchema.infer`, implemented in `nac.format.shapes`) checks those records when a file is loaded
and whenever a plan is built. The ``shape`` text here documents the rule.

Run ``python -m nac.format.ops`` to print the Markdown table, or ``python -m nac.format.ops
--write-spec`` to replace the table in SPEC.md (between its op-table markers).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

#: Attributes whose values are dimensions: ints, or expressions over named dimensions (or lists
#: of them), evaluated for the input shapes before a kernel sees them.
DIM_ATTRS = frozenset({"shape", "start", "end", "step", "index", "pads", "repeats", "size", "k"})

#: Activations a producing op (linear, conv2d) may apply to its result in the same kernel.
ACTIVATIONS = ("none", "relu", "relu6", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "hardswish")


@dataclass(frozen=True)
class OpSchema:
    """One op.

    Attributes:
        name: the op name used in graphs.
        inputs: input names in order; a trailing ``?`` marks optional (may be ""), ``*`` variadic.
        attrs: attribute name -> short type/default description.
        summary: reference semantics, in terms of the ATen op it mirrors.
        shape: the output-shape rule (in words; `infer` computes it).
        aten: the ATen op(s) lowered to it.
        family: elementwise, linalg, attention, pooling, reduction, normalisation, indexing,
            shape or creation (`nac info`, the docs and the tests group ops by it).
        view: the engine may give its output as a view of input 0 instead of writing a buffer
            (the planner decides per shape); the C emitter aliases it too.
        quantised: input positions that may hold a quantised weight (their kernels read int8 or
            2-bit data directly).
        fuses_as: for an activation that a producing linear/conv2d can apply in its own epilogue:
            ``fuses_as(attrs)`` gives its name in `ACTIVATIONS`, or None when these attributes
            cannot be fused.
    """

    name: str
    inputs: tuple[str, ...]
    attrs: dict = field(default_factory=dict)
    summary: str = ""
    shape: str = ""
    aten: str = ""
    family: str = ""
    view: bool = False
    quantised: tuple[int, ...] = ()
    fuses_as: Callable[[dict], str | None] | None = field(default=None, compare=False)

    def infer(self, ins, dtypes, attrs) -> list:
        """Output ``[(shape, dtype or None)]`` for concrete input shapes; see `nac.format.shapes.infer`.

        Raises:
            nac.format.shapes.ShapeError: the inputs or attributes do not fit this op.
        """
        from nac.format.shapes import infer

        return infer(self.name, ins, dtypes, attrs)

    def arity(self) -> tuple[int, int | None]:
        """(fewest, most) inputs a node of this op may list (None: no upper bound)."""
        if any(i.endswith("*") for i in self.inputs):
            return sum(1 for i in self.inputs if not i.endswith(("?", "*"))), None
        return sum(1 for i in self.inputs if not i.endswith("?")), len(self.inputs)


def operands(op: str, inputs) -> list[str]:
    """A node's input names padded with "" (absent) up to every input ``op`` takes.

    The op table lets a node leave trailing optional inputs out (a linear listing x and weight
    only); kernels, binders and passes index every input, so they read the node through this.
    Variadic ops and ops not in the table come back unchanged (as a list).
    """
    schema = OPS.get(op)
    most = schema.arity()[1] if schema is not None else None
    names = list(inputs)
    return names + [""] * (most - len(names)) if most is not None and len(names) < most else names


_OPS: list[OpSchema] = []
_family = ""


def _op(name, inputs, attrs=None, summary="", shape="", aten="", **extra):
    _OPS.append(OpSchema(name, tuple(inputs), dict(attrs or {}), summary, shape, aten, _family, **extra))


def _same(name: str):
    return lambda attrs: name


def _clamp_activation(attrs: dict) -> str | None:
    lo, hi = attrs.get("min"), attrs.get("max")
    return "relu" if (lo, hi) == (0.0, None) else "relu6" if (lo, hi) == (0.0, 6.0) else None


BROADCAST = "numpy/ATen broadcasting of the inputs"
SAME = "same as input"

# -- elementwise, binary (broadcasting); result dtype is recorded on the output value ---------
_family = "elementwise"
for _n, _s in [("add", "a + b"), ("sub", "a - b"), ("mul", "a * b"), ("div", "a / b (true division)"),
               ("pow", "a ** b"), ("maximum", "max(a, b)"), ("minimum", "min(a, b)"),
               ("remainder", "a mod b, sign of b (Python/ATen remainder)"),
               ("eq", "a == b"), ("ne", "a != b"), ("lt", "a < b"), ("le", "a <= b"), ("gt", "a > b"),
               ("ge", "a >= b"), ("logical_and", "a and b"), ("logical_or", "a or b"),
               ("bitwise_and", "a & b (bool or integer)"), ("bitwise_or", "a | b (bool or integer)")]:
    _op(_n, ["a", "b"], summary=_s, shape=BROADCAST, aten=f"aten.{_n}")

# -- elementwise, unary ------------------------------------------------------------------------
for _n, _s in [("neg", "-x"), ("abs", "|x|"), ("exp", "e**x"), ("log", "natural log"), ("sqrt", "square root"),
               ("rsqrt", "1 / sqrt(x)"), ("reciprocal", "1 / x"), ("sin", "sine"), ("cos", "cosine"),
               ("erf", "error function"), ("relu", "max(x, 0)"), ("sigmoid", "1 / (1 + e**-x)"),
               ("tanh", "hyperbolic tangent"), ("silu", "x * sigmoid(x)"),
               ("hardswish", "x * relu6(x + 3) / 6"), ("hardsigmoid", "relu6(x + 3) / 6"),
               ("logical_not", "not x"), ("floor", "floor"), ("ceil", "ceil"),
               ("round", "round half to even"),
               ("sign", "1, 0 or -1 (0 for NaN and -0, as ATen)")]:
    _op(_n, ["x"], summary=_s, shape=SAME, aten=f"aten.{_n}",
        fuses_as=_same(_n) if _n in ("relu", "silu", "sigmoid", "tanh", "hardswish") else None)
_op("gelu", ["x"], {"approximate": "'none' | 'tanh'"}, "x * Phi(x); tanh approximation if asked",
    SAME, "aten.gelu", fuses_as=lambda a: "gelu_tanh" if a.get("approximate") == "tanh" else "gelu")
_op("clamp", ["x"], {"min": "float or null", "max": "float or null"},
    "min(max(x, min), max); relu6 and hardtanh lower here", SAME, "aten.clamp, aten.hardtanh",
    fuses_as=_clamp_activation)
_op("leaky_relu", ["x"], {"negative_slope": "float"}, "x if x > 0 else slope * x", SAME, "aten.leaky_relu")
_op("elu", ["x"], {"alpha": "float"}, "x if x > 0 else alpha * (e**x - 1)", SAME, "aten.elu")
_op("cast", ["x"], {"dtype": "NAC dtype name"}, "convert to dtype (float->int truncates toward 0)", SAME,
    "aten._to_copy")
_op("where", ["cond", "a", "b"], {}, "a where cond else b", BROADCAST, "aten.where.self")

# -- linear algebra --------------------------------------------------------------------------------
_family = "linalg"
_op("matmul", ["a", "b"], {}, "batched matrix product with broadcast batch dims", "[*batch, M, N]",
    "aten.mm, aten.bmm, aten.matmul")
_op("linear", ["x", "weight", "bias?"], {"activation": "one of ACTIVATIONS, default none",
                                          "weight_layout": "'oi' (default): weight is [out, in]; 'io': [in, out]",
                                          "activation_quant": "'none' (default) or 'int8': x quantised per row "
                                                              "(a quantised weight only)"},
    "act(x @ W.T + bias) with W = weight [out, in], or act(x @ weight + bias) for layout 'io'", "[*, out]",
    "aten.addmm / aten.mm with a transposed weight", quantised=(1,))
_op("conv2d", ["x", "weight", "bias?", "residual?"],
    {"stride": "[sh, sw]", "padding": "[top, bottom, left, right]", "dilation": "[dh, dw]", "groups": "int",
     "activation": "one of ACTIVATIONS"},
    "act(cross-correlation + bias + residual), NCHW; weight [Cout, Cin/groups, kh, kw]; zero padding may be "
    "asymmetric; residual (a skip connection) has the output's shape",
    "[N, Cout, (H + pt + pb - dh*(kh-1) - 1)//sh + 1, (W + ...)//sw + 1]", "aten.convolution (2-D)")

_family = "attention"
_op("scaled_dot_product_attention", ["q", "k", "v", "attn_mask?", "k_tail?", "v_tail?"],
    {"scale": "float", "is_causal": "bool", "enable_gqa": "bool"},
    "softmax(q @ k^T * scale + mask) @ v; a bool mask keeps True positions, a float mask is added; causal keeps "
    "j <= i; a row with every position masked gives 0; with enable_gqa, k/v heads are shared by groups of q heads; "
    "k_tail/v_tail (both or neither) are further keys/values after k/v (a KV cache read in place)",
    "[*batch, L, Ev]", "aten.scaled_dot_product_attention (kept whole at export)")
_op("rotary_embedding", ["x", "cos", "sin"], {},
    "x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2]) (rotary position "
    "embedding, Su et al. 2021, in the half-split layout of GPT-NeoX and transformers' Llama); cos and sin "
    "broadcast to x", SAME + ", with D = x.shape[-1] even",
    "transformers' apply_rotary_pos_emb: mul, slice, neg, cat, mul, add (fused at export)")

# -- pooling ---------------------------------------------------------------------------------------
_family = "pooling"
_op("max_pool2d", ["x"], {"kernel": "[kh, kw]", "stride": "[sh, sw]", "padding": "[ph, pw]",
                          "dilation": "[dh, dw]", "ceil_mode": "bool"},
    "max over windows (padding counts as -inf)", "as ATen", "aten.max_pool2d_with_indices")
_op("avg_pool2d", ["x"], {"kernel": "[kh, kw]", "stride": "[sh, sw]", "padding": "[ph, pw]",
                          "ceil_mode": "bool", "count_include_pad": "bool", "divisor_override": "int or null"},
    "mean over windows", "as ATen", "aten.avg_pool2d")
_op("adaptive_avg_pool2d", ["x"], {"output_size": "[oh, ow]"},
    "mean over bins [floor(i*H/oh), ceil((i+1)*H/oh))", "[N, C, oh, ow]", "aten._adaptive_avg_pool2d")
_op("upsample2d", ["x"], {"mode": "'nearest' | 'bilinear'", "align_corners": "bool (bilinear)",
                          "size": "[out_h, out_w] (dimensions)", "scales": "[sh, sw] or null: given scale factors"},
    "resample NCHW with ATen's source-index rules (a given scale s steps the source by 1/s)",
    "[N, C, out_h, out_w]", "aten.upsample_nearest2d, aten.upsample_bilinear2d")

# -- reductions ------------------------------------------------------------------------------------
_family = "reduction"
for _n, _s in [("sum", "sum"), ("mean", "mean"), ("amax", "maximum"), ("amin", "minimum"), ("prod", "product"),
               ("any", "logical or"), ("all", "logical and")]:
    _op(_n, ["x"], {"dims": "list of axes (empty = all)", "keepdim": "bool"}, f"{_s} over dims",
        "reduced axes removed (or 1 if keepdim)", f"aten.{_n}")
_op("var", ["x"], {"dims": "list of axes", "keepdim": "bool", "correction": "float"},
    "variance with Bessel-style correction", "reduced", "aten.var.correction")
_op("argmax", ["x"], {"dim": "int", "keepdim": "bool"}, "index of the first maximum (int64)", "reduced",
    "aten.argmax")
_op("argmin", ["x"], {"dim": "int", "keepdim": "bool"}, "index of the first minimum (int64)", "reduced",
    "aten.argmin")
_op("cumsum", ["x"], {"dim": "int"}, "inclusive prefix sum along dim", SAME, "aten.cumsum")
_op("sort", ["x"], {"dim": "int", "descending": "bool"},
    "values and int64 indices sorted along dim; stable; NaN sorts above every number (ATen)", "x.shape (twice)",
    "aten.sort")
_op("topk", ["x"], {"k": "dim", "dim": "int", "largest": "bool"},
    "the k largest (or smallest) along dim, in order, and their int64 indices; ties keep index order",
    "x.shape with dim = k (twice)", "aten.topk")

# -- normalisation -------------------------------------------------------------------------------
_family = "normalisation"
_op("softmax", ["x"], {"dim": "int"}, "exp(x - max) / sum, along dim", SAME, "aten._softmax")
_op("log_softmax", ["x"], {"dim": "int"}, "x - max - log(sum(exp(x - max)))", SAME, "aten._log_softmax")
_op("layer_norm", ["x", "weight?", "bias?"], {"axes": "int: number of trailing axes", "eps": "float"},
    "(x - mean) / sqrt(var + eps) * weight + bias over the trailing axes (biased var)", SAME,
    "aten.native_layer_norm")
_op("batch_norm", ["x", "weight?", "bias?", "mean", "var"], {"eps": "float"},
    "inference batch norm over axis 1 with running statistics", SAME,
    "aten._native_batch_norm_legit_no_training")
_op("rms_norm", ["x", "weight?"], {"axes": "int", "eps": "float"},
    "x / sqrt(mean(x**2) + eps) * weight over the trailing axes", SAME, "aten._fused_rms_norm / aten.rms_norm")

# -- indexing ----------------------------------------------------------------------------------
_family = "indexing"
_op("embedding", ["weight", "indices"], {}, "weight[indices]; raises on an index out of range",
    "[*indices.shape, dim]", "aten.embedding", quantised=(0,))
_op("gather", ["x", "index"], {"dim": "int"}, "out[i][j] = x[i][index[i][j]] along dim", "index.shape",
    "aten.gather")
_op("index_select", ["x", "index"], {"dim": "int"}, "x.take(index, axis=dim)", "dim replaced by len(index)",
    "aten.index_select")
_op("index", ["x", "indices*"], {}, "advanced indexing x[i0, i1, ...]; \"\" means a full slice", "as numpy",
    "aten.index.Tensor")

# -- shape and data movement ---------------------------------------------------------------------
_family = "shape"
_op("reshape", ["x"], {"shape": "output dims (may be symbolic)"}, "same elements, new shape (row-major)",
    "attr shape", "aten.view, aten._unsafe_view, aten.squeeze, aten.unsqueeze, aten.flatten", view=True)
_op("permute", ["x"], {"perm": "list of axes"}, "transpose axes", "permuted", "aten.permute, aten.t, aten.transpose",
    view=True)
_op("expand", ["x"], {"shape": "output dims"}, "broadcast to shape", "attr shape", "aten.expand", view=True)
_op("slice", ["x"], {"dim": "int", "start": "dim", "end": "dim", "step": "int"},
    "x[start:end:step] along dim (bounds clamped as ATen)", "sliced", "aten.slice.Tensor", view=True)
_op("select", ["x"], {"dim": "int", "index": "dim"}, "x[index] along dim (negative from the end)",
    "dim removed", "aten.select.int", view=True)
_op("flip", ["x"], {"dims": "list of axes"}, "reverse the order of elements along each of dims", SAME,
    "aten.flip", view=True)
_op("cat", ["xs*"], {"dim": "int"}, "concatenate along dim", "sum along dim", "aten.cat")
_op("pad", ["x"], {"pads": "ATen order: [last_lo, last_hi, prev_lo, prev_hi, ...]", "value": "float"},
    "constant padding (negative pads crop)", "padded", "aten.constant_pad_nd")
_op("repeat", ["x"], {"repeats": "list"}, "tile x (numpy.tile semantics)", "multiplied", "aten.repeat")
_op("copy", ["x"], {}, "identity (materialised copy)", SAME, "aten.clone where a copy is required")

# -- creation --------------------------------------------------------------------------------------
_family = "creation"
_op("arange", [], {"start": "dim", "end": "dim", "step": "dim", "dtype": "dtype"}, "range(start, end, step)",
    "[ceil((end-start)/step)]", "aten.arange")
_op("full", [], {"shape": "dims", "value": "number, or a dimension expression", "dtype": "dtype"},
    "tensor filled with value", "attr shape",
    "aten.full, aten.full_like, aten.zeros, aten.ones, aten.scalar_tensor")

OPS: dict[str, OpSchema] = {o.name: o for o in _OPS}

# Everything below is derived from the table; nothing else keeps its own list.
#: ops whose output may be a view of their first input (the planner decides per shape).
VIEW_OPS = frozenset(o.name for o in _OPS if o.view)
#: (op, input position) pairs whose kernels accept a quantised weight.
QUANTISED_INPUTS = frozenset((o.name, p) for o in _OPS for p in o.quantised)
#: ops a producing linear/conv2d may absorb as its epilogue activation (see `OpSchema.fuses_as`).
FUSABLE = {o.name: o.fuses_as for o in _OPS if o.fuses_as is not None}
FAMILIES = tuple(dict.fromkeys(o.family for o in _OPS))


def markdown_table() -> str:
    """The op table as Markdown (the text between the op-table markers in SPEC.md)."""
    rows = ["| op | inputs | attributes | semantics | output shape | from ATen |", "|---|---|---|---|---|---|"]
    for o in _OPS:
        attrs = "; ".join(f"`{k}`: {v}" for k, v in o.attrs.items()) or "–"
        ins = ", ".join(f"`{i}`" for i in o.inputs) or "–"
        rows.append(f"| `{o.name}` | {ins} | {attrs} | {o.summary} | {o.shape} | {o.aten} |")
    return "\n".join(rows)


def write_spec(path=None) -> None:
    """Replace the op table in SPEC.md (between ``<!-- op-table:begin/end -->``) with `markdown_table`."""
    from pathlib import Path

    path = Path(path or Path(__file__).with_name("SPEC.md"))
    text = path.read_text()
    begin, end = "<!-- op-table:begin -->\n", "\n<!-- op-table:end -->"
    a, b = text.index(begin) + len(begin), text.index(end)
    path.write_text(text[:a] + markdown_table() + text[b:])


if __name__ == "__main__":
    import sys

    if "--write-spec" in sys.argv:
        write_spec()
    else:
        print(markdown_table())
