"""`nac.compile`: torch.export -> core ATen -> NAC ops (lowering table) -> passes -> `.nac` file.

`nac.compile.export` imports torch; the rest (`binding`, `passes`, `quantize`) needs numpy only, so
`nac bind` runs where torch is not installed. The names below are imported on first use.
"""
from importlib import import_module

_WHERE = {"export": "export", "compile_graph": "export", "compile_unbound": "export", "to_graph": "export",
          "optimize": "passes", "quantize_graph": "quantize", "BitLinear": "bitlinear", "ternarize": "bitlinear",
          "bind": "binding", "finish_graph": "binding"}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'nac.compile' has no attribute {name!r}")
    return getattr(import_module(f"nac.compile.{_WHERE[name]}"), name)
