"""The model card's numbers: 1,000 images per request (building, house, any) at the submit defaults.

    python -m benchmarks.model_card --count 1000 --out benchmarks/results/model_card.json

`--model` names a shipped model (MODEL.md's v1 rows: `--model novarch-tiny-v1 --guidance 2
--guidance-interval all --final-timestep 999 --spacing trailing`, the sampling of v1's days).

The sampling and scoring are training.score_model's (submit's own sampling path); this adds the
machine's description to the saved results.
"""
from __future__ import annotations

import click
import torch

from benchmarks.common import machine, save
from novarch_batch.pipeline.cli_options import sampling_option
from novarch_batch.training.judge import load_judge
from novarch_batch.training.score_model import score_model
from novarch_batch.workers.generate import ImageGenerator
from novarch_batch.workers.model import default_model_dir
from novarch_batch.workers.spec import SHIPPED_MODEL, SHIPPED_MODELS, SamplingConfig


@click.command()
@click.option("--model", default=SHIPPED_MODEL, show_default=True, type=click.Choice(SHIPPED_MODELS))
@click.option("--count", default=1000, show_default=True)
@click.option("--sampler", default=SamplingConfig.sampler, show_default=True)
@click.option("--steps", default=SamplingConfig.steps, show_default=True)
@click.option("--guidance", default=SamplingConfig.guidance, show_default=True)
@sampling_option("guidance_interval")
@sampling_option("final_timestep")
@sampling_option("spacing")
@click.option("--batch", default=500, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--out", default="benchmarks/results/model_card.json", show_default=True)
def main(model, count, sampler, steps, guidance, guidance_interval, final_timestep, spacing, batch, device, out):
    torch.set_num_threads(torch.get_num_threads())
    generator = ImageGenerator(default_model_dir(model), device)
    sampling = SamplingConfig(sampler=sampler, steps=steps, guidance=guidance, guidance_interval=guidance_interval,
                              final_timestep=final_timestep, spacing=spacing)
    results = score_model(generator, sampling, count, batch, judge=load_judge(), echo=print)
    save({"machine": machine(), "device": str(generator.device), "model": model, "sampler": sampler, "steps": steps, "guidance": guidance,
          "guidance_interval": guidance_interval, "final_timestep": final_timestep, "spacing": spacing, "results": results}, out)


if __name__ == "__main__":
    main()
