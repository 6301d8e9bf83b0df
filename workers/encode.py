"""uint8 images to PNG bytes and their sha256: on the calling thread, or over a pool of processes.

Torch-free on purpose: each process of the pool starts by importing this module, so a process
costs Pillow and numpy, not torch (inside a Ray actor, spawn also re-imports the actor's main
module, Ray's worker script: about a second per process, once per actor).
"""
from __future__ import annotations

import hashlib
import io
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG; PIL's encoder is deterministic, so equal pixels give equal bytes and sha256."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_many(images: np.ndarray) -> list[tuple[bytes, str]]:
    """(PNG bytes, sha256) of each (H, W, C) image, in order."""
    return [(data, sha256_hex(data)) for data in map(encode_png, images)]


class PngEncoder:
    """Encodes chunks of images in this thread (``processes=0``) or on a pool of worker processes.

    Measured on 32x32 images (BENCHMARKS.md, PNG encoding): threads gain nothing, since the
    per-image work holds the GIL; two processes fed 256-image chunks encode 1.8x one thread on two
    cores. A CPU actor's cores are busy sampling, so it encodes in its own threads; a GPU actor,
    whose sampler outruns one core's encoder, uses processes. "spawn": the actor's process holds
    CUDA and Ray's threads, which a forked child must not inherit.
    """

    def __init__(self, processes: int = 0):
        self.processes = processes
        context = multiprocessing.get_context("spawn")
        self.pool = ProcessPoolExecutor(processes, mp_context=context) if processes else None

    def encode(self, images: np.ndarray) -> list[tuple[bytes, str]]:
        if self.pool is None:
            return encode_many(images)
        return self.pool.submit(encode_many, images).result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
