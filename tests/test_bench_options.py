"""`flowerdemo bench`: options that cannot work are refused with the reason, before any server
is started."""

from __future__ import annotations

import pytest

from flowerdemo.__main__ import main


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--poisson"], "give rates too"),
        (["--find-budget", "--request-rate", "10"], "leave out --request-rate"),
        (["--request-rate", "10:5"], "not a request-rate range"),
        (["--percentile", "0"], "--percentile must be between 1 and 99"),
        (["--stability-percentage", "0"], "--stability-percentage must be positive"),
    ],
)
def test_bench_refuses_what_cannot_work(arguments, message, capsys):
    assert main(["bench", "--url", "127.0.0.1:1", *arguments]) == 2
    assert message in capsys.readouterr().err
