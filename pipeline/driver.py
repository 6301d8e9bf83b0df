"""The driver: plan the shards, run the missing ones on a pool of sampler actors, commit the job.

Fault handling is in pipeline/scheduler.py (docs/faults.md). The driver keeps no image data,
only per-shard stats, so its memory does not grow with --count.
"""
from __future__ import annotations

import contextlib
import os
import resource
import time
from dataclasses import asdict, dataclass, field

import ray

from novarch_batch.pipeline import cluster, manifest
from novarch_batch.pipeline.lease import ExclusiveLease, JobBusy, Lease
from novarch_batch.pipeline.metrics import JobMetrics
from novarch_batch.pipeline.shards import Shard, missing_shards
from novarch_batch.pipeline.progress import Progress
from novarch_batch.pipeline.scheduler import IN_FLIGHT, JobFailed, ShardScheduler  # noqa: F401  (JobFailed is part of run()'s contract)
from novarch_batch.pipeline.spec import retry_delay_s
from novarch_batch.workers.spec import JobSpec
from novarch_batch.storage import join, open_storage
from novarch_batch.workers import shard_format
from novarch_batch.workers.actor import ShardActor
from novarch_batch.workers.tasks import FAULT_ENV, FORCE_DEVICE_ENV, ShardResult, ShardTask

FORWARDED_ENV = (FAULT_ENV, FORCE_DEVICE_ENV, "NOVARCH_S3_MAX_ATTEMPTS")  # tuning and test hooks, never credentials
# GPU actors out-produce per-image files: one actor stored ~1,100 PNG files/s into a local folder
# against ~18,000 images/s embedded in Parquet (BENCHMARKS.md, the host side of an actor).
FILES_ON_GPUS = ("note: GPU actors with --format files: one file per image stored ~1,100 images/s per actor in a benchmark, "
                 "far under a GPU's rate; --format parquet (one object per shard) keeps up")


@dataclass
class JobReport:
    job_id: str
    url: str
    count: int
    shards: int
    shards_skipped: int = 0
    shards_sampled: int = 0
    images_sampled: int = 0
    retries: int = 0  # shard attempts that failed with the shard's own error
    preemptions: int = 0  # actors lost under their shards (node gone): not shard attempts
    startup_failures: int = 0  # actors whose own start-up raised
    actors_replaced: int = 0
    actors: str = ""
    seconds: float = 0.0
    started_at: float = 0.0  # wall clock (epoch seconds) when the driver started; the *_seconds fields count from it
    startup_seconds: float = 0.0  # until the first actor had loaded the model (Ray start included)
    actor_ready_seconds: list[float] = field(default_factory=list)  # since the start, as each actor became ready
    sample_seconds: float = 0.0
    images_per_second: float = 0.0
    complete: bool = False
    already_complete: bool = False  # finished by an earlier run: this one wrote nothing
    conditional_writes: bool = True  # the store honoured If-None-Match at pre-flight (exactly-once commits and lease)
    recovery_seconds: list[float] = field(default_factory=list)  # per failed shard: first failure to commit
    shards_by_actor: dict[str, int] = field(default_factory=dict)  # "host:node:pid" -> shards it committed
    driver_peak_rss_mb: float = 0.0  # this process only: its memory must not grow with --count
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def shard_task(spec: JobSpec, job_url: str, shard: Shard, created_at: str) -> ShardTask:
    return ShardTask(
        job_id=spec.job_id, job_url=job_url, shard=shard.index, start=shard.start, stop=shard.stop,
        sampling=spec.sampling, batch_size=spec.run.batch_size, created_at=created_at, format=spec.output.format,
    )


