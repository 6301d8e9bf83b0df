"""Progress on a terminal: images done / total, images per second and ETA (tqdm, on stderr)."""
from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar: tqdm | None = None

    def start(self, total: int, done: int) -> None:
        if self.enabled:
            self.bar = tqdm(total=total, initial=done, unit="img", desc="sampling", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def advance(self, images: int) -> None:
        if self.bar is not None:
            self.bar.update(images)

    def note(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
