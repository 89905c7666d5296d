"""Kiosk mode on real widgets (offscreen): keys that would leave it do nothing, the exit chord
and SIGTERM end it, the idle cursor hides, automatic mode resumes after N minutes without input
(a fake clock), and a server that goes away and comes back is shown on screen."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QGuiApplication

from flowerdemo.options import RunOptions
from flowerdemo.serving.stack import LocalStack
from flowerdemo.ui.inference_task import TaskState
from flowerdemo.ui.kiosk import (
    KioskMode,
    ScreenBlankingInhibitor,
    font_scale_for,
    scale_font_to_screen,
)

pytestmark = [pytest.mark.gui]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class NoInhibitor(ScreenBlankingInhibitor):
    """The tests' screen has no saver to inhibit; the real one would change this machine's X
    settings if it found xset."""

    def inhibit(self) -> str:
        self.method = "not inhibited (test)"
        return self.method


def kiosk_window(open_window, options, *, idle_s=180.0, start=True):
    window = open_window(options, start=start)
    clock = FakeClock()
    kiosk = KioskMode(window, idle_s=idle_s, clock=clock, inhibitor=NoInhibitor())
    kiosk.start()
    return window, kiosk, clock


def test_keys_that_would_leave_the_kiosk_do_nothing_and_the_chord_ends_it(
    qtbot, open_window, free_port
):
    window, _kiosk, _clock = kiosk_window(
        open_window, RunOptions(url=f"127.0.0.1:{free_port()}", kiosk=True), start=False
    )
    qtbot.waitUntil(window.isFullScreen, timeout=2_000)
    for key, modifiers in (
        (Qt.Key.Key_Escape, Qt.KeyboardModifier.NoModifier),
        (Qt.Key.Key_F11, Qt.KeyboardModifier.NoModifier),
        (Qt.Key.Key_Q, Qt.KeyboardModifier.ControlModifier),
    ):
        qtbot.keyClick(window, key, modifiers)
        qtbot.wait(100)
        assert window.isFullScreen() and window.isVisible(), key
        assert not window.is_shut_down
    # The window manager's close (Alt+F4, the title bar) reaches the window as a spontaneous
    # close event through the platform: refused.
    window.windowHandle().close()
    qtbot.wait(100)
    assert window.isVisible() and not window.is_shut_down
    window.close()  # nor does any other code path that closes the window
    qtbot.wait(100)
    assert window.isVisible() and not window.is_shut_down

    # Other keys still work: Ctrl+L toggles the log.
    shown = window.log_dock.isVisible()
    qtbot.keyClick(window, Qt.Key.Key_L, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: window.log_dock.isVisible() != shown, timeout=2_000)

    chord = (
        Qt.KeyboardModifier.ControlModifier
        | Qt.KeyboardModifier.AltModifier
        | Qt.KeyboardModifier.ShiftModifier
    )
    qtbot.keyClick(window, Qt.Key.Key_Q, chord)
    qtbot.waitUntil(lambda: window.is_shut_down, timeout=10_000)
    assert not window.isVisible()


def test_the_idle_cursor_hides_and_comes_back_with_the_mouse(qtbot, open_window, free_port):
    window, kiosk, clock = kiosk_window(
        open_window, RunOptions(url=f"127.0.0.1:{free_port()}", kiosk=True), start=False
    )
    kiosk.tick()
    assert not kiosk.cursor_hidden
    clock.now += 3.5
    kiosk.tick()
    assert kiosk.cursor_hidden
    assert QGuiApplication.overrideCursor().shape() == Qt.CursorShape.BlankCursor
    qtbot.mouseMove(window.grid.viewport(), QPoint(40, 40))
    qtbot.mouseMove(window.grid.viewport(), QPoint(60, 50))
    qtbot.waitUntil(lambda: not kiosk.cursor_hidden, timeout=2_000)
    assert QGuiApplication.overrideCursor() is None
    kiosk.end()
    qtbot.waitUntil(lambda: window.is_shut_down, timeout=10_000)


@pytest.mark.stack
def test_automatic_mode_resumes_after_minutes_without_input(qtbot, open_window, local_stack):
    window, kiosk, clock = kiosk_window(
        open_window, RunOptions(url=local_stack.grpc_url, kiosk=True, mode="interactive")
    )
    qtbot.waitUntil(lambda: window.task.state is TaskState.CONNECTED, timeout=20_000)
    assert window.controls.mode == "interactive" and not window.task.running_auto

    clock.now += 179
    kiosk.tick()
    assert not window.task.running_auto and kiosk.fallbacks == 0
    # A visitor's click is input: the three minutes start again.
    grid = window.grid
    qtbot.mouseClick(grid.viewport(), Qt.MouseButton.LeftButton, pos=grid.tile_rect(2).center())
    qtbot.waitUntil(lambda: grid.tile(2).answered, timeout=10_000)
    clock.now += 179
    kiosk.tick()
    assert not window.task.running_auto and kiosk.fallbacks == 0

    clock.now += 2
    kiosk.tick()
    assert kiosk.fallbacks == 1
    qtbot.waitUntil(lambda: window.task.running_auto, timeout=5_000)
    assert window.controls.mode == "auto"
    assert window.controls.run_button.isChecked()
    answered = window.task.snapshot().answered
    qtbot.waitUntil(lambda: window.task.snapshot().answered >= answered + 50, timeout=20_000)
    clock.now += 600
    kiosk.tick()
    assert kiosk.fallbacks == 1  # already automatic: nothing more to do


@pytest.mark.stack
def test_a_server_that_goes_away_and_comes_back_is_shown_and_reconnected(
    qtbot, open_window, stack_settings
):
    stack = LocalStack(stack_settings(1))
    try:
        window, kiosk, _clock = kiosk_window(
            open_window, RunOptions(url=stack.grpc_url, kiosk=True, mode="auto")
        )
        window.task.retry_interval_s = 0.2
        window.task.max_retry_interval_s = 0.8
        # Not started yet: the kiosk says so, big, and keeps trying (backing off).
        qtbot.waitUntil(lambda: kiosk.status.isVisible(), timeout=10_000)
        assert "cannot be reached" in kiosk.status.text()
        assert kiosk.status.font().pixelSize() >= 18
        qtbot.waitUntil(lambda: "attempt" in kiosk.status.text(), timeout=10_000)

        stack.start()
        qtbot.waitUntil(lambda: window.task.state is TaskState.CONNECTED, timeout=30_000)
        qtbot.waitUntil(lambda: window.task.snapshot().answered > 20, timeout=20_000)
        assert not kiosk.status.isVisible()

        # It goes away in the middle of automatic mode...
        stack.stop()
        qtbot.waitUntil(lambda: kiosk.status.isVisible(), timeout=20_000)
        assert window.task.state in (TaskState.UNREACHABLE, TaskState.WAITING)
        # ...and comes back on the same address: answers resume without anyone touching it.
        stack.start()
        before = window.task.snapshot().answered
        qtbot.waitUntil(lambda: window.task.snapshot().answered > before + 20, timeout=30_000)
        qtbot.waitUntil(lambda: not kiosk.status.isVisible(), timeout=5_000)
        assert window.task.running_auto
    finally:
        stack.stop()


def test_sigterm_ends_a_kiosk_configured_by_the_environment(tmp_path):
    # A listening socket that never answers stands for a server that is not up yet: the app's
    # first connection attempt shows it is running its window (signal handlers installed).
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(60)
    environment = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "FLOWERDEMO_URL": f"127.0.0.1:{listener.getsockname()[1]}",
        "FLOWERDEMO_KIOSK": "1",
        "FLOWERDEMO_MODE": "auto",
        "FLOWERDEMO_TIMEOUT": "1",
    }
    app = subprocess.Popen(
        [sys.executable, "-m", "flowerdemo"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        connection, _address = listener.accept()
        connection.close()
        assert app.poll() is None, app.communicate()
        app.send_signal(signal.SIGTERM)
        out, err = app.communicate(timeout=30)
    finally:
        listener.close()
        if app.poll() is None:
            app.kill()
            app.communicate()
    assert app.returncode == 0, err
    assert "Traceback" not in out + err


def test_text_grows_on_screens_taller_than_1080(qapp):
    assert font_scale_for(1080) == 1.0
    assert font_scale_for(800) == 1.0  # never smaller than the desktop's own size
    assert font_scale_for(2160) == 2.0
    before = qapp.font()
    try:
        factor = scale_font_to_screen(qapp)
        screen_height = qapp.primaryScreen().geometry().height()
        assert factor == font_scale_for(screen_height)
        assert qapp.font().pointSizeF() == pytest.approx(before.pointSizeF() * factor)
    finally:
        qapp.setFont(before)
