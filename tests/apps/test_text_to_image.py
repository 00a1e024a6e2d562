"""Issue 15, text-to-image: a tiny random-init Stable Diffusion pipeline of the kind diffusers
tests itself with (CLIP text encoder, UNet2DConditionModel with cross-attention, AutoencoderKL,
a CLIP-style byte-level BPE tokenizer) exported as one file of three methods; with the same
initial latents NAC's images equal diffusers' pipeline output within 1e-3 (pixels in [0, 1])
for every scheduler; `nac run` writes the PNG."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import nac
from conftest import byte_level_bpe, nac_main
from nac.apps.text_to_image import TextToImage

diffusers = pytest.importorskip("diffusers", reason="needs diffusers (pip install 'nac[export]')")
transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'nac[export]')")
import torch  # noqa: E402


SCHEDULERS = {"pndm": "PNDMScheduler", "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
              "dpmsolver++": "DPMSolverMultistepScheduler"}


def _pipeline():
    """diffusers' own dummy components (tests/pipelines/stable_diffusion), with a trained tokenizer."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    corpus = ["a photo of an astronaut riding a horse", "a cat on a mat", "a watercolor of a city at night"] * 30
    bpe = byte_level_bpe(corpus, 400, ["<|startoftext|>", "<|endoftext|>"])
    bos, eos = bpe.token_to_id("<|startoftext|>"), bpe.token_to_id("<|endoftext|>")
    bpe.post_processor = processors.TemplateProcessing(single="<|startoftext|> $A <|endoftext|>",
                                                       special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", model_max_length=16)
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=16,
                                          in_channels=4, out_channels=4, norm_num_groups=2,
                                          down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                          up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3, norm_num_groups=2,
                                  down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                                  up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4)
    torch.manual_seed(0)
    enc = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, hidden_size=32, intermediate_size=37,
        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=5, vocab_size=bpe.get_vocab_size(),
        max_position_embeddings=16)).eval()
    sched = diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    return diffusers.StableDiffusionPipeline(vae=vae, text_encoder=enc, tokenizer=tok, unet=unet, scheduler=sched,
                                             safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """The pipeline saved as a diffusers folder, exported from it by `nac export FOLDER --task
    text-to-image` (run in this process), and loaded back from it by diffusers as the reference
    (a loaded scheduler config keeps its values when converted to another scheduler, an in-memory
    one its class defaults: Euler's timestep spacing is then "leading", not "linspace")."""
    tmp = tmp_path_factory.mktemp("sd")
    _pipeline().save_pretrained(tmp / "tiny-sd")
    nac_main("export", tmp / "tiny-sd", "--task", "text-to-image", "-o", tmp / "sd.nac")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tmp / "tiny-sd", safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.original_scheduler_config = pipe.scheduler.config  # what a diffusers user switches schedulers from
    return pipe, nac.load(tmp / "sd.nac")


@pytest.mark.heavy
@pytest.mark.parametrize("kind", list(SCHEDULERS))
def test_images_match_diffusers(sd, kind):
    pipe, m = sd
    extra = {"algorithm_type": "dpmsolver++", "solver_order": 2} if kind == "dpmsolver++" else {}
    pipe.scheduler = getattr(diffusers, SCHEDULERS[kind]).from_config(pipe.original_scheduler_config, **extra)
    latents = np.random.default_rng(3).standard_normal((2, 4, 16, 16)).astype(np.float32)
    prompts = ["a photo of an astronaut riding a horse", "a cat on a mat"]
    kw = dict(num_inference_steps=6, guidance_scale=6.0, negative_prompt=["a city", ""])
    with torch.no_grad():
        want = pipe(prompts, latents=torch.from_numpy(latents), output_type="np", **kw).images
    got = TextToImage(m)(prompts, latents=latents, scheduler=kind, output_type="np", **kw)
    assert got.shape == want.shape == (2, 32, 32, 3)
    assert np.abs(got - want).max() <= 1e-3


def test_no_guidance_and_size(sd):
    """guidance_scale 1 runs the UNet on the prompt alone, as diffusers; another size works."""
    pipe, m = sd
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.original_scheduler_config)
    latents = np.random.default_rng(4).standard_normal((1, 4, 8, 24)).astype(np.float32)
    with torch.no_grad():
        want = pipe("a cat on a mat", latents=torch.from_numpy(latents), num_inference_steps=4, guidance_scale=1.0,
                    height=16, width=48, output_type="np").images
    got = TextToImage(m)("a cat on a mat", latents=latents, num_inference_steps=4, guidance_scale=1.0, height=16,
                         width=48, scheduler="euler", output_type="np")
    assert np.abs(got - want).max() <= 1e-3


def test_run_writes_a_png_and_pipeline_api(sd, tmp_path):
    from PIL import Image

    _, m = sd
    out = tmp_path / "astronaut.png"
    subprocess.run([sys.executable, "-m", "nac.apps.cli", "run", str(m.path), "a photo of an astronaut riding a horse",
                    "--steps", "3", "--seed", "0", "-o", str(out)], check=True, capture_output=True)
    img = Image.open(out)
    assert img.size == (32, 32) and img.mode == "RGB"
    pipe = nac.pipeline("text-to-image", m.path)
    images = pipe("a photo of an astronaut riding a horse", num_inference_steps=3, seed=0)
    assert np.array_equal(np.asarray(images[0]), np.asarray(img))  # same seed, same picture
    assert not np.array_equal(np.asarray(pipe("a cat", num_inference_steps=3, seed=1)[0]), np.asarray(img))


def test_bad_requests(sd):
    _, m = sd
    p = TextToImage(m)
    for kw, message in [(dict(prompt=[]), "prompt"), (dict(prompt=None), "prompt"), (dict(prompt=[3]), "texts"),
                        (dict(prompt="x", height=18), "multiples"), (dict(prompt="x", scheduler="lms"), "scheduler"),
                        (dict(prompt="x", num_inference_steps=0), "num_inference_steps"),
                        (dict(prompt="x", latents=np.zeros((1, 4, 3, 3), np.float32)), "latents"),
                        (dict(prompt="x", latents=np.full((1, 4, 16, 16), np.nan, np.float32)), "latents"),
                        (dict(prompt="x", negative_prompt=["a", "b"]), "negative")]:
        with pytest.raises(nac.NacInputError, match=message):
            p(**{"num_inference_steps": 2, **kw})


@pytest.mark.heavy
def test_export_from_a_pipeline_folder(sd):
    """The folder's export (the fixture) holds the three methods and, run for a single prompt with
    the pipeline's own scheduler, draws diffusers' image."""
    pipe, m = sd
    assert list(m.methods) == ["unet", "text_encoder", "vae_decode"]
    pipe.scheduler = diffusers.PNDMScheduler.from_config(pipe.original_scheduler_config)
    latents = np.random.default_rng(5).standard_normal((1, 4, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want = pipe("a cat on a mat", latents=torch.from_numpy(latents), num_inference_steps=3,
                    output_type="np").images
    got = TextToImage(m)("a cat on a mat", latents=latents, num_inference_steps=3, output_type="np")
    assert np.abs(got - want).max() <= 1e-3
