"""Diffusion export: a diffusers text-to-image pipeline (CLIP text encoder, ``UNet2DConditionModel``,
``AutoencoderKL`` decoder, scheduler, tokenizer) or a class-conditional ``UNet2DModel`` as one
`.nac` of several methods, with everything the numpy pipeline (`nac.apps.text_to_image`) needs
in ``metadata["diffusion"]``. This module imports torch and diffusers (the exporter's side).

Methods (text-to-image): ``text_encoder`` (input_ids [B, L] int64 -> prompt_embeds [B, L, D]),
``unet`` (sample [B, C, h, w], timestep [B] float32, encoder_hidden_states [B, L, D] ->
noise_pred [B, C, h, w]) and ``vae_decode`` (latents [B, C, h, w] -> image [B, 3, H, W] in
[-1, 1], the latents divided by the VAE's scaling factor inside). Class-conditional: ``unet``
(sample, timestep, class_labels [B] int64 -> noise_pred), in pixel space.

The scheduler's config is stored resolved by diffusers itself for each supported kind
(``XScheduler.from_config(pipeline config).config``, as a diffusers user switching schedulers
gets it), so the numpy schedulers reproduce diffusers' defaults without guessing.
"""
from __future__ import annotations

from pathlib import Path

import torch

from nac.apps.schedulers import CLASSES
from nac.errors import NacExportError


class TextEncoder(torch.nn.Module):
    """input_ids [B, L] int64 -> {"prompt_embeds": [B, L, D]}: the CLIP text encoder's last
    hidden state, as diffusers' ``encode_prompt`` takes it (no attention mask, no clip skip)."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids):
        return {"prompt_embeds": self.encoder(input_ids)[0]}


class UNet(torch.nn.Module):
    """(sample, timestep [B] float32, conditioning) -> {"noise_pred"}: the UNet's prediction."""

    def __init__(self, unet, conditioning: str):
        super().__init__()
        self.unet, self.conditioning = unet, conditioning

    def forward(self, sample, timestep, condition):
        if self.conditioning == "text":
            return {"noise_pred": self.unet(sample, timestep, encoder_hidden_states=condition).sample}
        return {"noise_pred": self.unet(sample, timestep, class_labels=condition).sample}


class VaeDecode(torch.nn.Module):
    """latents [B, C, h, w] -> {"image": [B, 3, H, W]} in [-1, 1] (diffusers divides the latents
    by the VAE's scaling factor first)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        return {"image": self.vae.decode(latents / self.vae.config.scaling_factor).sample}


def _schedulers(scheduler) -> tuple[str, dict]:
    """(the pipeline's own kind, {kind: resolved config}) for every kind NAC runs."""
    import diffusers

    own = CLASSES.get(type(scheduler).__name__)
    if own is None:
        raise NacExportError(f"scheduler {type(scheduler).__name__} is not supported; NAC runs "
                             f"{', '.join(CLASSES)}")
    resolved = {}
    for cls, kind in CLASSES.items():
        if kind == own:
            cfg = dict(scheduler.config)
        else:
            extra = {"algorithm_type": "dpmsolver++", "solver_order": 2} if kind == "dpmsolver++" else {}
            cfg = dict(getattr(diffusers, cls).from_config(scheduler.config, **extra).config)
        resolved[kind] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()
                          if not k.startswith("_") and _jsonable(v)}
    return own, resolved


def _jsonable(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str)) or (
        isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v))


def _batch():
    """The batch dimension: at most 32 per call. diffusers' resnet and upsampling blocks branch on
    ``batch >= 64`` (a ``.contiguous()`` for a CUDA kernel), which torch.export cannot keep
    symbolic; `nac.apps.text_to_image` runs larger batches in chunks."""
    return torch.export.Dim("batch", min=1, max=32)


