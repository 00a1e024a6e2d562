"""Graph optimisation passes, run on a NAC `Graph` after lowering and before writing.

Each pass changes the graph in place and returns how many rewrites it made; `optimize` runs them
in order and returns a report (``{"fold_constants": 3, ...}``) that `nac info` and the emitter show.
"""
from __future__ import annotations

import hashlib

import numpy as np

from nac.format.graph import Graph, Node
from nac.format.ops import operands

_INLINE_CONST_MAX = 16  # folded results with at most this many elements live inline in the graph


def optimize(g: Graph) -> dict:
    """Run every pass in order; returns ``{pass name: rewrites}`` plus node counts."""
    report = {"nodes_before": len(g.nodes)}
    for p in (fold_constants, matmul_to_linear, fuse_pad_into_conv, fold_batch_norm, fuse_bias_add,
              fuse_residual_add, fuse_tanh_gelu, fuse_silu, fuse_rms_norm, fuse_rotary_embedding,
              fuse_activation, attention_reads_cache_in_place, eliminate_dead_code, deduplicate_parameters,
              transpose_linear_weights):
        report[p.__name__] = p(g)
    report["nodes_after"] = len(g.nodes)
    return report


def _single_user(g: Graph, value: str, users: dict) -> Node | None:
    us = users.get(value, [])
    if len(us) == 1 and value not in g.outputs:
        return us[0]
    return None


def _symbolic_attrs(n: Node) -> bool:
    """Whether a node's attributes mention named dimensions (then it cannot be folded)."""
    from nac.engine.plan import DIM_ATTRS

    vals = [n.attrs[k] for k in DIM_ATTRS.intersection(n.attrs)] + ([n.attrs.get("value")] if n.op == "full" else [])
    flat = [x for v in vals for x in (v if isinstance(v, list) else [v])]
    return any(isinstance(x, str) for x in flat)


def fold_constants(g: Graph) -> int:
    """Evaluate nodes whose inputs are all constants and whose outputs have static shapes."""
    from nac.engine.kernels import KERNELS
    from nac.engine.plan import resolve_attrs
    from nac.format.graph import numpy_dtype

    kept, folded = [], 0
    for n in g.nodes:
        arrays = [g.const_array(i) if i else None for i in operands(n.op, n.inputs)]
        outs = [g.values[o] for o in n.outputs]
        if (n.op in ("copy",) or any(i and a is None for i, a in zip(n.inputs, arrays)) or _symbolic_attrs(n)
                or not all(v.is_static for v in outs) or any(o in g.outputs for o in n.outputs)):
            kept.append(n)
            continue
        attrs = resolve_attrs(n.op, n.attrs, {})
        res = [np.empty(v.shape, numpy_dtype(v.dtype)) for v in outs]
        view = KERNELS[n.op](arrays, res, attrs)
        if view is not None:
            res = [np.asarray(view, order="C")]
        for v, r in zip(outs, res):
            if r.size <= _INLINE_CONST_MAX:
                v.const = r.tolist()
            else:
                g.params[v.name] = np.asarray(r, order="C")
        folded += 1
    g.nodes = kept
    return folded


def matmul_to_linear(g: Graph) -> int:
    """``matmul(x, W)`` with a constant 2-D float ``W`` [in, out] -> ``linear(x, W)`` with
    ``weight_layout='io'`` (a weight computed from parameters, as in BitLinear, is folded to such a
    constant), so bias/activation fusion and weight quantisation apply to it."""
    converted = []
    for n in g.nodes:
        if n.op != "matmul":
            continue
        w = g.const_array(n.inputs[1])
        if w is None or w.ndim != 2 or w.dtype != np.float32 or n.inputs[1] not in g.params:
            continue
        n.op, n.inputs, n.attrs = "linear", [n.inputs[0], n.inputs[1], ""], {"activation": "none",
                                                                             "weight_layout": "io"}
        converted.append(n)
    if converted:
        eliminate_dead_code(g)  # frees the names of the parameters the folded weights came from
        for n in converted:
            _name_after_module(g, n, 1, "weight")
    return len(converted)


def _name_after_module(g: Graph, node: Node, pos: int, suffix: str) -> None:
    """Rename a folded constant read only by ``node`` to ``<module path>.<suffix>`` (for `nac info`)."""
    old = node.inputs[pos]
    module = node.source.split(" (", 1)[0]
    new = f"{module}.{suffix}"
    if not module or module == "<top>" or new in g.values or old in g.outputs or old in g.param_aliases.values():
        return
    if sum(i == old for n in g.nodes for i in n.inputs) != 1:
        return
    v = g.values.pop(old)
    v.name = new
    g.values[new] = v
    g.params[new] = g.params.pop(old)
    node.inputs[pos] = new


