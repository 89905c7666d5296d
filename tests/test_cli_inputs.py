"""Bad input tried for real: `python -m flowerdemo ...` in a child process, as a user runs it.

Each case checks the documented exit code, that no traceback reaches the terminal, and that the
message names the problem. None of them needs a server: the problems are found before one is
reached, or the address given is a port nobody listens on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from flowerdemo.guard import EXIT_NOT_RUN

REPO = Path(__file__).resolve().parent.parent


def run_flowerdemo(
    *arguments: str, state: Path, timeout: float = 60, **environment: str
) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        XDG_STATE_HOME=str(state),
        QT_QPA_PLATFORM="offscreen",
        **environment,
    )
    state.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "flowerdemo", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=state,
    )
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result


def test_a_huge_tree_is_summarised_not_listed_file_by_file(tmp_path: Path, free_port):
    photos = tmp_path / "tree"
    photos.mkdir()
    Image.new("RGB", (40, 30), "green").save(photos / "flower.jpg")
    for k in range(300):
        (photos / f"notes-{k:03d}.txt").write_text("x")
    (photos / "gone.jpg").symlink_to(photos / "missing.jpg")
    os.mkfifo(photos / "pipe.png")
    (photos / "folder.jpg").mkdir()
    state = tmp_path / "state"
    dead = f"127.0.0.1:{free_port()}"

    result = run_flowerdemo("--headless", "--images", str(photos), "--url", dead, state=state)

    assert result.returncode == EXIT_NOT_RUN
    skipped = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert len(skipped) < 10, result.stderr
    assert (
        "skipped 303 file(s): 300 not an image file, 1 broken link, 1 folder, "
        "1 not a regular file" in result.stderr
    )
    listing = state / "flowerdemo" / "skipped-photos.log"
    assert str(listing) in result.stderr
    listed = listing.read_text().splitlines()
    assert len(listed) == 303
    assert any("pipe.png: not a regular file (a FIFO)" in line for line in listed)
    assert any("gone.jpg: broken symbolic link" in line for line in listed)
