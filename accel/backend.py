"""A `torch.compile` backend that runs (or emulates) each captured FX graph through NAC.

    compiled = torch.compile(model, backend=nac.accel.ACALSimBackend(mode="simulate", output_dir="out"))

Modes, per captured subgraph (graph breaks give several, each handled on its own):
``eager`` plain PyTorch; ``trace`` print the FX graph, run eagerly; ``compile`` lower to a NAC
graph and run it with the NAC engine; ``codegen`` also write the `.nac` file and an emitted C
project (``output_dir/graph_N``); ``simulate`` build that project and run it (under QEMU for the
RISC-V targets) on every call, returning the outputs it computed as tensors.
"""
from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np

from nac.errors import NacError

log = logging.getLogger("nac.accel")
MODES = ("eager", "trace", "compile", "codegen", "simulate")


class ACALSimBackend:
    """A TorchDynamo backend (a callable ``(GraphModule, example_inputs) -> callable``).

    Args:
        mode: one of ``eager``, ``trace``, ``compile``, ``codegen``, ``simulate``.
        output_dir: where ``codegen``/``simulate`` write ``graph_N/`` (a `.nac` file and a C project).
        target: the emitted project's target (``riscv32`` default, ``riscv64``, ``host``).
        offload: ``none`` or ``acalsim`` (``simulate`` then needs ``target="host"``, where a model of
            the device stands in; see accel/ACALSIM.md).
        verbose: log each subgraph's fate (to the ``nac.accel`` logger and stdout).
        fallback: when a subgraph cannot be lowered (an op NAC lacks, a non-tensor input), run it
            eagerly with a warning instead of raising.
    Attributes:
        graphs: per captured subgraph, a dict with its index, mode used, op count and folder.
    Raises:
        NacError: an unknown mode/target, or (with ``fallback=False``) a subgraph NAC cannot lower.
    """

    def __init__(self, mode: str = "compile", output_dir="nac-acalsim", verbose: bool = False, target: str = "riscv32",
                 offload: str = "none", fallback: bool = True):
        if mode not in MODES:
            raise NacError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        from nac.accel.emit import TARGETS
        if target not in TARGETS:
            raise NacError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
        self.mode, self.output_dir, self.verbose = mode, Path(output_dir), verbose
        self.target, self.offload, self.fallback = target, offload, fallback
        self.graphs: list[dict] = []
        self._count = itertools.count()

    def _say(self, msg: str) -> None:
        log.info(msg)
        if self.verbose:
            print(f"[nac] {msg}")

    def __call__(self, gm, example_inputs):
        import torch

        index = next(self._count)
        info = {"index": index, "mode": self.mode, "nodes": len(gm.graph.nodes)}
        self.graphs.append(info)
        if self.mode == "eager":
            return gm.forward
        if self.mode == "trace":
            print(f"[nac] FX graph {index}:")
            gm.graph.print_tabular() if _has_tabulate() else print(gm.graph)
            return gm.forward
        if not all(isinstance(x, torch.Tensor) for x in example_inputs):
            return self._eager(gm, info, "an input is not a tensor (a symbolic size)")
        try:
            from nac.compile.export import compile_graph
            from nac.engine.model import Model
            from nac.format.container import NacFile

            graph, meta = compile_graph(gm, tuple(example_inputs))
            model = Model(NacFile(Path(f"<graph {index}>"), (1, 0), [], graph, meta))
        except NacError as exc:
            if not self.fallback:
                raise
            return self._eager(gm, info, str(exc))
        info["ops"] = len(graph.nodes)
        self._say(f"graph {index}: {len(gm.graph.nodes)} FX nodes -> {len(graph.nodes)} NAC nodes ({self.mode})")
        if self.mode == "compile":
            return _engine_fn(model)
        from nac.accel.emit import emit
        from nac.format.container import write_nac

        folder = self.output_dir / f"graph_{index}"
        folder.mkdir(parents=True, exist_ok=True)
        path = write_nac(folder / f"graph_{index}.nac", graph, meta)
        report = emit(path, folder / "firmware", target=self.target, offload=self.offload, name=f"graph_{index}")
        info["folder"] = str(folder)
        self._say(f"graph {index}: wrote {path} and {report.folder} (arena {report.arena_bytes:,} B, "
                  f"weights {report.weight_bytes:,} B)")
        if self.mode == "codegen":
            return _engine_fn(model)
        return _simulate_fn(report, self)

    def _eager(self, gm, info, why: str):
        import warnings

        info["mode"] = "eager (fallback)"
        warnings.warn(f"NAC runs graph {info['index']} eagerly: {why}", stacklevel=2)
        return gm.forward


def _has_tabulate() -> bool:
    import importlib.util
    return importlib.util.find_spec("tabulate") is not None


def _engine_fn(model):
    import torch

    def run(*args):
        outs = model.run([a.detach().cpu().numpy() for a in args])
        return tuple(torch.from_numpy(np.array(o)) for o in outs)  # dynamo graphs return a tuple
    return run


def _simulate_fn(report, backend):
    import torch

    from nac.accel.verify import build_and_run

    def run(*args):
        result = build_and_run(report, [a.detach().cpu().numpy() for a in args])
        backend._say(f"{report.name}: ran on {report.target}"
                     + (f", {result.instret:,} instructions retired" if result.instret is not None else ""))
        return tuple(torch.from_numpy(np.array(o)) for o in result.outputs)
    return run
