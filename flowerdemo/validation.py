"""Checks on what a user typed, made before anything runs, each problem one sentence.

argparse types (`finite_positive`, `int_between`) refuse a bad value while the command line is
parsed; `labels_problem` and `output_file_problem` / `output_dir_problem` look at files, so an
unreadable labels file or an unwritable report is reported before a run starts, not after it.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from flowerdemo.core.images import display_path

MAX_CONCURRENCY = 1024
"""Requests kept outstanding by one client (also the bench sweep's largest step)."""
MAX_BATCH_SIZE = 4096
"""Before connecting; the model's own max_batch_size is checked after."""
MAX_TOPK = 1000
"""Before connecting; the model's class count is checked after."""
MAX_INSTANCES = 64


def finite_positive(text: str) -> float:
    """An argparse type: a finite number above zero (refuses 0, -1, nan, inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not '{text}'")
    return value


def finite_non_negative(text: str) -> float:
    """An argparse type: a finite number of at least zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, not '{text}'")
    return value


def int_between(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high`; the message gives the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"'{text}' is not a whole number (allowed: {low} to {high})"
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, not {value}")
        return value

    parse.__name__ = f"whole number from {low} to {high}"
    return parse


def number_problem(name: str, value: float | None, *, allow_zero: bool = False) -> str | None:
    """The same rule for values that did not come through argparse (settings, other callers)."""
    if value is None:
        return None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "at least 0" if allow_zero else "above 0"
        return f"{name} must be a finite number {bound}, not {value}"
    return None


def labels_problem(path: Path) -> str | None:
    """Why a labels file cannot be used (None when it can): missing, not a file, not text."""
    where = display_path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return f"labels file {where} does not exist"
    except IsADirectoryError:
        return f"labels file {where} is a folder, not a file"
    except OSError as error:
        return f"labels file {where} cannot be read ({error.strerror})"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if "\x00" in text or (data and not text):
        return (
            f"labels file {where} is not a text file: it should hold one class name a line "
            "(UTF-8), in the model's class order"
        )
    if not any(line.strip() for line in text.splitlines()):
        return f"labels file {where} holds no class names (one a line expected)"
    return None


def output_file_problem(option: str, path: Path) -> str | None:
    """Why `path` cannot be written (None when it can), found by really trying, before the run.

    Missing parent folders are created (the run would create them anyway); an existing file is
    opened for appending and left unchanged.
    """
    where = display_path(path)
    if path.is_dir():
        return f"{option} {where} is a folder; give a file name"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with path.open("ab"):
                pass
        else:
            with tempfile.TemporaryFile(dir=path.parent):
                pass
    except OSError as error:
        return f"{option} {where} cannot be written ({error.strerror or error})"
    return None


def output_dir_problem(option: str, path: Path) -> str | None:
    """Why files cannot be written in folder `path` (None when they can), before the run."""
    where = display_path(path)
    if path.exists() and not path.is_dir():
        return f"{option} {where} is a file, not a folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        return f"{option} {where} cannot be written ({error.strerror or error})"
    return None


class CommandLineParser(argparse.ArgumentParser):
    """argparse, but a mistake is one short paragraph (exit 2), not the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}. See '{self.prog} --help' for the options.\n")


# How argparse and the environment settings name what a type takes ("--timeout takes a ...").
finite_positive.__name__ = "number above 0"
finite_non_negative.__name__ = "number of at least 0"
