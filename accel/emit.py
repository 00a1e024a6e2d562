"""`nac emit`: a `.nac` graph -> a self-contained C project for bare-metal RISC-V (QEMU `virt`,
picolibc semihosting) or the host, with a static memory plan, the weights in a read-only blob,
and a Makefile whose `run` target builds it, feeds it ``input.bin`` and writes ``output.bin``.

The memory plan is the engine's, read through its public data (``nac.engine.plan.Plan``: the
arena, input buffers and constants, and each step's op, value names and resolved attributes): the
same liveness-packed arena, the same view aliasing. Each step becomes one call into ``runtime/nac_kernels.c`` (portable C99,
copied into the project) with every shape and stride as a literal. A strided view read by a kernel
that needs contiguous data is first copied into a scratch area, also static.
"""
from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nac.errors import NacError
from nac.format.ops import VIEW_OPS

RUNTIME = Path(__file__).parent / "runtime"
TARGETS = ("host", "riscv32", "riscv64")
ALIGN = 64

_CTYPE = {np.dtype(np.float32): ("float", "NAC_F32"), np.dtype(np.int64): ("int64_t", "NAC_I64"),
          np.dtype(np.int32): ("int32_t", "NAC_I32"), np.dtype(np.int8): ("int8_t", "NAC_I8"),
          np.dtype(np.uint8): ("uint8_t", "NAC_U8"), np.dtype(np.bool_): ("uint8_t", "NAC_BOOL")}
_UNARY = {"relu": "NAC_RELU", "sigmoid": "NAC_SIGMOID", "tanh": "NAC_TANH", "silu": "NAC_SILU",
          "hardswish": "NAC_HARDSWISH", "hardsigmoid": "NAC_HARDSIGMOID", "leaky_relu": "NAC_LEAKY_RELU",
          "elu": "NAC_ELU", "clamp": "NAC_CLAMP", "exp": "NAC_EXP", "log": "NAC_LOG", "sqrt": "NAC_SQRT",
          "rsqrt": "NAC_RSQRT", "neg": "NAC_NEG", "abs": "NAC_ABS", "erf": "NAC_ERF", "reciprocal": "NAC_RECIPROCAL",
          "cos": "NAC_COS", "sin": "NAC_SIN", "floor": "NAC_FLOOR", "ceil": "NAC_CEIL", "round": "NAC_ROUND", "sign": "NAC_SIGN",
          "gelu": "NAC_GELU"}
_ACT = {"none": "NAC_IDENTITY", "relu": "NAC_RELU", "relu6": "NAC_RELU6", "gelu": "NAC_GELU",
        "gelu_tanh": "NAC_GELU_TANH", "silu": "NAC_SILU", "sigmoid": "NAC_SIGMOID", "tanh": "NAC_TANH",
        "hardswish": "NAC_HARDSWISH"}
_BINARY = {"add": "NAC_ADD", "sub": "NAC_SUB", "mul": "NAC_MUL", "div": "NAC_DIV", "maximum": "NAC_MAXIMUM",
           "minimum": "NAC_MINIMUM", "pow": "NAC_POW", "remainder": "NAC_REMAINDER", "eq": "NAC_EQ", "ne": "NAC_NE",
           "lt": "NAC_LT", "le": "NAC_LE", "gt": "NAC_GT", "ge": "NAC_GE", "logical_and": "NAC_AND",
           "logical_or": "NAC_OR", "bitwise_and": "NAC_AND", "bitwise_or": "NAC_OR"}
_REDUCE = {"sum": "NAC_SUM", "mean": "NAC_MEAN", "prod": "NAC_PROD", "amax": "NAC_AMAX", "amin": "NAC_AMIN",
           "any": "NAC_ANY", "all": "NAC_ALL"}
_VIEWS = tuple(sorted(VIEW_OPS | {"copy"}))  # the C program aliases these (copy too: its output is never written)
#: ops with a C kernel (the rest of the op table is refused by name at emit time)
SUPPORTED = frozenset(_UNARY) | frozenset(_BINARY) | frozenset(_REDUCE) | frozenset(_VIEWS) | {
    "logical_not", "where", "cast", "cat", "pad", "repeat", "full", "arange", "linear", "matmul", "conv2d",
    "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "batch_norm", "layer_norm", "rms_norm", "softmax",
    "log_softmax", "argmax", "argmin", "cumsum", "embedding", "index_select", "gather", "index", "var",
    "scaled_dot_product_attention", "rotary_embedding", "sort", "topk", "upsample2d"}


@dataclass
class EmitReport:
    """What `emit` wrote: the project folder, target, sizes (bytes) and the pass report."""

    folder: Path
    name: str
    target: str
    dims: dict
    arena_bytes: int
    naive_bytes: int
    scratch_bytes: int
    weight_bytes: int
    steps: int
    offload: str = "none"
    offloaded: int = 0                            # steps routed to the ACALSim device
    rvv: bool = False                             # riscv64 kernels built for the vector extension
    inputs: list = field(default_factory=list)   # [(name, numpy dtype, shape)] in graph order
    outputs: list = field(default_factory=list)
    ops: dict = field(default_factory=dict)
    passes: dict = field(default_factory=dict)


