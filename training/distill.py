"""Few-step NovArch: progressive distillation with classifier-free guidance folded into the student.

    novarch-batch distill --teacher workers/models/novarch-tiny --out OUT --device cuda

Progressive distillation (Salimans & Ho 2022, algorithm 2) halves the number of sampling steps per
round: the student learns to reach, in one deterministic DDIM step, the point that two steps of its
teacher reach, and then becomes the next round's teacher (64 -> 32 -> 16 -> 8 -> 4 steps). Chosen
over consistency distillation because it needs v-prediction and a deterministic sampler, both of
which NovArch v2 has, gives the best few-step quality in its paper's 4-step setting (FID 3.0 on
CIFAR-10), and its student is an ordinary model folder sampled by the project's own DDIM.

Guidance is folded in the first round (as the second stage of Meng et al. 2023, with one fixed
guidance): for a class label the teacher's target is the guided output eps_null + g (eps_c - eps_null);
for the null label it is the unguided one. So the student needs one network evaluation per step,
for conditional and unconditional (`--class any`) samples alike. `submit --sampler distilled --model
<its folder>` samples it as it was distilled: DDIM at guidance 1 on the trailing grid from t = 999.
"""
from __future__ import annotations

import copy
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from novarch_batch.training.dataset import make_images
from novarch_batch.training.export import NULL_LABEL, save_model_folder
from novarch_batch.training.train import (MAX_BATCH, POSITIVE, TRAIN_DATA_SEED, existing_model_folder, hardware_name, machine_options,
                                          model_folder_option, optimizer_step, seeded_generator, settled_clock, to_model_range)
from novarch_batch.workers.model import ModelError, ModelInfo, load_unet
from novarch_batch.workers.model_cache import fetch_model_folder
from novarch_batch.workers.samplers import Schedule, predict
from novarch_batch.workers.schedules import alphas_cumprod_for
from novarch_batch.workers.spec import trailing_timesteps

FIRST_INDEX = 10**9  # distillation images are indices from here: none was seen in training
ROUND_STRIDE = 10**8  # image indices per round
PROBE_FROM, PROBE_TO = 10, 40  # --max-seconds times round 1's steps 10..40 (past start-up)


class TeacherError(ValueError):
    """--teacher names a model that cannot be distilled; raised before anything is written."""