def fuse_pad_into_conv(g: Graph) -> int:
    """``pad`` with zeros on H and W only, read by one ``conv2d`` -> the conv's padding."""
    users, prod = g.consumers(), g.producers()
    count = 0
    for conv in g.nodes:
        if conv.op != "conv2d":
            continue
        pad = prod.get(conv.inputs[0])
        if pad is None or pad.op != "pad" or pad.attrs["value"] != 0.0 or _single_user(g, pad.outputs[0], users) is None:
            continue
        p = pad.attrs["pads"]
        if len(p) != 4 or not all(isinstance(x, int) and x >= 0 for x in p):
            continue
        left, right, top, bottom = p
        cp = conv.attrs["padding"]
        conv.attrs["padding"] = [cp[0] + top, cp[1] + bottom, cp[2] + left, cp[3] + right]
        conv.inputs[0] = pad.inputs[0]
        count += 1
    if count:
        eliminate_dead_code(g)
    return count


def fold_batch_norm(g: Graph) -> int:
    """``batch_norm(conv2d(x, W, b))`` with constant statistics -> ``conv2d(x, W', b')``.

    W' = W * s[:, None, None, None], b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps).
    """
    users, prod = g.consumers(), g.producers()
    folded = set()
    for bn in g.nodes:
        if bn.op != "batch_norm":
            continue
        conv = prod.get(bn.inputs[0])
        if conv is None or conv.op != "conv2d" or _single_user(g, conv.outputs[0], users) is None:
            continue
        if conv.attrs.get("activation", "none") != "none":
            continue
        x, w_name, b_name = conv.inputs
        w = g.const_array(w_name)
        stats = [g.const_array(i) if i else None for i in bn.inputs[1:]]
        gamma, beta, mean, var = stats
        if w is None or mean is None or var is None or (bn.inputs[1] and gamma is None) or \
                (bn.inputs[2] and beta is None) or (b_name and g.const_array(b_name) is None):
            continue
        cout = w.shape[0]
        gamma = np.ones(cout, np.float32) if gamma is None else gamma
        beta = np.zeros(cout, np.float32) if beta is None else beta
        bias = np.zeros(cout, np.float32) if not b_name else g.const_array(b_name)
        s = (gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + bn.attrs["eps"]))
        w_new = (w.astype(np.float64) * s[:, None, None, None]).astype(np.float32)
        b_new = ((bias.astype(np.float64) - mean) * s + beta).astype(np.float32)
        conv.inputs = [x, g.add_param(f"{w_name}.bn_folded", w_new), g.add_param(f"{w_name}.bn_folded_bias", b_new)]
        # the conv now produces the batch norm's output; it runs before every reader of that value
        del g.values[conv.outputs[0]]
        conv.outputs = [bn.outputs[0]]
        folded.add(id(bn))
    if folded:
        g.nodes = [n for n in g.nodes if id(n) not in folded]
        eliminate_dead_code(g)
    return len(folded)


def _activation_of(n: Node) -> str | None:
    """The epilogue activation a producer can apply instead of node ``n`` (`OpSchema.fuses_as`)."""
    from nac.format.ops import FUSABLE

    fuse = FUSABLE.get(n.op)
    return fuse(n.attrs) if fuse is not None else None


def fuse_bias_add(g: Graph) -> int:
    """``linear(x, W) + b`` with a constant 1-D ``b`` of W's output size -> ``linear(x, W, b)``."""
    users, prod = g.consumers(), g.producers()
    count, dead = 0, set()
    for add in g.nodes:
        if add.op != "add":
            continue
        for mine, other in ((0, 1), (1, 0)):
            p = prod.get(add.inputs[mine])
            b = g.const_array(add.inputs[other])
            if p is None or p.op != "linear" or p.inputs[2] or p.attrs.get("activation", "none") != "none":
                continue
            wshape = g.values[p.inputs[1]].shape
            n_out = wshape[1] if p.attrs.get("weight_layout", "oi") == "io" else wshape[0]
            if b is None or b.ndim != 1 or b.dtype != np.float32 or b.shape[0] != n_out:
                continue
            if _single_user(g, p.outputs[0], users) is None or g.values[add.outputs[0]].shape != g.values[
                    p.outputs[0]].shape:
                continue
            p.inputs[2] = add.inputs[other]
            del g.values[p.outputs[0]]
            p.outputs = [add.outputs[0]]
            dead.add(id(add))
            count += 1
            break
    g.nodes = [n for n in g.nodes if id(n) not in dead]
    return count


