"""Reverse diffusion samplers: small pure functions with one signature.

Each maps noise ``x`` (B, C, H, W) to images in [-1, 1]. ``denoise(x, t)`` returns the network's
output in float32 (guidance already applied): the noise epsilon or the velocity v, as the model's
``prediction_type`` says; ``predict`` turns either into the clean image and the noise. All sampler
maths runs in float32 whatever precision the network uses. ``noise`` yields each sample's stream
from its own CPU generator (workers/seeds.py): ancestral noise is drawn from it in step order, so a sample never depends on its batch (DESIGN.md, determinism).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from novarch_batch.workers.seeds import NoiseSource

Denoise = Callable[[torch.Tensor, int], torch.Tensor]
Callback = Optional[Callable[[int, torch.Tensor, torch.Tensor], None]]  # (step index, x_t, predicted x0)


@dataclass(frozen=True)
class Schedule:
    alphas_cumprod: torch.Tensor  # (T,) float32, alpha_bar_t
    timesteps: list[int]  # descending, e.g. trailing_timesteps(1000, 20)
    clip_sample: bool = True  # clamp predicted x0 to [-1, 1] (DDPM/DDIM as configured)
    prediction_type: str = "epsilon"  # what the network predicts: "epsilon" or "v_prediction"

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type '{self.prediction_type}' is not supported; "
                             f"use one of {', '.join(PREDICTION_TYPES)} in scheduler_config.json")
        if self.prediction_type == "epsilon" and self.timesteps and self.alpha_bar(self.timesteps[0]) == 0.0:
            raise ValueError("a zero-terminal-SNR schedule starts from alpha_bar = 0, where epsilon says nothing "
                             "about the image; train the model with prediction_type v_prediction")

    def alpha_bar(self, t: int) -> float:
        """alpha_bar at t; t < 0 is the end of the chain, where nothing is left of the noise."""
        return float(self.alphas_cumprod[t]) if t >= 0 else 1.0

    def pairs(self) -> list[tuple[int, int]]:
        """(t, t_prev) for every step; the last step goes to t_prev = -1 (a clean image)."""
        return list(zip(self.timesteps, self.timesteps[1:] + [-1]))


PREDICTION_TYPES = ("epsilon", "v_prediction")


def predict(x: torch.Tensor, out: torch.Tensor, a_t: float | torch.Tensor, schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) from the network output at alpha_bar a_t; x0 clamped to [-1, 1] with clip_sample.

    a_t is one number for the samplers, or a (B, 1, 1, 1) tensor of per-sample values (distillation).

    epsilon: x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) (DDPM eq. 15), which needs a > 0.
    v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022): x0 = sqrt(a) x_t - sqrt(1 - a) v and
    eps = sqrt(1 - a) x_t + sqrt(a) v, defined at a = 0 too (a zero-terminal-SNR schedule's start).
    eps is the network's own, unclamped, as diffusers' DDIM keeps it.
    """
    sqrt = torch.sqrt if isinstance(a_t, torch.Tensor) else math.sqrt
    if schedule.prediction_type == "v_prediction":
        x0 = sqrt(a_t) * x - sqrt(1 - a_t) * out
        eps = sqrt(1 - a_t) * x + sqrt(a_t) * out
    else:
        x0, eps = (x - sqrt(1 - a_t) * out) / sqrt(a_t), out
    return (x0.clamp(-1, 1) if schedule.clip_sample else x0), eps


def sample_ddpm(denoise: Denoise, x: torch.Tensor, schedule: Schedule, *, noise: NoiseSource, callback: Callback = None):
    """Ancestral sampling of the reverse SDE (Ho et al. 2020, eq. 6-7, variance beta~_t)."""
    for i, (t, t_prev) in enumerate(schedule.pairs()):
        a_t, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
        beta_t = 1 - a_t / a_prev  # effective beta over a possibly strided step
        x0, _ = predict(x, denoise(x, t), a_t, schedule)
        # Posterior mean mu~_t(x_t, x0), eq. 7.
        mean = (math.sqrt(a_prev) * beta_t / (1 - a_t)) * x0 + (math.sqrt(1 - beta_t) * (1 - a_prev) / (1 - a_t)) * x
        if t_prev >= 0:
            variance = max((1 - a_prev) / (1 - a_t) * beta_t, 1e-20)
            mean = mean + math.sqrt(variance) * noise.draw(x.shape[1:], x.device)
        x = mean
        if callback:
            callback(i, x, x0)
    return x


