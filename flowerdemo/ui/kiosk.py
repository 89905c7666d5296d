"""Kiosk mode (`--kiosk`): the window on an unattended booth screen, for hours.

- Full screen (the whole screen even without a window manager), and back to it if something
  takes it out. On a screen taller than 1080 logical pixels (a 4K screen without desktop
  scaling) the text grows with it (`scale_font_to_screen`); the tiles' labels always do.
- Esc, Ctrl+Q and F11 do nothing, and every close request (the window manager's Alt+F4 or title
  bar, a stray QWidget.close()) is refused. `end()` alone closes it: the exit chord `EXIT_CHORD`
  (Ctrl+Alt+Shift+Q) calls it, and so do SIGTERM and SIGINT (`docker stop`, systemd, Ctrl+C).
- The mouse cursor hides after `CURSOR_HIDE_S` without mouse movement.
- Screen blanking is inhibited, best effort: the freedesktop ScreenSaver D-Bus `Inhibit` call on
  the session bus (GNOME, KDE, Xfce and most desktops offer it; released at exit), else
  `xset s off -dpms` on X11 (not restored at exit: a booth PC is set up for the booth). What was
  used, or that nothing could be, goes to the log.
- After `idle_s` without any input, automatic mode starts on its own, so the booth never shows
  a still screen.
- While the server cannot be reached, a large status line over the photos says so and counts the
  reconnection attempts (the task retries forever, backing off); it goes when answers return.

Time is read from `clock` and checked on a `TICK_MS` timer, so tests drive it with a fake clock.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QKeyCombination, QObject, Qt, QTimer
from PySide6.QtGui import QCursor, QFont, QGuiApplication, QKeyEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import QApplication, QLabel

from flowerdemo.ui.inference_task import TaskState

if TYPE_CHECKING:
    from flowerdemo.ui.main_window import MainWindow

log = logging.getLogger(__name__)

EXIT_CHORD = "Ctrl+Alt+Shift+Q"
PANEL_SHARE = 0.28
"""The live panel's share of the screen's width in kiosk mode."""
CURSOR_HIDE_S = 3.0
TICK_MS = 500

_INPUT_EVENTS = frozenset(
    {
        QEvent.Type.KeyPress,
        QEvent.Type.MouseButtonPress,
        QEvent.Type.MouseButtonDblClick,
        QEvent.Type.MouseMove,
        QEvent.Type.Wheel,
        QEvent.Type.TouchBegin,
        QEvent.Type.TouchUpdate,
        QEvent.Type.TabletPress,
    }
)
_POINTER_EVENTS = frozenset(
    {
        QEvent.Type.MouseMove,
        QEvent.Type.MouseButtonPress,
        QEvent.Type.MouseButtonDblClick,
        QEvent.Type.Wheel,
    }
)
_DISCONNECTED_STATES = (TaskState.WAITING, TaskState.UNREACHABLE)


REFERENCE_HEIGHT = 1080
"""The screen height the window's text sizes are made for: taller screens scale them up."""


def font_scale_for(screen_height: int) -> float:
    """How much larger the kiosk's text is on a screen `screen_height` logical pixels tall: a 4K
    booth screen without desktop scaling (2160 logical pixels) doubles it, so it reads from the
    same distance as on a 1080p one."""
    return max(1.0, screen_height / REFERENCE_HEIGHT)


def scale_font_to_screen(app: QGuiApplication) -> float:
    """Scale the application's font for its primary screen, before the window is made (its
    widgets derive their fonts from it); the factor used."""
    screen = app.primaryScreen()
    factor = font_scale_for(screen.geometry().height()) if screen is not None else 1.0
    if factor > 1.0:
        font = app.font()
        font.setPointSizeF(font.pointSizeF() * factor)
        app.setFont(font)
    return factor


def is_blocked_key(event: QKeyEvent) -> bool:
    """Keys that would leave the kiosk: Esc, Ctrl+Q (Quit) and F11 (leave full screen)."""
    key = event.key()
    modifiers = event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier
    if key in (Qt.Key.Key_Escape, Qt.Key.Key_F11):
        return True
    combined = QKeySequence(QKeyCombination(modifiers, Qt.Key(key)))
    return any(
        combined.matches(quit_key) == QKeySequence.SequenceMatch.ExactMatch
        for quit_key in QKeySequence.keyBindings(QKeySequence.StandardKey.Quit)
    )


