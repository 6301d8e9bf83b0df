"""Noise schedules as pure functions (no state, no model); the timestep grid is workers/spec.trailing_timesteps."""
from __future__ import annotations

import torch

from novarch_batch.workers.spec import cosine_betas


def betas_for(config: dict) -> torch.Tensor:
    """Betas of a diffusers scheduler config, float32 as diffusers builds them.

    Linear, scaled_linear or squaredcos_cap_v2, then rescaled to zero terminal SNR when the config
    says `rescale_betas_zero_snr`.
    """
    betas = _base_betas(config)
    return rescale_zero_terminal_snr(betas) if config.get("rescale_betas_zero_snr") else betas


def _base_betas(config: dict) -> torch.Tensor:
    n = int(config.get("num_train_timesteps", 1000))
    kind = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if kind == "linear":
        return torch.linspace(start, end, n, dtype=torch.float32)
    if kind == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float32) ** 2
    if kind == "squaredcos_cap_v2":
        return torch.tensor(cosine_betas(n), dtype=torch.float32)
    raise ValueError(f"unsupported beta_schedule '{kind}' in scheduler_config.json")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so that the last step is pure noise (Lin et al. 2023, algorithm 1).

    Training then sees x_T with no trace of the image, which is what sampling starts from; the
    network must predict v (or x0), since epsilon at alpha_bar = 0 says nothing about the image.
    """
    sqrt_abar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * (first / (first - last))
    abar = sqrt_abar**2
    alphas = torch.cat([abar[0:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def alphas_cumprod_for(config: dict) -> torch.Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), float32 as diffusers keeps it."""
    return torch.cumprod(1.0 - betas_for(config), dim=0)
