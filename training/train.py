"""Train NovArch-tiny: a class-conditional diffusion model (v-prediction, zero terminal SNR) on the procedural dataset.

    novarch-batch train --out workers/models/novarch-tiny --device cuda --max-seconds 240 ...   (MODEL.md has the shipped run)
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from novarch_batch.storage import StorageError
from novarch_batch.training.dataset import make_images
from novarch_batch.training.export import DEFAULT_CHANNELS, NULL_LABEL, build_scheduler, build_unet, save_model_folder
from novarch_batch.workers.model import ModelError, ModelInfo, load_unet
from novarch_batch.workers.model_cache import fetch_model_folder
from novarch_batch.workers.schedules import alphas_cumprod_for
from novarch_batch.workers.spec import SHIPPED_MODELS

TRAIN_DATA_SEED = 1000  # the judge and the evaluation sets use other seeds (see training/evaluate.py)


class StartWeightsError(ValueError):
    """--init-from names weights this run cannot go on training; the message names the flag to change."""


PROBE_FROM = 20  # --max-seconds times steps PROBE_FROM..warmup (past start-up, before the schedule needs its length)


@dataclass(frozen=True)
class TrainConfig:
    out: str
    steps: int = 1400  # an upper bound when max_seconds is set (the run records the steps it made)
    batch_size: int = 32
    lr: float = 2e-3  # high for AdamW, fine for a 1M-parameter UNet with warmup and cosine decay
    warmup: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    label_dropout: float = 0.15  # share of labels replaced by the null label (classifier-free guidance)
    snr_gamma: float = 5.0  # Min-SNR-5 weighting (Hang et al. 2023): faster convergence in few steps
    prediction_type: str = "v_prediction"  # or "epsilon" (NovArch v1's objective)
    zero_terminal_snr: bool = True  # rescale the schedule so that t = T is pure noise (Lin et al. 2023)
    channels: tuple[int, ...] = DEFAULT_CHANNELS  # UNet block widths, one per resolution (32, 16, 8)
    data_seed: int = TRAIN_DATA_SEED
    seed: int = 0
    threads: int = 2  # 1 is faster when other work shares the 2 cores (no idle-spinning thread)
    device: str = "cpu"  # "cuda" trains the same model on a GPU
    data_workers: int = 0  # processes painting batches ahead of the trainer (0: in the trainer)
    max_seconds: float | None = None  # fit the run into this time: the step count is set from a timed probe
    init_from: str | None = None  # a model folder whose weights the run starts from (training goes on from it)
    ckpt_dir: str | None = None
    ckpt_every: int = 500
    log_every: int = 10

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        for name in ("steps", "batch_size", "threads", "ckpt_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"--label-dropout must be in [0, 1), got {self.label_dropout}")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"--prediction-type must be epsilon or v_prediction, got {self.prediction_type!r}")
        if self.zero_terminal_snr and self.prediction_type == "epsilon":
            raise ValueError("--zero-terminal-snr needs --prediction-type v_prediction, or pass --no-zero-terminal-snr "
                             "(epsilon at pure noise says nothing about the image)")
        if self.max_seconds is not None and self.warmup <= PROBE_FROM:
            raise ValueError(f"--max-seconds times the warmup steps: --warmup must exceed {PROBE_FROM}, got {self.warmup}")
        if len(self.channels) != 3 or any(c < 8 or c % 8 for c in self.channels):
            raise ValueError(f"--channels must be three multiples of 8 (one per resolution), got {self.channels}")


def to_model_range(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) to float32 (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def lr_at(step: int, cfg: TrainConfig, total: int | None = None) -> float:
    """Linear warmup, then cosine decay to 10% of the peak at step `total` (cfg.steps unless given)."""
    total = total or cfg.steps
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, total - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """EMA with warmup: the decay grows as (1+t)/(10+t) so early weights do not linger."""
    d = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - d)


def optimizer_step(model: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer, step: int, ema_decay: float,
                   device: torch.device, loss_fn) -> torch.Tensor:
    """One step of training or distillation: the loss under bf16 autocast on a GPU (the convolutions at
    twice the rate; weights, optimizer and loss stay float32), clipped gradients, the EMA; the loss back."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss = loss_fn()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    ema_update(ema, model, step, ema_decay)
    return loss.detach()


