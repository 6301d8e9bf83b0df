"""Quality against steps for every sampler, judged by the shipped classifier (BENCHMARKS.md).

For each sampler and step count: N buildings and N houses at the given guidance, then purity,
conditional accuracy and the Fréchet distance (judge features) against 2N real images, beside
the real-vs-real floor, and the sampling time per image. DDPM at 1,000 steps is the reference.

    python -m benchmarks.sampler_quality --per-class 100 --out benchmarks/results/quality.json
"""
from __future__ import annotations

import time

import click
import numpy as np
import torch

from benchmarks.common import machine, save
from training.dataset import make_images
from training.evaluate import FLOOR_SEED, REAL_SEED
from training.judge import JUDGE_CLASSES, features, load_judge, predict_proba
from training.metrics import frechet_distance
from workers.actor import SamplerActor
from workers.model import default_model_dir
from workers.seeds import sample_seed

BATCH = 100


def sample_class(actor: SamplerActor, class_name: str, n: int, sampler: str, steps: int, guidance: float, base_seed: int) -> np.ndarray:
    seeds = [sample_seed(base_seed, i) for i in range(n)]
    return np.concatenate([actor.sample(seeds[i:i + BATCH], class_name, sampler, steps, guidance) for i in range(0, n, BATCH)])


def score(judge, real_feats, floor: float, buildings: np.ndarray, houses: np.ndarray) -> dict:
    images = np.concatenate([buildings, houses])
    probs = predict_proba(judge, images)
    judged = probs.argmax(1)
    n = len(buildings)
    accuracy = {"building": float((judged[:n] == 0).mean()), "house": float((judged[n:] == 1).mean())}
    fd = frechet_distance(features(judge, images), real_feats)
    return {"purity": float((probs[:, :2].max(1) >= 0.9).mean()), "accuracy": accuracy,
            "neither": float((judged == JUDGE_CLASSES.index("neither")).mean()), "fd": fd, "fd_floor": floor, "fd_ratio": fd / floor}


@click.command()
@click.option("--per-class", default=100, show_default=True)
@click.option("--samplers", default="ddpm,ddim,dpmpp-2m", show_default=True)
@click.option("--steps", "steps_list", default="5,10,20,50", show_default=True)
@click.option("--reference-steps", default=1000, show_default=True, help="DDPM reference; 0 skips it.")
@click.option("--guidance", default=2.0, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--out", default="benchmarks/results/quality.json", show_default=True)
def main(per_class, samplers, steps_list, reference_steps, guidance, threads, out):
    torch.set_num_threads(threads)
    actor = SamplerActor(str(default_model_dir()), "auto", threads)
    judge = load_judge()
    n = 2 * per_class
    real_feats = features(judge, make_images(np.arange(n), REAL_SEED)[0])
    floor = frechet_distance(real_feats, features(judge, make_images(np.arange(n), FLOOR_SEED)[0]))
    settings = [(s, k) for s in samplers.split(",") for k in map(int, steps_list.split(","))]
    if reference_steps:
        settings.append(("ddpm", reference_steps))
    rows = []
    print(f"{'sampler':10} {'steps':>5} {'purity':>7} {'acc(b)':>7} {'acc(h)':>7} {'FD':>8} {'FD/floor':>8} {'ms/img':>8}")
    for sampler, steps in settings:
        t0 = time.perf_counter()
        b = sample_class(actor, "building", per_class, sampler, steps, guidance, 100)
        h = sample_class(actor, "house", per_class, sampler, steps, guidance, 200)
        ms = 1000 * (time.perf_counter() - t0) / n
        row = {"sampler": sampler, "steps": steps, "guidance": guidance, "ms_per_image": ms, **score(judge, real_feats, floor, b, h)}
        rows.append(row)
        print(f"{sampler:10} {steps:5d} {row['purity']:7.3f} {row['accuracy']['building']:7.3f} {row['accuracy']['house']:7.3f} "
              f"{row['fd']:8.3f} {row['fd_ratio']:8.2f} {ms:8.1f}", flush=True)
    save({"machine": machine(), "per_class": per_class, "rows": rows}, out)


if __name__ == "__main__":
    main()
