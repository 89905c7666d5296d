"""One way to write a latency everywhere."""

from __future__ import annotations

import math

import pytest

from flowerdemo.core.units import format_ms


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.000934, "0.93 ms"),
        (0.0124, "12.4 ms"),
        (0.1874, "187 ms"),
        (0.9996, "1.0 s"),
        (1.54, "1.5 s"),
        (math.nan, "-"),
        (math.inf, "-"),
    ],
)
def test_three_significant_figures_and_seconds_from_one_second(seconds, text):
    assert format_ms(seconds) == text


def test_without_the_unit_the_number_stays_in_milliseconds_and_aligns():
    assert format_ms(2.5, unit=False) == "2500"
    assert format_ms(0.0042, unit=False, width=8) == "    4.20"
    assert format_ms(math.nan, width=4) == "   -"
