"""`nac.engine`: load a `.nac` file (mmap, zero-copy weights), plan memory, run Numba kernels.

Nothing here imports torch or transformers.
"""
from nac.engine.model import Model, load

__all__ = ["Model", "load"]
