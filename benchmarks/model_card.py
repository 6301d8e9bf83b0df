"""The model card's numbers: 1,000 images per request (building, house, any) at the submit defaults.

    python -m benchmarks.model_card --count 1000 --out benchmarks/results/model_card.json
"""
from __future__ import annotations

import numpy as np
import click
import torch

from benchmarks.common import machine, save
from pipeline.spec import SamplingConfig
from training.evaluate import evaluate_images
from training.judge import load_judge
from workers.actor import ShardSampler
from workers.model import default_model_dir
from workers.seeds import sample_seed


@click.command()
@click.option("--count", default=1000, show_default=True)
@click.option("--sampler", default=SamplingConfig.sampler, show_default=True)
@click.option("--steps", default=SamplingConfig.steps, show_default=True)
@click.option("--guidance", default=SamplingConfig.guidance, show_default=True)
@click.option("--batch", default=500, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--out", default="benchmarks/results/model_card.json", show_default=True)
def main(count, sampler, steps, guidance, batch, device, out):
    actor = ShardSampler(str(default_model_dir()), device, torch.get_num_threads())
    judge = load_judge()
    results = {}
    for base, class_name in enumerate(("building", "house", "any")):
        seeds = [sample_seed(10 + base, i) for i in range(count)]
        images = np.concatenate([actor.sample(seeds[i:i + batch], class_name, sampler, steps, guidance) for i in range(0, count, batch)])
        results[class_name] = evaluate_images(images, class_name, judge)
        m = results[class_name]
        print(class_name, {k: m[k] for k in ("purity", "conditional_accuracy", "balance", "fd", "fd_floor", "fd_ratio")}, flush=True)
    save({"machine": machine(), "device": str(actor.device), "sampler": sampler, "steps": steps, "guidance": guidance, "results": results}, out)


if __name__ == "__main__":
    main()
