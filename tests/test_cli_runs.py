"""Runs that a signal, a closed pipe or a wrong setting interrupts, against the real local stack:
`python -m flowerdemo ...` in a child process, stopped the way `docker stop`, `timeout` and
`| head` stop it. Nothing finished may be lost: the summary is printed and the report written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from flowerdemo.guard import EXIT_INTERRUPTED, EXIT_NOT_RUN, EXIT_OK
from tests.test_cli_inputs import REPO, run_flowerdemo


def start_flowerdemo(*arguments: str, state: Path, **environment: str) -> subprocess.Popen[str]:
    state.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        XDG_STATE_HOME=str(state),
        XDG_CONFIG_HOME=str(state / "config"),
        QT_QPA_PLATFORM="offscreen",
        **environment,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "flowerdemo", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=state,
    )


def wait_for_line(stream, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"'{text}' never appeared in: {''.join(seen)}")


def test_sigterm_ends_a_headless_run_with_its_summary_and_report(local_stack, tmp_path: Path):
    report = tmp_path / "run.json"
    child = start_flowerdemo(
        "--headless",
        "--url",
        local_stack.grpc_url,
        "--mode",
        "auto",
        "-c",
        "2",
        "--report",
        str(report),
        state=tmp_path,
    )
    assert child.stdout is not None
    wait_for_line(child.stdout, "Connected to")
    time.sleep(1.5)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=30)

    assert child.returncode == EXIT_OK, err
    assert "Traceback" not in err
    assert "Stopped early" in out and "Summary:" in out
    figures = json.loads(report.read_text())["statistics"]
    assert figures["answered"] > 0 and figures["failed"] == 0
    assert figures["sent"] == figures["answered"]


def test_sigterm_ends_interactive_headless_mode_between_photos(local_stack, tmp_path: Path):
    report = tmp_path / "run.csv"
    child = start_flowerdemo(
        "--headless", "--url", local_stack.grpc_url, "--report", str(report), state=tmp_path
    )
    assert child.stdout is not None
    wait_for_line(child.stdout, "Connected to")
    wait_for_line(child.stdout, "ms)")  # the first answer
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=30)
    assert child.returncode == EXIT_OK, err
    assert "Summary:" in out and "Traceback" not in err
    assert report.read_text().startswith("Concurrency,")


def test_a_closed_pipe_still_finishes_the_run_and_writes_the_report(local_stack, tmp_path):
    report = tmp_path / "run.json"
    child = start_flowerdemo(
        "--headless", "--url", local_stack.grpc_url, "--report", str(report), state=tmp_path
    )
    assert child.stdout is not None and child.stderr is not None
    first = child.stdout.readline()  # what `| head -1` reads, then the reader goes away
    child.stdout.close()
    err = child.stderr.read()
    child.wait(timeout=60)
    assert first.startswith("Connected to")
    assert child.returncode == EXIT_OK, err
    assert "Traceback" not in err and "Broken pipe" not in err
    assert json.loads(report.read_text())["statistics"]["answered"] == 102


def test_requests_on_grpc_streams_through_envoy_are_all_answered_and_reported(
    local_stack, tmp_path
):
    report = tmp_path / "run.json"
    result = run_flowerdemo(
        "--headless", "--url", local_stack.grpc_url, "--grpc-calls", "stream",
        "--report", str(report), state=tmp_path,
    )  # fmt: skip
    assert result.returncode == EXIT_OK, result.stderr
    assert f"Connected to {local_stack.grpc_url} (grpc, stream calls)" in result.stdout
    document = json.loads(report.read_text())
    assert document["settings"]["grpc_calls"] == "stream"
    assert document["statistics"]["answered"] == 102 and document["statistics"]["failed"] == 0


def test_sigterm_ends_a_bench_sweep_and_keeps_the_measured_steps(local_stack, tmp_path):
    results = tmp_path / "bench"
    child = start_flowerdemo(
        "bench",
        "--url",
        local_stack.grpc_url,
        "--concurrency-range",
        "1:8",
        "--window",
        "0.3",
        "--max-windows",
        "3",
        "--output-dir",
        str(results),
        state=tmp_path,
    )
    assert child.stdout is not None
    wait_for_line(child.stdout, "windows")  # the table's header
    wait_for_line(child.stdout, "    1 ")  # the first step
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=60)
    assert child.returncode == EXIT_OK, err
    assert "Traceback" not in err
    assert "Stopped early" in out
    rows = (results / "flowerdemo.csv").read_text().splitlines()
    assert 2 <= len(rows) < 9
    assert (results / "throughput.png").exists()


def test_sigterm_closes_the_window_cleanly(local_stack, tmp_path: Path):
    child = start_flowerdemo("--url", local_stack.grpc_url, state=tmp_path)
    settings = tmp_path / "config" / "flowerdemo" / "flowerdemo.conf"
    time.sleep(6)  # the window is up, the photos loaded and the client connected
    assert child.poll() is None
    child.send_signal(signal.SIGTERM)
    _out, err = child.communicate(timeout=30)
    assert child.returncode == EXIT_OK, err
    assert "Traceback" not in err
    # Written by the window's own shutdown: the clean path ran, not a kill.
    assert "requests" in settings.read_text()


def test_a_labels_file_of_the_wrong_length_is_refused_even_when_the_server_has_labels(
    local_stack, tmp_path: Path
):
    labels = tmp_path / "three.txt"
    labels.write_text("rose\ntulip\ndaisy\n")
    result = run_flowerdemo(
        "--headless", "--url", local_stack.grpc_url, "--labels", str(labels), state=tmp_path
    )
    assert result.returncode == EXIT_NOT_RUN
    assert "the labels file has 3 names but model 'flowers' has 102 classes" in result.stderr
    assert "the server has its own labels" in result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--topk", "500"], "top-k 500 is more than model 'flowers' has classes: choose 1 to 102"),
        (["--batch-size", "4000"], "choose 1 to"),
    ],
)
def test_settings_beyond_the_model_say_the_allowed_range(
    local_stack, tmp_path: Path, arguments, message
):
    result = run_flowerdemo("--headless", "--url", local_stack.grpc_url, *arguments, state=tmp_path)
    assert result.returncode == EXIT_NOT_RUN
    assert message in result.stderr


def test_non_utf8_photo_names_are_classified_under_a_strict_locale(local_stack, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 30), "red").save(photos / os.fsdecode(b"rose-\xe9t\xe9.jpg"))
    report = tmp_path / "run.json"
    result = run_flowerdemo(
        "--headless",
        "--images",
        str(photos),
        "--url",
        local_stack.grpc_url,
        "--report",
        str(report),
        state=tmp_path,
        LC_ALL="C",
        LANG="C",
    )
    assert result.returncode == EXIT_OK, result.stderr
    assert "rose-\ufffdt\ufffd.jpg:" in result.stdout
    assert json.loads(report.read_text())["statistics"]["answered"] == 1


HEADLESS_ON_OWN_STACK = """
import sys
from flowerdemo.guard import guarded, sigterm_as_sigint
from flowerdemo.headless import run_headless
from flowerdemo.options import RunOptions
from flowerdemo.serving.stack import StackSettings
base, envoy = int(sys.argv[1]), int(sys.argv[2])
settings = StackSettings(
    instances=1, base_port=base, listen=f"127.0.0.1:{envoy}",
    http_listen=f"127.0.0.1:{envoy + 1}", admin_listen=f"127.0.0.1:{envoy + 2}",
)
with sigterm_as_sigint():
    run = lambda: run_headless(RunOptions(url=None, headless=True), stack_settings=settings)
    sys.exit(guarded("flowerdemo", run))
"""


def _servers_on(port: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(port) in command and ("tritonserver" in command or "envoy" in command):
            found.append(int(entry.name))
    return found


def test_sigterm_while_the_embedded_stack_starts_leaves_no_server(stack_settings, tmp_path):
    # `docker stop` of a booth container that is still starting its servers.
    settings = stack_settings(1)
    envoy = int(settings.listen.rsplit(":", 1)[1])
    child = subprocess.Popen(
        [sys.executable, "-c", HEADLESS_ON_OWN_STACK, str(settings.base_port), str(envoy)],
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO), XDG_STATE_HOME=str(tmp_path)),
    )
    assert child.stderr is not None
    wait_for_line(child.stderr, "Starting the local stack")
    deadline = time.monotonic() + 30
    while not _servers_on(settings.base_port + 1) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _servers_on(settings.base_port + 1), "Triton never started"
    child.send_signal(signal.SIGTERM)
    _out, err = child.communicate(timeout=60)
    assert child.returncode == EXIT_INTERRUPTED, err
    assert "interrupted before the run started" in err and "Traceback" not in err
    time.sleep(1)
    assert _servers_on(settings.base_port + 1) == []
