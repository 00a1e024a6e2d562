"""NAC: compile PyTorch models into one portable `.nac` file and run them without PyTorch.

    import nac
    nac.export(model, (example,), "model.nac")      # needs torch (the `export` extra)
    m = nac.load("model.nac")                        # never imports torch
    outputs = m.run({"x": array})

`nac.export` is imported lazily so that `import nac` stays torch-free.
"""
from nac.errors import NacError, NacExportError, NacFormatError, NacInputError, NacRuntimeError
from nac.engine import Model, load

__version__ = "0.1.0"
__all__ = ["export", "load", "pipeline", "Model", "NacError", "NacExportError", "NacFormatError", "NacInputError",
           "NacRuntimeError", "__version__"]


def export(module, args=(), path=None, **kwargs):
    """Compile a PyTorch module into a `.nac` file; see `nac.compile.export.export`."""
    from nac.compile.export import export as _export

    return _export(module, args, path, **kwargs)


def pipeline(task: str, model):
    """A task-level callable over a `.nac` file; see `nac.apps.pipelines.pipeline`."""
    from nac.apps.pipelines import pipeline as _pipeline

    return _pipeline(task, model)
