"""Run shards on an elastic pool of sampler actors: bounded retries, lost actors replaced.

An actor slot is *pending* until Ray places it (a GPU node may still be booting), *starting*
while it loads the model, then *ready* for up to ``IN_FLIGHT`` shards. Every actor that becomes
ready joins the running job at once, so a job starts on its first GPU and grows as the
autoscaler adds nodes. Losing an actor (a node gone, a spot preemption) puts only its in-flight
shards back at the front of the queue and is not a shard attempt; only a shard's own error is.
Nothing waits forever: an actor whose start-up fails is replaced a bounded number of times, a
pool with no ready actor fails the job once ``placement_timeout`` has passed, and an actor that
has not answered for HANG_FACTOR times the job's median shard (and at least ``hang_floor``) is
taken for hung: its shards count a failed attempt each and it is replaced.
"""
from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import ray

from novarch_batch.pipeline.shards import Shard
from novarch_batch.pipeline.spec import RETRY_DELAY_S
from novarch_batch.workers.tasks import ShardResult, ShardTask

MAX_ATTEMPTS = 3  # per shard: a transient fault gets two more tries; a shard that always fails stops the job
MAX_STARTUP_FAILURES = 3  # actors whose own start-up raised (CUDA mismatch, bad model): then the job fails with that error
IN_FLIGHT = 2  # shards per actor: the next one waits in the actor while the current one commits
# Failed shards in a row on one actor after which it is replaced: a fault that sticks to its process (a
# broken encoder pool, a CUDA error) would otherwise fail every shard it is given, and a one-GPU job with it.
# Storage errors do not count: the store is every actor's, and a new actor would only cost a model load.
MAX_FAILURES_IN_A_ROW = 2
HANG_FACTOR = 10  # an actor silent this many median shard times (and at least hang_floor seconds) is hung
HANG_FLOOR_S = 600.0
ACTOR_DIED = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


class JobFailed(RuntimeError):
    """The job could not complete; committed shards stay, so the same command resumes it."""


@dataclass(frozen=True)
class PoolStatus:
    ready: int
    starting: int  # placed on a node, loading the model
    pending: int  # not placed yet: waiting for a node with the resources

    def text(self) -> str:
        return f"actors {self.ready} ready / {self.starting} starting / {self.pending} pending"


