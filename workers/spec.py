"""The job spec, torch-free: what an image is (SamplingConfig), where the job lands (OutputConfig)
and how it runs (RunConfig), combined in one frozen JobSpec.

One definition serves every layer: the CLI builds its options from these fields (flag, default,
help, choices), the driver hashes the spec and ships it whole to the actors and to a cluster's
Jobs API as JSON, the actor samples from it, and every Parquet row carries the SamplingConfig's
columns. Adding a sampling option is a field here, its use in the sampler, and its column in
``shard_format``.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from functools import lru_cache

import numpy as np

# Which optional SamplingConfig fields each sampler reads; setting one for a sampler that
# ignores it is refused, so an option never changes a job id without changing its images.
SAMPLER_OPTIONS: dict[str, tuple[str, ...]] = {
    "ddpm": (),
    "ddim": ("eta",),
    "dpmpp-2m": (),
    "dpmpp-2m-sde": (),
    "distilled": (),  # a distilled student's own DDIM: steps and guidance are the student's
}
DISTILLED = "distilled"
STOCHASTIC_SAMPLERS = ("ddpm", "dpmpp-2m-sde")  # fresh noise at every step; ddim too when --eta > 0
ANY_CLASS = "any"  # unconditional: each image drifts to the kind of image it finds
SHIPPED_MODEL = "novarch-tiny"  # the model inside the package; a name, so it means the same on every machine
SHIPPED_STUDENT = "novarch-tiny-distilled"  # what --sampler distilled samples unless --model names another student
SHIPPED_MODELS = (SHIPPED_MODEL, "novarch-tiny-v1", SHIPPED_STUDENT)  # v1 stays so that jobs begun with it can be finished
MAX_STEPS = 1000  # the model's number of training timesteps
ALL_STEPS = "all"  # --guidance-interval: guidance at every step
# Guidance where the class is decided, not at pure noise or in the details (Kynkaanniemi et al.
# 2024): on the 10-step trailing grid it guides t = 899, 799, 699. Measured in MODEL.md
# ("Guidance in an interval"): the purity and FD of guidance at every step, 13 evaluations for 20.
DEFAULT_GUIDANCE_INTERVAL = "650-950"
# The image is the last step's clean-image estimate. From the trailing grid's last timestep (99 of
# 10 steps) that estimate is the mean of every image the remaining noise allows, a softened one
# (thin window bars blur); from t <= 15 it is nearly a sample. Measured in MODEL.md ("The last step"):
# FD to the floor 33 -> 10 for building, 27 -> 15 for house, 8.7 -> 4.7 for any at guidance 2, at no
# extra cost.
DEFAULT_FINAL_TIMESTEP = 8
TRAILING_GRID = MAX_STEPS - 1  # --final-timestep that lowers no grid's last step: the trailing grid as before
# --spacing: where the steps' timesteps lie. trailing = evenly in t (Lin et al. 2023); karras =
# evenly in sigma^(1/rho) (Karras et al. 2022, eq. 5), sigma = sqrt((1 - alpha_bar) / alpha_bar),
# between t = 0.95 T and the last step, after a first step from pure noise: more steps where the
# deterministic solver's error is made, near pure noise (the class and layout) and near the clean
# image (the edges). Measured in MODEL.md ("Where the steps lie"): dpmpp-2m's FD to the floor at
# 10 steps 19 -> 4.5 for any, DDPM-1000's; for the default sampler without guidance, building 3.8,
# house 7.5 in 10 evaluations (trailing with guidance 1.5: 9.5, 7.3 in 13), at one seed (the spread
# over seeds: MODEL.md, "How much one row says"). rho = 7 is EDM's.
SPACINGS = ("trailing", "karras")
KARRAS_RHO = 7.0
KARRAS_TOP = 0.95  # of T: t = 950, sigma 13; from t = 998 up, sigma grows to 660 and then infinity
KARRAS_MAX_STEPS = 100  # spacing in sigma is for few steps; beyond, timesteps would collide near t = 0
DEVICES = ("auto", "cpu", "cuda")
OUTPUT_FORMATS = ("files", "parquet", "webdataset")  # workers/writers.py has one writer for each
# PNG encoder processes per GPU, shared by its actors. One process encodes ~15,000 32x32 images/s
# on this project's CPU (BENCHMARKS.md); at the 10,000 images/s a GPU should reach, the actor's
# own threads also build rows and pickle chunks, so four per GPU keep encoding off the critical
# path on a node with the usual 8+ cores per GPU.
GPU_ENCODE_PROCESSES = 4


class SpecError(ValueError):
    """Bad user input; the message names the flag and the fix (CLI exit code 2)."""


def option(default, help: str, *, flag: str | None = None, metavar: str | None = None, choices=None,
           column: str | None = "", show: str | None = None, before=MISSING):
    """A spec field that is also a `submit` option.

    flag: the CLI name (default --field-name); column: its Parquet column ("" = the field's name,
    None = not a column); show: the default as --help shows it, when the stored one is a sentinel;
    before: for a sampling field added later, the value that samples as before it existed (default:
    its default), which JobSpec.identity leaves out of the job id.
    """
    return field(default=default, metadata={"help": help, "flag": flag, "metavar": metavar, "choices": choices,
                                            "column": column, "show": show,
                                            "before": default if before is MISSING else before})


def flag_name(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SpecError(message)


def trailing_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """'Trailing' spacing (Lin et al. 2023, table 2): starts at T-1, so even 5 steps begin from pure noise.

    diffusers' values, cut to `steps`: the float arange has one element too many (a last timestep
    of -1, i.e. t = T-1 again when indexed) for 62 step counts up to 1,000 (61, 103, 121, ...).
    """
    ratio = num_train_timesteps / steps
    return [int(t) - 1 for t in np.round(np.arange(num_train_timesteps, 0, -ratio)[:steps])]


def cosine_betas(n: int) -> list[float]:
    """The betas of diffusers' squaredcos_cap_v2 schedule (Nichol & Dhariwal 2021, eq. 17:
    alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) * pi/2), s = 0.008), in float64; workers/schedules.py
    casts them to float32 as diffusers does."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]


