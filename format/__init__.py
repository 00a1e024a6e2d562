"""`nac.format`: the `.nac` container, its spec (SPEC.md), the op table and the in-memory Graph."""
from nac.format.container import NacFile, read_header, read_nac, write_nac
from nac.format.graph import DTYPES, Graph, Node, Value, dtype_name, numpy_dtype
from nac.format.ops import OPS, OpSchema
from nac.format.quant import pack_ternary, unpack_ternary
from nac.format.symbolic import eval_dim, eval_shape

__all__ = ["NacFile", "read_header", "read_nac", "write_nac", "Graph", "Node", "Value", "DTYPES",
           "dtype_name", "numpy_dtype", "OPS", "OpSchema", "eval_dim", "eval_shape", "pack_ternary",
           "unpack_ternary"]
