"""`nac.load` and `Model`: run a `.nac` file with the Numba engine. Never imports torch."""
from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nac.errors import NacError, NacInputError, NacRuntimeError
from nac.engine.kernels import KERNELS
from nac.engine.kernels.quant import QTensor
from nac.engine.narrow import keep_last
from nac.engine.plan import Plan
from nac.format.container import NacFile, read_nac
from nac.format.graph import numpy_dtype

MAX_IDLE_PLANS = 8
MAX_NARROWED = 4  # narrowed graphs kept per method (one per distinct logits_to_keep)


def default_max_memory() -> int:
    """The memory one plan may need, in bytes: ``NAC_MAX_MEMORY`` (bytes, or with a K/M/G/T
    suffix) if set, else the machine's physical memory (or its cgroup limit, if lower)."""
    env = os.environ.get("NAC_MAX_MEMORY", "").strip().upper()
    if env:
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(env[-1:], 1)
        digits = env[:-1] if env[-1:] in "KMGT" else env
        if not digits.isdigit():
            raise NacError(f"NAC_MAX_MEMORY={os.environ['NAC_MAX_MEMORY']!r} is not a size (e.g. 8G)")
        return int(digits) * mult
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


class Method:
    """One graph of a `.nac` file, ready to run: what `Model.methods` maps each name to.

    Parameters are zero-copy views into the mapped file, shared with the file's other methods.
    `run` plans once per distinct set of input shapes and reuses that plan's activation arena.
    A method may be called from many threads at once: the graph, the parameters and the kernels
    are shared (read-only); each call checks out a plan of its own (an idle one for its input
    shapes, else a new one), so concurrent calls run in parallel and each gets the answer it
    would get alone. Up to `MAX_IDLE_PLANS` idle plans are kept, least recently used first out.

    Attributes:
        name: the method's name (``"forward"`` for a single-graph file).
        path: the file it was loaded from.
        graph: its `nac.format.Graph`.
        input_names / output_names: in call order.
    """

    def __init__(self, name: str, graph, path: Path, max_memory: int):
        self.name, self.graph, self.path, self.max_memory = name, graph, path, max_memory
        g = self.graph
        missing = sorted({n.op for n in g.nodes} - KERNELS.keys())
        if missing:
            raise NacRuntimeError(f"{self.path}: this engine has no kernel for op(s) {missing}")
        self._constants: dict = dict(g.params)
        for name, v in g.values.items():
            if v.quant is not None:
                self._constants[name] = QTensor(v.quant["scheme"], g.params[name], g.params[v.quant["scale"]],
                                                tuple(int(d) for d in v.quant["shape"]))
        for alias, target in g.param_aliases.items():
            self._constants[alias] = self._constants[target]
        for name, v in g.values.items():
            if v.const is not None:
                self._constants[name] = np.asarray(v.const, numpy_dtype(v.dtype)).reshape(
                    tuple(int(d) for d in v.shape))
        self._plans: OrderedDict[tuple, list[Plan]] = OrderedDict()  # idle plans by (k, input shapes)
        self._narrowed: OrderedDict[int, object] = OrderedDict()  # logits_to_keep -> graph
        self._lock = threading.Lock()

    @property
    def input_names(self) -> list[str]:
        return list(self.graph.inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.graph.outputs)

    def input_spec(self) -> list[tuple[str, str, tuple]]:
        """(name, dtype, shape with named dimensions) for every input."""
        return [(n, self.graph.values[n].dtype, self.graph.values[n].shape) for n in self.graph.inputs]

    def _normalise(self, inputs) -> dict[str, np.ndarray]:
        names = self.graph.inputs
        if isinstance(inputs, Mapping):
            unknown = sorted(set(inputs) - set(names))
            if unknown:
                raise NacInputError(f"unknown input name(s) {unknown}; {self.path.name} takes {names}")
            missing = [n for n in names if n not in inputs]
            if missing:
                raise NacInputError(f"missing input(s) {missing}; {self.path.name} takes {names}")
            given = dict(inputs)
        elif isinstance(inputs, Sequence) and not isinstance(inputs, (str, bytes)):
            if len(inputs) != len(names):
                raise NacInputError(f"{len(inputs)} input(s) given; {self.path.name} takes {len(names)}: {names}")
            given = dict(zip(names, inputs))
        elif isinstance(inputs, np.ndarray) and len(names) == 1:
            given = {names[0]: inputs}
        else:
            raise NacInputError(f"inputs must be a dict by name or a sequence in order {names}, "
                                f"not {type(inputs).__name__}")
        out = {}
        for name in names:
            want = numpy_dtype(self.graph.values[name].dtype)
            try:
                a = np.asarray(given[name])
            except Exception as exc:
                raise NacInputError(f"input {name!r} cannot be converted to an array: {exc}") from None
            if a.dtype == object or not _compatible(a.dtype, want):
                raise NacInputError(f"input {name!r} has dtype {a.dtype}; the model expects {want}")
            out[name] = a
        return out

    @staticmethod
    def _keep(logits_to_keep) -> int:
        """``logits_to_keep`` as an int >= 0 (any integer type but bool); NacInputError otherwise."""
        if isinstance(logits_to_keep, (bool, np.bool_)) or not isinstance(logits_to_keep, (int, np.integer)) \
                or logits_to_keep < 0:
            raise NacInputError(f"logits_to_keep must be an int >= 0, not {logits_to_keep!r}")
        return int(logits_to_keep)

    def _graph(self, logits_to_keep: int):
        """The graph that computes ``logits`` for the last ``logits_to_keep`` (an int, `_keep`)
        positions only (`nac.engine.narrow.keep_last`), or the whole graph for 0 or when it cannot
        be narrowed. Raises NacInputError when the method has no [batch, seq, vocab] ``logits``."""
        if not logits_to_keep:
            return self.graph
        v = self.graph.values.get("logits") if "logits" in self.graph.outputs else None
        if v is None or len(v.shape) != 3:
            raise NacInputError(f"logits_to_keep needs a [batch, seq, vocab] 'logits' output; {self.name} has "
                                f"{[(n, list(self.graph.values[n].shape)) for n in self.output_names]}")
        with self._lock:
            g = self._narrowed.get(logits_to_keep)
            if g is None:
                g = keep_last(self.graph, logits_to_keep) or self.graph
                self._narrowed[logits_to_keep] = g
                while len(self._narrowed) > MAX_NARROWED:
                    self._narrowed.popitem(last=False)
            return g

    def plan(self, shapes: Mapping[str, tuple], channels_last: bool = True, logits_to_keep: int = 0) -> Plan:
        """A new plan for these input shapes, owned by the caller (see `session` for one that is
        returned to the model's pool afterwards). ``channels_last=False`` keeps every buffer
        C-contiguous (see `Plan`). ``logits_to_keep=k`` (k >= 1) plans the graph that computes the
        ``logits`` output [B, T, V] for the last k positions only, when the graph allows it
        (`nac.engine.narrow`); otherwise the plan's ``logits`` stay [B, T, V].

        Raises:
            NacInputError: shapes outside the exported ranges, a plan above `max_memory`, or a bad
                ``logits_to_keep`` (not an int >= 0, or no [batch, seq, vocab] ``logits`` output).
            NacFormatError: the graph disagrees with shape inference for these shapes.
        """
        graph = self._graph(self._keep(logits_to_keep))
        return Plan(graph, {n: tuple(shapes[n]) for n in graph.inputs}, self._constants,
                    self.max_memory, where=str(self.path), channels_last=channels_last)

    @contextlib.contextmanager
    def session(self, shapes: Mapping[str, tuple], logits_to_keep: int = 0):
        """``with model.session(shapes) as plan:`` -- a plan for these input shapes that no other
        thread uses until the block ends; it then goes back to the pool for the next call.
        Generation holds one for a whole decode loop (its inputs hold the KV cache).
        ``logits_to_keep`` is as in `plan`."""
        logits_to_keep = self._keep(logits_to_keep)
        key = (logits_to_keep, tuple(tuple(int(d) for d in shapes[n]) for n in self.graph.inputs))
        with self._lock:  # the pool holds no empty lists: a key is removed with its last idle plan
            idle = self._plans.get(key)
            plan = idle.pop() if idle else None
            if idle is not None and not idle:
                del self._plans[key]
        if plan is None:
            plan = self.plan(dict(zip(self.graph.inputs, key[1])), logits_to_keep=logits_to_keep)
        try:
            yield plan
        finally:
            with self._lock:
                self._plans.setdefault(key, []).append(plan)
                self._plans.move_to_end(key)
                idle_count = sum(map(len, self._plans.values()))
                while idle_count > MAX_IDLE_PLANS:  # least recently returned shapes go first
                    oldest = next(iter(self._plans))
                    self._plans[oldest].pop(0)
                    idle_count -= 1
                    if not self._plans[oldest]:
                        del self._plans[oldest]

    def run(self, inputs, *, logits_to_keep: int = 0) -> list[np.ndarray]:
        """Run the graph.

        Args:
            inputs: a dict by input name, a sequence in `input_names` order, or (single-input
                models) one array. Integer inputs accept any integer dtype; float inputs accept
                any float dtype (converted to float32); bool inputs need bool.
            logits_to_keep: 0 (all), or k >= 1: the ``logits`` output [B, T, V] of a causal LM
                step is returned for the last k positions only, [B, min(T, k), V], as
                transformers' argument of that name does. Where the graph allows it
                (`nac.engine.narrow`), the other positions are never computed (the LM head of
                a 512-token GPT-2 prefill is a third of its work).
        Returns:
            The outputs, in `output_names` order, as new arrays owned by the caller.
        Raises:
            NacInputError: unknown/missing names, wrong dtype or rank, a size that breaks the
                exported constraints, data a kernel rejects (token id out of range), or a bad
                ``logits_to_keep``.
            NacRuntimeError: an internal kernel failure (names the node and its source module).
        """
        arrays = self._normalise(inputs)
        logits_to_keep = self._keep(logits_to_keep)
        narrowed = self._graph(logits_to_keep) is not self.graph
        with self.session({n: a.shape for n, a in arrays.items()}, logits_to_keep if narrowed else 0) as plan:
            for name, a in arrays.items():
                np.copyto(plan.inputs[name], a, casting="unsafe")
            plan.run()
            outs = [np.array(o, copy=True) for o in plan.outputs]
        if logits_to_keep and not narrowed:
            k = self.output_names.index("logits")
            outs[k] = np.ascontiguousarray(outs[k][:, -logits_to_keep:])
        return outs

    __call__ = run