@lru_cache(maxsize=4)
def novarch_noise_levels(num_train_timesteps: int = MAX_STEPS) -> tuple[float, ...]:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) of NovArch's schedule (training/export.build_scheduler:
    squaredcos_cap_v2 rescaled to zero terminal SNR), in float64 and without torch, so that the driver
    and the actors make the same grid; infinite at t = T-1. workers/schedules.py builds the float32
    alphas the samplers use from a model's own config; tests/test_spec.py checks that they agree."""
    sqrt_abar, product = [], 1.0
    for beta in cosine_betas(num_train_timesteps):
        product *= 1 - beta
        sqrt_abar.append(math.sqrt(product))
    first, last = sqrt_abar[0], sqrt_abar[-1]  # Lin et al. 2023, algorithm 1: shift and scale to end at 0
    abar = [((s - last) * first / (first - last)) ** 2 for s in sqrt_abar]
    return tuple(math.sqrt((1 - a) / a) if a > 0 else math.inf for a in abar)


def karras_timesteps(num_train_timesteps: int, steps: int, last: int) -> list[int]:
    """T-1 (pure noise), then steps-1 timesteps from 0.95 T down to `last` whose noise levels are
    evenly spaced in sigma^(1/rho), each the nearest timestep of NovArch's schedule; strictly
    descending (a collision near t = 0 moves the higher one up)."""
    if steps == 1:
        return [num_train_timesteps - 1]
    sigma = novarch_noise_levels(num_train_timesteps)
    top, n = int(KARRAS_TOP * num_train_timesteps), steps - 1
    hi, lo = sigma[top] ** (1 / KARRAS_RHO), sigma[last] ** (1 / KARRAS_RHO)
    targets = [lo] if n == 1 else [(hi + k / (n - 1) * (lo - hi)) ** KARRAS_RHO for k in range(n)]
    grid = []
    for target in targets:
        t = min(bisect.bisect_left(sigma, target), num_train_timesteps - 2)  # sigma ascends with t
        grid.append(t - 1 if t > 0 and target - sigma[t - 1] < sigma[t] - target else t)
    grid[-1] = last
    for k in range(n - 2, -1, -1):
        grid[k] = max(grid[k], grid[k + 1] + 1)
    return [num_train_timesteps - 1] + grid


def parse_interval(text: str) -> tuple[int, int] | None:
    """--guidance-interval's value: 'all' -> None (every step), 'LO-HI' -> (LO, HI); SpecError otherwise."""
    if text == ALL_STEPS:
        return None
    match = re.fullmatch(r"(0|[1-9][0-9]{0,3})-(0|[1-9][0-9]{0,3})", text)
    lo, hi = match.groups() if match else ("1", "0")
    if int(lo) > int(hi) or int(hi) >= MAX_STEPS:
        raise SpecError(f"--guidance-interval must be '{ALL_STEPS}' or LO-HI, timesteps with 0 <= LO <= HI <= "
                        f"{MAX_STEPS - 1} (e.g. 650-950), got '{text}'")
    return int(lo), int(hi)


