"""Text-to-image (and class-to-image) generation with a diffusion `.nac` file, in numpy: no
torch, no diffusers. Exported by `nac.apps.diffusion`.

The loop is diffusers' ``StableDiffusionPipeline.__call__``: the prompt (and the negative
prompt, "" by default) tokenised to the file's max length and encoded; initial latents (given,
or standard normal from a seeded numpy generator: reproducible, but not torch's random stream)
scaled by the scheduler's initial sigma; at each timestep the UNet runs on the unconditional and
conditional halves at once and classifier-free guidance (Ho & Salimans 2022) mixes them,
``uncond + scale * (cond - uncond)``, when ``guidance_scale > 1``; the scheduler steps; the VAE
decodes and pixels are mapped from [-1, 1] to [0, 1].
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from nac.apps.schedulers import KINDS, make_scheduler
from nac.engine import Model
from nac.errors import NacError, NacInputError

MAX_STEPS = 1000
MAX_IMAGES = 1024  # per prompt (the engine runs them in chunks of the graph's batch range)


class TextToImage:
    """``pipe(prompt, negative_prompt=None, num_inference_steps=None, guidance_scale=None,
    height=None, width=None, latents=None, seed=None, scheduler=None)`` -> list of PIL images,
    called like diffusers' pipeline (see `__call__`).

    Attributes:
        model: the loaded `Model`; config: its ``metadata["diffusion"]``.
    """

    def __init__(self, model: Model):
        meta = model.metadata
        if meta.get("task") != "text-to-image" or not isinstance(meta.get("diffusion"), dict):
            raise NacError(f"{model.path.name} is a {meta.get('task', 'generic')} model, not text-to-image")
        self.model, self.config = model, meta["diffusion"]
        c = self.config
        for key in ("conditioning", "latent_channels", "sample_size", "vae_scale_factor", "scheduler", "schedulers"):
            if key not in c:
                raise NacError(f"{model.path.name}: metadata diffusion.{key} is missing")
        self.text = c["conditioning"] == "text"
        need = ("unet", "text_encoder", "vae_decode") if self.text else ()
        missing = [m for m in need if m not in model.methods]
        if missing:
            raise NacError(f"{model.path.name}: missing method(s) {missing}")
        self.unet = model.methods.get("unet", model)

    def __call__(self, prompt=None, negative_prompt=None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, height: int | None = None, width: int | None = None,
                 latents: np.ndarray | None = None, seed: int | None = None, scheduler: str | None = None,
                 num_images_per_prompt: int = 1, output_type: str = "pil", progress: bool = False):
        """Generate images.

        Args:
            prompt: a text or a list of texts (class-conditional files: class labels, e.g. "7").
            negative_prompt: text(s) for the unconditional half of guidance (default "").
            num_inference_steps: scheduler steps (default: the file's, 50).
            guidance_scale: classifier-free guidance scale; off at <= 1 (default: the file's, 7.5).
            height / width: output pixels, multiples of the file's ``size_multiple``.
            latents: float32 [B, C, h, w] initial noise (before the scheduler's initial sigma).
            seed: seed of the numpy generator for the initial noise when ``latents`` is None.
            scheduler: "ddim", "euler", "pndm", "dpmsolver++", or None for the file's own.
            num_images_per_prompt: images per prompt (at most `MAX_IMAGES`).
            output_type: "pil" (list of PIL images) or "np" (float32 [B, H, W, 3] in [0, 1]).
            progress: show a progress bar (tqdm) over the steps.
        Raises:
            NacInputError: an empty prompt, an unknown class label, a size that is not a multiple,
                latents of the wrong shape or not finite, a bad step count or scheduler name.
        """
        c = self.config
        prompts = [prompt] if isinstance(prompt, (str, int)) else list(prompt or [])
        if not prompts:
            raise NacInputError("give a prompt (a text, or a list of texts)")
        steps = c.get("num_inference_steps", 50) if num_inference_steps is None else num_inference_steps
        if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
            raise NacInputError(f"num_inference_steps must be in 1..{MAX_STEPS}, not {steps}")
        scale = float(c.get("guidance_scale", 7.5) if guidance_scale is None else guidance_scale)
        if not np.isfinite(scale):
            raise NacInputError(f"guidance_scale must be a finite number, not {guidance_scale!r}")
        if not isinstance(num_images_per_prompt, int) or not 1 <= num_images_per_prompt <= MAX_IMAGES:
            raise NacInputError(f"num_images_per_prompt must be in 1..{MAX_IMAGES}, not {num_images_per_prompt!r}")
        kind = scheduler or c["scheduler"]
        if kind not in KINDS or kind not in c["schedulers"]:
            raise NacInputError(f"scheduler must be one of {', '.join(k for k in KINDS if k in c['schedulers'])}, "
                                f"not {scheduler!r}")
        sched = make_scheduler(kind, c["schedulers"][kind])
        sched.set_timesteps(int(steps))
        vae = int(c["vae_scale_factor"])
        mult = int(c.get("size_multiple", vae))
        h = height or int(c["sample_size"]) * vae
        w = width or int(c["sample_size"]) * vae
        if h % mult or w % mult or h <= 0 or w <= 0:
            raise NacInputError(f"height and width must be positive multiples of {mult}, not {h}x{w}")
        batch = len(prompts) * num_images_per_prompt
        shape = (batch, int(c["latent_channels"]), h // vae, w // vae)
        if latents is None:
            latents = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
        else:
            latents = np.asarray(latents)
            if latents.shape != shape or latents.dtype.kind != "f" or not np.isfinite(latents).all():
                raise NacInputError(f"latents must be finite floats of shape {list(shape)}, not "
                                    f"{latents.dtype}{list(latents.shape)}")
            latents = latents.astype(np.float32)
        guided = self.text and scale > 1.0
        condition = self._condition(prompts, negative_prompt, num_images_per_prompt, guided)
        x = (latents * np.float32(sched.init_noise_sigma)).astype(np.float32)
        ticks = range(len(sched.timesteps))
        if progress:
            from tqdm import tqdm

            ticks = tqdm(ticks, desc="denoising", unit="step")
        for i in ticks:
            t = sched.timesteps[i]
            inp = np.concatenate([x, x]) if guided else x
            inp = sched.scale_model_input(inp, i)
            out = _chunked(self.unet, [inp, np.full(len(inp), t, np.float32), condition])
            if guided:
                uncond, cond = out[:batch], out[batch:]
                out = uncond + np.float32(scale) * (cond - uncond)
            x = sched.step(out, i, x)
        image = _chunked(self.model.methods["vae_decode"], [x]) if self.text else x
        image = np.clip(image / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1).astype(np.float32)
        if output_type == "np":
            return image
        from PIL import Image

        pixels = (image * 255).round().astype(np.uint8)
        return [Image.fromarray(p[:, :, 0] if p.shape[2] == 1 else p) for p in pixels]

    def _condition(self, prompts, negative, per_prompt: int, guided: bool) -> np.ndarray:
        """Prompt embeddings [B or 2B, L, D] (unconditional half first), or class ids [B]."""
        if not self.text:
            labels = self.model.metadata.get("labels") or []
            index = {str(name): k for k, name in enumerate(labels)}
            try:
                ids = [index[str(p)] for p in prompts]
            except KeyError as exc:
                raise NacInputError(f"unknown class {exc.args[0]!r}; this model draws {labels}") from None
            return np.repeat(np.array(ids, np.int64), per_prompt)
        if any(not isinstance(p, str) for p in prompts):
            raise NacInputError("prompts must be texts")
        embeds = self._encode(prompts)
        embeds = np.repeat(embeds, per_prompt, axis=0)
        if not guided:
            return embeds
        neg = [negative] * len(prompts) if isinstance(negative, str) or negative is None else list(negative)
        if len(neg) != len(prompts):
            raise NacInputError(f"{len(neg)} negative prompts for {len(prompts)} prompts")
        uncond = np.repeat(self._encode(["" if n is None else n for n in neg]), per_prompt, axis=0)
        return np.concatenate([uncond, embeds])

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        from nac.apps.tasks import text_tokenizer

        length = int(self.model.metadata.get("max_length", 77))
        tok = text_tokenizer(self.model, pad=False)
        tok.enable_truncation(length)
        tok.enable_padding(length=length, pad_id=int(self.config.get("pad_token_id", 0)))
        ids = np.array([e.ids for e in tok.encode_batch(list(texts))], np.int64)
        return _chunked(self.model.methods["text_encoder"], [ids])


def _chunked(method, inputs: list[np.ndarray]) -> np.ndarray:
    """``method``'s first output for ``inputs`` that share a leading batch axis, run in chunks of
    at most the graph's ``batch`` range (the exporter caps it; see `nac.apps.diffusion`)."""
    top = (method.graph.dims.get("batch") or {}).get("max") or len(inputs[0])
    n = len(inputs[0])
    if n <= top:
        return method.run(inputs)[0]
    return np.concatenate([method.run([a[k:k + top] for a in inputs])[0] for k in range(0, n, top)])


def text_to_image(model: Model, prompt, **kwargs):
    """``TextToImage(model)(prompt, **kwargs)``."""
    return TextToImage(model)(prompt, **kwargs)