def seeded_generator(*entropy: int) -> torch.Generator:
    """A CPU generator determined by the integers given (a run's seed, its step ...) and nothing else."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(entropy)).generate_state(1)[0]))


class TrainingBatches(torch.utils.data.Dataset):
    """Step s's batch, drawn from (seed, s) alone: images, labels after dropout, noise and timesteps.

    Every image is fresh (indices s*B .. s*B+B-1 of the data seed), and the batch does not depend on
    which worker process paints it or how many there are, so a run is the same with any data_workers.
    """

    def __init__(self, cfg: TrainConfig, num_train_timesteps: int):
        self.cfg, self.num_train_timesteps = cfg, num_train_timesteps

    def __len__(self) -> int:
        return self.cfg.steps

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        images, labels = make_images(np.arange(step * cfg.batch_size, (step + 1) * cfg.batch_size), cfg.data_seed)
        gen = seeded_generator(cfg.seed, step)
        x0 = to_model_range(images)
        t = torch.randint(0, self.num_train_timesteps, (cfg.batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        drop = torch.rand(cfg.batch_size, generator=gen) < cfg.label_dropout
        labels = torch.where(drop, torch.full((cfg.batch_size,), NULL_LABEL), torch.from_numpy(labels))
        return {"x0": x0, "labels": labels, "noise": noise, "t": t}


def settled_clock(device: torch.device) -> float:
    """perf_counter once the GPU has done the work queued so far: nothing in a step waits for it, so the
    host runs ahead, and a pace timed without this would count steps not yet made."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def diffusion_loss(unet, alphas_cumprod: torch.Tensor, batch: dict, cfg: TrainConfig) -> torch.Tensor:
    """Min-SNR-weighted MSE of the network's prediction (epsilon or v) at uniformly drawn timesteps.

    x_t = sqrt(a) x0 + sqrt(1 - a) eps (DDPM eq. 4) with a = alpha_bar_t, SNR = a / (1 - a).
    epsilon: weight min(SNR, g) / SNR (Hang et al. 2023). v = sqrt(a) eps - sqrt(1 - a) x0
    (Salimans & Ho 2022): the v loss is the x0 loss weighted by SNR + 1, truncated here at g, so the
    noisiest steps (SNR -> 0, where the sampler starts and the class is decided) keep full weight.
    """
    x0, noise, t, labels = batch["x0"], batch["noise"], batch["t"], batch["labels"]
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    pred = unet(xt, t, class_labels=labels).sample.float()
    snr = (a / (1 - a)).flatten()
    if cfg.prediction_type == "v_prediction":
        target, weight = a.sqrt() * noise - (1 - a).sqrt() * x0, torch.clamp(snr + 1, max=cfg.snr_gamma) / (snr + 1)
    else:
        target, weight = noise, torch.clamp(snr, max=cfg.snr_gamma) / snr
    per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
    return (weight * per_sample).mean()


