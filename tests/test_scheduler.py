"""The scheduler on a real Ray with a light stand-in actor: two shards in flight per actor, each
shard run exactly once, and a driver that never imports torch."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from novarch_batch.pipeline.shards import Shard
from novarch_batch.pipeline.scheduler import IN_FLIGHT, ShardScheduler
from novarch_batch.workers.spec import SamplingConfig
from novarch_batch.workers.tasks import ShardResult, ShardTask


class CountingActor:
    """Answers like a ShardActor; reports how many of its calls were running when each started."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active = 0

    def ping(self) -> str:
        return "ready"

    def run_shard(self, task: ShardTask) -> ShardResult:
        with self.lock:
            self.active += 1
            seen = self.active
        time.sleep(0.3)
        with self.lock:
            self.active -= 1
        return ShardResult(task.shard, True, task.stop - task.start, worker=str(seen))


def task_for(shard: Shard) -> ShardTask:
    return ShardTask("job", "/nowhere", shard.index, shard.start, shard.stop, SamplingConfig(sampler="ddpm", steps=1), 8, "2026-01-01T00:00:00+00:00")


def test_each_actor_gets_its_next_shard_while_the_current_one_runs(ray_local):
    actor_cls = ray_local.remote(CountingActor).options(num_cpus=0, max_concurrency=IN_FLIGHT)
    done: dict[int, int] = {}
    shards = [Shard(k, 8 * k, 8 * k + 8) for k in range(12)]
    scheduler = ShardScheduler(actor_cls.remote, 2, task_for, lambda s, r: done.__setitem__(s.index, int(r.worker)), lambda m: None)
    scheduler.run(shards)
    assert sorted(done) == list(range(12))  # every shard once
    assert max(done.values()) == IN_FLIGHT  # a queued shard was waiting in the actor, not in the driver
    assert scheduler.retries == 0 and scheduler.replaced == 0


class PoisonedByItsFirstFault:
    """The first actor to run shard 0 fails it with a fault that sticks to its process (as a broken encoder
    pool or a CUDA error does): every shard it runs after fails too. Actors started later are healthy."""

    def __init__(self, marker: str):
        self.marker, self.poisoned = marker, False

    def ping(self) -> str:
        return "ready"

    def run_shard(self, task: ShardTask) -> ShardResult:
        if task.shard == 0 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            self.poisoned = True
        if self.poisoned:
            return ShardResult(task.shard, False, 0, error="RuntimeError: CUDA error: an illegal memory access was encountered")
        return ShardResult(task.shard, True, task.stop - task.start)


def test_an_actor_whose_fault_sticks_is_replaced(ray_local, tmp_path):
    """A one-actor job whose actor fails two shards in a row gets a new actor, and completes, where the
    sick one would have failed every attempt of every shard it was given."""
    actor_cls = ray_local.remote(PoisonedByItsFirstFault).options(num_cpus=0, max_concurrency=IN_FLIGHT)
    done: list[int] = []
    scheduler = ShardScheduler(lambda: actor_cls.remote(str(tmp_path / "fault")), 1, task_for,
                               lambda s, r: done.append(s.index), lambda m: None, retry_delay=0.1)
    scheduler.run([Shard(k, 8 * k, 8 * k + 8) for k in range(6)])
    assert sorted(done) == list(range(6))
    # shards 0 and 1 failed, and a third given to the sick actor between them may have (its kill is no preemption)
    assert scheduler.replaced == 1 and scheduler.preemptions == 0 and scheduler.retries in (2, 3)
    assert any("failed 2 shards in a row" in e for e in scheduler.errors)


class HangsOnce:
    """Shard 2's first run never returns (a stuck encoder child, a hung mount); every other run takes 0.2 s."""

    def __init__(self, marker: str):
        self.marker = marker

    def ping(self) -> str:
        return "ready"

    def run_shard(self, task: ShardTask) -> ShardResult:
        if task.shard == 2 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            time.sleep(3600)
        time.sleep(0.2)
        return ShardResult(task.shard, True, task.stop - task.start)


@pytest.mark.timeout(90)
def test_an_actor_that_stops_answering_is_replaced_and_its_shards_retried(ray_local, tmp_path):
    """No job waits forever on a hung actor: silent for 10 median shard times (here at least 2 s), its shards
    count a failed attempt and go to a new actor."""
    actor_cls = ray_local.remote(HangsOnce).options(num_cpus=0, max_concurrency=IN_FLIGHT)
    done: list[int] = []
    scheduler = ShardScheduler(lambda: actor_cls.remote(str(tmp_path / "hung")), 2, task_for,
                               lambda s, r: done.append(s.index), lambda m: None, retry_delay=0.1, hang_floor=2.0)
    started = time.monotonic()
    scheduler.run([Shard(k, 8 * k, 8 * k + 8) for k in range(12)])
    assert sorted(done) == list(range(12)) and time.monotonic() - started < 60
    assert scheduler.replaced == 1 and scheduler.retries >= 1 and scheduler.preemptions == 0
    assert any("had not answered in" in e for e in scheduler.errors)


@pytest.mark.parametrize("module", ["novarch_batch.pipeline.driver", "novarch_batch.pipeline.cli"])
def test_the_driver_side_never_imports_torch(module, tmp_path):
    """The driver reads the model's metadata and hands Ray a shell class; torch loads only in actors."""
    code = (f"import sys, {module}; from novarch_batch.pipeline.spec import build_spec; build_spec(count=10, out={str(tmp_path)!r}); "
            "print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_log_gets_a_progress_line_with_the_actor_pool():
    """Without a terminal (the Jobs API's log) progress is a line every LOG_EVERY_S seconds."""
    import io

    from novarch_batch.pipeline.progress import Progress
    from novarch_batch.pipeline.scheduler import PoolStatus

    stream = io.StringIO()
    progress = Progress(enabled=False, log_every_s=0.0, stream=stream)
    progress.start(total=1000, done=100)
    progress.advance(250)
    progress.tick(lambda: PoolStatus(ready=2, starting=1, pending=5))
    line = stream.getvalue().strip()
    assert line.startswith("sampling: 350/1,000 images (35.0%), ")
    assert " images/s, ETA " in line and line.endswith("actors 2 ready / 1 starting / 5 pending")
    quiet = Progress(enabled=False, log_every_s=3600.0, stream=io.StringIO())
    quiet.start(total=10, done=0)
    quiet.tick(lambda: PoolStatus(1, 0, 0))
    assert quiet.stream.getvalue() == ""  # not before log_every_s has passed
