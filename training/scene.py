"""The scene reader: a small CNN that reads what a scene shows (sizes, positions, counts, colours),
used only to evaluate samples, as a second feature space for the Fréchet distance.

    python -m novarch_batch.training.scene --out workers/models/novarch-scene

The judge's features are trained to tell the classes apart, so its FD weighs how an image is drawn
(a 25% blur of real images is 14-37x the floor) and moves up to 2x with the sampling seed alone.
The reader's outputs are the scene factors of training/dataset.py (SCENE_FACTORS), in units of the
real images' spread: the FD over them asks whether the samples show the real distribution of
scenes (how wide, how tall, where, how many trees, which colours), whatever their sharpness.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from novarch_batch.training.dataset import SCENE_FACTORS, make_images, scene_factors
from novarch_batch.training.judge import conv_trunk, default_folder, degrade, load_evaluator, save_evaluator
from novarch_batch.training.train import to_model_range

SCENE_TRAIN_SEED = 2002  # disjoint from the model (1000, 1001), the judge (2000, 2001) and evaluation (3000+)
SCENE_TEST_SEED = 2003
N_STANDARDISE = 20_000  # real images whose factor mean and spread set the reader's units


class SceneReader(nn.Module):
    """The judge's conv trunk, a 64-d hidden layer and one output per scene factor (standardised)."""

    def __init__(self):
        super().__init__()
        self.convs = conv_trunk()
        self.fc = nn.Linear(64 * 4 * 4, 64)
        self.head = nn.Linear(64, len(SCENE_FACTORS))
        # the factors' real mean and spread: outputs are (factor - mean) / std
        self.register_buffer("mean", torch.zeros(len(SCENE_FACTORS)))
        self.register_buffer("std", torch.ones(len(SCENE_FACTORS)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc(self.convs(x).flatten(1))))


def load_scene_reader(folder=None) -> SceneReader:
    """Load the reader (safetensors only) in eval mode."""
    return load_evaluator(SceneReader(), Path(folder) if folder is not None else default_folder("novarch-scene"),
                          "scene", "scene")


@torch.no_grad()
def scene_features(reader: SceneReader, images_uint8: np.ndarray, batch: int = 500) -> np.ndarray:
    """The standardised scene factors (N, len(SCENE_FACTORS)) the reader sees in uint8 images."""
    out = [reader(to_model_range(images_uint8[i:i + batch])) for i in range(0, len(images_uint8), batch)]
    return torch.cat(out).numpy().astype(np.float64)


def read_factors(reader: SceneReader, images_uint8: np.ndarray) -> np.ndarray:
    """The scene factors in their own units (pixels, counts, colour levels)."""
    return scene_features(reader, images_uint8) * reader.std.double().numpy() + reader.mean.double().numpy()


def train_scene_reader(out, steps: int = 3000, batch_size: int = 128, threads: int = 2, seed: int = 0) -> dict:
    """Train on seed SCENE_TRAIN_SEED (MSE on standardised factors, the judge's mild noise and blur),
    test on 2,000 images of SCENE_TEST_SEED, save to `out`."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    reader = SceneReader()
    real = torch.from_numpy(scene_factors(np.arange(N_STANDARDISE), SCENE_TRAIN_SEED))
    reader.mean.copy_(real.mean(0))
    reader.std.copy_(real.std(0).clamp(min=1e-6))
    opt = torch.optim.AdamW(reader.parameters(), lr=2e-3)
    start = time.perf_counter()
    for step in range(steps):
        indices = np.arange(step * batch_size, (step + 1) * batch_size)
        images, _ = make_images(indices, SCENE_TRAIN_SEED)
        target = (torch.from_numpy(scene_factors(indices, SCENE_TRAIN_SEED)) - reader.mean) / reader.std
        loss = F.mse_loss(reader(degrade(to_model_range(images), gen)), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    reader.eval()
    test = np.arange(2000)
    images, _ = make_images(test, SCENE_TEST_SEED)
    truth, read = scene_factors(test, SCENE_TEST_SEED), read_factors(reader, images)
    r2 = 1 - ((read - truth) ** 2).mean(0) / truth.var(0)
    meta = {
        "factors": list(SCENE_FACTORS),
        "train_seed": SCENE_TRAIN_SEED, "train_steps": steps, "batch_size": batch_size,
        "test_seed": SCENE_TEST_SEED, "test_images": len(test),
        "test_r2": {name: round(float(v), 3) for name, v in zip(SCENE_FACTORS, r2)},
        "test_mean_abs_error": {name: round(float(v), 2) for name, v in zip(SCENE_FACTORS, np.abs(read - truth).mean(0))},
        "training_seconds": round(time.perf_counter() - start, 1),
    }
    save_evaluator(reader, out, "scene", meta)
    return meta


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", required=True, help="Folder for scene.safetensors and scene.json.")
@click.option("--steps", default=3000, show_default=True, type=int, help="The shipped reader's: 3000 (100 s on 2 cores).")
@click.option("--threads", default=2, show_default=True, type=int)
def main(out: str, steps: int, threads: int) -> None:
    """Train the scene reader (evaluate's second feature space)."""
    click.echo(json.dumps(train_scene_reader(out, steps=steps, threads=threads), indent=2))


if __name__ == "__main__":
    main()
