"""How far the FD ratio moves with the seed alone: one setting, several job seeds (MODEL.md, "How much
one row says").

    python -m benchmarks.fd_spread --classes building,house --seeds 10,11,12,13,14 \
        --out benchmarks/results/fd_spread-sde-g1-cpu.json

Each row is images 0..count-1 of `submit --class NAME --seed S` at the given sampling flags (default:
submit's), judged by `evaluate`; per class, the FD ratios of every seed in both of evaluate's
feature spaces (the judge's and the scene reader's), their median and their spread (max / min). A
target such as "FD at most 10x the floor" or "within 1.2x of DDPM-1000" is only as sharp as this
spread: two rows that differ by less than it are not told apart by one seed.
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from benchmarks.common import job_sampling_options, machine, median, save
from benchmarks.sampler_quality import sample_class
from novarch_batch.training.evaluate import evaluate_images
from novarch_batch.training.judge import load_judge
from novarch_batch.training.scene import load_scene_reader
from novarch_batch.workers.generate import ImageGenerator
from novarch_batch.workers.model import default_model_dir


@click.command()
@click.option("--model", default=None, help="Model folder (default: the shipped novarch-tiny).")
@click.option("--classes", default="building,house", show_default=True)
@click.option("--seeds", default="10,11,12,13,14", show_default=True, help="Comma-separated job seeds (--seed).")
@job_sampling_options
@click.option("--count", default=1000, show_default=True)
@click.option("--batch", default=500, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--out", default=None)
def main(model, classes, seeds, sampler, steps, guidance, guidance_interval, final_timestep, spacing, count, batch, threads, out):
    torch.set_num_threads(threads)
    folder = Path(model) if model else default_model_dir()
    generator = ImageGenerator(folder, "auto")
    judge, reader = load_judge(), load_scene_reader()
    rows, spread = [], {}
    for class_name in classes.split(","):
        for seed in map(int, seeds.split(",")):
            images = sample_class(generator, class_name, count, sampler, steps, guidance, seed, batch, guidance_interval,
                                  final_timestep, spacing)
            metrics = evaluate_images(images, class_name, judge, reader)
            rows.append({"class": class_name, "seed": seed, "purity": metrics["purity"], "fd_ratio": metrics["fd_ratio"],
                         "fd_scene_ratio": metrics["fd_scene_ratio"], "scene_mean_shift": metrics["scene_mean_shift"],
                         "conditional_accuracy": metrics["conditional_accuracy"], "class_shares": metrics["class_shares"]})
            click.echo(json.dumps(rows[-1]))
        spread[class_name] = {space: spread_of([row[space] for row in rows if row["class"] == class_name])
                              for space in ("fd_ratio", "fd_scene_ratio")}
        click.echo(json.dumps({class_name: spread[class_name]}))
    settings = {"sampler": sampler, "steps": steps, "guidance": guidance, "guidance_interval": guidance_interval,
                "final_timestep": final_timestep, "spacing": spacing, "count": count}
    model_facts = {"name": generator.info.name, "weights_sha256": generator.info.sha256}
    save({"machine": machine(), "model": model_facts, "settings": settings, "rows": rows, "spread": spread}, out)


def spread_of(ratios: list[float]) -> dict:
    return {"median": median(ratios), "min": min(ratios), "max": max(ratios), "max_over_min": max(ratios) / min(ratios)}


if __name__ == "__main__":
    main()
