"""`submit --dry-run`: the plan and a time estimate from a short calibration, writing nothing."""
from __future__ import annotations

import os
import time

import torch

from pipeline.spec import JobSpec

CALIBRATION_IMAGES = 16  # one small micro-batch: a few seconds on a laptop CPU, enough for a rate


def dry_run(spec: JobSpec) -> dict:
    """Measure this machine's sampling rate on one micro-batch and extrapolate to the job."""
    from pipeline.cluster import default_cpu_workers
    from workers.actor import ShardSampler
    from workers.seeds import sample_seed

    gpus = torch.cuda.device_count() if spec.run.device != "cpu" else 0
    cpus = os.cpu_count() or 1
    workers = spec.run.workers or gpus or default_cpu_workers(cpus)
    threads = max(1, cpus // workers) if not gpus else None
    actor = ShardSampler(spec.model, spec.run.device, threads)
    s = spec.sampling
    n = min(CALIBRATION_IMAGES, spec.run.batch_size, spec.count)
    seeds = [sample_seed(s.seed, i) for i in range(n)]
    actor.sample(seeds[:2], s.class_name, s.sampler, 1, s.guidance)  # warm-up
    t0 = time.perf_counter()
    actor.sample(seeds, s.class_name, s.sampler, s.steps, s.guidance, s.eta)
    per_actor = n / (time.perf_counter() - t0)
    # One actor per GPU, or per share of the cores: each runs at about the calibrated rate.
    rate = per_actor * (workers if gpus else min(workers, cpus))
    return {
        "job_id": spec.job_id,
        "output": f"{spec.output.out.rstrip('/')}/{spec.job_id}",
        "images": spec.count,
        "shards": f"{spec.num_shards} of {spec.output.shard_size} images",
        "actors": f"{workers} x {'1 GPU' if gpus else f'{threads} CPU thread(s)'} on this machine",
        "sampler": f"{s.sampler}, {s.steps} steps, guidance {s.guidance}, class {s.class_name}",
        "calibrated_images_per_second": round(rate, 2),
        "estimated_minutes": round(spec.count / rate / 60, 1),
        "note": "calibrated on this machine; a cluster's GPUs are faster (see BENCHMARKS.md)",
    }
