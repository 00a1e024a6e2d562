"""Diffusion schedulers in numpy, step for step as diffusers' (0.42) classes of the same names, so
that a `.nac` text-to-image pipeline reproduces diffusers' images from the same initial noise.

Each scheduler takes the *resolved* config diffusers gives it (``XScheduler.from_config(...)
.config``, recorded in the file at export: defaults and all), so a config needs no guessing here.

- ``ddim``: DDIM, deterministic (eta = 0) (Song et al. 2021, "Denoising Diffusion Implicit Models").
- ``euler``: Euler discrete, no churn (Karras et al. 2022, Algorithm 2 with S_churn = 0).
- ``pndm``: PNDM's Runge-Kutta warm-up then linear multistep (Liu et al. 2022), or PLMS only with
  ``skip_prk_steps`` (Stable Diffusion's setting).
- ``dpmsolver++``: DPM-Solver++ multistep, first or second order (midpoint or Heun), as "2M"
  (Lu et al. 2022, "DPM-Solver++").

Supported options: ``beta_schedule`` linear / scaled_linear / squaredcos_cap_v2 / ``trained_betas``,
``prediction_type`` epsilon / v_prediction / sample, ``timestep_spacing`` linspace / leading /
trailing with ``steps_offset``; anything else (Karras sigmas, thresholding, zero-SNR rescaling,
SDE variants) is refused with `NacError` when the pipeline is built.
"""
from __future__ import annotations

import math

import numpy as np

from nac.errors import NacError

KINDS = ("ddim", "euler", "pndm", "dpmsolver++")
#: diffusers class name -> our kind
CLASSES = {"DDIMScheduler": "ddim", "EulerDiscreteScheduler": "euler", "PNDMScheduler": "pndm",
           "DPMSolverMultistepScheduler": "dpmsolver++"}
_F = np.float32


def _refuse(cfg: dict, kind: str, **allowed) -> None:
    for key, ok in allowed.items():
        if key in cfg and cfg[key] not in ok:
            raise NacError(f"scheduler {kind}: {key}={cfg[key]!r} is not supported (supported: {list(ok)})")


def _betas(cfg: dict) -> np.ndarray:
    n = int(cfg.get("num_train_timesteps", 1000))
    if cfg.get("trained_betas") is not None:
        return np.asarray(cfg["trained_betas"], _F)
    schedule = cfg.get("beta_schedule", "linear")
    lo, hi = float(cfg.get("beta_start", 0.0001)), float(cfg.get("beta_end", 0.02))
    if schedule == "linear":
        return np.linspace(lo, hi, n, dtype=np.float64).astype(_F)
    if schedule == "scaled_linear":
        return (np.linspace(lo ** 0.5, hi ** 0.5, n, dtype=np.float64).astype(_F)) ** 2
    if schedule == "squaredcos_cap_v2":  # diffusers' betas_for_alpha_bar, cosine (Nichol & Dhariwal 2021)
        def bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - bar((i + 1) / n) / bar(i / n), 0.999) for i in range(n)], _F)
    raise NacError(f"beta_schedule {schedule!r} is not supported (linear, scaled_linear, squaredcos_cap_v2)")


