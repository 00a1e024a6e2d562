"""A zoo of small torch models covering the patterns users compose; each exports and agrees with
torch within 1e-4 relative to the output scale, on several input sizes from one file."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.export import Dim

import nac
from conftest import assert_close, export_and_compare

torch.manual_seed(0)


class MultiIO(nn.Module):
    """Two inputs, three outputs, a shared (tied) weight used twice."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, a, b):
        h = torch.tanh(self.shared(a)) + self.shared(b)
        return self.head(h), h.sum(-1), torch.sigmoid(h).amax(-1, keepdim=True)


class ResidualCNN(nn.Module):
    """ResNet-style blocks with batch norm, a dense (concatenating) skip, pooling."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8))
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.Hardswish(), nn.Conv2d(16, 8, 1),
                                nn.ReLU6())
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 5)
        for m in self.modules():  # non-trivial running statistics
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.block(x))
        x = torch.cat([x, F.max_pool2d(x, 3, 1, 1)], 1)
        x = self.grouped(self.dw(x))
        x = F.avg_pool2d(x, 2, ceil_mode=True)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class GRUUnrolled(nn.Module):
    """A recurrent cell unrolled over a fixed number of steps."""

    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(5, 7)
        self.lstm = nn.LSTMCell(7, 4)

    def forward(self, xs):  # [batch, 6, 5]
        h = torch.zeros(xs.shape[0], 7)
        hc = (torch.zeros(xs.shape[0], 4), torch.zeros(xs.shape[0], 4))
        outs = []
        for t in range(xs.shape[1]):
            h = self.cell(xs[:, t], h)
            hc = self.lstm(h, hc)
            outs.append(hc[0])
        return torch.stack(outs, 1)


class Attention(nn.Module):
    """Self- and cross-attention with nn.MultiheadAttention, and a full transformer encoder block."""

    def __init__(self):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.cross = nn.MultiheadAttention(16, 2, batch_first=True)
        self.block = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, activation="gelu")

    def forward(self, x, memory):
        a, _ = self.self_attn(x, x, x, need_weights=False)
        c, _ = self.cross(a, memory, memory, need_weights=False)
        return self.block(c + x)


class Activations(nn.Module):
    def forward(self, x):
        ys = [F.relu(x), F.relu6(x), F.hardtanh(x, -0.5, 0.5), F.gelu(x), F.gelu(x, approximate="tanh"), F.silu(x),
              torch.sigmoid(x), torch.tanh(x), F.hardswish(x), F.leaky_relu(x, 0.1), F.elu(x), F.hardsigmoid(x)]
        return torch.stack(ys, 0)


class Reductions(nn.Module):
    def forward(self, x):
        return (x.sum(1), x.mean((1, 2), keepdim=True), x.amax(-1), x.amin(0), x.var(1), x.argmax(-1),
                x.max(dim=1).values, torch.cumsum(x, 2), F.log_softmax(x, 1), x.norm(dim=-1),
                F.normalize(x, dim=-1))


class ShapeOps(nn.Module):
    def forward(self, x):  # [b, 4, 6]
        a, b = x.split([2, 2], dim=1)
        y = torch.cat([b, a], 1).transpose(1, 2).reshape(x.shape[0], -1)
        z = x.unsqueeze(1).expand(-1, 3, -1, -1).permute(0, 2, 1, 3).flatten(2)
        w = F.pad(x, (1, 2, 0, 1), value=-1.0)[:, 1:, ::2]
        v = x[:, 2] + x.select(1, -1).unsqueeze(-1)[..., 0] + x.repeat(1, 2, 1)[:, 3]
        idx = torch.arange(x.shape[2] - 1, -1, -1)
        u = torch.index_select(x, 2, idx) * torch.where(x > 0, 1.0, -2.0)
        return y, z, w, v, u, x.unbind(1)[3], torch.gather(x, 2, idx.expand(x.shape[0], 4, -1))


def test_multi_io_with_shared_weights(tmp_path):
    m = MultiIO().eval()
    batch = Dim("batch", min=1, max=64)
    model = export_and_compare(m, (torch.randn(3, 6), torch.randn(3, 6)), tmp_path,
                               dynamic_shapes=({0: batch}, {0: batch}),
                               variants=[((torch.randn(1, 6), torch.randn(1, 6)), {}),
                                         ((torch.randn(17, 6), torch.randn(17, 6)), {})])
    assert len(model.output_names) == 3
    assert "shared.weight" in model.graph.params  # used twice, stored once
    assert sum(a.size for a in model.graph.params.values()) == sum(p.numel() for p in m.parameters())


def test_tied_parameters_stored_once(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 8)
            self.out = nn.Linear(8, 50, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, ids):
            return self.out(self.emb(ids))

    model = export_and_compare(Tied().eval(), (torch.randint(0, 50, (2, 5)),), tmp_path)
    assert model.graph.param_count() == 50 * 8


def test_residual_cnn_with_batch_norm(tmp_path):
    m = ResidualCNN().eval()
    model = export_and_compare(m, (torch.randn(2, 3, 32, 32),), tmp_path,
                               dynamic_shapes=({0: Dim("batch", min=1, max=16)},),
                               variants=[((torch.randn(1, 3, 32, 32),), {})])
    ops = {n.op for n in model.graph.nodes}
    assert "batch_norm" not in ops  # folded into the convolutions
    assert model.metadata["compile"]["passes"]["fold_batch_norm"] == 3
    # relu(x + block(x)): the skip joins the block's last convolution, and the ReLU after it
    assert model.metadata["compile"]["passes"]["fuse_residual_add"] == 1
    joined = [n for n in model.graph.nodes if n.op == "conv2d" and len(n.inputs) > 3 and n.inputs[3]]
    assert len(joined) == 1 and joined[0].attrs["activation"] == "relu"


class InvertedResiduals(nn.Module):
    """Two MobileNetV2 blocks (1x1 expand, depthwise, 1x1 project + skip): the first block's skip
    is the graph's NCHW input, the second's a channels-last value inside the plan. Then two adds a
    convolution must not absorb: one broadcasting a [1, C, 1, 1] tensor, one whose convolution
    output is also read elsewhere."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(8, 32, 1), nn.ReLU6(), nn.Conv2d(32, 32, 3, 1, 1, groups=32),
                                                  nn.ReLU6(), nn.Conv2d(32, 8, 1)) for _ in range(2))
        self.shift = nn.Parameter(torch.randn(1, 8, 1, 1))
        self.head = nn.Conv2d(8, 8, 1)
        self.tail = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        y = self.head(x) + self.shift  # broadcasting: stays an add
        z = self.tail(y)
        return z + x, z * 2  # z is read twice: stays an add


