"""Train a ternary (BitNet b1.58) classifier on real data and ship it as a 2-bit `.nac` file.

Data: scikit-learn's handwritten digits (1,797 real 8x8 scans, offline). The same MLP is
trained twice with the same seed: in float32, and with its hidden layers swapped for
`nac.compile.BitLinear` (ternary weights, straight-through estimator). The ternary model is then
exported with `nac.export`, which stores its BitLinear weights in 2 bits, and evaluated with
NAC's engine.

    python examples/train_ternary_digits.py [--epochs 300] [--out digits-ternary.nac]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn


def data(seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)


def mlp(hidden: int = 256) -> nn.Module:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def train(model: nn.Module, x, y, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(logits: np.ndarray, y) -> float:
    return float((logits.argmax(1) == y).mean())


def run(epochs: int = 300, seed: int = 0, out: Path | None = None) -> dict:
    """Train both twins; returns accuracies (float, ternary torch, ternary NAC) and file facts."""
    import nac
    from nac.compile import ternarize

    xtr, xte, ytr, yte = data(seed)
    torch.manual_seed(seed)
    fp32 = mlp()
    torch.manual_seed(seed)
    ternary = ternarize(mlp(), include=["0", "2"])  # hidden layers ternary; the 10-way head stays float
    train(fp32, xtr, ytr, epochs, seed)
    train(ternary, xtr, ytr, epochs, seed)
    with torch.no_grad():
        acc_fp32 = accuracy(fp32(torch.from_numpy(xte)).numpy(), yte)
        acc_ternary = accuracy(ternary(torch.from_numpy(xte)).numpy(), yte)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(out) if out else Path(tmp) / "digits-ternary.nac"
        nac.export(ternary, (torch.from_numpy(xte[:2]),), path,
                   dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                   metadata={"task": "digits", "labels": [str(i) for i in range(10)]})
        model = nac.load(path)
        acc_nac = accuracy(model.run([xte])[0], yte)
        schemes = {n: v.quant["scheme"] for n, v in model.graph.values.items() if v.quant}
        size = path.stat().st_size
    return {"fp32": acc_fp32, "ternary": acc_ternary, "ternary_nac": acc_nac, "schemes": schemes, "bytes": size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="where to write the ternary .nac (default: a temporary file)")
    args = ap.parse_args()
    r = run(args.epochs, args.seed, args.out)
    print(f"test accuracy  fp32 {r['fp32']:.4f}   ternary (torch) {r['ternary']:.4f}   "
          f"ternary (.nac, NAC engine) {r['ternary_nac']:.4f}")
    print(f"stored ternary: {sorted(r['schemes'])}; file {r['bytes']:,} bytes")


if __name__ == "__main__":
    main()