def fuse_residual_add(g: Graph) -> int:
    """``conv2d(x, W, b) + r`` -> ``conv2d(x, W, b, residual=r)``: the skip connection of a
    ResNet block or an inverted-residual (MobileNetV2, EfficientNet) block joins the
    convolution's epilogue, so the sum is never written and read back on its own. Matched when
    the convolution has no activation yet and no other reader, ``r`` is float32 of the
    convolution's output shape (no broadcasting) and is defined before the convolution runs (a
    graph input, a constant, or an earlier node's output). `fuse_activation` (after this pass)
    may then fold a following ReLU: conv2d's activation applies after the residual, as in
    ``relu(bn(conv(x)) + x)``."""
    users, prod = g.consumers(), g.producers()
    order = {id(n): k for k, n in enumerate(g.nodes)}
    count, dead = 0, set()
    for add in g.nodes:
        if add.op != "add" or len(add.inputs) != 2 or g.values[add.outputs[0]].dtype != "float32":
            continue
        for mine, other in ((0, 1), (1, 0)):
            p, r = prod.get(add.inputs[mine]), add.inputs[other]
            if (p is None or p.op != "conv2d" or id(p) in dead or p.attrs.get("activation", "none") != "none"
                    or (len(p.inputs) > 3 and p.inputs[3]) or r == add.inputs[mine]):
                continue
            if _single_user(g, p.outputs[0], users) is None:
                continue
            rv, pv = g.values.get(r), g.values[p.outputs[0]]
            if (rv is None or rv.dtype != "float32" or rv.shape != pv.shape
                    or g.values[add.outputs[0]].shape != pv.shape):
                continue
            maker = prod.get(r)
            if maker is not None and order[id(maker)] > order[id(p)]:
                continue  # r is computed after the convolution: it could not read it
            p.inputs = (list(p.inputs) + ["", ""])[:3] + [r]
            del g.values[p.outputs[0]]
            p.outputs = [add.outputs[0]]
            prod[add.outputs[0]] = p
            dead.add(id(add))
            count += 1
            break
    g.nodes = [n for n in g.nodes if id(n) not in dead]
    return count


def _scalar(g: Graph, v: str, want: float | None = None) -> float | None:
    """The value of a one-element constant ``v`` (None if ``v`` is not one, or differs from
    ``want`` by more than 1e-6 relative)."""
    c = g.const_array(v) if v else None
    if c is None or c.size != 1:
        return None
    x = float(c.reshape(-1)[0])
    return x if want is None or abs(x - want) <= 1e-6 * abs(want) else None


def _split(g: Graph, n: Node | None, op: str, want: float | None) -> str | None:
    """The non-constant input of ``n`` when it is ``op(x, c)`` or ``op(c, x)`` with ``c`` a
    one-element constant (equal to ``want`` unless that is None), else None."""
    if n is None or n.op != op or len(n.inputs) != 2:
        return None
    a, b = n.inputs
    if _scalar(g, b, want) is not None and g.const_array(a) is None:
        return a
    if _scalar(g, a, want) is not None and g.const_array(b) is None:
        return b
    return None


def _only_user(g: Graph, users: dict, v: str, node: Node) -> bool:
    """Whether ``node`` is the one reader of value ``v`` (and ``v`` is no graph output)."""
    return v not in g.outputs and [id(u) for u in users.get(v, [])] == [id(node)]


def _float_products(g: Graph):
    """The float32 two-operand ``mul`` nodes, in order, checked as they are reached (a pass may
    rewrite a later one before the loop gets there)."""
    return (n for n in g.nodes if n.op == "mul" and len(n.inputs) == 2 and g.values[n.outputs[0]].dtype == "float32")


def _drop(g: Graph, dead: set, *nodes: Node) -> None:
    """Mark ``nodes`` dead and forget the values they define."""
    for n in nodes:
        dead.add(id(n))
        for o in n.outputs:
            g.values.pop(o, None)


def fuse_tanh_gelu(g: Graph) -> int:
    """The tanh GELU written out op by op -> one ``gelu(approximate='tanh')`` node.

    GPT-2's ``gelu_new`` (transformers' ``NewGELUActivation``) computes
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) as eight element-wise ops, each a pass over
    the FFN's widest tensor; ATen's ``gelu(approximate='tanh')`` is the same formula (Hendrycks &
    Gimpel 2016). As one node, `fuse_activation` then folds it into the producing linear. Matched:
    mul(0.5 x, add(tanh(mul(add(x, mul(pow(x, 3), 0.044715)), sqrt(2/pi))), 1)), operands in
    either order, every intermediate read only by the next op.
    """
    users, prod = g.consumers(), g.producers()

    def scalar(v, want):
        return _scalar(g, v, want)

    def split(n, op, want):
        return _split(g, n, op, want)

    def only_user(v, node) -> bool:
        return _only_user(g, users, v, node)

    count, dead = 0, set()
    for out in _float_products(g):
        for half_v, one_v in (out.inputs, out.inputs[::-1]):
            half, one = prod.get(half_v), prod.get(one_v)
            x = split(half, "mul", 0.5)
            t_v = split(one, "add", 1.0)
            tanh = prod.get(t_v) if t_v else None
            if x is None or tanh is None or tanh.op != "tanh":
                continue
            scaled = prod.get(tanh.inputs[0])
            inner_v = split(scaled, "mul", 0.7978845608028654)
            inner = prod.get(inner_v) if inner_v else None
            if inner is None or inner.op != "add" or x not in inner.inputs:
                continue
            cubic_v = inner.inputs[1] if inner.inputs[0] == x else inner.inputs[0]
            cubic = prod.get(cubic_v)
            pow_v = split(cubic, "mul", 0.044715)
            pw = prod.get(pow_v) if pow_v else None
            if pw is None or pw.op != "pow" or pw.inputs[0] != x or not scalar(pw.inputs[1], 3.0):
                continue
            chain = [(half_v, out), (one_v, out), (t_v, one), (tanh.inputs[0], tanh), (inner_v, scaled),
                     (cubic_v, inner), (pow_v, cubic)]
            if not all(only_user(v, n) for v, n in chain) or g.values[x].shape != g.values[out.outputs[0]].shape:
                continue
            _drop(g, dead, half, one, tanh, scaled, inner, cubic, pw)
            out.op, out.inputs, out.attrs = "gelu", [x], {"approximate": "tanh"}
            count += 1
            break
    g.nodes = [n for n in g.nodes if id(n) not in dead]
    return count