class _Base:
    kind = ""

    def __init__(self, cfg: dict):
        _refuse(cfg, self.kind, prediction_type=("epsilon", "v_prediction", "sample"), thresholding=(False,),
                rescale_betas_zero_snr=(False,), timestep_spacing=("linspace", "leading", "trailing"),
                use_karras_sigmas=(False, None), use_exponential_sigmas=(False, None), use_beta_sigmas=(False, None),
                use_lu_lambdas=(False, None), use_flow_sigmas=(False, None), timestep_type=("discrete",),
                variance_type=(None,), final_sigmas_type=("zero", "sigma_min"), interpolation_type=("linear",))
        self.cfg = cfg
        self.train_steps = int(cfg.get("num_train_timesteps", 1000))
        self.prediction = cfg.get("prediction_type", "epsilon")
        self.spacing = cfg.get("timestep_spacing", "leading")
        self.offset = int(cfg.get("steps_offset", 0))
        betas = _betas(cfg)
        if betas.size != self.train_steps or not (np.isfinite(betas) & (betas > 0) & (betas < 1)).all():
            raise NacError(f"scheduler {self.kind}: betas must be {self.train_steps} numbers in (0, 1)")
        self.alphas_cumprod = np.cumprod(1.0 - betas, dtype=_F)
        self.init_noise_sigma = 1.0
        self.timesteps = np.zeros(0, np.int64)

    def _check_steps(self, n: int) -> None:
        from nac.errors import NacInputError

        if not 1 <= n <= self.train_steps:
            raise NacInputError(f"scheduler {self.kind}: {n} steps; it takes 1 to {self.train_steps} "
                                f"(its training timesteps)")

    def _check_range(self) -> None:
        """Every timestep indexes the training schedule (a file's steps_offset could push one out)."""
        t = self.timesteps
        if t.size and (t.min() < 0 or t.max() > self.train_steps - 1):
            raise NacError(f"scheduler {self.kind}: its config gives timesteps {int(t.min())}..{int(t.max())}, "
                           f"outside its {self.train_steps} training timesteps")

    def _spaced(self, n: int) -> np.ndarray:
        """DDIM's and PNDM's integer timesteps, descending."""
        T = self.train_steps
        if self.spacing == "linspace":
            return np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
        if self.spacing == "leading":
            return (np.arange(0, n) * (T // n)).round()[::-1].astype(np.int64) + self.offset
        return np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1

    def scale_model_input(self, sample: np.ndarray, index: int) -> np.ndarray:
        return sample

    def _sigmas_at(self, timesteps: np.ndarray) -> np.ndarray:
        """The noise levels sqrt((1 - a) / a) interpolated at ``timesteps``, then the final one
        (0, or the smallest training sigma with ``final_sigmas_type="sigma_min"``): float32."""
        sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        last = 0.0 if self.cfg.get("final_sigmas_type", "zero") == "zero" else float(sigmas[0])
        return np.concatenate([np.interp(timesteps, np.arange(len(sigmas)), sigmas), [last]]).astype(_F)


class DDIM(_Base):
    """diffusers' ``DDIMScheduler`` with eta = 0."""

    kind = "ddim"

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self.final = _F(1.0) if cfg.get("set_alpha_to_one", True) else self.alphas_cumprod[0]

    def set_timesteps(self, n: int) -> None:
        self._check_steps(n)
        self.n = n
        self.timesteps = self._spaced(n)
        self._check_range()

    def step(self, out: np.ndarray, index: int, sample: np.ndarray) -> np.ndarray:
        t = int(self.timesteps[index])
        prev = t - self.train_steps // self.n
        a = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final
        b = 1 - a
        if self.prediction == "epsilon":
            x0, eps = (sample - b ** 0.5 * out) / a ** 0.5, out
        elif self.prediction == "sample":
            x0 = out
            eps = (sample - a ** 0.5 * x0) / b ** 0.5
        else:
            x0, eps = a ** 0.5 * sample - b ** 0.5 * out, a ** 0.5 * out + b ** 0.5 * sample
        if self.cfg.get("clip_sample", True):
            r = float(self.cfg.get("clip_sample_range", 1.0))
            x0 = np.clip(x0, -r, r)
        return (a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps).astype(_F)


class Euler(_Base):
    """diffusers' ``EulerDiscreteScheduler`` without churn (s_churn = 0)."""

    kind = "euler"

    def set_timesteps(self, n: int) -> None:
        self._check_steps(n)
        T = self.train_steps
        if self.spacing == "linspace":
            ts = np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
        elif self.spacing == "leading":
            ts = (np.arange(0, n) * (T // n)).round()[::-1].astype(np.float32) + self.offset
        else:
            ts = np.arange(T, 0, -T / n).round().astype(np.float32) - 1
        self.timesteps = ts.astype(np.float32)
        self._check_range()
        self.sigmas = self._sigmas_at(ts)
        top = float(self.sigmas.max())
        self.init_noise_sigma = top if self.spacing in ("linspace", "trailing") else (top ** 2 + 1) ** 0.5

    def scale_model_input(self, sample: np.ndarray, index: int) -> np.ndarray:
        return (sample / ((self.sigmas[index] ** 2 + 1) ** 0.5)).astype(_F)

    def step(self, out: np.ndarray, index: int, sample: np.ndarray) -> np.ndarray:
        s = self.sigmas[index]
        if self.prediction == "epsilon":
            x0 = sample - s * out
        elif self.prediction == "v_prediction":
            x0 = out * (-s / (s ** 2 + 1) ** 0.5) + sample / (s ** 2 + 1)
        else:
            x0 = out
        return (sample + (sample - x0) / s * (self.sigmas[index + 1] - s)).astype(_F)


class PNDM(_Base):
    """diffusers' ``PNDMScheduler``: Runge-Kutta warm-up (unless ``skip_prk_steps``) then PLMS."""

    kind = "pndm"

    def __init__(self, cfg: dict):
        _refuse(cfg, "pndm", prediction_type=("epsilon", "v_prediction"))
        super().__init__(cfg)
        self.final = _F(1.0) if cfg.get("set_alpha_to_one", False) else self.alphas_cumprod[0]
        self.skip_prk = bool(cfg.get("skip_prk_steps", False))

    def set_timesteps(self, n: int) -> None:
        self._check_steps(n)
        self.n = n
        T = self.train_steps
        if self.spacing == "linspace":
            base = np.linspace(0, T - 1, n).round().astype(np.int64)
        elif self.spacing == "leading":
            base = (np.arange(0, n) * (T // n)).round().astype(np.int64) + self.offset
        else:
            base = np.round(np.arange(T, 0, -T / n))[::-1].astype(np.int64) - 1
        if self.skip_prk:
            self.prk = np.zeros(0, np.int64)
            plms = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1]
        else:
            prk = np.array(base[-4:]).repeat(2) + np.tile(np.array([0, T // n // 2]), 4)
            self.prk = prk[:-1].repeat(2)[1:-1][::-1].astype(np.int64)
            plms = base[:-3][::-1]
        self.timesteps = np.concatenate([self.prk, plms]).astype(np.int64)
        self._check_range()
        self.ets, self.counter, self.cur_out, self.cur_sample = [], 0, 0, None

    def _prev(self, sample, t: int, prev: int, out):
        a = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final
        b, b_prev = 1 - a, 1 - a_prev
        if self.prediction == "v_prediction":
            out = a ** 0.5 * out + b ** 0.5 * sample
        coeff = (a_prev / a) ** 0.5
        denom = a * b_prev ** 0.5 + (a * b * a_prev) ** 0.5
        return (coeff * sample - (a_prev - a) * out / denom).astype(_F)

    def step(self, out: np.ndarray, index: int, sample: np.ndarray) -> np.ndarray:
        t = int(self.timesteps[index])
        if self.counter < len(self.prk) and not self.skip_prk:
            return self._step_prk(out, t, sample)
        return self._step_plms(out, t, sample)

    def _step_prk(self, out, t, sample):
        half = self.train_steps // self.n // 2
        prev = t - (0 if self.counter % 2 else half)
        t = int(self.prk[self.counter // 4 * 4])
        k = self.counter % 4
        if k == 0:
            self.cur_out = self.cur_out + out / 6
            self.ets.append(out)
            self.cur_sample = sample
        elif k in (1, 2):
            self.cur_out = self.cur_out + out / 3
        else:
            out = self.cur_out + out / 6
            self.cur_out = 0
        cur = self.cur_sample if self.cur_sample is not None else sample
        self.counter += 1
        return self._prev(cur, t, prev, out)

    def _step_plms(self, out, t, sample):
        prev = t - self.train_steps // self.n
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(out)
        else:
            prev, t = t, t + self.train_steps // self.n
        e = self.ets
        if len(e) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(e) == 1 and self.counter == 1:
            out = (out + e[-1]) / 2
            sample, self.cur_sample = self.cur_sample, None
        elif len(e) == 2:
            out = (3 * e[-1] - e[-2]) / 2
        elif len(e) == 3:
            out = (23 * e[-1] - 16 * e[-2] + 5 * e[-3]) / 12
        else:
            out = (1 / 24) * (55 * e[-1] - 59 * e[-2] + 37 * e[-3] - 9 * e[-4])
        self.counter += 1
        return self._prev(sample, t, prev, out)


class DPMSolverPP(_Base):
    """diffusers' ``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++"``, order 1
    or 2 (``midpoint`` or ``heun``): "DPM++ 2M"."""

    kind = "dpmsolver++"

    def __init__(self, cfg: dict):
        _refuse(cfg, "dpmsolver++", algorithm_type=("dpmsolver++",), solver_order=(1, 2),
                solver_type=("midpoint", "heun"))
        super().__init__(cfg)
        self.order = int(cfg.get("solver_order", 2))
        a = np.sqrt(self.alphas_cumprod)
        self.lambda_t = np.log(a) - np.log(np.sqrt(1 - self.alphas_cumprod))

    def set_timesteps(self, n: int) -> None:
        self._check_steps(n)
        T = self.train_steps
        clip = float(self.cfg.get("lambda_min_clipped", -math.inf))
        last = T - int(np.searchsorted(self.lambda_t[::-1], clip))
        if self.spacing == "linspace":
            ts = np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
        elif self.spacing == "leading":
            ts = (np.arange(0, n + 1) * (last // (n + 1))).round()[::-1][:-1].astype(np.int64) + self.offset
        else:
            ts = np.arange(last, 0, -T / n).round().astype(np.int64) - 1
        self.timesteps = ts
        self._check_range()
        self.sigmas = self._sigmas_at(ts)
        self.outputs = [None] * self.order
        self.lower_done = 0

    @staticmethod
    def _alpha_sigma(s):
        a = 1 / ((s ** 2 + 1) ** 0.5)
        return a, s * a

    def step(self, out: np.ndarray, index: int, sample: np.ndarray) -> np.ndarray:
        n = len(self.timesteps)
        final = index == n - 1 and (self.cfg.get("euler_at_final", False)
                                    or (self.cfg.get("lower_order_final", True) and n < 15)
                                    or self.cfg.get("final_sigmas_type", "zero") == "zero")
        a_s, s_s = self._alpha_sigma(self.sigmas[index])
        if self.prediction == "epsilon":
            x0 = (sample - s_s * out) / a_s
        elif self.prediction == "v_prediction":
            x0 = a_s * sample - s_s * out
        else:
            x0 = out
        self.outputs = self.outputs[1:] + [x0]
        with np.errstate(divide="ignore"):
            a_t, s_t = self._alpha_sigma(self.sigmas[index + 1])
            lam_t = np.log(a_t) - np.log(s_t)
            lam_s = np.log(a_s) - np.log(s_s)
            h = lam_t - lam_s
            if self.order == 1 or self.lower_done < 1 or final:
                x = (s_t / s_s) * sample - (a_t * (np.exp(-h) - 1.0)) * x0
            else:
                a_1, s_1 = self._alpha_sigma(self.sigmas[index - 1])
                lam_1 = np.log(a_1) - np.log(s_1)
                m0, m1 = self.outputs[-1], self.outputs[-2]
                r0 = (lam_s - lam_1) / h
                d1 = (1.0 / r0) * (m0 - m1)
                x = (s_t / s_s) * sample - (a_t * (np.exp(-h) - 1.0)) * m0
                if self.cfg.get("solver_type", "midpoint") == "midpoint":
                    x = x - 0.5 * (a_t * (np.exp(-h) - 1.0)) * d1
                else:
                    x = x + (a_t * ((np.exp(-h) - 1.0) / h + 1.0)) * d1
        if self.lower_done < self.order:
            self.lower_done += 1
        return np.asarray(x, _F)


def make_scheduler(kind: str, config: dict):
    """A scheduler of ``kind`` (one of `KINDS`) from a resolved diffusers config.

    Raises:
        NacError: an unknown kind, or an option this module does not reproduce."""
    classes = {"ddim": DDIM, "euler": Euler, "pndm": PNDM, "dpmsolver++": DPMSolverPP}
    if kind not in classes:
        raise NacError(f"unknown scheduler {kind!r}; choose from {', '.join(KINDS)}")
    return classes[kind](dict(config))