class Model(Method):
    """A loaded `.nac` model: its default method (the first; the only one of a single-graph
    file) runs with `run`, every method is in `methods`, and the file's tokenizer, metadata and
    generation settings come with it. Thread-safe as `Method`.

    Attributes:
        path: the file it was loaded from.
        graph: the default method's `nac.format.Graph`.
        metadata: the file's metadata (task, labels, preprocessing, generation settings, ...).
        methods: method name -> `Method`, in file order (``{"forward": self}`` for one graph).
        input_names / output_names: the default method's, in call order.
    """

    def __init__(self, nacfile: NacFile, max_memory: int | None = None):
        self.file = nacfile
        self.metadata: dict = nacfile.metadata
        limit = default_max_memory() if max_memory is None else int(max_memory)
        names = list(nacfile.methods)
        super().__init__(names[0], nacfile.graph, nacfile.path, limit)
        self.methods: dict[str, Method] = {names[0]: self}
        for name in names[1:]:
            self.methods[name] = Method(name, nacfile.methods[name], nacfile.path, limit)
        self._tokenizer = None

    def generate(self, input_ids=None, **kwargs):
        """Generate token ids, as transformers' ``model.generate``: greedy, sampling or beam
        search, for decoder-only (``text-generation``) and encoder-decoder (``text2text-generation``,
        ``translation``, ``summarization``) files. See `nac.apps.generate.generate` for the
        arguments, shapes and errors."""
        from nac.apps.generate import generate

        return generate(self, input_ids, **kwargs)

    @property
    def generation_config(self):
        """The file's `nac.format.generation.GenerationConfig` (cache layout, special tokens,
        methods to call).

        Raises:
            NacError: the file is not a generation model."""
        from nac.format.generation import GenerationConfig

        return GenerationConfig.from_metadata(self.metadata, where=str(self.path))

    @property
    def tokenizer(self):
        """The file's tokenizer as a TISA VM (:class:`nac.tokenizer_vm.Tokenizer`): ``encode``,
        ``encode_batch``, ``decode``. Loaded on first use.

        Raises:
            NacError: the file has no tokenizer section, or its format is unknown.
            NacFormatError: the section is malformed, or it does not reproduce the fingerprint
                (ids of `nac.tokenizer_vm.FINGERPRINT_TEXT`) recorded at export.
        """
        if self._tokenizer is None:
            from nac.tokenizer_vm import load_tokenizer

            if self.file.tokenizer is None:
                raise NacError(f"{self.path.name} has no tokenizer; export it with tokenizer=<tokenizer.json>")
            info = self.metadata.get("tokenizer") or {}
            fmt = info.get("format", "hf-tokenizer-json")
            where = f"{self.path}: tokenizer section"
            tok = load_tokenizer(self.file.tokenizer, fmt, where=where)
            if "fingerprint" in info:
                from nac.tokenizer_vm import check_fingerprint

                check_fingerprint(tok, info["fingerprint"], where)
            with self._lock:
                if self._tokenizer is None:
                    self._tokenizer = tok
        return self._tokenizer

    def __repr__(self) -> str:
        ins = ", ".join(f"{n}: {d}{list(s)}" for n, d, s in self.input_spec())
        more = f", methods {list(self.methods)}" if len(self.methods) > 1 else ""
        return f"<nac.Model {self.path.name} ({ins}) -> {self.output_names}{more}>"


