"""Where problems go: a one-line banner over the window and a log panel. Never a dialog.

A server that goes away makes hundreds of requests fail within a second. The banner shows the
latest problem once with a repeat count, and the log coalesces repeats, so an outage reads as
one line that counts up instead of a storm.
"""

from __future__ import annotations

import enum
import logging
import time

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QFont, QTextCursor
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QSizePolicy,
    QToolButton,
    QWidget,
)


class Severity(str, enum.Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


_BANNER_STYLE = {
    Severity.INFO: ("#0d47a1", "#e3f2fd"),
    Severity.WARNING: ("#8a5a00", "#fff8e1"),
    Severity.ERROR: ("#b71c1c", "#ffebee"),
}

INFO_BANNER_MS = 6000
"""How long a good-news banner (reconnected, started) stays before it hides itself."""


class Banner(QFrame):
    """A non-modal strip across the top of the window showing the latest problem."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("banner")
        self._severity = Severity.INFO
        self._message = ""
        self._repeats = 0
        self._label = QLabel(self)
        self._label.setWordWrap(True)
        self._label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        font = QFont(self._label.font())
        font.setPointSizeF(font.pointSizeF() * 1.15)
        font.setBold(True)
        self._label.setFont(font)
        close = QToolButton(self)
        close.setText("✕")
        close.setToolTip("Hide this message (it stays in the log)")
        close.setAutoRaise(True)
        close.clicked.connect(self.dismiss)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 6, 6, 6)
        layout.addWidget(self._label)
        layout.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        self._hide_timer = QTimer(self)
        self._hide_timer.setSingleShot(True)
        self._hide_timer.timeout.connect(self._expire)
        self.hide()

    @property
    def message(self) -> str:
        return "" if self.isHidden() else self._message

    @property
    def severity(self) -> Severity:
        return self._severity

    def show_message(self, severity: Severity, message: str, repeats: int = 1) -> None:
        """Show `message`; the same message again only raises its count."""
        if message == self._message and severity == self._severity and not self.isHidden():
            self._repeats += repeats
        else:
            self._message, self._severity, self._repeats = message, severity, repeats
        # Good news never hides a standing problem for long; problems stay until dismissed or solved.
        if severity is Severity.INFO:
            self._hide_timer.start(INFO_BANNER_MS)
        else:
            self._hide_timer.stop()
        text = message if self._repeats <= 1 else f"{message}  (×{self._repeats})"
        self._label.setText(text)
        background, foreground = _BANNER_STYLE[severity]
        self.setStyleSheet(
            f"QFrame#banner {{ background: {background}; border-radius: 4px; }}"
            f"QFrame#banner QLabel, QFrame#banner QToolButton {{ color: {foreground}; }}"
        )
        self.show()

    def clear_if(self, severity: Severity) -> None:
        """Hide the banner if it shows a problem of this severity (it has been solved)."""
        if self._severity is severity:
            self._expire()

    def dismiss(self) -> None:
        self._expire()

    def _expire(self) -> None:
        self._hide_timer.stop()
        self._message, self._repeats = "", 0
        self.hide()


class LogPanel(QPlainTextEdit):
    """Timestamped messages, newest last; a repeat of the last line raises its count instead."""

    MAX_LINES = 2000

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setReadOnly(True)
        self.setMaximumBlockCount(self.MAX_LINES)
        self.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.setAccessibleName("Log")
        self._last_key: tuple[Severity, str] | None = None
        self._last_count = 0
        self._last_stamp = ""

    def add(self, severity: Severity, message: str, repeats: int = 1) -> None:
        key = (severity, message)
        if key == self._last_key:
            self._last_count += repeats
            cursor = QTextCursor(self.document())
            cursor.movePosition(QTextCursor.MoveOperation.End)
            cursor.movePosition(
                QTextCursor.MoveOperation.StartOfBlock, QTextCursor.MoveMode.KeepAnchor
            )
            cursor.insertText(self._line(severity, message, self._last_count, self._last_stamp))
        else:
            self._last_key, self._last_count = key, repeats
            self._last_stamp = time.strftime("%H:%M:%S")
            self.appendPlainText(self._line(severity, message, repeats, self._last_stamp))
        self.verticalScrollBar().setValue(self.verticalScrollBar().maximum())

    @staticmethod
    def _line(severity: Severity, message: str, count: int, stamp: str) -> str:
        repeats = f"  (×{count})" if count > 1 else ""
        return f"{stamp}  {severity.value:<7}  {message}{repeats}"


class LogBridge(QObject):
    """A logging handler's way into the GUI thread: records become sig_record emissions."""

    sig_record = Signal(str, str)
    """A log record: severity value, message."""


class QtLogHandler(logging.Handler):
    """Sends the project's warnings and errors (from any thread) to the log panel."""

    def __init__(self, bridge: LogBridge, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self._bridge = bridge

    def emit(self, record: logging.LogRecord) -> None:
        try:
            severity = Severity.ERROR if record.levelno >= logging.ERROR else Severity.WARNING
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message = f"{message}: {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            # A queued signal: safe from worker threads, delivered in the GUI thread.
            self._bridge.sig_record.emit(severity.value, message)
        except RuntimeError:
            # The bridge is gone (the window closed): nothing left to show the record in.
            pass
