"""Per-request step timings (embed, search, fetch, ...) without threading a timer through
every call: the code that does a step wraps it in :func:`step`, and whoever serves the
request opens :func:`collect` around it and reads the milliseconds afterwards."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_current: ContextVar[dict[str, float] | None] = ContextVar("timings", default=None)


@contextmanager
def collect() -> Iterator[dict[str, float]]:
    """Collect the milliseconds of every step run inside this block (steps add up)."""
    timings: dict[str, float] = {}
    token = _current.set(timings)
    try:
        yield timings
    finally:
        _current.reset(token)


@contextmanager
def step(name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        record(name, (time.perf_counter() - start) * 1000.0)


def record(name: str, milliseconds: float) -> None:
    """Add a measured step to the timings being collected (if any)."""
    timings = _current.get()
    if timings is not None:
        timings[name] = timings.get(name, 0.0) + milliseconds