def _check_choices(config) -> None:
    """Every field declared with choices holds one of them (the CLI checks too; Python callers may not)."""
    for f in fields(config):
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        _check(not choices or value in choices, f"{flag_name(f)} must be one of {', '.join(choices or ())}, got '{value}'")


@dataclass(frozen=True)
class SamplingConfig:
    class_name: str = option(ANY_CLASS, "Requested class: one of the model's classes (the shipped model: building, "
                             "house) or 'any', which samples unconditionally so each image drifts to the kind it finds.",
                             flag="--class", metavar="CLASS", column="class_label")
    sampler: str = option("dpmpp-2m-sde", "Reverse sampler. Network evaluations per image and quality "
                          "(MODEL.md, BENCHMARKS.md): dpmpp-2m-sde at the defaults (10 steps, no guidance) = 10, "
                          "purity 0.976-0.986, FD 3.4-7.5x the floor (houses: 7-14x, by --seed); at guidance 2 on the trailing grid, "
                          "guided at every step: ddpm 1000 steps = 2000, purity 0.97-0.99, FD 5-9x; dpmpp-2m 10 steps = 20, purity 0.91-0.98, "
                          "FD 27-69x (with --spacing karras and the last step at 8: purity 0.955-0.995, FD 4.5-37x); distilled = 4 (the student's 4 steps, one evaluation each, guidance 2 folded in; samples the "
                          "shipped student unless --model names another), purity 0.90-0.97, FD 21-49x, 2.5x the default's images/s. "
                          "Over the scene factors (evaluate's second FD: the mix of dusk, trees, clouds, sizes) the order turns: "
                          "without guidance on the karras grid dpmpp-2m at 10 steps is 1.9x / 2.3x the floor for building / house, "
                          "the default 3.0x / 4.9x (a fifth fewer clouds; medians of five seeds).",
                          choices=tuple(SAMPLER_OPTIONS))
    steps: int = option(10, "Sampler steps (network evaluations per image, plus one per guided step; --sampler "
                        "distilled: the student's). dpmpp-2m-sde at 12 steps, --guidance 1.5 --spacing trailing --final-timestep 15 "
                        "(16 evaluations for a class): FD 6.8x / 8.2x the floor for building / house (MODEL.md).", metavar="K")
    guidance: float = option(1.0, "Classifier-free guidance scale: 1 = plain conditional (one network evaluation per "
                             "step), 0 = unconditional; above 1 each guided step costs a second evaluation. On the default "
                             "karras grid the class is already kept (purity 0.976 / 0.985 for building / house) and guidance "
                             "narrows a class's variety: 1.5 takes house FD 7.5x -> 15x the floor (MODEL.md).", metavar="G")
    guidance_interval: str = option(DEFAULT_GUIDANCE_INTERVAL, "Timesteps LO-HI (of 1000; the first step is 999) where "
                                    "--guidance applies; other steps are conditional (--guidance 0: unconditional "
                                    "throughout). 'all' = every step. With --guidance 2 on the trailing grid, 650-950 guides 3 of 10 steps: "
                                    "13 evaluations per image, not 20, at the same quality (MODEL.md).",
                                    metavar="LO-HI|all", before=ALL_STEPS)
    final_timestep: int = option(DEFAULT_FINAL_TIMESTEP, "The last step starts from timestep T at most: the trailing "
                                 "grid (999, 899, ... 99 at 10 steps) with its last timestep lowered to T (the karras grid "
                                 "ends at T too). The image is "
                                 "that step's clean-image estimate, softened from t = 99, sharp from t <= 15: at guidance 2, "
                                 "FD to the floor 33 -> 10 for building, 27 -> 15 for house, at the same cost (MODEL.md). "
                                 f"{TRAILING_GRID} with --spacing trailing = the plain trailing grid; --sampler distilled samples the student's own grid (another value is refused).",
                                 metavar="T", before=TRAILING_GRID)
    spacing: str = option("karras", "Where the steps lie: trailing = evenly in t from 999 (999, 899, ... at 10 steps); "
                          "karras = a first step from pure noise, then evenly in sigma^(1/7) (Karras et al. 2022) from "
                          "t = 950 down to the last step (999, 950, 915, 850, 729, 527, 291, 123, 40, 8): more steps near "
                          "pure noise and near the clean image. At the defaults, FD to the floor 3.8 / 7.5 / 3.4 for "
                          "building / house / any (over five seeds: building 3.6-5.1, house 7.0-14.4; trailing, guided "
                          "1.5: 9.5 / 7.3 / 4.7 in 13 evaluations, house 4.4-7.3 over five seeds); for the "
                          "deterministic dpmpp-2m at 10 steps 19 -> 4.5 for any (DDPM-1000: 4.8) (MODEL.md, 'Where the "
                          f"steps lie'). At most {KARRAS_MAX_STEPS} steps; --sampler distilled samples the student's own grid (another value is refused).",
                          choices=SPACINGS, before="trailing")
    eta: float = option(0.0, "DDIM noise scale (--sampler ddim only): 0 deterministic, 1 ancestral.", metavar="E")
    seed: int = option(0, "Base seed; image i uses a seed derived from (S, i) only.", metavar="S", column=None)

    def validate(self, classes: tuple[str, ...]) -> None:
        """Refuse what the model or the sampler cannot do; `classes` are the model's own."""
        _check(self.class_name in (*classes, ANY_CLASS),
               f"--class must be one of {', '.join((*classes, ANY_CLASS))} (the model's classes), got '{self.class_name}'")
        _check_choices(self)
        _check(self.steps > 0, f"--steps must be a positive integer, got {self.steps}")
        _check(self.steps <= MAX_STEPS, f"--steps must be at most {MAX_STEPS} (the model's training timesteps), got {self.steps}")
        _check(math.isfinite(self.guidance) and self.guidance >= 0,
               f"--guidance must be a number >= 0 (1 = conditional, 0 = unconditional), got {self.guidance}")
        _check(math.isfinite(self.eta) and self.eta >= 0, f"--eta must be a number >= 0 (0 = deterministic DDIM), got {self.eta}")
        parse_interval(self.guidance_interval)
        _check(self.sampler != DISTILLED or self.guidance_interval in (ALL_STEPS, DEFAULT_GUIDANCE_INTERVAL),
               "--guidance-interval does not apply to --sampler distilled (its guidance is folded into the student); drop it")
        _check(type(self.final_timestep) is int and 0 <= self.final_timestep <= TRAILING_GRID,
               f"--final-timestep must be a timestep from 0 to {TRAILING_GRID} ({TRAILING_GRID} = the plain trailing grid), "
               f"got {self.final_timestep}")
        _check(self.sampler != DISTILLED or self.final_timestep in (TRAILING_GRID, DEFAULT_FINAL_TIMESTEP),
               "--final-timestep does not apply to --sampler distilled (the student samples the grid it was distilled on); drop it")
        _check(self.spacing == "trailing" or self.steps <= KARRAS_MAX_STEPS,
               f"--spacing karras spaces at most {KARRAS_MAX_STEPS} steps, got --steps {self.steps}; use --spacing trailing")
        _check(self.seed >= 0, f"--seed must be a non-negative integer, got {self.seed}")
        defaults = SamplingConfig()
        for name in OPTIONAL_FIELDS:
            if getattr(self, name) != getattr(defaults, name) and name not in SAMPLER_OPTIONS[self.sampler]:
                users = [s for s, used in SAMPLER_OPTIONS.items() if name in used]
                raise SpecError(f"{flag_name(FIELDS[name])} is used by --sampler {' or '.join(users)} only, not {self.sampler}; "
                                f"drop it or choose that sampler")

    def timesteps(self, num_train_timesteps: int = MAX_STEPS) -> list[int]:
        """The timesteps the sampler steps from: the trailing grid with its last one lowered to
        --final-timestep, or with --spacing karras a grid in sigma ending at that same last step (a
        single step stays at pure noise; a distilled student keeps its grid)."""
        grid = trailing_timesteps(num_train_timesteps, self.steps)
        if self.sampler != DISTILLED and len(grid) > 1:
            grid[-1] = min(grid[-1], self.final_timestep)
            if self.spacing == "karras":
                grid = karras_timesteps(num_train_timesteps, self.steps, grid[-1])
        return grid

    def guided_timesteps(self) -> list[int]:
        """The steps' timesteps that take classifier-free guidance (two network evaluations each, in one
        batched pass of both branches): none for unconditional rows, g = 0 or 1, or a distilled student
        (guidance folded in); else those inside --guidance-interval."""
        if self.guidance in (0.0, 1.0) or self.class_name == ANY_CLASS or self.sampler == DISTILLED:
            return []
        interval = parse_interval(self.guidance_interval)
        grid = self.timesteps()
        return grid if interval is None else [t for t in grid if interval[0] <= t <= interval[1]]

    def network_evaluations(self) -> int:
        """Network evaluations per image: one per step, plus one per guided step."""
        return self.steps + len(self.guided_timesteps())

    def noise_draws(self) -> int:
        """Noise draws per sample (workers/seeds.py): the initial noise, and for an ancestral or SDE
        sampler one more per step but the last, which lands on the clean image."""
        stochastic = self.sampler in STOCHASTIC_SAMPLERS or (self.sampler == "ddim" and self.eta > 0)
        return self.steps if stochastic else 1

    def sampler_kwargs(self) -> dict:
        """The optional fields this sampler reads, as keyword arguments of its function."""
        return {name: getattr(self, name) for name in SAMPLER_OPTIONS[self.sampler]}

    @classmethod
    def column_fields(cls) -> list[tuple[str, str]]:
        """(field name, Parquet column name) of every field that is a column, in field order."""
        return [(f.name, f.metadata["column"] or f.name) for f in fields(cls) if f.metadata["column"] is not None]

    def columns(self) -> dict:
        """Parquet column name -> value, the same for every row of the job."""
        return {column: getattr(self, name) for name, column in self.column_fields()}


