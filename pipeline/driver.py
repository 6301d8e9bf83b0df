"""The driver: plan the shards, run the missing ones on a pool of sampler actors, commit the job.

Fault handling (docs/faults.md): a shard that fails is retried, on another actor where one is
free, up to MAX_ATTEMPTS times; an actor that dies is replaced; the driver keeps no image data, only
per-shard stats, so its memory does not grow with --count.
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import ray

from pipeline import cluster, manifest
from pipeline.lease import Lease
from pipeline.plan import Shard, missing_shards
from pipeline.progress import Progress
from pipeline.spec import JobSpec
from pipeline.storage import join, open_storage
from workers.actor import FAULT_ENV, SamplerActor, ShardResult, ShardTask

MAX_ATTEMPTS = 3  # per shard: a transient fault gets two more tries; a shard that always fails stops the job
RETRY_DELAY_S = 5.0  # before attempt n+1 wait n * 5 s: a store outage of ~10 s outlasts botocore's own retries
FORWARDED_ENV = (FAULT_ENV, "NOVARCH_S3_MAX_ATTEMPTS")  # tuning and test hooks, never credentials


class JobFailed(RuntimeError):
    """The job could not complete; committed shards stay, so the same command resumes it."""


@dataclass
class JobReport:
    job_id: str
    url: str
    count: int
    shards: int
    shards_skipped: int = 0
    shards_sampled: int = 0
    images_sampled: int = 0
    retries: int = 0
    actors_replaced: int = 0
    actors: str = ""
    seconds: float = 0.0
    sample_seconds: float = 0.0
    images_per_second: float = 0.0
    complete: bool = False
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def shard_task(spec: JobSpec, job_url: str, shard: Shard, created_at: str) -> ShardTask:
    s = spec.sampling
    return ShardTask(
        job_id=spec.job_id, job_url=job_url, shard=shard.index, start=shard.start, stop=shard.stop,
        class_name=s.class_name, sampler=s.sampler, steps=s.steps, guidance=s.guidance, eta=s.eta, seed=s.seed,
        batch_size=spec.run.batch_size, created_at=created_at, embed_images=spec.output.embed_images,
    )


def run(spec: JobSpec, progress: Progress | None = None) -> JobReport:
    """Run (or resume) a job to completion; raises JobFailed when a shard exhausts its attempts."""
    progress = progress or Progress(enabled=False)
    started = time.perf_counter()
    root = open_storage(spec.output.out)
    root.check_writable()  # pre-flight before any sampling: bad bucket or keys fail here, in seconds
    job_url = join(root.url, spec.job_id)
    job = root.child(spec.job_id)
    existing = manifest.read_json(job, manifest.JOB_FILE)
    if existing is not None:
        manifest.check_same_spec(job, spec, existing)  # refuse a foreign job before taking its lease
    with Lease(job):
        created_at = manifest.prepare_job(job, spec)
        return _run_job(spec, job, job_url, created_at, progress, started)


def _run_job(spec, job, job_url, created_at, progress, started) -> JobReport:
    committed = manifest.committed_shards(job)
    todo = missing_shards(spec.count, spec.output.shard_size, committed)
    report = JobReport(spec.job_id, job_url, spec.count, spec.num_shards, shards_skipped=spec.num_shards - len(todo))
    checksums: dict[int, str] = {}
    if todo:
        progress.start(spec.count, spec.count - sum(s.size for s in todo))
        try:
            _sample_shards(spec, job_url, todo, created_at, report, checksums, progress)
        finally:
            progress.close()
    for k in range(spec.num_shards):
        if k not in checksums:
            checksums[k] = manifest.shard_checksum(job, k)
    report.seconds = round(time.perf_counter() - started, 3)
    report.images_per_second = round(report.images_sampled / report.seconds, 2) if report.seconds else 0.0
    manifest.write_success(job, spec, checksums, {"images_sampled_last_run": report.images_sampled})
    report.complete = True
    return report


def _sample_shards(spec, job_url, todo, created_at, report, checksums, progress) -> None:
    cluster.connect(spec.run.ray_address)
    plan = cluster.plan_actors(spec.run.workers, spec.run.device)
    workers = min(plan.workers, len(todo))  # never more actors than shards left to sample
    report.actors = plan.describe()
    options = dict(num_cpus=plan.num_cpus, num_gpus=plan.num_gpus, max_restarts=0)
    forwarded = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    if forwarded:
        options["runtime_env"] = {"env_vars": forwarded}
    actor_cls = ray.remote(SamplerActor).options(**options)

    def new_actor():
        return actor_cls.remote(spec.model, plan.device, plan.threads or None)

    actors = [new_actor() for _ in range(workers)]
    queue: deque[Shard] = deque(todo)
    attempts: dict[int, int] = {}
    failed_on: dict[int, set[int]] = {}  # shard -> actor slots it failed on, so a retry goes elsewhere
    not_before: dict[int, float] = {}  # shard -> monotonic time its retry may start
    running: dict[ray.ObjectRef, tuple[int, Shard]] = {}
    idle = list(range(len(actors)))

    def dispatch() -> None:
        while idle:
            now = time.monotonic()
            ready = [s for s in queue if not_before.get(s.index, 0) <= now]
            if not ready:
                return
            slot = idle.pop(0)
            pick = next((s for s in ready if slot not in failed_on.get(s.index, ())), ready[0])
            queue.remove(pick)
            attempts[pick.index] = attempts.get(pick.index, 0) + 1
            ref = actors[slot].run_shard.remote(shard_task(spec, job_url, pick, created_at))
            running[ref] = (slot, pick)

    fatal: str | None = None
    try:
        dispatch()
        while running or queue:
            done = ray.wait(list(running), num_returns=1, timeout=0.5 if queue else None)[0] if running else time.sleep(0.5)
            if not done:  # only retries waiting for their delay
                dispatch()
                continue
            slot, shard = running.pop(done[0])
            try:
                result: ShardResult = ray.get(done[0])
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                result = ShardResult(shard.index, False, error=f"actor died: {type(e).__name__}")
                ray.kill(actors[slot], no_restart=True)
                actors[slot] = new_actor()
                report.actors_replaced += 1
            if result.ok:
                report.shards_sampled += 1
                report.images_sampled += result.images
                report.sample_seconds += result.sample_seconds
                checksums[shard.index] = result.checksum
                progress.advance(result.images)
            else:
                failed_on.setdefault(shard.index, set()).add(slot)
                message = f"shard {shard.index} (ids {shard.start}-{shard.stop - 1}) attempt {attempts[shard.index]}/{MAX_ATTEMPTS} failed: {result.error}"
                report.errors.append(message)
                if attempts[shard.index] >= MAX_ATTEMPTS:
                    fatal = fatal or message
                    queue.clear()  # let the shards in flight finish and commit, start no more
                else:
                    progress.note(f"retrying {message}")
                    report.retries += 1
                    not_before[shard.index] = time.monotonic() + RETRY_DELAY_S * attempts[shard.index]
                    queue.appendleft(shard)
            idle.append(slot)
            dispatch()
    finally:
        for actor in actors:  # also on Ctrl-C: uncommitted shards are simply sampled again next run
            ray.kill(actor, no_restart=True)
    if fatal:
        raise JobFailed(f"{fatal}; gave up after {MAX_ATTEMPTS} attempts. Committed shards are kept: fix the cause and re-run the same command to resume")
