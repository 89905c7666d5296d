"""Settings from the environment (FLOWERDEMO_<OPTION>), so the booth container needs only -e."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from flowerdemo.__main__ import _client_parser
from flowerdemo.env_settings import apply_environment, environment_defaults
from flowerdemo.options import options_from_args


def parse(arguments: list[str], environ: dict[str, str]):
    parser = _client_parser()
    apply_environment(parser, environ)
    return options_from_args(parser.parse_args(arguments))


def test_every_option_can_come_from_the_environment_and_the_command_line_wins() -> None:
    environ = {
        "FLOWERDEMO_URL": "booth-server:50050",
        "FLOWERDEMO_MODE": "auto",
        "FLOWERDEMO_CONCURRENCY": "24",
        "FLOWERDEMO_BUDGET_MS": "35.5",
        "FLOWERDEMO_PROTOCOL": "http",
        "FLOWERDEMO_KIOSK": "1",
        "FLOWERDEMO_IDLE_MINUTES": "0.5",
        "FLOWERDEMO_IMAGES": "/srv/photos",
        "FLOWERDEMO_FULLSCREEN": "no",
        "FLOWERDEMO_TOPK": "",  # empty counts as unset
    }
    options = parse([], environ)
    assert options.url == "booth-server:50050"
    assert options.mode == "auto"
    assert options.concurrency == 24
    assert options.budget_ms == 35.5
    assert options.protocol == "http"
    assert options.kiosk is True
    assert options.idle_minutes == 0.5
    assert str(options.images) == "/srv/photos"
    assert options.fullscreen is False
    assert options.topk == 3

    flags = parse(["--concurrency", "4", "--mode", "interactive", "--url", "other:1"], environ)
    assert (flags.concurrency, flags.mode, flags.url) == (4, "interactive", "other:1")
    assert flags.budget_ms == 35.5  # what the command line leaves out still comes from -e


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "FLOWERDEMO_CONCURRENCY",
            "many",
            "FLOWERDEMO_CONCURRENCY='many': --concurrency takes a whole number",
        ),
        ("FLOWERDEMO_MODE", "fast", "FLOWERDEMO_MODE='fast': --mode is one of interactive, auto"),
        ("FLOWERDEMO_KIOSK", "maybe", "FLOWERDEMO_KIOSK='maybe': --kiosk takes 1/true/yes/on"),
        ("FLOWERDEMO_BUDGET_MS", "50ms", "FLOWERDEMO_BUDGET_MS='50ms': --budget-ms takes a number"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, value: str, message: str) -> None:
    _defaults, problems = environment_defaults(_client_parser(), {name: value})
    assert len(problems) == 1 and problems[0].startswith(message)
    result = subprocess.run(
        [sys.executable, "-m", "flowerdemo", "--headless"],
        env={**os.environ, name: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_help_names_the_variables() -> None:
    # argparse wraps the epilog to the terminal's width: compare the words, not the lines.
    text = " ".join(_client_parser().format_help().split())
    assert "FLOWERDEMO_URL" in text and "command line wins" in text


@pytest.mark.stack
def test_a_headless_run_configured_by_the_environment_alone(local_stack) -> None:
    environ = {
        **os.environ,
        "FLOWERDEMO_URL": local_stack.grpc_url,
        "FLOWERDEMO_HEADLESS": "true",
        "FLOWERDEMO_MODE": "auto",
        "FLOWERDEMO_CONCURRENCY": "3",
        "FLOWERDEMO_DURATION": "1.5",
    }
    result = subprocess.run(
        [sys.executable, "-m", "flowerdemo"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Connected to {local_stack.grpc_url}" in result.stdout
    summary = re.search(r"Summary: (\d+) sent, (\d+) answered, (\d+) failed", result.stdout)
    assert summary is not None, result.stdout
    sent, answered, failed = map(int, summary.groups())
    assert answered > 0 and failed == 0 and sent == answered
