"""Progress lines for long stages: done and total, the rate of this run, and the ETA.

    embed: 12/56 shards, 1,200,000/5,555,583 passages, 2,512 passages/s, ETA 0:28:53

Shards finished by an earlier run count as done but not toward the rate. Where the total
is not known in advance (a dump being read), the ETA comes from the fraction read. A run
may be limited to a number of shards per stage (``--limit-shards``: a sample build, or a
test of resuming).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

logger = logging.getLogger("pipeline.build")


class StoppedEarly(Exception):
    """The run computed as many shards as it was limited to; the stage is not finished."""


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class Progress:
    def __init__(
        self,
        stage: str,
        shards: int | None,
        units: str,
        total_units: int | None = None,
        limit: int | None = None,
        every_s: float = 10.0,
        pieces: str = "shards",
    ) -> None:
        self.stage, self.shards, self.units, self.total_units = stage, shards, units, total_units
        self.limit, self.every_s, self.pieces = limit, every_s, pieces
        self.shards_done = self.units_done = 0
        self.computed_shards = self.computed_units = 0
        self.started = self.last_report = time.perf_counter()

    def skip(self, shards: int, units: int) -> None:
        """Shards an earlier run finished."""
        self.shards_done += shards
        self.units_done += units

    def advance(self, units: int, fraction: float | None = None) -> None:
        """One shard computed now; ``fraction`` of the whole input read, when the total is
        unknown. Raises :class:`StoppedEarly` once ``limit`` shards are computed."""
        self.shards_done += 1
        self.units_done += units
        self.computed_shards += 1
        self.computed_units += units
        now = time.perf_counter()
        if now - self.last_report >= self.every_s:
            self.last_report = now
            logger.info("%s", self.line(fraction))
        if self.limit is not None and self.computed_shards >= self.limit:
            logger.info("%s; stopping after %d %s as asked", self.line(fraction), self.limit, self.pieces)
            raise StoppedEarly(self.stage)

    def rate(self) -> float:
        return self.computed_units / max(time.perf_counter() - self.started, 1e-9)

    def line(self, fraction: float | None = None) -> str:
        elapsed = time.perf_counter() - self.started
        rate = self.rate()
        shards = f"{self.shards_done}/{self.shards}" if self.shards is not None else f"{self.shards_done}"
        units = f"{self.units_done:,}/{self.total_units:,}" if self.total_units else f"{self.units_done:,}"
        if self.total_units:
            eta = (self.total_units - self.units_done) / rate if rate else 0.0
        elif fraction:
            eta = elapsed * (1 - fraction) / fraction
            units += f" ({fraction:.0%} of the input read)"
        else:
            eta = 0.0
        rate_text = f"{rate:,.0f} {self.units}/s"
        return f"{self.stage}: {shards} {self.pieces}, {units} {self.units}, {rate_text}, ETA {_duration(eta)}"

    def finish(self) -> dict:
        logger.info("%s (done in %s)", self.line(1.0), _duration(time.perf_counter() - self.started))
        return {
            "seconds": round(time.perf_counter() - self.started, 1),
            "shards_computed": self.computed_shards,
            "shards_reused": self.shards_done - self.computed_shards,
            f"{self.units}_per_s": round(self.rate(), 1),
        }