def test_residual_adds_join_the_convolution(tmp_path):
    """`fuse_residual_add` moves each inverted-residual block's skip into its projection: the
    engine adds an NCHW skip after the product and a channels-last one in the GEMM's epilogue,
    both matching torch; adds that broadcast or whose convolution has another reader stay."""
    m = InvertedResiduals().eval()
    model = export_and_compare(m, (torch.randn(2, 8, 12, 12),), tmp_path,
                               dynamic_shapes=({0: Dim("batch", min=1, max=4)},),
                               variants=[((torch.randn(1, 8, 12, 12),), {})])
    assert model.metadata["compile"]["passes"]["fuse_residual_add"] == 2
    assert sum(n.op == "add" for n in model.graph.nodes) == 2
    joined = [n for n in model.graph.nodes if n.op == "conv2d" and len(n.inputs) > 3 and n.inputs[3]]
    assert [model.graph.values[n.inputs[3]].shape for n in joined] == [model.graph.values[n.outputs[0]].shape
                                                                      for n in joined]
    assert joined[0].inputs[3] == model.graph.inputs[0]


def test_recurrent_cells_unrolled(tmp_path):
    export_and_compare(GRUUnrolled().eval(), (torch.randn(3, 6, 5),), tmp_path,
                       dynamic_shapes=({0: Dim("batch", min=1, max=8)},), variants=[((torch.randn(5, 6, 5),), {})])


def test_self_cross_attention_and_transformer_block(tmp_path):
    seq, mem = Dim("seq", min=2, max=64), Dim("mem", min=2, max=64)
    export_and_compare(Attention().eval(), (torch.randn(2, 5, 16), torch.randn(2, 7, 16)), tmp_path,
                       dynamic_shapes=({1: seq}, {1: mem}),
                       variants=[((torch.randn(2, 9, 16), torch.randn(2, 3, 16)), {})])


def test_activations(tmp_path):
    export_and_compare(Activations(), (torch.randn(4, 33) * 4,), tmp_path)


def test_reductions(tmp_path):
    export_and_compare(Reductions(), (torch.randn(3, 4, 5),), tmp_path)


def test_shape_ops(tmp_path):
    export_and_compare(ShapeOps(), (torch.randn(2, 4, 6),), tmp_path,
                       dynamic_shapes=({0: Dim("batch", min=1, max=8)},), variants=[((torch.randn(5, 4, 6),), {})])


