"""Train NovArch-tiny: class-conditional epsilon-prediction DDPM on the procedural dataset.

    python -m novarch_batch.training.train --out workers/models/novarch-tiny --steps 1400 --batch-size 32 --threads 1
"""
from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from novarch_batch.training.dataset import make_images
from novarch_batch.training.export import NULL_LABEL, build_scheduler, build_unet, save_model_folder

TRAIN_DATA_SEED = 1000  # the judge and the evaluation sets use other seeds (see training/evaluate.py)


@dataclass(frozen=True)
class TrainConfig:
    out: str
    steps: int = 1400  # 1400 x 32 images: the shipped run, ~30 min on one core of a shared 2-core CPU
    batch_size: int = 32
    lr: float = 2e-3  # high for AdamW, fine for a 1M-parameter UNet with warmup and cosine decay
    warmup: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    label_dropout: float = 0.15  # share of labels replaced by the null label (classifier-free guidance)
    snr_gamma: float = 5.0  # Min-SNR-5 weighting (Hang et al. 2023): faster convergence in few steps
    data_seed: int = TRAIN_DATA_SEED
    seed: int = 0
    threads: int = 2  # 1 is faster when other work shares the 2 cores (no idle-spinning thread)
    device: str = "cpu"  # "cuda" trains the same model on a GPU (data and noise still come from the CPU)
    ckpt_dir: str | None = None
    ckpt_every: int = 500
    log_every: int = 10

    def __post_init__(self):
        for name in ("steps", "batch_size", "threads", "ckpt_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")


def to_model_range(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) to float32 (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """EMA with warmup: the decay grows as (1+t)/(10+t) so early weights do not linger."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - d)


def diffusion_loss(unet, scheduler, x0, labels, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Min-SNR-weighted epsilon MSE at uniformly drawn timesteps (eq. 14, DDPM)."""
    b = x0.shape[0]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    drop = torch.rand(b, generator=gen) < cfg.label_dropout
    labels = torch.where(drop, torch.full_like(labels, NULL_LABEL), labels)
    abar = scheduler.alphas_cumprod[t]
    x0, noise, t, labels, abar = (v.to(cfg.device) for v in (x0, noise, t, labels, abar))
    xt = scheduler.add_noise(x0, noise, t)
    pred = unet(xt, t, class_labels=labels).sample
    snr = abar / (1 - abar)
    weight = torch.clamp(snr, max=cfg.snr_gamma) / snr  # epsilon target: min(SNR, g) / SNR
    per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
    return (weight * per_sample).mean()


def train(cfg: TrainConfig) -> Path:
    """Run training; write the EMA weights to cfg.out and a loss log `train_log.jsonl` beside them."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    unet, scheduler = build_unet().to(cfg.device), build_scheduler()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_log.jsonl"
    start, recent = time.perf_counter(), []
    with log_path.open("w") as log, tqdm(range(cfg.steps), desc="train", unit="step") as bar:
        for step in bar:
            ids = np.arange(step * cfg.batch_size, (step + 1) * cfg.batch_size)  # every image fresh
            images, labels = make_images(ids, cfg.data_seed)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            loss = diffusion_loss(unet, scheduler, to_model_range(images), torch.from_numpy(labels), cfg, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            ema_update(ema, unet, step, cfg.ema_decay)
            recent.append(loss.item())
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                row = {"step": step + 1, "loss": float(np.mean(recent)), "lr": lr_at(step, cfg),
                       "seconds": round(time.perf_counter() - start, 1)}
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                recent = []
            if cfg.ckpt_dir and (step + 1) % cfg.ckpt_every == 0:
                save_model_folder(ema, scheduler, cfg.ckpt_dir, _meta(cfg, step + 1, start, partial=True))
    return save_model_folder(ema, scheduler, out, _meta(cfg, cfg.steps, start, partial=False))


def _meta(cfg: TrainConfig, steps_done: int, start: float, partial: bool) -> dict:
    return {
        "trained": True,
        "partial_checkpoint": partial,
        "steps_done": steps_done,
        "training_seconds": round(time.perf_counter() - start, 1),
        "training_config": asdict(cfg),
        "weights": "ema",
        "torch": torch.__version__,
        "command": " ".join(["python -m novarch_batch.training.train", *sys.argv[1:]]),
    }


@click.command()
@click.option("--out", required=True, help="Model folder to write (diffusers format + novarch.json).")
@click.option("--steps", default=TrainConfig.steps, show_default=True, type=int)
@click.option("--batch-size", default=TrainConfig.batch_size, show_default=True, type=int)
@click.option("--lr", default=TrainConfig.lr, show_default=True, type=float)
@click.option("--warmup", default=TrainConfig.warmup, show_default=True, type=int)
@click.option("--ema-decay", default=TrainConfig.ema_decay, show_default=True, type=float)
@click.option("--label-dropout", default=TrainConfig.label_dropout, show_default=True, type=float)
@click.option("--data-seed", default=TrainConfig.data_seed, show_default=True, type=int)
@click.option("--seed", default=TrainConfig.seed, show_default=True, type=int)
@click.option("--threads", default=TrainConfig.threads, show_default=True, type=int)
@click.option("--device", default=TrainConfig.device, show_default=True, help="cpu or cuda.")
@click.option("--ckpt-dir", default=None, help="Folder for periodic EMA checkpoints.")
@click.option("--ckpt-every", default=TrainConfig.ckpt_every, show_default=True, type=int)
def main(**kwargs) -> None:
    """Train NovArch-tiny and save its EMA weights."""
    try:
        cfg = TrainConfig(**kwargs)
    except ValueError as err:
        raise click.BadParameter(str(err)) from err
    folder = train(cfg)
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    click.echo(f"saved {folder} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
