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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from flowerdemo.core.engine import EngineSettings, InferenceEngine
from flowerdemo.core.events import InferenceEvent
from flowerdemo.core.load import OpenLoopLoad
from flowerdemo.core.server_stats import ServerStatsReader
from flowerdemo.core.stats import DEFAULT_PERCENTILE, LatencySummary, ServerSplit

MAX_STEPS = 1000
"""More steps than this in one range is a typing mistake, not a plan."""


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
    request_rates: tuple[float, ...] = ()
    """Open loop: measure these arrival rates (requests per second) instead of concurrencies."""
    poisson: bool = False
    """Open loop with exponential gaps between arrivals instead of a constant rate."""
    budget_s: float = math.nan
    """The latency budget each step's goodput is counted against."""

    @property
    def levels(self) -> tuple[float, ...]:
        """What the steps measure: the request rates when given, else the concurrencies."""
        return self.request_rates or tuple(float(c) for c in self.concurrencies)


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
    """Requests kept outstanding; 0 for an open-loop step (see request_rate)."""
    images_per_s: float
    requests_per_s: float
    latency: LatencySummary
    failed: int
    windows: int
    stable: bool
    request_rate: float | None = None
    """The arrival rate asked for (requests per second) in an open-loop step."""
    delayed: int = 0
    """Open-loop requests that went out later than their schedule during the step."""
    server: ServerSplit | None = None
    """The servers' own split of the step's requests, where they were read."""
    verdict_s: float = math.nan
    """The step's latency at the sweep's verdict percentile."""
    goodput: float = math.nan
    """The share of the step's answers within the sweep's budget (NaN without a budget)."""