def sample_ddim(denoise: Denoise, x: torch.Tensor, schedule: Schedule, *, noise: NoiseSource, eta: float = 0.0, callback: Callback = None):
    """DDIM (Song et al. 2021, eq. 12): deterministic at eta = 0, ancestral noise of scale eta otherwise."""
    for i, (t, t_prev) in enumerate(schedule.pairs()):
        a_t, a_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
        x0, eps = predict(x, denoise(x, t), a_t, schedule)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)  # eq. 16
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if eta > 0 and t_prev >= 0:
            x = x + sigma * noise.draw(x.shape[1:], x.device)
        if callback:
            callback(i, x, x0)
    return x


ZERO_SNR_FLOOR = 2.0**-24


def _dpmpp_2m(denoise: Denoise, x: torch.Tensor, schedule: Schedule, noise: NoiseSource, sde: bool, callback: Callback):
    """DPM-Solver++(2M) in data prediction: the ODE update, or with ``sde`` the reverse-SDE one."""
    lam = lambda a: 0.5 * math.log(a / (1 - a))  # lambda_t = log(alpha_t / sigma_t)
    prev_x0, prev_h = None, None
    for i, (t, t_prev) in enumerate(schedule.pairs()):
        # A zero-terminal-SNR start has alpha_bar = 0 and lambda = -inf; diffusers' solver starts
        # from alpha_bar = 2^-24 instead (the smallest float16 subnormal), and so does this one.
        a_s = schedule.alpha_bar(t) or ZERO_SNR_FLOOR
        x0, _ = predict(x, denoise(x, t), a_s, schedule)
        if t_prev < 0:
            x = x0  # final step to sigma = 0: the first-order update reduces to the data prediction
        else:
            a_t = schedule.alpha_bar(t_prev)
            h = lam(a_t) - lam(a_s)
            d = x0 if prev_x0 is None else x0 + (0.5 * h / prev_h) * (x0 - prev_x0)  # D = (1 + 1/2r) x0_i - 1/2r x0_{i-1}
            ratio = math.sqrt((1 - a_t) / (1 - a_s))  # sigma_t / sigma_s
            if sde:
                fresh = -math.expm1(-2 * h)  # 1 - e^-2h: the share of the variance drawn anew
                x = (ratio * math.exp(-h)) * x + (math.sqrt(a_t) * fresh) * d \
                    + (math.sqrt(1 - a_t) * math.sqrt(fresh)) * noise.draw(x.shape[1:], x.device)
            else:
                x = ratio * x - (math.sqrt(a_t) * math.expm1(-h)) * d  # alpha_t (e^-h - 1)
            prev_h = h
        prev_x0 = x0
        if callback:
            callback(i, x, x0)
    return x


def sample_dpmpp_2m(denoise: Denoise, x: torch.Tensor, schedule: Schedule, *, noise: NoiseSource, callback: Callback = None):
    """DPM-Solver++(2M) multistep in data prediction (Lu et al. 2022, alg. 2); first order on the first and last step.

    With clip_sample the data prediction is clamped to [-1, 1] (diffusers' thresholding with
    sample_max_value 1): at t = T-1 of a cosine schedule alpha_bar is ~2e-9, so an unclamped x0
    from eps amplifies the network's error ~20,000 times and the first step never recovers.
    """
    return _dpmpp_2m(denoise, x, schedule, noise, False, callback)


def sample_dpmpp_2m_sde(denoise: Denoise, x: torch.Tensor, schedule: Schedule, *, noise: NoiseSource, callback: Callback = None):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, sec. 5; diffusers' "sde-dpmsolver++", midpoint).

    The same data-prediction multistep as dpmpp-2m, but each step solves the reverse SDE: it keeps
    only e^-2h of the noise the ODE would carry and draws the rest afresh from the sample's
    generator. Like DDPM, that fresh noise washes out the network's errors at low noise levels,
    and the second-order update reaches DDPM-20 quality in 10 steps with this model (BENCHMARKS.md).
    """
    return _dpmpp_2m(denoise, x, schedule, noise, True, callback)


def sample_distilled(denoise: Denoise, x: torch.Tensor, schedule: Schedule, *, noise: NoiseSource, callback: Callback = None):
    """A distilled student's sampler (training/distill.py): deterministic DDIM on the trailing grid of
    the student's steps, which is the grid it was distilled on; guidance is folded into the student,
    so `denoise` makes one network pass per step."""
    return sample_ddim(denoise, x, schedule, noise=noise, eta=0.0, callback=callback)


# Keyed like workers.spec.SAMPLER_OPTIONS, which names the optional arguments each one takes.
SAMPLERS = {"ddpm": sample_ddpm, "ddim": sample_ddim, "dpmpp-2m": sample_dpmpp_2m, "dpmpp-2m-sde": sample_dpmpp_2m_sde,
            "distilled": sample_distilled}