FIELDS = {f.name: f for f in fields(SamplingConfig)}
# field -> (identity key, what it makes): see JobSpec.identity
HASHED_AS_WHAT_THEY_MAKE = {"guidance_interval": ("guided_timesteps", SamplingConfig.guided_timesteps),
                            "final_timestep": ("timesteps", SamplingConfig.timesteps),
                            "spacing": ("timesteps", SamplingConfig.timesteps)}
FIRST_SAMPLING_FIELDS = ("class_name", "sampler", "steps", "guidance", "eta", "seed")  # always in the job id, as in schema 1
OPTIONAL_FIELDS = tuple(sorted({name for used in SAMPLER_OPTIONS.values() for name in used}))


@dataclass(frozen=True)
class OutputConfig:
    out: str = option("./novarch-out", "Output root: a folder, file:///PATH or s3://BUCKET/PREFIX. The job lands in "
                      "<out>/<job_id>/.", metavar="PATH|URL")
    shard_size: int = option(0, "Images per shard (one Parquet file each).", metavar="M", show="count/32 clamped to 64..1000")
    format: str = option("files", "Where the images go: files = one PNG per image beside the Parquet index; parquet = "
                         "PNG bytes inside the Parquet rows (Hugging Face Image column, one object per shard); "
                         "webdataset = one tar per shard (<id>.png + <id>.json) plus the Parquet index. S3 takes a few "
                         "thousand PUTs/s per prefix (a local SeaweedFS ~400), which one GPU out-produces: so parquet "
                         "for s3://.", choices=OUTPUT_FORMATS, show="parquet for an s3:// --out, files for a folder")

    def validate(self) -> None:
        _check(self.shard_size > 0, f"--shard-size must be a positive integer, got {self.shard_size}")
        _check_choices(self)


