"""Where a model's time goes: each op's share of one run, from `Plan.profile`.

    python bench/profile_ops.py MODEL.nac NAME=d0,d1,... [NAME=...] [--runs 20] [--top 15]

Inputs are zeros of the given shapes (token ids 0), which is enough for timing. Prints the ops
by total time (calls, ms, share) and the slowest single nodes; unset OPENBLAS_CORETYPE /
OPENBLAS_L2_SIZE in the command to measure numpy's own BLAS kernels.
"""
from __future__ import annotations

import argparse
import os
import platform

import numpy as np

import nac


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("shapes", nargs="+", metavar="NAME=d0,d1,...")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args(argv)
    m = nac.load(a.model)
    shapes = {k: tuple(int(x) for x in v.split(",")) for k, v in (s.split("=", 1) for s in a.shapes)}
    plan = m.plan(shapes)
    for name, buf in plan.inputs.items():
        buf[...] = 1 if "mask" in name else 0
    rows = plan.profile(a.runs)
    total = sum(r["ms"] for r in rows)
    print(f"{a.model} {shapes}: {total:.2f} ms per run over {len(rows)} steps "
          f"({platform.processor() or platform.machine()}, OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')})")
    by_op: dict[str, list[float]] = {}
    for r in rows:
        by_op.setdefault(r["op"], []).append(r["ms"])
    print(f"{'op':32s} {'calls':>5s} {'ms':>8s} {'share':>6s}")
    for op, ms in sorted(by_op.items(), key=lambda kv: -sum(kv[1]))[:a.top]:
        print(f"{op:32s} {len(ms):5d} {sum(ms):8.3f} {sum(ms) / total:6.1%}")
    print("slowest nodes:")
    for r in sorted(rows, key=lambda r: -r["ms"])[:5]:
        print(f"  {r['ms']:7.3f} ms  #{r['index']} {r['op']} ({r['source'] or '-'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
