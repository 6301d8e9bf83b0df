"""Flags to a validated JobSpec: every value is checked here, before Ray or storage is touched.

The spec's fields, defaults and per-field checks are the dataclasses' (workers/spec.py); this
module adds what needs the outside world: the count's syntax, the output location, the model.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, replace
from pathlib import Path

from novarch_batch.storage.base import is_s3_url
from novarch_batch.workers.spec import (  # noqa: F401  (JobSpec and SpecError: this module's callers use them from here)
    ALL_STEPS,
    DISTILLED,
    FIELDS,
    SHIPPED_MODEL,
    SHIPPED_MODELS,
    SHIPPED_STUDENT,
    JobSpec,
    OutputConfig,
    RunConfig,
    SamplingConfig,
    SpecError,
    defaults_of,
    flag_name,
)

MAX_COUNT = 100_000_000  # ids are written as 9 digits and shards as 5: 10^8 fits both at 1,000 per shard
MAX_SHARDS = 100_000
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# --format's default for an s3:// --out: per-image PUTs are where S3 stops keeping up (a few
# thousand per second per prefix on AWS, ~400 on the embedded SeaweedFS; BENCHMARKS.md), well
# under one GPU's rate, while embedded images cost one PUT per shard. A folder keeps files.
S3_DEFAULT_FORMAT = "parquet"


RETRY_DELAY_S = 5.0  # before attempt n+1 wait n * 5 s: a store outage of ~10 s outlasts botocore's own retries
RETRY_DELAY_ENV = "NOVARCH_RETRY_DELAY_S"  # overrides RETRY_DELAY_S (a store whose outages last longer, or shorter)


def retry_delay_s() -> float:
    """The back-off unit: RETRY_DELAY_S, or NOVARCH_RETRY_DELAY_S when set. Read before a job writes
    anything, so a bad value is a usage error, not a failure halfway through a job."""
    value = os.environ.get(RETRY_DELAY_ENV)
    if value is None:
        return RETRY_DELAY_S
    try:
        delay = float(value)
    except ValueError:
        delay = -1.0
    if not 0 <= delay < float("inf"):
        raise SpecError(f"{RETRY_DELAY_ENV}={value!r} is not a number of seconds: set it to one (0 or more) or unset it "
                        f"(the default is {RETRY_DELAY_S:g})")
    return delay


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


def validate_out(out: str) -> str:
    from novarch_batch.storage import LocalStorage, StorageError, local_path
    from novarch_batch.storage.base import parse_s3_url

    try:
        path = local_path(out)
        if path is None:
            parse_s3_url(out)  # bucket and prefix; the store is reached at the job's pre-flight
        else:
            LocalStorage(path).check_writable()
    except StorageError as e:
        raise SpecError(f"--out {e}" if str(e).startswith(out) else str(e)) from None
    return out


def resolve_model(model: str | None) -> tuple[str, Path]:
    """(what actors are given, a local folder to read now): a shipped model by name, a local folder
    as an absolute path, an s3:// model as is (fetched into this node's cache here, and again, once
    per node and sha256-checked, by the actors)."""
    from novarch_batch.storage import StorageError, local_path
    from novarch_batch.workers.model_cache import fetch_model_folder

    try:
        path = local_path(model) if model and model not in SHIPPED_MODELS else None
        ref = str(Path(path).expanduser().absolute()) if path is not None else model or SHIPPED_MODEL
        return ref, fetch_model_folder(ref)
    except StorageError as e:
        raise SpecError(f"--model {model}: {e}") from None


def student_sampling(sampling: SamplingConfig, info, model: str, given: dict) -> SamplingConfig:
    """--sampler distilled samples in the student's own steps with its folded guidance: those are the
    defaults, and other values are refused (the student was trained for exactly them)."""
    student = info.distilled
    if not student:
        raise SpecError(f"--sampler distilled needs a distilled student, and --model {model} is not one (its novarch.json "
                        f"has no 'distilled'); leave --model out for the shipped {SHIPPED_STUDENT}, or choose another --sampler")
    for name, flag in (("steps", "--steps"), ("guidance", "--guidance")):
        if name in given and given[name] != student[name]:
            raise SpecError(f"{flag} {given[name]}: the distilled student samples with {flag} {student[name]} only "
                            f"(it was distilled for it); drop {flag}, or choose another --sampler")
    if given.get("guidance_interval", ALL_STEPS) != ALL_STEPS:
        raise SpecError("--guidance-interval does not apply to --sampler distilled (its guidance is folded into the "
                        "student); drop it, or choose another --sampler")
    # the grid is the one the student was distilled on: each grid option at the value that samples as before it existed
    grid = {name: FIELDS[name].metadata["before"] for name in ("final_timestep", "spacing")}
    for name, before in grid.items():
        if given.get(name, before) != before:
            raise SpecError(f"{flag_name(FIELDS[name])} does not apply to --sampler distilled (the student samples the grid "
                            "it was distilled on); drop it, or choose another --sampler")
    return replace(sampling, steps=int(student["steps"]), guidance=float(student["guidance"]), guidance_interval=ALL_STEPS, **grid)


def build_spec(*, count, model: str | None = None, job_id: str | None = None, **options) -> JobSpec:
    """Validate raw option values (named as the spec's fields) into a JobSpec; raises SpecError naming the fix.

    Options left out take the dataclasses' defaults; a name that is no field of the spec is a
    programming error (TypeError), never silently dropped.
    """
    from novarch_batch.workers.model import ModelError, ModelInfo

    count = parse_count(count)
    for name in ("actors", "gpus", "shard_size"):  # 0 is the dataclass's "automatic"; a user who types 0 means a mistake
        if name in options and options[name] is not None and options[name] <= 0:
            raise SpecError(f"--{name.replace('_', '-')} must be a positive integer, got {options[name]}")
    options = {k: v for k, v in options.items() if v is not None or k == "ray_address"}
    parts = {config: {k: options.pop(k) for k in list(options) if k in defaults_of(config)}
             for config in (SamplingConfig, OutputConfig, RunConfig)}
    if options:
        raise TypeError(f"build_spec got unknown options: {', '.join(sorted(options))}")
    output = parts[OutputConfig]
    if "format" not in output and is_s3_url(str(output.get("out", ""))):
        output["format"] = S3_DEFAULT_FORMAT  # one PUT per shard, not per image (OutputConfig.format's help)
    if not output.get("shard_size"):
        output["shard_size"] = auto_shard_size(count)
    sampling, out_config, run = SamplingConfig(**parts[SamplingConfig]), OutputConfig(**output), RunConfig(**parts[RunConfig])
    out_config.validate()
    run.validate()
    if math.ceil(count / out_config.shard_size) > MAX_SHARDS:
        raise SpecError(f"--shard-size {out_config.shard_size} makes more than {MAX_SHARDS:,} shards; "
                        f"use --shard-size {math.ceil(count / MAX_SHARDS)} or more")
    if job_id is not None and not JOB_ID_PATTERN.match(job_id):
        raise SpecError(f"--job-id must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter or digit), got '{job_id}'")
    validate_out(out_config.out)
    if sampling.sampler == DISTILLED and not model:
        model = SHIPPED_STUDENT
    model_ref, model_dir = resolve_model(model)
    try:
        info = ModelInfo.read(model_dir)
    except ModelError as e:
        raise SpecError(str(e)) from None
    if sampling.sampler == DISTILLED:
        sampling = student_sampling(sampling, info, model, given=parts[SamplingConfig])
    sampling.validate(info.classes)
    spec = JobSpec(count=count, model=model_ref, model_sha256=info.sha256, sampling=sampling, output=out_config, run=run)
    return replace(spec, job_id=job_id or f"novarch-{spec.spec_hash()[:12]}")


def check_spec(spec: JobSpec) -> None:
    """build_spec's checks of a finished spec, for one that arrives whole (`run-spec`, what a cluster's head
    runs): raises SpecError naming what is wrong, so that no job id leaves --out and no count, shard plan,
    class, step count or student setting that `submit` refuses runs anyway."""
    from novarch_batch.workers.model import ModelError, ModelInfo

    if not isinstance(spec.job_id, str) or not JOB_ID_PATTERN.match(spec.job_id):
        raise SpecError(f"job_id must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter or digit), got {spec.job_id!r}")
    if parse_count(spec.count) != spec.count:
        raise SpecError(f"count must be an integer, got {spec.count!r}")
    spec.output.validate()
    spec.run.validate()
    if spec.num_shards > MAX_SHARDS:
        raise SpecError(f"shard_size {spec.output.shard_size} makes more than {MAX_SHARDS:,} shards")
    validate_out(spec.output.out)
    try:
        info = ModelInfo.read(resolve_model(spec.model)[1])
    except ModelError as e:
        raise SpecError(str(e)) from None
    if info.sha256 != spec.model_sha256:
        raise SpecError(f"the model {spec.model} here has weights sha256 {info.sha256[:12]}, the spec {spec.model_sha256[:12]}: "
                        f"one job must not mix two models")
    if spec.sampling.sampler == DISTILLED and student_sampling(spec.sampling, info, spec.model, asdict(spec.sampling)) != spec.sampling:
        raise SpecError("the spec's sampling is not its student's own (steps, guidance and grid)")
    spec.sampling.validate(info.classes)
