"""A concurrency sweep, measured the way perf_analyzer measures.

For each concurrency the engine keeps that many requests outstanding; the step is measured in
windows, and it is done when the last `stable_windows` windows are stable by perf_analyzer's rule
(see `is_stable`), or after `max_windows`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from flowerdemo.core.engine import EngineSettings, InferenceEngine
from flowerdemo.core.events import InferenceEvent
from flowerdemo.core.stats import DEFAULT_PERCENTILE, LatencySummary, ServerSplit


@dataclass(frozen=True)
class SweepSettings:
    concurrencies: tuple[int, ...]
    window_s: float = 2.0
    tolerance: float = 0.10
    """perf_analyzer's s as a fraction: `--stability-percentage 10` is 0.10 (see is_stable)."""
    stable_windows: int = 3
    max_windows: int = 10
    percentile: int = DEFAULT_PERCENTILE
    """The verdict percentile: the latency the stability rule and the budget judge by."""


@dataclass(frozen=True)
class WindowMeasurement:
    images_per_s: float
    requests_per_s: float
    latencies_s: tuple[float, ...]
    failed: int
    server: ServerSplit | None = None
    """The servers' own split of this window's requests, where they were read."""

    @property
    def p90(self) -> float:
        return self.latency_at(90)

    def latency_at(self, percentile: float) -> float:
        if not self.latencies_s:
            return math.nan
        return float(np.percentile(self.latencies_s, percentile, method="inverted_cdf"))


@dataclass(frozen=True)
class SweepStep:
    concurrency: int
    images_per_s: float
    requests_per_s: float
    latency: LatencySummary
    failed: int
    windows: int
    stable: bool


def parse_concurrency_range(text: str) -> tuple[int, ...]:
    """`1:100` (every value), `1:100:4` (step 4), `1,2,4,8` (a list), or one number."""
    spec = text.strip()
    if re.fullmatch(r"\d+(,\d+)*", spec):
        values = tuple(int(v) for v in spec.split(","))
    else:
        match = re.fullmatch(r"(\d+):(\d+)(?::(\d+))?", spec)
        if not match:
            raise ValueError(
                f"'{text}' is not a concurrency range: use START:END[:STEP] or a list like 1,2,4"
            )
        start, end, step = int(match.group(1)), int(match.group(2)), int(match.group(3) or 1)
        if step < 1 or end < start:
            raise ValueError(f"'{text}': END must not be below START, and STEP must be at least 1")
        values = tuple(range(start, end + 1, step))
    if not values or min(values) < 1:
        raise ValueError(f"'{text}': concurrencies must be at least 1")
    return values


def is_stable(
    windows: Sequence[WindowMeasurement],
    count: int,
    tolerance: float,
    percentile: float = DEFAULT_PERCENTILE,
) -> bool:
    """perf_analyzer's stability rule: over the last `count` windows (it uses 3), the largest
    throughput is at most `1 + tolerance` times the smallest, and so is the largest latency at
    `percentile` against the smallest. `tolerance` is perf_analyzer's `--stability-percentage`
    divided by 100 (10 % by default). A window with no answer is never stable."""
    if len(windows) < count:
        return False
    recent = windows[-count:]
    for values in (
        [w.images_per_s for w in recent],
        [w.latency_at(percentile) for w in recent],
    ):
        if any(math.isnan(v) or v <= 0 for v in values):
            return False
        if max(values) > (1 + tolerance) * min(values):
            return False
    return True


class _WindowCollector:
    """Engine sink that keeps the current window's answers."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.images = 0
        self.failed = 0

    def __call__(self, event: InferenceEvent) -> None:
        if event.ok:
            self.latencies.append(event.latency_s)
            self.images += event.batch_size
        else:
            self.failed += 1

    def take(self, duration_s: float) -> WindowMeasurement:
        window = WindowMeasurement(
            self.images / duration_s,
            len(self.latencies) / duration_s,
            tuple(self.latencies),
            self.failed,
        )
        self.latencies, self.images, self.failed = [], 0, 0
        return window


async def run_sweep(
    engine: InferenceEngine,
    settings: SweepSettings,
    on_step: Callable[[SweepStep], None] | None = None,
    on_window: Callable[[int, int, WindowMeasurement], None] | None = None,
) -> list[SweepStep]:
    """Measure every concurrency in turn on one connected engine; returns one step each."""
    collector = _WindowCollector()
    engine.add_sink(collector)
    steps: list[SweepStep] = []
    first, *rest = settings.concurrencies
    automatic = asyncio.ensure_future(engine.run_automatic(first))
    try:
        for concurrency in (first, *rest):
            engine.set_concurrency(concurrency)
            # Let the new concurrency settle for one window before measuring it.
            await asyncio.sleep(settings.window_s / 2)
            collector.take(1.0)
            windows: list[WindowMeasurement] = []
            while len(windows) < settings.max_windows:
                started = time.monotonic()
                await asyncio.sleep(settings.window_s)
                window = collector.take(time.monotonic() - started)
                windows.append(window)
                if on_window is not None:
                    on_window(concurrency, len(windows), window)
                if is_stable(
                    windows, settings.stable_windows, settings.tolerance, settings.percentile
                ):
                    break
            step = step_from_windows(concurrency, windows, settings)
            steps.append(step)
            if on_step is not None:
                on_step(step)
    finally:
        engine.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await automatic
    return steps


def step_from_windows(
    concurrency: int, windows: Sequence[WindowMeasurement], settings: SweepSettings
) -> SweepStep:
    """A step from its windows: the last `stable_windows` give its figures; failures count all."""
    stable = is_stable(windows, settings.stable_windows, settings.tolerance, settings.percentile)
    used = list(windows[-settings.stable_windows :])
    latencies = [latency for window in used for latency in window.latencies_s]
    return SweepStep(
        concurrency=concurrency,
        images_per_s=sum(w.images_per_s for w in used) / len(used),
        requests_per_s=sum(w.requests_per_s for w in used) / len(used),
        latency=LatencySummary.of_samples(latencies),
        failed=sum(w.failed for w in windows),
        windows=len(windows),
        stable=stable,
    )


async def sweep_server(
    settings: EngineSettings, photos: Sequence[Image.Image], sweep: SweepSettings
) -> list[SweepStep]:
    """Connect an engine with `settings`, run the sweep, close it."""
    engine = InferenceEngine(settings, photos)
    await engine.connect()
    try:
        return await run_sweep(engine, sweep)
    finally:
        await engine.close()