def test_conv1d(tmp_path):
    m = nn.Sequential(nn.Conv1d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv1d(5, 2, 2, stride=2)).eval()
    export_and_compare(m, (torch.randn(2, 3, 10),), tmp_path)


def test_unsupported_ops_listed_with_module_paths(tmp_path):
    class Inner(nn.Module):
        def forward(self, x):
            return torch.fft.rfft(x).abs() + torch.special.bessel_j0(x)[..., :5]

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Inner()

        def forward(self, x):
            return torch.special.bessel_y0(self.inner(x))

    with pytest.raises(nac.NacExportError) as exc:
        nac.export(Outer(), (torch.randn(2, 8),), tmp_path / "bad.nac")
    assert str(exc.value).splitlines() == [
        "the model uses 3 ATen op(s) NAC does not support:",
        "  aten._fft_r2c.default  at inner (Inner)",
        "  aten.special_bessel_j0.default  at inner (Inner)",
        "  aten.special_bessel_y0.default  at <top> (Outer)",
    ]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_unsupported_ops_and_constructs_listed_together(tmp_path):
    """Issue 12: an unsupported op and a refused construct (a 3-D convolution) in one model: both
    in one error, not only the first found."""
    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.vol = nn.Conv3d(3, 2, 2)

        def forward(self, x):
            return torch.special.bessel_j0(self.vol(x)).sum(dim=1) + 1

    with pytest.raises(nac.NacExportError) as exc:
        nac.export(Both(), (torch.randn(1, 3, 4, 4, 4),), tmp_path / "bad.nac")
    text = str(exc.value)
    assert "aten.special_bessel_j0.default  at <top> (Both)" in text
    assert "3-D convolution is not supported" in text and "vol (Conv3d)" in text
    assert list(tmp_path.iterdir()) == []


def test_non_tensor_input_rejected(tmp_path):
    class Scale(nn.Module):
        def forward(self, x, k: float):
            return x * k

    with pytest.raises(nac.NacExportError):
        nac.export(Scale(), (torch.randn(2), 3.0), tmp_path / "s.nac")
    assert list(tmp_path.iterdir()) == []


def test_symbolic_dims_survive(tmp_path):
    m = nn.Linear(4, 3)
    path = nac.export(m, (torch.randn(2, 5, 4),), tmp_path / "l.nac",
                      dynamic_shapes=({0: Dim("batch", max=8), 1: Dim("seq", max=100)},))
    model = nac.load(path)
    assert model.input_spec() == [("input", "float32", ("batch", "seq", 4))]
    assert model.graph.dims["seq"]["max"] == 100
    for b, s in [(1, 1), (3, 77)]:
        x = np.random.rand(b, s, 4).astype(np.float32)
        with torch.no_grad():
            np.testing.assert_allclose(model.run([x])[0], m(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)


def test_bidirectional_lstm_with_flip(tmp_path):
    """Issue 12: flip (a bidirectional LSTM's reversed direction and an explicit torch.flip)."""
    class Bi(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 6, batch_first=True, bidirectional=True)
            self.fc = nn.Linear(12, 3)

        def forward(self, x):
            y, _ = self.lstm(x)
            return self.fc(torch.flip(y, [1]))

    torch.manual_seed(0)
    export_and_compare(Bi().eval(), (torch.randn(2, 5, 4),), tmp_path)


def test_derived_dimensions(tmp_path):
    """Issue 12: sizes derived from a Dim (32 * Dim("h"), as torch.export proposes for ResNet
    heights; Dim("n") + 1) become expressions the planner solves for the Dim."""
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                        nn.AdaptiveAvgPool2d(1)).eval()
    h = Dim("h", min=2, max=16)
    model = export_and_compare(cnn, (torch.randn(1, 3, 64, 64),), tmp_path, dynamic_shapes=({2: 32 * h, 3: 32 * h},),
                               variants=[((torch.randn(1, 3, s, s),), {}) for s in (96, 512)])
    assert model.input_spec()[0][2][2:] == ("(32 * h)", "(32 * h)")
    with pytest.raises(nac.NacInputError, match=r"expects \(32 \* h\) for an integer h"):
        model.run([np.zeros((1, 3, 50, 50), np.float32)])

    class Pair(nn.Module):
        def forward(self, x, y):
            return x.sum(-1, keepdim=True) + y[:, 1:] * 2

    n = Dim("n", min=2, max=64)
    export_and_compare(Pair(), (torch.randn(2, 5), torch.randn(2, 6)), tmp_path, name="pair.nac",
                       dynamic_shapes=({1: n}, {1: n + 1}),
                       variants=[((torch.randn(2, 9), torch.randn(2, 10)), {})])