class ScreenBlankingInhibitor:
    """Keeps the screen on while the kiosk runs, best effort; `method` says how (or why not)."""

    def __init__(self) -> None:
        self.method = "not inhibited"
        self._cookie: int | None = None
        self._interface: object | None = None

    def inhibit(self) -> str:
        if self._inhibit_dbus():
            return self.method
        xset = shutil.which("xset")
        if xset is not None and os.environ.get("DISPLAY"):
            try:
                done = subprocess.run(
                    [xset, "s", "off", "-dpms"], capture_output=True, text=True, timeout=5
                )
            except (OSError, subprocess.SubprocessError) as error:
                self.method = f"not inhibited (xset failed: {error})"
                return self.method
            if done.returncode == 0:
                self.method = "xset s off -dpms (X11 screen saver and power saving off)"
                return self.method
            self.method = f"not inhibited (xset: {done.stderr.strip() or done.returncode})"
            return self.method
        self.method = "not inhibited (no session D-Bus ScreenSaver service, no xset on X11)"
        return self.method

    def _inhibit_dbus(self) -> bool:
        try:
            from PySide6.QtDBus import QDBusConnection, QDBusInterface, QDBusMessage
        except ImportError:
            return False
        bus = QDBusConnection.sessionBus()
        if not bus.isConnected():
            return False
        interface = QDBusInterface(
            "org.freedesktop.ScreenSaver",
            "/org/freedesktop/ScreenSaver",
            "org.freedesktop.ScreenSaver",
            bus,
        )
        if not interface.isValid():
            return False
        reply = interface.call("Inhibit", "flowerdemo", "kiosk mode: an unattended booth screen")
        arguments = reply.arguments()
        if reply.type() != QDBusMessage.MessageType.ReplyMessage or not arguments:
            return False
        self._cookie = int(arguments[0])
        self._interface = interface
        self.method = "org.freedesktop.ScreenSaver.Inhibit on the session bus"
        return True

    def release(self) -> None:
        interface, cookie = self._interface, self._cookie
        self._interface, self._cookie = None, None
        if interface is not None and cookie is not None:
            interface.call("UnInhibit", cookie)  # type: ignore[attr-defined]


