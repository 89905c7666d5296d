"""Bad input tried for real: `python -m flowerdemo ...` in a child process, as a user runs it.

Each case checks the documented exit code, that no traceback reaches the terminal, and that the
message names the problem. None of them needs a server: the problems are found before one is
reached, or the address given is a port nobody listens on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from flowerdemo.guard import EXIT_INTERNAL_ERROR, EXIT_NOT_RUN, EXIT_OUT_OF_MEMORY, guarded

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


BAD_VALUES = [
    (["--timeout", "nan"], "--timeout: must be a finite number above 0, not 'nan'"),
    (["--timeout", "-1"], "--timeout: must be a finite number above 0, not '-1'"),
    (["--duration", "inf"], "--duration: must be a finite number above 0, not 'inf'"),
    (["--duration", "0"], "--duration: must be a finite number above 0, not '0'"),
    (["--budget-ms", "-5"], "--budget-ms: must be a finite number above 0"),
    (["-c", "0"], "--concurrency: must be from 1 to 1024, not 0"),
    (["-c", "100000"], "--concurrency: must be from 1 to 1024, not 100000"),
    (["--topk", "0"], "--topk: must be from 1 to 1000, not 0"),
    (["--batch-size", "many"], "--batch-size: 'many' is not a whole number (allowed: 1 to 4096)"),
    (["--instances", "0"], "--instances: must be from 1 to 64, not 0"),
]


@pytest.mark.parametrize(("arguments", "message"), BAD_VALUES, ids=lambda v: " ".join(v))
def test_bad_values_are_refused_in_one_paragraph(tmp_path: Path, arguments, message):
    result = run_flowerdemo("--headless", "--url", "127.0.0.1:1", *arguments, state=tmp_path)
    assert result.returncode == EXIT_NOT_RUN
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


BAD_BENCH_VALUES = [
    (["--window", "0"], "--window: must be a finite number above 0"),
    (["--timeout", "nan"], "--timeout: must be a finite number above 0"),
    (["--budget-ms", "inf"], "--budget-ms: must be a finite number above 0"),
    (["--concurrency-range", "1:100000000"], "use values from 1 to 1024"),
    (["--concurrency-range", "1:1024:1"], "at most 1000 are allowed"),
]


@pytest.mark.parametrize(("arguments", "message"), BAD_BENCH_VALUES, ids=lambda v: " ".join(v))
def test_bad_bench_values_are_refused_before_anything_is_allocated(
    tmp_path: Path, arguments, message
):
    started = time.monotonic()
    result = run_flowerdemo("bench", "--url", "127.0.0.1:1", *arguments, state=tmp_path)
    assert result.returncode == EXIT_NOT_RUN
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert time.monotonic() - started < 30


def test_unusable_labels_files_are_refused_before_the_run(tmp_path: Path):
    binary = tmp_path / "labels.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    cases = {
        binary: "is not a text file",
        empty: "holds no class names",
        tmp_path: "is a folder, not a file",
        tmp_path / "missing.txt": "does not exist",
    }
    for labels, message in cases.items():
        result = run_flowerdemo(
            "--headless", "--url", "127.0.0.1:1", "--labels", str(labels), state=tmp_path
        )
        assert result.returncode == EXIT_NOT_RUN, labels
        assert message in result.stderr and str(labels) in result.stderr, result.stderr


def test_an_unwritable_report_is_refused_before_the_run(tmp_path: Path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    (tmp_path / "folder.json").mkdir()
    cases = {
        a_file / "report.json": "cannot be written",
        Path("/proc/flowerdemo-report.json"): "cannot be written",
        tmp_path / "folder.json": "is a folder; give a file name",
    }
    for report, message in cases.items():
        result = run_flowerdemo(
            "--headless", "--url", "127.0.0.1:1", "--report", str(report), state=tmp_path
        )
        assert result.returncode == EXIT_NOT_RUN, report
        assert f"--report {report} {message}" in result.stderr, result.stderr
        # Refused before connecting: the unreachable address is never mentioned.
        assert "Cannot reach" not in result.stderr


def test_an_unwritable_output_dir_and_workdir_are_refused(tmp_path: Path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    bench = run_flowerdemo(
        "bench", "--url", "127.0.0.1:1", "--output-dir", str(a_file), state=tmp_path
    )
    assert bench.returncode == EXIT_NOT_RUN
    assert f"--output-dir {a_file} is a file, not a folder" in bench.stderr
    serve = run_flowerdemo("serve", "--workdir", str(a_file), state=tmp_path)
    assert serve.returncode == EXIT_NOT_RUN
    assert f"--workdir {a_file} is a file, not a folder" in serve.stderr
    nested = run_flowerdemo("serve", "--workdir", str(a_file / "work"), state=tmp_path)
    assert nested.returncode == EXIT_NOT_RUN
    assert f"--workdir {a_file / 'work'} cannot be written" in nested.stderr


@pytest.mark.parametrize("wires", ["jpeg", "fp32,png", "", "FP32,,uint8;rm"])
def test_serve_refuses_wires_it_does_not_offer(tmp_path: Path, wires: str):
    result = run_flowerdemo("serve", "--wires", wires, state=tmp_path)
    assert result.returncode == 2
    assert "--wires" in result.stderr and "must include 'fp32'" in result.stderr
    assert "Traceback" not in result.stderr


def test_non_utf8_file_names_under_a_strict_locale(tmp_path: Path, free_port):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 30), "red").save(photos / os.fsdecode(b"rose-\xe9t\xe9.jpg"))
    (photos / os.fsdecode(b"broken-\xff.jpg")).write_bytes(b"\xff\xd8\xff")
    result = run_flowerdemo(
        "--headless",
        "--images",
        str(photos),
        "--url",
        f"127.0.0.1:{free_port()}",
        state=tmp_path,
        LC_ALL="C",
        LANG="C",
    )
    # Both files are found; the broken one is named (bytes it cannot show as U+FFFD), then the
    # unreachable server is reported as usual.
    assert result.returncode == EXIT_NOT_RUN
    assert "broken-\ufffd.jpg: not a readable image" in result.stderr
    assert "Cannot reach" in result.stderr


def test_memory_exhaustion_is_one_message_and_its_own_exit_code(capsys):
    # A real allocation the machine cannot satisfy, through the real guard.
    status = guarded("flowerdemo", lambda: len(bytearray(2**62)))
    assert status == EXIT_OUT_OF_MEMORY
    assert "ran out of memory" in capsys.readouterr().err


def test_an_unexpected_error_is_a_short_message_and_a_log_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))

    def broken() -> int:
        return {}["missing"]  # type: ignore[no-any-return]

    status = guarded("flowerdemo", broken)

    assert status == EXIT_INTERNAL_ERROR
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "unexpected error (KeyError: 'missing')" in err
    (log,) = (tmp_path / "flowerdemo").glob("error-*.log")
    assert str(log) in err
    assert "Traceback" in log.read_text() and "broken" in log.read_text()
