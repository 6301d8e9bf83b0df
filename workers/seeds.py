"""Per-sample seeds and noise: a sample depends on (base seed, sample id) only (DESIGN.md)."""
from __future__ import annotations

import hashlib

import torch

SEED_MASK = (1 << 63) - 1  # torch.Generator.manual_seed takes a non-negative int64


def sample_seed(base_seed: int, sample_id: int) -> int:
    """seed_i = first 8 bytes of BLAKE2b("base:id"): stable across Python, Ray and platforms."""
    digest = hashlib.blake2b(f"{base_seed}:{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & SEED_MASK


def make_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per sample; it yields the initial noise, then ancestral noise in step order."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def draw_noise(generators: list[torch.Generator], shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, *shape) float32 noise, row b drawn from generators[b] on the CPU, then moved to the device."""
    rows = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device)
