"""Shape and data-movement kernels. The view ops return numpy views (no copy) when they can."""
from __future__ import annotations

import numpy as np

from nac.engine.kernels.registry import kernel


def _copy_or_view(view, outs):
    if outs is None:
        return view
    np.copyto(outs[0], view)
    return None


@kernel("reshape")
def reshape(ins, outs, attrs):
    """A view with the new shape, or None if the input's strides need a copy (then: copy into outs)."""
    x = ins[0]
    if outs is not None:
        np.copyto(outs[0], x.reshape(outs[0].shape))
        return None
    try:  # never copies and never reads data (so it is safe on the planner's zero-byte placeholders)
        return x.reshape(tuple(attrs["shape"]), copy=False)
    except ValueError:
        return None


@kernel("permute")
def permute(ins, outs, attrs):
    return _copy_or_view(ins[0].transpose(attrs["perm"]), outs)


@kernel("expand")
def expand(ins, outs, attrs):
    return _copy_or_view(np.broadcast_to(ins[0], tuple(attrs["shape"])), outs)


@kernel("slice")
def slice_(ins, outs, attrs):
    """ATen slice.Tensor: x[start:end:step] along dim (negative bounds count from the end, clamped)."""
    x = ins[0]
    key = (slice(None),) * attrs["dim"] + (slice(attrs["start"], attrs["end"], attrs["step"]),)
    return _copy_or_view(x[key], outs)


@kernel("select")
def select(ins, outs, attrs):
    x = ins[0]
    d, i = attrs["dim"], attrs["index"]
    if i < 0:
        i += x.shape[d]
    key = (slice(None),) * d + (slice(i, i + 1),)
    return _copy_or_view(np.squeeze(x[key], axis=d), outs)


@kernel("flip")
def flip(ins, outs, attrs):
    """ATen flip: a view with negative strides along ``dims`` (or its copy into ``outs``)."""
    return _copy_or_view(np.flip(ins[0], axis=tuple(attrs["dims"])), outs)


@kernel("cat")
def cat(ins, outs, attrs):
    np.concatenate(ins, axis=attrs["dim"], out=outs[0], casting="unsafe")


@kernel("pad")
def pad(ins, outs, attrs):
    """ATen constant_pad_nd: pads pair up from the last axis backwards; negative pads crop."""
    x, out = ins[0], outs[0]
    out.fill(attrs["value"])
    p = attrs["pads"]
    src, dst = [slice(None)] * x.ndim, [slice(None)] * x.ndim
    for k in range(len(p) // 2):
        axis = x.ndim - 1 - k
        lo, hi = p[2 * k], p[2 * k + 1]
        n = x.shape[axis]
        src[axis] = slice(max(0, -lo), n - max(0, -hi))
        dst[axis] = slice(max(0, lo), max(0, lo) + max(0, n - max(0, -lo) - max(0, -hi)))
    out[tuple(dst)] = x[tuple(src)]


@kernel("repeat")
def repeat(ins, outs, attrs):
    outs[0][...] = np.tile(ins[0], attrs["repeats"])


@kernel("arange")
def arange(ins, outs, attrs):
    outs[0][...] = np.arange(attrs["start"], attrs["end"], attrs["step"], dtype=outs[0].dtype)


@kernel("full")
def full(ins, outs, attrs):
    outs[0].fill(attrs["value"])
