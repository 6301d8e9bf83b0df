"""`submit --dry-run`: the job's shape and a time estimate from a short calibration, writing nothing."""
from __future__ import annotations

import os
import time

import torch

from novarch_batch.workers.spec import ANY_CLASS, DISTILLED, JobSpec, SamplingConfig

CALIBRATION_IMAGES = 16  # one small micro-batch: a few seconds on a laptop CPU, enough for a rate
# A dry run does not compile: a compilation takes longer than the whole calibration (BENCHMARKS.md, `--compile` on the CPU).
COMPILE_NOTE = ("; calibrated without --compile, which adds a compilation per actor and batch shape "
                "(about 20 s on a 2-core CPU, 2 s from inductor's on-disk cache) and then samples faster (1.1x on the CPU; BENCHMARKS.md)")


def estimate(spec: JobSpec) -> dict:
    """Measure this machine's sampling rate on one micro-batch and extrapolate to the job."""
    from dataclasses import replace

    from novarch_batch.pipeline.cluster import default_cpu_actors
    from novarch_batch.workers.generate import ImageGenerator
    from novarch_batch.workers.model_cache import fetch_model_folder
    from novarch_batch.workers.seeds import sample_seed

    gpus = torch.cuda.device_count() if spec.run.device != "cpu" else 0
    cpus = os.cpu_count() or 1
    actors = spec.run.actors or gpus or default_cpu_actors(cpus)
    threads = max(1, cpus // actors) if not gpus else None
    if threads:
        torch.set_num_threads(threads)
    generator = ImageGenerator(fetch_model_folder(spec.model), spec.run.device)
    s = spec.sampling
    n = min(CALIBRATION_IMAGES, spec.run.batch_size, spec.count)
    seeds = [sample_seed(s.seed, i) for i in range(n)]
    generator.images(seeds[:2], replace(s, steps=2, guidance_interval="999-999"))  # warm-up: t = 999 guided (2B), the last step not (B)
    t0 = time.perf_counter()
    generator.images(seeds, s)
    per_actor = n / (time.perf_counter() - t0)
    # One actor per GPU, or per share of the cores: each runs at about the calibrated rate.
    rate = per_actor * (actors if gpus else min(actors, cpus))
    return {
        "job_id": spec.job_id,
        "output": f"{spec.output.out.rstrip('/')}/{spec.job_id}",
        "images": spec.count,
        "shards": f"{spec.num_shards} of {spec.output.shard_size} images",
        "actors": f"{actors} x {'1 GPU' if gpus else f'{threads} CPU thread(s)'} on this machine",
        "sampler": f"{s.sampler}, {s.steps} steps from t = {_grid(s.timesteps())}, class {s.class_name}",
        "guidance": guidance_plan(s),
        "network_evaluations_per_image": s.network_evaluations(),
        "calibrated_images_per_second": round(rate, 2),
        "estimated_minutes": round(spec.count / rate / 60, 1),
        "note": "calibrated on this machine; a cluster's GPUs are faster (see BENCHMARKS.md)" + (COMPILE_NOTE if spec.run.compile else ""),
    }


def guidance_plan(s: SamplingConfig) -> str:
    """What the guidance flags do on this job's grid, in words: an interval that holds no step of the
    grid is legal (it samples as guidance 1, and is hashed so) but is seldom what was meant."""
    if s.sampler == DISTILLED:
        return f"{s.guidance:g}, folded into the student (one evaluation per step)"
    if s.class_name == ANY_CLASS:
        return "none: class any samples unconditionally"
    if s.guidance in (0.0, 1.0):
        return "0: unconditional" if s.guidance == 0.0 else "1: conditional, one evaluation per step"
    guided = s.guided_timesteps()
    if not guided:
        return (f"{s.guidance:g} in {s.guidance_interval}, which holds no step of this grid: conditional throughout "
                f"(--guidance-interval all guides every step)")
    return f"{s.guidance:g} at t = {_grid(guided)} ({len(guided)} of {s.steps} steps, a second evaluation each)"


def _grid(timesteps: list[int]) -> str:
    """The step grid as a reader takes it in: every timestep up to 12, else the first three and last two."""
    shown = timesteps if len(timesteps) <= 12 else [*timesteps[:3], "...", *timesteps[-2:]]
    return ", ".join(map(str, shown))
