"""Test vectors carried inside a `.nac` file, and `nac verify`: replay them, or compare with a live
PyTorch model, and report per output how far the engine is from the reference.

The test-vectors section (optional kind 6, see SPEC.md) is a safetensors blob: for case ``i``, the
graph inputs as ``case{i}.input.{name}`` and the reference model's outputs as
``case{i}.output.{name}``; its ``__metadata__`` holds ``cases`` (the count), ``tolerance`` (relative
to each output's scale, below) and ``reference`` (what produced the outputs, e.g. ``torch 2.13.0``).
Like ExecuTorch's bundled programs, the check then runs anywhere the file goes.

Agreement, per output: ``max_abs = max |engine - reference|``; ``scale = max(1, max |reference|)``;
``max_rel = max_abs / scale``; the output passes when ``max_rel <= tolerance`` (integer and bool
outputs must be equal). ``mean_abs`` is reported too.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nac.errors import NacError, NacFormatError

__all__ = ["OutputCheck", "VerifyReport", "bundle_vectors", "verify", "compare"]

DEFAULT_TOLERANCE = 1e-4
_MAX_CASES = 4096


@dataclass
class OutputCheck:
    """One output of one case: its name, shape, the differences and the verdict."""

    case: int
    name: str
    shape: tuple
    max_abs: float
    mean_abs: float
    max_rel: float
    tolerance: float
    passed: bool
    mismatched: int = 0  # integer/bool outputs: elements that differ


@dataclass
class VerifyReport:
    """What `verify` found: every output of every case, and where the reference came from."""

    model: str
    reference: str
    tolerance: float
    checks: list[OutputCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def max_rel(self) -> float:
        return max((c.max_rel for c in self.checks), default=0.0)

    def to_dict(self) -> dict:
        return {"model": self.model, "reference": self.reference, "tolerance": self.tolerance,
                "passed": self.passed, "max_rel": self.max_rel,
                "checks": [{**vars(c), "shape": list(c.shape)} for c in self.checks]}

    def table(self) -> str:
        """A fixed-width text table, one row per output per case."""
        rows = [f"{'case':>4}  {'output':<24} {'shape':<18} {'max abs':>10} {'mean abs':>10} {'max rel':>10}  result"]
        for c in self.checks:
            verdict = "pass" if c.passed else "FAIL" + (f" ({c.mismatched} differ)" if c.mismatched else "")
            rows.append(f"{c.case:>4}  {c.name[:24]:<24} {str(list(c.shape))[:18]:<18} {c.max_abs:>10.3g} "
                        f"{c.mean_abs:>10.3g} {c.max_rel:>10.3g}  {verdict}")
        return "\n".join(rows)


def compare(case: int, name: str, got: np.ndarray, want: np.ndarray, tolerance: float) -> OutputCheck:
    """Compare one engine output with its reference (see the module docstring)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return OutputCheck(case, name, tuple(want.shape), float("inf"), float("inf"), float("inf"), tolerance, False)
    if want.dtype.kind in "biu":
        differ = int(np.count_nonzero(got != want))
        d = np.abs(got.astype(np.float64) - want.astype(np.float64)) if want.size else np.zeros(1)
        return OutputCheck(case, name, want.shape, float(d.max(initial=0)), float(d.mean()) if d.size else 0.0,
                           float(differ > 0), tolerance, differ == 0, differ)
    g64, w64 = got.astype(np.float64), want.astype(np.float64)
    same_nan = np.array_equal(np.isnan(g64), np.isnan(w64))
    finite = ~np.isnan(w64) & ~np.isnan(g64)
    d = np.abs(g64[finite] - w64[finite])
    max_abs = float(d.max(initial=0.0))
    scale = max(1.0, float(np.abs(w64[finite]).max(initial=0.0)))
    max_rel = max_abs / scale if same_nan else float("inf")
    return OutputCheck(case, name, want.shape, max_abs, float(d.mean()) if d.size else 0.0, max_rel, tolerance,
                       bool(same_nan and max_rel <= tolerance))


