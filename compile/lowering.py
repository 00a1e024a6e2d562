"""Lowering rules: core-ATen FX nodes -> NAC nodes, one small function per ATen op.

`RULES` maps an ATen overload name (``"aten.add.Tensor"``) to a rule ``rule(L, node, *args,
**kwargs)`` that emits NAC nodes through the `Lowerer` ``L`` and returns the value name (or a
tuple of names, for multi-output ops) that the FX node stands for.

Symbolic integers (``sym_size``, their arithmetic) produce no node: wherever a rule needs one, it
is printed as a dimension expression over the model's named dimensions.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import numpy as np
import torch

from nac.errors import NacExportError
from nac.format.graph import Graph, Node

_TORCH_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.int64: "int64",
                 torch.int32: "int32", torch.int8: "int8", torch.uint8: "uint8", torch.bool: "bool"}


def nac_dtype(dt: torch.dtype, where: str = "") -> str:
    """NAC dtype name of a torch dtype. Raises NacExportError for dtypes NAC cannot run."""
    try:
        return _TORCH_DTYPES[dt]
    except KeyError:
        raise NacExportError(f"{where}: dtype {dt} is not supported (NAC runs float32 models; "
                             f"convert the model with .float())") from None


# --------------------------------------------------------------------------------------------------
# symbolic dimensions
# --------------------------------------------------------------------------------------------------
def sym_text(expr, names: dict) -> int | str:
    """Print a sympy integer expression over torch's shape symbols as a NAC dimension.

    Returns an ``int`` when the expression is constant. Raises NacExportError for a construct
    NAC's dimension language lacks (it has + - * // % max min).
    """
    import sympy
    from torch.utils._sympy import functions as F

    def p(e) -> str:
        if e.is_Integer:
            return str(int(e))
        if e.is_Symbol:
            if e not in names:
                raise NacExportError(f"symbolic size {e} is not tied to any input dimension (data-dependent shapes "
                                     f"are not supported)")
            return names[e]
        if isinstance(e, sympy.Add):
            return "(" + " + ".join(p(a) for a in e.args) + ")"
        if isinstance(e, sympy.Mul):
            return "(" + " * ".join(p(a) for a in e.args) + ")"
        if isinstance(e, sympy.Pow) and e.exp.is_Integer and int(e.exp) > 0:
            return "(" + " * ".join([p(e.base)] * int(e.exp)) + ")"
        if isinstance(e, F.FloorDiv):
            return f"({p(e.args[0])} // {p(e.args[1])})"
        if isinstance(e, (F.Mod, F.PythonMod)) or type(e).__name__ == "Mod":
            return f"({p(e.args[0])} % {p(e.args[1])})"
        if isinstance(e, (sympy.Max, F.Max)):
            return "max(" + ", ".join(p(a) for a in e.args) + ")"
        if isinstance(e, (sympy.Min, F.Min)):
            return "min(" + ", ".join(p(a) for a in e.args) + ")"
        raise NacExportError(f"symbolic size expression {e} ({type(e).__name__}) is not supported")

    expr = sympy.sympify(expr)
    if expr.is_Integer:
        return int(expr)
    return p(expr)


class Lowerer:
    """State of one lowering: the NAC graph being built and what each FX node became.

    Attributes:
        graph: the NAC graph under construction.
        env: FX node -> value name, tuple of names (multi-output), or a dim (int/str) for SymInts.
        names: torch shape symbol -> NAC dimension name.
        node: the FX node being lowered (for ``source`` and messages).
    """

    def __init__(self, graph: Graph, names: dict):
        self.graph = graph
        self.env: dict[torch.fx.Node, Any] = {}
        self.names = names
        self.node: torch.fx.Node | None = None

    # -- reading arguments ------------------------------------------------------------------------
    def value(self, arg) -> str:
        """The value name for a tensor argument (an FX node, or a Python number made a constant)."""
        if isinstance(arg, torch.fx.Node):
            v = self.env[arg]
            if isinstance(v, str) and v in self.graph.values:
                return v
            if isinstance(v, (int, str)) and not isinstance(v, bool):  # a (symbolic) size used as a tensor operand
                if isinstance(v, int):
                    return self.scalar(v, "int64")
                out = self.graph.add_value("size", "int64", ())
                self.graph.nodes.append(Node("full", [], [out], {"shape": [], "value": v, "dtype": "int64"},
                                             module_path(self.node)))
                return out
            raise NacExportError(f"{self.where()}: expected a tensor argument, got {v!r}")
        if isinstance(arg, (bool, int, float)):
            return self.scalar(arg)
        raise NacExportError(f"{self.where()}: unsupported argument {arg!r}")

    def scalar(self, x, dtype: str | None = None) -> str:
        """An inline 0-d constant for a Python scalar (dtype inferred unless given)."""
        if dtype is None:
            dtype = "bool" if isinstance(x, bool) else "int64" if isinstance(x, int) else "float32"
        return self.graph.add_const("c", x, dtype)

    def dim(self, x) -> int | str:
        """An int-valued argument (int, SymInt, or FX node holding a SymInt) as a NAC dimension."""
        if isinstance(x, torch.fx.Node):
            x = self.env[x]
            if isinstance(x, str) and x in self.graph.values:
                raise NacExportError(f"{self.where()}: a tensor was used where a size is expected")
            return x
        if isinstance(x, torch.SymInt):
            return sym_text(x.node.expr, self.names)
        if isinstance(x, (int, np.integer)):
            return int(x)
        raise NacExportError(f"{self.where()}: unsupported size argument {x!r}")

    def shape(self, node=None) -> tuple:
        """The (possibly symbolic) shape of an FX node's tensor value."""
        node = node or self.node
        return tuple(self.dim(s) for s in node.meta["val"].shape)

    def dtype(self, node=None) -> str:
        node = node or self.node
        return nac_dtype(node.meta["val"].dtype, self.where())

    def where(self) -> str:
        n = self.node
        if n is None:
            return "export"
        return f"{n.target} at {module_path(n)}"

    # -- emitting ---------------------------------------------------------------------------------
    def emit(self, op: str, inputs, attrs=None, *, shape=None, dtype=None, name=None) -> str:
        """Append a NAC node with one output and return the output's value name.

        The output's shape and dtype default to the FX node's (from its fake-tensor metadata).
        """
        out = self.graph.add_value(name or self.node.name, dtype or self.dtype(),
                                   self.shape() if shape is None else shape)
        self.graph.nodes.append(Node(op, [i or "" for i in inputs], [out], dict(attrs or {}),
                                     module_path(self.node)))
        return out


