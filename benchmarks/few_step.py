"""The few-step student against the submit default, side by side in one run (issue: few-step sampling).

    python -m benchmarks.few_step --count 256 --repeats 5 --threads 2 --out benchmarks/results/few_step-cpu.json

Each repeat samples the same `count` images (one class per repeat, building and house in turn) with
the default sampler (dpmpp-2m-sde, 10 steps on the karras grid, no guidance: 10 network evaluations
per image), the trailing grid with guidance 2 in 650-950 (13: the default before), the same with
guidance at every step (20: the default when the student was made), and `--sampler distilled` (the
shipped student, 4 evaluations), alternating so all see the same machine state. Sampling only, through ImageGenerator (submit's own path); model loading excluded.
"""
from __future__ import annotations

import time
from dataclasses import replace

import click
import torch

from benchmarks.common import machine, median, rate_summary, save
from novarch_batch.workers.generate import ImageGenerator
from novarch_batch.workers.model import default_model_dir
from novarch_batch.workers.seeds import sample_seed
from novarch_batch.workers.spec import SHIPPED_MODEL, SHIPPED_STUDENT, SamplingConfig

SETTINGS = {
    "default": (SHIPPED_MODEL, SamplingConfig()),
    "guided_in_interval": (SHIPPED_MODEL, SamplingConfig(guidance=2.0, spacing="trailing")),
    "guided_every_step": (SHIPPED_MODEL, SamplingConfig(guidance=2.0, guidance_interval="all", spacing="trailing")),
    "distilled": (SHIPPED_STUDENT, SamplingConfig(sampler="distilled", steps=4)),
}


@click.command()
@click.option("--count", default=256, show_default=True, help="Images per setting and repeat.")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--repeats", default=5, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", default=None, help="JSON file for the results.")
def main(count, batch_size, repeats, threads, device, out):
    torch.set_num_threads(threads)
    generators = {name: ImageGenerator(default_model_dir(model), device) for name, (model, _) in SETTINGS.items()}
    seeds = [sample_seed(0, i) for i in range(count)]
    rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for r in range(repeats + 1):  # repeat 0 warms up kernels and the allocator
        class_name = ("building", "house")[r % 2]
        for name, (_, sampling) in SETTINGS.items():
            sampling = replace(sampling, class_name=class_name)
            t0 = time.perf_counter()
            for lo in range(0, count, batch_size):
                generators[name].images(seeds[lo:lo + batch_size], sampling)
            if r:
                rates[name].append(count / (time.perf_counter() - t0))
    results = {
        "machine": machine(),
        "count": count, "batch_size": batch_size, "repeats": repeats,
        "network_evaluations_per_image": {name: replace(s, class_name="building").network_evaluations()
                                          for name, (_, s) in SETTINGS.items()},
        "images_per_second": rate_summary(rates, digits=2),
        "speedup_median": median(rates["distilled"]) / median(rates["default"]),
        "speedup_median_against_guided_in_interval": median(rates["distilled"]) / median(rates["guided_in_interval"]),
        "speedup_median_against_guided_every_step": median(rates["distilled"]) / median(rates["guided_every_step"]),
    }
    click.echo(" ".join(f"{name} {median(r):.1f} images/s," for name, r in rates.items())
               + f" distilled / default {results['speedup_median']:.2f}x,"
               f" / guided in the interval {results['speedup_median_against_guided_in_interval']:.2f}x,"
               f" / guided every step {results['speedup_median_against_guided_every_step']:.2f}x")
    save(results, out)


if __name__ == "__main__":
    main()
