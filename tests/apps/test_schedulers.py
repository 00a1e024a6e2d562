"""Issue 15: the numpy schedulers follow diffusers' step for step. A fixed stand-in model (a
smooth function of the sample and the timestep) drives both from the same noise; the final
samples agree within 1e-5 of their scale, for each scheduler, prediction type, spacing and a
few step counts; configs are resolved by diffusers' own ``from_config``, as the exporter does."""
from __future__ import annotations

import numpy as np
import pytest

from nac.apps.schedulers import make_scheduler

diffusers = pytest.importorskip("diffusers", reason="needs diffusers (pip install 'nac[export]')")
import torch  # noqa: E402

CLASSES = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "pndm": "PNDMScheduler",
           "dpmsolver++": "DPMSolverMultistepScheduler"}
SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1,
      "set_alpha_to_one": False, "skip_prk_steps": True, "clip_sample": False}


def _model(x: np.ndarray, t) -> np.ndarray:
    return np.tanh(0.7 * x + float(t) / 1000.0).astype(np.float32)


def _run_diffusers(kind, base, steps, x0):
    sched = getattr(diffusers, CLASSES[kind]).from_config(base)
    sched.set_timesteps(steps)
    x = torch.from_numpy(x0) * sched.init_noise_sigma
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        out = torch.from_numpy(_model(inp.numpy(), t))
        x = sched.step(out, t, x).prev_sample
    return x.numpy(), dict(sched.config)


def _run_ours(kind, config, steps, x0):
    s = make_scheduler(kind, config)
    s.set_timesteps(steps)
    x = (x0 * s.init_noise_sigma).astype(np.float32)
    for i, t in enumerate(s.timesteps):
        x = s.step(_model(s.scale_model_input(x, i), t), i, x)
    return x


@pytest.mark.parametrize("kind", list(CLASSES))
@pytest.mark.parametrize("base", [
    SD, {}, {**SD, "timestep_spacing": "trailing"}, {**SD, "timestep_spacing": "linspace"},
    {**SD, "prediction_type": "v_prediction"}, {"beta_schedule": "squaredcos_cap_v2", "skip_prk_steps": False}],
    ids=["sd", "defaults", "trailing", "linspace", "v-prediction", "cosine-prk"])
@pytest.mark.parametrize("steps", [4, 10, 25])
def test_scheduler_matches_diffusers(kind, base, steps):
    x0 = np.random.default_rng(steps).standard_normal((1, 4, 8, 8)).astype(np.float32)
    want, resolved = _run_diffusers(kind, base, steps, x0)
    got = _run_ours(kind, resolved, steps, x0)
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_unsupported_options_are_refused():
    from nac.errors import NacError

    with pytest.raises(NacError, match="use_karras_sigmas"):
        make_scheduler("euler", {"use_karras_sigmas": True})
    with pytest.raises(NacError, match="algorithm_type"):
        make_scheduler("dpmsolver++", {"algorithm_type": "sde-dpmsolver++"})
    with pytest.raises(NacError, match="unknown scheduler"):
        make_scheduler("lms", {})
    for kind in CLASSES:  # an untrusted file's offset cannot index outside the schedule
        with pytest.raises(NacError, match="outside its 1000 training timesteps"):
            make_scheduler(kind, {"steps_offset": 5000, "timestep_spacing": "leading"}).set_timesteps(10)
    with pytest.raises(NacError, match="betas must be"):
        make_scheduler("ddim", {"trained_betas": [0.5] * 10})