def _side(name: str, multiple: int, top: int):
    """A latent side in units of ``multiple`` (the UNet's downsampling needs a multiple), up to ``top``."""
    return torch.export.Dim(name, min=1, max=max(1, top // multiple))


def text_to_image(pipe, name: str = "text-to-image"):
    """A diffusers ``StableDiffusionPipeline`` (or any pipeline with ``text_encoder``, ``unet``,
    ``vae``, ``scheduler`` and a fast ``tokenizer``) -> a three-method export job.

    Raises:
        NacExportError: a missing component, a scheduler NAC does not run, a tokenizer without
            a ``tokenizer.json`` form, or a UNet that needs extra conditioning (SDXL's).
    """
    from nac.apps.sources import ExportJob

    for part in ("text_encoder", "unet", "vae", "scheduler", "tokenizer"):
        if getattr(pipe, part, None) is None:
            raise NacExportError(f"{name}: the pipeline has no {part}")
    unet, vae, enc, tok = pipe.unet.eval(), pipe.vae.eval(), pipe.text_encoder.eval(), pipe.tokenizer
    if unet.config.get("addition_embed_type") or unet.config.get("time_cond_proj_dim"):
        raise NacExportError(f"{name}: UNets with added conditioning (SDXL, LCM) are not supported yet")
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is None:
        raise NacExportError(f"{name}: the tokenizer has no tokenizer.json form (a fast tokenizer is needed)")
    own, schedulers = _schedulers(pipe.scheduler)
    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
    multiple = 2 ** (len(unet.config.block_out_channels) - 1)
    sample = int(unet.config.sample_size)
    channels = int(unet.config.in_channels)
    max_length = int(tok.model_max_length) if tok.model_max_length < 1 << 20 else 77
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    meta = {"task": "text-to-image", "model": name, "max_length": max_length,
            "diffusion": {"conditioning": "text", "latent_channels": channels, "sample_size": sample,
                          "vae_scale_factor": vae_scale, "size_multiple": multiple * vae_scale,
                          "scheduler": own, "schedulers": schedulers, "guidance_scale": 7.5,
                          "num_inference_steps": 50, "pad_token_id": int(pad)}}
    batch = _batch()
    seq = torch.export.Dim("seq", min=1, max=max_length)
    side_h, side_w = _side("latent_h", multiple, 4 * sample), _side("latent_w", multiple, 4 * sample)
    ids = torch.full((2, max_length), int(pad), dtype=torch.long)
    ids[:, :3] = torch.tensor([[int(tok.bos_token_id or 0), 5, int(tok.eos_token_id or 1)]] * 2) % enc.config.vocab_size
    latents = torch.randn(2, channels, sample, sample)
    with torch.no_grad():
        embeds = enc(ids)[0]
    jobs = {
        "unet": ExportJob(UNet(unet, "text"), (latents, torch.tensor([500.0, 500.0]), embeds), {},
                          ({0: batch, 2: multiple * side_h, 3: multiple * side_w}, {0: batch}, {0: batch, 1: seq})),
        "text_encoder": ExportJob(TextEncoder(enc), (ids,), {}, ({0: batch, 1: seq},)),
        "vae_decode": ExportJob(VaeDecode(vae), (latents,), {},
                                ({0: batch, 2: multiple * side_h, 3: multiple * side_w},)),
    }
    return ExportJob(None, metadata=meta, tokenizer=backend.to_str().encode(), methods=jobs)


def class_conditional(unet, scheduler, labels: list[str], name: str = "class-to-image"):
    """A class-conditional pixel-space ``UNet2DModel`` (``num_class_embeds``) and its scheduler ->
    a single-graph export job (the UNet: sample, timestep, class_labels -> noise_pred);
    ``labels`` name the classes (``nac run FILE 7``).

    Raises:
        NacExportError: the UNet has no class embedding, or the labels do not match it.
    """
    from nac.apps.sources import ExportJob

    classes = unet.config.get("num_class_embeds")
    if not classes:
        raise NacExportError(f"{name}: the UNet has no class embedding (num_class_embeds)")
    if len(labels) != classes:
        raise NacExportError(f"{name}: {len(labels)} labels for {classes} classes")
    own, schedulers = _schedulers(scheduler)
    sample, channels = int(unet.config.sample_size), int(unet.config.in_channels)
    multiple = 2 ** (len(unet.config.block_out_channels) - 1)
    meta = {"task": "text-to-image", "model": name, "labels": [str(x) for x in labels],
            "diffusion": {"conditioning": "class", "latent_channels": channels, "sample_size": sample,
                          "vae_scale_factor": 1, "size_multiple": multiple, "scheduler": own,
                          "schedulers": schedulers, "guidance_scale": 1.0, "num_inference_steps": 50}}
    batch = _batch()
    return ExportJob(UNet(unet.eval(), "class"), (torch.randn(2, channels, sample, sample), torch.tensor([10.0, 10.0]),
                                                  torch.tensor([0, 1])), {}, ({0: batch}, {0: batch}, {0: batch}), meta)


def text_to_image_folder(path: Path):
    """A diffusers Stable Diffusion folder (``model_index.json``) -> export job (`text_to_image`)."""
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise NacExportError(f"{path}: no model_index.json; a diffusers pipeline folder is expected")
    pipe = StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    return text_to_image(pipe, path.name)
