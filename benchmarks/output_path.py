"""Per-image costs of the output path: PNG encoding, Parquet, and S3 PUTs against upload concurrency.

    python -m benchmarks.output_path --images 2000 --out benchmarks/results/output_path.json
Starts its own SeaweedFS (loopback) for the PUT rates.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np

from benchmarks.common import machine, save
from novarch_batch.storage.s3 import S3Storage
from novarch_batch.pipeline.seaweed import EmbeddedS3
from novarch_batch.training.dataset import make_images
from novarch_batch.workers import shard_format
from novarch_batch.workers.encode import encode_png, sha256_hex


def per_second(n: int, fn) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def warm_per_second(n: int, fn, repeats: int = 5) -> float:
    """Median rate over repeats after one warm-up call (the first pays for codec and allocator set-up)."""
    fn()
    return statistics.median(per_second(n, fn) for _ in range(repeats))


@click.command()
@click.option("--images", default=2000, show_default=True)
@click.option("--concurrency", default="1,4,16,32", show_default=True)
@click.option("--out", default="benchmarks/results/output_path.json", show_default=True)
def main(images, concurrency, out):
    pixels, _ = make_images(np.arange(images), 7)
    pngs: list[bytes] = []
    encode_rate = per_second(images, lambda: pngs.extend(encode_png(p) for p in pixels))
    rows = {name: [] for name in shard_format.SCHEMA.names}
    now = datetime.now(timezone.utc)
    for i, data in enumerate(pngs[:1000]):
        for name, value in (("id", i), ("job_id", "j"), ("shard", 0), ("seed", i), ("class_label", "any"), ("label", -1), ("sampler", "ddpm"),
                            ("steps", 20), ("guidance", 2.0), ("guidance_interval", "all"), ("eta", 0.0), ("model", "m"), ("model_sha256", "0" * 64),
                            ("image_key", shard_format.image_key(0, i)), ("width", 32), ("height", 32), ("format", "png"),
                            ("sha256", sha256_hex(data)), ("created_at", now), ("image", None)):
            rows[name].append(value)
    parquet_rate = warm_per_second(1000, lambda: shard_format.shard_bytes(rows, ("building", "house")))
    results = {"machine": machine(), "png_bytes_mean": float(np.mean([len(p) for p in pngs])),
               "encode_images_per_s_one_thread": encode_rate, "parquet_rows_per_s": parquet_rate, "put_rate": {}}
    print(f"PNG encode: {encode_rate:,.0f} images/s on one thread ({results['png_bytes_mean']:.0f} bytes each)")
    print(f"Parquet shard (1,000 rows, zstd): {parquet_rate:,.0f} rows/s")
    with tempfile.TemporaryDirectory() as d, EmbeddedS3(Path(d)) as server:
        import os

        os.environ.update(server.env())
        storage = S3Storage.from_url(f"s3://{server.bucket}/puts")
        for c in map(int, concurrency.split(",")):
            keys = [f"c{c}/{i:06d}.png" for i in range(images)]
            with ThreadPoolExecutor(c) as pool:
                rate = per_second(images, lambda: list(pool.map(lambda kv: storage.put_bytes(kv[0], kv[1]), zip(keys, pngs))))
            results["put_rate"][c] = rate
            print(f"S3 PUTs at concurrency {c:>2}: {rate:,.0f} objects/s")
    save(results, out)


if __name__ == "__main__":
    main()
