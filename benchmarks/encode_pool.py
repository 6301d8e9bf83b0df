"""PNG encoding of 32x32 images: one thread, a thread pool, or a process pool (issue: an output path that keeps up).

    python -m benchmarks.encode_pool --images 8192 --workers 2 --repeats 5 --out benchmarks/results/encode_pool-cpu.json

Pillow releases the GIL for part of the work, so threads scale only partly; a process pool pays
pickling of every image and result. Each variant encodes the same uint8 images with the product's
own encode_png and sha256; the variants alternate, and the medians of the repeats are reported.
The last variant is the actors' own path (workers/shard_worker.py): chunks of ENCODE_CHUNK images
handed from the store threads to a PngEncoder's processes.
"""
from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import click
import numpy as np

from benchmarks.common import echo_medians, machine, rate_summary, save
from novarch_batch.training.dataset import make_images
from novarch_batch.storage import UPLOAD_CONCURRENCY
from novarch_batch.workers.encode import PngEncoder, encode_png, sha256_hex
from novarch_batch.workers.shard_worker import ENCODE_CHUNK

CHUNK = 256  # images per process-pool task: one pickle round trip amortised over many encodes


def encode_one(image: np.ndarray) -> tuple[bytes, str]:
    data = encode_png(image)
    return data, sha256_hex(data)


def encode_chunk(images: np.ndarray) -> list[tuple[bytes, str]]:
    return [encode_one(image) for image in images]


@click.command()
@click.option("--images", default=8192, show_default=True)
@click.option("--workers", default=2, show_default=True, help="Threads or processes in the pools.")
@click.option("--repeats", default=5, show_default=True)
@click.option("--out", default=None)
def main(images, workers, repeats, out):
    batch, _ = make_images(np.arange(images), 4000)  # real scenes: PNG size and speed depend on content
    threads = ThreadPoolExecutor(max_workers=workers)
    processes = ProcessPoolExecutor(max_workers=workers)
    encoder, store_threads = PngEncoder(workers), ThreadPoolExecutor(max_workers=UPLOAD_CONCURRENCY)
    chunks = [batch[lo:lo + ENCODE_CHUNK] for lo in range(0, images, ENCODE_CHUNK)]
    variants = {
        "one thread": lambda: [encode_one(im) for im in batch],
        f"{workers} threads": lambda: list(threads.map(encode_one, batch)),
        f"{workers} processes": lambda: [r for part in processes.map(encode_chunk, np.array_split(batch, max(1, images // CHUNK)))
                                         for r in part],
        f"actors' PngEncoder, {workers} processes": lambda: [r for part in store_threads.map(encoder.encode, chunks) for r in part],
    }
    reference = variants["one thread"]()
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeats + 1):  # repeat 0 warms the pools
        for name, run in variants.items():
            t0 = time.perf_counter()
            result = run()
            if r:
                rates[name].append(images / (time.perf_counter() - t0))
            assert [h for _, h in result] == [h for _, h in reference], f"{name} changed the bytes"
    threads.shutdown()
    processes.shutdown()
    encoder.close()
    store_threads.shutdown()
    results = {"machine": machine(), "images": images, "workers": workers, "repeats": repeats,
               "images_per_second": rate_summary(rates)}
    echo_medians(rates)
    save(results, out)


if __name__ == "__main__":
    main()
