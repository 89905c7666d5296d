"""`flowerdemo` without --headless: the Qt application on a qasync event loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import types
from collections.abc import Callable

import qasync
from PySide6.QtCore import QMessageLogContext, QSettings, QtMsgType, qInstallMessageHandler
from PySide6.QtGui import QColor, QIcon, QPalette
from PySide6.QtWidgets import QApplication

from flowerdemo.options import RunOptions
from flowerdemo.resources import assets_dir
from flowerdemo.ui.gui_collector import GuiThreadCollector

ORGANIZATION = "flowerdemo"
APPLICATION = "flowerdemo"
DESKTOP_FILE = "org.flowerdemo.FlowerDemo"
DISPLAY_LOST_EXIT = 1
"""The exit status when the display goes away under the window: the run ended early."""

log = logging.getLogger("flowerdemo.ui")


def make_application(argv: list[str] | None = None) -> QApplication:
    """The QApplication with the project's names, icon and booth theme (reused if one exists)."""
    existing = QApplication.instance()
    app = existing if isinstance(existing, QApplication) else QApplication(argv or sys.argv[:1])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName("Flower demo")
    app.setDesktopFileName(DESKTOP_FILE)
    icon = assets_dir() / "icons" / "flowerdemo.svg"
    if icon.is_file():
        app.setWindowIcon(QIcon(str(icon)))
    apply_booth_theme(app)
    return app


def apply_booth_theme(app: QApplication) -> None:
    """Fusion with a dark palette: photos and the red/green marks stand out under booth lights."""
    app.setStyle("Fusion")
    palette = QPalette()
    colors = {
        QPalette.ColorRole.Window: "#1e2227",
        QPalette.ColorRole.WindowText: "#e8e8e8",
        QPalette.ColorRole.Base: "#15191d",
        QPalette.ColorRole.AlternateBase: "#242a30",
        QPalette.ColorRole.ToolTipBase: "#2b3138",
        QPalette.ColorRole.ToolTipText: "#f0f0f0",
        QPalette.ColorRole.Text: "#e8e8e8",
        QPalette.ColorRole.Button: "#2b3138",
        QPalette.ColorRole.ButtonText: "#f0f0f0",
        QPalette.ColorRole.BrightText: "#ff5252",
        QPalette.ColorRole.Link: "#4fc3f7",
        QPalette.ColorRole.Highlight: "#0288d1",
        QPalette.ColorRole.HighlightedText: "#ffffff",
        QPalette.ColorRole.PlaceholderText: "#8a939c",
    }
    for role, color in colors.items():
        palette.setColor(role, QColor(color))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6f777f"))
    app.setPalette(palette)


def route_qt_messages() -> None:
    """Qt's own messages go to the project's log, not the terminal. Qt warnings are mostly
    platform chatter (offscreen, size hints); only critical and fatal ones reach the log panel."""
    qt_log = logging.getLogger("flowerdemo.qt")
    levels = {
        QtMsgType.QtDebugMsg: logging.DEBUG,
        QtMsgType.QtInfoMsg: logging.DEBUG,
        QtMsgType.QtWarningMsg: logging.DEBUG,
        QtMsgType.QtCriticalMsg: logging.WARNING,
        QtMsgType.QtFatalMsg: logging.ERROR,
    }

    def handler(kind: QtMsgType, _context: QMessageLogContext, message: str) -> None:
        qt_log.log(levels.get(kind, logging.DEBUG), "Qt: %s", message)

    qInstallMessageHandler(handler)


def log_unexpected_errors() -> Callable[..., None]:
    """Uncaught exceptions (in slots and qasync tasks) go to the log panel instead of ending
    the app. Returns the previous hook."""
    previous = sys.excepthook

    def hook(
        kind: type[BaseException], error: BaseException, trace: types.TracebackType | None
    ) -> None:
        if issubclass(kind, KeyboardInterrupt):
            previous(kind, error, trace)
            return
        log.error("unexpected error", exc_info=(kind, error, trace))

    sys.excepthook = hook
    return previous


def configure_logging() -> None:
    """Errors also reach the terminal, for whoever started the app from one; nothing else does."""
    project = logging.getLogger("flowerdemo")
    project.setLevel(logging.INFO)
    if not any(isinstance(h, logging.StreamHandler) for h in project.handlers):
        terminal = logging.StreamHandler()
        terminal.setLevel(logging.ERROR)
        terminal.setFormatter(logging.Formatter("flowerdemo: %(message)s"))
        project.addHandler(terminal)


def freeze_startup_objects() -> None:
    """Exempt everything alive after start-up (modules, widgets, photos) from garbage collection:
    a full collection would otherwise rescan it all and stall the event loop for ~50 ms."""
    gc.collect()
    gc.freeze()


async def _run_window(options: RunOptions) -> int:
    from flowerdemo.ui.main_window import MainWindow

    app = QApplication.instance()
    if options.kiosk and isinstance(app, QApplication):
        from flowerdemo.ui.kiosk import scale_font_to_screen

        scale_font_to_screen(app)
    window = MainWindow(options, QSettings())
    close: Callable[[], object] = window.close
    if options.kiosk:
        from flowerdemo.ui.kiosk import KioskMode

        kiosk = KioskMode(window, idle_s=options.idle_minutes * 60)
        kiosk.start()
        close = kiosk.end  # the kiosk refuses every other way of closing
    elif options.fullscreen:
        window.showFullScreen()
    else:
        window.show()
    # Ctrl+C in the terminal and SIGTERM (a service manager, `docker stop`) close the window the
    # same clean way as its close button (in kiosk mode, the kiosk's own end). The live panel's
    # timer runs Python code many times a second, so the handler runs promptly.
    previous = {
        number: signal.signal(number, lambda _number, _frame: close())
        for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        await asyncio.wait({window.start()})
        freeze_startup_objects()
        await window.wait_closed()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0


def run_app(options: RunOptions) -> int:
    """Open the window and run until it is closed; the exit status."""
    configure_logging()
    route_qt_messages()
    app = make_application()
    # The window decides when the app ends: after its asynchronous shutdown, not when it hides.
    app.setQuitOnLastWindowClosed(False)
    log_unexpected_errors()
    # Qt objects in reference cycles must be freed on the GUI thread (gui_collector says why).
    collector = GuiThreadCollector(app)
    collector.start()
    try:
        result: int = qasync.run(_run_window(options))
    except RuntimeError as error:
        # Qt ends its event loop on its own only when the display connection breaks (an X server
        # or a forwarded booth display going away): the window is gone, so say so plainly. The
        # local stack's watchdog stops its servers once this process exits.
        if "Event loop stopped before Future completed" not in str(error):
            raise
        print(
            "flowerdemo: the connection to the display was lost (the X server or Wayland "
            "compositor went away), so the window closed; a local stack this app started is "
            "stopped as it exits.",
            file=sys.stderr,
        )
        return DISPLAY_LOST_EXIT
    return result
