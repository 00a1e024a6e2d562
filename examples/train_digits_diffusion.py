"""Train a small class-conditional diffusion model on real handwritten digits, ship it as a `.nac`,
and measure what it draws.

Data: scikit-learn's digits (1,797 real 8x8 scans, offline), scaled to [-1, 1]. Model: a diffusers
``UNet2DModel`` with a class embedding (``num_class_embeds=10``), trained with the DDPM
objective (Ho et al. 2020: predict the noise added at a random timestep) for a few CPU minutes.
It is exported with `nac.apps.diffusion.class_conditional` (DDIM sampling by default) and then
sampled with NAC's engine alone.

Quality: a classifier trained on the real digits (scikit-learn's SVC, 99 % accurate on held-out
real scans) labels ``--per-class`` images NAC generates for each class; the report gives
the share it assigns to the requested class, per class and overall.

    python examples/train_digits_diffusion.py [--minutes 3] [--out digits.nac] [--per-class 100]
    nac run digits.nac 7 --seed 1 -o seven.png
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def digits():
    """(images [N, 1, 8, 8] float32 in [-1, 1], labels [N] int64) and a classifier of real digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.svm import SVC

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    clf = SVC(gamma=0.001, C=10).fit(xtr, ytr)  # pixels 0..16, as the scans come
    accuracy = float((clf.predict(xte) == yte).mean())
    images = (x / 8.0 - 1.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return images, y.astype(np.int64), clf, accuracy


def build_unet(seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=8, num_class_embeds=10)


def train(unet, images: np.ndarray, labels: np.ndarray, minutes: float | None = None, seed: int = 0,
          batch: int = 128, steps: int | None = None):
    """DDPM training (epsilon prediction, 1,000 linear-beta timesteps) for ``minutes`` of wall time
    or ``steps`` optimiser steps, whichever ends first (at least one must be given; a step budget
    alone gives the same model on any machine, however loaded). Returns (steps, mean loss)."""
    if minutes is None and steps is None:
        raise ValueError("train needs minutes or steps")
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    noise_sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3, weight_decay=1e-4)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    unet.train()
    start, budget, steps, losses = time.monotonic(), steps, 0, []
    while ((minutes is None or time.monotonic() - start < minutes * 60)
           and (budget is None or steps < budget)):
        idx = torch.randint(0, len(x_all), (batch,))
        x0, y = x_all[idx], y_all[idx]
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,))
        pred = unet(noise_sched.add_noise(x0, noise, t), t, class_labels=y).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        losses.append(loss.item())
    unet.eval()
    return steps, float(np.mean(losses[-100:]))


def export(unet, path: Path) -> Path:
    from diffusers import DDIMScheduler

    import nac
    from nac.apps.diffusion import class_conditional

    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    job = class_conditional(unet, sched, [str(d) for d in range(10)], "digits-diffusion")
    job.metadata["diffusion"]["num_inference_steps"] = 50
    return nac.export(job.module, job.args, path, dynamic_shapes=job.dynamic_shapes, metadata=job.metadata)


def evaluate(path: Path, clf, per_class: int, seed: int = 0) -> dict:
    """Share of ``per_class`` NAC-generated images per class that ``clf`` assigns to that class."""
    import nac
    from nac.apps.text_to_image import TextToImage

    pipe = TextToImage(nac.load(path))
    shares = {}
    for d in range(10):
        images = pipe(str(d), num_images_per_prompt=per_class, seed=seed + d, output_type="np")
        pixels = images[..., 0].reshape(per_class, 64) * 16.0
        shares[str(d)] = float((clf.predict(pixels) == d).mean())
    shares["all"] = float(np.mean([shares[str(d)] for d in range(10)]))
    return shares


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=3.0, help="training wall time (default 3)")
    ap.add_argument("--out", type=Path, default=Path("digits.nac"))
    ap.add_argument("--per-class", type=int, default=100, help="images generated per class for the evaluation")
    ap.add_argument("--json", type=Path, help="also write the report here")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    images, labels, clf, accuracy = digits()
    unet = build_unet()
    t0 = time.monotonic()
    steps, loss = train(unet, images, labels, args.minutes)
    print(f"trained {steps} steps in {time.monotonic() - t0:.0f} s (final loss {loss:.4f})")
    path = export(unet, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    t0 = time.monotonic()
    shares = evaluate(path, clf, args.per_class)
    report = {"train_steps": steps, "train_minutes": args.minutes, "final_loss": loss,
              "classifier_accuracy_on_real": accuracy, "recognised": shares,
              "sampling_seconds": time.monotonic() - t0}
    print(f"a classifier of real digits ({accuracy:.1%} on held-out real scans) recognises the requested class in:")
    print("  " + ", ".join(f"{d}: {shares[str(d)]:.0%}" for d in range(10)) + f"; overall {shares['all']:.1%}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
