"""What the determinism contract's per-sample noise costs, drawn when asked or ahead on threads.

    python -m benchmarks.noise_cost --batch 1024 --draws 10 --threads 1,2 --repeats 5 --out benchmarks/results/noise_cost-cpu.json

Every sample draws its noise from its own CPU generator (workers/seeds.py): once at the start and,
for the ancestral and SDE samplers, once per step but the last (the 10-step SDE default: 10 draws
per image). This times a micro-batch's draws three ways, with the product's own code:
  - "asked": GeneratorNoise, one draw of every sample per sampler step, on the sampling thread;
  - "predrawn, N threads": PredrawnNoise, each sample's draws in one call, spread over N threads,
    as a GPU actor draws the next micro-batch while the GPU samples this one.
It reports draws/s and the images/s that noise alone allows at the default (10 draws per image).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import click
import torch

from benchmarks.common import machine, median, save
from novarch_batch.workers.seeds import GeneratorNoise, PredrawnNoise, make_generators, sample_seed

SHAPE = (3, 32, 32)


def asked(seeds: list[int], draws: int, pool=None, threads: int = 0) -> None:
    noise = GeneratorNoise(make_generators(seeds))
    for _ in range(draws):
        noise.draw(SHAPE, "cpu")


def predrawn(seeds: list[int], draws: int, pool, threads: int) -> None:
    noise = PredrawnNoise.start(pool, threads, make_generators(seeds), SHAPE, draws)
    noise.draw(SHAPE, "cpu")  # waits for every thread


@click.command()
@click.option("--batch", default=1024, show_default=True)
@click.option("--draws", default=10, show_default=True, help="Draws per sample (the 10-step SDE default draws 10).")
@click.option("--threads", default="1,2", show_default=True, help="Drawing threads to try, comma-separated.")
@click.option("--repeats", default=5, show_default=True)
@click.option("--out", default=None)
def main(batch, draws, threads, repeats, out):
    torch.set_num_threads(1)
    seeds = [sample_seed(0, i) for i in range(batch)]
    counts = [int(n) for n in threads.split(",")]
    pools = {n: ThreadPoolExecutor(n) for n in counts}
    variants = {"asked, sampling thread": (asked, None, 0)}
    variants.update({f"predrawn, {n} thread(s)": (predrawn, pools[n], n) for n in counts})
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeats + 1):  # round 0 warms up; the variants alternate within each round
        for name, (fn, pool, n) in variants.items():
            t0 = time.perf_counter()
            fn(seeds, draws, pool, n)
            if r:
                rates[name].append(batch * draws / (time.perf_counter() - t0))
    results = {"machine": machine(), "batch": batch, "draws_per_image": draws, "repeats": repeats,
               "draws_per_second": {name: median(v) for name, v in rates.items()},
               "images_per_second_if_noise_alone": {name: median(v) / draws for name, v in rates.items()}}
    for name, v in rates.items():
        click.echo(f"{name}: {median(v):,.0f} draws/s, so noise alone allows {median(v) / draws:,.0f} images/s")
    save(results, out)


if __name__ == "__main__":
    main()
