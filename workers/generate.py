"""The one sampling path: a loaded model turns per-sample seeds into images with any sampler.

`submit`'s actors, `explain`, `score_model`, the dry run and the benchmarks all sample through
``ImageGenerator.images``, so they share the seed rule (workers/seeds.py), guidance, the timestep
spacing and the uint8 conversion.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from novarch_batch.workers.encode import to_uint8
from novarch_batch.workers.model import ModelInfo, load_unet, make_denoiser
from novarch_batch.workers.samplers import SAMPLERS, Callback, Schedule
from novarch_batch.workers.schedules import alphas_cumprod_for, trailing_timesteps
from novarch_batch.workers.seeds import draw_noise, make_generators
from novarch_batch.workers.spec import ANY_CLASS, DISTILLED, SamplingConfig


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class ImageGenerator:
    def __init__(self, folder: str | Path, device: str = "auto"):
        self.device = pick_device(device)
        # bf16 network on GPU halves memory traffic; the sampler maths stays float32 (workers.samplers).
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.info = ModelInfo.read(Path(folder))
        self.unet = load_unet(Path(folder), self.device, dtype)
        self.alphas_cumprod = alphas_cumprod_for(self.info.scheduler_config).to(self.device)
        self.clip_sample = bool(self.info.scheduler_config.get("clip_sample", True))
        self.prediction_type = self.info.scheduler_config.get("prediction_type", "epsilon")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.info.channels, self.info.image_size, self.info.image_size)  # (C, H, W)

    def label_for(self, class_name: str) -> int:
        return self.info.null_label if class_name == ANY_CLASS else self.info.classes.index(class_name)

    @torch.inference_mode()
    def sample(self, seeds: list[int], sampling: SamplingConfig, callback: Callback = None,
               timesteps: list[int] | None = None) -> torch.Tensor:
        """(B, C, H, W) float32 in [-1, 1] for the given per-sample seeds; callback(i, x_t, x0) sees every step.

        `timesteps` replaces the trailing grid for experiments (benchmarks/spacing.py); jobs never pass it.
        """
        generators = make_generators(seeds)
        x = draw_noise(generators, self.shape, self.device)  # (B, C, H, W) float32
        labels = torch.full((len(seeds),), self.label_for(sampling.class_name), device=self.device, dtype=torch.long)
        # a distilled student carries its guidance in its weights: one pass per step, as it was trained
        guidance = 1.0 if sampling.sampler == DISTILLED else sampling.guidance
        denoise = make_denoiser(self.unet, labels, self.info.null_label, guidance)
        timesteps = timesteps or trailing_timesteps(len(self.alphas_cumprod), sampling.steps)
        schedule = Schedule(self.alphas_cumprod, timesteps, self.clip_sample, self.prediction_type)
        sampler = SAMPLERS[sampling.sampler]
        return sampler(denoise, x, schedule, generators=generators, callback=callback, **sampling.sampler_kwargs())

    def images(self, seeds: list[int], sampling: SamplingConfig, timesteps: list[int] | None = None) -> np.ndarray:
        """(B, H, W, C) uint8 images for the given per-sample seeds."""
        return to_uint8(self.sample(seeds, sampling, timesteps=timesteps))
