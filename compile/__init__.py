"""`nac.compile`: torch.export -> core ATen -> NAC ops (lowering table) -> passes -> `.nac` file.

Importing this package imports torch; the runtime (`nac.engine`, `nac.load`) never does.
"""
from nac.compile.bitlinear import BitLinear, ternarize
from nac.compile.export import compile_graph, export, to_graph
from nac.compile.passes import optimize
from nac.compile.quantize import quantize_graph

__all__ = ["export", "compile_graph", "to_graph", "optimize", "quantize_graph", "BitLinear", "ternarize"]