def emit(model, out_dir, target: str = "host", shapes: dict | None = None, offload: str = "none",
         name: str | None = None, register_map="scalar", rvv: bool = False) -> EmitReport:
    """Write a C project computing ``model`` (a `.nac` path or a loaded `nac.Model`) into ``out_dir``.

    Args:
        target: ``host`` (gcc, native), ``riscv32`` (rv32imafc/ilp32f) or ``riscv64``
            (rv64imafc/lp64f), the latter two for ``qemu-system-riscv* -M virt -bios none``.
        shapes: sizes for the named dimensions (``{"batch": 1, "seq": 16}``); missing ones come
            from the export's example inputs (``metadata.compile.example_dims``).
        offload: ``none`` (everything on the CPU) or ``acalsim``: ``linear``, ``matmul`` and
            ``conv2d`` go to the ACALSim compute device over MMIO (``accel/ACALSIM.md``).
        register_map: with ``acalsim``, the device's register layout: ``scalar``, ``command``,
            a JSON file or a dict (`nac.accel.acalsim.register_map`).
        name: C identifier prefix and file stem (default: the file's stem).
        rvv: with ``riscv64``, build the kernels for the RISC-V vector extension 1.0 (clang,
            ``-march=rv64imafcv``; the tiled kernels of the host's fast build, vectorised for
            VLEN >= 128) and run QEMU with ``-cpu rv64,v=true,vlen=128``; the rest of the program
            stays GCC's. ``make RVV=0`` builds the plain loops again.
    Returns:
        An `EmitReport` (arena, naive activation sum, scratch and weight bytes).
    Raises:
        NacError: unknown target/offload, a dimension left symbolic, an op without a C kernel
            (all listed), quantised weights. The folder is written whole or not at all.
    """
    import nac
    from nac.engine.plan import concrete_shapes

    if target not in TARGETS:
        raise NacError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if offload not in ("none", "acalsim"):
        raise NacError(f"unknown offload {offload!r}; choose none or acalsim")
    if rvv and target != "riscv64":
        raise NacError(f"--rvv builds for riscv64 (the vector extension needs RV64 here), not {target}")
    regmap = None
    if offload == "acalsim":
        from nac.accel.acalsim import register_map as _register_map
        regmap = _register_map(register_map)
    m = model if isinstance(model, nac.Model) else nac.load(model)
    g = m.graph
    name = _identifier(name or m.path.stem)
    missing = sorted({n.op for n in g.nodes} - SUPPORTED)
    if missing:
        where = {op: next(n.source or "?" for n in g.nodes if n.op == op) for op in missing}
        raise NacError("the C kernels lack op(s) " + ", ".join(f"{op} (first at {where[op]})" for op in missing))
    dims = dict(m.metadata.get("compile", {}).get("example_dims", {}))
    dims.update(shapes or {})
    input_shapes = concrete_shapes(g, dims)
    plan = m.plan(input_shapes, channels_last=False)  # the C kernels write contiguous outputs
    gen = _Generator(name, plan, m, input_shapes, regmap, target, rvv)
    gen.run()
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        gen.write(tmp, target, rvv)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    ops: dict[str, int] = {}
    for s in plan.steps:
        ops[s.op] = ops.get(s.op, 0) + 1
    return EmitReport(out, name, target, plan.env, plan.arena_bytes, plan.naive_bytes, gen.scratch_top,
                      len(gen.blob), len(plan.steps), offload, gen.offloaded, rvv,
                      [(n, plan.inputs[n].dtype, plan.inputs[n].shape) for n in g.inputs],
                      [(n, a.dtype, a.shape) for n, a in zip(g.outputs, plan.outputs)],
                      ops, m.metadata.get("compile", {}).get("passes", {}))


def _identifier(s: str) -> str:
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in s)
    return out if out and not out[0].isdigit() else "m_" + out


def _ints(xs) -> str:
    return "(const int64_t[]){" + ", ".join(str(int(x)) for x in xs) + "}" if len(xs) else "(const int64_t[]){0}"


def _flt(x: float) -> str:
    if math.isinf(x):
        return "INFINITY" if x > 0 else "-INFINITY"
    if math.isnan(x):
        return "NAN"
    return repr(float(np.float32(x))) + "f"


