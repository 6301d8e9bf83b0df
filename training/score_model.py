"""Sample a model folder through `submit`'s own sampling path and score it for the model card.

    python -m novarch_batch.training.score_model workers/models/novarch-tiny --count 1000 --device cpu

Row k (building, house, any) holds images 0..count-1 of `submit --class NAME --seed BASE+k` with
the given sampler settings (the submit defaults unless flags say otherwise), so any image of the
card can be made again with `submit`.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import click
import numpy as np
import torch

from novarch_batch.training.evaluate import evaluate_images
from novarch_batch.training.preview import render_grid
from novarch_batch.workers.generate import ImageGenerator
from novarch_batch.workers.seeds import sample_seed
from novarch_batch.workers.spec import SPACINGS, SamplingConfig

CARD_SEED = 10  # row k uses base seed CARD_SEED + k; any fixed value works
ROWS = ("building", "house", "any")


def sample_images(generator: ImageGenerator, sampling: SamplingConfig, count: int, batch: int = 500) -> np.ndarray:
    """Images 0..count-1 of a job with this SamplingConfig: exactly what `submit` writes for them."""
    seeds = [sample_seed(sampling.seed, i) for i in range(count)]
    return np.concatenate([generator.images(seeds[i:i + batch], sampling) for i in range(0, count, batch)])


def score_model(generator: ImageGenerator, sampling: SamplingConfig, count: int, batch: int = 500,
                judge=None, grids: Path | None = None, echo=None) -> dict:
    """The card's metrics for each row; `sampling`'s class and seed are replaced per row."""
    results = {}
    for k, name in enumerate(ROWS):
        started = time.perf_counter()
        images = sample_images(generator, replace(sampling, class_name=name, seed=CARD_SEED + k), count, batch)
        if generator.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = round(time.perf_counter() - started, 1)
        results[name] = {**evaluate_images(images, name, judge), "sampling_seconds": seconds}
        if grids:
            render_grid(images[:64], None, grids / f"samples_{name}.png", cols=16)
        if echo:
            echo(json.dumps({name: results[name]}))
    return results


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--count", default=1000, show_default=True, type=int)
@click.option("--sampler", default=SamplingConfig.sampler, show_default=True)
@click.option("--steps", default=SamplingConfig.steps, show_default=True, type=int)
@click.option("--guidance", default=SamplingConfig.guidance, show_default=True, type=float)
# (written out here: training sits below pipeline, whose cli_options.sampling_option the benchmarks use)
@click.option("--guidance-interval", default=SamplingConfig.guidance_interval, show_default=True,
              help="Guided timesteps, as submit's flag ('all': every step).")
@click.option("--final-timestep", default=SamplingConfig.final_timestep, show_default=True, type=int,
              help="The last step's timestep at most, as submit's flag (999: the plain trailing grid).")
@click.option("--spacing", default=SamplingConfig.spacing, show_default=True, type=click.Choice(SPACINGS),
              help="Where the steps lie, as submit's flag.")
@click.option("--threads", default=2, show_default=True, type=int)
@click.option("--batch", default=500, show_default=True, type=int, help="Micro-batch (images per network call).")
@click.option("--device", default="cpu", show_default=True, help="Where the UNet runs: cpu or cuda.")
@click.option("--out", default=None, help="Folder for scores.json and one preview grid per row.")
def main(folder, count, sampler, steps, guidance, guidance_interval, final_timestep, spacing, threads, batch, device, out):
    """Score FOLDER for building, house and any."""
    torch.set_num_threads(threads)
    sampling = SamplingConfig(sampler=sampler, steps=steps, guidance=guidance, guidance_interval=guidance_interval,
                              final_timestep=final_timestep, spacing=spacing)
    sampling.validate(("building", "house"))
    generator = ImageGenerator(folder, device)
    results = score_model(generator, sampling, count, batch, grids=Path(out) if out else None, echo=click.echo)
    if out:
        (Path(out) / "scores.json").write_text(json.dumps({"sampling": sampling.__dict__, "device": device, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
