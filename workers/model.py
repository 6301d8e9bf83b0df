"""Load a NovArch model folder (diffusers format, safetensors only) and wrap it as a denoiser.

torch is imported only by the functions that build or run the network: the driver reads a model's
metadata (ModelInfo) without it, which keeps ~2 s and ~180 MB out of every job's driver.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from novarch_batch.storage import sha256_file
from novarch_batch.workers.spec import SHIPPED_MODEL

if TYPE_CHECKING:
    import torch

WEIGHTS = "diffusion_pytorch_model.safetensors"
REQUIRED = ("config.json", WEIGHTS, "scheduler_config.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class ModelError(ValueError):
    """A model folder is missing, incomplete or unsafe; the message names the fix."""


def default_model_dir(name: str = SHIPPED_MODEL) -> Path:
    """A shipped model's folder (NovArch-tiny unless named), found as package data of the installed project."""
    return Path(str(resources.files("novarch_batch.workers") / "models" / name))


def check_model_dir(folder: Path) -> None:
    """Refuse anything but a complete diffusers folder with safetensors weights, before loading."""
    if not folder.is_dir():
        raise ModelError(f"--model {folder}: no such folder; pass a diffusers model folder ({', '.join(REQUIRED)})")
    if not (folder / WEIGHTS).is_file() and any(next(folder.glob(f"*{s}"), None) for s in PICKLE_SUFFIXES):
        raise ModelError(
            f"--model {folder}: holds a pickle checkpoint, which is refused (pickles run code on load); "
            f"convert it to {WEIGHTS} with safetensors"
        )
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        raise ModelError(f"--model {folder}: missing {', '.join(missing)}; pass a complete diffusers model folder")
    try:
        from safetensors import safe_open

        with safe_open(str(folder / WEIGHTS), framework="numpy") as f:  # the header only: no torch import
            f.keys()
    except Exception as e:  # safetensors raises several types for a damaged header
        raise ModelError(f"--model {folder}: {WEIGHTS} is not a valid safetensors file ({type(e).__name__}); re-export or re-download it") from None


@dataclass(frozen=True)
class ModelInfo:
    """What the driver records about a model without loading the network."""

    path: str
    name: str
    sha256: str
    classes: tuple[str, ...]
    null_label: int
    image_size: int
    channels: int
    scheduler_config: dict
    distilled: dict | None = None  # a student's novarch.json "distilled": its steps and folded guidance

    @classmethod
    def read(cls, folder: Path) -> "ModelInfo":
        check_model_dir(folder)
        config = json.loads((folder / "config.json").read_text())
        meta_path = folder / "novarch.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        num_classes = int(config.get("num_class_embeds") or 0)
        return cls(
            path=str(folder),
            name=meta.get("name", folder.name),
            sha256=sha256_file(folder / WEIGHTS),
            classes=tuple(meta.get("classes", ["building", "house"])),
            null_label=int(meta.get("null_label", max(num_classes - 1, 0))),
            image_size=int(config.get("sample_size", 32)),
            channels=int(config.get("in_channels", 3)),
            scheduler_config=json.loads((folder / "scheduler_config.json").read_text()),
            distilled=meta.get("distilled"),
        )


def load_unet(folder: Path, device: torch.device, dtype: torch.dtype | None = None):
    """UNet2DModel from safetensors only (use_safetensors=True never falls back to a pickle); float32 by default."""
    import torch
    from diffusers import UNet2DModel

    dtype = dtype or torch.float32
    check_model_dir(folder)
    # low_cpu_mem_usage=False: a ~4 MB model loads instantly without the optional `accelerate` package.
    unet = UNet2DModel.from_pretrained(str(folder), use_safetensors=True, torch_dtype=dtype, low_cpu_mem_usage=False)
    unet = unet.to(device).eval()
    if torch.device(device).type == "cpu":
        # NHWC convolutions: 5-7% more images/s on one CPU thread, outputs within one level (BENCHMARKS.md).
        unet = unet.to(memory_format=torch.channels_last)
    return unet


def make_denoiser(unet, labels: torch.Tensor, null_label: int, guidance: float, interval: tuple[int, int] | None = None):
    """The network output at (x, t) with classifier-free guidance (Ho & Salimans 2022, eq. 6): out_u + g (out_c - out_u).

    The same combination serves epsilon and v: at fixed x_t, v is an affine function of epsilon.

    g = 1 is plain conditional sampling and g = 0 unconditional, each one network pass; rows whose
    label is the null label ("any") are unconditional whatever g is. With `interval` (lo, hi), a
    guidance g other than 0 applies only at lo <= t <= hi and the other steps are conditional
    (Kynkaanniemi et al. 2024: guidance at the highest noise levels narrows the images, at the
    lowest it changes little); g = 0 stays unconditional at every step.
    """
    import torch

    dtype = next(unet.parameters()).dtype
    nulls = torch.full_like(labels, null_label)
    unconditional = guidance == 0.0 or bool((labels == null_label).all())  # decided once: on a GPU each bool() waits for it

    def net(x: torch.Tensor, label: torch.Tensor, t: int) -> torch.Tensor:
        ts = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        return unet(x.to(dtype), ts, class_labels=label).sample.float()

    def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
        if unconditional:
            return net(x, nulls, t)
        if guidance == 1.0 or (interval is not None and not interval[0] <= t <= interval[1]):
            return net(x, labels, t)
        both = net(torch.cat([x, x]), torch.cat([labels, nulls]), t)  # (2B, C, H, W): one pass for both
        cond, uncond = both.chunk(2)
        return uncond + guidance * (cond - uncond)

    return denoise
