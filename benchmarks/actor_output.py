"""The host side of one sampler actor, without the sampler: how many images/s can it store?

    python -m benchmarks.actor_output --shards 8 --shard-size 1000 --processes 0,2 --repeats 3 \
        --out benchmarks/results/actor_output-cpu.json

A GPU actor's sampling thread hands each micro-batch to its store threads, which build the rows,
encode the PNGs (inline or on the encoder processes), and commit each shard's Parquet file. At the
10,000 images/s a GPU should reach, that host work must keep up. This runs the product's
ShardWorker on real shards into a local folder, with `--format parquet` (the default for s3://)
and `files`, but replaces the sampler by procedural scenes painted beforehand
(training/dataset.py), so the number is the output path's ceiling, not a sampling rate. Two
shards are in flight, as the driver keeps them (IN_FLIGHT).
"""
from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import click
import numpy as np

from benchmarks.common import echo_medians, machine, rate_summary, save
from novarch_batch.training.dataset import make_images
from novarch_batch.workers.shard_worker import ShardWorker
from novarch_batch.workers.spec import SamplingConfig
from novarch_batch.workers.tasks import ShardTask


def painted_stream(pool: np.ndarray):
    """Stands in for ImageGenerator.stream: the same micro-batches, images taken from `pool`."""
    def stream(batches, sampling, pad_to=0):
        for seeds in batches:
            yield pool[: len(seeds)]
    return stream


def run(worker: ShardWorker, out: str, shards: int, shard_size: int, batch: int, fmt: str) -> float:
    created = datetime.now(timezone.utc).isoformat()
    tasks = [ShardTask("bench", out, k, k * shard_size, (k + 1) * shard_size, SamplingConfig(), batch, created, fmt)
             for k in range(shards)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as calls:  # the driver keeps two shards in flight per actor
        results = list(calls.map(worker.run_shard, tasks))
    seconds = time.perf_counter() - t0
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return shards * shard_size / seconds


@click.command()
@click.option("--shards", default=8, show_default=True)
@click.option("--shard-size", default=1000, show_default=True)
@click.option("--batch", default=1000, show_default=True, help="Micro-batch (a GPU actor's is large).")
@click.option("--processes", default="0,2", show_default=True, help="Encoder processes to try, comma-separated.")
@click.option("--formats", default="parquet,files", show_default=True)
@click.option("--repeats", default=3, show_default=True)
@click.option("--out", default=None)
def main(shards, shard_size, batch, processes, formats, repeats, out):
    pool, _ = make_images(np.arange(batch), 4000)  # real scenes: PNG size and speed depend on content
    rates: dict[str, list[float]] = {}
    workers = {}
    for n in (int(p) for p in processes.split(",")):
        worker = ShardWorker("novarch-tiny", "cpu", threads=1, encode_processes=n)
        worker.generator.stream = painted_stream(pool)
        workers[n] = worker
    for r in range(repeats + 1):  # round 0 warms up (encoder processes, codecs); the variants alternate
        for fmt in formats.split(","):
            for n, worker in workers.items():
                with tempfile.TemporaryDirectory() as folder:
                    rate = run(worker, folder, shards, shard_size, batch, fmt)
                if r:
                    rates.setdefault(f"{fmt}, {n} encoder processes", []).append(rate)
    for worker in workers.values():
        worker.encoder.close()
    results = {"machine": machine(), "shards": shards, "shard_size": shard_size, "batch": batch, "repeats": repeats,
               "images_per_second": rate_summary(rates)}
    echo_medians(rates)
    save(results, out)


if __name__ == "__main__":
    main()
