"""The sweep's stability rule (perf_analyzer's) on synthetic windows; the budget search on
synthetic steps."""

from __future__ import annotations

import asyncio

import pytest

from flowerdemo.core.stats import LatencySummary
from flowerdemo.core.sweep import (
    SweepSettings,
    SweepStep,
    WindowMeasurement,
    find_budget,
    fits_budget,
    is_stable,
    parse_rate_range,
    step_from_windows,
)


def window(images_per_s: float, latency_s: float, answers: int = 20) -> WindowMeasurement:
    return WindowMeasurement(images_per_s, images_per_s, (latency_s,) * answers, 0)


def test_max_over_min_within_one_plus_s_is_stable():
    # Throughput 100 and 110: max/min = 1.10, exactly the 10 % allowed.
    windows = [window(100.0, 0.020), window(110.0, 0.021), window(105.0, 0.022)]
    assert is_stable(windows, 3, 0.10)


def test_spread_beyond_the_tolerance_is_not_stable_though_each_is_near_the_mean():
    # 100 and 111 are each within 10 % of their mean (105.5), but 111/100 = 1.11 > 1.10:
    # the old within-the-mean rule accepted this, perf_analyzer's does not.
    windows = [window(100.0, 0.020), window(111.0, 0.020), window(105.0, 0.020)]
    assert not is_stable(windows, 3, 0.10)
    assert is_stable(windows, 3, 0.12)


def test_latency_is_judged_at_the_verdict_percentile():
    fast = (0.010,) * 18
    steady = WindowMeasurement(100.0, 100.0, (*fast, 0.010, 0.010), 0)
    tail = WindowMeasurement(100.0, 100.0, (*fast, 0.050, 0.050), 0)  # p95 jumps, p90 not
    windows = [steady, tail, steady]
    assert is_stable(windows, 3, 0.10, percentile=90)
    assert not is_stable(windows, 3, 0.10, percentile=95)


def test_only_the_last_windows_count_and_an_empty_one_is_never_stable():
    windows = [window(10.0, 1.0), window(100.0, 0.020), window(101.0, 0.020), window(100.0, 0.020)]
    assert is_stable(windows, 3, 0.10)
    assert not is_stable(windows[:2], 3, 0.10)  # fewer windows than the rule needs
    empty = WindowMeasurement(0.0, 0.0, (), 0)
    assert not is_stable([window(100.0, 0.02), window(100.0, 0.02), empty], 3, 0.10)


def test_a_step_takes_its_figures_from_the_stable_windows():
    settings = SweepSettings((1,), tolerance=0.10, percentile=90)
    windows = [window(50.0, 0.5), window(100.0, 0.010), window(100.0, 0.010), window(100.0, 0.010)]
    step = step_from_windows(1, windows, settings)
    assert step.stable and step.windows == 4
    assert step.images_per_s == pytest.approx(100.0) and step.latency.p90 == pytest.approx(0.010)


def synthetic_step(concurrency: int, latency_s: float, failed: int = 0) -> SweepStep:
    latency = LatencySummary(100, latency_s, latency_s, latency_s, latency_s, latency_s)
    return SweepStep(
        concurrency,
        concurrency / latency_s,
        concurrency / latency_s,
        latency,
        failed,
        3,
        True,
        verdict_s=latency_s,
    )


def test_find_budget_doubles_then_bisects_to_the_highest_concurrency_within():
    measured: list[int] = []

    async def measure(level: float) -> SweepStep:
        concurrency = int(level)
        measured.append(concurrency)
        # A saturated server: 49 ms at 24 outstanding, 51 ms at 25.
        return synthetic_step(concurrency, 0.001 + 0.002 * concurrency)

    search = asyncio.run(find_budget(measure, 0.050))
    assert measured[:6] == [1, 2, 4, 8, 16, 32]
    assert measured[6:] == [24, 28, 26, 25]
    assert search.best is not None and search.best.concurrency == 24
    assert fits_budget(search.best, 0.050)
    assert len(measured) == len(set(measured)), "no concurrency measured twice"
    assert not search.limit_reached


def test_find_budget_when_nothing_fits_or_everything_does():
    async def slow(level: float) -> SweepStep:
        return synthetic_step(int(level), 0.200)

    search = asyncio.run(find_budget(slow, 0.050))
    assert search.best is None and [s.concurrency for s in search.steps] == [1]

    async def fast(level: float) -> SweepStep:
        return synthetic_step(int(level), 0.001)

    search = asyncio.run(find_budget(fast, 0.050, limit=64))
    assert search.best is not None and search.best.concurrency == 64 and search.limit_reached

    async def failing(level: float) -> SweepStep:
        return synthetic_step(int(level), 0.001, failed=1 if level >= 4 else 0)

    search = asyncio.run(find_budget(failing, 0.050))
    assert search.best is not None and search.best.concurrency == 3  # failures are over budget


def test_rate_ranges():
    assert parse_rate_range("10:30:10") == (10.0, 20.0, 30.0)
    assert parse_rate_range("0.5,2") == (0.5, 2.0)
    assert parse_rate_range("25") == (25.0,)
    for bad in ("0", "10:5", "a:b", "1:2:0", "1:1000000:0.001"):
        with pytest.raises(ValueError, match="request"):
            parse_rate_range(bad)