def module_path(node: torch.fx.Node) -> str:
    """The dotted module path (and class) an FX node came from, e.g. ``encoder.layer.0 (BertLayer)``."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "<top>"
    path, cls = list(stack.values())[-1]
    cls_name = getattr(cls, "__name__", None) or str(cls).rsplit(".", 1)[-1].strip("'>")
    return f"{path or '<top>'} ({cls_name})"


# --------------------------------------------------------------------------------------------------
# the rules
# --------------------------------------------------------------------------------------------------
RULES: dict[str, Callable] = {}


def rule(*names):
    def deco(fn):
        for n in names:
            RULES[n] = fn
        return fn
    return deco


def _axis(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _rank(node) -> int:
    return len(node.meta["val"].shape)


# identity-like ops: the FX node stands for its input value
@rule("aten.clone.default", "aten.alias.default", "aten.detach.default", "aten.lift_fresh_copy.default",
      "aten.contiguous.default", "aten.dropout.default", "aten.native_dropout.default")
def _identity(L, node, x, *args, **kwargs):
    v = L.value(x)
    return (v, None) if node.target == torch.ops.aten.native_dropout.default else v


@rule("aten._assert_tensor_metadata.default", "aten._assert_scalar.default", "aten.sym_constrain_range_for_size.default",
      "aten._assert_async.msg", "aten.sym_constrain_range.default")
def _skip(L, node, *args, **kwargs):
    return None


@rule("aten._to_copy.default", "aten.to.dtype", "aten.to.dtype_layout")
def _to_copy(L, node, x, *args, **kwargs):
    src = L.value(x)
    if L.graph.values[src].dtype == L.dtype():
        return src
    return L.emit("cast", [src], {"dtype": L.dtype()})


# -- elementwise binary ---------------------------------------------------------------------------
def _binary(op, swap=False):
    def fn(L, node, a, b, *args, alpha=1, **kwargs):
        if alpha != 1:
            b_val = L.emit("mul", [L.value(b), L.scalar(alpha)], name=f"{node.name}_alpha",
                           shape=L.shape(b) if isinstance(b, torch.fx.Node) else ())
            ins = [L.value(a), b_val]
        else:
            ins = [_operand(L, a, b), _operand(L, b, a)]
        return L.emit(op, ins[::-1] if swap else ins)
    return fn


def _operand(L, x, other):
    """A tensor operand; a Python scalar becomes a constant of the other operand's dtype."""
    if isinstance(x, torch.fx.Node):
        return L.value(x)
    if isinstance(other, torch.fx.Node):
        odt = L.graph.values[L.value(other)].dtype
        if isinstance(x, float) and odt != "float32":
            return L.scalar(x)
        return L.scalar(x, odt)
    return L.scalar(x)


for _name, _op in [("add", "add"), ("sub", "sub"), ("mul", "mul"), ("div", "div"), ("pow", "pow"),
                   ("maximum", "maximum"), ("minimum", "minimum"), ("remainder", "remainder"),
                   ("eq", "eq"), ("ne", "ne"), ("lt", "lt"), ("le", "le"), ("gt", "gt"), ("ge", "ge"),
                   ("logical_and", "logical_and"), ("logical_or", "logical_or"),
                   ("bitwise_and", "bitwise_and"), ("bitwise_or", "bitwise_or")]:
    for _ov in ("Tensor", "Scalar", "Tensor_Scalar", "Tensor_Tensor", "default"):
        RULES[f"aten.{_name}.{_ov}"] = _binary(_op)
RULES["aten.rsub.Scalar"] = RULES["aten.rsub.Tensor"] = _binary("sub", swap=True)
RULES["aten.pow.Scalar"] = _binary("pow")


@rule("aten.where.self")
def _where(L, node, c, a, b):
    return L.emit("where", [L.value(c), _operand(L, a, b), _operand(L, b, a)])


# -- elementwise unary ----------------------------------------------------------------------------
def _unary(op, **fixed):
    def fn(L, node, x, *args, **kwargs):
        return L.emit(op, [L.value(x)], fixed)
    return fn


for _name in ["neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal", "sin", "cos", "erf", "relu",
              "sigmoid", "tanh", "silu", "hardswish", "hardsigmoid", "logical_not", "floor", "ceil", "round", "sign"]:
    RULES[f"aten.{_name}.default"] = _unary(_name)


@rule("aten.bitwise_not.default")
def _bitwise_not(L, node, x):
    if L.dtype() != "bool":
        raise NacExportError(f"{L.where()}: bitwise_not is supported on bool tensors only")
    return L.emit("logical_not", [L.value(x)])


