"""BitLinear: a drop-in ``torch.nn.Linear`` with ternary weights (BitNet b1.58), for training
models that NAC stores losslessly in 2 bits per weight.

Source: Ma et al. 2024, "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits"
(absmean weight quantisation); Wang et al. 2023, "BitNet" (straight-through estimator).
This layer quantises weights only; activations stay float.
"""
from __future__ import annotations

import fnmatch

import torch
import torch.nn.functional as F

from nac.errors import NacExportError


class BitLinear(torch.nn.Linear):
    """``nn.Linear`` whose forward uses W_q = round(clip(W / s, -1, 1)) * s, s = mean |W|.

    In training the gradient passes straight through the rounding (``W + (W_q - W).detach()``);
    in eval mode the forward uses exactly W_q, which `nac.export` stores as 2-bit ternary values
    and one float32 scale. Shapes as ``nn.Linear``: x [*, in] -> [*, out].
    """

    def quantized_weight(self) -> torch.Tensor:
        w = self.weight
        scale = w.abs().mean().clamp(min=1e-5)
        return (w / scale).round().clamp(-1, 1) * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wq = self.quantized_weight()
        w = self.weight + (wq - self.weight).detach() if self.training else wq
        return F.linear(x, w, self.bias)


def ternarize(model: torch.nn.Module, include="*", exclude=()) -> torch.nn.Module:
    """Replace the ``nn.Linear`` layers whose module path matches a glob in ``include`` (and none in
    ``exclude``) with `BitLinear` layers holding the same weights, in place; returns ``model``.

    Raises:
        NacExportError: no linear layer matched ``include``.
    """
    include = [include] if isinstance(include, str) else list(include)
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    swapped = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            path = f"{name}.{child_name}" if name else child_name
            if type(child) is torch.nn.Linear and any(fnmatch.fnmatchcase(path, g) for g in include) \
                    and not any(fnmatch.fnmatchcase(path, g) for g in exclude):
                bit = BitLinear(child.in_features, child.out_features, bias=child.bias is not None,
                                device=child.weight.device, dtype=child.weight.dtype)
                bit.load_state_dict(child.state_dict())
                bit.train(child.training)
                setattr(module, child_name, bit)
                swapped += 1
    if not swapped:
        raise NacExportError(f"ternarize: no nn.Linear layer matches {include}")
    return model