class _Generator:
    def __init__(self, name: str, plan, model, input_shapes, regmap=None, target: str = "riscv32", rvv: bool = False):
        self.name, self.plan, self.model, self.target = name, plan, model, target
        self.fast = target == "host" or rvv  # builds whose kernels take the im2col scratch
        self.regmap = regmap
        self.offloaded = 0
        self.graph = model.graph
        self.input_shapes = input_shapes
        self.blob = bytearray()
        self.weight_off: dict[int, int] = {}   # id(base constant) -> blob offset
        self.lines: list[str] = []
        self.scratch_top = 0
        self.step_scratch = 0
        arena = plan.arena
        self.regions = [(arena.__array_interface__["data"][0], arena.nbytes, "nac_arena")]
        self.input_off = {}
        top = 0
        for n in self.graph.inputs:
            a = plan.inputs[n]
            self.input_off[n] = top
            self.regions.append((a.__array_interface__["data"][0], a.nbytes, f"(nac_inputs + {top})"))
            top += -(-a.nbytes // ALIGN) * ALIGN
        self.input_bytes = max(top, ALIGN)
        from nac.engine.kernels.quant import QTensor

        self.constants = [c for c in plan.constants.values() if isinstance(c, np.ndarray)]
        self.constants += [c.data for c in plan.constants.values() if isinstance(c, QTensor)]

    # -- addressing ---------------------------------------------------------------------------------
    def base(self, a: np.ndarray) -> str:
        """A C expression (``uint8_t *``) for the first byte of ``a``."""
        ptr = a.__array_interface__["data"][0]
        for start, size, expr in self.regions:
            if start <= ptr < start + max(size, 1):
                return f"({expr} + {ptr - start})"
        for c in self.constants:
            lo, hi = _byte_bounds(c)
            if lo <= ptr < max(hi, lo + 1):
                if not c.flags.c_contiguous:
                    raise NacError("internal: a non-contiguous constant cannot be placed in the weight blob")
                if id(c) not in self.weight_off:
                    self.regions.append((c.__array_interface__["data"][0], c.nbytes,
                                         f"(nac_w + {self.placed(id(c), c)})"))
                return f"(nac_w + {self.weight_off[id(c)] + ptr - lo})"
        raise NacError("internal: an array of the plan belongs to no known buffer")

    def transposed_constant(self, a: np.ndarray) -> str | None:
        """Pointer to a 2-D constant's transpose, written into the weight blob once (a linear
        layer's [n, k] weight as the [k, n] row-major operand of the tiled product), or None when
        ``a`` is not one of the plan's constants."""
        if a.ndim != 2 or not any(a is c for c in self.plan.constants.values()):
            return None
        return f"(const float *)(nac_w + {self.placed((id(a), 'T'), a.T)})"

    def placed(self, key, a: np.ndarray) -> int:
        """The weight blob offset of ``a``'s bytes (row-major), appended 64-byte aligned the first
        time ``key`` is seen."""
        if key not in self.weight_off:
            self.blob += b"\0" * ((-len(self.blob)) % ALIGN)
            self.weight_off[key] = len(self.blob)
            self.blob += np.ascontiguousarray(a).tobytes()
        return self.weight_off[key]

    def ptr(self, a: np.ndarray, const: bool = True) -> str:
        ctype = _CTYPE[a.dtype][0]
        return f"({'const ' if const else ''}{ctype} *){self.base(a)}"

    def strides(self, a: np.ndarray) -> list[int]:
        return [s // a.itemsize if n > 1 else 0 for s, n in zip(a.strides, a.shape)]

    def contiguous(self, a: np.ndarray | None) -> str:
        """Pointer to ``a`` as a contiguous array: itself, or a scratch copy made now."""
        if a is None:
            return "NULL"
        if a.flags.c_contiguous or a.size <= 1:
            return self.ptr(a)
        off = self.step_scratch
        self.step_scratch += -(-a.nbytes // ALIGN) * ALIGN
        self.scratch_top = max(self.scratch_top, self.step_scratch)
        dst = f"(nac_scratch + {off})"
        self.emit(f"nac_copy({a.itemsize}, {a.ndim}, {_ints(a.shape)}, {self.base(a)}, {_ints(self.strides(a))}, "
                  f"{dst}, {_ints(_c_strides(a.shape))});")
        return f"(const {_CTYPE[a.dtype][0]} *){dst}"

    def scratch(self, nbytes: int) -> str:
        off = self.step_scratch
        self.step_scratch += -(-nbytes // ALIGN) * ALIGN
        self.scratch_top = max(self.scratch_top, self.step_scratch)
        return f"(nac_scratch + {off})"

    def emit(self, line: str) -> None:
        self.lines.append("    " + line)

    # -- steps --------------------------------------------------------------------------------------
    def run(self) -> None:
        arrays = self.plan.array
        for k, step in enumerate(self.plan.steps, 1):
            ins = [arrays(v) if v else None for v in step.inputs]
            outs, at = [arrays(v) for v in step.outputs], step.attrs
            self.step_scratch = 0
            self.lines.append(f"    /* {k}: {step.op} ({step.source or '-'}) */")
            self.emit(f"nac_current_step = {k};")
            special = getattr(self, f"op_{step.op}", None)
            if special is not None:
                special(ins, outs[0], at, outs)
            elif step.op in _UNARY:
                self.unary(step.op, ins[0], outs[0], at)
            elif step.op in _BINARY:
                self.binary(step.op, ins[0], ins[1], outs[0])
            elif step.op in _REDUCE:
                self.reduce(step.op, ins[0], outs[0], at)
            else:
                self.view(step.op, ins, outs[0], at)
            self.emit("if (nac_error) return nac_error;")

    def unary(self, op, x, out, at):
        n = x.size
        if x.dtype == np.float32:
            p0 = p1 = 0.0
            code = _UNARY[op]
            if op == "leaky_relu":
                p0 = at.get("negative_slope", 0.01)
            elif op == "elu":
                p0 = at.get("alpha", 1.0)
            elif op == "clamp":
                p0 = -math.inf if at.get("min") is None else at["min"]
                p1 = math.inf if at.get("max") is None else at["max"]
            elif op == "gelu" and at.get("approximate") == "tanh":
                code = "NAC_GELU_TANH"
            self.emit(f"nac_unary_f32({code}, {n}, {self.contiguous(x)}, {self.ptr(out, False)}, {_flt(p0)}, {_flt(p1)});")
        elif x.dtype == np.int64 and op == "clamp":  # integer bounds as the engine: ceil(min), floor(max)
            lo, hi = at.get("min"), at.get("max")
            self.emit(f"nac_clamp_i64({n}, {self.contiguous(x)}, (int64_t *){self.base(out)}, {int(lo is not None)}, "
                      f"{0 if lo is None else int(math.ceil(lo))}, {int(hi is not None)}, "
                      f"{0 if hi is None else int(math.floor(hi))});")
        elif x.dtype == np.int64 and op in ("neg", "abs", "sign"):
            self.emit(f"nac_unary_i64({_UNARY[op]}, {n}, {self.contiguous(x)}, {self.ptr(out, False)});")
        else:
            raise NacError(f"the C kernels lack {op} on {x.dtype}")

    def binary(self, op, a, b, out):
        sa = self.strides(np.broadcast_to(a, out.shape)) if a.shape != out.shape else self.strides(a)
        sb = self.strides(np.broadcast_to(b, out.shape)) if b.shape != out.shape else self.strides(b)
        if a.dtype != b.dtype:
            raise NacError(f"{op} on {a.dtype} and {b.dtype}: the C kernels need one dtype")
        kind = {np.dtype(np.float32): "f32", np.dtype(np.int64): "i64", np.dtype(np.bool_): "u8",
                np.dtype(np.uint8): "u8"}.get(a.dtype)
        if kind is None:
            raise NacError(f"the C kernels lack {op} on {a.dtype}")
        cast = "(uint8_t *)" if kind == "u8" else ""
        self.emit(f"nac_binary_{kind}({_BINARY[op]}, {max(out.ndim, 1)}, {_ints(out.shape or [1])}, {self.ptr(a)}, "
                  f"{_ints(sa or [0])}, {self.ptr(b)}, {_ints(sb or [0])}, {cast}{self.base(out)});")

    def reduce(self, op, x, out, at):
        dims = [d % x.ndim for d in (at.get("dims") or range(x.ndim))] if x.ndim else []
        mask = [1 if d in dims else 0 for d in range(x.ndim)]
        if x.ndim == 0:
            self.emit(f"nac_copy({x.itemsize}, 0, NULL, {self.base(x)}, NULL, {self.base(out)}, NULL);")
            return
        kind = "f32" if x.dtype == np.float32 else "u8" if x.dtype in (np.bool_, np.uint8) and op in ("any", "all") else None
        if kind is None:
            raise NacError(f"the C kernels lack {op} on {x.dtype}")
        self.emit(f"nac_reduce_{kind}({_REDUCE[op]}, {x.ndim}, {_ints(x.shape)}, (const uint8_t[]){{{', '.join(map(str, mask))}}}, "
                  f"{self.contiguous(x)}, {self.ptr(out, False)});")

    def view(self, op, ins, out, at):
        from nac.engine.kernels import KERNELS

        src = ins[0]
        v = src if op == "copy" else KERNELS[op]([src], None, at)
        if v is None and op == "reshape":
            # a reshape of a strided view: copy it out in row-major order (the reshape's order)
            self.emit(f"nac_copy({src.itemsize}, {src.ndim}, {_ints(src.shape or [1])}, {self.base(src)}, "
                      f"{_ints(self.strides(src) or [0])}, {self.base(out)}, {_ints(_c_strides(src.shape) or [0])});")
            return
        if v is None:
            raise NacError(f"internal: {op} gave no view")
        self.emit(f"nac_copy({v.itemsize}, {v.ndim}, {_ints(v.shape or [1])}, {self.base(v)}, {_ints(self.strides(v) or [0])}, "
                  f"{self.base(out)}, {_ints(_c_strides(v.shape) or [0])});")

    def op_var(self, ins, out, at, outs):
        x = ins[0]
        if x.dtype != np.float32:
            raise NacError(f"the C kernels lack var on {x.dtype}")
        dims = [d % x.ndim for d in (at.get("dims") or range(x.ndim))]
        mask = ", ".join("1" if d in dims else "0" for d in range(x.ndim))
        mean = self.scratch(4 * out.size)
        self.emit(f"nac_var_f32({x.ndim}, {_ints(x.shape)}, (const uint8_t[]){{{mask}}}, {float(at.get('correction', 1.0))!r}, "
                  f"{self.contiguous(x)}, (float *){mean}, {self.ptr(out, False)});")

    def op_logical_not(self, ins, out, at, outs):
        self.emit(f"nac_not_u8({out.size}, {self.contiguous(ins[0])}, {self.ptr(out, False)});")

    def op_where(self, ins, out, at, outs):
        c, a, b = (np.broadcast_to(t, out.shape) for t in ins)
        self.emit(f"nac_where({out.itemsize}, {out.ndim}, {_ints(out.shape or [1])}, {self.ptr(ins[0])}, {_ints(self.strides(c) or [0])}, "
                  f"{self.base(ins[1])}, {_ints(self.strides(a) or [0])}, {self.base(ins[2])}, {_ints(self.strides(b) or [0])}, "
                  f"{self.base(out)});")

    def op_cast(self, ins, out, at, outs):
        self.emit(f"nac_cast({_CTYPE[ins[0].dtype][1]}, {_CTYPE[out.dtype][1]}, {out.size}, {self.contiguous(ins[0])}, {self.base(out)});")

    def op_cat(self, ins, out, at, outs):
        dim = at["dim"] % out.ndim
        off = 0
        for x in ins:
            if x is None or x.size == 0:
                off += 0 if x is None else x.shape[dim]
                continue
            dst = out[(slice(None),) * dim + (slice(off, off + x.shape[dim]),)]
            self.emit(f"nac_copy({x.itemsize}, {x.ndim}, {_ints(x.shape)}, {self.base(x)}, {_ints(self.strides(x))}, "
                      f"{self.base(dst)}, {_ints(self.strides(dst))});")
            off += x.shape[dim]

    def op_pad(self, ins, out, at, outs):
        x = ins[0]
        pads = at["pads"]
        value = np.array(at.get("value", 0.0), out.dtype).tobytes()
        self.emit(f"nac_fill({out.itemsize}, {out.size}, (const uint8_t[]){{{', '.join(map(str, value))}}}, {self.base(out)});")
        src, dst = [slice(None)] * x.ndim, [slice(None)] * x.ndim
        for i in range(len(pads) // 2):
            d = x.ndim - 1 - i
            lo, hi = pads[2 * i], pads[2 * i + 1]
            src[d] = slice(max(-lo, 0), x.shape[d] - max(-hi, 0))
            dst[d] = slice(max(lo, 0), out.shape[d] - max(hi, 0))
        s, t = x[tuple(src)], out[tuple(dst)]
        if s.size:
            self.emit(f"nac_copy({x.itemsize}, {x.ndim}, {_ints(s.shape)}, {self.base(s)}, {_ints(self.strides(s))}, "
                      f"{self.base(t)}, {_ints(self.strides(t))});")

    def op_repeat(self, ins, out, at, outs):
        x = ins[0]
        reps = list(at["repeats"])
        xs = [1] * (len(reps) - x.ndim) + list(x.shape)
        st = [0] * (len(reps) - x.ndim) + self.strides(x)
        shape, sstr = [], []
        for r, n, s in zip(reps, xs, st):
            shape += [r, n]
            sstr += [0, s]
        self.emit(f"nac_copy({x.itemsize}, {len(shape)}, {_ints(shape)}, {self.base(x)}, {_ints(sstr)}, {self.base(out)}, "
                  f"{_ints(_c_strides(shape))});")

    def op_full(self, ins, out, at, outs):
        value = np.array(at["value"], out.dtype).tobytes()
        self.emit(f"nac_fill({out.itemsize}, {out.size}, (const uint8_t[]){{{', '.join(map(str, value))}}}, {self.base(out)});")

    def op_arange(self, ins, out, at, outs):
        if out.dtype == np.float32:
            self.emit(f"nac_arange_f32({out.size}, {float(at['start'])!r}, {float(at['step'])!r}, {self.ptr(out, False)});")
        else:
            self.emit(f"nac_arange_i64({out.size}, {int(at['start'])}, {int(at['step'])}, (int64_t *){self.base(out)});")

    def op_linear(self, ins, out, at, outs):
        from nac.engine.kernels.quant import QTensor

        x, w, b = (ins + [None])[:3]
        if isinstance(w, QTensor):
            n, k = w.shape
            a8 = at.get("activation_quant", "none") == "int8"
            xq = self.scratch(x.size) if a8 else "NULL"
            self.emit(f"nac_linear_q({int(w.scheme == 'ternary')}, {int(a8)}, {x.size // k}, {k}, {n}, {self.contiguous(x)}, "
                      f"{self.base(w.data)}, {self.ptr(w.scale)}, {int(w.per_row)}, {self.contiguous(b)}, "
                      f"{_ACT[at.get('activation', 'none')]}, 0.0f, 0.0f, (int8_t *){xq}, {self.ptr(out, False)});")
            return
        io = at.get("weight_layout", "oi") == "io"
        k = x.shape[-1]
        n = w.shape[1] if io else w.shape[0]
        fn = "nac_acalsim_linear" if self.regmap else "nac_linear"
        self.offloaded += bool(self.regmap)
        packed = None if io else self.transposed_constant(w)
        wptr = packed or self.contiguous(w)
        io = io or packed is not None
        self.emit(f"{fn}({x.size // k}, {k}, {n}, {self.contiguous(x)}, {wptr}, {int(io)}, "
                  f"{self.contiguous(b)}, {_ACT[at.get('activation', 'none')]}, 0.0f, 0.0f, {self.ptr(out, False)});")

    def op_matmul(self, ins, out, at, outs):
        a, b = ins
        if a.ndim < 2 or b.ndim < 2:
            raise NacError("matmul with a 1-D operand is not supported by the C emitter")
        m_, k_, n_ = a.shape[-2], a.shape[-1], b.shape[-1]
        batch = out.shape[:-2]
        pa, pb = self.contiguous(a), self.contiguous(b)
        ia = np.broadcast_to(np.arange(int(np.prod(a.shape[:-2]))).reshape(a.shape[:-2]), batch).reshape(-1) * m_ * k_
        ib = np.broadcast_to(np.arange(int(np.prod(b.shape[:-2]))).reshape(b.shape[:-2]), batch).reshape(-1) * k_ * n_
        fn = "nac_acalsim_matmul" if self.regmap else "nac_matmul"
        self.offloaded += bool(self.regmap)
        self.emit(f"{fn}({ia.size}, {_ints(ia)}, {_ints(ib)}, {m_}, {k_}, {n_}, {pa}, {pb}, {self.ptr(out, False)});")

    def op_conv2d(self, ins, out, at, outs):
        x, w, b, res = (ins + [None, None])[:4]
        n, c, h, wd = x.shape
        cout, _, kh, kw = w.shape
        pt, _, pl, _ = at["padding"]
        act = at.get("activation", "none")
        args = (f"{n}, {c}, {h}, {wd}, {self.contiguous(x)}, {cout}, {kh}, {kw}, {self.contiguous(w)}, "
                f"{self.contiguous(b)}, {at['stride'][0]}, {at['stride'][1]}, {pt}, {pl}, {at['dilation'][0]}, "
                f"{at['dilation'][1]}, {at['groups']}, {out.shape[2]}, {out.shape[3]}, "
                f"{_ACT['none' if res is not None else act]}, 0.0f, 0.0f")
        self._conv2d_call(args, x, w, out, at)
        if res is not None:  # the skip connection, then the activation: act(conv + bias + residual)
            self.binary("add", out, res, out)
            if act != "none":
                self.emit(f"nac_unary_f32({_ACT[act]}, {out.size}, {self.ptr(out)}, {self.ptr(out, False)}, 0.0f, 0.0f);")

    def _conv2d_call(self, args, x, w, out, at):
        c = x.shape[1]
        cout, _, kh, kw = w.shape
        if self.regmap:  # im2col into scratch, then the device's product
            self.offloaded += 1
            col = self.scratch(4 * (c // at["groups"]) * kh * kw * out.shape[2] * out.shape[3])
            self.emit(f"nac_acalsim_conv2d({args}, (float *){col}, {self.ptr(out, False)});")
        else:  # the fast builds (host, RVV) multiply im2col columns (scratch); the plain loops need none
            depthwise = at["groups"] == c and cout == c
            cols = "NULL" if not self.fast or depthwise else \
                f"(float *){self.scratch(4 * (c // at['groups']) * kh * kw * out.shape[2] * out.shape[3])}"
            self.emit(f"nac_conv2d({args}, {cols}, {self.ptr(out, False)});")

    def op_max_pool2d(self, ins, out, at, outs):
        x = ins[0]
        n, c, h, w = x.shape
        self.emit(f"nac_max_pool2d({n * c}, {h}, {w}, {self.contiguous(x)}, {at['kernel'][0]}, {at['kernel'][1]}, "
                  f"{at['stride'][0]}, {at['stride'][1]}, {at['padding'][0]}, {at['padding'][1]}, "
                  f"{at.get('dilation', [1, 1])[0]}, {at.get('dilation', [1, 1])[1]}, {out.shape[2]}, {out.shape[3]}, "
                  f"{self.ptr(out, False)});")

    def op_avg_pool2d(self, ins, out, at, outs):
        x = ins[0]
        n, c, h, w = x.shape
        self.emit(f"nac_avg_pool2d({n * c}, {h}, {w}, {self.contiguous(x)}, {at['kernel'][0]}, {at['kernel'][1]}, "
                  f"{at['stride'][0]}, {at['stride'][1]}, {at['padding'][0]}, {at['padding'][1]}, {out.shape[2]}, "
                  f"{out.shape[3]}, {int(at.get('count_include_pad', True))}, {int(at.get('divisor_override') or 0)}, "
                  f"{self.ptr(out, False)});")

    def op_adaptive_avg_pool2d(self, ins, out, at, outs):
        x = ins[0]
        n, c, h, w = x.shape
        self.emit(f"nac_adaptive_avg_pool2d({n * c}, {h}, {w}, {self.contiguous(x)}, {out.shape[2]}, {out.shape[3]}, "
                  f"{self.ptr(out, False)});")

    def op_batch_norm(self, ins, out, at, outs):
        x, w, b, mean, var = ins
        n, c = x.shape[:2]
        self.emit(f"nac_batch_norm({n}, {c}, {x.size // max(n * c, 1)}, {self.contiguous(x)}, {self.contiguous(w)}, "
                  f"{self.contiguous(b)}, {self.contiguous(mean)}, {self.contiguous(var)}, {_flt(at['eps'])}, "
                  f"{self.ptr(out, False)});")

    def op_layer_norm(self, ins, out, at, outs):
        x, w, b = (ins + [None, None])[:3]
        cols = int(np.prod(x.shape[x.ndim - at.get("axes", 1):]))
        self.emit(f"nac_layer_norm({x.size // cols}, {cols}, {self.contiguous(x)}, {self.contiguous(w)}, "
                  f"{self.contiguous(b)}, {_flt(at['eps'])}, {self.ptr(out, False)});")

    def op_rms_norm(self, ins, out, at, outs):
        x, w = (ins + [None])[:2]
        cols = int(np.prod(x.shape[x.ndim - at.get("axes", 1):]))
        self.emit(f"nac_rms_norm({x.size // cols}, {cols}, {self.contiguous(x)}, {self.contiguous(w)}, "
                  f"{_flt(at['eps'])}, {self.ptr(out, False)});")

    def _axis(self, x, dim):
        d = dim % x.ndim
        return int(np.prod(x.shape[:d])), x.shape[d], int(np.prod(x.shape[d + 1:]))

    def op_softmax(self, ins, out, at, outs, log=0):
        o, n, i = self._axis(ins[0], at["dim"])
        self.emit(f"nac_softmax({o}, {n}, {i}, {self.contiguous(ins[0])}, {log}, {self.ptr(out, False)});")

    def op_log_softmax(self, ins, out, at, outs):
        return self.op_softmax(ins, out, at, outs, log=1)

    def op_argmax(self, ins, out, at, outs, is_max=1):
        x = ins[0]
        if x.dtype != np.float32:
            raise NacError(f"the C kernels lack argmax/argmin on {x.dtype}")
        o, n, i = (1, x.size, 1) if at.get("dim") is None else self._axis(x, at["dim"])
        self.emit(f"nac_argreduce({is_max}, {o}, {n}, {i}, {self.contiguous(x)}, (int64_t *){self.base(out)});")

    def op_argmin(self, ins, out, at, outs):
        return self.op_argmax(ins, out, at, outs, is_max=0)

    def op_cumsum(self, ins, out, at, outs):
        kind = {np.dtype(np.float32): "f32", np.dtype(np.int64): "i64"}.get(ins[0].dtype)
        if kind is None or out.dtype != ins[0].dtype:
            raise NacError(f"the C kernels lack cumsum on {ins[0].dtype} -> {out.dtype}")
        o, n, i = self._axis(ins[0], at["dim"])
        self.emit(f"nac_cumsum_{kind}({o}, {n}, {i}, {self.contiguous(ins[0])}, {self.ptr(out, False)});")

    def op_sort(self, ins, out, at, outs, k=None):
        x = ins[0]
        if x.dtype != np.float32:
            raise NacError(f"the C kernels lack sort/topk on {x.dtype}")
        o, n, i = self._axis(x, at["dim"])
        desc = int(at["descending"] if "descending" in at else at["largest"])
        self.emit(f"nac_sort_f32({o}, {n}, {i}, {self.contiguous(x)}, {desc}, {n if k is None else k}, "
                  f"{self.ptr(outs[0], False)}, (int64_t *){self.base(outs[1])}, (int64_t *){self.scratch(16 * n)});")

    def op_topk(self, ins, out, at, outs):
        return self.op_sort(ins, out, at, outs, k=out.shape[at["dim"] % out.ndim])

    def op_upsample2d(self, ins, out, at, outs):
        x = ins[0]
        n, c, h, w = x.shape
        sh, sw = (1.0 / s for s in at["scales"]) if at.get("scales") else (0.0, 0.0)  # ATen: 1 / scale in double
        self.emit(f"nac_upsample2d({n * c}, {h}, {w}, {self.contiguous(x)}, {out.shape[2]}, {out.shape[3]}, "
                  f"{int(at['mode'] == 'bilinear')}, {int(bool(at.get('align_corners')))}, {_flt(sh)}, {_flt(sw)}, "
                  f"{self.ptr(out, False)});")

    def op_embedding(self, ins, out, at, outs):
        from nac.engine.kernels.quant import QTensor

        w, idx = ins
        if isinstance(w, QTensor):
            self.emit(f"nac_embedding_q({int(w.scheme == 'ternary')}, {w.shape[0]}, {w.shape[1]}, {self.base(w.data)}, "
                      f"{self.ptr(w.scale)}, {int(w.per_row)}, {idx.size}, {self.contiguous(idx)}, {self.ptr(out, False)});")
            return
        self.emit(f"nac_take({w.itemsize}, 1, {w.shape[0]}, {int(np.prod(w.shape[1:]))}, {self.contiguous(w)}, "
                  f"{idx.size}, {self.contiguous(idx)}, {self.base(out)});")

    def op_index_select(self, ins, out, at, outs):
        x, idx = ins
        o, n, i = self._axis(x, at["dim"])
        self.emit(f"nac_take({x.itemsize}, {o}, {n}, {i}, {self.contiguous(x)}, {idx.size}, {self.contiguous(idx)}, "
                  f"{self.base(out)});")

    def op_gather(self, ins, out, at, outs):
        x, idx = ins
        self.emit(f"nac_gather({x.itemsize}, {x.ndim}, {_ints(x.shape)}, {_ints(idx.shape)}, {at['dim'] % x.ndim}, "
                  f"{self.contiguous(x)}, {self.contiguous(idx)}, {self.base(out)});")

    def op_index(self, ins, out, at, outs):
        x, idx = ins[0], ins[1:]
        if any(i is None for i in idx):
            raise NacError("index with a full slice ('') between index tensors is not supported by the C emitter")
        bshape = np.broadcast_shapes(*(i.shape for i in idx))
        strides = []
        for i in idx:
            strides += self.strides(np.broadcast_to(i, bshape)) or [0]
        ptrs = ", ".join(self.ptr(i) for i in idx)
        self.emit(f"nac_index({x.itemsize}, {x.ndim}, {_ints(x.shape)}, {len(idx)}, (const int64_t *const[]){{{ptrs}}}, "
                  f"{_ints(strides)}, {max(len(bshape), 1)}, {_ints(bshape or [1])}, {self.contiguous(x)}, {self.base(out)});")

    def joined(self, a: np.ndarray, b: np.ndarray) -> str:
        """Pointer to a scratch copy of ``a`` then ``b`` along axis -2 (keys and their tail)."""
        shape = a.shape[:-2] + (a.shape[-2] + b.shape[-2], a.shape[-1])
        nbytes = int(np.prod(shape)) * a.itemsize
        off = self.step_scratch
        self.step_scratch += -(-nbytes // ALIGN) * ALIGN
        self.scratch_top = max(self.scratch_top, self.step_scratch)
        full = _c_strides(shape)
        for part, start in ((a, 0), (b, a.shape[-2])):
            if part.size:
                dst = f"((uint8_t *)nac_scratch + {off + start * full[-2] * a.itemsize})"
                self.emit(f"nac_copy({a.itemsize}, {part.ndim}, {_ints(part.shape)}, {self.base(part)}, "
                          f"{_ints(self.strides(part))}, {dst}, {_ints(full)});")
        return f"(const float *)(nac_scratch + {off})"

    def op_scaled_dot_product_attention(self, ins, out, at, outs):
        q, k, v, mask = (ins + [None])[:4]
        tails = (ins + [None, None])[4:6]
        if q.ndim != 4:
            raise NacError("scaled_dot_product_attention is emitted for 4-D [batch, heads, L, E] inputs only")
        if tails[0] is not None:  # keys/values in two segments: joined in scratch here
            kp, vp = self.joined(k, tails[0]), self.joined(v, tails[1])
            k = np.empty(k.shape[:-2] + (k.shape[-2] + tails[0].shape[-2], k.shape[-1]), np.float32)
            v = np.empty(v.shape[:-2] + (v.shape[-2] + tails[1].shape[-2], v.shape[-1]), np.float32)
        else:
            kp = vp = None
        b, hq, l, e = q.shape
        hkv, s, ev = k.shape[1], k.shape[2], v.shape[3]
        scale = at.get("scale")
        scale = 1.0 / math.sqrt(e) if scale is None else scale
        kind, mptr, ms = 0, "NULL", [0, 0, 0, 0]
        if mask is not None:
            kind = 1 if mask.dtype == np.bool_ else 2
            mb = np.broadcast_to(mask, (b, hq, l, s))
            ms, mptr = self.strides(mb), self.base(mask)
        sc = self.scratch(4 * s)
        self.emit(f"nac_sdpa({b}, {hq}, {hkv}, {l}, {s}, {e}, {ev}, {self.contiguous(q)}, {kp or self.contiguous(k)}, "
                  f"{vp or self.contiguous(v)}, {kind}, {mptr}, {_ints(ms)}, {_flt(scale)}, {int(bool(at.get('is_causal')))}, "
                  f"(float *){sc}, {self.ptr(out, False)});")

    def op_rotary_embedding(self, ins, out, at, outs):
        x, c, s = ins
        cs, ss = (self.strides(np.broadcast_to(t, x.shape)) for t in (c, s))
        self.emit(f"nac_rotary_f32({x.ndim}, {_ints(x.shape)}, {self.ptr(x)}, {_ints(self.strides(x))}, {self.ptr(c)}, "
                  f"{_ints(cs)}, {self.ptr(s)}, {_ints(ss)}, {self.ptr(out, False)});")

    # -- files --------------------------------------------------------------------------------------
    def write(self, d: Path, target: str, rvv: bool = False) -> None:
        name, g, plan = self.name, self.graph, self.plan
        for f in ("nac_kernels.h", "nac_kernels.c"):
            shutil.copy(RUNTIME / f, d / f)
        extra_src, cflags = "", ""
        if self.regmap:
            from nac.accel.acalsim import map_header

            for f in ("nac_acalsim.h", "nac_acalsim.c"):
                shutil.copy(RUNTIME / f, d / f)
            (d / "nac_acalsim_map.h").write_text(map_header(self.regmap))
            extra_src = " nac_acalsim.c"
            if target == "host":  # no device on the host: a software model of it stands in
                shutil.copy(RUNTIME / "nac_acalsim_model.c", d / "nac_acalsim_model.c")
                extra_src += " nac_acalsim_model.c"
                cflags = " -DNAC_MMIO_SIMULATE"
        outs = plan.outputs
        out_lines = []
        for i, a in enumerate(outs):
            out_lines.append(f"    nac_copy({a.itemsize}, {max(a.ndim, 1)}, {_ints(a.shape or [1])}, {self.base(a)}, "
                             f"{_ints(self.strides(a) or [0])}, outputs[{i}], {_ints(_c_strides(a.shape) or [1])});")
        in_lines = [f"    memcpy(nac_inputs + {self.input_off[n]}, inputs[{i}], {plan.inputs[n].nbytes});"
                    for i, n in enumerate(g.inputs)]
        arena = max(plan.arena_bytes, ALIGN)
        scratch = max(self.scratch_top, ALIGN)
        (d / f"{name}_weights.bin").write_bytes(bytes(self.blob) or b"\0")
        (d / f"{name}_weights.S").write_text(
            f"/* The weights of {name} ({len(self.blob):,} bytes), placed read-only by the linker. */\n"
            f"    .section .rodata.nac_weights,\"a\"\n    .balign 64\n    .global {name}_weights\n"
            f"{name}_weights:\n    .incbin \"{name}_weights.bin\"\n    .section .note.GNU-stack,\"\",%progbits\n")
        shapes = "\n".join(f" *   input {i} {n}: {plan.inputs[n].dtype}{list(plan.inputs[n].shape)}"
                           for i, n in enumerate(g.inputs))
        shapes += "\n" + "\n".join(f" *   output {i} {n}: {outs[i].dtype}{list(outs[i].shape)}" for i, n in enumerate(g.outputs))
        (d / f"{name}.h").write_text(f"""/* {name}: emitted by nac emit from {self.model.path.name}. Dimensions: {plan.env}
{shapes}
 */
#ifndef {name.upper()}_H
#define {name.upper()}_H
#include <stddef.h>
#include <stdint.h>

#define {name.upper()}_NUM_INPUTS {len(g.inputs)}
#define {name.upper()}_NUM_OUTPUTS {len(g.outputs)}
#define {name.upper()}_ARENA_BYTES {arena}
#define {name.upper()}_SCRATCH_BYTES {scratch}
#define {name.upper()}_WEIGHT_BYTES {len(self.blob)}
#define {name.upper()}_NAIVE_ACTIVATION_BYTES {plan.naive_bytes}

static const size_t {name}_input_bytes[] = {{{', '.join(str(plan.inputs[n].nbytes) for n in g.inputs)}}};
static const size_t {name}_output_bytes[] = {{{', '.join(str(a.nbytes) for a in outs)}}};

/* Run the model: inputs and outputs in graph order, raw little-endian arrays (row-major).
 * Returns 0, or the 1-based step whose kernel met bad data (an index out of range). */
int {name}_run(const void *const *inputs, void *const *outputs);
#endif
""")
        body = "\n".join(self.lines)
        (d / f"{name}.c").write_text(f"""/* {name}: {len(plan.steps)} steps over a static arena of {arena} bytes. Emitted by nac emit. */
#include <math.h>
#include <string.h>

#include "{name}.h"
#include "nac_kernels.h"
{'#include "nac_acalsim.h"' if self.regmap else ""}

extern const uint8_t {name}_weights[];
#define nac_w ((const uint8_t *){name}_weights)
static uint8_t nac_arena[{arena}] __attribute__((aligned(64)));
static uint8_t nac_scratch[{scratch}] __attribute__((aligned(64), unused));
static uint8_t nac_inputs[{self.input_bytes}] __attribute__((aligned(64)));

int {name}_run(const void *const *inputs, void *const *outputs) {{
    nac_error = 0;
{chr(10).join(in_lines)}
{body}
{chr(10).join(out_lines)}
    return 0;
}}
""")
        (d / f"{name}_main.c").write_text(_MAIN.replace("@NAME@_NUM", name.upper() + "_NUM").replace("@NAME@", name))
        (d / f"{name}.ld").write_text(_LINKER.replace("@NAME@", name))
        (d / "Makefile").write_text(_MAKEFILE.replace("@NAME@", name).replace("@TARGET@", target)
                                    .replace("@EXTRA_SRC@", extra_src).replace("@CFLAGS@", cflags)
                                    .replace("@RVV@", str(int(rvv))))


def _c_strides(shape) -> list[int]:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= max(int(s), 1)
    return list(reversed(out))


_MAIN = r"""/* Start-up program: read input.bin, run @NAME@, write output.bin, report the cost.
 * On RISC-V the reset code is picolibc's semihosting crt0 (stack, .bss, FPU, exit status);
 * files go through QEMU's semihosting. The counters are the RISC-V instret/cycle CSRs. */
#if !defined(__riscv)
#define _POSIX_C_SOURCE 199309L
#include <time.h>
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "@NAME@.h"

static uint64_t counter(int which) {
#if defined(__riscv) && __riscv_xlen == 32
    uint32_t hi, lo, hi2;
    do {
        if (which) { __asm__ volatile("rdcycleh %0" : "=r"(hi)); __asm__ volatile("rdcycle %0" : "=r"(lo)); __asm__ volatile("rdcycleh %0" : "=r"(hi2)); }
        else { __asm__ volatile("rdinstreth %0" : "=r"(hi)); __asm__ volatile("rdinstret %0" : "=r"(lo)); __asm__ volatile("rdinstreth %0" : "=r"(hi2)); }
    } while (hi != hi2);
    return ((uint64_t)hi << 32) | lo;
#elif defined(__riscv)
    uint64_t v;
    if (which) __asm__ volatile("rdcycle %0" : "=r"(v)); else __asm__ volatile("rdinstret %0" : "=r"(v));
    return v;
#else
    struct timespec t;
    (void)which;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
#endif
}

int main(void) {
#if defined(NAC_RVV)
    __asm__ volatile("csrs mstatus, %0" : : "r"(1ul << 9)); /* mstatus.VS = Initial: the vector unit on */
#endif
    static const void *inputs[@NAME@_NUM_INPUTS + 1];
    static void *outputs[@NAME@_NUM_OUTPUTS + 1];
    FILE *f = fopen("input.bin", "rb");
    if (!f) { printf("nac: cannot open input.bin\n"); return 2; }
    for (int i = 0; i < @NAME@_NUM_INPUTS; ++i) {
        void *p = malloc(@NAME@_input_bytes[i] ? @NAME@_input_bytes[i] : 1);
        if (!p || fread(p, 1, @NAME@_input_bytes[i], f) != @NAME@_input_bytes[i]) {
            printf("nac: input.bin is too short for input %d (%lu bytes)\n", i, (unsigned long)@NAME@_input_bytes[i]);
            return 2;
        }
        inputs[i] = p;
    }
    fclose(f);
    for (int i = 0; i < @NAME@_NUM_OUTPUTS; ++i) outputs[i] = malloc(@NAME@_output_bytes[i] ? @NAME@_output_bytes[i] : 1);
    uint64_t i0 = counter(0), c0 = counter(1);
    int rc = @NAME@_run(inputs, outputs);
    uint64_t i1 = counter(0), c1 = counter(1);
#if !defined(__riscv)
    /* NAC_REPEAT=N: N more runs, the fastest reported (the first pays for page faults) */
    const char *rep = getenv("NAC_REPEAT");
    for (long r = rep ? atol(rep) : 0; r > 0 && !rc; --r) {
        uint64_t t0 = counter(0);
        rc = @NAME@_run(inputs, outputs);
        uint64_t t1 = counter(0);
        if (t1 - t0 < i1 - i0) { i0 = t0; i1 = t1; }
    }
#endif
    if (rc) { printf("nac: step %d met bad input data (an index out of range)\n", rc); return 3; }
    f = fopen("output.bin", "wb");
    if (!f) { printf("nac: cannot write output.bin\n"); return 2; }
    for (int i = 0; i < @NAME@_NUM_OUTPUTS; ++i) fwrite(outputs[i], 1, @NAME@_output_bytes[i], f);
    fclose(f);
#if defined(__riscv)
    printf("nac: instret=%llu cycles=%llu\n", (unsigned long long)(i1 - i0), (unsigned long long)(c1 - c0));
#else
    (void)c0; (void)c1;
    printf("nac: time_ns=%llu\n", (unsigned long long)(i1 - i0));
#endif
    return 0;
}
"""

_LINKER = """/* @NAME@.ld: QEMU virt, bare metal. Code and the read-only weights from 0x80000000, data,
 * arena and stack from 0x90000000 (256 MiB each; QEMU runs with -m 512M). The section layout is
 * picolibc's. */
__flash = 0x80000000;
__flash_size = 0x10000000;
__ram = 0x90000000;
__ram_size = 0x10000000;
__stack_size = 0x40000;
INCLUDE picolibc.ld
"""

_MAKEFILE = r"""# Build and run @NAME@: `make run` reads input.bin and writes output.bin.
.DEFAULT_GOAL := all
TARGET ?= @TARGET@
NAME = @NAME@
KERNELS = nac_kernels.c
SRC = $(NAME).c $(NAME)_main.c $(KERNELS) $(NAME)_weights.S@EXTRA_SRC@
WARN = -std=c99 -Wall -Wextra -Werror@CFLAGS@

ifeq ($(TARGET),host)
# FAST=1: register-tiled, vectorised kernels for this CPU (-march=native); OPENMP=1: steps split over
# OMP_NUM_THREADS threads. FAST=0 OPENMP=0 builds the plain portable loops the RISC-V cores run.
FAST ?= 1
OPENMP ?= 1
CC ?= gcc
CFLAGS = $(WARN) -O3
ifeq ($(FAST),1)
CFLAGS += -DNAC_FAST -march=native -ffp-contract=fast -fopenmp-simd
endif
ifeq ($(OPENMP),1)
CFLAGS += -fopenmp
endif
PROG = ./$(NAME)
RUN = $(PROG)
else ifeq ($(TARGET),riscv32)
CC = riscv64-unknown-elf-gcc
CFLAGS = $(WARN) -O2 -march=rv32imafc -mabi=ilp32f -Wa,-march=rv32imafc_zicsr --specs=picolibc.specs --oslib=semihost --crt0=semihost -T $(NAME).ld
PROG = $(NAME).elf
RUN = qemu-system-riscv32 -M virt -m 512M -bios none -nographic -semihosting-config enable=on,target=native -icount shift=0 -kernel $(PROG)
else
CC = riscv64-unknown-elf-gcc
CFLAGS = $(WARN) -O2 -march=rv64imafc -mabi=lp64f -mcmodel=medany -Wa,-march=rv64imafc_zicsr --specs=picolibc.specs --oslib=semihost --crt0=semihost -T $(NAME).ld
PROG = $(NAME).elf
QEMU_CPU =
# RVV=1: the kernels for the vector extension 1.0, compiled by clang (GCC 12 does not vectorise for
# RVV) and linked by GCC with picolibc; main switches the vector unit on (mstatus.VS)
RVV ?= @RVV@
ifeq ($(RVV),1)
CLANG ?= clang
PICOLIBC_INC ?= $(strip $(shell echo | $(CC) --specs=picolibc.specs -march=rv64imafc -mabi=lp64f -E -Wp,-v -x c - 2>&1 | grep -m1 'picolibc.*include'))
KERNELS = nac_kernels.o
CFLAGS += -DNAC_RVV
QEMU_CPU = -cpu rv64,v=true,vlen=128
nac_kernels.o: nac_kernels.c nac_kernels.h .build-flags
	$(CLANG) --target=riscv64-unknown-elf -march=rv64imafcv -mabi=lp64f -mcmodel=medany -O3 -DNAC_FAST -fopenmp-simd \
	    -ffp-contract=fast -mllvm -riscv-v-vector-bits-min=128 $(WARN) -isystem $(PICOLIBC_INC) -c -o $@ nac_kernels.c
endif
RUN = qemu-system-riscv64 -M virt $(QEMU_CPU) -m 512M -bios none -nographic -semihosting-config enable=on,target=native -icount shift=0 -kernel $(PROG)
endif

all: $(PROG)

$(PROG): $(SRC) $(NAME).h nac_kernels.h $(NAME)_weights.bin .build-flags
	$(CC) $(CFLAGS) -o $@ $(SRC) -lm

# rebuilt when the compiler or its flags change (make FAST=0 after a fast build)
.build-flags: FORCE
	@echo '$(CC) $(CFLAGS)' | cmp -s - $@ || echo '$(CC) $(CFLAGS)' > $@

FORCE:

run: $(PROG) input.bin
	$(RUN)

clean:
	rm -f $(NAME) $(NAME).elf nac_kernels.o output.bin .build-flags

.PHONY: all run clean FORCE
"""


def _byte_bounds(a: np.ndarray) -> tuple[int, int]:
    try:
        from numpy.lib.array_utils import byte_bounds
    except ImportError:  # numpy < 2
        byte_bounds = np.byte_bounds
    return byte_bounds(a)
