"""The sweep's stability rule (perf_analyzer's) on synthetic windows."""

from __future__ import annotations

import pytest

from flowerdemo.core.sweep import SweepSettings, WindowMeasurement, is_stable, step_from_windows


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
