"""Per-sample seeds and noise: a sample depends on (base seed, sample id) only (DESIGN.md).

Each sample's noise is one stream from its own CPU generator: the initial noise first, then one
draw per stochastic step. Samplers read it through a ``NoiseSource``: ``GeneratorNoise`` draws
each step's noise when asked; ``PredrawnNoise`` holds a micro-batch's draws made ahead of time
(on other threads, while the accelerator samples the batch before). Both give the same bytes.
"""
from __future__ import annotations

from concurrent.futures import Executor
from typing import Protocol

import torch

from novarch_batch.workers.seed_hash import SEED_MASK, sample_seed  # noqa: F401  (the seeds' home for their users)


def make_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per sample; it yields the initial noise, then ancestral noise in step order."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def draw_noise(generators: list[torch.Generator], shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, *shape) float32 noise, row b drawn from generators[b] on the CPU, then moved to the device."""
    rows = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device)


class NoiseSource(Protocol):
    def draw(self, shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
        """The next (B, *shape) float32 draw of every sample's stream, on `device`."""


class GeneratorNoise:
    """Draws each sample's next noise from its generator when the sampler asks (one CPU thread)."""

    def __init__(self, generators: list[torch.Generator]):
        self.generators = generators

    def draw(self, shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
        return draw_noise(self.generators, shape, device)


# torch's CPU normal sampler fills 16 values at a time, so one (n, *shape) draw equals n draws of
# `shape` in a row only when a draw is a whole number of 16-value blocks (tests/test_samplers.py).
NORMAL_BLOCK = 16


# Inference mode is per thread: a block made under the caller's inference mode (ImageGenerator.sample)
# is an inference tensor, which only a thread in inference mode may write.
@torch.inference_mode()
def _draw_rows(generators: list[torch.Generator], draws: int, shape: tuple[int, ...], out: torch.Tensor) -> None:
    """out[k, b] = generators[b]'s k-th draw of `shape`; each sample's draws are made contiguous, then copied in."""
    whole = torch.Size(shape).numel() % NORMAL_BLOCK == 0
    for b, g in enumerate(generators):
        if whole:
            out[:, b].copy_(torch.randn((draws, *shape), generator=g, dtype=torch.float32))
        else:
            for k in range(draws):
                out[k, b].copy_(torch.randn(shape, generator=g, dtype=torch.float32))


class PredrawnNoise:
    """A micro-batch's first `draws` draws per sample, made ahead of time.

    ``PredrawnNoise.start`` splits the samples over an executor's threads (torch's sampler releases
    the GIL, so threads scale) and returns at once; ``draw`` waits for them the first time. A sampler
    that asks for more draws than were made continues from the generators, which are exactly where
    the predrawn stream ended, so the count is a matter of speed, never of which image comes out.
    """

    def __init__(self, generators: list[torch.Generator], shape: tuple[int, ...], draws: int, pin: bool = False):
        self.generators, self.shape, self.draws = generators, tuple(shape), draws
        # pinned host memory lets the copy to the GPU run asynchronously (non_blocking)
        self.block = torch.empty((draws, len(generators), *shape), dtype=torch.float32, pin_memory=pin)
        self.used = 0
        self.pending = []

    @classmethod
    def start(cls, executor: Executor, threads: int, generators: list[torch.Generator], shape: tuple[int, ...],
              draws: int, pin: bool = False) -> "PredrawnNoise":
        noise = cls(generators, shape, draws, pin)
        size = -(-len(generators) // max(1, threads))
        for lo in range(0, len(generators), size):
            part = noise.block[:, lo : lo + size]  # a view: each thread fills its own samples' columns
            noise.pending.append(executor.submit(_draw_rows, generators[lo : lo + size], draws, noise.shape, part))
        return noise

    def draw(self, shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
        for future in self.pending:
            future.result()  # re-raises a drawing thread's error here
        self.pending = []
        if self.used >= self.draws:  # past the predrawn part: the generators are exactly where it ended
            return draw_noise(self.generators, shape, device)
        if tuple(shape) != self.shape:  # the generators are past the predrawn draws: drawing now would skip them
            raise ValueError(f"noise of shape {tuple(shape)} asked for, but {self.draws - self.used} draw(s) of "
                             f"{self.shape} were drawn ahead and not used")
        rows = self.block[self.used]
        self.used += 1
        return rows.to(device, non_blocking=True)
