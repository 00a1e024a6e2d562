"""One diffusion UNet step and one VAE decode: NAC vs torch eager (diffusers) in one process, same
thread count, on a Stable-Diffusion-shaped model scaled down to run on a laptop CPU (random init:
UNet2DConditionModel with block channels 64/128/256, cross-attention at every resolution,
768-wide text embeddings, 32x32 latents = 256x256 pixels; classifier-free guidance, so batch 2).

    python bench/bench_diffusion.py [--threads 2] [--repeat 5]

Prints the machine, both medians and the ratio; writes ``bench/results/diffusion.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "18")  # what `import nac` sets when it loads numpy first

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    import diffusers
    import torch

    import nac
    from nac.apps.diffusion import UNet, VaeDecode
    from bench_seq2seq import _machine, median_seconds  # noqa: E402  (same folder)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(64, 128, 256), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=768,
        attention_head_dim=8, norm_num_groups=32).eval()
    vae = diffusers.AutoencoderKL(block_out_channels=[64, 128, 128, 128], latent_channels=4, norm_num_groups=32,
                                  down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4
                                  ).eval()
    x = torch.randn(2, 4, 32, 32)
    t = torch.tensor([500.0, 500.0])
    e = torch.randn(2, 77, 768)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, module, inputs in (("UNet step, batch 2, 32x32 latents (ms)", UNet(unet, "text"), (x, t, e)),
                                      ("VAE decode, 32x32 latents -> 256x256 (ms)", VaeDecode(vae), (x[:1],))):
            path = nac.export(module, inputs, Path(tmp) / "m.nac")
            m = nac.load(path)
            feeds = [a.numpy() for a in inputs]
            with torch.no_grad():
                want = module(*inputs)
            want = next(iter(want.values())).numpy()
            got = m.run(feeds)[0]
            err = float(np.abs(got - want).max() / max(1.0, np.abs(want).max()))

            def timed(fn) -> float:
                return median_seconds(fn, args.repeat) * 1e3

            t_nac = timed(lambda: m.run(feeds))
            with torch.no_grad():
                t_torch = timed(lambda: module(*inputs))
            rows[label] = {"nac": t_nac, "torch": t_torch, "max_rel_err": err}
    out = {"machine": _machine(), "threads": args.threads, "rows": rows}
    print(json.dumps(out["machine"]))
    print(f"{'work':<44} {'NAC':>9} {'torch':>9} {'torch/NAC':>10} {'rel err':>9}")
    for k, r in rows.items():
        print(f"{k:<44} {r['nac']:>9.1f} {r['torch']:>9.1f} {r['torch'] / r['nac']:>9.2f}x {r['max_rel_err']:>9.1e}")
    Path(__file__).with_name("results").mkdir(exist_ok=True)
    Path(__file__).with_name("results").joinpath("diffusion.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