@dataclass(frozen=True)
class DistillConfig:
    teacher: str
    out: str
    start_steps: int = 64  # the first teacher's DDIM steps; each round halves them
    final_steps: int = 4
    steps_per_round: int = 2000
    batch_size: int = 256
    lr: float = 2e-4
    warmup: int = 100
    ema_decay: float = 0.999
    guidance: float = 2.0  # folded into the student for class labels
    null_share: float = 0.2  # share of samples with the null label, so the student also samples `any`
    data_seed: int = TRAIN_DATA_SEED
    seed: int = 0
    threads: int = 2
    device: str = "cpu"
    data_workers: int = 0
    log_every: int = 50
    max_seconds: float | None = None  # fit all rounds into this time: steps_per_round comes from round 1's pace

    def __post_init__(self):
        for name in ("start_steps", "final_steps", "steps_per_round", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        ratio = self.start_steps / self.final_steps
        if ratio < 2 or ratio != 2 ** round(math.log2(ratio)):
            raise ValueError(f"--start-steps must be --final-steps times a power of two (at least 2), "
                             f"got {self.start_steps} and {self.final_steps}")

    @property
    def rounds(self) -> list[int]:
        """The student's steps in each round: start_steps/2, /4, ... final_steps."""
        out, n = [], self.start_steps
        while n > self.final_steps:
            n //= 2
            out.append(n)
        return out


class DistillBatches(torch.utils.data.Dataset):
    """Round r, step s: fresh images, labels (null for null_share of them), noise and the student step k,
    all drawn from (seed, r, s) alone, so worker processes do not change a batch."""

    def __init__(self, cfg: DistillConfig, round_index: int, student_steps: int):
        self.cfg, self.round_index, self.student_steps = cfg, round_index, student_steps

    def __len__(self) -> int:
        return self.cfg.steps_per_round

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        cfg, b = self.cfg, self.cfg.batch_size
        first = FIRST_INDEX + self.round_index * ROUND_STRIDE + step * b  # independent of steps_per_round
        images, labels = make_images(np.arange(first, first + b), cfg.data_seed)
        gen = seeded_generator(cfg.seed, self.round_index, step)
        k = torch.randint(0, self.student_steps, (b,), generator=gen)
        noise = torch.randn((b, 3, 32, 32), generator=gen)
        null = torch.rand(b, generator=gen) < cfg.null_share
        labels = torch.where(null, torch.full((b,), NULL_LABEL), torch.from_numpy(labels))
        return {"x0": to_model_range(images), "labels": labels, "noise": noise, "k": k}


def ddim_step(z: torch.Tensor, out: torch.Tensor, a_t: torch.Tensor, a_prev: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """One deterministic DDIM step per sample (a_t, a_prev: (B, 1, 1, 1)), as workers.samplers.sample_ddim at eta 0."""
    x0, eps = predict(z, out, a_t, schedule)
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


def two_step_target(z_t, z_end, a_t, a_end) -> torch.Tensor:
    """The x0 that takes z_t to z_end in one DDIM step (Salimans & Ho 2022, algorithm 2):
    x~ = (z_end - (sigma_end / sigma_t) z_t) / (alpha_end - (sigma_end / sigma_t) alpha_t)."""
    ratio = ((1 - a_end) / (1 - a_t)).sqrt()
    return (z_end - ratio * z_t) / (a_end.sqrt() - ratio * a_t.sqrt())


def guided(unet, z, t, labels, guidance: float) -> torch.Tensor:
    """Teacher output with guidance for class labels, unguided for the null label (one batched pass)."""
    both = unet(torch.cat([z, z]), torch.cat([t, t]), class_labels=torch.cat([labels, torch.full_like(labels, NULL_LABEL)])).sample.float()
    cond, uncond = both.chunk(2)
    g = torch.where(labels == NULL_LABEL, 1.0, guidance).view(-1, 1, 1, 1)
    return uncond + g * (cond - uncond)


def distill_loss(student, teacher, batch, grid_s: torch.Tensor, grid_t: torch.Tensor, alphas: torch.Tensor,
                 schedule: Schedule, cfg: DistillConfig, first_round: bool) -> torch.Tensor:
    """Student's x0 at (z_t, t) against the two-teacher-step target, weighted by max(SNR, 1) (truncated SNR).

    The teacher's steps clamp x0 as `schedule` says (the product's DDIM); the student's x0 is left
    unclamped, so its gradient never vanishes."""
    x0, noise, labels, k = batch["x0"], batch["noise"], batch["labels"], batch["k"]
    abar = lambda t: torch.where(t >= 0, alphas[t.clamp(min=0)], torch.ones_like(alphas[0])).view(-1, 1, 1, 1)
    t, t_mid, t_end = grid_s[k], grid_t[2 * k + 1], grid_t[2 * k + 2]
    a_t, a_mid, a_end = abar(t), abar(t_mid), abar(t_end)
    z_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise
    with torch.no_grad():
        step = (lambda z, tt: guided(teacher, z, tt, labels, cfg.guidance)) if first_round else \
               (lambda z, tt: teacher(z, tt, class_labels=labels).sample.float())
        z_mid = ddim_step(z_t, step(z_t, t), a_t, a_mid, schedule)
        z_end = ddim_step(z_mid, step(z_mid, t_mid.clamp(min=0)), a_mid, a_end, schedule)
        target = two_step_target(z_t, z_end, a_t, a_end)
    x0_student, _ = predict(z_t, student(z_t, t, class_labels=labels).sample.float(), a_t, replace(schedule, clip_sample=False))
    weight = torch.clamp(a_t / (1 - a_t).clamp(min=1e-12), min=1.0).flatten()
    return (weight * F.mse_loss(x0_student, target, reduction="none").mean(dim=(1, 2, 3))).mean()


def distill(cfg: DistillConfig) -> Path:
    """All rounds; writes the final student (diffusers format, its steps in novarch.json) to cfg.out."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    teacher_folder = fetch_model_folder(cfg.teacher)  # a shipped name or s3:// as given (recorded so)
    try:
        info = ModelInfo.read(teacher_folder)
    except ModelError as err:  # its message speaks of --model
        raise TeacherError(str(err).replace("--model", "--teacher", 1)) from None
    config = info.scheduler_config
    if config.get("prediction_type") != "v_prediction":
        raise TeacherError(f"--teacher {cfg.teacher} predicts {config.get('prediction_type', 'epsilon')}; progressive "
                         f"distillation needs a v-prediction teacher such as workers/models/novarch-tiny (NovArch v2)")
    alphas = alphas_cumprod_for(config).to(device)
    schedule = Schedule(alphas, [], bool(config.get("clip_sample", True)), config.get("prediction_type", "epsilon"))
    teacher = load_unet(teacher_folder, device).requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    start, log = time.perf_counter(), (out / "distill_log.jsonl").open("w")
    steps_per_round, probe_start = cfg.steps_per_round, None
    for r, student_steps in enumerate(cfg.rounds):
        # trailing grids are nested: N/2 steps are every other one of N (t_k = round(T - k T/N) - 1)
        grid_t = torch.tensor(trailing_timesteps(len(alphas), 2 * student_steps) + [-1], device=device)
        grid_s = grid_t[::2]
        ema = copy.deepcopy(student).eval().requires_grad_(False)
        opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0, fused=device.type == "cuda")
        batches = torch.utils.data.DataLoader(DistillBatches(cfg, r, student_steps), batch_size=None,
                                              num_workers=cfg.data_workers, pin_memory=device.type == "cuda",
                                              prefetch_factor=4 if cfg.data_workers else None)
        recent = []
        bar = tqdm(batches, desc=f"distil to {student_steps} steps", unit="step", mininterval=1 if sys.stderr.isatty() else 30)
        for step, batch in enumerate(bar):
            if step == steps_per_round:
                break
            if cfg.max_seconds is not None and r == 0 and step == PROBE_FROM:
                probe_start = settled_clock(device)
            if cfg.max_seconds is not None and r == 0 and step == PROBE_TO:
                pace = (PROBE_TO - PROBE_FROM) / (settled_clock(device) - probe_start)
                budget = cfg.max_seconds / len(cfg.rounds) - (time.perf_counter() - start)
                steps_per_round = max(PROBE_TO + 1, min(cfg.steps_per_round, PROBE_TO + int(pace * budget)))
                bar.total = steps_per_round
            batch = {key: v.to(device, non_blocking=True) for key, v in batch.items()}
            for group in opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
            recent.append(optimizer_step(student, ema, opt, step, cfg.ema_decay, device, lambda: distill_loss(
                student, teacher, batch, grid_s, grid_t, alphas, schedule, cfg, first_round=r == 0)))
            if (step + 1) % cfg.log_every == 0 or step + 1 == steps_per_round:
                row = {"round": r, "student_steps": student_steps, "step": step + 1,
                       "loss": float(torch.stack(recent).mean()), "seconds": round(time.perf_counter() - start, 1)}
                log.write(json.dumps(row) + "\n")
                log.flush()
                recent = []
        teacher = ema  # the next round halves this student's steps
        student = copy.deepcopy(ema).train().requires_grad_(True)
    log.close()
    meta = {"name": f"{info.name}-distilled", "distilled": {
        "method": "progressive distillation (Salimans & Ho 2022), guidance folded in the first round",
        "teacher": info.name, "teacher_sha256": info.sha256, "steps": cfg.final_steps, "guidance": cfg.guidance,
        "sample_with": f"novarch-batch submit --sampler distilled --model {shlex.quote(str(Path(cfg.out).absolute()))}"},
        "training_seconds": round(time.perf_counter() - start, 1), "distill_config": asdict(cfg),
        "steps_per_round_done": steps_per_round,  # with --max-seconds: pass it as --steps-per-round to repeat the run
        "hardware": hardware_name(device), "torch": torch.__version__}
    from diffusers import DDPMScheduler

    return save_model_folder(teacher, DDPMScheduler.from_config(config), out, meta)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--teacher", required=True, callback=existing_model_folder, metavar="NAME|FOLDER",
              help="The v-prediction model to distil: a folder, or a shipped name (novarch-tiny: v2).")
@click.option("--out", required=True, callback=model_folder_option, help="Folder for the student (diffusers format + novarch.json).")
@click.option("--start-steps", default=DistillConfig.start_steps, show_default=True, type=POSITIVE,
              help="The first teacher's DDIM steps; each round halves them.")
@click.option("--final-steps", default=DistillConfig.final_steps, show_default=True, type=POSITIVE,
              help="The student's steps (--start-steps divided by a power of two).")
@click.option("--steps-per-round", default=DistillConfig.steps_per_round, show_default=True, type=POSITIVE,
              help="Optimizer steps in each round (the most, with --max-seconds).")
@click.option("--batch-size", default=DistillConfig.batch_size, show_default=True, type=click.IntRange(1, MAX_BATCH),
              help="Images per optimizer step, painted fresh each step.")
@click.option("--lr", default=DistillConfig.lr, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="AdamW's learning rate in each round, after a linear warmup.")
@click.option("--guidance", default=DistillConfig.guidance, show_default=True, type=click.FloatRange(min=0),
              help="Classifier-free guidance folded into the student for class labels.")
@machine_options(DistillConfig)
@click.option("--max-seconds", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Fit all rounds together into this many seconds: steps per round come from round 1's pace and are recorded.")
def main(**kwargs) -> None:
    """Distil a NovArch v2 model into a few-step student with guidance folded in."""
    try:
        cfg = DistillConfig(**kwargs)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    try:
        folder = distill(cfg)
    except TeacherError as err:  # refused before anything is written
        raise click.UsageError(str(err)) from err
    click.echo(f"saved {folder}")


if __name__ == "__main__":
    main()
