"""NAC's fused kernels against torch eager on the shapes the real models give them, one process,
same thread count: attention (prefill, encoder, diffusion), bias + activation epilogues, layer
norm, softmax, linear products (packed panels, float32 and W8A8), and the thread team's hand-off.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_kernels.py [--json PATH]

Reports the median time per call (µs) of NAC's kernel, of torch, and their ratio (below 1.0 means
NAC is faster), plus the machine. The last column is what NAC ran before each fast path: for
attention `sdpa_reference` (BLAS products and a numpy softmax), for linear layers numpy's BLAS +
the fused epilogue (``NAC_GEMM=blas``), for W8A8 the dot-product kernel, for the team a serial call.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")  # what `import nac` sets when it loads numpy first

import argparse
import json
import time
from pathlib import Path

import numpy as np


def median_us(fn, repeat: int = 30) -> float:
    """Median wall time of ``fn()`` in µs (`bench_models.median_ms`, after 3 warm-up calls)."""
    from bench_models import median_ms

    return median_ms(fn, repeat) * 1e3


def attention_rows(rng, repeat):
    import torch
    import torch.nn.functional as F

    from nac.engine.kernels import attention as AT

    cases = [  # (label, B, H, L, S, E, mask, causal)
        ("MiniLM b1 seq128", 1, 12, 128, 128, 32, "bool", False),
        ("MiniLM b8 seq128", 8, 12, 128, 128, 32, "bool", False),
        ("GPT-2 prefill 512", 1, 12, 512, 512, 64, None, True),
        ("SD UNet self-attention 32x32", 2, 8, 1024, 1024, 40, None, False),
        ("SD UNet cross-attention", 2, 8, 1024, 77, 40, None, False),
        ("VAE mid-block 64x64", 1, 1, 4096, 4096, 512, None, False),
    ]
    rows = []
    for label, B, H, L, S, E, mk, causal in cases:
        q = rng.standard_normal((B, L, H, E), np.float32).transpose(0, 2, 1, 3)  # strided, as in a graph
        k = rng.standard_normal((B, L if S == L else S, H, E), np.float32).transpose(0, 2, 1, 3)
        v = rng.standard_normal((B, S, H, E), np.float32).transpose(0, 2, 1, 3)
        mask = (rng.random((B, 1, 1, S)) < 0.9) if mk else None
        out = np.empty((B, H, L, E), np.float32)
        attrs = {"scale": E ** -0.5, "is_causal": causal}
        nac_us = median_us(lambda: AT.sdpa([q, k, v, mask], [out], attrs), repeat)
        ref_us = median_us(lambda: AT.sdpa_reference(q, k, v, mask, E ** -0.5, causal, False), max(3, repeat // 5))
        tq, tk, tv = (torch.from_numpy(np.ascontiguousarray(a)) for a in (q, k, v))
        tm = None if mask is None else torch.from_numpy(mask)
        with torch.no_grad():
            torch_us = median_us(lambda: F.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm, is_causal=causal),
                                 repeat)
        rows.append({"kernel": "attention", "case": label, "nac_us": nac_us, "torch_us": torch_us,
                     "unfused_numpy_us": ref_us})
    return rows


def elementwise_rows(rng, repeat):
    import torch
    import torch.nn.functional as F

    from nac.engine import threads as T
    from nac.engine.kernels import activation as A
    from nac.engine.kernels import nn

    rows = []
    y0 = rng.standard_normal((1024, 1536)).astype(np.float32)
    b = rng.standard_normal(1536).astype(np.float32)
    ty, tb = torch.from_numpy(y0.copy()), torch.from_numpy(b)
    for act, tfn in [("gelu", F.gelu), ("silu", F.silu), ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"))]:
        y = y0.copy()
        code = A.CODES[act]
        nac_us = median_us(lambda: T.parallel_range(A.bias_act_rows, 1024, y, b, True, code, work=y.size * 4), repeat)
        with torch.no_grad():
            torch_us = median_us(lambda: tfn(ty + tb), repeat)
        rows.append({"kernel": f"bias + {act}", "case": "1024x1536", "nac_us": nac_us, "torch_us": torch_us})
    x = rng.standard_normal((1024, 384)).astype(np.float32)
    w, bb = np.ones(384, np.float32), np.zeros(384, np.float32)
    out = np.empty_like(x)
    nac_us = median_us(lambda: nn.layer_norm([x, w, bb], [out], {"axes": 1, "eps": 1e-12}), repeat)
    tx = torch.from_numpy(x)
    with torch.no_grad():
        torch_us = median_us(lambda: F.layer_norm(tx, (384,), torch.from_numpy(w), torch.from_numpy(bb), 1e-12), repeat)
    rows.append({"kernel": "layer_norm", "case": "1024x384", "nac_us": nac_us, "torch_us": torch_us})
    s = rng.standard_normal((8 * 12 * 128, 128)).astype(np.float32)
    so = np.empty_like(s)
    nac_us = median_us(lambda: nn.softmax([s], [so], {"dim": 1}), repeat)
    ts = torch.from_numpy(s)
    with torch.no_grad():
        torch_us = median_us(lambda: torch.softmax(ts, -1), repeat)
    rows.append({"kernel": "softmax", "case": "12288x128", "nac_us": nac_us, "torch_us": torch_us})
    return rows


def gemm_rows(rng, repeat):
    """Linear layers with a loaded model's (read-only) weight: NAC's packed-panel GEMM against
    torch's F.linear and against NAC's BLAS path (numpy.matmul + the fused epilogue, what
    ``NAC_GEMM=blas`` runs); the 36 products of MiniLM's encoder in turn (their 42 MB of weights
    come from memory, as in the model); W8A8 on VNNI panels against the dot-product kernel."""
    import torch
    import torch.nn.functional as F

    from nac.engine.kernels import KERNELS
    from nac.engine.kernels import linalg as L
    from nac.engine.kernels import quant as Q

    def loaded(a):
        a = a.copy()
        a.flags.writeable = False
        return a

    def timed(fn, module=L, switch="GEMM", previous="blas"):
        """(µs with the fast path, µs with ``module.switch = previous``, NAC's path before it)."""
        kept = getattr(module, switch)
        try:
            nac_us = median_us(fn, repeat)
            setattr(module, switch, previous)
            return nac_us, median_us(fn, repeat)
        finally:
            setattr(module, switch, kept)

    rows = []
    for m, k, n, act in [(16, 384, 1536, "gelu"), (128, 384, 1536, "gelu"), (1024, 384, 384, "none"),
                         (1, 768, 2304, "none")]:
        x = rng.standard_normal((m, k)).astype(np.float32)
        w, b = loaded(rng.standard_normal((n, k)).astype(np.float32)), loaded(rng.standard_normal(n).astype(np.float32))
        y = np.empty((m, n), np.float32)
        attrs = {"activation": act}
        nac_us, blas_us = timed(lambda: KERNELS["linear"]([x, w, b], [y], attrs))
        tfn = F.gelu if act == "gelu" else (lambda t: t)
        tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w.copy()), torch.from_numpy(b.copy())
        with torch.no_grad():
            torch_us = median_us(lambda: tfn(F.linear(tx, tw, tb)), repeat)
        rows.append({"kernel": f"linear + {act}", "case": f"{m}x{k} @ {k}x{n}", "nac_us": nac_us, "torch_us": torch_us,
                     "blas_us": blas_us})
    shapes = [(384, 384)] * 4 + [(384, 1536), (1536, 384)]
    layers = [(loaded(rng.standard_normal((n, k)).astype(np.float32)), loaded(np.zeros(n, np.float32)))
              for _ in range(6) for k, n in shapes]
    xs = {k: rng.standard_normal((16, k)).astype(np.float32) for k in (384, 1536)}
    ys = {n: np.empty((16, n), np.float32) for n in (384, 1536)}

    def encoder():
        for w, b in layers:
            KERNELS["linear"]([xs[w.shape[1]], w, b], [ys[w.shape[0]]], {})
    nac_us, blas_us = timed(encoder)
    tl = [(torch.from_numpy(w.copy()), torch.from_numpy(b.copy())) for w, b in layers]
    txs = {k: torch.from_numpy(v) for k, v in xs.items()}

    def torch_encoder():
        for w, b in tl:
            F.linear(txs[w.shape[1]], w, b)
    with torch.no_grad():
        torch_us = median_us(torch_encoder, repeat)
    rows.append({"kernel": "MiniLM's 36 linear products", "case": "16 rows, weights from memory", "nac_us": nac_us,
                 "torch_us": torch_us, "blas_us": blas_us})
    x = rng.standard_normal((128, 384)).astype(np.float32)
    q = rng.integers(-127, 128, (1536, 384)).astype(np.int8)
    qt = Q.QTensor("int8", q, rng.random(1536).astype(np.float32), (1536, 384))
    y = np.empty((128, 1536), np.float32)
    nac_us, dot_us = timed(lambda: Q.quant_matmul(x, qt, y, "int8"), Q, "INT8_PANELS", False)
    tx, tw = torch.from_numpy(x), torch.from_numpy(qt.dequantize())
    with torch.no_grad():
        torch_us = median_us(lambda: F.linear(tx, tw), repeat)
    rows.append({"kernel": "W8A8 linear (VNNI panels)" if Q.INT8_PANELS else "W8A8 linear (dot products)",
                 "case": "128x384 @ 384x1536", "nac_us": nac_us, "torch_us": torch_us, "blas_us": dot_us})
    return rows


