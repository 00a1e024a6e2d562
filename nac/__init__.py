"""NAC: compile PyTorch models into one portable `.nac` file and run them without PyTorch.

    import nac
    nac.export(model, (example,), "model.nac")      # needs torch (the `export` extra)
    m = nac.load("model.nac")                        # never imports torch
    outputs = m.run({"x": array})

`nac.export` is imported lazily so that `import nac` stays torch-free.
"""
import os as _os
import sys as _sys

if "numpy" not in _sys.modules:
    # OpenBLAS's idle threads spin for 2^28 cycles (~0.1 s) after every product before they sleep,
    # taking a core from the engine's own kernels that run between products; 2^18 (~0.1 ms)
    # measured 8-12 % faster on MiniLM (README, Benchmark). It is read once, when numpy loads
    # OpenBLAS, so it only applies if nac is imported first; a value already set is kept.
    _os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")
from nac.errors import NacError, NacExportError, NacFormatError, NacInputError, NacRuntimeError
from nac.engine import Model, load

__version__ = "0.1.0"
__all__ = ["export", "load", "pipeline", "bind", "verify", "to_json", "from_json", "validate", "reconstruct",
           "visualize", "Model", "NacError", "NacExportError", "NacFormatError", "NacInputError", "NacRuntimeError",
           "__version__"]


def export(module, args=(), path=None, **kwargs):
    """Compile a PyTorch module into a `.nac` file; see `nac.compile.export.export`."""
    from nac.compile.export import export as _export

    return _export(module, args, path, **kwargs)


def pipeline(task: str, model):
    """A task-level callable over a `.nac` file; see `nac.apps.pipelines.pipeline`."""
    from nac.apps.pipelines import pipeline as _pipeline

    return _pipeline(task, model)


def bind(path, weights, out, **kwargs):
    """Fill a weight-free export with weights; see `nac.compile.binding.bind` (no torch needed)."""
    from nac.compile.binding import bind as _bind

    return _bind(path, weights, out, **kwargs)


def verify(model_or_path, **kwargs):
    """Replay a file's test vectors (or compare with a reference model); see `nac.apps.verify.verify`."""
    from nac.apps.verify import verify as _verify

    return _verify(model_or_path, **kwargs)


def to_json(model_or_path, indent: int | None = 1) -> str:
    """The IR document (graph, weight table, metadata; no weight data); see `nac.format.ir.to_json`."""
    from nac.format.ir import to_json as _to_json

    return _to_json(model_or_path, indent)


def from_json(text):
    """Read an IR document back; see `nac.format.ir.from_json`."""
    from nac.format.ir import from_json as _from_json

    return _from_json(text)


def validate(doc) -> list[str]:
    """Every problem of a graph or IR JSON document; see `nac.format.ir.validate`."""
    from nac.format.ir import validate as _validate

    return _validate(doc)


def reconstruct(model_or_path, torch: bool = False) -> str:
    """The graph as pseudo-code, or as PyTorch module source; see `nac.apps.reconstruct`."""
    from nac.apps.reconstruct import reconstruct as _reconstruct

    return _reconstruct(model_or_path, torch=torch)


def visualize(model_or_path, output, **kwargs):
    """Draw the graph to .mmd/.md/.svg/.png/.dot; see `nac.apps.visualize.render`."""
    from nac.apps.visualize import render

    return render(model_or_path, output, **kwargs)
