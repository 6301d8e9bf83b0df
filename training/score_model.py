"""Sample a model folder and score it for the model card.

    python -m training.score_model workers/models/novarch-tiny --count 1000 --steps 20 --guidance 2.0
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, UNet2DModel

from training.evaluate import evaluate_images
from training.preview import render_grid
from training.sampling import class_index, sample

SCORE_SEED = 123_456  # base of the per-sample noise seeds; any fixed value works


def sample_class(folder, class_name: str, count: int, steps: int, guidance: float,
                 batch: int = 250, device: str = "cpu") -> np.ndarray:
    """`count` images of `class_name` with DPM-Solver++ (2M) and classifier-free guidance."""
    unet = UNet2DModel.from_pretrained(folder, use_safetensors=True).eval().to(device)
    scheduler = DPMSolverMultistepScheduler.from_pretrained(folder, algorithm_type="dpmsolver++", solver_order=2)
    label = class_index(class_name)
    out = []
    for start in range(0, count, batch):
        seeds = [SCORE_SEED + label * 10_000_000 + i for i in range(start, min(start + batch, count))]
        out.append(sample(unet, scheduler, [label] * len(seeds), seeds, steps=steps, guidance=guidance))
    return np.concatenate(out)


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--count", default=1000, show_default=True, type=int)
@click.option("--steps", default=20, show_default=True, type=int)
@click.option("--guidance", default=2.0, show_default=True, type=float)
@click.option("--threads", default=2, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True, help="Where the UNet runs: cpu or cuda.")
@click.option("--out", default=None, help="Folder for scores.json and one preview grid per class.")
def main(folder: str, count: int, steps: int, guidance: float, threads: int, device: str, out: str | None) -> None:
    """Score FOLDER for building, house and any."""
    torch.set_num_threads(threads)
    results = {}
    for name in ("building", "house", "any"):
        start = time.perf_counter()
        images = sample_class(folder, name, count, steps, guidance, device=device)
        seconds = round(time.perf_counter() - start, 1)
        results[name] = {**evaluate_images(images, name), "sampling_seconds": seconds, "device": device}
        if out:
            render_grid(images[:64], None, Path(out) / f"samples_{name}.png", cols=16)
        click.echo(json.dumps({name: results[name]}))
    if out:
        (Path(out) / "scores.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
