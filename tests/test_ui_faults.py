"""Faults with real processes: a Triton killed during automatic mode, every instance gone and
back, and the embedded stack started and stopped by the window itself. Each test runs a stack of
its own (the session's shared stack must stay whole)."""

from __future__ import annotations

import os
import signal

import pytest

from flowerdemo.options import RunOptions
from flowerdemo.serving.stack import LocalStack
from flowerdemo.ui.inference_task import TaskState
from flowerdemo.ui.messages import Severity

pytestmark = [pytest.mark.gui, pytest.mark.stack]


def answered(window) -> int:
    return window.task.snapshot().answered


def test_a_killed_triton_shows_the_banner_and_the_app_carries_on_then_reconnects(
    qtbot, open_window, stack_settings
):
    # No automatic restart: the test takes the whole server down, then brings it back itself.
    stack = LocalStack(stack_settings(2, restart=False))
    stack.start()
    try:
        window = open_window(
            RunOptions(url=stack.grpc_url, mode="auto", concurrency=8), watch_stack=stack
        )
        window.task.monitor_interval_s = 0.25
        qtbot.waitUntil(lambda: answered(window) >= 100, timeout=20_000)

        # A crash, not a stop: SIGKILL to tritonserver alone.
        victim = stack.states()[0]
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        qtbot.waitUntil(lambda: "Triton instance 0" in window.banner.message, timeout=10_000)
        assert window.banner.severity is Severity.WARNING
        assert "1 of 2 instance(s) serving" in window.banner.message
        assert "instances serving: 1 of 2" in window.live_panel.server_label.text()
        # The app is alive and the other instance keeps answering through Envoy.
        before = answered(window)
        qtbot.waitUntil(lambda: answered(window) >= before + 100, timeout=20_000)
        assert window.isVisible() and window.task.running_auto

        # Then the whole server goes: requests fail, counted and shown once with a count.
        stack.stop_instance(1, kill=True)
        qtbot.waitUntil(lambda: window.task.state is TaskState.UNREACHABLE, timeout=15_000)
        qtbot.waitUntil(lambda: "Requests failing" in window.log_panel.toPlainText(), timeout=5_000)
        failed = window.task.snapshot().failed
        assert failed > 0
        assert window.log_panel.toPlainText().count("Requests failing (unavailable)") <= 3

        # The server comes back: the app notices by itself and answers again.
        stack.start_instance(0)
        stack.start_instance(1)
        qtbot.waitUntil(lambda: window.task.state is TaskState.CONNECTED, timeout=20_000)
        again = answered(window)
        qtbot.waitUntil(lambda: answered(window) >= again + 50, timeout=20_000)
        assert "answering again" in window.log_panel.toPlainText()
        assert window.task.running_auto
    finally:
        stack.stop()


def test_without_an_address_the_window_starts_the_local_stack_and_stops_it_on_exit(
    qtbot, open_window, stack_settings
):
    settings = stack_settings(1)
    states: list[TaskState] = []
    window = open_window(RunOptions(url=None), start=False, stack_settings=settings)
    window.task.sig_state_changed.connect(states.append)
    window.start()
    qtbot.waitUntil(lambda: window.task.state is TaskState.CONNECTED, timeout=60_000)
    assert TaskState.STARTING_SERVERS in states
    stack = window.task.local_stack
    assert stack is not None
    assert window.controls.url_edit.text() == settings.listen
    pids = [s.pid for s in stack.states()]
    envoy = stack.envoy_pid()
    assert all(pids) and envoy

    window.grid.sig_tile_clicked.emit(0)
    qtbot.waitUntil(lambda: window.grid.tile(0).answered, timeout=10_000)

    window.close()
    qtbot.waitUntil(lambda: window.is_shut_down, timeout=30_000)
    assert not window.isVisible()
    assert window.task.state is TaskState.CLOSED
    for pid in [*pids, envoy]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