def test_export_restores_each_submodule_mode(tmp_path):
    inner = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)).eval()
    outer = nn.Sequential(inner)  # a new wrapper starts in training mode
    nac.export(outer, (torch.randn(2, 3),), tmp_path / "m.nac")
    assert outer.training and not inner.training and not inner[1].training


def test_clamp_with_tensor_bounds(tmp_path):
    """Issue 12: aten.clamp.Tensor (F.cosine_similarity, learned limits), NaN and broadcasting."""
    class Sim(nn.Module):
        def __init__(self):
            super().__init__()
            self.lo, self.hi = nn.Parameter(torch.full((1, 4), -0.5)), nn.Parameter(torch.full((3, 1), 0.7))

        def forward(self, a, b):
            return (torch.nn.functional.cosine_similarity(a, b, dim=-1), torch.clamp(a, self.lo, self.hi),
                    torch.clamp(a, min=self.lo), torch.clamp(b, max=self.hi))

    a, b = torch.randn(3, 4), torch.randn(3, 4)
    a[0, 0] = float("nan")
    export_and_compare(Sim().eval(), (a, b), tmp_path)


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm(tmp_path, affine):
    """Issue 12: GroupNorm (Wav2Vec2's feature extractor, diffusion UNets), 1-D and 2-D, with a
    dynamic length; lowered to reshape + layer_norm + per-channel affine."""
    torch.manual_seed(0)
    m2 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8, affine=affine), nn.SiLU()).eval()
    if affine:
        nn.init.normal_(m2[1].weight)
        nn.init.normal_(m2[1].bias)
    export_and_compare(m2, (torch.randn(2, 3, 6, 6),), tmp_path, name="g2.nac")
    m1 = nn.Sequential(nn.Conv1d(1, 6, 5, stride=2), nn.GroupNorm(6, 6, affine=affine), nn.GELU()).eval()
    export_and_compare(m1, (torch.randn(2, 1, 40),), tmp_path, name="g1.nac",
                       dynamic_shapes=({2: Dim("t", min=8, max=400)},),
                       variants=[((torch.randn(2, 1, 123),), {})])


UPSAMPLES = [
    ("nearest x2", dict(scale_factor=2, mode="nearest")),
    ("nearest x1.5", dict(scale_factor=1.5, mode="nearest")),
    ("nearest to size", dict(size=(7, 10), mode="nearest")),
    ("bilinear x2", dict(scale_factor=2, mode="bilinear", align_corners=False)),
    ("bilinear x1.7 aligned", dict(scale_factor=1.7, mode="bilinear", align_corners=True)),
    ("bilinear to size", dict(size=(9, 4), mode="bilinear", align_corners=False)),
    ("bilinear down", dict(size=(3, 2), mode="bilinear", align_corners=False)),
]


@pytest.mark.parametrize("name,kwargs", UPSAMPLES, ids=[u[0] for u in UPSAMPLES])
def test_upsample(tmp_path, name, kwargs):
    """Issue 12: nn.Upsample / F.interpolate, nearest and bilinear, scale or size, align_corners;
    the batch stays dynamic."""
    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 1)

        def forward(self, x):
            return torch.nn.functional.interpolate(self.conv(x), **kwargs)

    torch.manual_seed(0)
    export_and_compare(Up().eval(), (torch.randn(2, 2, 5, 6),), tmp_path, dynamic_shapes=({0: Dim("batch", max=8)},),
                       variants=[((torch.randn(3, 2, 5, 6),), {})], rel=1e-5)


def test_upsample_with_dynamic_height_and_width(tmp_path):
    """Issue 12: Segformer-style decoders resize to a symbolic size (another feature map's)."""
    class Up(nn.Module):
        def forward(self, x, y):
            a = F.interpolate(x, size=y.shape[2:], mode="bilinear", align_corners=False)
            b = F.interpolate(x, scale_factor=2, mode="nearest")
            return a + y, b, F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=True)

    h, w = Dim("h", min=2, max=32), Dim("w", min=2, max=32)
    export_and_compare(Up(), (torch.randn(2, 3, 4, 5), torch.randn(2, 3, 8, 10)), tmp_path,
                       dynamic_shapes=({2: h, 3: w}, {2: 2 * h, 3: 2 * w}),
                       variants=[((torch.randn(2, 3, 7, 3), torch.randn(2, 3, 14, 6)), {})], rel=1e-5)


