"""Image tensors to PNG bytes (run in a thread pool, off the sampling thread)."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import torch
from PIL import Image


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8, rounding to the nearest level of 255."""
    pixels = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG; PIL's encoder is deterministic, so equal pixels give equal bytes and sha256."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