def fuse_silu(g: Graph) -> int:
    """``x * sigmoid(x)`` -> ``silu(x)`` (ATen ``silu``; Elfwing et al. 2018), so that
    `fuse_activation` folds it into the producing linear: torch.export writes Llama's SiLU MLP gate
    as the two ops, each a pass over the FFN's widest tensor. Operands in either order; the
    sigmoid must be read by the product alone."""
    users, prod = g.consumers(), g.producers()
    count, dead = 0, set()
    for out in _float_products(g):
        for x, sig_v in (out.inputs, out.inputs[::-1]):
            sig = prod.get(sig_v)
            if (sig is None or sig.op != "sigmoid" or sig.inputs[0] != x or not _only_user(g, users, sig_v, out)
                    or g.values[x].shape != g.values[out.outputs[0]].shape):
                continue
            _drop(g, dead, sig)
            out.op, out.inputs, out.attrs = "silu", [x], {}
            count += 1
            break
    g.nodes = [n for n in g.nodes if id(n) not in dead]
    return count


def fuse_rms_norm(g: Graph) -> int:
    """RMSNorm written out op by op -> one ``rms_norm`` node (Zhang & Sennrich 2019; ATen
    ``rms_norm``): ``w * (x * rsqrt(mean(x ** 2, -1, keepdim) + eps))`` with ``w`` a constant
    [hidden] (or no ``w``), operands in either order, every intermediate read only by the next op.
    transformers' Llama, Mistral, Qwen2 and Gemma norms lower to these five or six ops, each a pass
    over the hidden states; the kernel makes one pass for the sum of squares and one to scale.
    """
    users, prod = g.consumers(), g.producers()
    count, dead = 0, set()
    for y in _float_products(g):
        for x, r_v in (y.inputs, y.inputs[::-1]):
            r = prod.get(r_v)
            if r is None or r.op != "rsqrt" or not _only_user(g, users, r_v, y):
                continue
            add = prod.get(r.inputs[0])
            m_v = _split(g, add, "add", None)
            mean = prod.get(m_v) if m_v else None
            shape = g.values[x].shape
            if (mean is None or mean.op != "mean" or not mean.attrs.get("keepdim")
                    or [d % len(shape) for d in mean.attrs.get("dims", [])] != [len(shape) - 1]):
                continue
            pw = prod.get(mean.inputs[0])
            if pw is None or pw.op != "pow" or pw.inputs[0] != x or _scalar(g, pw.inputs[1], 2.0) is None:
                continue
            chain = [(r.inputs[0], r), (m_v, add), (mean.inputs[0], mean)]
            if not all(_only_user(g, users, v, n) for v, n in chain) or shape != g.values[y.outputs[0]].shape:
                continue
            eps = _scalar(g, add.inputs[1] if add.inputs[0] == m_v else add.inputs[0])
            node, weight = y, ""
            scaled = _single_user(g, y.outputs[0], users)
            if scaled is not None and scaled.op == "mul" and len(scaled.inputs) == 2:
                w_v = scaled.inputs[1] if scaled.inputs[0] == y.outputs[0] else scaled.inputs[0]
                w = g.const_array(w_v)
                if (w is not None and w.dtype == np.float32 and w.shape == (shape[-1],)
                        and g.values[scaled.outputs[0]].shape == shape):
                    node, weight = scaled, w_v
                    _drop(g, dead, y)
            _drop(g, dead, pw, mean, add, r)
            node.op, node.inputs, node.attrs = "rms_norm", [x, weight], {"axes": 1, "eps": eps}
            count += 1
            break
    g.nodes = [n for n in g.nodes if id(n) not in dead]
    return count


def _half_slice(g: Graph, n: Node | None, rank: int, start: int, stop: int) -> str | None:
    """The sliced value when ``n`` is ``x[..., start:stop]`` on the last axis, step 1 (an ``end``
    at or past the axis' length counts as ``stop``), else None."""
    if n is None or n.op != "slice" or n.attrs.get("step", 1) != 1:
        return None
    dim, a, b = n.attrs.get("dim"), n.attrs.get("start", 0), n.attrs.get("end")
    if not all(type(t) is int for t in (dim, a, b)) or dim % rank != rank - 1 or a != start:
        return None
    return n.inputs[0] if b == stop or (stop == g.values[n.inputs[0]].shape[-1] and b >= stop) else None


