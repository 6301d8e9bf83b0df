"""One picture of the idea: forward diffusion destroys an image, reverse diffusion builds one."""
from __future__ import annotations

from pathlib import Path

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from novarch_batch.training.dataset import make_images
from novarch_batch.training.train import TRAIN_DATA_SEED, to_model_range
from novarch_batch.workers.generate import ImageGenerator, to_uint8
from novarch_batch.workers.seeds import draw_noise, make_generators, sample_seed
from novarch_batch.workers.spec import SamplingConfig

FRAMES = 8
SCALE = 4  # 32 px frames shown at 128 px, nearest-neighbour so pixels stay crisp
LABEL_W, ROW_TITLE_H, GAP = 150, 14, 4


def forward_frames(generator: ImageGenerator, image_uint8: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq. 4, DDPM) at FRAMES timesteps from 0 to T-1."""
    x0 = to_model_range(image_uint8[None])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    alphas_cumprod = generator.alphas_cumprod.cpu()
    ts = np.linspace(0, len(alphas_cumprod) - 1, FRAMES).round().astype(int)
    frames = [math.sqrt(float(alphas_cumprod[t])) * x0 + math.sqrt(1 - float(alphas_cumprod[t])) * noise for t in ts]
    return to_uint8(torch.cat(frames)), [f"t={t}" for t in ts]


def reverse_frames(generator: ImageGenerator, sampling: SamplingConfig, sample_id: int):
    """x_t along one run of `submit`'s own sampling path, for the sample `sample_id` of a job with
    this SamplingConfig: pure noise, then FRAMES - 1 states down to the final image."""
    seed = sample_seed(sampling.seed, sample_id)
    states = []
    generator.sample([seed], sampling, callback=lambda i, x, x0: states.append(x.clone()))
    start = draw_noise(make_generators([seed]), generator.shape)  # what the sampler starts from
    picks = np.linspace(0, sampling.steps - 1, FRAMES - 1).round().astype(int)
    frames = torch.cat([start] + [states[i].cpu() for i in picks])
    names = ["noise"] + [f"step {i + 1}" for i in picks]
    return to_uint8(frames), names


def render_explain(generator: ImageGenerator, out_png, seed: int = 0, steps: int = 20, guidance: float = 2.0) -> Path:
    """Write a 3-row PNG: forward diffusion of a training image, reverse diffusion to a building and a house.

    The reverse rows are deterministic DDIM (eta 0) runs, so each frame is the sample's own path
    rather than one noisy draw of it; the row's last frame is image 0 of
    `submit --sampler ddim --steps STEPS --seed SEED --class NAME`.
    """
    images, labels = make_images(np.arange(16), TRAIN_DATA_SEED)
    real = images[int(np.argmax(labels == 1))]  # a house from the training data
    rows = [("forward: house -> noise", *forward_frames(generator, real, seed))]
    for name in ("building", "house"):
        sampling = SamplingConfig(class_name=name, sampler="ddim", steps=steps, guidance=guidance, seed=seed)
        rows.append((f"reverse: noise -> {name}", *reverse_frames(generator, sampling, 0)))
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