# ------------------------------------------------------------------------------------------------
# making inputs
# ------------------------------------------------------------------------------------------------
def vary(example: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A new input like ``example`` (same shape and dtype): floats drawn from a normal with the
    example's mean and spread; integers and bools drawn from the values the example holds (token
    ids stay valid ids, an all-ones mask stays all ones)."""
    a = np.asarray(example)
    if a.dtype.kind == "f":
        spread = float(a.std()) if a.size > 1 else 1.0
        return (rng.standard_normal(a.shape) * (spread or 1.0) + float(a.mean() if a.size else 0)).astype(a.dtype)
    seen = np.unique(a) if a.size else np.zeros(1, a.dtype)
    return rng.choice(seen, size=a.shape).astype(a.dtype)


def _flat_tensors(args, kwargs) -> list:
    import torch

    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    return [t for t in (*args, *(kwargs or {}).values()) if isinstance(t, torch.Tensor)]


def _torch_outputs(module, args, kwargs) -> list[np.ndarray]:
    import torch
    from torch.utils._pytree import tree_leaves

    with torch.no_grad():
        out = module(*(args if isinstance(args, (tuple, list)) else (args,)), **(kwargs or {}))
    return [t.detach().cpu().numpy() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def _variants(module, args, kwargs, count: int, seed: int):
    """``count`` (args, kwargs) pairs: the example itself first, then variations (`vary`)."""
    import torch

    rng = np.random.default_rng(seed)
    kwargs = {k: v for k, v in (kwargs or {}).items() if v is not None}
    yield args, kwargs
    for _ in range(count - 1):
        new = lambda t: torch.from_numpy(vary(t.numpy(), rng)) if isinstance(t, torch.Tensor) else t  # noqa: E731
        yield (tuple(new(a) for a in (args if isinstance(args, (tuple, list)) else (args,))),
               {k: new(v) for k, v in kwargs.items()})


def bundle_vectors(module, args, kwargs, graph, meta: dict, count: int, *, seed: int = 0,
                   tolerance: float | None = None) -> bytes:
    """The test-vectors section for ``count`` cases: the export's example and ``count - 1``
    variations (`vary`), each run through ``module`` (torch) for the expected outputs.

    The tolerance stored is ``tolerance`` if given, else `DEFAULT_TOLERANCE` for a float export and,
    for a quantised one, four times the engine's largest error on these cases (at least the
    default), so replaying catches a file or machine that drifted from what was shipped.

    Raises:
        NacExportError: ``count`` out of range, or the inputs do not map onto the graph's inputs.
    """
    import torch

    from nac.errors import NacExportError
    from nac.engine.model import Model
    from nac.format.container import NacFile

    if not 1 <= count <= _MAX_CASES:
        raise NacExportError(f"bundle_inputs must be between 1 and {_MAX_CASES}, not {count}")
    tensors: dict[str, np.ndarray] = {}
    engine = Model(NacFile(Path("<bundle>"), (1, 0), [], graph, meta))
    worst = 0.0
    for i, (a, kw) in enumerate(_variants(module, args, kwargs, count, seed)):
        flat = _flat_tensors(a, kw)
        if len(flat) != len(graph.inputs):
            raise NacExportError(f"bundle_inputs: the example has {len(flat)} tensors, the graph {len(graph.inputs)} inputs")
        want = _torch_outputs(module, a, kw)
        if len(want) != len(graph.outputs):
            raise NacExportError(f"bundle_inputs: the module returns {len(want)} tensors, the graph "
                                 f"{len(graph.outputs)} outputs")
        feeds = {name: t.detach().cpu().numpy() for name, t in zip(graph.inputs, flat)}
        got = engine.run(feeds)
        for name, x in feeds.items():
            tensors[f"case{i}.input.{name}"] = np.ascontiguousarray(x)
        for name, g_out, w in zip(graph.outputs, got, want):
            tensors[f"case{i}.output.{name}"] = np.ascontiguousarray(w)
            worst = max(worst, compare(i, name, g_out, w, 1.0).max_rel)
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCE
        if (meta.get("compile") or {}).get("quantize"):
            tolerance = max(DEFAULT_TOLERANCE, 4 * worst)
    from safetensors.numpy import save

    return save(tensors, metadata={"cases": str(count), "tolerance": repr(float(tolerance)),
                                   "reference": f"torch {torch.__version__}"})


# ------------------------------------------------------------------------------------------------
# replaying
# ------------------------------------------------------------------------------------------------
def _section_cases(model) -> tuple[list[tuple[dict, list]], float, str]:
    """The bundled cases ([(feeds, expected outputs)], tolerance, reference) of a loaded model.

    Raises:
        NacFormatError: the file has no test vectors, or they do not match the graph.
    """
    f = model.file
    tensors = f.read_test_vectors()
    path = f.path
    if tensors is None:
        raise NacFormatError(f"{path}: has no test vectors (export with bundle_inputs=N / --bundle-inputs N, "
                             f"or verify against a model with --reference)")
    meta = _section_metadata(f)
    try:
        count = int(meta.get("cases", ""))
        tolerance = float(meta.get("tolerance", DEFAULT_TOLERANCE))
    except (ValueError, TypeError, OverflowError):  # text that is no number, or a list, or 1e999 as an int
        raise NacFormatError(f"{path}: test-vectors metadata is malformed ({meta!r:.200})") from None
    if not 1 <= count <= _MAX_CASES or not tolerance >= 0:
        raise NacFormatError(f"{path}: test-vectors section claims {count} cases at tolerance {tolerance}")
    g = model.graph
    cases = []
    for i in range(count):
        try:
            feeds = {n: tensors[f"case{i}.input.{n}"] for n in g.inputs}
            expected = [tensors[f"case{i}.output.{n}"] for n in g.outputs]
        except KeyError as exc:
            raise NacFormatError(f"{path}: test-vectors section lacks tensor {exc.args[0]!r}") from None
        cases.append((feeds, expected))
    return cases, tolerance, str(meta.get("reference", "bundled outputs"))


def _section_metadata(f) -> dict:
    import struct

    s = f.test_vectors
    buf = f._maps[0]
    (hlen,) = struct.unpack_from("<Q", buf, s.offset)
    from nac.format.container import parse_json

    header = parse_json(bytes(buf[s.offset + 8:s.offset + 8 + hlen]), f"{f.path}: test-vectors header")
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def bundled_status(model) -> dict | None:
    """``{"cases", "tolerance", "reference"}`` of a loaded model's test vectors, or None."""
    if model.file.test_vectors is None:
        return None
    try:
        cases, tolerance, reference = _section_cases(model)
    except NacError as exc:
        return {"cases": 0, "problem": str(exc)}
    return {"cases": len(cases), "tolerance": tolerance, "reference": reference}


