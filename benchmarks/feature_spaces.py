"""What each of evaluate's two feature spaces sees: real images changed in how they are drawn (blur,
noise, a shift) or in what they show (no dusk, no trees, no clouds, only the narrower half), scored
against real ones by the judge's FD ratio and the scene reader's (MODEL.md, "A second feature space").

    python -m benchmarks.feature_spaces --out benchmarks/results/feature_spaces-cpu.json

Each row holds `count` real images of one class from a seed no evaluation set uses; a change of
what is shown keeps only the real images that match it (the painter's own scene factors), so the
pixels stay real and only the mix of scenes moves.
"""
from __future__ import annotations

import json

import click
import numpy as np
import torch

from benchmarks.common import machine, save
from benchmarks.final_timestep import PERTURBATION_SEED, perturbations
from novarch_batch.training.dataset import SCENE_FACTORS, make_images, scene_factors
from novarch_batch.training.evaluate import evaluate_images, real_images
from novarch_batch.training.export import CLASSES


def scene_changes(count: int, class_name: str) -> dict[str, np.ndarray]:
    """Real images of the class whose scenes differ from the real mix in one way each."""
    pool = np.arange(16 * count)  # the rarest change, no clouds, keeps 0.16 of a class's half
    images, labels = make_images(pool, PERTURBATION_SEED)
    factors = scene_factors(pool, PERTURBATION_SEED)
    keep = labels == CLASSES.index(class_name)
    images, factors = images[keep], dict(zip(SCENE_FACTORS, factors[keep].T))
    narrow = factors["width"] <= np.median(factors["width"])
    return {
        "daytime only (real: 30% dusk)": images[factors["dusk"] == 0][:count],
        "no trees (real: 1.1 per scene)": images[factors["trees"] == 0][:count],
        "no clouds (real: 1.2 per scene)": images[factors["clouds"] == 0][:count],
        "the narrower half only": images[narrow][:count],
    }


@click.command()
@click.option("--count", default=1000, show_default=True, help="Images per row.")
@click.option("--threads", default=2, show_default=True)
@click.option("--out", default=None)
def main(count, threads, out):
    torch.set_num_threads(threads)
    rows = []
    for class_name in CLASSES:
        drawn = perturbations(real_images(count, class_name, PERTURBATION_SEED))
        for kind, changes in (("drawn", drawn), ("shown", scene_changes(count, class_name))):
            for name, images in changes.items():
                m = evaluate_images(images, class_name)
                shift = max(m["scene_mean_shift"].items(), key=lambda kv: abs(kv[1]))
                rows.append({"class": class_name, "changes": kind, "change": name, "count": len(images),
                             "purity": m["purity"], "fd_ratio": m["fd_ratio"], "fd_scene_ratio": m["fd_scene_ratio"],
                             "largest_scene_shift": {shift[0]: shift[1]}})
                click.echo(json.dumps(rows[-1]))
    save({"machine": machine(), "count": count, "rows": rows}, out)


if __name__ == "__main__":
    main()
