"""Build an emitted project, run it (natively, or under QEMU for RISC-V), and compare its outputs
with the engine's."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nac.errors import NacError

INSTALL = "apt-get install gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf qemu-system-misc"


@dataclass
class RunResult:
    """One run of an emitted program: outputs (graph order), RISC-V instructions retired and
    cycles (None on the host), host wall time in ns (None on RISC-V), and what it printed."""

    outputs: list
    instret: int | None
    cycles: int | None
    time_ns: int | None
    stdout: str
    elf_bytes: int = 0
    max_rel_err: list = field(default_factory=list)


def toolchain_check(target: str, rvv: bool = False) -> None:
    """Raise NacError naming what is missing to build and run ``target`` (with ``rvv``: clang
    too), and how to install it."""
    need = {"host": ["gcc", "make"], "riscv32": ["riscv64-unknown-elf-gcc", "qemu-system-riscv32", "make"],
            "riscv64": ["riscv64-unknown-elf-gcc", "qemu-system-riscv64", "make"]}[target] + (["clang"] if rvv else [])
    missing = [t for t in need if shutil.which(t) is None]
    if missing:
        how = "install gcc and make" if target == "host" else f"on Debian/Ubuntu: {INSTALL}{' clang' if rvv else ''}"
        raise NacError(f"building for {target} needs {', '.join(missing)}, not found on PATH ({how})")
    if target != "host":
        probe = subprocess.run(["riscv64-unknown-elf-gcc", "--specs=picolibc.specs", "-E", "-x", "c", "-"],
                               input="#include <stdio.h>\n", capture_output=True, text=True)
        if probe.returncode != 0:
            raise NacError(f"building for {target} needs picolibc for riscv64-unknown-elf (on Debian/Ubuntu: {INSTALL})")


def build_and_run(report, inputs: list[np.ndarray], timeout: float = 900, make_vars: dict | None = None,
                  env: dict | None = None) -> RunResult:
    """`make run` in the emitted folder with ``inputs`` (graph order) written to input.bin.
    ``make_vars`` are passed to make (host: ``{"FAST": 0, "OPENMP": 0}`` builds the plain loops);
    ``env`` adds environment variables for the run (``OMP_NUM_THREADS``, ``NAC_REPEAT``).

    Raises:
        NacError: a missing tool, a failed build (the compiler's message), a program that fails
            or times out, or an output.bin of the wrong size.
    """
    toolchain_check(report.target, getattr(report, "rvv", False))
    folder = Path(report.folder)
    if len(inputs) != len(report.inputs):
        raise NacError(f"{report.name} takes {len(report.inputs)} inputs, got {len(inputs)}")
    blob = bytearray()
    for (name, dtype, shape), x in zip(report.inputs, inputs):
        x = np.ascontiguousarray(x, dtype)
        if x.shape != tuple(shape):
            raise NacError(f"input {name!r} has shape {list(x.shape)}, the emitted program expects {list(shape)}")
        blob += x.astype(x.dtype.newbyteorder("<"), copy=False).tobytes()
    (folder / "input.bin").write_bytes(bytes(blob))
    (folder / "output.bin").unlink(missing_ok=True)
    args = [f"{k}={v}" for k, v in (make_vars or {}).items()]
    run_env = {**os.environ, **{k: str(v) for k, v in (env or {}).items()}}
    build = subprocess.run(["make", "-s", "all", *args], cwd=folder, capture_output=True, text=True, timeout=timeout)
    if build.returncode != 0:
        raise NacError(f"building {folder} for {report.target} failed:\n{(build.stderr or build.stdout)[-3000:]}")
    try:
        run = subprocess.run(["make", "-s", "run", *args], cwd=folder, capture_output=True, text=True, timeout=timeout,
                             env=run_env)
    except subprocess.TimeoutExpired:
        raise NacError(f"{report.name} on {report.target} did not finish within {timeout:.0f} s") from None
    if run.returncode != 0:
        raise NacError(f"{report.name} on {report.target} failed (exit {run.returncode}): {(run.stdout + run.stderr)[-2000:]}")
    data = (folder / "output.bin").read_bytes()
    outs, off = [], 0
    for name, dtype, shape in report.outputs:
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if off + n > len(data):
            raise NacError(f"output.bin has {len(data)} bytes; output {name!r} needs bytes {off}..{off + n}")
        outs.append(np.frombuffer(data[off:off + n], np.dtype(dtype).newbyteorder("<")).reshape(shape).astype(dtype))
        off += n
    text = run.stdout + run.stderr

    def grab(key):
        m = re.search(key + r"=(\d+)", text)
        return int(m.group(1)) if m else None
    elf = folder / (f"{report.name}.elf" if report.target != "host" else report.name)
    return RunResult(outs, grab("instret"), grab("cycles"), grab("time_ns"), text, elf.stat().st_size if elf.exists() else 0)


def example_inputs(model, report, seed: int = 0) -> list[np.ndarray]:
    """Random inputs for the emitted shapes that the engine accepts: floats ~ N(0, 1); integer
    inputs in [0, 100) (or [0, 2) if the model rejects those, e.g. a small vocabulary); masks of ones
    for inputs named like ``*mask*``."""
    rng = np.random.default_rng(seed)
    for hi in (100, 2):
        xs = []
        for name, dtype, shape in report.inputs:
            if np.issubdtype(dtype, np.floating):
                xs.append(rng.standard_normal(shape).astype(dtype))
            elif "mask" in name:
                xs.append(np.ones(shape, dtype))
            else:
                xs.append(rng.integers(0, hi, shape).astype(dtype))
        try:
            model.run(xs)
            return xs
        except NacError:
            continue
    return xs


def verify(model, target: str = "host", shapes: dict | None = None, out_dir=None, inputs=None,
           rtol: float = 1e-4, timeout: float = 900, offload: str = "none", register_map="scalar",
           name: str | None = None, make_vars: dict | None = None, env: dict | None = None,
           rvv: bool = False) -> tuple:
    """Emit ``model`` for ``target``, build and run it, and compare every output with the engine's
    on the same inputs: ``max |c - engine| / max(1, max |engine|)`` per output must be ≤ ``rtol``.
    ``make_vars`` and ``env`` go to `build_and_run` (e.g. the host's plain build, thread count).

    Returns:
        ``(report, result)``; ``result.max_rel_err`` holds the error per output.
    Raises:
        NacError: as `emit` and `build_and_run`, or outputs that differ (naming the output and error).
    """
    import nac
    from nac.accel.emit import emit

    m = model if isinstance(model, nac.Model) else nac.load(model)
    if offload == "acalsim" and target != "host":
        raise NacError("running --offload acalsim on RISC-V needs ACALSim's QEMU-SST build: stock QEMU has no device at "
                       "0x10300000 (a store there faults). Emit without --verify and run it there, or verify on "
                       "--target host, where a software model of the device stands in")
    toolchain_check(target, rvv)
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="nac-emit-")) / m.path.stem
    report = emit(m, folder, target=target, shapes=shapes, offload=offload, register_map=register_map, name=name,
                  rvv=rvv)
    xs = list(inputs) if inputs is not None else example_inputs(m, report)
    want = m.run(xs)
    result = build_and_run(report, xs, timeout=timeout, make_vars=make_vars, env=env)
    for (name, _, _), got, ref in zip(report.outputs, result.outputs, want):
        if np.issubdtype(ref.dtype, np.floating):
            err = float(np.max(np.abs(got.astype(np.float64) - ref)) / max(1.0, float(np.max(np.abs(ref)))) if ref.size else 0.0)
        else:
            err = float(np.count_nonzero(got != ref))
        result.max_rel_err.append(err)
        if not err <= rtol:
            raise NacError(f"{target} output {name!r} differs from the engine: max relative error {err:.3g} > {rtol}")
    return report, result
