"""Quality against steps for every sampler, judged by the shipped classifier (BENCHMARKS.md).

For each sampler and step count: N buildings and N houses at the given guidance, then the model
card's metrics (novarch_batch.training.evaluate): purity, conditional accuracy and the Fréchet distance in the
judge's features against real images of the class, as a ratio to the real-vs-real floor, and the
sampling time per image. DDPM at 1,000 steps is the reference.

    python -m benchmarks.sampler_quality --per-class 100 --out benchmarks/results/quality.json
"""
from __future__ import annotations

import time

import click
import numpy as np
import torch

from benchmarks.common import machine, save
from novarch_batch.pipeline.cli_options import sampling_option
from novarch_batch.training.evaluate import evaluate_images
from novarch_batch.training.judge import load_judge
from novarch_batch.training.score_model import sample_images
from novarch_batch.workers.generate import ImageGenerator
from novarch_batch.workers.model import default_model_dir
from novarch_batch.workers.spec import SamplingConfig


def sample_class(generator: ImageGenerator, class_name: str, n: int, sampler: str, steps: int, guidance: float, base_seed: int,
                 batch: int, guidance_interval: str = "all", final_timestep: int = SamplingConfig.final_timestep,
                 spacing: str = "trailing") -> np.ndarray:
    sampling = SamplingConfig(class_name=class_name, sampler=sampler, steps=steps, guidance=guidance, seed=base_seed,
                              guidance_interval=guidance_interval, final_timestep=final_timestep, spacing=spacing)
    return sample_images(generator, sampling, n, batch)


def score(judge, buildings: np.ndarray, houses: np.ndarray) -> dict:
    """The model card's metrics (novarch_batch.training.evaluate) per class; FD against real images of that class."""
    b, h = evaluate_images(buildings, "building", judge), evaluate_images(houses, "house", judge)
    return {"purity": (b["purity"] + h["purity"]) / 2, "accuracy": {"building": b["conditional_accuracy"], "house": h["conditional_accuracy"]},
            "fd": {"building": b["fd"], "house": h["fd"]}, "fd_floor": {"building": b["fd_floor"], "house": h["fd_floor"]},
            "fd_ratio": (b["fd_ratio"] + h["fd_ratio"]) / 2}


@click.command()
@click.option("--per-class", default=100, show_default=True)
@click.option("--samplers", default="ddpm,ddim,dpmpp-2m,dpmpp-2m-sde", show_default=True)
@click.option("--steps", "steps_list", default="5,10,20,50", show_default=True)
@click.option("--reference-steps", default=1000, show_default=True, help="DDPM reference; 0 skips it.")
@click.option("--guidance", default=2.0, show_default=True)
@sampling_option("guidance_interval", default="all",
                 help="Guided timesteps, as submit's flag; 'all' compares the samplers as the BENCHMARKS.md tables do.")
@sampling_option("final_timestep")
@sampling_option("spacing", default="trailing", help="Where the steps lie, as submit's flag; 'trailing', the grid the "
                 "BENCHMARKS.md sampler tables were measured on.")
@click.option("--threads", default=2, show_default=True)
@click.option("--batch", default=100, show_default=True, help="Micro-batch (500+ on a GPU).")
@click.option("--device", default="auto", show_default=True)
@click.option("--out", default="benchmarks/results/quality.json", show_default=True)
def main(per_class, samplers, steps_list, reference_steps, guidance, guidance_interval, final_timestep, spacing, threads, batch, device, out):
    torch.set_num_threads(threads)
    actor = ImageGenerator(default_model_dir(), device)
    judge = load_judge()
    n = 2 * per_class
    settings = [(s, k) for s in samplers.split(",") for k in map(int, steps_list.split(","))]
    if reference_steps:
        settings.append(("ddpm", reference_steps))
    rows = []
    print(f"{'sampler':10} {'steps':>5} {'purity':>7} {'acc(b)':>7} {'acc(h)':>7} {'FD/floor':>8} {'ms/img':>8}")
    for sampler, steps in settings:
        t0 = time.perf_counter()
        b = sample_class(actor, "building", per_class, sampler, steps, guidance, 100, batch, guidance_interval, final_timestep, spacing)
        h = sample_class(actor, "house", per_class, sampler, steps, guidance, 200, batch, guidance_interval, final_timestep, spacing)
        if actor.device.type == "cuda":
            torch.cuda.synchronize()
        ms = 1000 * (time.perf_counter() - t0) / n
        row = {"sampler": sampler, "steps": steps, "guidance": guidance, "guidance_interval": guidance_interval,
               "final_timestep": final_timestep, "spacing": spacing, "ms_per_image": ms, **score(judge, b, h)}
        rows.append(row)
        print(f"{sampler:10} {steps:5d} {row['purity']:7.3f} {row['accuracy']['building']:7.3f} {row['accuracy']['house']:7.3f} "
              f"{row['fd_ratio']:8.1f} {ms:8.2f}", flush=True)
    save({"machine": machine(), "device": str(actor.device), "per_class": per_class, "rows": rows}, out)


if __name__ == "__main__":
    main()
