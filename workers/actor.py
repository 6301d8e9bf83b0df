"""The sampler inside an actor: loads the model once, then samples, encodes, stores and commits whole shards.

Ray runs it through ``workers.remote.SamplerActor``; benchmarks and the dry run use it in-process.
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

from workers import shard_format
from workers.encode import encode_png, sha256_hex, to_uint8
from workers.model import ModelInfo, load_unet, make_denoiser
from workers.model_cache import fetch_model_folder
from workers.samplers import SAMPLERS, Schedule
from workers.schedules import alphas_cumprod_for, trailing_timesteps
from workers.seeds import draw_noise, make_generators, sample_seed
from workers.tasks import FAULT_ENV, ShardResult, ShardTask


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class ShardSampler:
    """Runs with two calls in flight (the driver's ``max_concurrency``): one shard samples while the
    previous one waits for its uploads and commits, so the sampler never idles between shards."""

    def __init__(self, model_path: str, device: str = "auto", threads: int | None = None, upload_threads: int = 16,
                 model_sha256: str | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.device = pick_device(device)
        # bf16 network on GPU halves memory traffic; the sampler maths stays float32 (workers.samplers).
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        folder = fetch_model_folder(model_path, expected_sha256=model_sha256)  # s3:// once per node, then cached
        self.info = ModelInfo.read(folder)
        self.unet = load_unet(folder, self.device, dtype)
        self._sampling = threading.Lock()  # one shard samples at a time; the other call only finishes up
        self.alphas_cumprod = alphas_cumprod_for(self.info.scheduler_config).to(self.device)
        self.clip_sample = bool(self.info.scheduler_config.get("clip_sample", True))
        self.pool = ThreadPoolExecutor(max_workers=upload_threads, thread_name_prefix="store")
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._storages: dict[str, object] = {}

    def ping(self) -> str:
        return self.name

    def _storage(self, url: str):
        from pipeline.storage import open_storage

        if url not in self._storages:
            self._storages[url] = open_storage(url)
        return self._storages[url]

    def label_for(self, class_name: str) -> int:
        return self.info.null_label if class_name == "any" else self.info.classes.index(class_name)

    @torch.inference_mode()
    def sample(self, seeds: list[int], class_name: str, sampler: str, steps: int, guidance: float, eta: float = 0.0):
        """Images (B, H, W, C) uint8 for the given per-sample seeds."""
        generators = make_generators(seeds)
        shape = (self.info.channels, self.info.image_size, self.info.image_size)
        x = draw_noise(generators, shape, self.device)  # (B, C, H, W) float32
        labels = torch.full((len(seeds),), self.label_for(class_name), device=self.device, dtype=torch.long)
        denoise = make_denoiser(self.unet, labels, self.info.null_label, guidance)
        timesteps = trailing_timesteps(len(self.alphas_cumprod), steps)
        schedule = Schedule(self.alphas_cumprod, timesteps, self.clip_sample)
        return to_uint8(SAMPLERS[sampler](denoise, x, schedule, generators=generators, eta=eta))

    def run_shard(self, task: ShardTask) -> ShardResult:
        started = time.perf_counter()
        try:
            if str(task.shard) in os.environ.get(FAULT_ENV, "").split(","):
                raise RuntimeError(f"fault injected for shard {task.shard} ({FAULT_ENV})")
            rows, sample_seconds = self._sample_and_store(task)
            parquet = shard_format.shard_bytes(rows)
            self._storage(task.job_url).put_bytes(shard_format.shard_key(task.shard), parquet)  # the commit
            return ShardResult(task.shard, True, task.stop - task.start, time.perf_counter() - started, sample_seconds,
                               self.name, checksum=sha256_hex(parquet))
        except Exception as e:
            detail = "".join(traceback.format_exception_only(type(e), e)).strip()
            return ShardResult(task.shard, False, 0, time.perf_counter() - started, 0.0, self.name, detail)

    def _sample_and_store(self, task: ShardTask) -> tuple[dict, float]:
        """Sample micro-batches on this thread; encode and upload on the pool while the next batch samples."""
        storage = self._storage(task.job_url)
        ids = list(range(task.start, task.stop))
        seeds = [sample_seed(task.seed, i) for i in ids]
        pending: list[Future] = []
        sample_seconds = 0.0
        with self._sampling:
            for lo in range(0, len(ids), task.batch_size):
                t0 = time.perf_counter()
                images = self.sample(seeds[lo : lo + task.batch_size], task.class_name, task.sampler, task.steps, task.guidance, task.eta)
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
            "class_label": [task.class_name] * len(ids),
            "sampler": [task.sampler] * len(ids),
            "steps": [task.steps] * len(ids),
            "guidance": [task.guidance] * len(ids),
            "eta": [task.eta] * len(ids),
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