class Transposed(nn.Module):
    """Decoder-style upsampling by transposed convolution: 1-D and 2-D, strides, padding larger
    than the kernel reach (a crop), output_padding, dilation and groups."""

    def __init__(self):
        super().__init__()
        self.a = nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1)
        self.b = nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), groups=2)
        self.c = nn.ConvTranspose2d(4, 4, 4, stride=2, padding=3)
        self.d = nn.ConvTranspose2d(4, 2, 3, stride=3, output_padding=2, dilation=2, bias=False)

    def forward(self, x, y):
        return self.a(x), self.b(y), self.c(y), F.relu(self.d(y))


def test_transposed_convolution(tmp_path):
    """Issue 12: ConvTranspose1d/2d lower to zero insertion + a direct convolution with the
    flipped, channel-swapped weight; dynamic lengths, heights and batch."""
    torch.manual_seed(0)
    b, n, h = Dim("b", min=1, max=8), Dim("n", min=2, max=64), Dim("h", min=3, max=32)
    export_and_compare(Transposed().eval(), (torch.randn(2, 4, 9), torch.randn(2, 4, 5, 6)), tmp_path,
                       dynamic_shapes=({0: b, 2: n}, {0: b, 2: h}),
                       variants=[((torch.randn(1, 4, 17), torch.randn(1, 4, 11, 6)), {})])


class SortTopk(nn.Module):
    """sort (both orders, stable), topk (largest/smallest, k symbolic) and sign (DeBERTa)."""

    def forward(self, x):
        v, i = torch.sort(x, dim=-1, descending=True, stable=True)
        tv, ti = torch.topk(x, 3, dim=1)
        sv, si = torch.topk(x, min(x.shape[-1], 4), dim=-1, largest=False)
        return v, i, tv, ti, sv, si, torch.sort(x, dim=0).values, torch.sign(x) * x.abs().sqrt()


def test_sort_topk_sign(tmp_path):
    x = torch.randn(3, 5, 7)
    x[0, 1, 2] = float("nan")
    export_and_compare(SortTopk(), (x,), tmp_path, dynamic_shapes=({0: Dim("b", min=1, max=8),
                                                                    2: Dim("n", min=4, max=64)},),
                       variants=[((torch.randn(1, 5, 30),), {})])


def test_constant_subgraphs_fold_at_export(tmp_path):
    """Issue 12: ops NAC has no kernel for are fine when they only touch parameters and literals
    (BEiT's relative-position index is built with slice_scatter): torch evaluates them at export."""
    class Table(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.randn(9, 2))

        def forward(self, x):
            idx = torch.zeros(4, 4, dtype=torch.long)
            idx[1:, 1:] = torch.arange(9).view(3, 3)  # slice_scatter + copy on a constant
            return x + self.bias[idx.view(-1)].view(4, 4, 2).permute(2, 0, 1)

    export_and_compare(Table(), (torch.randn(2, 2, 4, 4),), tmp_path)
    from nac.compile.export import to_graph

    g = to_graph(Table(), (torch.randn(2, 2, 4, 4),))  # before the passes fold the rest
    assert any(p.startswith("folded.") for p in g.params)


@settings(max_examples=25, deadline=None)
@given(nd=st.sampled_from([1, 2]), cin_g=st.integers(1, 3), cout_g=st.integers(1, 3), groups=st.integers(1, 2),
       k=st.integers(1, 4), s=st.integers(1, 3), p=st.integers(0, 3), d=st.integers(1, 2), op=st.integers(0, 2),
       size=st.integers(1, 7), bias=st.booleans())
def test_transposed_convolution_generated(tmp_path_factory, nd, cin_g, cout_g, groups, k, s, p, d, op, size, bias):
    """Transposed convolutions over generated strides, paddings (also beyond the kernel's reach),
    output paddings, dilations and groups, against torch."""
    from hypothesis import assume

    assume(op < max(s, d))  # ATen: output_padding must be smaller than stride or dilation
    assume((size - 1) * s - 2 * p + d * (k - 1) + op + 1 >= 1)
    conv = (nn.ConvTranspose1d if nd == 1 else nn.ConvTranspose2d)(cin_g * groups, cout_g * groups, k, stride=s,
                                                                  padding=p, output_padding=op, dilation=d,
                                                                  groups=groups, bias=bias).eval()
    x = torch.randn(2, cin_g * groups, *([size] * nd))
    export_and_compare(conv, (x,), tmp_path_factory.mktemp("ct"))


