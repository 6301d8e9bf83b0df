"""One picture of the idea: forward diffusion destroys an image, reverse diffusion builds one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler
from PIL import Image, ImageDraw

from training.dataset import make_images
from training.sampling import class_index, sample, to_uint8
from training.train import TRAIN_DATA_SEED, to_model_range

FRAMES = 8
SCALE = 4  # 32 px frames shown at 128 px, nearest-neighbour so pixels stay crisp
LABEL_W, ROW_TITLE_H, GAP = 150, 14, 4


def forward_frames(scheduler, image_uint8: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq. 4, DDPM) at FRAMES timesteps from 0 to T-1."""
    x0 = to_model_range(image_uint8[None])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    ts = np.linspace(0, scheduler.config.num_train_timesteps - 1, FRAMES).round().astype(int)
    frames = [scheduler.add_noise(x0, noise, torch.tensor([t])) for t in ts]
    return to_uint8(torch.cat(frames)), [f"t={t}" for t in ts]


def reverse_frames(unet, scheduler, class_name: str, seed: int, steps: int, guidance: float):
    """x_t along a DDIM run (eta 0) from pure noise to the final image, FRAMES states."""
    ddim = DDIMScheduler.from_config(scheduler.config)
    states = []
    sample(unet, ddim, [class_index(class_name)], [seed], steps=steps, guidance=guidance,
           callback=lambda i, x, x0: states.append(x.clone()))
    start = torch.randn((1, 3, 32, 32), generator=torch.Generator().manual_seed(seed))  # what `sample` starts from
    picks = np.linspace(0, steps - 1, FRAMES - 1).round().astype(int)
    frames = torch.cat([start] + [states[i] for i in picks])
    names = ["noise"] + [f"step {i + 1}" for i in picks]
    return to_uint8(frames), names


def render_explain(unet, scheduler, out_png, seed: int = 0, steps: int = 20, guidance: float = 2.0) -> Path:
    """Write a 3-row PNG: forward diffusion of a training image, reverse diffusion to a building and a house."""
    images, labels = make_images(np.arange(16), TRAIN_DATA_SEED)
    real = images[int(np.argmax(labels == 1))]  # a house from the training data
    rows = [("forward: house -> noise", *forward_frames(scheduler, real, seed))]
    for name in ("building", "house"):
        rows.append((f"reverse: noise -> {name}", *reverse_frames(unet, scheduler, name, seed + 1, steps, guidance)))
    tile = 32 * SCALE
    width = LABEL_W + FRAMES * (tile + GAP)
    height = len(rows) * (tile + ROW_TITLE_H + GAP) + GAP
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (title, frames, names) in enumerate(rows):
        y = GAP + r * (tile + ROW_TITLE_H + GAP)
        draw.text((6, y + ROW_TITLE_H + tile // 2 - 6), title, fill=(0, 0, 0))
        for c, (frame, name) in enumerate(zip(frames, names)):
            x = LABEL_W + c * (tile + GAP)
            draw.text((x + 2, y), name, fill=(60, 60, 60))
            sheet.paste(Image.fromarray(frame).resize((tile, tile), Image.NEAREST), (x, y + ROW_TITLE_H))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return out_png
