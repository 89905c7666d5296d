"""`make unit` (`-m "not stack and not gui"`) takes its subset from the fixtures tests use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_unit_subset_leaves_out_tests_whose_fixtures_start_a_server_or_qt():
    # tests/test_served_model.py carries no marker of its own: its fixtures decide.
    files = ("tests/test_served_model.py", "tests/test_ui_tiles.py", "tests/test_core_units.py")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-m",
            "not stack and not gui",
            *files,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=120,
    )
    collected = [line for line in result.stdout.splitlines() if "::" in line]
    assert collected, result.stdout + result.stderr
    assert {line.split("::")[0] for line in collected} == {"tests/test_core_units.py"}
    assert "deselected" in result.stdout