def verify(model_or_path, *, reference=None, task: str | None = None, tolerance: float | None = None,
           cases: int = 3, seed: int = 1) -> VerifyReport:
    """Run the engine on test inputs and compare its outputs with a reference.

    Args:
        model_or_path: a `.nac` path or a loaded `nac.Model`.
        reference: None to replay the file's bundled test vectors; otherwise the reference model:
            a ``torch.nn.Module`` (given with the export's example inputs as ``(module, args)`` or
            ``(module, args, kwargs)``), or a source `nac export` understands (a packaged model
            name, a Hugging Face folder, ``module:function``), run with torch on ``cases`` fresh
            inputs made from its example (`vary`).
        task: the task to resolve a source ``reference`` with (default: the file's).
        tolerance: overrides the bundled (or default 1e-4) tolerance, relative to output scale.
    Returns:
        A `VerifyReport` (``report.passed``, ``report.table()``, ``report.to_dict()``).
    Raises:
        NacFormatError: the file is invalid, or has no test vectors and no reference was given.
        NacError: the reference's inputs or outputs do not match the file's graph.
    """
    import nac

    model = model_or_path if isinstance(model_or_path, nac.Model) else nac.load(model_or_path)
    name = str(model.file.path)
    g = model.graph
    if reference is None:
        replay, tol, ref_name = _section_cases(model)
    else:
        module, args, kwargs, ref_name = _reference(reference, task or model.metadata.get("task"))
        tol = DEFAULT_TOLERANCE
        replay = []
        for a, kw in _variants(module, args, kwargs, cases, seed):
            flat = _flat_tensors(a, kw)
            if len(flat) != len(g.inputs):
                raise NacError(f"reference {ref_name}: its example has {len(flat)} tensors, {name} has "
                               f"{len(g.inputs)} inputs")
            replay.append(({n: t.numpy() for n, t in zip(g.inputs, flat)}, _torch_outputs(module, a, kw)))
    tol = tolerance if tolerance is not None else tol
    report = VerifyReport(name, ref_name, tol)
    for i, (feeds, expected) in enumerate(replay):
        got = model.run(feeds)
        if len(expected) != len(got):
            raise NacError(f"reference {ref_name} gives {len(expected)} outputs, {name} has {len(got)}")
        for out_name, g_out, w in zip(g.outputs, got, expected):
            report.checks.append(compare(i, out_name, g_out, w, tol))
    return report


def _reference(reference, task):
    """(module, args, kwargs, description) of a reference given to `verify`."""
    if isinstance(reference, (tuple, list)):
        module, args, *rest = reference
        return module, args, (rest[0] if rest else {}), type(module).__name__
    try:
        import torch
    except ImportError:
        raise NacError("verifying against a live model needs torch (pip install 'nac[export]')") from None
    if isinstance(reference, torch.nn.Module):
        raise NacError("give a module reference with its example inputs: reference=(module, args[, kwargs])")
    from nac.apps.sources import resolve

    job = resolve(str(reference), task)
    return job.module, job.args, job.kwargs, str(reference)
