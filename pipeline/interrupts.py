"""SIGTERM as Ctrl-C: kill, `docker stop`, a scheduler or the Jobs API stopping a job unwind the
driver as Ctrl-C does (the job's lease is released on the way out), and the exit says which came.

Ray-free, so that the command line can tell the two apart wherever the interrupt surfaces.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM reached the driver."""


_received = threading.Event()


def _raise_terminated(signum, frame) -> None:
    if _received.is_set():  # a second SIGTERM while unwinding: let the first finish releasing the lease
        return
    _received.set()
    raise Terminated()


def stop_like_ctrl_c_on_sigterm() -> None:
    """From here on a SIGTERM raises Terminated (only the main thread can set a handler)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """For one job: SIGTERM raises Terminated from the start (Python's default would kill the driver
    with its lease held); the handler before, and a clean slate, come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    stop_like_ctrl_c_on_sigterm()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _received.clear()


def sigterm_received() -> bool:
    """A SIGTERM came, even one whose exception was swallowed (raised inside a finaliser)."""
    return _received.is_set()


def is_sigterm(interrupt: KeyboardInterrupt) -> bool:
    """Whether SIGTERM (not Ctrl-C) stopped the driver. Ray's waits (CoreWorker.wait) replace the
    handler's Terminated with a plain KeyboardInterrupt, so the handler also leaves a mark."""
    return isinstance(interrupt, Terminated) or _received.is_set()
