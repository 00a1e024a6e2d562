"""The fuzzing harness in CI: every input that ever failed (``regressions/``) is replayed, each in
its own child process with a time and memory limit, so a crash, a hang or a memory blow-up is
caught and named; then a short coverage-guided run of each target (atheris) must end with no
finding. ``make fuzz`` runs the long campaign."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import have

HERE = Path(__file__).parent
REGRESSIONS = sorted(p for p in (HERE / "regressions").glob("*/*") if p.is_file())
SMOKE_SECONDS = int(os.environ.get("NAC_FUZZ_SMOKE_SECONDS", "10"))

REPLAY = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
sys.path.insert(0, {here!r})
import nacfuzz
nacfuzz.RUNNERS[{target!r}](open({path!r}, "rb").read())
print("ok")
"""


def _env():
    return dict(os.environ, NAC_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))


@pytest.mark.parametrize("path", REGRESSIONS, ids=[f"{p.parent.name}/{p.name}" for p in REGRESSIONS])
def test_regression_input(path):
    """Success or a NacError only: any other exception, a signal, a time-out or more than 6 GB of
    address space fails (the child's output says which)."""
    code = REPLAY.format(limit=6 << 30, here=str(HERE), target=path.parent.name, path=str(path))
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=_env())
    except subprocess.TimeoutExpired:
        pytest.fail(f"{path.name}: hung (more than 180 s)")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), \
        f"{path.name}: exit status {r.returncode}\n{r.stderr[-3000:]}"


@pytest.mark.heavy
@pytest.mark.skipif(not have("atheris"), reason="needs atheris (pip install 'nac[test]')")
@pytest.mark.parametrize("target", ["reader", "tisa"])
def test_fuzz_smoke(target, tmp_path):
    """A short atheris run from the seeds and the regression corpus: no crash, hang (-timeout) or
    memory blow-up (-rss_limit_mb). A finding is saved in tmp_path and its traceback shown."""
    cmd = [sys.executable, str(HERE / "run.py"), target, f"-max_total_time={SMOKE_SECONDS}", "-timeout=60",
           "-rss_limit_mb=4096", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=SMOKE_SECONDS + 240, cwd=tmp_path, env=_env())
    found = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-", "leak-")))
    assert r.returncode == 0 and not found, f"finding {found}:\n{r.stderr[-4000:]}"
    runs = [line for line in r.stderr.splitlines() if line.startswith("stat::number_of_executed_units")]
    assert runs and int(runs[0].split(":")[-1]) > 100, r.stderr[-2000:]