def test_written_out_tanh_gelu_becomes_one_fused_epilogue(tmp_path):
    """transformers' NewGELUActivation (GPT-2's gelu_new), eight element-wise ops, is recognised
    as gelu(approximate='tanh') and folded into the linear before it; a near miss (another
    constant) is left alone. Both agree with torch."""
    from transformers.activations import NewGELUActivation

    class FFN(nn.Module):
        def __init__(self, c=0.044715):
            super().__init__()
            self.up, self.down, self.c = nn.Linear(16, 64), nn.Linear(64, 16), c
            self.act = NewGELUActivation()

        def forward(self, x):
            h = self.up(x)
            if self.c == 0.044715:
                h = self.act(h)
            else:
                h = 0.5 * h * (1.0 + torch.tanh(0.7978845608028654 * (h + self.c * torch.pow(h, 3.0))))
            return self.down(h)

    x = (torch.randn(3, 5, 16) * 3,)
    model = export_and_compare(FFN().eval(), x, tmp_path, rel=1e-5)
    assert not {"tanh", "pow", "mul"} & {n.op for n in model.graph.nodes}
    assert [n.attrs.get("activation") for n in model.graph.nodes if n.op == "linear"] == ["gelu_tanh", "none"]
    assert model.metadata["compile"]["passes"]["fuse_tanh_gelu"] == 1
    near = export_and_compare(FFN(c=0.05).eval(), x, tmp_path, rel=1e-5, name="near.nac")
    assert "tanh" in {n.op for n in near.graph.nodes}
    assert near.metadata["compile"]["passes"]["fuse_tanh_gelu"] == 0


def test_written_out_rms_norm_and_silu_become_fused_ops(tmp_path):
    """transformers' LlamaRMSNorm (pow, mean, add, rsqrt, mul, mul) is recognised as one
    ``rms_norm`` and Llama's SiLU gate (sigmoid, mul as torch.export writes it) as ``silu``,
    folded into the gate's linear; a norm with the mean over another axis, a square taken with
    another exponent and a product with another tensor's sigmoid are left alone. All agree with
    torch."""
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, hidden_act="silu", rms_norm_eps=1e-5)

    class Block(nn.Module):
        def __init__(self, kind="fused"):
            super().__init__()
            self.norm, self.mlp, self.kind = LlamaRMSNorm(32, eps=1e-5), LlamaMLP(cfg), kind
            with torch.no_grad():
                self.norm.weight.uniform_(0.5, 1.5)

        def forward(self, x):
            if self.kind == "fused":
                return self.mlp(self.norm(x))
            if self.kind == "other-axis":
                h = x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-5)
            else:  # cube (of the magnitude: a mean of cubes near zero would make rsqrt ill-conditioned)
                h = x * torch.rsqrt(x.abs().pow(3).mean(-1, keepdim=True) + 1e-5)
            g = self.mlp.gate_proj(h)
            return self.mlp.down_proj(g * torch.sigmoid(self.mlp.up_proj(h)))

    torch.manual_seed(0)
    x = (torch.randn(2, 7, 32) * 2,)
    model = export_and_compare(Block().eval(), x, tmp_path, rel=1e-5)
    ops = [n.op for n in model.graph.nodes]
    assert not {"pow", "mean", "rsqrt", "sigmoid"} & set(ops) and ops.count("rms_norm") == 1
    assert [n.attrs.get("activation") for n in model.graph.nodes if n.op == "linear"] == ["silu", "none", "none"]
    assert model.metadata["compile"]["passes"]["fuse_rms_norm"] == 1
    assert model.metadata["compile"]["passes"]["fuse_silu"] == 1
    for kind in ("other-axis", "cube"):
        near = export_and_compare(Block(kind).eval(), x, tmp_path, rel=1e-5, name=f"{kind}.nac")
        ops = {n.op for n in near.graph.nodes}
        assert "rsqrt" in ops and not {"rms_norm", "silu"} & ops, kind
        assert "silu" not in [n.attrs.get("activation") for n in near.graph.nodes if n.op == "linear"]
        assert near.metadata["compile"]["passes"]["fuse_rms_norm"] == 0
        assert near.metadata["compile"]["passes"]["fuse_silu"] == 0