@dataclass(frozen=True)
class RunConfig:
    """How the job runs; none of it changes the images, so none of it is in the job id."""

    gpus: int = option(0, "GPUs to sample on, one actor each (K with --actors-per-gpu). The autoscaler is asked for "
                       "them at once; the job starts on the first that is ready and grows as nodes join.", metavar="N",
                       show="every GPU the cluster has or its autoscaler can add")
    actors_per_gpu: int = option(1, "Sampler actors sharing one GPU (each asks Ray for 1/K of a GPU).", metavar="K")
    actors: int = option(0, "CPU sampler actors (jobs without GPUs).", metavar="N",
                         show="one single-thread actor per CPU core")
    batch_size: int = option(64, "Micro-batch size inside an actor.", metavar="B")
    placement_timeout: float = option(600.0, "Seconds the job waits with no ready actor (GPU nodes booting) before it "
                                      "fails naming the missing resource.", metavar="S")
    ray_address: str | None = option(None, "Join this running Ray cluster (e.g. auto, or ray://head:10001). Default: "
                                     "start a private local Ray for this job, whatever other Ray runs on the machine (unless "
                                     "RAY_ADDRESS is set, as in a driver the Jobs API runs).",
                                     metavar="ADDR")
    device: str = option("auto", "Where actors run the network: auto = GPUs when the cluster has or can add them, "
                         "else CPU.", choices=DEVICES)
    compile: bool = option(False, "torch.compile the network for the micro-batch's shape (CUDA graphs on a GPU): "
                           "faster sampling after a one-off compilation per actor and batch shape (20-25 s on a 2-core CPU; a class job "
                           "guided in an interval has two); images stay "
                           "within one level of 255 of the uncompiled ones, as with another --batch-size, so neither is "
                           "part of the job id.")
    exclusive: str = option("", "Run one at a time with every job that passes the same NAME under the same --out (a "
                            "schedule's nights): while this job's driver runs it holds <out>/_LEASE.NAME, and another "
                            "such job is refused, writing nothing, until it ends.", metavar="NAME", show="none")
    encode_processes: int = option(0, "PNG encoder processes per actor.", metavar="N",
                                   show=f"{GPU_ENCODE_PROCESSES} per GPU split among its actors (at least one each); none for CPU "
                                   "actors, which encode on their own threads")

    def validate(self) -> None:
        for name in ("gpus", "actors_per_gpu", "actors", "batch_size", "encode_processes"):
            _check(getattr(self, name) >= 0, f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        _check(self.actors_per_gpu > 0, f"--actors-per-gpu must be a positive integer, got {self.actors_per_gpu}")
        _check(self.batch_size > 0, f"--batch-size must be a positive integer, got {self.batch_size}")
        _check(math.isfinite(self.placement_timeout) and self.placement_timeout > 0,
               f"--placement-timeout must be a number of seconds > 0, got {self.placement_timeout}")
        _check_choices(self)
        _check(not self.exclusive or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", self.exclusive) is not None,
               f"--exclusive must be a name of letters, digits, '.', '_' or '-' (up to 64), got '{self.exclusive}'")
        _check(not (self.gpus and self.device == "cpu"), f"--gpus {self.gpus} asks for GPU actors; drop --device cpu or --gpus")
        _check(not (self.actors and (self.gpus or self.device == "cuda")),
               "--actors sets the number of CPU actors; for GPU actors use --gpus N (and --actors-per-gpu K)")


@dataclass(frozen=True)
class JobSpec:
    count: int
    model: str  # SHIPPED_MODEL, an absolute model folder, or s3://…
    model_sha256: str
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    run: RunConfig = field(default_factory=RunConfig)
    job_id: str = ""

    @property
    def num_shards(self) -> int:
        return math.ceil(self.count / self.output.shard_size)

    def identity(self) -> dict:
        """What determines the dataset's content; actors, batch size and addresses do not.

        "embed_images" is what --format parquet was called before --format existed: files and
        parquet hash exactly as they did then, so their job ids (and resumes) are unchanged.
        """
        # A sampling field added later is hashed only when it samples differently from before it
        # existed, so adding an option never changes the job id (and so the resume) of a job that
        # does not use it, and a default that changes images always changes the id.
        sampling = {name: value for name, value in asdict(self.sampling).items()
                    if name in FIRST_SAMPLING_FIELDS or value != FIELDS[name].metadata["before"]}
        # A field whose spellings can sample alike is hashed as what it makes, and only where that
        # differs from what its `before` value makes: the interval as the steps it guides ('all',
        # class any, guidance 0 or 1 or an interval holding every step guide alike), the final
        # timestep and the spacing as the grid (99 or 999 at 10 steps, anything at 1,000 steps, and
        # karras at one step leave it as it was).
        for name, (key, made_by) in HASHED_AS_WHAT_THEY_MAKE.items():
            if name in sampling:
                del sampling[name]
                made = made_by(self.sampling)
                if made != made_by(replace(self.sampling, **{name: FIELDS[name].metadata["before"]})):
                    sampling[key] = made
        identity = {
            "count": self.count,
            "model_sha256": self.model_sha256,
            "sampling": sampling,
            "shard_size": self.output.shard_size,
            "embed_images": self.output.format == "parquet",
        }
        if self.output.format not in ("files", "parquet"):
            identity["format"] = self.output.format
        return identity

    def spec_hash(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "JobSpec":
        """The inverse of to_dict (job.json, the Jobs API); unknown keys are refused, not dropped."""
        parts = {"sampling": SamplingConfig, "output": OutputConfig, "run": RunConfig}
        return cls(**{k: parts[k](**v) if k in parts else v for k, v in data.items()})


def defaults_of(config: type) -> dict:
    return {f.name: f.default for f in fields(config) if f.default is not MISSING}