def first_line_of_cause(error: BaseException) -> str:
    """'ValueError: boom' out of Ray's multi-line actor-death message (its last non-blank line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.strip().startswith("^")]
    return lines[-1] if lines else type(error).__name__


class ShardScheduler:
    def __init__(self, make_actor: Callable[[], object], actors: int, make_task: Callable[[Shard], ShardTask],
                 on_done: Callable[[Shard, ShardResult], None], note: Callable[[str], None],
                 placement_timeout: float = 600.0, describe_unplaced: Callable[[], str] = lambda: "no actor could be placed",
                 on_event: Callable[[str, int], None] = lambda counter, n: None,  # counter: a pipeline.metrics name
                 on_tick: Callable[["ShardScheduler"], None] = lambda scheduler: None, retry_delay: float = RETRY_DELAY_S,
                 may_dispatch: Callable[[], bool] = lambda: True, hang_floor: float = HANG_FLOOR_S):
        # on_tick runs after every wait (at most 0.5 s apart); an exception from it stops the job, its actors
        # killed. While may_dispatch() is False no shard is handed out (the driver's lease is unconfirmed).
        self.make_actor, self.make_task, self.on_done, self.note = make_actor, make_task, on_done, note
        self.may_dispatch, self.hang_floor = may_dispatch, hang_floor
        self.busy_since: dict[int, float] = {}  # ready slot with shards in flight -> its last answer (or first shard)
        self.shard_seconds: deque[float] = deque(maxlen=200)  # the latest answers' spacing: a shard's time on its actor
        self.retry_delay = retry_delay
        self.placement_timeout, self.describe_unplaced, self.on_event, self.on_tick = placement_timeout, describe_unplaced, on_event, on_tick
        self.actors: list = []
        self.starting: dict[ray.ObjectRef, int] = {}  # ping ref -> slot
        self.running: dict[ray.ObjectRef, tuple[int, Shard, object]] = {}  # run_shard ref -> (slot, shard, actor)
        self.in_flight: dict[int, int] = {}  # ready slot (model loaded) -> shards handed to it and not yet answered
        self.queue: deque[Shard] = deque()
        self.attempts: dict[int, int] = {}  # shard -> attempts that ended in the shard's own error, or are running
        self.failed_on: dict[int, set[int]] = {}  # shard -> slots it failed on, so a retry goes elsewhere
        self.failures_in_a_row: dict[int, int] = {}  # slot -> its current actor's failed shards since its last success
        self.retired: set = set()  # actors this scheduler killed: their shards in flight come back as no preemption
        self.not_before: dict[int, float] = {}  # shard -> monotonic time its retry may start
        self.retries = self.replaced = self.preemptions = self.startup_failures = 0
        self.errors: list[str] = []
        self.fatal: str | None = None
        self.failed_at: dict[int, float] = {}  # shard -> perf_counter of its first failure
        self.recoveries: list[float] = []  # seconds from a shard's failure to its commit
        self.first_ready: float | None = None  # perf_counter when the first actor had loaded its model
        self.ready_times: list[float] = []  # perf_counter of each actor's readiness, replacements included
        self.unserved_since = time.monotonic()  # since when no actor has been ready (None while one is)
        for _ in range(actors):
            self.actors.append(None)
            self._start(len(self.actors) - 1)

    def _start(self, slot: int) -> None:
        actor = self.make_actor()
        self.actors[slot] = actor
        self.starting[actor.ping.remote()] = slot

    def _retire(self, slot: int) -> None:
        """Kill and replace an actor that is alive but no use (its fault sticks, or it hangs): its shards that
        come back with its death are no preemption."""
        self.retired.add(self.actors[slot])
        self._replace(slot)

    def _replace(self, slot: int) -> None:
        ray.kill(self.actors[slot], no_restart=True)
        self.in_flight.pop(slot, None)
        self.failures_in_a_row.pop(slot, None)
        self.busy_since.pop(slot, None)
        self.replaced += 1
        self._start(slot)

    def pool_status(self) -> PoolStatus:
        """Ready, starting and pending actors; asks Ray's control store about the slots not ready yet."""
        from ray._private.state import state  # the GCS actor table: no dashboard needed (the driver runs without one)

        starting = pending = 0
        for slot in self.starting.values():
            try:
                placed = state.actor_table(self.actors[slot]._actor_id.hex()).get("Pid", 0) > 0
            except Exception:  # a private API: if it changes, count the actor as starting rather than fail the job
                placed = True
            starting, pending = starting + placed, pending + (not placed)
        return PoolStatus(len(self.in_flight), starting, pending)

    def _next_shard(self, slot: int) -> Shard | None:
        """The first due shard that has not failed on this slot, else the first due one.

        Scans from the front and stops at the first fresh shard (due, and failed nowhere): only
        the retries waiting at the front are passed over, never a 100,000-shard queue whole.
        """
        now, fallback = time.monotonic(), None
        for s in self.queue:
            if self.not_before.get(s.index, 0) > now:
                continue
            if slot not in self.failed_on.get(s.index, ()):
                return s
            fallback = fallback or s
        return fallback

    def _dispatch(self) -> None:
        """Fill idle actors first, then give each a second shard to start on as soon as its current one
        is sampled; only while the queue outnumbers the actors, so no shard waits behind another
        at the end of the job while an actor idles."""
        for depth in range(1, IN_FLIGHT + 1):
            for slot in list(self.in_flight):
                if self.in_flight[slot] >= depth or (depth > 1 and len(self.queue) <= len(self.in_flight)):
                    continue
                pick = self._next_shard(slot)
                if pick is None:
                    return
                self.queue.remove(pick)
                self.attempts[pick.index] = self.attempts.get(pick.index, 0) + 1
                if self.in_flight[slot] == 0:
                    self.busy_since[slot] = time.monotonic()
                self.in_flight[slot] += 1
                actor = self.actors[slot]
                self.running[actor.run_shard.remote(self.make_task(pick))] = (slot, pick, actor)

    def run(self, shards: list[Shard]) -> None:
        """Sample every shard or raise JobFailed; the actors are killed on the way out."""
        self.queue.extend(shards)
        try:
            while (self.running or self.queue) and not (self.fatal and not self.running):
                waiting = list(self.running) + list(self.starting)
                done, _ = ray.wait(waiting, num_returns=1, timeout=0.5)
                for ref in done:
                    if ref in self.starting:
                        self._started(ref)
                    else:
                        self._finished(ref)
                self._check_placement()
                self._check_hangs()
                if not self.fatal and self.may_dispatch():
                    self._dispatch()
                self.on_tick(self)
        finally:
            for actor in self.actors:  # also on Ctrl-C: uncommitted shards are sampled again next run
                ray.kill(actor, no_restart=True)
        if self.fatal:
            raise JobFailed(f"{self.fatal}. Committed shards are kept: fix the cause and re-run the same command to resume")

    def _check_placement(self) -> None:
        """A job with work left and no ready actor for placement_timeout fails instead of waiting forever."""
        if self.in_flight or self.running or not self.queue:
            self.unserved_since = None
            return
        now = time.monotonic()
        self.unserved_since = self.unserved_since or now
        if now - self.unserved_since > self.placement_timeout and not self.fatal:
            self.fatal = f"no sampler actor became ready within {self.placement_timeout:g} s ({self.describe_unplaced()})"
            self.queue.clear()

    def _check_hangs(self) -> None:
        """An actor with shards in flight and no answer for HANG_FACTOR median shard times is hung (a stuck
        encoder child, a hung mount, a wedged GPU): each of its shards counts a failed attempt, and a new
        actor takes its place. No median yet (no shard answered), no deadline: the first shards set the pace."""
        if not self.shard_seconds or self.fatal:
            return
        limit = max(self.hang_floor, HANG_FACTOR * statistics.median(self.shard_seconds))
        now = time.monotonic()
        for slot, since in list(self.busy_since.items()):
            if self.in_flight.get(slot, 0) == 0 or now - since <= limit:
                continue
            actor = self.actors[slot]
            stuck = [ref for ref, (s, _, a) in self.running.items() if s == slot and a is actor]
            self._retire(slot)
            for ref in stuck:
                _, shard, _ = self.running.pop(ref)
                self._shard_failed(slot, shard, f"its actor had not answered in {now - since:.0f} s ({HANG_FACTOR}x the median "
                                                f"shard, at least {self.hang_floor:g} s) and was replaced")

    def _started(self, ref) -> None:
        slot = self.starting.pop(ref)
        try:
            ray.get(ref)
        except ACTOR_DIED as e:
            if getattr(e, "actor_init_failed", False):
                self._startup_failed(slot, first_line_of_cause(e))
            else:
                self._preempted()  # its node went away while it loaded: try again elsewhere
                self._replace(slot)
            return
        self.in_flight[slot] = 0
        self.busy_since.pop(slot, None)
        self.ready_times.append(time.perf_counter())
        self.first_ready = self.first_ready or self.ready_times[-1]

    def _preempted(self) -> None:
        self.preemptions += 1
        self.on_event("preemptions_total", 1)

    def _startup_failed(self, slot: int, error: str) -> None:
        self.startup_failures += 1
        message = f"a sampler actor failed to start ({self.startup_failures}/{MAX_STARTUP_FAILURES}): {error}"
        self.errors.append(message)
        self.note(message)
        if self.startup_failures >= MAX_STARTUP_FAILURES:
            self.fatal = self.fatal or f"sampler actors failed to start {MAX_STARTUP_FAILURES} times; the last said: {error}"
            self.queue.clear()
        else:
            self._replace(slot)

    def _finished(self, ref) -> None:
        slot, shard, actor = self.running.pop(ref)
        try:
            result: ShardResult = ray.get(ref)
        except ACTOR_DIED as e:
            self._lost(slot, shard, actor, e)
            return
        current = self.actors[slot] is actor  # a late answer from a replaced actor frees nothing
        if current:
            self.in_flight[slot] -= 1
            now = time.monotonic()
            self.shard_seconds.append(now - self.busy_since.get(slot, now))
            self.busy_since[slot] = now
        if result.ok:
            if current:
                self.failures_in_a_row.pop(slot, None)
            if shard.index in self.failed_at:
                self.recoveries.append(round(time.perf_counter() - self.failed_at.pop(shard.index), 2))
            self.on_done(shard, result)
            return
        self._shard_failed(slot, shard, result.error)
        if current and not self.fatal and not result.store_fault:  # a store outage is every actor's: no new one helps
            self.failures_in_a_row[slot] = self.failures_in_a_row.get(slot, 0) + 1
            if self.failures_in_a_row[slot] >= MAX_FAILURES_IN_A_ROW:
                message = (f"the actor of slot {slot} failed {MAX_FAILURES_IN_A_ROW} shards in a row ({result.worker}); "
                           f"replaced, in case the fault is its own")
                self.errors.append(message)
                self.note(message)
                self._retire(slot)

    def _lost(self, slot: int, shard: Shard, actor, error: BaseException) -> None:
        """The actor died under the shard (node lost, spot preemption): not the shard's fault, so the
        attempt is handed back and the shard goes first in the queue, for the next ready actor. An actor
        this scheduler retired itself was no preemption."""
        self.attempts[shard.index] -= 1
        if actor not in self.retired:
            self._preempted()
        self.failed_at.setdefault(shard.index, time.perf_counter())
        message = (f"shard {shard.index} (ids {shard.start}-{shard.stop - 1}) lost with its actor "
                   f"({type(error).__name__}); queued again, not counted as an attempt")
        self.errors.append(message)
        self.note(message)
        if self.actors[slot] is actor:  # the first of its shards to report the death replaces it
            self._replace(slot)
        if not self.fatal:
            self.queue.appendleft(shard)

    def _shard_failed(self, slot: int, shard: Shard, error: str | None) -> None:
        self.failed_at.setdefault(shard.index, time.perf_counter())
        self.failed_on.setdefault(shard.index, set()).add(slot)
        message = f"shard {shard.index} (ids {shard.start}-{shard.stop - 1}) attempt {self.attempts[shard.index]}/{MAX_ATTEMPTS} failed: {error}"
        self.errors.append(message)
        if self.attempts[shard.index] >= MAX_ATTEMPTS:
            self.fatal = self.fatal or f"{message}; gave up after {MAX_ATTEMPTS} attempts"
            self.queue.clear()  # let the shards in flight finish and commit, start no more
        else:
            self.note(f"retrying {message}")
            self.retries += 1
            self.on_event("shard_retries_total", 1)
            self.not_before[shard.index] = time.monotonic() + self.retry_delay * self.attempts[shard.index]
            self.queue.appendleft(shard)
