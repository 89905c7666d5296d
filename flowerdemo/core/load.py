"""Open-loop load: requests sent on a schedule whatever the answers do (perf_analyzer's
`--request-rate-range`), beside the engine's closed loop (N requests kept outstanding).

A closed loop slows down with the server and so hides how long a user would wait at a given
arrival rate; an open loop keeps arriving. Requests go out at a constant rate or with
exponential gaps (a Poisson process, `poisson=True`). A request that leaves more than
`DELAY_TOLERANCE_S` after its scheduled time (the client could not keep up, or `max_in_flight`
requests were already outstanding) is still sent, at once, and counted as delayed.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator

import numpy as np

from flowerdemo.core.engine import InferenceEngine
from flowerdemo.core.events import InferenceEvent

DELAY_TOLERANCE_S = 0.002
"""Later than this after its schedule, a request counts as delayed (the event loop's timers are
good to about a millisecond)."""
MAX_SLEEP_S = 0.1
"""Sleeps are cut into pieces this long, so stop() is noticed soon at low rates."""


class OpenLoopLoad:
    """Sends one request per scheduled arrival through `engine.classify`, until stop() or the
    duration; then waits for every outstanding answer (each ends within its deadline)."""

    def __init__(
        self,
        engine: InferenceEngine,
        rate: float,
        image_count: int,
        *,
        poisson: bool = False,
        seed: int | None = None,
        max_in_flight: int = 1024,
    ) -> None:
        if image_count < 1:
            raise ValueError("there are no images to send")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self._engine = engine
        self._image_count = image_count
        self._rate = _checked_rate(rate)
        self.poisson = poisson
        self._random = np.random.default_rng(seed)
        self.max_in_flight = max_in_flight
        self._stop = False
        self._tasks: set[asyncio.Future[InferenceEvent]] = set()
        self.sent = 0
        """Requests sent so far."""
        self.delayed = 0
        """Requests sent later than their schedule (see DELAY_TOLERANCE_S)."""

    @property
    def rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float) -> None:
        """Change the arrival rate (requests per second) from the next arrival on."""
        self._rate = _checked_rate(rate)

    def stop(self) -> None:
        """Send nothing more; outstanding requests still finish and count."""
        self._stop = True

    async def run(self, duration_s: float | None = None) -> None:
        """Send until stop() (also when it came before this started) or `duration_s`."""
        batches = self._batches()
        started = time.monotonic()
        end = None if duration_s is None else started + duration_s
        next_at = started
        try:
            while not self._stop:
                if end is not None and next_at >= end:
                    break
                if not await self._sleep_until(next_at):
                    break
                if len(self._tasks) >= self.max_in_flight:
                    await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                    if self._stop:
                        break
                if time.monotonic() - next_at > DELAY_TOLERANCE_S:
                    self.delayed += 1
                task = asyncio.ensure_future(self._engine.classify(next(batches)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                self.sent += 1
                next_at += self._gap()
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _sleep_until(self, when: float) -> bool:
        """False when stopped while waiting."""
        while not self._stop:
            delay = when - time.monotonic()
            if delay <= 0:
                return True
            await asyncio.sleep(min(delay, MAX_SLEEP_S))
        return False

    def _gap(self) -> float:
        if self.poisson:
            return float(self._random.exponential(1.0 / self._rate))
        return 1.0 / self._rate

    def _batches(self) -> Iterator[tuple[int, ...]]:
        engine = self._engine
        size = engine.settings.batch_size if engine.spec.batches else 1
        cycle = itertools.cycle(range(self._image_count))
        while True:
            yield tuple(next(cycle) for _ in range(size))


def _checked_rate(rate: float) -> float:
    if not rate > 0:
        raise ValueError(f"the request rate must be positive, not {rate}")
    return float(rate)
