"""Coverage-guided fuzzing of one NAC target with atheris (libFuzzer).

    python tests/fuzz/run.py reader [libFuzzer options]     # e.g. -runs=200000 -max_total_time=600
    python tests/fuzz/run.py tisa   [libFuzzer options]

The target module's Python code (the reader, schemas, validator, planner, TISA loader and VM) is
instrumented for coverage; the Numba kernels are not (atheris rewrites bytecode, which Numba
compiles). libFuzzer's mutations go through `nacfuzz.mutate`, which keeps the container's CRCs
right so the parsers behind them are reached. Any exception that is not a `nac.NacError` is a
finding: libFuzzer saves the input as ``crash-*`` (a segfault, a time-out past ``-timeout`` or
memory past ``-rss_limit_mb`` likewise) and the run ends with a non-zero status. Copy the input
into ``tests/fuzz/regressions/TARGET/`` once fixed; ``test_fuzz.py`` replays that folder in CI.
"""
from __future__ import annotations

import os
import random
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("NAC_NUM_THREADS", "1")

_NUMBA = ["nac.engine.kernels", *(f"nac.engine.kernels.{m}" for m in ("activation", "attention", "elementwise", "linalg",
                                                                       "nn", "quant", "registry", "shape", "simd")),
          "nac.tokenizer_vm.kernels"]
with atheris.instrument_imports(include=["nac"], exclude=_NUMBA):
    import nac  # noqa: F401
    import nac.apps.cli  # noqa: F401
    import nac.format.validate  # noqa: F401
    import nac.tokenizer_vm.vm  # noqa: F401
import nacfuzz  # noqa: E402


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in nacfuzz.TARGETS:
        sys.exit(f"usage: run.py {{{','.join(nacfuzz.TARGETS)}}} [libFuzzer options] [CORPUS_DIR ...]")
    target = sys.argv.pop(1)
    runner = nacfuzz.RUNNERS[target]

    def test_one_input(data: bytes) -> None:
        runner(data)

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        try:
            out = nacfuzz.mutate(data, rng, target, lambda b: atheris.Mutate(b, max(len(b) * 2, 64)))
        except Exception as exc:  # a bug in the mutator is not a finding in NAC: say so, mutate bytes instead
            print(f"nacfuzz: mutator failed ({type(exc).__name__}: {exc}); using libFuzzer's", file=sys.stderr)
            out = atheris.Mutate(data, max_size)
        return out if len(out) <= max_size else data

    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):  # no corpus folder given: start from the seeds
        corpus = Path(tempfile.mkdtemp(prefix=f"nacfuzz-{target}-"))
        for k, blob in enumerate(nacfuzz.seeds(target)):
            (corpus / f"seed-{k}").write_bytes(blob)
        regressions = nacfuzz.REGRESSIONS / target
        args += [str(corpus)] + ([str(regressions)] if regressions.is_dir() else [])
    if not any(a.startswith("-max_len") for a in args):
        args.append("-max_len=1000000")
    atheris.Setup(args, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