def train(cfg: TrainConfig) -> Path:
    """Run training; write the EMA weights to cfg.out and a loss log `train_log.jsonl` beside them."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    unet = build_unet(cfg.channels)
    scheduler = build_scheduler(cfg.prediction_type, cfg.zero_terminal_snr)
    start_from = load_start_weights(unet, scheduler, cfg.init_from) if cfg.init_from else None
    unet = unet.to(device)
    alphas_cumprod = alphas_cumprod_for(dict(scheduler.config)).to(device)  # the samplers' own schedule maths
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=device.type == "cuda")
    batches = torch.utils.data.DataLoader(
        TrainingBatches(cfg, len(alphas_cumprod)), batch_size=None, num_workers=cfg.data_workers,
        pin_memory=device.type == "cuda", prefetch_factor=4 if cfg.data_workers else None)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_log.jsonl"
    total, start, recent, probe_start = cfg.steps, time.perf_counter(), [], None
    with log_path.open("w") as log, tqdm(total=cfg.steps, desc="train", unit="step",
                                         mininterval=1 if sys.stderr.isatty() else 30) as bar:
        for step, batch in enumerate(batches):
            if step == total:
                break
            if cfg.max_seconds is not None and step == PROBE_FROM:
                probe_start = settled_clock(device)
            if probe_start is not None and step == cfg.warmup:
                now = settled_clock(device)
                total = planned_steps(cfg, step, now - probe_start, now - start)
                bar.total = total
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg, total)
            recent.append(optimizer_step(unet, ema, opt, step, cfg.ema_decay, device,
                                         lambda: diffusion_loss(unet, alphas_cumprod, batch, cfg)))
            bar.update(1)
            if (step + 1) % cfg.log_every == 0 or step + 1 == total:
                row = {"step": step + 1, "loss": float(torch.stack(recent).mean()), "lr": lr_at(step, cfg, total),
                       "seconds": round(time.perf_counter() - start, 1)}
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
                recent = []
            if cfg.ckpt_dir and (step + 1) % cfg.ckpt_every == 0:
                save_model_folder(ema, scheduler, cfg.ckpt_dir, _meta(cfg, step + 1, start, True, start_from))
    return save_model_folder(ema, scheduler, out, _meta(cfg, min(step + 1, total), start, False, start_from))


def load_start_weights(unet, scheduler, folder: str) -> dict:
    """Copy a trained model's weights into `unet` (the run goes on training them); return what they were.

    The folder must hold the model this run would build: the same prediction type, noise schedule
    and network (the weights mean nothing under another), else StartWeightsError names the flag to change.
    """
    given, folder = folder, fetch_model_folder(folder)  # a shipped name or s3:// as given (recorded so)
    try:
        info = ModelInfo.read(folder)
    except ModelError as err:  # its message speaks of --model
        raise StartWeightsError(str(err).replace("--model", "--init-from", 1)) from None
    theirs, ours = info.scheduler_config, dict(scheduler.config)
    predicts = theirs.get("prediction_type", "epsilon")  # diffusers' default
    if predicts != ours["prediction_type"]:
        raise StartWeightsError(f"--init-from {given} predicts {predicts}, this run {ours['prediction_type']}: "
                                f"pass --prediction-type {predicts}")
    a, b = alphas_cumprod_for(theirs), alphas_cumprod_for(ours)
    if a.shape != b.shape or not torch.allclose(a, b):
        flag = "--zero-terminal-snr" if theirs.get("rescale_betas_zero_snr") else "--no-zero-terminal-snr"
        raise StartWeightsError(f"--init-from {given} was trained on another noise schedule: pass {flag} "
                                "(or start from a model of this project's schedule)")
    start = load_unet(folder, torch.device("cpu"))
    if tuple(start.config.block_out_channels) != tuple(unet.config.block_out_channels):
        raise StartWeightsError(f"--init-from {given} has widths {list(start.config.block_out_channels)}: "
                                f"pass --channels {','.join(map(str, start.config.block_out_channels))}")
    try:
        unet.load_state_dict(start.state_dict())
    except RuntimeError as err:  # another layout than build_unet's (class count, blocks)
        raise StartWeightsError(f"--init-from {given} is not a NovArch-tiny UNet ({str(err).splitlines()[0]})") from None
    meta_path = folder / "novarch.json"  # optional in a diffusers folder
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return {"folder": given, "weights_sha256": info.sha256, "steps_done": meta.get("steps_done"),
            "hardware": meta.get("hardware"), "reproduce": meta.get("reproduce")}


def planned_steps(cfg: TrainConfig, step: int, probe_seconds: float, elapsed: float) -> int:
    """Steps that fit in max_seconds at the rate of the probe (steps PROBE_FROM..step), at most cfg.steps."""
    rate = (step - PROBE_FROM) / max(probe_seconds, 1e-9)
    return max(step + 1, min(cfg.steps, step + int(rate * (cfg.max_seconds - elapsed))))


def _meta(cfg: TrainConfig, steps_done: int, start: float, partial: bool, start_from: dict | None) -> dict:
    return {
        "trained": True,
        "partial_checkpoint": partial,
        "steps_done": steps_done,
        "training_seconds": round(time.perf_counter() - start, 1),
        "training_config": asdict(cfg),
        "weights": "ema",
        "torch": torch.__version__,
        "hardware": hardware_name(torch.device(cfg.device)),
        # the same run again, without the clock: the step count it made replaces --max-seconds
        "reproduce": reproduce_command(cfg, steps_done),
        # a continued run: the weights it started from (their own run is their novarch.json's `reproduce`)
        **({"init_from": start_from} if start_from else {}),
    }


def hardware_name(device: torch.device) -> str:
    """The card a run used (cuda:N names GPU N), or cpu."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def reproduce_command(cfg: TrainConfig, steps: int) -> str:
    """`novarch-batch train` with every flag that shapes the weights (paths and speed-only flags left out)."""
    flags = [f"--steps {steps}", f"--batch-size {cfg.batch_size}", f"--lr {cfg.lr:g}", f"--warmup {cfg.warmup}",
             f"--ema-decay {cfg.ema_decay:g}", f"--label-dropout {cfg.label_dropout:g}",
             f"--prediction-type {cfg.prediction_type}", "--zero-terminal-snr" if cfg.zero_terminal_snr else "--no-zero-terminal-snr",
             f"--channels {','.join(map(str, cfg.channels))}", f"--data-seed {cfg.data_seed}", f"--seed {cfg.seed}"]
    if cfg.init_from:
        flags.append("--init-from START")  # the folder named in novarch.json's init_from
    return "novarch-batch train --out OUT " + " ".join(flags) + f" --device {cfg.device}"


