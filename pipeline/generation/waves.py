"""Questions prepared together go to the engine together.

On a GPU host the product's retrieval (E5, the vector scan) and the local vLLM engine
share one card, and two processes share a card in time slices (docs/llm.md). When many
questions arrived at once, the first ones prepared reached the engine while the others
were still being retrieved: the engine began to prefill, and from then on the remaining
retrieval and the prefill each had part of the card. On an H200 at 32 users, E5 and the
scan took 75 and 72 ms p50 (about 4 ms each for one question), and the engine's time to
the first token as the product saw it was 529 ms against 389 ms for vLLM alone given the
32 prompts at once (docs/benchmarks.md).

So a prepared request waits, at most ``llm.wait_for_retrieval_ms``, for the preparations
that began before it was ready: a burst's retrieval runs on a card the engine is not yet
using, and its prompts reach the engine together, as vLLM alone gets them. Preparations
that begin later do not lengthen the wait, so under a steady stream of questions a
request waits at most for the retrievals already running when it was ready.

It is off by default (0). On an H100 (FP8, one round per level, arrivals spread by the
load generator over a few hundred milliseconds) a 100 ms wait took the product's TTFT p50
at 64 users from 1,156 to 907 ms, but at 32 from 537 to 843 ms: the held requests reached
the engine together and got their first tokens together, late (docs/benchmarks.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Ticket:
    """One preparation: its number, and once it is done, how many had begun by then."""

    number: int
    begun_by_the_end: int | None = None


class PreparationWaves:
    """The preparations running in this process, for requests to wait on (thread-safe)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._running: set[int] = set()
        self._begun = 0

    @contextmanager
    def preparing(self) -> Iterator[Ticket]:
        """Counts the block as a preparation until it ends, however it ends."""
        with self._changed:
            ticket = Ticket(self._begun)
            self._begun += 1
            self._running.add(ticket.number)
        try:
            yield ticket
        finally:
            with self._changed:
                self._running.discard(ticket.number)
                ticket.begun_by_the_end = self._begun
                self._changed.notify_all()

    def wait_for_earlier(self, ticket: Ticket, limit_s: float) -> float:
        """Waits until every preparation begun before ``ticket``'s ended has ended too, or
        ``limit_s`` has passed; returns the seconds waited."""
        started = time.perf_counter()
        horizon = ticket.begun_by_the_end
        if horizon is None or limit_s <= 0:
            return 0.0
        with self._changed:
            self._changed.wait_for(lambda: not any(number < horizon for number in self._running), timeout=limit_s)
        return time.perf_counter() - started