def team_rows(repeat):
    from numba import njit

    from nac.engine import threads as T

    @njit(nogil=True)
    def noop(x, lo, hi):
        x[0] = lo

    x = np.zeros(1)
    serial = median_us(lambda: noop(x, 0, 2), repeat * 10)
    split = median_us(lambda: T.parallel_range(noop, 2, x, work=1 << 30), repeat * 10)
    return [{"kernel": "thread team hand-off", "case": "empty kernel on 2 ranges", "nac_us": split,
             "torch_us": None, "serial_us": serial}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "kernels.json")
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    import torch

    from bench_models import machine
    from nac.engine.threads import num_threads

    torch.set_num_threads(num_threads())
    rng = np.random.default_rng(0)
    info = machine()
    rows = (attention_rows(rng, args.repeat) + elementwise_rows(rng, args.repeat) + gemm_rows(rng, args.repeat)
            + team_rows(args.repeat))
    print("| kernel | case | NAC µs | torch µs | NAC / torch | NAC's previous form µs |\n|---|---|---|---|---|---|")
    for r in rows:
        torch_us = "" if r["torch_us"] is None else f"{r['torch_us']:.0f}"
        ratio = "" if r["torch_us"] is None else f"{r['nac_us'] / r['torch_us']:.2f}"
        ref = r.get("unfused_numpy_us") or r.get("serial_us") or r.get("blas_us")
        ref = "" if ref is None else f"{ref:.0f}"
        print(f"| {r['kernel']} | {r['case']} | {r['nac_us']:.0f} | {torch_us} | {ratio} | {ref} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": info, "rows": rows, "when": time.strftime("%Y-%m-%d %H:%M:%S")},
                                    indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
