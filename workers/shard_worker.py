"""The work inside an actor: load the model once, then sample, encode, store and commit whole shards.

Ray runs it through ``novarch_batch.workers.actor.ShardActor``; tests use it in-process.
Resources (GPUs, CPU threads, how many actors) are decided by the driver in ``pipeline/``; this
class only uses what it is given. ``run_shard`` never raises across the pool: it returns a
ShardResult whose ``error`` names what went wrong, and the driver decides about retries.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime

import torch

from novarch_batch.storage import UPLOAD_CONCURRENCY, Storage, open_storage
from novarch_batch.workers import shard_format
from novarch_batch.workers.commit import commit_shard
from novarch_batch.workers.encode import encode_png, sha256_hex
from novarch_batch.workers.generate import ImageGenerator
from novarch_batch.workers.model_cache import fetch_model_folder
from novarch_batch.workers.seeds import sample_seed
from novarch_batch.workers.tasks import FAULT_ENV, FORCE_DEVICE_ENV, ShardResult, ShardTask


def ray_node_id() -> str:
    """This process's Ray node (short), so reports tell nodes apart even on one host."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id()[-8:]
    except Exception:  # outside Ray (in-process tests, benchmarks)
        return "-"


class ShardWorker:
    """Runs with two calls in flight (the driver's ``max_concurrency``): one shard samples while the
    previous one waits for its uploads and commits, so the sampler never idles between shards."""

    def __init__(self, model: str, device: str = "auto", threads: int | None = None, model_sha256: str | None = None):
        forced = os.environ.get(FORCE_DEVICE_ENV)
        if forced:
            device, threads = forced, threads or 1  # a stand-in for a GPU: one thread, so actors on one host share it
        if threads:
            torch.set_num_threads(threads)
        folder = fetch_model_folder(model, expected_sha256=model_sha256)  # s3:// once per node, then cached
        self.generator = ImageGenerator(folder, device)
        self.info = self.generator.info
        self._sampling = threading.Lock()  # one shard samples at a time; the other call only finishes up
        self.pool = ThreadPoolExecutor(max_workers=UPLOAD_CONCURRENCY, thread_name_prefix="store")
        self.name = f"{socket.gethostname()}:{ray_node_id()}:{os.getpid()}"
        self._storages: dict[str, Storage] = {}

    def ping(self) -> str:
        return self.name

    def _storage(self, url: str) -> Storage:
        if url not in self._storages:
            self._storages[url] = open_storage(url)
        return self._storages[url]

    def run_shard(self, task: ShardTask) -> ShardResult:
        started = time.perf_counter()
        try:
            if str(task.shard) in os.environ.get(FAULT_ENV, "").split(","):
                raise RuntimeError(f"fault injected for shard {task.shard} ({FAULT_ENV})")
            rows, sample_seconds = self._sample_and_store(task)
            checksum = commit_shard(self._storage(task.job_url), task.shard, shard_format.shard_bytes(rows))
            return ShardResult(task.shard, True, task.stop - task.start, time.perf_counter() - started, sample_seconds,
                               self.name, checksum=checksum)
        except Exception as e:
            detail = "".join(traceback.format_exception_only(type(e), e)).strip()
            return ShardResult(task.shard, False, 0, time.perf_counter() - started, 0.0, self.name, detail)

    def _sample_and_store(self, task: ShardTask) -> tuple[dict, float]:
        """Sample micro-batches on this thread; encode and upload on the pool while the next batch samples."""
        storage = self._storage(task.job_url)
        ids = list(range(task.start, task.stop))
        seeds = [sample_seed(task.sampling.seed, i) for i in ids]
        pending: list[Future] = []
        sample_seconds = 0.0
        with self._sampling:
            for lo in range(0, len(ids), task.batch_size):
                t0 = time.perf_counter()
                images = self.generator.images(seeds[lo : lo + task.batch_size], task.sampling)
                sample_seconds += time.perf_counter() - t0
                for j, image in enumerate(images):
                    pending.append(self.pool.submit(self._store_image, storage if not task.embed_images else None, task, ids[lo + j], image))
        stored = [f.result() for f in pending]  # re-raises the first upload error: the shard is not committed
        height, width = stored[0][2][:2] if stored else (0, 0)
        created = datetime.fromisoformat(task.created_at)
        rows = {
            "id": ids,
            "job_id": [task.job_id] * len(ids),
            "shard": [task.shard] * len(ids),
            "seed": seeds,
            **{column: [value] * len(ids) for column, value in task.sampling.columns().items()},
            "model": [self.info.name] * len(ids),
            "model_sha256": [self.info.sha256] * len(ids),
            "image_key": [key for key, _, _, _ in stored],
            "width": [width] * len(ids),
            "height": [height] * len(ids),
            "format": ["png"] * len(ids),
            "sha256": [digest for _, digest, _, _ in stored],
            "created_at": [created] * len(ids),
            "image": [data for _, _, _, data in stored] if task.embed_images else [None] * len(ids),
        }
        return rows, sample_seconds

    def _store_image(self, storage, task: ShardTask, sample_id: int, image):
        """Encode one image and upload it, or keep its bytes for the Parquet row when the job embeds
        images (storage is None): one PUT per shard instead of one per image."""
        data = encode_png(image)
        if storage is None:
            return shard_format.embedded_key(task.shard, sample_id), sha256_hex(data), image.shape, data
        key = shard_format.image_key(task.shard, sample_id)
        storage.put_bytes(key, data)
        return key, sha256_hex(data), image.shape, None
