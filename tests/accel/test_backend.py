"""The torch.compile backend: five modes, graph breaks, QEMU-computed tensors."""
from __future__ import annotations

import shutil

import pytest

torch = pytest.importorskip("torch", reason="the backend is for torch.compile (pip install 'nac[export]')")
from torch import nn  # noqa: E402

import nac  # noqa: E402
from nac.accel import ACALSimBackend  # noqa: E402

RISCV = shutil.which("riscv64-unknown-elf-gcc") is not None and shutil.which("qemu-system-riscv32") is not None


class Breaks(nn.Module):
    """Two subgraphs: the data-dependent branch breaks the graph."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        y = torch.relu(self.a(x))
        if y.sum() > 0:
            y = y * 2
        return self.b(y), y.mean(-1)


@pytest.mark.parametrize("mode", ["eager", "trace", "compile", "codegen",
                                  pytest.param("simulate", marks=pytest.mark.skipif(
                                      not RISCV, reason="needs the RISC-V toolchain and qemu-system-misc"))])
def test_modes_agree_with_eager(mode, tmp_path, capsys):
    torch.manual_seed(0)
    m = Breaks().eval()
    x = torch.randn(3, 8)
    want = m(x)
    torch._dynamo.reset()
    backend = ACALSimBackend(mode=mode, output_dir=tmp_path, verbose=True)
    got = torch.compile(m, backend=backend)(x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert len(backend.graphs) == 2 and all(g["mode"] == mode for g in backend.graphs)
    out = capsys.readouterr().out
    if mode == "trace":
        assert "FX graph 0" in out and "FX graph 1" in out
    if mode in ("codegen", "simulate"):
        for i in (0, 1):
            assert (tmp_path / f"graph_{i}" / f"graph_{i}.nac").is_file()
            assert (tmp_path / f"graph_{i}" / "firmware" / "Makefile").is_file()
    if mode == "simulate":
        assert "instructions retired" in out  # the tensors came from the program QEMU ran


def test_bad_mode_and_fallback(tmp_path):
    with pytest.raises(nac.NacError, match="unknown mode 'fast'"):
        ACALSimBackend(mode="fast")

    class Odd(nn.Module):
        def forward(self, x):
            return torch.fft.rfft(x).abs()  # an op NAC does not lower

    x = torch.randn(2, 8)
    torch._dynamo.reset()
    backend = ACALSimBackend(mode="compile")
    with pytest.warns(UserWarning, match="runs graph 0 eagerly"):
        got = torch.compile(Odd(), backend=backend)(x)
    torch.testing.assert_close(got, Odd()(x))
    assert backend.graphs[0]["mode"] == "eager (fallback)"


@pytest.mark.parametrize("name", ["mlp", "resnet", "depthwise", "transformer", "multi_io"])
@pytest.mark.parametrize("mode", ["compile", pytest.param("simulate", marks=pytest.mark.skipif(
    not RISCV, reason="needs the RISC-V toolchain and qemu-system-misc"))])
def test_zoo_through_torch_compile(name, mode, tmp_path):
    """Every zoo model through the backend: the engine's (compile) or QEMU's (simulate) tensors
    match eager PyTorch."""
    from accel_zoo import build

    module, args, _ = build(name)
    module = module.eval()
    want = module(*args)
    torch._dynamo.reset()
    backend = ACALSimBackend(mode=mode, output_dir=tmp_path)
    got = torch.compile(module, backend=backend, dynamic=False)(*args)
    want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    assert backend.graphs and all(g["mode"] == mode for g in backend.graphs)