def _rotate_half(g: Graph, prod: dict, users: dict, v: str) -> tuple[str, list[Node]] | None:
    """(x, the nodes that compute it) when value ``v`` is transformers' ``rotate_half(x)`` =
    ``cat([neg(x[..., D/2:]), x[..., :D/2]], -1)`` with D static and even, each intermediate read
    only by the next op; else None."""
    cat = prod.get(v)
    if cat is None or cat.op != "cat" or len(cat.inputs) != 2:
        return None
    neg, lo = prod.get(cat.inputs[0]), prod.get(cat.inputs[1])
    if neg is None or neg.op != "neg" or lo is None:
        return None
    hi = prod.get(neg.inputs[0])
    x = lo.inputs[0] if lo.op == "slice" else None
    shape = g.values[x].shape if x in g.values else ()
    if (not shape or type(shape[-1]) is not int or shape[-1] % 2
            or cat.attrs.get("dim", 0) % len(shape) != len(shape) - 1):
        return None
    d, rank = shape[-1], len(shape)
    if _half_slice(g, lo, rank, 0, d // 2) != x or _half_slice(g, hi, rank, d // 2, d) != x:
        return None
    chain = ((cat.inputs[0], cat), (cat.inputs[1], cat), (neg.inputs[0], neg))
    if not all(_only_user(g, users, i, n) for i, n in chain):
        return None
    return x, [cat, neg, lo, hi]


def fuse_rotary_embedding(g: Graph) -> int:
    """The rotary position embedding written out op by op -> one ``rotary_embedding`` node.

    transformers' ``apply_rotary_pos_emb`` (Llama, Mistral, Qwen2, Gemma, GPT-NeoX, Phi) computes
    ``q * cos + rotate_half(q) * sin`` (and the same for k), ``rotate_half(x) = cat(-x[..., D/2:],
    x[..., :D/2])`` (Su et al. 2021, in the half-split layout): seven ops per tensor, five of them
    kernels, for every layer of every decode step (SmolLM2: 300 of a step's ~650 kernels). Matched:
    add(mul(x, cos), mul(rotate_half(x), sin)), operands of each mul and the add in either order,
    x, cos and sin float32, cos and sin not enlarging x, every intermediate read only by the next
    op. The node computes the same float32 products and sum, so results are bit-identical.
    """
    users, prod = g.consumers(), g.producers()
    count, dead = 0, set()
    f32 = lambda v: g.values[v].dtype == "float32"  # noqa: E731
    for add in [n for n in g.nodes if n.op == "add" and len(n.inputs) == 2 and f32(n.outputs[0])]:
        out_shape = g.values[add.outputs[0]].shape
        for a_v, b_v in (add.inputs, add.inputs[::-1]):
            a, b = prod.get(a_v), prod.get(b_v)
            if a is None or b is None or a.op != "mul" or b.op != "mul" or len(a.inputs) != 2 or len(b.inputs) != 2:
                continue
            for rot_v, sin in (b.inputs, b.inputs[::-1]):
                found = _rotate_half(g, prod, users, rot_v)
                if found is None or found[0] not in a.inputs:
                    continue
                x, nodes = found
                cos = a.inputs[1] if a.inputs[0] == x else a.inputs[0]
                if (not all(f32(v) for v in (x, cos, sin)) or g.values[x].shape != out_shape
                        or not all(_only_user(g, users, v, n) for v, n in ((a_v, add), (b_v, add), (rot_v, b)))):
                    continue
                _drop(g, dead, a, b, *nodes)
                add.op, add.inputs, add.attrs = "rotary_embedding", [x, cos, sin], {}
                count += 1
                break
            if add.op == "rotary_embedding":
                break
    g.nodes = [n for n in g.nodes if id(n) not in dead]
    return count


def fuse_activation(g: Graph) -> int:
    """``act(linear(...))`` / ``act(conv2d(...))`` -> the producer applies ``act`` in its kernel.

    Also through a reshape between them (``act(reshape(linear(...)))``, as transformers' 3-D
    linears lower): element-wise functions commute with reshapes, so the linear applies ``act``
    and the reshape then feeds the activation's consumers.
    """
    users, prod = g.consumers(), g.producers()
    count, dead = 0, set()
    for act in g.nodes:
        kind = _activation_of(act)
        if kind is None or g.values[act.outputs[0]].dtype != "float32":
            continue
        p = prod.get(act.inputs[0])
        reshape = None
        if p is not None and p.op == "reshape" and _single_user(g, p.outputs[0], users) is not None:
            reshape, p = p, prod.get(p.inputs[0])
        if p is None or p.op not in ("linear", "conv2d") or p.attrs.get("activation", "none") != "none":
            continue
        if _single_user(g, p.outputs[0], users) is None:
            continue
        p.attrs["activation"] = kind
        if reshape is None:
            del g.values[p.outputs[0]]
            p.outputs = [act.outputs[0]]
        else:  # linear -> reshape -> act  becomes  linear(act) -> reshape, the reshape defining act's output
            del g.values[reshape.outputs[0]]
            reshape.outputs = [act.outputs[0]]
        dead.add(id(act))
        count += 1
    g.nodes = [n for n in g.nodes if id(n) not in dead]
    return count


def prefer_io(k: int, n: int) -> bool:
    """Whether a linear's weight, ``k`` inputs by ``n`` outputs, is best stored [in, out]
    (``weight_layout='io'``) rather than [out, in].

    Products of two or more rows run on panels packed once from either layout, so the layout
    matters for single rows (decode), which go to OpenBLAS's matrix-vector kernel: for a weight
    wider than deep (n >= k) [in, out] was 0-15 % faster, for one deeper than wide (a transformer's
    FFN down projection) [out, in] was 1.7x faster (2 threads, weights from memory: 576 x 1536 at
    25-27 GB/s against 14-16 GB/s; 1536 x 576 at 24-25 against 21 GB/s)."""
    return n >= k


def transpose_linear_weights(g: Graph) -> int:
    """Store each linear weight in the layout `prefer_io` picks for its shape, when only linears
    read it (as their weight). A weight also read by another op (an embedding tied to an LM head)
    keeps its layout, so it is still stored once. Returns how many weights were transposed."""
    users = g.consumers()
    count = 0
    for name in list(g.params):
        us = users.get(name, [])
        if not us or name in g.param_aliases.values() or g.params[name].ndim != 2 or any(
                u.op != "linear" or u.inputs[1] != name or name in u.inputs[2:] for u in us):
            continue
        layouts = {u.attrs.get("weight_layout", "oi") for u in us}
        if len(layouts) != 1:
            continue
        io = layouts.pop() == "io"
        k, n = g.params[name].shape if io else g.params[name].shape[::-1]
        if prefer_io(k, n) == io:
            continue
        g.params[name] = np.ascontiguousarray(g.params[name].T)
        g.values[name].shape = tuple(g.params[name].shape)
        for u in us:
            u.attrs["weight_layout"] = "oi" if io else "io"
        count += 1
    return count


def _rewire(g: Graph, alias: dict[str, str]) -> None:
    """Every reader of a value in ``alias`` reads its replacement instead (graph outputs keep theirs)."""
    for n in g.nodes:
        n.inputs = [alias.get(i, i) for i in n.inputs]


def attention_reads_cache_in_place(g: Graph) -> int:
    """Take the KV-cache copies out of a transformers decoder step (Vaswani et al. attention with
    a cache, as transformers' DynamicCache builds it). Per layer and step the traced graph copies
    the whole cache several times; this pass leaves attention reading it where it lies:

    - ``cat`` of one input is that input;
    - ``slice(cat([past, new], d), d, start=len(past), end=...)`` (the step's new keys, an output)
      is ``new``;
    - ``reshape(expand(reshape(k)))`` repeating each key/value head for the query heads
      (transformers' ``repeat_kv``) feeding attention becomes grouped-query attention on ``k``;
    - attention over ``cat([past, new])`` keys and values takes the two segments as separate
      inputs (``k_tail``, ``v_tail``) and reads both without concatenating.

    Returns the number of rewrites.
    """
    alias: dict[str, str] = {}
    for n in g.nodes:  # single-input cat: an identity (nodes are in order, so chains resolve)
        if n.op == "cat" and len(n.inputs) == 1 and n.outputs[0] not in g.outputs \
                and g.values[n.inputs[0]].shape == g.values[n.outputs[0]].shape:
            alias[n.outputs[0]] = alias.get(n.inputs[0], n.inputs[0])
    _rewire(g, alias)
    rewrites = len(alias)
    prod, alias = g.producers(), {}
    for n in g.nodes:  # the new part of a cache concatenation
        src = prod.get(n.inputs[0]) if n.op == "slice" else None
        if src is None or src.op != "cat" or len(src.inputs) != 2 or n.attrs.get("step", 1) != 1:
            continue
        d = src.attrs["dim"] % len(g.values[src.outputs[0]].shape)
        past, new = (g.values[i].shape for i in src.inputs)
        end = n.attrs.get("end")
        if n.attrs["dim"] % len(past) == d and n.attrs.get("start") == past[d] and isinstance(end, int) \
                and end >= 1 << 60:
            alias[n.outputs[0]] = src.inputs[1]
    _rewire(g, alias)
    rewrites += len(alias)
    prod = g.producers()
    for n in g.nodes:
        if n.op != "scaled_dot_product_attention" or len(n.inputs) > 4:
            continue
        q_heads = g.values[n.inputs[0]].shape[-3] if len(g.values[n.inputs[0]].shape) == 4 else None
        kv = [_repeated_heads(g, prod, n.inputs[i], q_heads) for i in (1, 2)]
        if all(kv) and kv[0][1] == kv[1][1]:
            n.inputs[1], n.inputs[2] = kv[0][0], kv[1][0]
            n.attrs["enable_gqa"] = True
            rewrites += 1
        cats = [prod.get(n.inputs[i]) for i in (1, 2)]
        if all(c is not None and c.op == "cat" and len(c.inputs) == 2 and c.attrs["dim"] % 4 == 2
               and len(g.values[c.outputs[0]].shape) == 4 for c in cats):
            mask = n.inputs[3] if len(n.inputs) > 3 else ""
            n.inputs = [n.inputs[0], cats[0].inputs[0], cats[1].inputs[0], mask, cats[0].inputs[1], cats[1].inputs[1]]
            rewrites += 1
    return rewrites


def _repeated_heads(g: Graph, prod: dict, value: str, q_heads) -> tuple[str, int] | None:
    """``(k, rep)`` when ``value`` is transformers' ``repeat_kv(k, rep)``: reshape([b, h*rep, s, d])
    of expand([b, h, rep, s, d]) of reshape([b, h, 1, s, d]) of k [b, h, s, d]."""
    r = prod.get(value)
    e = prod.get(r.inputs[0]) if r is not None and r.op == "reshape" else None
    u = prod.get(e.inputs[0]) if e is not None and e.op == "expand" else None
    if u is None or u.op != "reshape":
        return None
    k = u.inputs[0]
    ks, us, es, rs = (g.values[v].shape for v in (k, u.outputs[0], e.outputs[0], r.outputs[0]))
    if len(ks) != 4 or us != (ks[0], ks[1], 1, ks[2], ks[3]) or len(es) != 5 or es[:2] != ks[:2] \
            or es[3:] != ks[2:] or not isinstance(es[2], int) or not isinstance(ks[1], int):
        return None
    if rs != (ks[0], ks[1] * es[2], ks[2], ks[3]) or (q_heads is not None and q_heads != ks[1] * es[2]):
        return None
    return k, es[2]


def _merged_name(names: list[str]) -> str:
    """``a.q_proj.weight``, ``a.k_proj.weight`` -> ``a.{q_proj,k_proj}.weight``: the dotted parts
    the names share before and after the ones that differ, around a brace list of those."""
    parts = [n.split(".") for n in names]
    head = 0
    while all(len(p) > head + 1 and p[head] == parts[0][head] for p in parts):
        head += 1
    tail = 0
    while all(len(p) > head + tail + 1 and p[-1 - tail] == parts[0][-1 - tail] for p in parts):
        tail += 1
    mid = ",".join(".".join(p[head:len(p) - tail]) for p in parts)
    return ".".join(parts[0][:head] + ["{" + mid + "}"] + (parts[0][len(parts[0]) - tail:] if tail else []))


def _share_views(g: Graph) -> int:
    """Identical view ops (same op, input and attributes) of one value -> the first of them;
    returns how many were dropped."""
    from nac.format.ops import VIEW_OPS

    first: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    for n in g.nodes:
        if n.op not in VIEW_OPS or len(n.outputs) != 1 or n.outputs[0] in g.outputs:
            continue
        n.inputs = [alias.get(i, i) for i in n.inputs]
        key = (n.op, tuple(n.inputs), repr(sorted(n.attrs.items())))
        if key in first and g.values[first[key]].shape == g.values[n.outputs[0]].shape:
            alias[n.outputs[0]] = first[key]
        else:
            first.setdefault(key, n.outputs[0])
    if alias:
        _rewire(g, alias)
        eliminate_dead_code(g)
    return len(alias)


def merge_sibling_linears(g: Graph) -> tuple[int, dict[str, list[str]]]:
    """Linears that read the same input -> one linear over their concatenated weights, whose output
    ``slice`` views hand each former linear's readers its columns (attention's Q, K and V
    projections; the K and V of cross-attention).

    One matrix-vector product streams a weight at the memory bandwidth only when it is large
    enough to split over the cores: OpenBLAS reached 5.6 GB/s on SmolLM2's three projections
    (576 x 576, 192 x 576, 192 x 576) one after another and 10-15 GB/s on the one 960 x 576
    product (2 threads). Prefill and encoder products make one sweep of the input instead of three.

    Runs after quantisation (`nac.compile.binding.finish_graph`), so each weight is quantised as
    its own layer. float32 weights merge whatever their layouts (the merged one is stored as
    `prefer_io` says for its shape), int8 weights (per output channel: rows and scales
    concatenate) merge when their activation quantisation matches, and ternary weights (one scale
    per tensor) do not merge. Members need the same activation, weights and float32 biases read by
    nothing else, and outputs that are not graph outputs.

    torch.export gives each linear its own reshape of the shared input (``view`` to 2-D), so
    identical view ops of one value are made one first (`_share_views`).

    Returns ``(linears merged away, {new tensor: [the tensors it concatenates, in order]})`` for
    each new weight, bias and int8 scale (the names for `nac.compile.binding.state_dict_keys`).
    """
    _share_views(g)
    users = g.consumers()
    aliased = set(g.param_aliases) | set(g.param_aliases.values())
    groups: dict[tuple, list[Node]] = {}
    for n in g.nodes:
        if n.op != "linear" or not n.inputs[0] or len(n.outputs) != 1 or n.outputs[0] in g.outputs:
            continue
        w = n.inputs[1]
        bias = n.inputs[2] if len(n.inputs) > 2 else ""
        v = g.values.get(w)
        if (w not in g.params or w in aliased or len(users.get(w, [])) != 1 or v is None
                or (bias and (g.const_array(bias) is None or g.const_array(bias).dtype != np.float32
                              or len(users.get(bias, [])) != 1 or bias in aliased))):
            continue
        scheme = v.quant["scheme"] if v.quant else g.params[w].dtype.str
        if scheme not in ("int8", np.dtype(np.float32).str):
            continue
        out_shape = g.values[n.outputs[0]].shape
        attrs = tuple(sorted((k, str(a)) for k, a in n.attrs.items() if k != "weight_layout"))
        key = (n.inputs[0], scheme, attrs, out_shape[:-1])
        groups.setdefault(key, []).append(n)

    merged: dict[str, list[str]] = {}
    replaced: dict[int, Node] = {}
    count = 0
    for (x, scheme, _, lead), members in groups.items():
        if len(members) < 2:
            continue
        names = [m.inputs[1] for m in members]
        widths = [g.values[m.outputs[0]].shape[-1] for m in members]
        if not all(isinstance(d, int) for d in widths):
            continue
        if scheme == "int8":  # quantised weights are [out, in] with per-row scales
            io, weight = False, np.concatenate([g.params[w] for w in names], axis=0)
        else:  # float: join as [in, out], store as `prefer_io` says for the joined shape
            weight = np.concatenate([g.params[w] if m.attrs.get("weight_layout", "oi") == "io" else g.params[w].T
                                     for w, m in zip(names, members)], axis=1)
            io = prefer_io(*weight.shape)
            weight = weight if io else weight.T
        name = g.add_param(_merged_name(names), np.ascontiguousarray(weight))
        merged[name] = names
        if scheme == "int8":
            q = [g.values[w].quant for w in names]
            scale = g.add_param(f"{name}.scale", np.concatenate([g.params[s["scale"]] for s in q]))
            g.values[name].quant = {"scheme": "int8", "scale": scale,
                                    "shape": [int(sum(s["shape"][0] for s in q)), int(q[0]["shape"][1])]}
            merged[scale] = [s["scale"] for s in q]
        biases = [m.inputs[2] if len(m.inputs) > 2 else "" for m in members]
        bias = ""
        present = [b for b in biases if b]
        if present:
            bias = g.add_param(_merged_name(present), np.concatenate(
                [g.const_array(b).reshape(-1) if b else np.zeros(n_, np.float32)
                 for b, n_ in zip(biases, widths)]))
            merged[bias] = present
        first = members[0]
        out = g.add_value(first.outputs[0] + ".merged", g.values[first.outputs[0]].dtype, (*lead, sum(widths)))
        fused = Node("linear", [x, name, bias], [out], {**first.attrs, "weight_layout": "io" if io else "oi"},
                     first.source)
        start = 0
        for m, width in zip(members, widths):
            m.op, m.inputs = "slice", [out]
            m.attrs = {"dim": len(lead), "start": start, "end": start + width, "step": 1}
            start += width
        replaced[id(first)] = fused
        count += len(members) - 1
    if replaced:
        g.nodes = [x for n in g.nodes for x in ((replaced[id(n)], n) if id(n) in replaced else (n,))]
        eliminate_dead_code(g)
    return count, merged


def eliminate_dead_code(g: Graph) -> int:
    """Drop nodes none of whose outputs reach a graph output; drop values and params left unused."""
    live = set(g.outputs)
    kept = []
    for n in reversed(g.nodes):
        if any(o in live for o in n.outputs):
            kept.append(n)
            live.update(i for i in n.inputs if i)
            live.update(n.outputs)  # a kept node writes all its outputs (sort's unused indices too)
    removed = len(g.nodes) - len(kept)
    g.nodes = kept[::-1]
    live.update(g.inputs)
    live |= {g.param_aliases[a] for a in g.param_aliases if a in live}
    live |= {g.values[n].quant["scale"] for n in list(live) if n in g.values and g.values[n].quant}
    for name in list(g.values):
        if name not in live:
            del g.values[name]
            g.params.pop(name, None)
            g.param_aliases.pop(name, None)
    for name in list(g.params):
        if name not in g.values:
            del g.params[name]
    return removed


def deduplicate_parameters(g: Graph) -> int:
    """Store parameters with identical dtype, shape and bytes once (tied embeddings, shared layers)."""
    seen: dict[tuple, str] = {}
    count = 0
    for name in sorted(g.params):
        a = g.params[name]
        key = (a.dtype.str, a.shape, hashlib.sha256(a.tobytes()).hexdigest())
        if key in seen:
            g.param_aliases[name] = seen[key]
            del g.params[name]
            count += 1
        else:
            seen[key] = name
    return count
