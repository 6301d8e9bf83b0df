"""Where the default sampler's 10 steps go: the trailing grid against power spacings (MODEL.md).

    python -m benchmarks.spacing --rho 1,0.7,2 --count 1000 --threads 1 --out benchmarks/results/spacing-cpu.json

t_k = ceil(T ((N - k) / N)^rho) - 1 for k = 0..N-1: rho = 1 is the trailing grid (999, 899, ... 99),
rho > 1 spends the steps near the clean end (rho 2: ... 40, 10), rho < 1 near pure noise (rho 0.7:
999, 928, ... 324, 199). Rows: building (seed 10) and house (seed 11), 1,000 images each, judged
as in MODEL.md. Sampling goes through ImageGenerator with only the timesteps replaced.
`--final-timestep T` then lowers each grid's last timestep to T, as submit's flag does to the
trailing grid (MODEL.md, "The last step"); 999 leaves the grids as they are.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import replace

import click
import numpy as np
import torch

from benchmarks.common import machine, save
from novarch_batch.training.evaluate import evaluate_images
from novarch_batch.workers.generate import ImageGenerator
from novarch_batch.workers.model import default_model_dir
from novarch_batch.workers.seeds import sample_seed
from novarch_batch.workers.spec import SamplingConfig


def power_timesteps(num_train_timesteps: int, steps: int, rho: float) -> list[int]:
    return [math.ceil(num_train_timesteps * ((steps - k) / steps) ** rho) - 1 for k in range(steps)]


@click.command()
@click.option("--rho", "rhos", default="1,0.7", show_default=True, help="Comma-separated exponents.")
@click.option("--sampler", default=SamplingConfig.sampler, show_default=True)
@click.option("--steps", default=SamplingConfig.steps, show_default=True)
@click.option("--guidance", default=2.0, show_default=True, help="The scale of MODEL.md's spacing tables.")
@click.option("--guidance-interval", default="all", show_default=True,
              help="'all': each grid gets guidance at every step, as MODEL.md's spacing tables were measured.")
@click.option("--final-timestep", "finals", default="999", show_default=True,
              help="Comma-separated: each grid's last timestep at most (999: as the power spacing puts it).")
@click.option("--count", default=1000, show_default=True)
@click.option("--batch", default=500, show_default=True)
@click.option("--threads", default=1, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", default=None)
def main(rhos, sampler, steps, guidance, guidance_interval, finals, count, batch, threads, device, out):
    torch.set_num_threads(threads)
    generator = ImageGenerator(default_model_dir(), device)
    rows = []
    grids = [(rho, final) for rho in map(float, rhos.split(",")) for final in map(int, finals.split(","))]
    for rho, final in grids:
        timesteps = power_timesteps(len(generator.alphas_cumprod), steps, rho)
        timesteps[-1] = min(timesteps[-1], final)
        for seed, class_name in ((10, "building"), (11, "house")):
            sampling = replace(SamplingConfig(), sampler=sampler, steps=steps, class_name=class_name, seed=seed,
                               guidance=guidance, guidance_interval=guidance_interval)
            seeds = [sample_seed(seed, i) for i in range(count)]
            t0 = time.perf_counter()
            images = np.concatenate([generator.images(seeds[i:i + batch], sampling, timesteps) for i in range(0, count, batch)])
            m = evaluate_images(images, class_name)
            rows.append({"rho": rho, "final_timestep": final, "timesteps": timesteps, "guidance_interval": guidance_interval,
                         "class": class_name, "purity": m["purity"], "accuracy": m["conditional_accuracy"],
                         "fd_ratio": m["fd_ratio"], "seconds": round(time.perf_counter() - t0)})
            click.echo(json.dumps(rows[-1]))
    save({"machine": machine(), "sampler": sampler, "steps": steps, "guidance_interval": guidance_interval, "count": count,
          "rows": rows}, out)


if __name__ == "__main__":
    main()
