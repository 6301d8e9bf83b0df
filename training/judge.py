"""The judge: a small CNN that tells buildings from houses, used only to evaluate samples.

    python -m novarch_batch.training.judge --out workers/models/novarch-judge
"""
from __future__ import annotations

import importlib.resources
import json
import time
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from novarch_batch.training.dataset import make_images
from novarch_batch.training.export import CLASSES
from novarch_batch.training.train import to_model_range

JUDGE_TRAIN_SEED = 2000  # disjoint from the diffusion model's data seed (1000)
JUDGE_TEST_SEED = 2001
FEATURE_DIM = 64
JUDGE_CLASSES = (*CLASSES, "neither")  # "neither": noise, blobs and building/house blends


def conv_trunk() -> nn.Sequential:
    """Three conv blocks, 32 -> 16 -> 8 -> 4 px, 64 channels out (the judge's and the scene reader's)."""
    chans = [3, 16, 32, 64]
    return nn.Sequential(*[
        nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2))
        for a, b in zip(chans, chans[1:])
    ])


class Judge(nn.Module):
    """Three conv blocks (32 -> 16 -> 8 -> 4 px), a 64-d feature layer and a 3-way head.

    The "neither" class keeps the judge from calling noise or an in-between image a confident
    building or house (a 2-way head trained on clean images does, which would inflate purity).
    """

    def __init__(self):
        super().__init__()
        self.convs = conv_trunk()
        self.fc = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, len(JUDGE_CLASSES))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, 64) of images x (N, 3, 32, 32) in [-1, 1]; used for Fréchet distance."""
        return F.relu(self.fc(self.convs(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def default_folder(name: str = "novarch-judge") -> Path:
    """The judge (or another evaluation network) shipped inside the installed `workers` package."""
    return Path(str(importlib.resources.files("novarch_batch.workers") / "models" / name))


def load_evaluator(net: nn.Module, folder: Path, name: str, module: str) -> nn.Module:
    """Fill an evaluation network (the judge, the scene reader) from `folder/<name>.safetensors` (no
    pickles) and put it in eval mode; a missing file names the command that trains it."""
    weights = folder / f"{name}.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found; train it with `python -m novarch_batch.training.{module} --out {folder}`")
    net.load_state_dict(load_file(weights))
    return net.eval()


def save_evaluator(net: nn.Module, out, name: str, meta: dict) -> None:
    """Write `<name>.safetensors` and its facts `<name>.json` into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, out / f"{name}.safetensors")
    (out / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_judge(folder=None) -> Judge:
    """Load the judge (safetensors only) in eval mode."""
    return load_evaluator(Judge(), Path(folder) if folder is not None else default_folder(), "judge", "judge")


@torch.no_grad()
def predict_proba(judge: Judge, images_uint8: np.ndarray, batch: int = 500) -> np.ndarray:
    """Probabilities (N, 3) over building, house, neither for uint8 (N, 32, 32, 3) images."""
    out = [F.softmax(judge(to_model_range(images_uint8[i:i + batch])), dim=1)
           for i in range(0, len(images_uint8), batch)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(JUDGE_CLASSES)), np.float32)


@torch.no_grad()
def features(judge: Judge, images_uint8: np.ndarray, batch: int = 500) -> np.ndarray:
    """Penultimate features (N, 64) for uint8 images."""
    out = [judge.features(to_model_range(images_uint8[i:i + batch])) for i in range(0, len(images_uint8), batch)]
    return torch.cat(out).numpy().astype(np.float64)


def negatives(x: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Images that are neither class, as many as x (N, 3, 32, 32) in [-1, 1]: a third each of
    building/house blends, heavily noised scenes (signal-to-noise <= 0.54) and smooth colour blobs."""
    n = len(x)
    b, h = x[labels == 0], x[labels == 1]
    k = min(len(b), len(h))
    a = torch.empty(k, 1, 1, 1).uniform_(0.3, 0.7, generator=gen)
    blend = a * b[:k] + (1 - a) * h[:k]
    abar = torch.empty(n, 1, 1, 1).uniform_(0.0, 0.35, generator=gen)  # eq. 4, DDPM: noise dominates
    noised = abar.sqrt() * x + (1 - abar).sqrt() * torch.randn(x.shape, generator=gen)
    blobs = F.interpolate(torch.randn((n, 3, 4, 4), generator=gen) * 0.6, size=32, mode="bilinear")
    return torch.cat([blend, noised, blobs])[torch.randperm(k + 2 * n, generator=gen)[:n]].clamp(-1, 1)


def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mild noise (abar >= 0.85) on half the images and 2x blur on a quarter, labels kept: the judge
    should name what is drawn, not how clean the pixels are (sampled images are rarely spotless)."""
    n = len(x)
    abar = torch.empty(n, 1, 1, 1).uniform_(0.85, 1.0, generator=gen)
    noisy = abar.sqrt() * x + (1 - abar).sqrt() * torch.randn(x.shape, generator=gen)
    x = torch.where(torch.rand(n, 1, 1, 1, generator=gen) < 0.5, noisy, x)
    blurred = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear")
    return torch.where(torch.rand(n, 1, 1, 1, generator=gen) < 0.25, blurred, x).clamp(-1, 1)


def train_judge(out, steps: int = 400, batch_size: int = 128, threads: int = 1, seed: int = 0) -> dict:
    """Train on seed JUDGE_TRAIN_SEED, test on 2,000 images of JUDGE_TEST_SEED, save to `out`."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    judge = Judge()
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3)
    start = time.perf_counter()
    neither = JUDGE_CLASSES.index("neither")
    for step in range(steps):
        images, labels = make_images(np.arange(step * batch_size, (step + 1) * batch_size), JUDGE_TRAIN_SEED)
        x, y = to_model_range(images), torch.from_numpy(labels)
        neg = negatives(x, y, gen)[: batch_size // 2]  # 1 negative per 2 real images
        x, y = torch.cat([degrade(x, gen), neg]), torch.cat([y, torch.full((len(neg),), neither)])
        loss = F.cross_entropy(judge(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    judge.eval()
    images, labels = make_images(np.arange(2000), JUDGE_TEST_SEED)
    probs = predict_proba(judge, images)
    with torch.no_grad():
        x = to_model_range(images)
        neg_probs = F.softmax(judge(negatives(x, torch.from_numpy(labels), gen)), dim=1).numpy()
    meta = {
        "classes": list(JUDGE_CLASSES),
        "feature_dim": FEATURE_DIM,
        "train_seed": JUDGE_TRAIN_SEED, "train_steps": steps, "batch_size": batch_size,
        "test_seed": JUDGE_TEST_SEED, "test_images": len(labels),
        "test_accuracy": float((probs.argmax(1) == labels).mean()),
        "test_confident_share": float((probs[:, :2].max(1) >= 0.9).mean()),
        "negatives_rejected": float((neg_probs.argmax(1) == neither).mean()),
        "negatives_confident_share": float((neg_probs[:, :2].max(1) >= 0.9).mean()),
        "training_seconds": round(time.perf_counter() - start, 1),
    }
    save_evaluator(judge, out, "judge", meta)
    return meta


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", required=True, help="Folder for judge.safetensors and judge.json.")
@click.option("--steps", default=400, show_default=True, type=int)
@click.option("--threads", default=1, show_default=True, type=int)
def main(out: str, steps: int, threads: int) -> None:
    """Train the building/house judge."""
    click.echo(json.dumps(train_judge(out, steps=steps, threads=threads), indent=2))


if __name__ == "__main__":
    main()