MAX_SWEEP_CONCURRENCY = 1024
"""The largest concurrency a sweep step may ask for (the client's own limit)."""


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
        # Checked before the steps are listed: 1:100000000 must not build a huge tuple first.
        _check_concurrency_bounds(text, start, end, (end - start) // step + 1)
        values = tuple(range(start, end + 1, step))
    if not values or min(values) < 1:
        raise ValueError(f"'{text}': concurrencies must be at least 1")
    _check_concurrency_bounds(text, min(values), max(values), len(values))
    return values


def parse_rate_range(text: str) -> tuple[float, ...]:
    """Request rates per second: `10:50:10` (START:END:STEP), `10,20,40` (a list), or one rate."""
    spec = text.strip()
    try:
        if ":" in spec:
            parts = [float(p) for p in spec.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            start, end = parts[0], parts[1]
            step = parts[2] if len(parts) == 3 else end - start or 1.0
            if step <= 0 or end < start:
                raise ValueError
            count = math.floor((end - start) / step + 1e-9) + 1
            if count > MAX_STEPS:
                raise ValueError
            values = tuple(round(start + k * step, 6) for k in range(count))
        else:
            values = tuple(float(v) for v in spec.split(","))
    except ValueError:
        raise ValueError(
            f"'{text}' is not a request-rate range: use START:END[:STEP] or a list like 10,20,40 "
            f"(requests per second, END not below START, STEP above 0, at most {MAX_STEPS} steps)"
        ) from None
    if not values or min(values) <= 0 or any(math.isnan(v) or math.isinf(v) for v in values):
        raise ValueError(f"'{text}': request rates must be positive numbers")
    return values


def _check_concurrency_bounds(text: str, low: int, high: int, steps: int) -> None:
    if high > MAX_SWEEP_CONCURRENCY:
        raise ValueError(
            f"'{text}': concurrency {high:,} is beyond what one client keeps outstanding; "
            f"use values from 1 to {MAX_SWEEP_CONCURRENCY}"
        )
    if steps > MAX_STEPS:
        raise ValueError(
            f"'{text}' makes {steps:,} steps; at most {MAX_STEPS} are allowed "
            "(use a STEP, e.g. 1:1024:32, or a list like 1,2,4,8)"
        )


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


class StepMeasurer:
    """Keeps one load running on a connected engine and measures it at any level asked for:
    a concurrency (closed loop), or a request rate when `settings.request_rates` is set (open
    loop). Use as `async with StepMeasurer(...) as measure: step = await measure(level)`."""

    def __init__(
        self,
        engine: InferenceEngine,
        settings: SweepSettings,
        *,
        server_reader: ServerStatsReader | None = None,
        image_count: int | None = None,
        on_window: Callable[[float, int, WindowMeasurement], None] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.server_reader = server_reader
        self.on_window = on_window
        self._collector = _WindowCollector()
        self._open_loop: OpenLoopLoad | None = None
        self._driver: asyncio.Future[None] | None = None
        if settings.request_rates:
            if image_count is None:
                raise ValueError("an open-loop sweep needs the number of photos (image_count)")
            self._open_loop = OpenLoopLoad(
                engine, settings.request_rates[0], image_count, poisson=settings.poisson
            )

    async def __aenter__(self) -> StepMeasurer:
        self.engine.add_sink(self._collector)
        if self._open_loop is not None:
            self._driver = asyncio.ensure_future(self._open_loop.run())
        else:
            first = self.settings.concurrencies[0] if self.settings.concurrencies else 1
            self._driver = asyncio.ensure_future(self.engine.run_automatic(first))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._open_loop is not None:
            self._open_loop.stop()
        self.engine.stop()
        if self._driver is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver

    async def __call__(self, level: float) -> SweepStep:
        settings = self.settings
        open_loop = self._open_loop
        if open_loop is not None:
            open_loop.set_rate(level)
        else:
            self.engine.set_concurrency(int(level))
        # Let the new level settle for half a window before measuring it.
        await asyncio.sleep(settings.window_s / 2)
        self._collector.take(1.0)
        delayed_before = open_loop.delayed if open_loop is not None else 0
        reader = self.server_reader
        before = await reader.read() if reader is not None else None
        windows: list[WindowMeasurement] = []
        while len(windows) < settings.max_windows:
            started = time.monotonic()
            await asyncio.sleep(settings.window_s)
            window = self._collector.take(time.monotonic() - started)
            if reader is not None and before is not None:
                after = await reader.read()
                window = replace(window, server=ServerSplit.between(before, after))
                before = after
            windows.append(window)
            if self.on_window is not None:
                self.on_window(level, len(windows), window)
            if is_stable(windows, settings.stable_windows, settings.tolerance, settings.percentile):
                break
        if open_loop is not None:
            return step_from_windows(
                0,
                windows,
                settings,
                request_rate=level,
                delayed=open_loop.delayed - delayed_before,
            )
        return step_from_windows(int(level), windows, settings)


async def run_sweep(
    engine: InferenceEngine,
    settings: SweepSettings,
    on_step: Callable[[SweepStep], None] | None = None,
    on_window: Callable[[float, int, WindowMeasurement], None] | None = None,
    *,
    server_reader: ServerStatsReader | None = None,
    image_count: int | None = None,
) -> list[SweepStep]:
    """Measure every level in turn on one connected engine (each concurrency, or each request
    rate when `settings.request_rates` is set); returns one step each. With `server_reader`,
    each window also carries the servers' own split of its requests."""
    steps: list[SweepStep] = []
    async with StepMeasurer(
        engine,
        settings,
        server_reader=server_reader,
        image_count=image_count,
        on_window=on_window,
    ) as measure:
        for level in settings.levels:
            step = await measure(level)
            steps.append(step)
            if on_step is not None:
                on_step(step)
    return steps


def step_from_windows(
    concurrency: int,
    windows: Sequence[WindowMeasurement],
    settings: SweepSettings,
    *,
    request_rate: float | None = None,
    delayed: int = 0,
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
        request_rate=request_rate,
        delayed=delayed,
        server=ServerSplit.combine([w.server for w in used if w.server is not None]),
        verdict_s=_percentile(latencies, settings.percentile),
        goodput=(
            sum(1 for latency in latencies if latency <= settings.budget_s) / len(latencies)
            if latencies and not math.isnan(settings.budget_s)
            else math.nan
        ),
    )


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    return float(np.percentile(values, q, method="inverted_cdf"))


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


@dataclass(frozen=True)
class BudgetSearch:
    """What `find_budget` found: the best step within the budget (None: not even the first)."""

    best: SweepStep | None
    steps: tuple[SweepStep, ...]
    """Every step measured, in the order measured."""
    limit_reached: bool
    """The search stopped at its highest concurrency still within the budget."""


def fits_budget(step: SweepStep, budget_s: float) -> bool:
    """Within the budget: every request answered and the verdict-percentile latency at most it."""
    return step.failed == 0 and not math.isnan(step.verdict_s) and step.verdict_s <= budget_s


async def find_budget(
    measure: Callable[[float], Awaitable[SweepStep]],
    budget_s: float,
    *,
    start: int = 1,
    limit: int = 1024,
    on_step: Callable[[SweepStep], None] | None = None,
) -> BudgetSearch:
    """The highest concurrency whose verdict-percentile latency stays within the budget (the
    seed's Figure 6 question): double from `start` until a step is over (or `limit`), then bisect
    between the last step within and the first over until they are neighbours."""
    steps: list[SweepStep] = []

    async def probe(concurrency: int) -> bool:
        step = await measure(concurrency)
        steps.append(step)
        if on_step is not None:
            on_step(step)
        return fits_budget(step, budget_s)

    good: int | None = None
    bad: int | None = None
    concurrency = max(1, start)
    while True:
        if await probe(concurrency):
            good = concurrency
            if concurrency >= limit:
                break
            concurrency = min(concurrency * 2, limit)
        else:
            bad = concurrency
            break
    if good is not None and bad is not None:
        while bad - good > 1:
            middle = (good + bad) // 2
            if await probe(middle):
                good = middle
            else:
                bad = middle
    best = None
    if good is not None:
        best = max(
            (s for s in steps if s.concurrency == good and fits_budget(s, budget_s)),
            key=lambda s: s.images_per_s,
        )
    return BudgetSearch(best, tuple(steps), limit_reached=bad is None and good is not None)
