"""What every entry point shares so that no failure reaches a user as a traceback.

Exit codes (README, "Exit codes"):
    0   the run finished and every request was answered
    1   the run finished but some requests failed (or none was answered)
    2   nothing was run: a bad option or input, or the server could not be reached (the reason
        is printed as one paragraph)
    3   the computer ran out of memory
    4   an unexpected error: a short message names the log file holding the details
    130 interrupted before the run could start
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import io
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from flowerdemo.core.images import ImageProblem, display_path, summarise_problems

EXIT_OK = 0
EXIT_FAILED_REQUESTS = 1
EXIT_NOT_RUN = 2
EXIT_OUT_OF_MEMORY = 3
EXIT_INTERNAL_ERROR = 4
EXIT_INTERRUPTED = 130

PROBLEMS_NAMED = 5
"""Skipped files named on the terminal; the rest are in the log file."""


def state_dir() -> Path:
    """Where logs go: $XDG_STATE_HOME/flowerdemo, else ~/.local/state/flowerdemo, else a folder
    in the temporary directory when the home folder is not writable (a container, a kiosk)."""
    candidates = []
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg and Path(xdg).is_absolute():
        candidates.append(Path(xdg) / "flowerdemo")
    with contextlib.suppress(RuntimeError, KeyError):
        candidates.append(Path.home() / ".local" / "state" / "flowerdemo")
    candidates.append(Path(tempfile.gettempdir()) / f"flowerdemo-{os.getuid()}")
    for folder in candidates:
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Not a folder someone else made for us (the temporary directory is shared).
            owned = not folder.is_symlink() and folder.stat().st_uid == os.getuid()
        except OSError:
            continue
        if owned and os.access(folder, os.W_OK):
            return folder
    return Path(tempfile.mkdtemp(prefix="flowerdemo-"))


def write_log(name: str, text: str) -> Path | None:
    """Write a log file in the state folder; its path, or None when nothing could be written."""
    path = state_dir() / name
    try:
        path.write_text(text, encoding="utf-8", errors="backslashreplace")
    except OSError:
        return None
    return path


def report_skipped(problems: Sequence[ImageProblem], err: TextIO, prefix: str) -> None:
    """A count per reason and the first few named on `err`; the full list in a log file."""
    if not problems:
        return
    for line in summarise_problems(problems, named=PROBLEMS_NAMED):
        print(f"{prefix}: {line}", file=err)
    if len(problems) > PROBLEMS_NAMED:
        listing = "".join(f"{problem}\n" for problem in problems)
        written = write_log("skipped-photos.log", listing)
        if written is not None:
            print(f"{prefix}: every skipped file is listed in {display_path(written)}", file=err)


class PipeSafeStream(io.TextIOBase):
    """A text stream that survives its reader going away (`flowerdemo ... | head -1`): after a
    broken pipe, further output is dropped and the run carries on to write its report."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        self.closed_by_reader = False

    def write(self, text: str) -> int:
        if not self.closed_by_reader:
            try:
                self._stream.write(text)
            except BrokenPipeError:
                self._reader_gone()
        return len(text)

    def flush(self) -> None:
        if not self.closed_by_reader:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._reader_gone()

    def isatty(self) -> bool:
        return not self.closed_by_reader and self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._stream.encoding

    def _reader_gone(self) -> None:
        self.closed_by_reader = True
        # Python flushes stdout once more at exit: point the descriptor at /dev/null first.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)


@contextlib.contextmanager
def sigterm_as_sigint() -> Iterator[None]:
    """SIGTERM (`docker stop`, `timeout`, a service manager) takes the same clean path as
    Ctrl+C: code that handles KeyboardInterrupt or installs its own SIGINT handler sees it."""

    def forward(_signum: int, _frame: object) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler) and handler not in (signal.default_int_handler,):
            handler(signal.SIGINT, None)
        else:
            raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, forward)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Inside a running event loop: Ctrl+C and SIGTERM call `stop` (end the run the normal
    way) instead of interrupting it; the previous handlers are back afterwards."""
    loop = asyncio.get_running_loop()
    previous: dict[signal.Signals, Any] = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        try:
            handler = signal.getsignal(number)
            loop.add_signal_handler(number, stop)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        previous[number] = handler
    try:
        yield
    finally:
        for number, handler in previous.items():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, TypeError):
                loop.remove_signal_handler(number)
                signal.signal(number, handler)


def guarded(program: str, run: Callable[[], int]) -> int:
    """Run an entry point; anything unexpected becomes a short message and a log file path."""
    streams = sys.stdout, sys.stderr
    # `flowerdemo ... 2>&1 | head -1`: output after the reader left is dropped, the run goes on.
    if sys.stdout is not None and not isinstance(sys.stdout, PipeSafeStream):
        sys.stdout = PipeSafeStream(sys.stdout)
    if sys.stderr is not None and not isinstance(sys.stderr, PipeSafeStream):
        sys.stderr = PipeSafeStream(sys.stderr)
    try:
        return _run_guarded(program, run)
    finally:
        sys.stdout, sys.stderr = streams


def _run_guarded(program: str, run: Callable[[], int]) -> int:
    try:
        return run()
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        print(
            f"{program}: the computer ran out of memory. Use fewer or smaller photos "
            "(--images), a smaller --concurrency or --batch-size, or close other programs.",
            file=sys.stderr,
        )
        return EXIT_OUT_OF_MEMORY
    except BrokenPipeError:
        return EXIT_OK
    except SystemExit as exit_:
        # argparse's verdict on the command line (2), or --help and --version (0).
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or EXIT_OK
        print(f"{program}: {exit_.code}", file=sys.stderr)
        return EXIT_NOT_RUN
    except BaseException as error:
        return _unexpected(program, error)


def _unexpected(program: str, error: BaseException) -> int:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    details = "".join(traceback.format_exception(error))
    log = write_log(f"error-{stamp}-{os.getpid()}.log", f"{program} {sys.argv[1:]}\n{details}")
    where = (
        f"The details are in {display_path(log)}; please include that file when you report it."
        if log is not None
        else "The details could not be written to a log file."
    )
    summary = (
        f"{type(error).__name__}: {error}".splitlines()[0][:300]
        if str(error)
        else type(error).__name__
    )
    print(f"{program}: unexpected error ({summary}). {where}", file=sys.stderr)
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        print(f"{program}: the disk is full.", file=sys.stderr)
    return EXIT_INTERNAL_ERROR
