"""The shard plan: pure arithmetic, so every process agrees on it without talking."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    index: int
    start: int  # first sample id, inclusive
    stop: int  # last sample id, exclusive

    @property
    def size(self) -> int:
        return self.stop - self.start


def num_shards(count: int, shard_size: int) -> int:
    return math.ceil(count / shard_size)


def shard(index: int, count: int, shard_size: int) -> Shard:
    """Shard k holds ids [k * shard_size, min((k + 1) * shard_size, count))."""
    if not 0 <= index < num_shards(count, shard_size):
        raise IndexError(f"shard {index} is outside a plan of {num_shards(count, shard_size)} shards")
    start = index * shard_size
    return Shard(index, start, min(start + shard_size, count))


def shard_of(sample_id: int, shard_size: int) -> int:
    return sample_id // shard_size


def missing_shards(count: int, shard_size: int, committed: set[int]) -> list[Shard]:
    """Shards still to sample, in order; the plan is generated lazily by index, never as id lists."""
    return [shard(k, count, shard_size) for k in range(num_shards(count, shard_size)) if k not in committed]