def what_is_left(cfg: TrainConfig, started: float) -> str:
    """What an interrupted run leaves: its weights are written at the end only, its log and checkpoints
    as it goes (files older than the run are an earlier run's)."""
    def this_runs(path: Path) -> bool:
        return path.is_file() and path.stat().st_mtime >= started - 2  # a coarse clock's rounding
    parts = [f"no weights saved in {cfg.out}"]
    log = Path(cfg.out) / "train_log.jsonl"
    lines = log.read_text().splitlines() if this_runs(log) else []
    if lines:
        parts.append(f"{log} has the losses up to step {json.loads(lines[-1])['step']}")
    if not cfg.ckpt_dir:
        return "; ".join([*parts, "--ckpt-dir keeps checkpoints"])
    checkpoint = Path(cfg.ckpt_dir) / "novarch.json"
    if this_runs(checkpoint):
        parts.append(f"the last checkpoint, of step {json.loads(checkpoint.read_text())['steps_done']}, is in {cfg.ckpt_dir}")
    else:
        parts.append(f"no checkpoint yet in {cfg.ckpt_dir}")
    return "; ".join(parts)


MAX_BATCH = 16384  # images painted per step: far above what a GPU run uses (512), and it fits in memory
POSITIVE = click.IntRange(min=1)
SEED = click.IntRange(min=0)  # numpy's generators take no negative seed


def existing_model_folder(ctx, param, value: str | None) -> str | None:
    """A model to start from: a folder, s3://…, or a shipped name (novarch-tiny: v2), checked as submit's
    --model is; the value stays as given (novarch.json records it so), the run resolves it again."""
    if value is None:
        return None
    try:
        folder = fetch_model_folder(value)
    except (ModelError, StorageError) as err:
        raise click.BadParameter(str(err), param=param) from None
    if not folder.is_dir():
        raise click.BadParameter(f"{value} is not a folder; pass a model folder or a shipped name ({', '.join(SHIPPED_MODELS)})", param=param)
    return value


def model_folder_option(ctx, param, value: str | None) -> str | None:
    """A folder to write: not an existing file, and creatable, checked before any work (nothing is written)."""
    if value is None:
        return None
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise click.BadParameter(f"{value} is a file; name a folder", param=param)
    probe = path.absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise click.BadParameter(f"cannot create {value}: {probe} is not a folder this user can write; choose another", param=param)
    return value


