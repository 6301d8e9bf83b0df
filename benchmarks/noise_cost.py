"""What the determinism contract's per-sample noise costs: draws from 1,024 generators, on one CPU thread.

    python -m benchmarks.noise_cost --batch 1024 --repeats 5 --out benchmarks/results/noise_cost-cpu.json

Every sample draws its noise from its own CPU generator (workers/seeds.py): once at the start and,
for the ancestral and SDE samplers, once per step. This times `draw_noise` for a micro-batch, and
says how many images/s that alone allows at the default sampler (10 steps: 11 draws per image) and
for the deterministic ones (one draw), to compare with a GPU's sampling rate.
"""
from __future__ import annotations

import time

import click
import torch

from benchmarks.common import machine, median, save
from novarch_batch.workers.seeds import draw_noise, make_generators, sample_seed


@click.command()
@click.option("--batch", default=1024, show_default=True)
@click.option("--repeats", default=5, show_default=True)
@click.option("--threads", default=1, show_default=True)
@click.option("--out", default=None)
def main(batch, repeats, threads, out):
    torch.set_num_threads(threads)
    generators = make_generators([sample_seed(0, i) for i in range(batch)])
    draw_noise(generators, (3, 32, 32))  # warm-up
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        draw_noise(generators, (3, 32, 32))
        rates.append(batch / (time.perf_counter() - t0))
    draws = median(rates)
    results = {"machine": machine(), "batch": batch, "repeats": repeats, "draws_per_second": draws,
               "images_per_second_if_noise_alone": {"dpmpp-2m-sde or ddpm, 10 steps (11 draws)": draws / 11,
                                                    "deterministic samplers (1 draw)": draws}}
    click.echo(f"{draws:,.0f} draws/s per thread: noise alone caps the 10-step SDE default at {draws / 11:,.0f} images/s")
    save(results, out)


if __name__ == "__main__":
    main()
