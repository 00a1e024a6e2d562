"""Planning: everything that depends only on the input shapes, done once per shape signature.

1. Bind the named dimensions from the input shapes and check them against the exported ranges.
2. Evaluate every value's shape and every node's dimension-valued attributes, and check each
   node's recorded output shapes against shape inference (`nac.format.validate.check_shapes`):
   a kernel's output buffer is always exactly what its inputs produce.
3. Fold what depends only on constants and the bound dimensions (`fold_static`): such nodes
   run once, here, and their outputs become the plan's constants. Decide which view ops are
   real views (simulated on zero-byte strided placeholders, with operations that never read
   data).
4. Estimate the memory the plan needs (arena, inputs, outputs and kernel scratch) and refuse it,
   before allocating anything, if it exceeds the limit (`max_memory`).
5. Liveness: each buffer lives from the node defining it to the last node reading it or any view
   of it (or to the next node, for the inputs of a node a pair binder may fuse with it). Buffers
   are packed into one arena (first-fit over a free list, 64-byte aligned), so the arena is
   usually far smaller than the sum of all intermediates.
6. Pre-bind every kernel to its input/output arrays (`registry.binder`), and consecutive pairs
   into one call where a pair binder fuses them (`registry.pair_binder`); running is then one
   loop over closures.

The result is public data, read by the engine (`Plan.run`) and by the C emitter (`nac.accel.emit`)
alike: `Plan.tensors` says where every value lives (region, owning buffer, byte offset, shape,
byte strides, live range), `Plan.steps` lists each kernel call by op, input and output value names
and resolved attributes, and `Plan.describe` turns both into JSON (`nac info --plan`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from nac.errors import NacInputError, NacRuntimeError
from nac.engine.kernels import BINDERS, KERNELS, PAIR_BINDERS, VIEW_OPS, simd
from nac.engine.kernels.attention import SCORE_BUDGET
from nac.format.graph import Graph, numpy_dtype
from nac.format.ops import DIM_ATTRS  # noqa: F401  (re-exported for the exporter's passes)
from nac.format.ops import operands
from nac.format.symbolic import eval_dim, eval_shape, symbols_of
from nac.format.validate import check_shapes, resolve_attrs  # noqa: F401

ALIGN = 64


def bind_dims(graph: Graph, shapes: dict[str, tuple]) -> dict[str, int]:
    """Bind named dimensions from concrete input shapes.

    Raises:
        NacInputError: wrong rank, a static dimension that differs, a named dimension bound to two
            different sizes, or a size outside the exported range; the message names the input,
            the axis and what was expected.
    """
    env: dict[str, int] = {}
    deferred = []
    for name in graph.inputs:
        decl = graph.values[name].shape
        got = shapes[name]
        if len(got) != len(decl):
            raise NacInputError(f"input {name!r} has rank {len(got)} (shape {list(got)}); the model expects rank "
                                f"{len(decl)} with shape {list(decl)}")
        for axis, (d, n) in enumerate(zip(decl, got)):
            if isinstance(d, int):
                if d != n:
                    raise NacInputError(f"input {name!r} axis {axis} has size {n}; the model was exported with size {d}")
            elif d in graph.dims or d.isidentifier():
                if d in env and env[d] != n:
                    raise NacInputError(f"input {name!r} axis {axis} ({d}) has size {n}, but another input gave "
                                        f"{d} = {env[d]}")
                env[d] = n
            else:
                deferred.append((name, axis, d, n))
    for d, n in env.items():
        _check_range(graph, d, n)
    for name, axis, d, n in deferred:  # derived sizes (32 * h, n + 1): solve for their one dimension
        unknown = symbols_of(d) - env.keys()
        if len(unknown) == 1:
            x = unknown.pop()
            solved = _solve_linear(d, x, n, env)
            if solved is None:
                raise NacInputError(f"input {name!r} axis {axis} has size {n}; the model expects {d} for an "
                                    f"integer {x}")
            _check_range(graph, x, solved)
            env[x] = solved
    for name, axis, d, n in deferred:
        if not symbols_of(d) <= env.keys() or eval_dim(d, env) != n:
            raise NacInputError(f"input {name!r} axis {axis} has size {n}; the model expects {d}"
                                f" = {eval_dim(d, env) if symbols_of(d) <= env.keys() else '?'}")
    return env


def concrete_shapes(graph: Graph, dims: dict[str, int]) -> dict[str, tuple]:
    """Every input's shape with its named dimensions taken from ``dims`` (e.g. the export's
    example sizes, ``metadata["compile"]["example_dims"]``, updated by the user's choices).

    Raises:
        NacError: an input dimension (or a derived size such as ``2 * seq``) names a dimension
            ``dims`` lacks; the message says how to fix it.
    """
    from nac.errors import NacError

    shapes = {}
    for n in graph.inputs:
        shape = []
        for axis, d in enumerate(graph.values[n].shape):
            if isinstance(d, int):
                shape.append(d)
            elif symbols_of(d) <= dims.keys():
                shape.append(int(eval_dim(d, dims)))
            else:
                missing = sorted(symbols_of(d) - dims.keys())[0]
                raise NacError(f"input {n!r} axis {axis} is the symbolic dimension {d!r}: fix it with "
                               f"--shape {missing}=N (shapes={{'{missing}': N}})")
        shapes[n] = tuple(shape)
    return shapes


def _check_range(graph: Graph, d: str, n: int) -> None:
    rng = graph.dims.get(d, {})
    lo, hi = rng.get("min", 0), rng.get("max")
    if n < (lo or 0) or (hi is not None and n > hi):
        raise NacInputError(f"dimension {d} = {n} is outside the range the model was exported for "
                            f"[{lo}, {hi if hi is not None else 'inf'}]")


def _solve_linear(expr: str, x: str, n: int, env: dict) -> int | None:
    """The integer ``x`` with ``expr(x) = n`` when ``expr`` is linear in ``x`` (a * x + b, a != 0),
    else None."""
    f0, f1, f2 = (eval_dim(expr, {**env, x: v}) for v in (0, 1, 2))
    a, b = f1 - f0, f0
    if a == 0 or f2 != 2 * a + b or (n - b) % a:
        return None
    v = (n - b) // a
    return v if eval_dim(expr, {**env, x: v}) == n else None


def _placeholder(shape, dtype, channels_last: bool = False) -> np.ndarray:
    """A zero-byte array with a real shape and C-contiguous strides, or channels-last ones (for
    simulating views)."""
    dt = np.dtype(dtype)
    order = [0, 2, 3, 1] if channels_last else list(range(len(shape)))
    strides, acc = [0] * len(shape), dt.itemsize
    for axis in reversed(order):
        strides[axis] = acc
        acc *= max(int(shape[axis]), 1)
    if acc >= 1 << 62:  # numpy's strides are int64
        raise NacInputError(f"a tensor of shape {list(shape)} is too large to address")
    return np.lib.stride_tricks.as_strided(np.zeros(1, dt), shape, tuple(strides), writeable=False)


#: element-wise ops whose kernels write any strided output (numpy ufuncs with ``out=``, or
#: `elementwise._float_map`): their output may be channels-last when an input of its shape is
_CL_ELEMENTWISE = frozenset({
    "add", "sub", "mul", "div", "maximum", "minimum", "neg", "abs", "exp", "sqrt", "reciprocal", "tanh", "relu",
    "sigmoid", "silu", "hardswish", "hardsigmoid", "gelu", "leaky_relu", "elu", "clamp", "erf", "rsqrt"})
#: ops that read a channels-last input as any strided array (besides the element-wise ones)
_CL_READERS = _CL_ELEMENTWISE | {"conv2d", "sum", "mean", "amax", "amin", "max_pool2d", "avg_pool2d",
                                 "adaptive_avg_pool2d"}


def channels_last_values(graph: Graph, vshape: dict, dtype: dict) -> set[str]:
    """The values a plan stores channels-last: 4-D float32 [N, C, H, W] values kept in NHWC
    memory order (PyTorch's ``torch.channels_last``; shapes and op semantics are unchanged, only
    strides differ). A convolution's output is channels-last, and so is an element-wise op's
    output when an input of the same shape is, unless the value is a graph output or read by an
    op outside `_CL_READERS`. Consecutive convolutions (and their residual adds) then run in
    NHWC without a transpose between them (`nac.engine.kernels.linalg.conv2d`)."""
    readers: dict[str, set[str]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            if i:
                readers.setdefault(i, set()).add(n.op)
    outputs = set(graph.outputs)
    cl: set[str] = set()
    for n in graph.nodes:
        if len(n.outputs) != 1:
            continue
        o = n.outputs[0]
        shape = vshape[o]
        if len(shape) != 4 or dtype[o] != np.float32 or o in outputs or not readers.get(o, set()) <= _CL_READERS:
            continue
        if n.op == "conv2d" or (n.op in _CL_ELEMENTWISE and any(i in cl and vshape[i] == shape for i in n.inputs)):
            cl.add(o)
    return cl


@dataclass(frozen=True)
class Tensor:
    """Where one value of a plan lives: a strided view of one buffer.

    Attributes:
        name: the graph value.
        dtype: its numpy dtype (for a quantised constant: the dtype it stands for, float32).
        shape: its concrete shape, the named dimensions bound.
        strides: numpy byte strides (a view may have zero strides for broadcasts, or strides of
            a transpose/slice); None for a quantised constant (see `Plan.constants`).
        region: ``"arena"`` (activations; `offset` counts from the arena's first byte),
            ``"input"`` (the input buffer named by `buffer`) or ``"constant"`` (the parameter or
            inline constant named by `buffer`; `offset` counts from its first byte).
        buffer: the value whose storage holds it: itself, or the value a view aliases.
        offset: bytes from the start of that storage (see `region`) to element [0, ..., 0].
        live: for an arena buffer that is not a view, the node indices (into the graph's nodes)
            of its definition and of its last reader, inclusive (``len(graph.nodes)`` for a graph
            output, which lives until the caller copies it out); the arena bytes
            ``[offset, offset + nbytes)`` are its own only over that range. None otherwise.
        quant: the quantisation scheme of a quantised constant ("int8", "ternary"), else None.
    """

    name: str
    dtype: np.dtype
    shape: tuple
    strides: tuple | None
    region: str
    buffer: str
    offset: int
    live: tuple | None = None
    quant: str | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of its elements (the storage a contiguous copy would need)."""
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def contiguous(self) -> bool:
        """True when its elements are row-major and adjacent (numpy's C-contiguity)."""
        if self.strides is None or 0 in self.shape:
            return True
        acc = self.dtype.itemsize
        for n, st in zip(reversed(self.shape), reversed(self.strides)):
            if n != 1 and st != acc:
                return False
            acc *= n
        return True

    def to_dict(self) -> dict:
        """JSON-ready form (dtype as its numpy name)."""
        return {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape),
                "strides": None if self.strides is None else list(self.strides), "region": self.region,
                "buffer": self.buffer, "offset": self.offset, "bytes": self.nbytes,
                "live": None if self.live is None else list(self.live), "quant": self.quant}


@dataclass(frozen=True)
class Step:
    """One kernel call of a plan.

    Attributes:
        index: the node's index in the graph.
        op: its op name (`nac.format.ops`).
        source: the module path it came from (for messages), or "".
        inputs: input value names, None for an absent optional input (see `Plan.tensors`).
        outputs: output value names.
        attrs: its attributes with dimension expressions evaluated (what the kernel receives).
        call: the kernel pre-bound to the arrays of those values (or its binder's call,
            `nac.engine.kernels.registry.binder`); ``call()`` runs the step.
        fused_into: None, or the index of the next step, whose call (a pair binder's,
            `nac.engine.kernels.registry.pair_binder`) computes its outputs from this step's
            inputs: this step's own call then does nothing, and its output, which that step
            alone reads, is never written.
    """

    index: int
    op: str
    source: str
    inputs: tuple
    outputs: tuple
    attrs: dict
    call: Callable[[], None]
    fused_into: int | None = None

    def to_dict(self) -> dict:
        """JSON-ready form (without `call`)."""
        d = {"index": self.index, "op": self.op, "source": self.source, "inputs": list(self.inputs),
             "outputs": list(self.outputs), "attrs": _jsonable(self.attrs)}
        if self.fused_into is not None:
            d["fused_into"] = self.fused_into
        return d


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


class Plan:
    """The executable form of a graph for one set of input shapes.

    Attributes:
        env: the bound named dimensions.
        inputs: preallocated input buffers by name (the caller copies user data in).
        outputs: the arrays holding the outputs after `run`, in graph order (copied out by the
            caller).
        output_names: the graph's output value names, in that order.
        constants: parameters, QTensors and inline constants by value name (shared, read-only),
            and the values this plan folded.
        folded: the values computed from constants alone for these shapes, by name (`fold_static`;
            read-only, computed when the plan was made; no step computes them).
        arena: the activation arena (uint8, `arena_bytes` long, at least 1) every intermediate
            buffer is a view of, at its `Tensor.offset`.
        arena_bytes: size of the shared activation arena.
        naive_bytes: the sum of all intermediate buffers (what no reuse would need).
        tensors: every value a step reads or writes, and every input and output, by name: where
            it lives (`Tensor`).
        steps: the kernel calls, in run order (`Step`); view ops are not steps, their outputs are
            `Tensor` views of their input's buffer.
    """

    def __init__(self, graph: Graph, shapes: dict[str, tuple], constants: dict[str, np.ndarray],
                 max_memory: int | None = None, where: str = "graph", channels_last: bool = True):
        """Plan ``graph`` for input ``shapes`` over its ``constants`` (parameters, QTensors, inline
        constants by value name). With ``channels_last`` (default), convolution outputs and what
        is computed element-wise from them are stored NHWC (`channels_last_values`); without it,
        every buffer is C-contiguous (what `nac.accel.emit` compiles).

        Raises:
            NacInputError: the shapes break the exported constraints, or the plan would need more
                than ``max_memory`` bytes (the message says how much it needs).
            NacFormatError: a node's recorded output shape or dtype disagrees with its op.
        """
        self.env = bind_dims(graph, shapes)
        env = self.env
        vshape = {}
        for name, v in graph.values.items():
            vshape[name] = eval_shape(v.shape, env)
            if any(s < 0 for s in vshape[name]):
                raise NacInputError(f"value {name!r} would get negative shape {list(vshape[name])} for inputs "
                                    f"{dict(shapes)}")
        attrs = check_shapes(graph, vshape, env, where)
        dtype = {name: numpy_dtype(v.dtype) for name, v in graph.values.items()}
        self.needed_bytes = _memory_needed(graph, vshape, dtype)
        if max_memory is not None and self.needed_bytes > max_memory:
            raise NacInputError(f"inputs {dict(shapes)} need about {_gib(self.needed_bytes)} for this model's "
                                f"activations, more than the limit of {_gib(max_memory)} (set with nac.load(..., "
                                f"max_memory=...) or NAC_MAX_MEMORY); use smaller inputs")

        cl = channels_last_values(graph, vshape, dtype) if channels_last else set()
        # values computed from the constants alone, for these shapes: computed here, once, and
        # planned as constants (no step; `fold_static`)
        self.folded = fold_static(graph, attrs, vshape, dtype, constants)
        if self.folded:
            constants = {**constants, **self.folded}

        # 3. simulate views on placeholders to learn which view ops alias their input
        fake = dict(constants)
        for name in graph.inputs:
            fake[name] = _placeholder(vshape[name], dtype[name])
        root: dict[str, str] = {}
        is_view = []
        for n, at in zip(graph.nodes, attrs):
            if n.outputs[0] in self.folded:
                is_view.append(None)  # folded: neither a view nor a step
                continue
            view = None
            if n.op in VIEW_OPS:
                view = KERNELS[n.op]([fake[i] if i else None for i in operands(n.op, n.inputs)], None, at)
            if view is not None and view.shape == vshape[n.outputs[0]]:
                fake[n.outputs[0]] = view
                src = n.inputs[0]
                root[n.outputs[0]] = root.get(src, src)
                is_view.append(True)
            else:
                for o in n.outputs:
                    fake[o] = _placeholder(vshape[o], dtype[o], o in cl)
                is_view.append(False)

        # 4. liveness of buffers (roots), then first-fit packing into the arena. A pair of steps
        # that may be fused reads the first one's inputs during the second: they live until then.
        pairs = _pair_candidates(graph, is_view, root)
        end = len(graph.nodes)
        last_use: dict[str, int] = {}
        for k, n in enumerate(graph.nodes):
            for i in n.inputs:
                if i:
                    last_use[root.get(i, i)] = k + 1 if k in pairs else k
        for o in graph.outputs:
            last_use[root.get(o, o)] = end
        offsets: dict[str, int] = {}
        free: list[tuple[int, int]] = []  # (offset, size), sorted by offset
        top = naive = 0
        frees_at: dict[int, list[str]] = {}
        for k, (n, view) in enumerate(zip(graph.nodes, is_view)):
            if view is False:
                for o in n.outputs:
                    size = -(-int(np.prod(vshape[o], dtype=np.int64)) * dtype[o].itemsize // ALIGN) * ALIGN
                    naive += size
                    off, top = _first_fit(free, size, top)
                    offsets[o] = off
                    frees_at.setdefault(max(last_use.get(o, k), k), []).append(o)
            for dead in frees_at.pop(k, []):
                size = -(-int(np.prod(vshape[dead], dtype=np.int64)) * dtype[dead].itemsize // ALIGN) * ALIGN
                _release(free, offsets[dead], size)
        self.arena_bytes, self.naive_bytes = top, naive
        self.arena = simd.aligned_empty(max(top, 1), np.uint8, ALIGN)
        self.constants = constants

        # 5. real arrays and pre-bound steps
        arrays = dict(constants)
        self.inputs = {}
        for name in graph.inputs:
            arrays[name] = self.inputs[name] = simd.aligned_empty(vshape[name], dtype[name], ALIGN)
        self.steps: list[Step] = []
        operands_of: list[tuple] = []  # each step's (ins, outs) arrays, for the pair binders
        for k, (n, at, view) in enumerate(zip(graph.nodes, attrs, is_view)):
            if view is None:
                continue
            names = operands(n.op, n.inputs)  # left-out optional inputs read as absent
            ins = [arrays[i] if i else None for i in names]
            if view:
                arrays[n.outputs[0]] = KERNELS[n.op](ins, None, at)
                continue
            outs = []
            for o in n.outputs:
                if o in cl:  # NHWC memory, NCHW shape
                    nn_, c_, h_, w_ = vshape[o]
                    a = np.ndarray((nn_, h_, w_, c_), dtype[o], buffer=self.arena, offset=offsets[o]).transpose(0, 3, 1, 2)
                else:
                    a = np.ndarray(vshape[o], dtype[o], buffer=self.arena, offset=offsets[o])
                arrays[o] = a
                outs.append(a)
            call = _bound(n, ins, outs, at)
            self.steps.append(Step(k, n.op, n.source, tuple(names), tuple(n.outputs), at,
                                   call or functools.partial(KERNELS[n.op], ins, outs, at)))
            operands_of.append((ins, outs))
        _fuse_pairs(self.steps, operands_of, pairs)
        self.output_names = list(graph.outputs)
        self.outputs = [arrays[o] for o in graph.outputs]
        self._arrays = arrays
        defined = {o: k for k, n in enumerate(graph.nodes) for o in n.outputs}
        self.tensors: dict[str, Tensor] = {}
        used = [*graph.inputs, *(v for s in self.steps for v in (*s.inputs, *s.outputs) if v), *graph.outputs]
        for name in dict.fromkeys(used):
            buf = root.get(name, name)
            live = (defined[name], max(last_use.get(name, 0), defined[name])) if name in offsets else None
            self.tensors[name] = _locate(name, arrays[name], buf, self.arena, self.inputs, constants, live)

    def array(self, name: str):
        """The array bound to value ``name`` (a view into `arena`, an input buffer, or a constant:
        an ndarray, or a `nac.engine.kernels.quant.QTensor`); what the step kernels receive.

        Raises:
            KeyError: ``name`` is not a value of this plan.
        """
        return self._arrays[name]

    def describe(self) -> dict:
        """The plan as JSON-ready data: ``{"dims", "arena_bytes", "naive_bytes", "tensors",
        "steps"}`` (see `Tensor.to_dict`, `Step.to_dict`)."""
        return {"dims": dict(self.env), "arena_bytes": self.arena_bytes, "naive_bytes": self.naive_bytes,
                "tensors": [t.to_dict() for t in self.tensors.values()],
                "steps": [s.to_dict() for s in self.steps]}

    def profile(self, runs: int = 10) -> list[dict]:
        """Time every step over ``runs`` runs (inputs must already be in `inputs`): one row per
        node, ``{"index", "op", "source", "ms"}`` (median milliseconds per run), in plan order.
        For finding where a model's time goes (`bench/profile_ops.py`).

        Raises:
            NacInputError, NacRuntimeError: as `run`.
        """
        import time

        self.run()  # warm up (first-call compilation, page faults)
        times = [[] for _ in self.steps]
        for _ in range(max(1, runs)):
            for k, step in enumerate(self.steps):
                t0 = time.perf_counter()
                step.call()
                times[k].append(time.perf_counter() - t0)
        return [{"index": s.index, "op": s.op, "source": s.source, "ms": 1e3 * sorted(t)[len(t) // 2]}
                for s, t in zip(self.steps, times)]

    def run(self) -> None:
        """Run every step in order (inputs must already be in `inputs`).

        Raises:
            NacInputError: a kernel rejected the data (e.g. a token id outside the vocabulary).
            NacRuntimeError: any other kernel failure, naming the node, its op and source module.
        """
        step = None
        try:
            for step in self.steps:
                step.call()
        except NacInputError:
            raise
        except MemoryError:
            raise NacInputError(f"node {step.index} ({step.op}) ran out of memory; the plan was estimated at "
                                f"{_gib(self.needed_bytes)}; use smaller inputs or lower max_memory") from None
        except Exception as exc:
            raise NacRuntimeError(f"node {step.index} ({step.op}, from {step.source or '?'}) failed: "
                                  f"{type(exc).__name__}: {exc}") from exc


def _bound(n, ins: list, outs: list, at: dict):
    """The call `registry.binder` makes for node ``n``'s step, or None (no binder, or it declined).

    Raises:
        NacInputError: binding ran out of memory (a weight repacked for its kernel).
        NacRuntimeError: any other failure, naming the node, its op and source module."""
    bind = BINDERS.get(n.op)
    if bind is None:
        return None
    try:
        return bind(ins, outs, at)
    except MemoryError:
        raise NacInputError(f"{n.op} ({n.source or '?'}) ran out of memory preparing its kernel") from None
    except Exception as exc:
        raise NacRuntimeError(f"{n.op} (from {n.source or '?'}) could not be prepared: "
                              f"{type(exc).__name__}: {exc}") from exc


def _pair_candidates(graph: Graph, is_view: list, root: dict) -> set[int]:
    """The graph indices k of the nodes that a pair binder (`registry.pair_binder`) may fuse
    with node k + 1: both steps (not views, not folded), of a registered pair of ops, the second
    reading the first's only output as its first input, and nothing else reading that value: no
    other node, no view of it, not a graph output. The plan keeps the inputs of node k alive
    through node k + 1, since a fused call reads them there."""
    if not PAIR_BINDERS:
        return set()
    readers: dict[str, int] = {}
    for n in graph.nodes:
        for i in n.inputs:
            if i:
                readers[i] = readers.get(i, 0) + 1
    viewed, outputs = set(root.values()), set(graph.outputs)
    found = set()
    for k in range(len(graph.nodes) - 1):
        a, b = graph.nodes[k], graph.nodes[k + 1]
        if is_view[k] is not False or is_view[k + 1] is not False or (a.op, b.op) not in PAIR_BINDERS:
            continue
        v = a.outputs[0] if len(a.outputs) == 1 else None
        if v is not None and b.inputs and b.inputs[0] == v and readers.get(v) == 1 and v not in viewed \
                and v not in outputs:
            found.add(k)
    return found


def _fuse_pairs(steps: list, operands_of: list, pairs: set[int]) -> None:
    """In place over a plan's ``steps``: each pair `_pair_candidates` found that its pair binder
    fuses gets the binder's call on the second step and a call that does nothing on the first
    (`Step.fused_into`).

    Raises: as `_bound`."""
    seconds = set()  # steps that already compute a fused pair: never fused again as a first
    for k in range(len(steps) - 1):
        a, b = steps[k], steps[k + 1]
        if a.index not in pairs or b.index != a.index + 1 or a.fused_into is not None or k in seconds:
            continue
        (ins, outs), (ins2, outs2) = operands_of[k], operands_of[k + 1]
        try:
            call = PAIR_BINDERS[(a.op, b.op)](ins, outs, a.attrs, ins2, outs2, b.attrs)
        except MemoryError:
            raise NacInputError(f"{a.op} + {b.op} ({b.source or '?'}) ran out of memory preparing its kernel") from None
        except Exception as exc:
            raise NacRuntimeError(f"{a.op} + {b.op} (from {b.source or '?'}) could not be prepared: "
                                  f"{type(exc).__name__}: {exc}") from exc
        if call is not None:
            steps[k] = dataclasses.replace(a, call=_nothing, fused_into=b.index)
            steps[k + 1] = dataclasses.replace(b, call=call)
            seconds.add(k + 1)


def _nothing() -> None:
    """The call of a step fused into the next (`Step.fused_into`)."""


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def fold_static(graph: Graph, attrs: list, vshape: dict, dtype: dict, constants: dict) -> dict[str, np.ndarray]:
    """Run, once, the nodes whose every input is a constant or another such node's output: the
    work a graph does on its buffers and on the bound dimensions alone (BERT's token-type ids
    and position embeddings, an ``arange`` and the masks built from it). Returns their
    outputs by value name, read-only, each its own C-contiguous array (a plan treats them as
    constants: no step, no arena bytes). A view op's output is left to the plan when it is a
    real view of its input (it aliases a constant), and computed here when it is not.

    attrs: each node's resolved attributes (`check_shapes`); vshape, dtype: every value's
    concrete shape and numpy dtype.

    Raises:
        NacInputError: a kernel rejected the constants (an index out of range), or ran out of memory.
        NacRuntimeError: any other kernel failure, naming the node, its op and source module.
    """
    known: dict = {}  # constants and everything computed from them, views included
    folded: dict[str, np.ndarray] = {}
    for k, (n, at) in enumerate(zip(graph.nodes, attrs)):
        names = operands(n.op, n.inputs)
        if not all(not i or i in constants or i in known for i in names):
            continue
        ins = [None if not i else known[i] if i in known else constants[i] for i in names]
        try:
            if n.op in VIEW_OPS:
                view = KERNELS[n.op](ins, None, at)
                if view is not None and view.shape == vshape[n.outputs[0]]:
                    known[n.outputs[0]] = view
                    continue
            outs = [simd.aligned_empty(vshape[o], dtype[o], ALIGN) for o in n.outputs]
            KERNELS[n.op](ins, outs, at)
        except NacInputError:
            raise
        except MemoryError:
            raise NacInputError(f"node {k} ({n.op}) ran out of memory while it was folded") from None
        except Exception as exc:
            raise NacRuntimeError(f"node {k} ({n.op}, from {n.source or '?'}) failed on constants: "
                                  f"{type(exc).__name__}: {exc}") from exc
        for o, a in zip(n.outputs, outs):
            a.flags.writeable = False
            known[o] = folded[o] = a
    return folded


def _locate(name: str, a, buf: str, arena: np.ndarray, inputs: dict, constants: dict, live) -> Tensor:
    """The `Tensor` of value ``name``, bound to array ``a`` inside the storage of ``buf``."""
    if not isinstance(a, np.ndarray):  # a QTensor: the scheme's own arrays, in `constants`
        return Tensor(name, np.dtype(np.float32), tuple(a.shape), None, "constant", buf, 0, quant=a.scheme)
    if buf in inputs:
        region, start = "input", _address(inputs[buf])
    elif buf in constants:
        region, start = "constant", _address(constants[buf])
    else:
        region, start = "arena", _address(arena)
    return Tensor(name, a.dtype, tuple(int(d) for d in a.shape), tuple(int(s) for s in a.strides), region, buf,
                  _address(a) - start, live)


def _nbytes(shape, dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def _memory_needed(graph: Graph, vshape: dict, dtype: dict) -> int:
    """An upper bound of the bytes a plan allocates and its kernels use at once: every
    intermediate buffer (as if none were reused), the inputs, the caller's copies of the
    outputs, and the largest kernel scratch (a block of attention scores and q/k/v float32
    copies; a copy of the inputs and outputs for any other kernel)."""
    total = sum(_nbytes(vshape[o], dtype[o]) for n in graph.nodes for o in n.outputs)
    total += sum(_nbytes(vshape[i], dtype[i]) for i in graph.inputs)
    total += sum(_nbytes(vshape[o], dtype[o]) for o in graph.outputs)
    scratch = 0
    for n in graph.nodes:
        if n.op in VIEW_OPS:
            continue
        io = sum(_nbytes(vshape[i], dtype[i]) for i in n.inputs if i and i not in graph.params) + \
            sum(_nbytes(vshape[o], dtype[o]) for o in n.outputs)
        if n.op == "scaled_dot_product_attention":  # one block of scores, and q/k/v float32 copies
            q, k = vshape[n.inputs[0]], vshape[n.inputs[1]]
            io += 4 * min(math.prod(q[:-1]) * k[-2], SCORE_BUDGET) + 4 * math.prod(q) * 3
        scratch = max(scratch, io)
    return total + scratch


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 26 else f"{n / (1 << 20):.1f} MiB"


def _first_fit(free: list, size: int, top: int) -> tuple[int, int]:
    for k, (off, sz) in enumerate(free):
        if sz >= size:
            if sz == size:
                free.pop(k)
            else:
                free[k] = (off + size, sz - size)
            return off, top
    if free and free[-1][0] + free[-1][1] == top:  # grow the last free block at the top
        off, _ = free.pop()
        return off, off + size
    return top, top + size


def _release(free: list, off: int, size: int) -> None:
    import bisect

    k = bisect.bisect(free, (off, size))
    free.insert(k, (off, size))
    # coalesce with neighbours
    if k + 1 < len(free) and free[k][0] + free[k][1] == free[k + 1][0]:
        free[k] = (free[k][0], free[k][1] + free[k + 1][1])
        free.pop(k + 1)
    if k > 0 and free[k - 1][0] + free[k - 1][1] == free[k][0]:
        free[k - 1] = (free[k - 1][0], free[k - 1][1] + free[k][1])
        free.pop(k)
