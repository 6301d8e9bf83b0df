"""The frozen, validated JobSpec: every flag is checked here, before Ray or storage is touched."""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

CLASSES = ("building", "house", "any")
SAMPLERS = ("ddpm", "ddim", "dpmpp-2m", "dpmpp-2m-sde")
MAX_COUNT = 100_000_000  # ids are written as 9 digits and shards as 5: 10^8 fits both at 1,000 per shard
MAX_SHARDS = 100_000
MAX_STEPS = 1000  # the model's number of training timesteps
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class SpecError(ValueError):
    """Bad user input; the message names the flag and the fix (CLI exit code 2)."""


@dataclass(frozen=True)
class SamplingConfig:
    class_name: str = "any"
    sampler: str = "dpmpp-2m-sde"  # DDPM-20 quality in 10 steps with this model: BENCHMARKS.md
    steps: int = 10
    guidance: float = 2.0
    eta: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class OutputConfig:
    out: str = "./novarch-out"
    shard_size: int = 0  # 0 = auto_shard_size(count)
    embed_images: bool = False


@dataclass(frozen=True)
class RunConfig:
    workers: int = 0  # 0 = one per GPU, else an automatic CPU split (pipeline.cluster)
    batch_size: int = 64
    ray_address: str | None = None
    device: str = "auto"


@dataclass(frozen=True)
class JobSpec:
    count: int
    model: str  # model folder (resolved path)
    model_sha256: str
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    run: RunConfig = field(default_factory=RunConfig)
    job_id: str = ""

    @property
    def num_shards(self) -> int:
        return math.ceil(self.count / self.output.shard_size)

    def identity(self) -> dict:
        """What determines the dataset's content; workers, batch size and addresses do not."""
        return {
            "count": self.count,
            "model_sha256": self.model_sha256,
            "sampling": asdict(self.sampling),
            "shard_size": self.output.shard_size,
            "embed_images": self.output.embed_images,
        }

    def spec_hash(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_dict(self) -> dict:
        return asdict(self)


def auto_shard_size(count: int) -> int:
    """About 32 shards for small jobs (work for every actor, cheap retries), 1,000 images for big ones
    (Parquet files of a useful size), never under 64 images: one full default micro-batch, since a
    32-image batch samples ~12% slower on a 2-core CPU (BENCHMARKS.md)."""
    return max(64, min(1000, math.ceil(count / 32)))


def parse_count(raw) -> int:
    text = str(raw).strip().replace("_", "")
    if not re.fullmatch(r"[+-]?\d+", text):
        raise SpecError(f"--count must be a positive integer, got '{raw}'")
    count = int(text)
    if count <= 0:
        raise SpecError(f"--count must be a positive integer, got {count}")
    if count > MAX_COUNT:
        raise SpecError(f"--count must be at most {MAX_COUNT:,} per job, got {count:,}; split the work into several jobs with --seed")
    return count


def _positive(name: str, value: int) -> int:
    if value <= 0:
        raise SpecError(f"--{name} must be a positive integer, got {value}")
    return value


def validate_out(out: str) -> str:
    parsed = urlparse(out)
    if parsed.scheme not in ("", "file", "s3"):
        raise SpecError(f"--out {out}: unknown scheme '{parsed.scheme}://'; use a local path, file://PATH or s3://BUCKET/PREFIX")
    if parsed.scheme == "s3" and not parsed.netloc:
        raise SpecError(f"--out {out}: no bucket; use s3://BUCKET/PREFIX")
    if parsed.scheme in ("", "file"):
        from pipeline.storage import LocalStorage, StorageError

        try:
            LocalStorage(parsed.path if parsed.scheme == "file" else out).check_writable()
        except StorageError as e:
            raise SpecError(str(e)) from None
    return out


def resolve_model(model: str | None) -> tuple[str, Path]:
    """(what actors are given, a local folder to read now): an s3:// model is fetched into this
    node's cache here, and again (once per node, sha256-checked) by the actors."""
    from workers.model import default_model_dir

    if not model:
        return str(default_model_dir()), default_model_dir()
    if model.startswith("s3://"):
        from pipeline.storage import StorageError
        from workers.model_cache import fetch_model_folder

        try:
            return model, fetch_model_folder(model)
        except StorageError as e:
            raise SpecError(f"--model {model}: {e}") from None
    local = Path(model.removeprefix("file://")).expanduser().absolute()
    return str(local), local


def build_spec(
    *,
    count,
    out: str = "./novarch-out",
    class_name: str = "any",
    sampler: str = "dpmpp-2m-sde",
    steps: int = 10,
    guidance: float = 2.0,
    eta: float = 0.0,
    seed: int = 0,
    shard_size: int | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    job_id: str | None = None,
    ray_address: str | None = None,
    model: str | None = None,
    device: str = "auto",
    embed_images: bool = False,
) -> JobSpec:
    """Validate raw flag values into a JobSpec; raises SpecError naming the fix."""
    from workers.model import ModelError, ModelInfo

    count = parse_count(count)
    if class_name not in CLASSES:
        raise SpecError(f"--class must be one of {', '.join(CLASSES)}, got '{class_name}'")
    if sampler not in SAMPLERS:
        raise SpecError(f"--sampler must be one of {', '.join(SAMPLERS)}, got '{sampler}'")
    _positive("steps", steps)
    if steps > MAX_STEPS:
        raise SpecError(f"--steps must be at most {MAX_STEPS} (the model's training timesteps), got {steps}")
    if not math.isfinite(guidance) or guidance < 0:
        raise SpecError(f"--guidance must be a number >= 0 (1 = conditional, 0 = unconditional), got {guidance}")
    if not math.isfinite(eta) or eta < 0:
        raise SpecError(f"--eta must be a number >= 0 (0 = deterministic DDIM), got {eta}")
    if seed < 0:
        raise SpecError(f"--seed must be a non-negative integer, got {seed}")
    shard_size = auto_shard_size(count) if shard_size is None else _positive("shard-size", shard_size)
    if math.ceil(count / shard_size) > MAX_SHARDS:
        raise SpecError(f"--shard-size {shard_size} makes more than {MAX_SHARDS:,} shards; use --shard-size {math.ceil(count / MAX_SHARDS)} or more")
    _positive("batch-size", batch_size)
    if workers is not None:
        _positive("workers", workers)
    if job_id is not None and not JOB_ID_PATTERN.match(job_id):
        raise SpecError(f"--job-id must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter or digit), got '{job_id}'")
    if device not in ("auto", "cpu", "cuda"):
        raise SpecError(f"--device must be auto, cpu or cuda, got '{device}'")
    validate_out(out)
    model_ref, model_dir = resolve_model(model)
    try:
        info = ModelInfo.read(model_dir)
    except ModelError as e:
        raise SpecError(str(e)) from None

    spec = JobSpec(
        count=count,
        model=model_ref,
        model_sha256=info.sha256,
        sampling=SamplingConfig(class_name, sampler, steps, float(guidance), float(eta), seed),
        output=OutputConfig(out, shard_size, embed_images),
        run=RunConfig(workers or 0, batch_size, ray_address, device),
    )
    return JobSpec(**{**spec.__dict__, "job_id": job_id or f"novarch-{spec.spec_hash()[:12]}"})
