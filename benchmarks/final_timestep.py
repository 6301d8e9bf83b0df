"""Where the last step starts: the image is its clean-image estimate (MODEL.md, "The last step").

    python -m benchmarks.final_timestep --finals 999,50,30,15,8 --count 1000 --out benchmarks/results/final_timestep-cpu.json

Each row is images 0..count-1 of `submit --class NAME --seed S --final-timestep T` (building 10,
house 11, any 12, as in MODEL.md) at the other submit defaults, judged by `evaluate`, with the
mean absolute Laplacian of the images beside it (their sharpness; the real images' is printed
first). T = 999 is the plain trailing grid, whose last step starts at t = 99 at 10 steps.

    python -m benchmarks.final_timestep --sampler dpmpp-2m --spacings trailing,karras --finals 8 --guidance 2 \
        --guidance-interval all --out benchmarks/results/spacing-dpmpp-2m-cpu.json

puts each grid's steps where `--spacing` says (MODEL.md, "Where the steps lie"); at guidance 2 on
every step, the settings of MODEL.md's DDPM-1000 reference.

    python -m benchmarks.final_timestep --perturbations --out benchmarks/results/fd_perturbations-cpu.json

instead scores real images against real ones after a small change (a 3x3 blur blended in, pixel
noise, a 1 px shift): what the judge's FD ratio makes of softness against grain.
"""
from __future__ import annotations

import json

import click
import numpy as np
import torch

from benchmarks.common import machine, save
from benchmarks.guidance_interval import score_row, sharpness
from novarch_batch.pipeline.cli_options import sampling_option
from novarch_batch.training.evaluate import REAL_SEED, evaluate_images, real_images
from novarch_batch.workers.generate import ImageGenerator
from novarch_batch.workers.model import default_model_dir
from novarch_batch.workers.spec import SamplingConfig


PERTURBATION_SEED = 3005  # real images of none of evaluate's sets


def perturbations(images: np.ndarray) -> dict[str, np.ndarray]:
    x = images.astype(np.float32)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    blur = sum(padded[:, i:i + 32, j:j + 32] for i in range(3) for j in range(3)) / 9
    noise = np.random.default_rng(0).normal(0, 1, x.shape).astype(np.float32)
    to_uint8 = lambda a: np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return {"none": images, **{f"blur {share:.0%}": to_uint8((1 - share) * x + share * blur) for share in (0.25, 0.5)},
            **{f"noise sigma {sigma}": to_uint8(x + sigma * noise) for sigma in (4, 8, 16)},
            "shift 1 px": np.roll(images, 1, axis=2)}


def score_perturbations(count: int) -> list[dict]:
    rows = []
    for class_name in ("building", "house"):
        for name, images in perturbations(real_images(count, class_name, PERTURBATION_SEED)).items():
            m = evaluate_images(images, class_name)
            rows.append({"class": class_name, "perturbation": name, "purity": m["purity"], "fd_ratio": m["fd_ratio"],
                         "sharpness": sharpness(images)})
            click.echo(json.dumps(rows[-1]))
    return rows


@click.command()
@click.option("--finals", default="999,30,15", show_default=True, help="Comma-separated --final-timestep values.")
@click.option("--sampler", default=SamplingConfig.sampler, show_default=True)
@click.option("--steps", default=SamplingConfig.steps, show_default=True)
@click.option("--guidance", default=SamplingConfig.guidance, show_default=True, help="MODEL.md's sweep: 2.")
@sampling_option("guidance_interval")
@click.option("--spacings", default="trailing", show_default=True, help="Comma-separated --spacing values.")
@click.option("--classes", default="building,house,any", show_default=True)
@click.option("--count", default=1000, show_default=True)
@click.option("--batch", default=500, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--perturbations", "perturbed", is_flag=True, help="Score perturbed real images instead (see above).")
@click.option("--out", default=None)
def main(finals, sampler, steps, guidance, guidance_interval, spacings, classes, count, batch, threads, perturbed, out):
    torch.set_num_threads(threads)
    if perturbed:
        save({"machine": machine(), "count": count, "rows": score_perturbations(count)}, out)
        return
    generator = ImageGenerator(default_model_dir(), "cpu")
    real = {name: sharpness(real_images(count, name, REAL_SEED)) for name in classes.split(",")}
    click.echo(json.dumps({"real_sharpness": real}))
    rows = []
    for spacing in spacings.split(","):
        for final in map(int, finals.split(",")):
            for class_name in classes.split(","):
                base = SamplingConfig(sampler=sampler, steps=steps, guidance=guidance, guidance_interval=guidance_interval,
                                      final_timestep=final, spacing=spacing)
                rows.append(score_row(generator, base, class_name, count, batch))
                click.echo(json.dumps(rows[-1]))
    save({"machine": machine(), "count": count, "threads": threads, "real_sharpness": real, "rows": rows}, out)


if __name__ == "__main__":
    main()
