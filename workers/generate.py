"""The one sampling path: a loaded model turns per-sample seeds into images with any sampler.

`submit`'s actors, `explain`, `score_model`, the dry run and the benchmarks all sample through
``ImageGenerator``, so they share the seed rule (workers/seeds.py), guidance, the timestep
spacing and the uint8 conversion.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from novarch_batch.workers.model import ModelInfo, load_unet, make_denoiser
from novarch_batch.workers.samplers import SAMPLERS, Callback, Schedule
from novarch_batch.workers.schedules import alphas_cumprod_for
from novarch_batch.workers.seeds import GeneratorNoise, NoiseSource, PredrawnNoise, make_generators
from novarch_batch.workers.spec import ANY_CLASS, DISTILLED, SamplingConfig, parse_interval

# Threads that draw the next micro-batch's noise while the GPU samples this one. One CPU thread
# draws ~70,000 per-sample draws/s and two scale to ~2x (BENCHMARKS.md, per-sample noise); the
# 10-step SDE default needs 10 draws per image, so 10,000 images/s would need 1.5 threads on the
# critical path. On a CPU the cores are busy sampling and noise is ~1% of the work: drawn inline.
GPU_NOISE_THREADS = 4
# Pinned host memory for one micro-batch's draws made ahead (two are alive: this batch's and the next's).
# The 10-step default's 10 draws of 1,024 images take 126 MB; DDPM-1000's thousand would take 12 GB a batch,
# so a sampler with more draws than fit takes the rest from the generators, which continue the same streams.
PREDRAWN_BYTES = 256 << 20


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8, rounding to the nearest level of 255."""
    pixels = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()


class ImageGenerator:
    """`noise_threads`: None = GPU_NOISE_THREADS on a GPU, none on a CPU. `compile`: torch.compile the
    network for fixed batch shapes (CUDA graphs on a GPU); the first batch of each shape pays the
    compilation (20-25 s on a 2-core CPU), so `stream` pads short micro-batches to one shape."""

    def __init__(self, folder: str | Path, device: str = "auto", *, noise_threads: int | None = None, compile: bool = False):
        self.device = pick_device(device)
        cuda = self.device.type == "cuda"
        # bf16 network on GPU halves memory traffic; the sampler maths stays float32 (workers.samplers).
        dtype = torch.bfloat16 if cuda else torch.float32
        self.info = ModelInfo.read(Path(folder))
        self.unet = load_unet(Path(folder), self.device, dtype)
        self.compiled = compile
        if compile:
            self.unet = torch.compile(self.unet, dynamic=False, mode="reduce-overhead" if cuda else None)
        # On the CPU: the samplers read it as Python floats at every step (Schedule.alpha_bar), and a read
        # from GPU memory would make the host wait for the GPU each time instead of queueing the next step.
        self.alphas_cumprod = alphas_cumprod_for(self.info.scheduler_config)
        self.clip_sample = bool(self.info.scheduler_config.get("clip_sample", True))
        self.prediction_type = self.info.scheduler_config.get("prediction_type", "epsilon")
        self.noise_threads = (GPU_NOISE_THREADS if cuda else 0) if noise_threads is None else noise_threads
        self._noise_pool = ThreadPoolExecutor(self.noise_threads, thread_name_prefix="noise") if self.noise_threads else None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.info.channels, self.info.image_size, self.info.image_size)  # (C, H, W)

    def label_for(self, class_name: str) -> int:
        return self.info.null_label if class_name == ANY_CLASS else self.info.classes.index(class_name)

    def noise_for(self, seeds: list[int], sampling: SamplingConfig) -> NoiseSource:
        """The samples' noise streams: drawn ahead on the noise threads (returns at once), or when asked."""
        generators = make_generators(seeds)
        if not self._noise_pool:
            return GeneratorNoise(generators)
        per_draw = len(seeds) * 4 * math.prod(self.shape)  # float32 bytes of one draw of the micro-batch
        draws = min(sampling.noise_draws(), max(1, PREDRAWN_BYTES // per_draw))
        return PredrawnNoise.start(self._noise_pool, self.noise_threads, generators, self.shape, draws,
                                   pin=self.device.type == "cuda")

    @torch.inference_mode()
    def sample(self, seeds: list[int], sampling: SamplingConfig, callback: Callback = None,
               timesteps: list[int] | None = None, noise: NoiseSource | None = None) -> torch.Tensor:
        """(B, C, H, W) float32 in [-1, 1] for the given per-sample seeds; callback(i, x_t, x0) sees every step.

        `noise` is the seeds' own streams when the caller started them early (``stream``).
        `timesteps` replaces the sampling's grid for experiments (benchmarks/spacing.py); jobs never pass it.
        """
        noise = noise or self.noise_for(seeds, sampling)
        x = noise.draw(self.shape, self.device)  # (B, C, H, W) float32
        labels = torch.full((len(seeds),), self.label_for(sampling.class_name), device=self.device, dtype=torch.long)
        # a distilled student carries its guidance in its weights: one pass per step, as it was trained
        guidance = 1.0 if sampling.sampler == DISTILLED else sampling.guidance
        denoise = make_denoiser(self.unet, labels, self.info.null_label, guidance, parse_interval(sampling.guidance_interval))
        timesteps = timesteps or sampling.timesteps(len(self.alphas_cumprod))
        schedule = Schedule(self.alphas_cumprod, timesteps, self.clip_sample, self.prediction_type)
        sampler = SAMPLERS[sampling.sampler]
        return sampler(denoise, x, schedule, noise=noise, callback=callback, **sampling.sampler_kwargs())

    def images(self, seeds: list[int], sampling: SamplingConfig, timesteps: list[int] | None = None) -> np.ndarray:
        """(B, H, W, C) uint8 images for the given per-sample seeds."""
        return to_uint8(self.sample(seeds, sampling, timesteps=timesteps))

    def stream(self, batches: list[list[int]], sampling: SamplingConfig, pad_to: int = 0) -> Iterator[np.ndarray]:
        """uint8 images for each micro-batch of seeds, in order. The next batch's noise is started
        before this one samples, so on a GPU the noise threads draw it while the GPU works. A compiled
        network sees one shape: a short batch is padded with copies of its last seed to `pad_to` (the
        job's micro-batch, so every shard has the same shape) or the longest batch, and cut off after."""
        full = max(pad_to, *map(len, batches)) if batches else 0
        padded = [seeds + [seeds[-1]] * (full - len(seeds)) if self.compiled else seeds for seeds in batches]
        upcoming = self.noise_for(padded[0], sampling) if padded else None
        for k, seeds in enumerate(padded):
            noise = upcoming
            if k + 1 < len(padded):
                upcoming = self.noise_for(padded[k + 1], sampling)
            yield to_uint8(self.sample(seeds, sampling, noise=noise))[: len(batches[k])]