@rule("aten.gelu.default")
def _gelu(L, node, x, approximate="none"):
    return L.emit("gelu", [L.value(x)], {"approximate": approximate})


@rule("aten.hardtanh.default")
def _hardtanh(L, node, x, min_val=-1.0, max_val=1.0):
    return L.emit("clamp", [L.value(x)], {"min": float(min_val), "max": float(max_val)})


@rule("aten.clamp.default", "aten.clamp_min.default", "aten.clamp_max.default")
def _clamp(L, node, x, lo=None, hi=None):
    if node.target == torch.ops.aten.clamp_max.default:
        lo, hi = None, lo
    return L.emit("clamp", [L.value(x)], {"min": None if lo is None else float(lo),
                                          "max": None if hi is None else float(hi)})


@rule("aten.clamp.Tensor", "aten.clamp_min.Tensor", "aten.clamp_max.Tensor")
def _clamp_tensor(L, node, x, lo=None, hi=None):
    """clamp with tensor bounds (F.cosine_similarity's eps, learned limits): maximum, then
    minimum, broadcasting as ATen does; NaN in x or a bound gives NaN, as ATen's clamp does."""
    if node.target == torch.ops.aten.clamp_max.Tensor:
        lo, hi = None, lo
    y = L.value(x)
    if lo is not None:
        mid = hi is not None  # then this is an intermediate: x broadcast with the lower bound only
        y = L.emit("maximum", [y, _operand(L, lo, x)], name=f"{node.name}_lo" if mid else None,
                   shape=_broadcast_shapes(L.shape(x), L.shape(lo) if isinstance(lo, torch.fx.Node) else ())
                   if mid else None)
    if hi is not None:
        y = L.emit("minimum", [y, _operand(L, hi, x)])
    return y


def _broadcast_shapes(a: tuple, b: tuple) -> tuple:
    """ATen broadcasting of two (possibly symbolic) shapes: per axis from the right, the side that
    is not 1 (torch.export has already checked that the sizes agree)."""
    rank = max(len(a), len(b))
    a, b = (1,) * (rank - len(a)) + tuple(a), (1,) * (rank - len(b)) + tuple(b)
    return tuple(y if x == 1 else x for x, y in zip(a, b))


@rule("aten.leaky_relu.default")
def _leaky(L, node, x, slope=0.01):
    return L.emit("leaky_relu", [L.value(x)], {"negative_slope": float(slope)})


@rule("aten.elu.default")
def _elu(L, node, x, alpha=1.0, scale=1.0, input_scale=1.0):
    if scale != 1 or input_scale != 1:
        raise NacExportError(f"{L.where()}: elu with scale/input_scale (selu) is not supported")
    return L.emit("elu", [L.value(x)], {"alpha": float(alpha)})


# -- matrix products --------------------------------------------------------------------------------
def _transposed_param(L, w):
    """If ``w`` is ``permute(P, [1, 0])`` / ``t(P)`` of a 2-D parameter, return P's value name."""
    if not isinstance(w, torch.fx.Node) or w.op != "call_function":
        return None
    # bmm against a weight broadcast over the batch: expand(permute(P, [1, 0]), [B, K, N])
    while w.target in (torch.ops.aten.expand.default, torch.ops.aten.unsqueeze.default) and \
            isinstance(w.args[0], torch.fx.Node) and w.args[0].op == "call_function":
        w = w.args[0]
    t = w.target
    if t in (torch.ops.aten.permute.default,) and list(w.args[1]) in ([1, 0], [-1, -2], [1, -2], [-1, 0]):
        src = w.args[0]
    elif t == torch.ops.aten.t.default:
        src = w.args[0]
    else:
        return None
    name = L.env.get(src)
    if isinstance(name, str) and name in L.graph.params and L.graph.params[name].ndim == 2:
        return name
    return None


@rule("aten.mm.default", "aten.bmm.default", "aten.matmul.default")
def _mm(L, node, a, b):
    w = _transposed_param(L, b)
    if w is not None:
        return L.emit("linear", [L.value(a), w, ""], {"activation": "none"})
    return L.emit("matmul", [L.value(a), L.value(b)])


@rule("aten.addmm.default")
def _addmm(L, node, bias, a, b, beta=1, alpha=1):
    if beta != 1 or alpha != 1:
        raise NacExportError(f"{L.where()}: addmm with beta/alpha != 1 is not supported")
    w = _transposed_param(L, b)
    bias_v = L.value(bias)
    if w is not None and len(L.shape(bias)) == 1:
        return L.emit("linear", [L.value(a), w, bias_v], {"activation": "none"})
    mm = L.emit("matmul", [L.value(a), L.value(b)], name=f"{node.name}_mm")
    return L.emit("add", [mm, bias_v])


