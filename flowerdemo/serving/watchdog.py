"""Cleans up after a stack whose owner died without stopping it.

A LocalStack starts one watchdog process and keeps the write end of its standard input. It tells
the watchdog, one line at a time, what to clean up: `group PGID` (a process group to end),
`forget PGID`, `shm PREFIX` (shared-memory regions named so), `path DIR` (a folder to remove).
`release` means the stack stopped normally: the watchdog exits and does nothing. End of input
without `release` means the owner is gone, whatever killed it (even SIGKILL closes the pipe):
the watchdog then ends the groups (SIGTERM, then SIGKILL) and removes the regions and folders.

Run as `python -m flowerdemo.serving.watchdog`; it reads only what its owner writes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

SHM_DIR = Path("/dev/shm")  # noqa: S108 (POSIX shared memory; only the given prefixes go)
GRACE_S = 3.0


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def clean_up(groups: set[int], prefixes: set[str], paths: set[str]) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while any(_group_alive(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    for prefix in prefixes:
        if prefix and "/" not in prefix:
            for region in SHM_DIR.glob(f"{prefix}*"):
                with contextlib.suppress(OSError):
                    region.unlink()
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def main() -> int:
    # Ctrl-C reaches the whole terminal group; the owner handles it and releases us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    groups: set[int] = set()
    prefixes: set[str] = set()
    paths: set[str] = set()
    for line in sys.stdin:
        verb, _, argument = line.strip().partition(" ")
        if verb == "release":
            return 0
        if verb == "group" and argument.isdigit():
            groups.add(int(argument))
        elif verb == "forget" and argument.isdigit():
            groups.discard(int(argument))
        elif verb == "shm" and argument:
            prefixes.add(argument)
        elif verb == "path" and argument:
            paths.add(argument)
    clean_up(groups, prefixes, paths)
    return 0


class WatchdogClient:
    """The owner's side: starts the watchdog and tells it what to clean up. Thread-safe."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the watchdog process; OSError when it cannot run."""
        self._process = subprocess.Popen(
            [sys.executable, "-m", "flowerdemo.serving.watchdog"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )

    def tell(self, line: str) -> None:
        with self._lock:
            process = self._process
            if process is None or process.stdin is None:
                return
            with contextlib.suppress(OSError, ValueError):
                process.stdin.write(line + "\n")
                process.stdin.flush()

    def release(self) -> None:
        """The owner stopped everything itself: the watchdog exits doing nothing."""
        with self._lock:
            process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if process.stdin is not None:
                process.stdin.write("release\n")
                process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    sys.exit(main())