def device_option(ctx, param, value: str) -> str:
    """cpu, cuda or cuda:N, and a CUDA device only where torch has one."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
        raise click.BadParameter(f"{value!r}: use cpu or cuda (cuda:N for another GPU)", param=param)
    if value.startswith("cuda") and not torch.cuda.is_available():
        raise click.BadParameter(f"{value}: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu", param=param)
    if value.startswith("cuda:") and int(value[5:]) >= torch.cuda.device_count():
        raise click.BadParameter(f"{value}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 …; choose one of them", param=param)
    return value


def machine_options(config):
    """--threads, --device and --data-workers, as train and distill both take them (defaults from `config`)."""
    options = [
        click.option("--threads", default=config.threads, show_default=True, type=POSITIVE, help="Torch CPU threads."),
        click.option("--device", default=config.device, show_default=True, callback=device_option, help="cpu, cuda or cuda:N."),
        click.option("--data-workers", default=config.data_workers, show_default=True, type=click.IntRange(min=0),
                     help="Processes painting training batches ahead (a GPU needs several; 0: the trainer paints them)."),
    ]

    def apply(command):
        for option in reversed(options):  # click lists options in decorator order, top first
            command = option(command)
        return command
    return apply


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", required=True, callback=model_folder_option, help="Model folder to write (diffusers format + novarch.json).")
@click.option("--steps", default=TrainConfig.steps, show_default=True, type=POSITIVE,
              help="Optimizer steps (the most, with --max-seconds).")
@click.option("--batch-size", default=TrainConfig.batch_size, show_default=True, type=click.IntRange(1, MAX_BATCH),
              help="Images per optimizer step, painted fresh each step (never repeated).")
@click.option("--lr", default=TrainConfig.lr, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="AdamW's peak learning rate, after a linear warmup, then cosine decay to 10% of it.")
@click.option("--warmup", default=TrainConfig.warmup, show_default=True, type=click.IntRange(min=0),
              help="Steps of linear learning-rate warmup (more than 20 with --max-seconds, which times them).")
@click.option("--ema-decay", default=TrainConfig.ema_decay, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Decay of the weights' moving average, which is what is saved.")
@click.option("--label-dropout", default=TrainConfig.label_dropout, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Share of labels replaced by the null label, so one network also samples unconditionally (guidance, --class any).")
@click.option("--prediction-type", default=TrainConfig.prediction_type, show_default=True,
              type=click.Choice(["v_prediction", "epsilon"]), help="What the network predicts.")
@click.option("--zero-terminal-snr/--no-zero-terminal-snr", default=TrainConfig.zero_terminal_snr, show_default=True,
              help="Rescale the noise schedule so its last step is pure noise (needs v_prediction).")
@click.option("--channels", default=",".join(map(str, DEFAULT_CHANNELS)), show_default=True,
              help="UNet widths at 32, 16 and 8 pixels, comma-separated.")
@click.option("--data-seed", default=TrainConfig.data_seed, show_default=True, type=SEED,
              help="Seed of the painted training images (the judge and the evaluation sets use others).")
@click.option("--seed", default=TrainConfig.seed, show_default=True, type=SEED,
              help="Seed of the initial weights, the noise and the timesteps.")
@machine_options(TrainConfig)
@click.option("--max-seconds", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Fit the run into this many seconds: the step count comes from the warmup's pace and is recorded.")
@click.option("--init-from", default=None, callback=existing_model_folder, metavar="NAME|FOLDER",
              help="Model folder (or shipped name) to go on training from (same --channels, --prediction-type and schedule); "
                   "novarch.json records it.")
@click.option("--ckpt-dir", default=None, callback=model_folder_option, help="Folder for periodic EMA checkpoints.")
@click.option("--ckpt-every", default=TrainConfig.ckpt_every, show_default=True, type=POSITIVE,
              help="Steps between checkpoints in --ckpt-dir.")
@click.option("--log-every", default=TrainConfig.log_every, show_default=True, type=POSITIVE,
              help="Steps per line of train_log.jsonl (the mean loss over them).")
def main(**kwargs) -> None:
    """Train NovArch-tiny and save its EMA weights."""
    try:
        kwargs["channels"] = tuple(int(c) for c in kwargs["channels"].split(","))
        cfg = TrainConfig(**kwargs)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    started = time.time()
    try:
        folder = train(cfg)
    except StartWeightsError as err:  # raised before anything is written
        raise click.UsageError(str(err)) from err
    except KeyboardInterrupt:
        click.echo(f"interrupted: {what_is_left(cfg, started)}", err=True)
        raise
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    click.echo(f"saved {folder} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
