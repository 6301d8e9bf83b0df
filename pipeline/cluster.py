"""Ray start-up and the actors' resources: how many sampler actors, with which GPUs, CPUs and threads."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray


@dataclass(frozen=True)
class ActorResources:
    """How many sampler actors, and what each one asks Ray for."""

    actors: int
    num_gpus: float
    num_cpus: float
    threads: int  # torch intra-op threads per actor
    device: str

    def describe(self) -> str:
        if self.num_gpus:
            return f"{self.actors} GPU actor(s), one GPU each"
        return f"{self.actors} CPU actor(s) x {self.threads} thread(s) (no GPU in the cluster)"


def connect(address: str | None) -> None:
    """Join --ray-address, or start a local Ray on this machine's cores."""
    if ray.is_initialized():
        return
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    address = address or os.environ.get("RAY_ADDRESS")  # set for a driver run by the Jobs API
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=os.cpu_count(), **kwargs)


def default_cpu_actors(cpus: int) -> int:
    """One single-thread actor per core: a small CNN at 32x32 gains little from intra-op threads, and
    two 1-thread processes sample 16% faster than one 2-thread process on 2 cores (BENCHMARKS.md)."""
    return max(1, cpus)


def actor_resources(actors: int, device: str) -> ActorResources:
    """`actors` = 0: one per GPU, else default_cpu_actors."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if gpus and device != "cpu":
        return ActorResources(actors or gpus, 1, 1, 0, "cuda")
    if device == "cuda":
        raise RuntimeError("--device cuda, but the Ray cluster has no GPU; use --device auto or cpu, or add GPU nodes")
    actors = actors or default_cpu_actors(cpus)
    threads = max(1, cpus // actors)
    # Fractional CPUs when the user asks for more actors than cores: Ray would otherwise wait forever.
    return ActorResources(actors, 0, min(float(threads), cpus / actors), threads, "cpu")
