"""Run shards on a pool of sampler actors: bounded retries, dead actors replaced.

An actor slot is *starting* until its ``ping`` answers, then *ready* for up to ``IN_FLIGHT`` shards.
A replacement that cannot be placed yet (a lost node, an autoscaler still adding one) simply stays
starting while the other actors take the work, so losing a node never deadlocks the job.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Callable

import ray

from novarch_batch.pipeline.shards import Shard
from novarch_batch.workers.tasks import ShardResult, ShardTask

MAX_ATTEMPTS = 3  # per shard: a transient fault gets two more tries; a shard that always fails stops the job
RETRY_DELAY_S = 5.0  # before attempt n+1 wait n * 5 s: a store outage of ~10 s outlasts botocore's own retries
IN_FLIGHT = 2  # shards per actor: the next one waits in the actor while the current one commits
ACTOR_DIED = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


class JobFailed(RuntimeError):
    """The job could not complete; committed shards stay, so the same command resumes it."""


class ShardScheduler:
    def __init__(self, make_actor: Callable[[], object], actors: int, make_task: Callable[[Shard], ShardTask],
                 on_done: Callable[[Shard, ShardResult], None], note: Callable[[str], None]):
        self.make_actor, self.make_task, self.on_done, self.note = make_actor, make_task, on_done, note
        self.actors: list = []
        self.starting: dict[ray.ObjectRef, int] = {}  # ping ref -> slot
        self.running: dict[ray.ObjectRef, tuple[int, Shard, object]] = {}  # run_shard ref -> (slot, shard, actor)
        self.in_flight: dict[int, int] = {}  # ready slot (model loaded) -> shards handed to it and not yet answered
        self.queue: deque[Shard] = deque()
        self.attempts: dict[int, int] = {}
        self.failed_on: dict[int, set[int]] = {}  # shard -> slots it failed on, so a retry goes elsewhere
        self.not_before: dict[int, float] = {}  # shard -> monotonic time its retry may start
        self.retries = self.replaced = 0
        self.errors: list[str] = []
        self.fatal: str | None = None
        self.failed_at: dict[int, float] = {}  # shard -> perf_counter of its first failure
        self.recoveries: list[float] = []  # seconds from a shard's failure to its commit
        self.first_ready: float | None = None  # perf_counter when the first actor had loaded its model
        for _ in range(actors):
            self.actors.append(None)
            self._start(len(self.actors) - 1)

    def _start(self, slot: int) -> None:
        actor = self.make_actor()
        self.actors[slot] = actor
        self.starting[actor.ping.remote()] = slot

    def _replace(self, slot: int) -> None:
        ray.kill(self.actors[slot], no_restart=True)
        self.in_flight.pop(slot, None)
        self.replaced += 1
        self._start(slot)

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
                self.in_flight[slot] += 1
                actor = self.actors[slot]
                self.running[actor.run_shard.remote(self.make_task(pick))] = (slot, pick, actor)

    def run(self, shards: list[Shard]) -> None:
        """Sample every shard or raise JobFailed; the actors are killed on the way out."""
        self.queue.extend(shards)
        try:
            while self.running or self.queue:
                waiting = list(self.running) + list(self.starting)
                done, _ = ray.wait(waiting, num_returns=1, timeout=0.5)
                for ref in done:
                    if ref in self.starting:
                        self._started(ref)
                    else:
                        self._finished(ref)
                self._dispatch()
        finally:
            for actor in self.actors:  # also on Ctrl-C: uncommitted shards are sampled again next run
                ray.kill(actor, no_restart=True)
        if self.fatal:
            raise JobFailed(f"{self.fatal}; gave up after {MAX_ATTEMPTS} attempts. Committed shards are kept: "
                            f"fix the cause and re-run the same command to resume")

    def _started(self, ref) -> None:
        slot = self.starting.pop(ref)
        try:
            ray.get(ref)
            self.in_flight[slot] = 0
            self.first_ready = self.first_ready or time.perf_counter()
        except ACTOR_DIED:
            self._replace(slot)  # died while loading (its node went away): try again elsewhere

    def _finished(self, ref) -> None:
        slot, shard, actor = self.running.pop(ref)
        actor_died = False
        try:
            result: ShardResult = ray.get(ref)
        except ACTOR_DIED as e:
            result = ShardResult(shard.index, False, error=f"actor died: {type(e).__name__}")
            actor_died = True
            if self.actors[slot] is actor:  # the first of its shards to report the death replaces it
                self._replace(slot)
        else:
            if self.actors[slot] is actor:  # a late answer from a replaced actor frees nothing
                self.in_flight[slot] -= 1
        if result.ok:
            if shard.index in self.failed_at:
                self.recoveries.append(round(time.perf_counter() - self.failed_at.pop(shard.index), 2))
            self.on_done(shard, result)
            return
        self.failed_at.setdefault(shard.index, time.perf_counter())
        self.failed_on.setdefault(shard.index, set()).add(slot)
        message = f"shard {shard.index} (ids {shard.start}-{shard.stop - 1}) attempt {self.attempts[shard.index]}/{MAX_ATTEMPTS} failed: {result.error}"
        self.errors.append(message)
        if self.attempts[shard.index] >= MAX_ATTEMPTS:
            self.fatal = self.fatal or message
            self.queue.clear()  # let the shards in flight finish and commit, start no more
        else:
            self.note(f"retrying {message}")
            self.retries += 1
            if not actor_died:  # a dead actor says nothing about the shard: retry at once on a live one
                self.not_before[shard.index] = time.monotonic() + RETRY_DELAY_S * self.attempts[shard.index]
            self.queue.appendleft(shard)