@rule("aten.convolution.default")
def _conv(L, node, x, w, b, stride, padding, dilation, transposed, output_padding, groups):
    nd = len(L.shape(w)) - 2
    # ATen broadcasts a one-element stride/padding/dilation list over the spatial axes
    stride, padding, dilation, output_padding = (list(v) * nd if len(v) == 1 else list(v)
                                                 for v in (stride, padding, dilation, output_padding))
    if transposed:
        return _conv_transpose(L, node, x, w, b, stride, padding, dilation, output_padding, groups)
    if nd == 2:
        attrs = {"stride": list(stride), "padding": [padding[0], padding[0], padding[1], padding[1]],
                 "dilation": list(dilation), "groups": int(groups), "activation": "none"}
        return L.emit("conv2d", [L.value(x), L.value(w), L.value(b) if b is not None else ""], attrs)
    if nd == 1:  # conv1d as conv2d over a height of 1
        xs, ws = L.shape(x), L.shape(w)
        x4 = L.emit("reshape", [L.value(x)], {"shape": [xs[0], xs[1], 1, xs[2]]},
                    shape=(xs[0], xs[1], 1, xs[2]), name=f"{node.name}_x4")
        w4 = L.emit("reshape", [L.value(w)], {"shape": [ws[0], ws[1], 1, ws[2]]},
                    shape=(ws[0], ws[1], 1, ws[2]), dtype="float32", name=f"{node.name}_w4")
        out = L.shape()
        attrs = {"stride": [1, stride[0]], "padding": [0, 0, padding[0], padding[0]],
                 "dilation": [1, dilation[0]], "groups": int(groups), "activation": "none"}
        y4 = L.emit("conv2d", [x4, w4, L.value(b) if b is not None else ""], attrs,
                    shape=(out[0], out[1], 1, out[2]), name=f"{node.name}_y4")
        return L.emit("reshape", [y4], {"shape": list(out)})
    raise NacExportError(f"{L.where()}: {nd}-D convolution is not supported (1-D and 2-D are)")


def _scaled(d, k: int) -> int | str:
    """The dimension d * k (d an int or a symbolic expression)."""
    return d * k if isinstance(d, int) else (f"(({d}) * {k})" if k != 1 else d)


def _plus(d, k: int) -> int | str:
    """The dimension d + k (d an int or a symbolic expression)."""
    return d + k if isinstance(d, int) else (f"(({d}) + {k})" if k else d)


