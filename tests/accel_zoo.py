"""The emitter's model zoo (shared by tests/accel and bench/bench_accel.py): an MLP, a
ResNet-style CNN with batch norm, a MobileNetV2 depthwise block, a transformer block with a padding
mask and a symbolic sequence length, and a model with two inputs and two outputs."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 10)

    def forward(self, x):
        return torch.softmax(self.b(F.gelu(self.a(x))), -1)


class ResNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = self.stem(x)
        y = F.relu(y + self.block(y))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


class Depthwise(nn.Module):  # a MobileNetV2 inverted residual, with hardswish and average pooling
    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(6, 24, 1)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.bn = nn.BatchNorm2d(24)
        self.project = nn.Conv2d(24, 6, 1)

    def forward(self, x):
        y = F.relu6(self.expand(x))
        y = F.hardswish(self.bn(self.dw(y)))
        return F.avg_pool2d(x + self.project(y), 2)


class Block(nn.Module):  # a pre-norm transformer block with a padding mask
    def __init__(self, d=32, heads=4):
        super().__init__()
        self.h = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, mask):
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, s, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        keep = (mask[:, None, None, :] > 0)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        x = x + self.out(a.transpose(1, 2).reshape(b, s, d))
        return x + self.ff(self.ln2(x))


class MultiIO(nn.Module):
    def forward(self, a, b):
        c = torch.cat([a, F.pad(b, (1, 1)) * 0.5], dim=1)
        return torch.where(c > 0, c, -c).sum(-1), torch.cumsum(c, 1).amax(1, keepdim=True)


def build(name: str):
    """``(module, example args, dynamic_shapes)`` for a zoo name, seeded."""
    torch.manual_seed(0)
    if name == "mlp":
        return MLP(), (torch.randn(4, 16),), None
    if name == "resnet":
        m = ResNetish()
        for bn in (m.stem[1], m.block[1], m.block[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        return m, (torch.randn(2, 3, 16, 16),), None
    if name == "depthwise":
        m = Depthwise()
        m.bn.running_var.uniform_(0.5, 2.0)
        return m, (torch.randn(1, 6, 10, 10),), None
    if name == "transformer":
        seq = torch.export.Dim("seq", min=2, max=64)
        mask = torch.ones(2, 7, dtype=torch.long)
        mask[1, 5:] = 0
        return Block(), (torch.randn(2, 7, 32), mask), ({1: seq}, {1: seq})
    return MultiIO(), (torch.randn(3, 4, 6), torch.randn(3, 2, 4)), None


ZOO = ["mlp", "resnet", "depthwise", "transformer", "multi_io"]