class KioskMode(QObject):
    """Turns a MainWindow into an unattended booth screen (see the module's description)."""

    def __init__(
        self,
        window: MainWindow,
        *,
        idle_s: float,
        cursor_hide_s: float = CURSOR_HIDE_S,
        clock: Callable[[], float] = time.monotonic,
        inhibitor: ScreenBlankingInhibitor | None = None,
    ) -> None:
        super().__init__(window)
        self.window = window
        self.idle_s = idle_s
        self.cursor_hide_s = cursor_hide_s
        self._clock = clock
        self._last_input = clock()
        self._last_pointer = clock()
        self._cursor_hidden = False
        self._fell_back = False
        self._ending = False
        self._reconnect_attempts = 0
        self._handle: QObject | None = None
        self.fallbacks = 0
        """How many times automatic mode was started for lack of input."""
        self.inhibitor = inhibitor or ScreenBlankingInhibitor()
        self.status = QLabel(window.grid.viewport())
        self.status.setObjectName("kioskStatus")
        self.status.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.status.setWordWrap(True)
        self.status.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.status.setStyleSheet(
            "background: rgba(150, 30, 30, 225); color: white; border-radius: 12px; padding: 16px;"
        )
        self.status.hide()
        self._timer = QTimer(self)
        self._timer.setInterval(TICK_MS)
        self._timer.timeout.connect(self.tick)
        self._exit_shortcut = QShortcut(QKeySequence(EXIT_CHORD), window)
        self._exit_shortcut.setContext(Qt.ShortcutContext.ApplicationShortcut)
        self._exit_shortcut.activated.connect(self.end)

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        app = QApplication.instance()
        if app is not None:
            app.installEventFilter(self)
        self.window.sig_closed.connect(self._detach)
        self.window.task.sig_state_changed.connect(self._on_state)
        self.window.task.sig_retrying.connect(self._on_retrying)
        self._fill_screen()
        # The live panel keeps its share of the screen, whatever its size and the text's scale
        # (a desktop run's divider, in pixels, would squeeze it on a 4K screen).
        width = self.window.screen().geometry().width()
        panel = round(width * PANEL_SHARE)
        self.window.splitter.setSizes([width - panel, panel])
        self._handle = self.window.windowHandle()
        method = self.inhibitor.inhibit()
        log.info(
            "Kiosk mode: %s ends it; automatic mode after %g min without input; "
            "screen blanking: %s",
            EXIT_CHORD,
            self.idle_s / 60,
            method,
        )
        self._timer.start()

    def end(self) -> None:
        """Leave the kiosk: the window shuts down the usual way."""
        if self._ending:
            return
        self._ending = True
        self._detach()
        self.window.close()

    def _detach(self) -> None:
        """Stop watching the application's input (the window closes or the kiosk ends)."""
        self._timer.stop()
        self._show_cursor()
        self.inhibitor.release()
        app = QApplication.instance()
        if app is not None:
            app.removeEventFilter(self)

    @property
    def cursor_hidden(self) -> bool:
        return self._cursor_hidden

    # -- input --------------------------------------------------------------------------
    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        kind = event.type()
        if kind == QEvent.Type.Close and watched in (self.window, self._handle):
            # Qt delivers every close of a top-level window (the window manager's, and
            # QWidget.close() too) through its QWindow: only end() lets one through.
            if not self._ending:
                # The window manager's close (Alt+F4, a title bar): not at a booth.
                event.ignore()
                return True
            return False
        if kind in (QEvent.Type.ShortcutOverride, QEvent.Type.KeyPress) and isinstance(
            event, QKeyEvent
        ):
            if kind == QEvent.Type.KeyPress:
                self._note_input(pointer=False)
            if is_blocked_key(event):
                # Accepting the override stops the window's shortcut; the key press then
                # arrives here as well and goes no further.
                event.accept()
                return True
            return False
        if kind in _INPUT_EVENTS:
            self._note_input(pointer=kind in _POINTER_EVENTS)
        return False

    def _note_input(self, *, pointer: bool) -> None:
        now = self._clock()
        self._last_input = now
        self._fell_back = False
        if pointer:
            self._last_pointer = now
            self._show_cursor()

    # -- the clock ----------------------------------------------------------------------
    def tick(self) -> None:
        """Hide an idle cursor, fall back to automatic mode, keep full screen (every TICK_MS)."""
        if self._ending:
            return
        now = self._clock()
        if not self._cursor_hidden and now - self._last_pointer >= self.cursor_hide_s:
            QGuiApplication.setOverrideCursor(QCursor(Qt.CursorShape.BlankCursor))
            self._cursor_hidden = True
        if not self._fell_back and now - self._last_input >= self.idle_s:
            self._fell_back = True
            self._fall_back_to_automatic()
        self._fill_screen()

    def _fill_screen(self) -> None:
        """Full screen, also on an X server without a window manager (a bare kiosk session),
        where the full-screen request alone changes nothing."""
        window = self.window
        if not window.isFullScreen():
            window.showFullScreen()
        screen = window.screen().geometry()
        if window.geometry() != screen:
            window.setGeometry(screen)

    def _fall_back_to_automatic(self) -> None:
        window = self.window
        if window.task.running_auto and window.controls.mode == "auto":
            return
        self.fallbacks += 1
        log.info("Kiosk: no input for %g min, automatic mode resumes on its own", self.idle_s / 60)
        # The same path as the Start button: the mode switches and the task starts (at once,
        # or as soon as the server answers again).
        window.controls.set_mode("auto")
        if window.controls.run_button.isChecked():
            window.task.start_auto(window.controls.concurrency_spin.value())
        else:
            window.controls.run_button.setChecked(True)

    def _show_cursor(self) -> None:
        if self._cursor_hidden:
            QGuiApplication.restoreOverrideCursor()
            self._cursor_hidden = False

    # -- the server going away ----------------------------------------------------------
    def _on_retrying(self, attempts: int, delay_s: float) -> None:
        self._reconnect_attempts = attempts
        self._show_status()

    def _on_state(self, state: TaskState) -> None:
        if state in _DISCONNECTED_STATES:
            self._show_status()
        elif state is TaskState.CONNECTED:
            self._reconnect_attempts = 0
            self.status.hide()

    def _show_status(self) -> None:
        task = self.window.task
        if task.state not in _DISCONNECTED_STATES:
            return
        where = self.window.controls.url_edit.text() or "the server"
        attempts = self._reconnect_attempts
        text = f"The server at {where} cannot be reached. Reconnecting"
        if attempts:
            text += f" (attempt {attempts + 1})"
        text += "…"
        self.status.setText(text)
        font = QFont(self.status.font())
        viewport = self.window.grid.viewport().rect()
        font.setPixelSize(max(18, viewport.height() // 22))
        font.setBold(True)
        self.status.setFont(font)
        self.status.setFixedWidth(max(200, viewport.width() * 3 // 4))
        self.status.adjustSize()
        self.status.move(viewport.center().x() - self.status.width() // 2, viewport.height() // 8)
        self.status.show()
        self.status.raise_()
        # One message, not two: the window's own "Waiting for the server…" gives way.
        self.window.show_overlay(None)
