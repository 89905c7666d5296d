"""`make unit` (`-m "not stack and not gui"`) takes its subset from the fixtures tests use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def collected(marks: str, *paths: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", marks, *paths],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=120,
    )
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_a_test_using_the_stack_fixtures_is_not_a_unit_test():
    # tests/test_served_model.py carries no marker of its own: its fixtures decide.
    assert collected("not stack and not gui", "tests/test_served_model.py") == []
    assert collected("stack", "tests/test_served_model.py") != []


def test_gui_tests_stay_out_of_the_unit_subset_and_plain_tests_stay_in():
    unit = collected("not stack and not gui", "tests/test_ui_tiles.py", "tests/test_core_units.py")
    assert unit and all(line.startswith("tests/test_core_units.py") for line in unit)
