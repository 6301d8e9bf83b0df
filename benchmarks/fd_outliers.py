"""How much of a row's FD a handful of images make (MODEL.md, "How much one row says").

    python -m benchmarks.fd_outliers --classes house --seeds 10,11,12,13,14 \
        --out benchmarks/results/fd_outliers-house-cpu.json

Per job seed, images 0..count-1 of `submit --class NAME --seed S` at the given sampling flags
(default: submit's), and the FD ratio in the judge's features with the k images farthest from the
real set removed (Mahalanobis distance under the real features' covariance, ridged), for each k in
--drop. The same trimming of an independent real set is the control: it says how much removing k
of 1,000 moves FD when nothing is wrong with them. A row whose ratio falls far more than the
control's is made by those few images, not by the whole set.
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import torch

from benchmarks.common import job_sampling_options, machine, save
from benchmarks.sampler_quality import sample_class
from novarch_batch.training.evaluate import FLOOR_SEEDS, REAL_SEED, real_images
from novarch_batch.training.judge import JUDGE_CLASSES, features, load_judge, predict_proba
from novarch_batch.training.metrics import frechet_distance
from novarch_batch.workers.generate import ImageGenerator
from novarch_batch.workers.model import default_model_dir

RIDGE = 1e-3  # of the covariance's mean eigenvalue: the judge's 64 features are nearly collinear on real images


def farthest_first(feats: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Indices of `feats`, farthest from the real features' Gaussian first."""
    cov = np.cov(real.T)
    cov += RIDGE * np.trace(cov) / len(cov) * np.eye(len(cov))
    d = feats - real.mean(0)
    return np.argsort(-np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d))


def trimmed_ratios(feats: np.ndarray, real: np.ndarray, floor: float, drops: list[int]) -> dict[str, float]:
    order = farthest_first(feats, real)
    return {str(k): frechet_distance(feats[order[k:]], real) / floor for k in [0, *drops]}


@click.command()
@click.option("--model", default=None, help="Model folder (default: the shipped novarch-tiny).")
@click.option("--classes", default="house", show_default=True)
@click.option("--seeds", default="10,11,12,13,14", show_default=True, help="Comma-separated job seeds (--seed).")
@click.option("--drop", default="5,10,20", show_default=True, help="How many of the farthest images to remove, comma-separated.")
@job_sampling_options
@click.option("--count", default=1000, show_default=True)
@click.option("--batch", default=500, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--out", default=None)
def main(model, classes, seeds, drop, sampler, steps, guidance, guidance_interval, final_timestep, spacing, count, batch, threads, out):
    torch.set_num_threads(threads)
    generator = ImageGenerator(Path(model) if model else default_model_dir(), "auto")
    judge, drops = load_judge(), [int(k) for k in drop.split(",")]
    rows = []
    for class_name in classes.split(","):
        real = features(judge, real_images(count, class_name, REAL_SEED))
        floor = float(np.median([frechet_distance(real, features(judge, real_images(count, class_name, s))) for s in FLOOR_SEEDS]))
        control = trimmed_ratios(features(judge, real_images(count, class_name, FLOOR_SEEDS[0])), real, floor, drops)
        rows.append({"class": class_name, "seed": f"real {FLOOR_SEEDS[0]}", "fd_ratio_dropping": control})
        click.echo(json.dumps(rows[-1]))
        for seed in map(int, seeds.split(",")):
            images = sample_class(generator, class_name, count, sampler, steps, guidance, seed, batch, guidance_interval,
                                  final_timestep, spacing)
            feats = features(judge, images)
            farthest = farthest_first(feats, real)[: max(drops)]
            judged = predict_proba(judge, images[farthest]).argmax(1)
            rows.append({"class": class_name, "seed": seed, "fd_ratio_dropping": trimmed_ratios(feats, real, floor, drops),
                         "farthest_judged": {name: int((judged == k).sum()) for k, name in enumerate(JUDGE_CLASSES)}})
            click.echo(json.dumps(rows[-1]))
    settings = {"sampler": sampler, "steps": steps, "guidance": guidance, "guidance_interval": guidance_interval,
                "final_timestep": final_timestep, "spacing": spacing, "count": count, "drop": drops}
    save({"machine": machine(), "model": {"name": generator.info.name, "weights_sha256": generator.info.sha256},
          "settings": settings, "rows": rows}, out)


if __name__ == "__main__":
    main()