def _compatible(got: np.dtype, want: np.dtype) -> bool:
    if want.kind == "f":
        return got.kind == "f"
    if want.kind in "iu":
        return got.kind in "iu"
    return got == want


def load(path, *, verify: bool = True, max_memory: int | None = None, num_threads: int | None = None) -> Model:
    """Load a `.nac` file for inference.

    Args:
        path: the `.nac` file.
        verify: check every section's CRC-32 (default; costs one read of the file).
        max_memory: bytes one call may need (activations, inputs, outputs, kernel scratch); a call
            whose inputs need more is refused with `NacInputError` before anything is allocated.
            Default: `default_max_memory` (``NAC_MAX_MEMORY``, else the machine's memory).
        num_threads: threads for NAC's kernels and numpy's BLAS, process-wide (as
            ``torch.set_num_threads``; `nac.engine.threads.set_num_threads`). Default:
            ``NAC_NUM_THREADS``, else every core this process may use.
    Raises:
        NacFormatError: the file or its external weights are missing, corrupt or unsupported.
        NacRuntimeError: the graph uses an op this engine has no kernel for.
        ValueError: ``num_threads`` is not a positive integer.
    """
    from nac.engine import threads

    if num_threads is not None:
        threads.set_num_threads(num_threads)
    else:
        threads.apply_env()
    return Model(read_nac(path, verify=verify), max_memory=max_memory)
