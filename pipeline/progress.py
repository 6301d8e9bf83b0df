"""Progress of a running job: a tqdm bar on a terminal, a line every ~10 s in a log (the Jobs API).

Both show images done of total, images/s and ETA, plus the actor pool (ready / starting /
pending), which is what a user waits on while a cluster's GPU nodes boot.
"""
from __future__ import annotations

import sys
import time
from typing import Callable

from tqdm import tqdm

LOG_EVERY_S = 10.0  # a log line this often: readable in `jobs logs`, cheap to produce


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    def __init__(self, enabled: bool | None = None, log_every_s: float = LOG_EVERY_S, stream=None):
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty() if enabled is None else enabled
        self.log_every_s = log_every_s
        self.bar: tqdm | None = None
        self.total = self.done = self.done_at_start = 0
        self.started = self.last_line = 0.0
        self.active = False

    def start(self, total: int, done: int) -> None:
        self.total, self.done = total, done
        self.done_at_start = done
        self.started = self.last_line = time.monotonic()
        self.active = True
        if self.terminal:
            self.bar = tqdm(total=total, initial=done, unit="img", desc="sampling", file=self.stream, dynamic_ncols=True, smoothing=0.1)

    def advance(self, images: int) -> None:
        self.done += images
        if self.bar is not None:
            self.bar.update(images)

    def tick(self, pool_status: Callable[[], object]) -> None:
        """Called from the scheduler's loop: refresh the pool on the bar, or print a log line every log_every_s."""
        now = time.monotonic()
        if not self.active or now - self.last_line < self.log_every_s:
            return
        self.last_line = now
        pool = pool_status().text()
        if self.bar is not None:
            self.bar.set_postfix_str(pool, refresh=True)
            return
        elapsed = max(now - self.started, 1e-9)
        rate = (self.done - self.done_at_start) / elapsed
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "unknown"
        print(f"sampling: {self.done:,}/{self.total:,} images ({100 * self.done / max(self.total, 1):.1f}%), "
              f"{rate:.1f} images/s, ETA {eta}; {pool}", file=self.stream, flush=True)

    def note(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        self.active = False
        if self.bar is not None:
            self.bar.close()
            self.bar = None
