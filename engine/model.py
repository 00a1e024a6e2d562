"""`nac.load` and `Model`: run a `.nac` file with the Numba engine. Never imports torch."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nac.errors import NacError, NacInputError, NacRuntimeError
from nac.engine.kernels import KERNELS
from nac.engine.kernels.quant import QTensor
from nac.engine.plan import Plan
from nac.format.container import NacFile, read_nac
from nac.format.graph import numpy_dtype

_MAX_PLANS = 8


class Model:
    """A loaded `.nac` model.

    Parameters are zero-copy views into the mapped file. `run` plans once per distinct set of input
    shapes (an LRU of 8 plans) and reuses that plan's activation arena. A `Model` is not safe to
    run from several threads at once.

    Attributes:
        path: the file it was loaded from.
        graph: the `nac.format.Graph`.
        metadata: the file's metadata (task, labels, preprocessing, ...).
        input_names / output_names: in call order.
    """

    def __init__(self, nacfile: NacFile):
        self.file = nacfile
        self.path: Path = nacfile.path
        self.graph = nacfile.graph
        self.metadata: dict = nacfile.metadata
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
        self._plans: OrderedDict[tuple, Plan] = OrderedDict()
        self._tokenizer = None

    @property
    def tokenizer(self):
        """The file's tokenizer as a TISA VM (:class:`nac.tokenizer_vm.Tokenizer`): ``encode``,
        ``encode_batch``, ``decode``. Loaded on first use.

        Raises:
            NacError: the file has no tokenizer section, or its format is unknown.
        """
        if self._tokenizer is None:
            from nac.tokenizer_vm import load_tokenizer

            if self.file.tokenizer is None:
                raise NacError(f"{self.path.name} has no tokenizer; export it with tokenizer=<tokenizer.json>")
            fmt = (self.metadata.get("tokenizer") or {}).get("format", "hf-tokenizer-json")
            self._tokenizer = load_tokenizer(self.file.tokenizer, fmt, where=f"{self.path}: tokenizer section")
        return self._tokenizer

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

    def plan(self, shapes: Mapping[str, tuple]) -> Plan:
        """The (cached) plan for these input shapes."""
        key = tuple(tuple(shapes[n]) for n in self.graph.inputs)
        p = self._plans.get(key)
        if p is None:
            p = Plan(self.graph, dict(shapes), self._constants)
            self._plans[key] = p
            if len(self._plans) > _MAX_PLANS:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return p

    def run(self, inputs) -> list[np.ndarray]:
        """Run the model.

        Args:
            inputs: a dict by input name, a sequence in `input_names` order, or (single-input
                models) one array. Integer inputs accept any integer dtype; float inputs accept
                any float dtype (converted to float32); bool inputs need bool.
        Returns:
            The outputs, in `output_names` order, as new arrays owned by the caller.
        Raises:
            NacInputError: unknown/missing names, wrong dtype or rank, a size that breaks the
                exported constraints, or data a kernel rejects (token id out of range).
            NacRuntimeError: an internal kernel failure (names the node and its source module).
        """
        arrays = self._normalise(inputs)
        plan = self.plan({n: a.shape for n, a in arrays.items()})
        for name, a in arrays.items():
            np.copyto(plan.inputs[name], a, casting="unsafe")
        plan.run()
        return [np.array(o, copy=True) for o in plan.outputs]

    __call__ = run

    def __repr__(self) -> str:
        ins = ", ".join(f"{n}: {d}{list(s)}" for n, d, s in self.input_spec())
        return f"<nac.Model {self.path.name} ({ins}) -> {self.output_names}>"


def _compatible(got: np.dtype, want: np.dtype) -> bool:
    if want.kind == "f":
        return got.kind == "f"
    if want.kind in "iu":
        return got.kind in "iu"
    return got == want


def load(path, *, verify: bool = True) -> Model:
    """Load a `.nac` file for inference.

    Args:
        path: the `.nac` file.
        verify: check every section's CRC-32 (default; costs one read of the file).
    Raises:
        NacFormatError: the file or its external weights are missing, corrupt or unsupported.
        NacRuntimeError: the graph uses an op this engine has no kernel for.
    """
    return Model(read_nac(path, verify=verify))
