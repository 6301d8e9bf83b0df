"""Each sample's seed from the job's seed and its id: plain hashing, no torch, so the driver can check
a shard's seeds too (the generators that use them are in workers/seeds.py)."""
from __future__ import annotations

import hashlib

SEED_MASK = (1 << 63) - 1  # torch.Generator.manual_seed takes a non-negative int64


def sample_seed(base_seed: int, sample_id: int) -> int:
    """seed_i = first 8 bytes of BLAKE2b("base:id"): stable across Python, Ray and platforms."""
    digest = hashlib.blake2b(f"{base_seed}:{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & SEED_MASK