def _conv_transpose(L, node, x, w, b, stride, padding, dilation, output_padding, groups):
    """Transposed convolution (ATen convolution with transposed=True; nn.ConvTranspose1d/2d) as a
    direct convolution: insert stride - 1 zeros between input pixels (reshape, zero pad, reshape),
    pad by dilation * (kernel - 1) - padding on each side (+ output_padding at the end; negative
    amounts crop), and convolve with the weight flipped in space and with its input and output
    channels swapped per group ([Cin, Cout/g, *k] -> [Cout, Cin/g, *k]). The weight must be a
    parameter (it is rearranged at export). Costs stride**2 times a dedicated kernel's multiplies."""
    nd = len(stride)
    if nd not in (1, 2):
        raise NacExportError(f"{L.where()}: {nd}-D transposed convolution is not supported (1-D and 2-D are)")
    wname = L.env.get(w) if isinstance(w, torch.fx.Node) else None
    if not (isinstance(wname, str) and wname in L.graph.params):
        raise NacExportError(f"{L.where()}: transposed convolution needs its weight to be a parameter")
    if wname in getattr(L, "unbound", ()):
        raise NacExportError(f"{L.where()}: transposed convolution rearranges its weight at export, so it needs "
                             f"the weight's data (export this model with its weights)")
    wt = L.graph.params[wname]
    if nd == 1:
        wt = wt[:, :, None, :]
    s, p, d, op = ([unit] + list(v) if nd == 1 else list(v)
                   for v, unit in ((stride, 1), (padding, 0), (dilation, 1), (output_padding, 0)))
    cin, cout_g, kh, kw = wt.shape
    g = int(groups)
    wc = wt.reshape(g, cin // g, cout_g, kh, kw).transpose(0, 2, 1, 3, 4).reshape(g * cout_g, cin // g, kh, kw)
    wc = np.ascontiguousarray(wc[:, :, ::-1, ::-1])
    xs = L.shape(x)
    n, c, h, wd = (xs[0], xs[1], 1, xs[2]) if nd == 1 else xs
    y = L.emit("reshape", [L.value(x)], {"shape": [n, c, h, 1, wd, 1]}, shape=(n, c, h, 1, wd, 1),
               name=f"{node.name}_x6")
    if s != [1, 1]:  # zero insertion: pad the unit axes to the stride, then merge them back
        y = L.emit("pad", [y], {"pads": [0, s[1] - 1, 0, 0, 0, s[0] - 1], "value": 0.0},
                   shape=(n, c, h, s[0], wd, s[1]), name=f"{node.name}_zeros")
    hz, wz = _scaled(h, s[0]), _scaled(wd, s[1])
    y = L.emit("reshape", [y], {"shape": [n, c, hz, wz]}, shape=(n, c, hz, wz), name=f"{node.name}_x4")
    lo = [d[k] * (kk - 1) - p[k] for k, kk in enumerate((kh, kw))]
    hi = [lo[k] + op[k] - (s[k] - 1) for k in range(2)]
    crop = [min(lo[1], 0), min(hi[1], 0), min(lo[0], 0), min(hi[0], 0)]  # ATen pad order: W first
    if any(crop):  # padding larger than the kernel's reach: crop before convolving
        y = L.emit("pad", [y], {"pads": crop, "value": 0.0},
                   shape=(n, c, _plus(hz, crop[2] + crop[3]), _plus(wz, crop[0] + crop[1])), name=f"{node.name}_crop")
    out = L.shape()
    out4 = (out[0], out[1], 1, out[2]) if nd == 1 else out
    attrs = {"stride": [1, 1], "padding": [max(lo[0], 0), max(hi[0], 0), max(lo[1], 0), max(hi[1], 0)],
             "dilation": list(d), "groups": g, "activation": "none"}
    wv = L.graph.add_param(f"{wname}.transposed", wc)
    y = L.emit("conv2d", [y, wv, L.value(b) if b is not None else ""], attrs, shape=out4,
               name=f"{node.name}_conv" if nd == 1 else None)
    return L.emit("reshape", [y], {"shape": list(out)}) if nd == 1 else y


# -- pooling ---------------------------------------------------------------------------------------------
def _pair(v, default=None):
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        v = default
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return v * 2 if len(v) == 1 else v


@rule("aten.max_pool2d_with_indices.default", "aten.max_pool2d.default")
def _maxpool(L, node, x, kernel, stride=None, padding=0, dilation=1, ceil_mode=False):
    shape = tuple(L.dim(s) for s in (node.meta["val"][0] if isinstance(node.meta["val"], (tuple, list))
                                     else node.meta["val"]).shape)
    k = _pair(kernel)
    v = L.emit("max_pool2d", [L.value(x)], {"kernel": k, "stride": _pair(stride, k), "padding": _pair(padding),
                                            "dilation": _pair(dilation), "ceil_mode": bool(ceil_mode)},
               shape=shape, dtype="float32")
    return (v, None) if node.target == torch.ops.aten.max_pool2d_with_indices.default else v


@rule("aten.avg_pool2d.default")
def _avgpool(L, node, x, kernel, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
             divisor_override=None):
    k = _pair(kernel)
    return L.emit("avg_pool2d", [L.value(x)], {"kernel": k, "stride": _pair(stride, k), "padding": _pair(padding),
                                               "ceil_mode": bool(ceil_mode),
                                               "count_include_pad": bool(count_include_pad),
                                               "divisor_override": divisor_override})


@rule("aten._adaptive_avg_pool2d.default", "aten.adaptive_avg_pool2d.default")
def _adaptive(L, node, x, output_size):
    return L.emit("adaptive_avg_pool2d", [L.value(x)], {"output_size": _pair(output_size)})


# -- reductions ----------------------------------------------------------------------------------------
def _reduce(op):
    def fn(L, node, x, dims=None, keepdim=False, *args, dtype=None, **kwargs):
        rank = len(L.shape(x))
        if isinstance(dims, int):
            dims = [dims]
        dims = sorted(_axis(d, rank) for d in (dims or []))
        if dtype is not None and nac_dtype(dtype) != L.graph.values[L.value(x)].dtype:
            raise NacExportError(f"{L.where()}: {op} with a dtype conversion is not supported")
        return L.emit(op, [L.value(x)], {"dims": dims, "keepdim": bool(keepdim)})
    return fn


for _name in ["sum", "mean", "amax", "amin", "prod", "any", "all"]:
    for _ov in ("dim_IntList", "dim", "default", "dims", "int", "dim_int", "all_dim"):
        RULES[f"aten.{_name}.{_ov}"] = _reduce(_name)


@rule("aten.var.correction", "aten.var.dim")
def _var(L, node, x, dims=None, *args, correction=None, keepdim=False, unbiased=None, **kw):
    rank = len(L.shape(x))
    if node.target == torch.ops.aten.var.dim and args:
        unbiased = args[0]
        keepdim = args[1] if len(args) > 1 else keepdim
    c = 1.0 if correction is None and unbiased in (None, True) else (0.0 if correction is None else float(correction))
    return L.emit("var", [L.value(x)], {"dims": sorted(_axis(d, rank) for d in (dims or range(rank))),
                                         "keepdim": bool(keepdim), "correction": c})


def _arg(op):
    def fn(L, node, x, dim=None, keepdim=False):
        rank = len(L.shape(x))
        if dim is None:
            flat = L.emit("reshape", [L.value(x)], {"shape": [-1]}, shape=(_numel(L, x),),
                          dtype=L.graph.values[L.value(x)].dtype, name=f"{node.name}_flat")
            return L.emit(op, [flat], {"dim": 0, "keepdim": False})
        return L.emit(op, [L.value(x)], {"dim": _axis(dim, rank), "keepdim": bool(keepdim)})
    return fn


def _numel(L, x):
    return _product(L.shape(x))


def _product(dims) -> int | str:
    """The product of (possibly symbolic) dims, as a dimension: an int, or an expression with
    each symbolic factor in parentheses."""
    if all(isinstance(d, int) for d in dims):
        return int(np.prod(dims, dtype=np.int64))
    return "(" + " * ".join(f"({d})" if isinstance(d, str) else str(d) for d in dims) + ")"


RULES["aten.argmax.default"] = _arg("argmax")
RULES["aten.argmin.default"] = _arg("argmin")


@rule("aten.max.dim", "aten.min.dim")
def _max_dim(L, node, x, dim, keepdim=False):
    red, arg = ("amax", "argmax") if node.target == torch.ops.aten.max.dim else ("amin", "argmin")
    rank = len(L.shape(x))
    shape = tuple(L.dim(s) for s in node.meta["val"][0].shape)
    v = L.emit(red, [L.value(x)], {"dims": [_axis(dim, rank)], "keepdim": bool(keepdim)}, shape=shape,
               dtype=L.graph.values[L.value(x)].dtype, name=f"{node.name}_values")
    i = L.emit(arg, [L.value(x)], {"dim": _axis(dim, rank), "keepdim": bool(keepdim)}, shape=shape, dtype="int64",
               name=f"{node.name}_indices")
    return (v, i)


@rule("aten.max.default", "aten.min.default")
def _max_all(L, node, x):
    op = "amax" if node.target == torch.ops.aten.max.default else "amin"
    return L.emit(op, [L.value(x)], {"dims": [], "keepdim": False})


@rule("aten.cumsum.default")
def _cumsum(L, node, x, dim, dtype=None):
    return L.emit("cumsum", [L.value(x)], {"dim": _axis(dim, len(L.shape(x)))})


# -- normalisation --------------------------------------------------------------------------------------
@rule("aten._softmax.default", "aten.softmax.int")
def _softmax(L, node, x, dim, *args):
    return L.emit("softmax", [L.value(x)], {"dim": _axis(dim, len(L.shape(x)))})


@rule("aten._log_softmax.default", "aten.log_softmax.int")
def _log_softmax(L, node, x, dim, *args):
    return L.emit("log_softmax", [L.value(x)], {"dim": _axis(dim, len(L.shape(x)))})


@rule("aten.native_layer_norm.default")
def _layer_norm(L, node, x, normalized_shape, w, b, eps):
    shape = tuple(L.dim(s) for s in node.meta["val"][0].shape)
    v = L.emit("layer_norm", [L.value(x), L.value(w) if w is not None else "", L.value(b) if b is not None else ""],
               {"axes": len(normalized_shape), "eps": float(eps)}, shape=shape, dtype="float32")
    return (v, None, None)


@rule("aten.native_group_norm.default")
def _group_norm(L, node, x, w, b, n, c, hw, groups, eps):
    """GroupNorm (Wu & He 2018; ATen native_group_norm) as existing ops: reshape x [N, C, *] to
    [N, G, C/G * prod(*)], layer-normalise the last axis (biased variance, eps), reshape back,
    then the per-channel affine weight [C] and bias [C] broadcast over the spatial axes."""
    shape = tuple(L.dim(s) for s in node.meta["val"][0].shape)
    rank, name = len(shape), node.name
    g = L.emit("reshape", [L.value(x)], {"shape": [shape[0], int(groups), -1]}, name=f"{name}_groups",
               shape=(shape[0], int(groups), _product((int(c) // int(groups),) + shape[2:])), dtype="float32")
    g = L.emit("layer_norm", [g, "", ""], {"axes": 1, "eps": float(eps)}, name=f"{name}_norm",
               shape=L.graph.values[g].shape, dtype="float32")
    y = L.emit("reshape", [g], {"shape": list(shape)}, name=f"{name}_back", shape=shape, dtype="float32")
    per_channel = [int(c)] + [1] * (rank - 2)
    for op, p in (("mul", w), ("add", b)):
        if p is not None:
            pv = L.emit("reshape", [L.value(p)], {"shape": per_channel}, name=f"{name}_{op}_p",
                        shape=tuple(per_channel), dtype="float32")
            y = L.emit(op, [y, pv], name=f"{name}_{op}", shape=shape, dtype="float32")
    return (y, None, None)


@rule("aten._native_batch_norm_legit_no_training.default")
def _batch_norm(L, node, x, w, b, mean, var, momentum, eps):
    shape = tuple(L.dim(s) for s in node.meta["val"][0].shape)
    v = L.emit("batch_norm", [L.value(x), L.value(w) if w is not None else "", L.value(b) if b is not None else "",
                              L.value(mean), L.value(var)], {"eps": float(eps)}, shape=shape, dtype="float32")
    return (v, None, None)


@rule("aten._fused_rms_norm.default")
def _rms_norm(L, node, x, normalized_shape, w=None, eps=None):
    shape = tuple(L.dim(s) for s in node.meta["val"][0].shape)
    if eps is None:
        eps = float(np.finfo(np.float32).eps)
    v = L.emit("rms_norm", [L.value(x), L.value(w) if w is not None else ""],
               {"axes": len(normalized_shape), "eps": float(eps)}, shape=shape, dtype="float32")
    return (v, None)


# -- indexing -----------------------------------------------------------------------------------------
@rule("aten.embedding.default")
def _embedding(L, node, w, idx, *args):
    return L.emit("embedding", [L.value(w), L.value(idx)])


@rule("aten.gather.default")
def _gather(L, node, x, dim, index, sparse_grad=False):
    return L.emit("gather", [L.value(x), L.value(index)], {"dim": _axis(dim, len(L.shape(x)))})


@rule("aten.index_select.default")
def _index_select(L, node, x, dim, index):
    return L.emit("index_select", [L.value(x), L.value(index)], {"dim": _axis(dim, len(L.shape(x)))})


def _upsample(L, node, x, out_hw, factors, mode: str, align_corners: bool = False):
    """2-D nearest / bilinear upsampling (F.interpolate, nn.Upsample) as one `upsample2d` node; the
    output size may be symbolic (Segformer's decoder resizes to its input's size)."""
    shape, out_shape = L.shape(x), L.shape()
    if len(shape) != 4:
        raise NacExportError(f"{L.where()}: {mode} upsampling needs a 4-D input (got {list(shape)})")
    scales = None if not factors or all(f is None for f in factors) else [float(f) for f in factors]
    return L.emit("upsample2d", [L.value(x)], {"mode": mode, "align_corners": bool(align_corners) and mode == "bilinear",
                                               "size": list(out_shape[2:]), "scales": scales}, dtype="float32")


@rule("aten.upsample_nearest2d.vec")
def _upsample_nearest_vec(L, node, x, output_size, scale_factors):
    return _upsample(L, node, x, output_size, scale_factors, "nearest")


@rule("aten.upsample_nearest2d.default")
def _upsample_nearest(L, node, x, output_size, scales_h=None, scales_w=None):
    return _upsample(L, node, x, output_size, [scales_h, scales_w] if scales_h or scales_w else None, "nearest")


@rule("aten.upsample_bilinear2d.vec")
def _upsample_bilinear_vec(L, node, x, output_size, align_corners, scale_factors):
    return _upsample(L, node, x, output_size, scale_factors, "bilinear", bool(align_corners))


@rule("aten.upsample_bilinear2d.default")
def _upsample_bilinear(L, node, x, output_size, align_corners, scales_h=None, scales_w=None):
    return _upsample(L, node, x, output_size, [scales_h, scales_w] if scales_h or scales_w else None, "bilinear",
                     bool(align_corners))


def _values_and_indices(L, node, x, op: str, attrs: dict):
    """A two-output node (values, int64 indices) shaped as the FX node's first output."""
    if not L.shape(x):
        raise NacExportError(f"{L.where()}: {op} of a 0-d tensor is not supported")
    out = tuple(L.dim(d) for d in node.meta["val"][0].shape)
    v = L.graph.add_value(f"{node.name}_values", L.dtype(x), out)
    i = L.graph.add_value(f"{node.name}_indices", "int64", out)
    L.graph.nodes.append(Node(op, [L.value(x)], [v, i], attrs, module_path(node)))
    return v, i


@rule("aten.sort.default", "aten.sort.stable")
def _sort(L, node, x, *args, stable=None, dim=-1, descending=False):
    if node.target == torch.ops.aten.sort.default:  # sort(x, dim=-1, descending=False)
        dim, descending = (list(args) + [dim, descending][len(args):])[:2]
    rank = max(len(L.shape(x)), 1)
    return _values_and_indices(L, node, x, "sort", {"dim": _axis(dim, rank), "descending": bool(descending)})


@rule("aten.topk.default")
def _topk(L, node, x, k, dim=-1, largest=True, sorted=True):
    # sorted=False leaves the order to the implementation (ATen); NAC always returns it sorted
    rank = max(len(L.shape(x)), 1)
    return _values_and_indices(L, node, x, "topk", {"k": L.dim(k), "dim": _axis(dim, rank), "largest": bool(largest)})


@rule("aten.index.Tensor")
def _index(L, node, x, indices):
    return L.emit("index", [L.value(x)] + ["" if i is None else L.value(i) for i in indices])


# -- shape ops ---------------------------------------------------------------------------------------
@rule("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default", "aten.squeeze.default",
      "aten.squeeze.dim", "aten.squeeze.dims", "aten.unsqueeze.default", "aten.flatten.using_ints",
      "aten.view_copy.default", "aten.unflatten.int")
def _reshape(L, node, x, *args):
    src = L.value(x)
    if tuple(L.graph.values[src].shape) == L.shape():
        return src
    return L.emit("reshape", [src], {"shape": list(L.shape())})


@rule("aten.permute.default", "aten.permute_copy.default")
def _permute(L, node, x, perm):
    rank = len(perm)
    perm = [_axis(p, rank) for p in perm]
    if perm == list(range(rank)):
        return L.value(x)
    return L.emit("permute", [L.value(x)], {"perm": perm})


@rule("aten.t.default")
def _t(L, node, x):
    if _rank(node) < 2:
        return L.value(x)
    return L.emit("permute", [L.value(x)], {"perm": [1, 0]})


@rule("aten.transpose.int")
def _transpose(L, node, x, d0, d1):
    rank = _rank(node)
    perm = list(range(rank))
    d0, d1 = _axis(d0, rank), _axis(d1, rank)
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return L.emit("permute", [L.value(x)], {"perm": perm})


@rule("aten.flip.default")
def _flip(L, node, x, dims):
    rank = len(L.shape(x))
    dims = sorted({_axis(d, rank) for d in dims})
    if not dims or rank == 0:
        return L.value(x)
    return L.emit("flip", [L.value(x)], {"dims": dims})


@rule("aten.expand.default", "aten.expand_copy.default")
def _expand(L, node, x, size, *args, **kwargs):
    src = L.value(x)
    if tuple(L.graph.values[src].shape) == L.shape():
        return src
    return L.emit("expand", [src], {"shape": list(L.shape())})


@rule("aten.slice.Tensor", "aten.slice_copy.Tensor")
def _slice(L, node, x, dim=0, start=None, end=None, step=1):
    src = L.value(x)
    if tuple(L.graph.values[src].shape) == L.shape() and start in (None, 0) and step == 1:
        return src
    rank = len(L.shape(x))
    return L.emit("slice", [src], {"dim": _axis(dim, rank), "start": 0 if start is None else L.dim(start),
                                   "end": 2 ** 62 if end is None else L.dim(end), "step": int(step)})


@rule("aten.select.int", "aten.select_copy.int")
def _select(L, node, x, dim, index):
    return L.emit("select", [L.value(x)], {"dim": _axis(dim, len(L.shape(x))), "index": L.dim(index)})


@rule("aten.cat.default")
def _cat(L, node, xs, dim=0):
    rank = _rank(node)
    ins = [L.value(t) for t in xs if 0 not in L.shape(t)]
    return L.emit("cat", ins, {"dim": _axis(dim, rank)})


@rule("aten.constant_pad_nd.default")
def _pad(L, node, x, pad, value=0.0):
    return L.emit("pad", [L.value(x)], {"pads": [L.dim(p) for p in pad], "value": float(value)})


@rule("aten.repeat.default")
def _repeat(L, node, x, repeats):
    return L.emit("repeat", [L.value(x)], {"repeats": [L.dim(r) for r in repeats]})


@rule("aten.split_with_sizes.default", "aten.split.Tensor", "aten.split_with_sizes_copy.default")
def _split(L, node, x, sizes, dim=0):
    rank = len(L.shape(x))
    dim = _axis(dim, rank)
    outs, start = [], 0
    for k, part in enumerate(node.meta["val"]):
        n = L.dim(part.shape[dim])
        end = n if start == 0 else (start + n if isinstance(start, int) and isinstance(n, int) else f"({start} + {n})")
        outs.append(L.emit("slice", [L.value(x)], {"dim": dim, "start": start, "end": end, "step": 1},
                           shape=tuple(L.dim(s) for s in part.shape), dtype=nac_dtype(part.dtype),
                           name=f"{node.name}_{k}"))
        start = end
    return tuple(outs)


@rule("aten.unbind.int")
def _unbind(L, node, x, dim=0):
    rank = len(L.shape(x))
    dim = _axis(dim, rank)
    return tuple(L.emit("select", [L.value(x)], {"dim": dim, "index": k},
                        shape=tuple(L.dim(s) for s in part.shape), dtype=nac_dtype(part.dtype),
                        name=f"{node.name}_{k}") for k, part in enumerate(node.meta["val"]))


# -- creation ------------------------------------------------------------------------------------------
@rule("aten.arange.start_step", "aten.arange.default", "aten.arange.start")
def _arange(L, node, *args, **kwargs):
    nums = list(args) + [None] * 3
    if node.target == torch.ops.aten.arange.default:
        start, end, step = 0, nums[0], 1
    else:
        start, end, step = nums[0], nums[1], nums[2] if nums[2] is not None else 1
    for v in (start, end, step):
        if isinstance(v, float):
            raise NacExportError(f"{L.where()}: arange with float bounds is not supported")
    return L.emit("arange", [], {"start": L.dim(start), "end": L.dim(end), "step": L.dim(step), "dtype": L.dtype()})


@rule("aten.full.default", "aten.full_like.default", "aten.zeros.default", "aten.ones.default",
      "aten.zeros_like.default", "aten.ones_like.default", "aten.scalar_tensor.default", "aten.new_zeros.default",
      "aten.new_ones.default", "aten.new_full.default", "aten.empty.memory_format", "aten.new_empty.default",
      "aten.empty_like.default")
def _full(L, node, *args, **kwargs):
    name = str(node.target)
    if "zeros" in name or "empty" in name:
        value = 0
    elif "ones" in name:
        value = 1
    elif "scalar_tensor" in name:
        value = args[0]
    else:
        value = args[1]
    if isinstance(value, torch.fx.Node) or isinstance(value, torch.SymInt):
        raise NacExportError(f"{L.where()}: a fill value computed at run time is not supported")
    value = bool(value) if L.dtype() == "bool" else (int(value) if L.dtype() != "float32" else float(value))
    return L.emit("full", [], {"shape": list(L.shape()), "value": value, "dtype": L.dtype()})


# -- Python-level getitem on multi-output ops ---------------------------------------------------------------
@rule("<built-in function getitem>")
def _getitem(L, node, src, i):
    parts = L.env[src]
    v = parts[i] if isinstance(parts, tuple) and i < len(parts) else None
    if v is None:
        raise NacExportError(f"{L.where()}: output {i} of {src.target} is not supported (only the main "
                             f"result of this op is)")
    return v


def target_name(target) -> str:
    """The key of `RULES` for an FX call_function target."""
    if target is operator.getitem:
        return "<built-in function getitem>"
    return str(target)


@rule("aten.linalg_vector_norm.default")
def _vector_norm(L, node, x, ord=2, dim=None, keepdim=False, dtype=None):
    """p-norm for p in {1, 2, inf} as abs/mul, sum/amax and sqrt nodes (ATen linalg_vector_norm)."""
    rank = len(L.shape(x))
    dims = sorted(_axis(d, rank) for d in ([dim] if isinstance(dim, int) else (dim or [])))
    src = L.value(x)
    xs = L.graph.values[src].shape
    if ord == 2:
        sq = L.emit("mul", [src, src], shape=xs, dtype="float32", name=f"{node.name}_sq")
        s = L.emit("sum", [sq], {"dims": dims, "keepdim": bool(keepdim)}, name=f"{node.name}_sum")
        return L.emit("sqrt", [s])
    if ord in (1, float("inf")):
        a = L.emit("abs", [src], shape=xs, dtype="float32", name=f"{node.name}_abs")
        return L.emit("sum" if ord == 1 else "amax", [a], {"dims": dims, "keepdim": bool(keepdim)})
    raise NacExportError(f"{L.where()}: vector norm of order {ord} is not supported (1, 2 and inf are)")


@rule("aten.scaled_dot_product_attention.default")
def _sdpa(L, node, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False):
    if dropout_p:
        raise NacExportError(f"{L.where()}: attention dropout must be 0 at inference (put the model in eval mode)")
    if scale is None:
        scale = 1.0 / float(node.args[0].meta["val"].shape[-1]) ** 0.5
    qs, ks = L.shape(q), L.shape(k)
    if len(qs) == 4 and len(ks) == 4 and ks[1] == 1 and qs[1] != 1:
        enable_gqa = True  # one shared key/value head broadcast over the query heads (Falcon's multi-query) is GQA
    return L.emit("scaled_dot_product_attention",
                  [L.value(q), L.value(k), L.value(v), L.value(attn_mask) if attn_mask is not None else ""],
                  {"scale": float(scale), "is_causal": bool(is_causal), "enable_gqa": bool(enable_gqa)})
