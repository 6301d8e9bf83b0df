"""The work inside an actor: load the model once, then sample, encode, store and commit whole shards.

Where the images go is the writer's business (workers/writers.py, one per --format); the shard's
Parquet file is always written last, after the writer has closed, and commits the shard.

Ray runs it through ``novarch_batch.workers.actor.ShardActor``; tests use it in-process.
Resources (GPUs, CPU threads, how many actors) are decided by the driver in ``pipeline/``; this
class only uses what it is given. ``run_shard`` never raises across the pool: it returns a
ShardResult whose ``error`` names what went wrong, and the driver decides about retries.
"""
from __future__ import annotations

import os
import socket
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime

import torch

from novarch_batch.storage import UPLOAD_CONCURRENCY, Storage, StorageError, open_storage
from novarch_batch.workers import shard_format
from novarch_batch.workers.commit import commit_shard, committed_checksum
from novarch_batch.workers.encode import PngEncoder
from novarch_batch.workers.generate import ImageGenerator
from novarch_batch.workers.model_cache import fetch_model_folder
from novarch_batch.workers.seeds import sample_seed
from novarch_batch.workers.spec import SamplingConfig
from novarch_batch.workers.tasks import FAULT_ENV, FORCE_DEVICE_ENV, ShardResult, ShardTask
from novarch_batch.workers.writers import WRITERS, ShardWriter


def ray_node_id() -> str:
    """This process's Ray node (short), so reports tell nodes apart even on one host."""
    import ray

    if not ray.is_initialized():  # in-process tests and benchmarks: asking the runtime context would start a Ray
        return "-"
    return ray.get_runtime_context().get_node_id()[-8:]


# Images per encode-and-store task: one pickle round trip to an encoder process carries this many,
# and up to UPLOAD_CONCURRENCY chunks store at once (one PUT per image with --format files).
ENCODE_CHUNK = 64


class ShardWorker:
    """Runs with two calls in flight (the driver's ``max_concurrency``): one shard samples while the
    previous one waits for its uploads and commits, so the sampler never idles between shards."""

    def __init__(self, model: str, device: str = "auto", threads: int | None = None, model_sha256: str | None = None,
                 compile: bool = False, encode_processes: int = 0, warmup: tuple[SamplingConfig, int] | None = None):
        forced = os.environ.get(FORCE_DEVICE_ENV)
        if forced:  # a stand-in for a GPU: one thread and no encoder processes, so actors on one host share its cores
            device, threads, encode_processes = forced, threads or 1, 0
        if threads:
            torch.set_num_threads(threads)
        folder = fetch_model_folder(model, expected_sha256=model_sha256)  # s3:// once per node, then cached
        self.generator = ImageGenerator(folder, device, compile=compile)
        self.encoder = PngEncoder(encode_processes)
        self.info = self.generator.info
        # Every shard samples on this one thread, one shard at a time (the other call in flight only finishes
        # up): CUDA graphs recorded by --compile belong to the thread that recorded them.
        self._sampler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sample")
        self.pool = ThreadPoolExecutor(max_workers=UPLOAD_CONCURRENCY, thread_name_prefix="store")
        self.name = f"{socket.gethostname()}:{ray_node_id()}:{os.getpid()}"
        self._storages: dict[str, Storage] = {}
        if compile and warmup:
            # Compile (and record) the job's shapes now, so the actor counts as ready only once it samples at speed.
            sampling, batch_size = warmup
            self._sampler.submit(lambda: list(self.generator.stream([[0] * batch_size], sampling, pad_to=batch_size))).result()

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
            # Committed already: an earlier attempt's actor died after its commit, before its answer came back.
            # Sampling it again would overwrite the images its rows name (on other hardware, one level apart).
            checksum = committed_checksum(self._storage(task.job_url), task.shard)
            if checksum is not None:
                return ShardResult(task.shard, True, task.stop - task.start, time.perf_counter() - started, 0.0, self.name,
                                   checksum=checksum)
            rows, sample_seconds = self._sample_and_store(task)
            checksum = commit_shard(self._storage(task.job_url), task.shard, shard_format.shard_bytes(rows, self.info.classes))
            return ShardResult(task.shard, True, task.stop - task.start, time.perf_counter() - started, sample_seconds,
                               self.name, checksum=checksum)
        except Exception as e:
            detail = "".join(traceback.format_exception_only(type(e), e)).strip()
            return ShardResult(task.shard, False, 0, time.perf_counter() - started, 0.0, self.name, detail,
                               store_fault=isinstance(e, StorageError))

    def _sample_and_store(self, task: ShardTask) -> tuple[dict, float]:
        """Sample micro-batches on the sampling thread; encode and write on the pool while the next batch samples."""
        created = datetime.fromisoformat(task.created_at)
        writer = WRITERS[task.format](self._storage(task.job_url), task.shard, created)
        common = {  # the same in every row of the shard
            "job_id": task.job_id,
            "shard": task.shard,
            **task.sampling.columns(),
            "label": shard_format.label_of(task.sampling.class_name, self.info.classes),
            "model": self.info.name,
            "model_sha256": self.info.sha256,
            "format": "png",
            "created_at": created,
        }
        ids = list(range(task.start, task.stop))
        seeds = [sample_seed(task.sampling.seed, i) for i in ids]
        batches = [seeds[lo : lo + task.batch_size] for lo in range(0, len(ids), task.batch_size)]
        pending: list[Future] = []

        def sample() -> float:
            sample_seconds, done = 0.0, 0
            t0 = time.perf_counter()
            for images in self.generator.stream(batches, task.sampling, pad_to=task.batch_size):
                sample_seconds += time.perf_counter() - t0
                for lo in range(done, done + len(images), ENCODE_CHUNK):  # rows are built on the store threads
                    hi = min(lo + ENCODE_CHUNK, done + len(images))
                    pending.append(self.pool.submit(self._store_chunk, writer, common, ids[lo:hi], seeds[lo:hi],
                                                    images[lo - done : hi - done]))
                done += len(images)
                t0 = time.perf_counter()
            return sample_seconds

        sample_seconds = self._sampler.submit(sample).result()
        stored = [row for f in pending for row in f.result()]  # re-raises the first write error: the shard is not committed
        rows = {name: [row[name] for row in stored] for name in stored[0]}
        return {**rows, **writer.close()}, sample_seconds

    def _store_chunk(self, writer: ShardWriter, common: dict, ids: list[int], seeds: list[int], images) -> list[dict]:
        """Encode a chunk of images (here, or on the encoder's processes) and hand each to the shard's
        writer (which may upload it); their rows back."""
        height, width = images.shape[1:3]  # (B, H, W, C)
        stored = []
        for sample_id, seed, (data, digest) in zip(ids, seeds, self.encoder.encode(images)):
            row = {"id": sample_id, "seed": seed, **common, "width": width, "height": height, "sha256": digest}
            writer.write(sample_id, data, row)
            stored.append(row)
        return stored