def run(spec: JobSpec, progress: Progress | None = None) -> JobReport:
    """Run (or resume) a job to completion; raises JobFailed when a shard exhausts its attempts."""
    progress = progress or Progress(enabled=False)
    started = time.perf_counter()
    retry_delay_s()  # a bad NOVARCH_RETRY_DELAY_S is refused before anything is read or written
    root = open_storage(spec.output.out)
    job_url = join(root.url, spec.job_id)
    job = root.child(spec.job_id)
    root.check_readable()  # an unreachable endpoint or a missing bucket fails in seconds, before the data path's retries
    existing = manifest.read_job(job)
    if existing is not None:
        manifest.check_same_spec(job, spec, existing)  # refuse a foreign job before taking its lease
        done = manifest.read_json(job, manifest.SUCCESS_FILE)
        if done is not None and done.get("spec_hash") == spec.spec_hash():
            # Finished: write nothing (not even a probe or the lease), so no storage event fires again.
            # Listings tell a finished job from one damaged since, which must not pass as complete.
            repair = manifest.repair_by_hand(existing) or manifest.REPAIR_LOST_SHARDS
            gone = sorted(set(range(spec.num_shards)) - manifest.committed_shards(job))
            if gone:
                raise JobFailed(f"{job_url}: the job finished, but {len(gone)} shard(s) are gone since (first: "
                                f"{shard_format.shard_key(gone[0])}); {repair}")
            lost = _shards_missing_images(spec, job, range(spec.num_shards))
            if lost:
                raise JobFailed(f"{job_url}: the job finished, but {len(lost)} shard(s) have lost images since (first: "
                                f"{next(iter(lost.values()))}); {repair}")
            return JobReport(spec.job_id, job_url, spec.count, spec.num_shards, shards_skipped=spec.num_shards,
                             complete=True, already_complete=True, seconds=round(time.perf_counter() - started, 3))
    root.check_writable()  # pre-flight before any sampling: bad bucket or keys fail here, in seconds
    conditional = root.honours_conditional_writes()
    if not conditional:
        progress.note(f"{root.url}: this store ignores conditional writes (If-None-Match); the job's lease is best effort")
    try:
        with contextlib.ExitStack() as held:
            leases = []
            if spec.run.exclusive:  # taken first: a job refused for another one's run writes nothing
                leases.append(held.enter_context(ExclusiveLease(root, conditional, spec.run.exclusive, job_url)))
            lease = held.enter_context(Lease(job, conditional=conditional))
            leases.append(lease)
            committed = manifest.committed_shards(job)
            # A committed shard whose images are gone is not whole: its Parquet file (the commit) goes, and
            # the shard is sampled again with identical bytes.
            lost = _shards_missing_images(spec, job, sorted(committed))
            pending = missing_shards(spec.count, spec.output.shard_size, committed - set(lost))
            # The actors are planned before any write but the lease: a cluster that cannot give them (no GPU
            # to be had) refuses the job before its job.json, and a job with nothing left to sample starts no Ray.
            pool = _plan_pool(spec) if pending else None
            if lost:
                if lease.lost:  # another driver owns the job now: its commits are not ours to delete
                    raise _taken_over(job)
                for k in lost:
                    job.delete(shard_format.shard_key(k))
                progress.note(f"{len(lost)} committed shard(s) have lost images since their commit (first: "
                              f"{next(iter(lost.values()))}): sampling them again, with identical bytes")
            created_at = manifest.prepare_job(job, spec, committed - set(lost))
            watch = LeaseWatch(job, leases, progress.note)
            return _run_job(spec, job, job_url, created_at, progress, started, watch, conditional, pending, pool)
    except cluster.ClusterRefusal:
        if existing is None:
            job.prune()  # the lease, released, was all a new job had: leave not even its folder
        raise


def release() -> None:
    """Stop the local Ray this process started (or leave a joined cluster) once the job is reported,
    instead of in Ray's exit hook, which first waits another 0.5 s for late log lines."""
    if ray.is_initialized():
        ray.shutdown()


def _taken_over(job, lease: Lease | None = None) -> JobBusy:
    if isinstance(lease, ExclusiveLease):
        return JobBusy(f"{job.url}: another job took --exclusive {lease.name} over while this one was stalled; "
                       f"re-run this one once it is done")
    return JobBusy(f"{job.url}: another driver took this job over while this one was stalled; it finishes the job")


class LeaseWatch:
    """The driver's leases, looked at from the scheduler's loop: no shard starts while one is unconfirmed
    (its renewals have not landed for lease.fence_seconds()), and the job stops, its actors killed, as soon
    as one is taken over or has gone lease.LEASE_SECONDS unrenewed, when another driver may take the job: two
    drivers' actors never write one job at once."""

    def __init__(self, job, leases: list[Lease], note):
        self.job, self.leases, self.note = job, leases, note
        self.paused = False

    def may_dispatch(self) -> bool:
        fresh = all(lease.fresh for lease in self.leases)
        if fresh == self.paused:
            self.paused = not fresh
            self.note(f"the job's lease has not been renewed for {max(held.unrenewed_seconds() for held in self.leases):.0f} s "
                      f"(the store does not take its heartbeats): no new shard starts until it is" if self.paused
                      else "the job's lease is renewed again: shards start again")
        return fresh

    def check(self) -> None:
        for lease in self.leases:
            if lease.lost:
                raise _taken_over(self.job, lease)
            if lease.expired:
                why = f": {lease.last_error}" if lease.last_error else ""
                raise JobFailed(f"{self.job.url}: this driver could not renew its lease for {lease.unrenewed_seconds():.0f} s (the store "
                                f"did not take its heartbeats{why}), after which another driver may take the job over, so it "
                                f"stopped its actors. Committed shards are kept: re-run the same command to resume")

    def confirm(self) -> None:
        """Renew every lease now, before the job's last write (_SUCCESS): a driver taken over writes nothing more."""
        for lease in self.leases:
            if not lease.renew():
                raise _taken_over(self.job, lease)


