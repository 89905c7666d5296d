"""`flowerdemo --url HOST:PORT --mode auto` as a user runs it: a separate process on the offscreen
platform. It must open straight into automatic mode (the servers see its requests) and, on
Ctrl+C, shut down cleanly with exit status 0 and nothing printed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = [pytest.mark.gui, pytest.mark.stack]


def inferences_served(stack) -> int:
    total = 0
    for index in range(stack.instance_count):
        url = f"http://{stack.instance_http_url(index)}/v2/models/{stack.settings.model_name}/stats"
        with urllib.request.urlopen(url, timeout=2) as response:
            stats = json.load(response)
        total += sum(int(m["inference_count"]) for m in stats["model_stats"])
    return total


def test_auto_mode_from_the_command_line_and_a_clean_exit(local_stack, tmp_path):
    environment = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        # QSettings writes under here, not into the user's own configuration.
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    before = inferences_served(local_stack)
    app = subprocess.Popen(
        [sys.executable, "-m", "flowerdemo", "--url", local_stack.grpc_url, "--mode", "auto"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while inferences_served(local_stack) < before + 100:
            assert app.poll() is None, app.communicate()
            assert time.monotonic() < deadline, "the app sent no requests in automatic mode"
            time.sleep(0.2)
        app.send_signal(signal.SIGINT)
        out, err = app.communicate(timeout=30)
    finally:
        if app.poll() is None:
            app.kill()
            app.communicate()
    assert app.returncode == 0
    assert out == ""
    assert err == ""
    assert (tmp_path / "config" / "flowerdemo" / "flowerdemo.conf").is_file()