def test_rotary_embedding_becomes_one_op(tmp_path, monkeypatch):
    """transformers' Llama rotary embedding (`LlamaRotaryEmbedding` for cos/sin,
    `apply_rotary_pos_emb` on q and k: mul, slice, slice, neg, cat, mul, add each) becomes one
    ``rotary_embedding`` node per tensor. Agrees with torch at 1e-5 for several sequence lengths,
    and is bit-identical to the same export with the pass switched off. Left alone: rotate_half with
    the halves the other way round (another rotation), and a rotate_half whose result is also a graph
    output."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    from nac.compile import passes

    cfg = LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)

    class Rope(nn.Module):
        def __init__(self, kind="llama"):
            super().__init__()
            self.q, self.k, self.kind = nn.Linear(32, 32), nn.Linear(32, 16), kind
            self.rotary = LlamaRotaryEmbedding(cfg)

        def forward(self, x, position_ids):
            b, s, _ = x.shape
            q = self.q(x).view(b, s, 4, 8).transpose(1, 2)
            k = self.k(x).view(b, s, 2, 8).transpose(1, 2)
            cos, sin = self.rotary(x, position_ids)
            if self.kind == "llama":
                return apply_rotary_pos_emb(q, k, cos, sin)
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
            if self.kind == "swapped":  # cat(x1, -x2): the inverse rotation, not the one the op computes
                return q * cos + torch.cat([q[..., :4], -q[..., 4:]], dim=-1) * sin
            rot = torch.cat([-k[..., 4:], k[..., :4]], dim=-1)  # "shared": the rotation is read twice
            return k * cos + rot * sin, rot

    torch.manual_seed(0)
    x, pos = torch.randn(2, 5, 32), torch.arange(3, 8).expand(2, 5)
    batch, seq = Dim("batch", max=8), Dim("seq", max=64)
    dyn = {"x": {0: batch, 1: seq}, "position_ids": {0: batch, 1: seq}}
    variants = [((torch.randn(1, 1, 32), torch.tensor([[40]])), {}),
                ((torch.randn(3, 17, 32), torch.arange(17).expand(3, 17)), {})]
    module = Rope().eval()
    fused = export_and_compare(module, (x, pos), tmp_path, dynamic_shapes=dyn, rel=1e-5, variants=variants)
    ops = [n.op for n in fused.graph.nodes]
    assert ops.count("rotary_embedding") == 2 and "neg" not in ops
    assert ops.count("cat") == 1  # the angles' cat(freqs, freqs), before cos and sin
    assert fused.metadata["compile"]["passes"]["fuse_rotary_embedding"] == 2

    def off(g):
        return 0

    off.__name__ = "fuse_rotary_embedding"
    with monkeypatch.context() as mp:
        mp.setattr(passes, "fuse_rotary_embedding", off)
        apart = nac.load(nac.export(module, (x, pos), tmp_path / "apart.nac", dynamic_shapes=dyn))
    assert "rotary_embedding" not in {n.op for n in apart.graph.nodes}
    for feeds in ([x.numpy(), pos.numpy()], [v.numpy() for v in variants[1][0]]):
        for got, want in zip(fused.run(feeds), apart.run(feeds)):
            np.testing.assert_array_equal(got, want)
    for kind in ("swapped", "shared"):
        near = export_and_compare(Rope(kind).eval(), (x, pos), tmp_path, dynamic_shapes=dyn, rel=1e-5,
                                  name=f"{kind}.nac", variants=variants[:1])
        assert "rotary_embedding" not in {n.op for n in near.graph.nodes}, kind
        assert near.metadata["compile"]["passes"]["fuse_rotary_embedding"] == 0, kind


def test_sibling_linears_become_one_product(tmp_path, monkeypatch):
    """Linears reading one input (attention's Q, K and V; here with a bias on two of the three)
    become one linear over the concatenated weights, whose output slices feed the old readers;
    linears with another activation, a weight shared with another reader, or ternary weights (one
    scale per tensor) stay apart. Float32 agrees with torch at 1e-5; int8 (with float or int8
    activations) agrees at 1e-5 with the same export with the pass switched off; the merged weight
    records its parts' state_dict keys."""
    from nac.compile import passes

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(32)
            self.q_proj, self.k_proj, self.v_proj = nn.Linear(32, 32), nn.Linear(32, 16, bias=False), nn.Linear(32, 16)
            self.gate, self.up = nn.Linear(32, 48), nn.Linear(32, 48, bias=False)  # silu vs none: apart
            self.shared = nn.Linear(32, 8)  # also applied to another input: apart

        def forward(self, x):
            h = self.norm(x)
            b, s, _ = h.shape
            q = self.q_proj(h).view(b, s, 4, 8).transpose(1, 2)
            k = self.k_proj(h).view(b, s, 2, 8).transpose(1, 2)
            v = self.v_proj(h).view(b, s, 2, 8).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2)
            h2 = a.reshape(b, s, 32) + x
            return h2, F.silu(self.gate(h2)) * self.up(h2), self.shared(h) + self.shared(x)

    torch.manual_seed(0)
    module = Attention().eval()
    x = (torch.randn(2, 7, 32),)
    dyn = {"x": {0: Dim("batch", max=8), 1: Dim("seq", max=64)}}
    model = export_and_compare(module, x, tmp_path, dynamic_shapes=dyn, rel=1e-5,
                               variants=[((torch.randn(1, 1, 32),), {}), ((torch.randn(3, 19, 32),), {})])
    compile_meta = model.metadata["compile"]
    assert compile_meta["passes"]["merge_sibling_linears"] == 2
    linears = [n for n in model.graph.nodes if n.op == "linear"]
    assert len(linears) == 5  # q+k+v, gate, up, shared twice
    merged = next(n for n in linears if model.graph.values[n.outputs[0]].shape[-1] == 64)
    assert merged.inputs[1] == "{q_proj,k_proj,v_proj}.weight"
    assert compile_meta["state_dict_keys"][merged.inputs[1]] == ["q_proj.weight", "k_proj.weight", "v_proj.weight"]
    assert compile_meta["state_dict_keys"][merged.inputs[2]] == ["q_proj.bias", "v_proj.bias"]
    bias = model.graph.params[merged.inputs[2]]
    np.testing.assert_array_equal(bias[32:48], 0)  # k_proj has none
    np.testing.assert_array_equal(bias[48:], module.v_proj.bias.detach().numpy())

    feeds = [x[0].numpy()]
    specs = ("int8", "int8+a8")
    merged = {s: nac.load(nac.export(module, x, tmp_path / f"{s}.nac", dynamic_shapes=dyn, quantize=s)) for s in specs}
    with monkeypatch.context() as mp:
        mp.setattr(passes, "merge_sibling_linears", lambda g: (0, {}))
        apart = {s: nac.load(nac.export(module, x, tmp_path / f"{s}-apart.nac", dynamic_shapes=dyn, quantize=s))
                 for s in specs}
    for s in specs:
        assert merged[s].metadata["compile"]["passes"]["merge_sibling_linears"] == 2, s
        assert sum(n.op == "linear" for n in apart[s].graph.nodes) == 7
        assert all(apart[s].graph.values[n.inputs[1]].quant for n in apart[s].graph.nodes if n.op == "linear")
        for got, want in zip(merged[s].run(feeds), apart[s].run(feeds)):
            assert_close(got, want, 1e-5, s)
    # a per-layer choice splits the group: k_proj with int8 activations stays apart from q and v
    mixed = nac.load(nac.export(module, x, tmp_path / "mixed.nac", dynamic_shapes=dyn,
                                quantize={"k_proj": "int8+a8", "*": "int8"}))
    assert mixed.metadata["compile"]["passes"]["merge_sibling_linears"] == 1
    ternary = nac.load(nac.export(module, x, tmp_path / "t.nac", dynamic_shapes=dyn, quantize="ternary"))
    assert ternary.metadata["compile"]["passes"]["merge_sibling_linears"] == 0


