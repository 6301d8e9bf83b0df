"""Steps against guidance: where the default sampler's network evaluations buy fidelity (MODEL.md).

    python -m benchmarks.guidance_interval --settings 10:all,16:650-950 --count 1000 --out benchmarks/results/guidance_interval-cpu.json

Each setting is STEPS:INTERVAL (or STEPS:INTERVAL:GUIDANCE) of `--sampler dpmpp-2m-sde`; a row is
images 0..count-1 of `submit --class NAME --seed S` (building 10, house 11, any 12, as in MODEL.md),
sampled through ImageGenerator with exactly that SamplingConfig and judged by `evaluate`.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace

import click
import numpy as np
import torch

from benchmarks.common import machine, save
from novarch_batch.pipeline.cli_options import sampling_option
from novarch_batch.training.evaluate import evaluate_images
from novarch_batch.workers.generate import ImageGenerator
from novarch_batch.workers.model import default_model_dir
from novarch_batch.workers.seeds import sample_seed
from novarch_batch.workers.spec import SamplingConfig

ROW_SEEDS = {"building": 10, "house": 11, "any": 12}


def parse_setting(text: str) -> SamplingConfig:
    steps, interval, *guidance = text.split(":")
    return SamplingConfig(steps=int(steps), guidance_interval=interval, guidance=float(guidance[0]) if guidance else 2.0)


def score_row(generator: ImageGenerator, base: SamplingConfig, class_name: str, count: int, batch: int) -> dict:
    """One row: images 0..count-1 of `submit --class NAME --seed ROW_SEEDS[NAME]` with `base`'s sampling, judged."""
    sampling = replace(base, class_name=class_name, seed=ROW_SEEDS[class_name])
    sampling.validate(("building", "house"))
    seeds = [sample_seed(sampling.seed, i) for i in range(count)]
    t0 = time.perf_counter()
    images = np.concatenate([generator.images(seeds[i:i + batch], sampling) for i in range(0, count, batch)])
    seconds = time.perf_counter() - t0
    m = evaluate_images(images, class_name)
    return {"sampler": sampling.sampler, "steps": sampling.steps, "guidance": sampling.guidance,
            "guidance_interval": sampling.guidance_interval, "final_timestep": sampling.final_timestep,
            "spacing": sampling.spacing, "timesteps": sampling.timesteps(), "class": class_name, "network_evaluations_per_image": sampling.network_evaluations(),
            "purity": m["purity"], "accuracy": m["conditional_accuracy"], "class_shares": m["class_shares"],
            "fd_ratio": m["fd_ratio"], "fd_scene_ratio": m["fd_scene_ratio"], "sharpness": sharpness(images),
            "sampling_seconds": round(seconds, 1)}


def sharpness(images: np.ndarray) -> float:
    """Mean absolute Laplacian of the grey image, in levels: real buildings read ~37, real houses ~30
    (`benchmarks/final_timestep.py` prints both); a softened sample reads lower."""
    x = images.astype(np.float32).mean(-1)
    laplacian = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return round(float(np.abs(laplacian).mean()), 2)


@click.command()
@click.option("--settings", default="10:all,16:650-950", show_default=True, help="Comma-separated STEPS:INTERVAL[:GUIDANCE].")
@click.option("--classes", default="building,house,any", show_default=True)
@sampling_option("final_timestep")
@sampling_option("spacing", default="trailing", help="Where the steps lie, as submit's flag; 'trailing', the grid "
                 "MODEL.md's interval and scale tables were measured on.")
@click.option("--count", default=1000, show_default=True)
@click.option("--batch", default=500, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--out", default=None)
def main(settings, classes, final_timestep, spacing, count, batch, threads, out):
    torch.set_num_threads(threads)
    generator = ImageGenerator(default_model_dir(), "cpu")
    rows = []
    for base in map(parse_setting, settings.split(",")):
        for class_name in classes.split(","):
            rows.append(score_row(generator, replace(base, final_timestep=final_timestep, spacing=spacing), class_name, count, batch))
            click.echo(json.dumps(rows[-1]))
    save({"machine": machine(), "sampler": SamplingConfig.sampler, "count": count, "threads": threads, "rows": rows}, out)


if __name__ == "__main__":
    main()