def _shards_missing_images(spec: JobSpec, job, indices) -> dict[int, str]:
    return manifest.shards_missing_images(job, spec.output.format, spec.count, spec.output.shard_size, indices)


def _plan_pool(spec: JobSpec) -> tuple[bool, cluster.ActorResources]:
    """Join or start Ray and size the actor pool: (whether this process started Ray, the resources)."""
    local = cluster.connect(spec.run.ray_address)
    return local, cluster.actor_resources(spec.run, local=local)


def _run_job(spec, job, job_url, created_at, progress, started, watch, conditional, todo, pool) -> JobReport:
    report = JobReport(spec.job_id, job_url, spec.count, spec.num_shards, shards_skipped=spec.num_shards - len(todo),
                       started_at=round(time.time() - (time.perf_counter() - started), 3), conditional_writes=conditional)
    checksums: dict[int, str] = {}
    if todo:
        progress.start(spec.count, spec.count - sum(s.size for s in todo))
        try:
            _sample_shards(spec, job_url, todo, created_at, report, checksums, progress, started, pool, watch)
        finally:
            progress.close()
    checksums.update(manifest.shard_checksums(job, [k for k in range(spec.num_shards) if k not in checksums]))
    watch.confirm()
    report.seconds = round(time.perf_counter() - started, 3)
    report.images_per_second = round(report.images_sampled / report.seconds, 2) if report.seconds else 0.0
    report.driver_peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
    manifest.write_success(job, spec, checksums, {"images_sampled_last_run": report.images_sampled})
    report.complete = True
    return report


def _sample_shards(spec, job_url, todo, created_at, report, checksums, progress, started, pool, watch) -> None:
    local, resources = pool
    actors = min(resources.actors, len(todo))  # never more actors than shards left to sample
    report.actors = resources.describe()
    metrics = JobMetrics(spec.job_id)
    options = dict(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, max_restarts=0, max_concurrency=IN_FLIGHT)
    forwarded = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    if forwarded:
        options["runtime_env"] = {"env_vars": forwarded}
    actor_cls = ray.remote(ShardActor).options(**options)
    if resources.num_gpus and spec.output.format == "files":
        progress.note(FILES_ON_GPUS)
    if resources.gpus and not local:
        cluster.request_gpus(min(resources.gpus, -(-actors // spec.run.actors_per_gpu)))  # nodes boot in parallel, from zero
        progress.note(f"asking for {resources.gpus} GPU(s): the cluster has {resources.gpus_now}; "
                      f"the job starts on the first GPU actor that is ready and grows as nodes join")

    def on_done(shard: Shard, result: ShardResult) -> None:
        report.shards_sampled += 1
        report.images_sampled += result.images
        report.sample_seconds += result.sample_seconds
        checksums[shard.index] = result.checksum
        report.shards_by_actor[result.worker] = report.shards_by_actor.get(result.worker, 0) + 1
        progress.advance(result.images)
        metrics.add("images_total", result.images)
        metrics.add("shards_committed_total")

    def on_tick(scheduler: ShardScheduler) -> None:
        watch.check()  # raises when the job is no longer this driver's: the scheduler kills its actors
        progress.tick(scheduler.pool_status)

    scheduler = ShardScheduler(
        make_actor=lambda: actor_cls.remote(spec.model, resources.device, resources.threads or None, model_sha256=spec.model_sha256,
                                            compile=spec.run.compile, encode_processes=resources.encode_processes,
                                            warmup=(spec.sampling, spec.run.batch_size)),
        actors=actors,
        make_task=lambda shard: shard_task(spec, job_url, shard, created_at),
        on_done=on_done,
        note=progress.note,
        placement_timeout=spec.run.placement_timeout,
        describe_unplaced=resources.unplaced,
        on_event=metrics.add,
        on_tick=on_tick,
        retry_delay=retry_delay_s(),
        may_dispatch=watch.may_dispatch,
    )
    try:
        scheduler.run(todo)
    finally:
        if resources.gpus and not local:
            cluster.request_gpus(0)  # stop holding GPU nodes: the autoscaler lets them go when idle
        report.retries, report.preemptions, report.startup_failures = scheduler.retries, scheduler.preemptions, scheduler.startup_failures
        report.actors_replaced = scheduler.replaced
        report.startup_seconds = round((scheduler.first_ready or time.perf_counter()) - started, 3)
        report.actor_ready_seconds = [round(t - started, 2) for t in scheduler.ready_times]
        report.errors = scheduler.errors
        report.recovery_seconds = scheduler.recoveries