def test_linear_weights_are_stored_in_the_layout_their_shape_prefers(tmp_path):
    """A linear weight is stored [in, out] when it is at least as wide as deep and [out, in] when
    deeper than wide (`passes.prefer_io`), from either starting layout: nn.Linear's [out, in] and
    GPT-2's Conv1D [in, out]. ``compile.transposed`` lists exactly the tensors stored transposed
    against the state_dict. One row (the matrix-vector path) and several rows agree with torch."""
    from transformers.pytorch_utils import Conv1D

    from nac.compile.passes import prefer_io

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.wide, self.deep = nn.Linear(16, 64), nn.Linear(64, 16)  # [out, in]
            self.conv_wide, self.conv_deep = Conv1D(48, 16), Conv1D(16, 48)  # [in, out]: 16 -> 48, 48 -> 16

        def forward(self, x):
            return self.deep(torch.relu(self.wide(x))), self.conv_deep(torch.tanh(self.conv_wide(x)))

    torch.manual_seed(0)
    module = Mixed().eval()
    dyn = {"x": {0: Dim("rows", max=64)}}
    model = export_and_compare(module, (torch.randn(5, 16),), tmp_path, dynamic_shapes=dyn, rel=1e-5,
                               variants=[((torch.randn(1, 16),), {})])
    layouts = {n.inputs[1]: n.attrs.get("weight_layout", "oi") for n in model.graph.nodes if n.op == "linear"}
    assert layouts == {"wide.weight": "io", "deep.weight": "oi", "conv_wide.weight": "io", "conv_deep.weight": "oi"}
    assert [prefer_io(16, 64), prefer_io(64, 16), prefer_io(32, 32)] == [True, False, True]
    assert model.metadata["compile"]["transposed"] == ["conv_deep.weight", "wide.weight"]
    assert model.graph.params["conv_deep.weight"].shape == (16, 48)
