"""Classifier-free-guided reverse diffusion with any diffusers scheduler (for explain and evaluation)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from training.export import CLASSES, NULL_LABEL


def class_index(name: str) -> int:
    """'building' -> 0, 'house' -> 1, 'any' -> the null label."""
    if name == "any":
        return NULL_LABEL
    if name not in CLASSES:
        raise ValueError(f"class must be one of {', '.join(CLASSES)} or any, got {name!r}")
    return CLASSES.index(name)


def guided_eps(unet, x: torch.Tensor, t, labels: torch.Tensor, guidance: float) -> torch.Tensor:
    """eps = eps_uncond + g * (eps_cond - eps_uncond) (Ho & Salimans 2022); one batched UNet call."""
    null = torch.full_like(labels, NULL_LABEL)
    if guidance == 1.0 or bool((labels == NULL_LABEL).all()):
        return unet(x, t, class_labels=labels).sample
    eps = unet(torch.cat([x, x]), t, class_labels=torch.cat([null, labels])).sample
    uncond, cond = eps.chunk(2)
    return uncond + guidance * (cond - uncond)


@torch.no_grad()
def sample(unet, scheduler, labels, seeds, steps: int = 20, guidance: float = 2.0,
           callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> np.ndarray:
    """Run `scheduler` (DDIM, DPM-Solver, ...) from per-seed noise; returns uint8 (N, 32, 32, 3).

    Noise for sample i is torch.randn((3, 32, 32)) from its own CPU generator seeded with seeds[i],
    then moved to the UNet's device, so a sample does not depend on its batch or device. callback(i, x_t, x0_pred) sees every step.
    """
    cfg = unet.config
    x = torch.stack([torch.randn((cfg.in_channels, cfg.sample_size, cfg.sample_size),
                                 generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    x, labels = x.to(unet.device), torch.as_tensor(labels, dtype=torch.long, device=unet.device)
    scheduler.set_timesteps(steps, device=unet.device)
    x = x * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        eps = guided_eps(unet, scheduler.scale_model_input(x, t), t, labels, guidance)
        out = scheduler.step(eps, t, x)
        x = out.prev_sample
        if callback is not None:
            callback(i, x, getattr(out, "pred_original_sample", None))
    return to_uint8(x)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] to uint8 (N, H, W, 3)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
