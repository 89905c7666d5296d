"""The operator's controls: which server and model, how requests are sent, and the budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from flowerdemo.core.engine import PROTOCOLS, TlsOptions
from flowerdemo.ui.security_dialog import ConnectionSecurity, SecurityDialog

MODES = ("interactive", "auto")
MAX_CONCURRENCY = 256
MAX_TOPK = 10

_MODE_TITLES = {
    "interactive": "Interactive: click a photo",
    "auto": "Automatic: keep N requests outstanding",
}


@dataclass(frozen=True)
class ConnectionChoice:
    """What a (re)connection uses: the server, the model and the shape of each request."""

    url: str
    protocol: str
    model: str
    topk: int
    batch_size: int
    tls: TlsOptions | None = None
    headers: tuple[tuple[str, str], ...] = ()


class ControlPanel(QWidget):
    """Server, protocol, model, mode, concurrency, top-k, batch size, budget, start/stop."""

    sig_connect_requested = Signal()
    """Connect (or reconnect) with the server, protocol, model, top-k and batch size shown."""
    sig_request_shape_changed = Signal()
    """Top-k or batch size changed: the connection must be remade to apply them."""
    sig_protocol_changed = Signal(str)
    """The protocol choice changed (before any reconnection)."""
    sig_mode_changed = Signal(str)
    """The mode changed: 'interactive' or 'auto'."""
    sig_run_toggled = Signal(bool)
    """Start (True) or stop (False) automatic mode."""
    sig_concurrency_changed = Signal(int)
    """Requests to keep outstanding in automatic mode."""
    sig_open_photos = Signal()
    """The operator asked to open a folder of photos."""
    sig_budget_changed = Signal(float)
    """The latency budget, in milliseconds."""
    sig_autoscale_toggled = Signal(bool)
    """Hold the budget by adding and removing local instances (True) or stop doing so (False)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.url_edit = QLineEdit(self)
        self.url_edit.setPlaceholderText("HOST:PORT (empty: local stack)")
        self.url_edit.setToolTip(
            "The gRPC or HTTP address of the server or load balancer, e.g. host:50050"
        )
        self.url_edit.returnPressed.connect(self.sig_connect_requested)
        self.protocol_box = QComboBox(self)
        self.protocol_box.addItems(list(PROTOCOLS))
        self.protocol_box.currentTextChanged.connect(self.sig_protocol_changed)
        self.model_box = QComboBox(self)
        self.model_box.setEditable(True)
        self.model_box.setToolTip("Models in the server's repository; type another name if needed")
        self.model_box.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.connect_button = QPushButton("Connect", self)
        self.connect_button.setToolTip(
            "Connect with these settings (Enter in the address does too)"
        )
        self.connect_button.clicked.connect(self.sig_connect_requested)
        self._security = ConnectionSecurity()
        self.photos_button = QPushButton("Photos…", self)
        self.photos_button.setToolTip(
            "Open a folder of your own photos (Ctrl+O); photos and folders can also be "
            "dropped onto the grid"
        )
        self.photos_button.clicked.connect(self.sig_open_photos)
        self.security_button = QPushButton("Security…", self)
        self.security_button.setToolTip("TLS certificates and request headers for the connection")
        self.security_button.clicked.connect(self._edit_security)

        self.mode_box = QComboBox(self)
        for mode in MODES:
            self.mode_box.addItem(_MODE_TITLES[mode], mode)
        self.mode_box.currentIndexChanged.connect(
            lambda _index: self.sig_mode_changed.emit(self.mode)
        )
        self.concurrency_spin = _spin(1, MAX_CONCURRENCY, 8, self)
        self.concurrency_spin.setToolTip("Requests kept outstanding in automatic mode (1-256)")
        self.concurrency_spin.valueChanged.connect(self.sig_concurrency_changed)
        self.topk_spin = _spin(1, MAX_TOPK, 3, self)
        self.topk_spin.setToolTip("Labels shown per photo")
        self.topk_spin.valueChanged.connect(lambda _value: self.sig_request_shape_changed.emit())
        self.batch_spin = _spin(1, 256, 1, self)
        self.batch_spin.setToolTip("Photos per request (up to the model's max batch size)")
        self.batch_spin.valueChanged.connect(lambda _value: self.sig_request_shape_changed.emit())
        self.budget_spin = QDoubleSpinBox(self)
        self.budget_spin.setRange(1.0, 60_000.0)
        self.budget_spin.setDecimals(0)
        self.budget_spin.setSingleStep(5.0)
        self.budget_spin.setSuffix(" ms")
        self.budget_spin.setValue(50.0)
        self.budget_spin.setToolTip("Latency budget: the charts show it as a line")
        self.budget_spin.setKeyboardTracking(False)
        self.budget_spin.valueChanged.connect(self.sig_budget_changed)
        self.autoscale_box = QCheckBox("Autoscale", self)
        self.autoscale_box.setToolTip(
            "Add a local instance when the latency stays over the budget, remove one when one "
            "fewer would still fit (local stack only)"
        )
        self.autoscale_box.toggled.connect(self.sig_autoscale_toggled)
        self.autoscale_box.setEnabled(False)
        self.run_button = QPushButton("Start", self)
        self.run_button.setCheckable(True)
        big = QFont(self.run_button.font())
        big.setPointSizeF(big.pointSizeF() * 1.3)
        big.setBold(True)
        self.run_button.setFont(big)
        self.run_button.toggled.connect(self._on_run_toggled)

        # Two rows across the top of the window, so the photo grid keeps the full height below.
        server_row = QHBoxLayout()
        request_row = QHBoxLayout()
        for row, fields, button in (
            (
                server_row,
                (
                    ("Server", self.url_edit, 3),
                    ("Protocol", self.protocol_box, 0),
                    ("Model", self.model_box, 2),
                ),
                self.connect_button,
            ),
            (
                request_row,
                (
                    ("Mode", self.mode_box, 3),
                    ("Concurrency N", self.concurrency_spin, 0),
                    ("Top-k", self.topk_spin, 0),
                    ("Batch", self.batch_spin, 0),
                    ("Budget", self.budget_spin, 0),
                ),
                self.run_button,
            ),
        ):
            row.setSpacing(6)
            for caption, widget, stretch in fields:
                label = QLabel(caption, self)
                label.setBuddy(widget)
                row.addSpacing(6)
                row.addWidget(label)
                row.addWidget(widget, stretch)
            if row is request_row:
                row.addSpacing(6)
                row.addWidget(self.autoscale_box)
            row.addSpacing(10)
            if row is server_row:
                row.addWidget(self.photos_button)
                row.addWidget(self.security_button)
            row.addWidget(button)
        self.run_button.setMinimumWidth(140)
        self.connect_button.setMinimumWidth(140)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addLayout(server_row)
        layout.addLayout(request_row)
        self.set_connected(False)

    # -- reading ------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return str(self.mode_box.currentData())

    def connection_choice(self) -> ConnectionChoice:
        return ConnectionChoice(
            url=self.url_edit.text().strip(),
            protocol=self.protocol_box.currentText(),
            model=self.model_box.currentText().strip(),
            topk=self.topk_spin.value(),
            batch_size=self.batch_spin.value(),
            tls=self._security.tls,
            headers=self._security.headers,
        )

    def set_security(self, security: ConnectionSecurity) -> None:
        """TLS and headers for the next connection (the command line's, at first)."""
        self._security = security
        self.security_button.setText(
            "Security…" if security == ConnectionSecurity() else f"Security: {security.describe()}"
        )

    def _edit_security(self) -> None:
        dialog = SecurityDialog(self._security, self)
        if dialog.exec():
            self.set_security(dialog.security())

    # -- writing (without echoing the change back as a user action) -----------------------
    def set_values(
        self,
        *,
        url: str,
        protocol: str,
        model: str,
        mode: str,
        concurrency: int,
        topk: int,
        batch_size: int,
        budget_ms: float,
    ) -> None:
        widgets = (
            self.url_edit,
            self.protocol_box,
            self.model_box,
            self.mode_box,
            self.concurrency_spin,
            self.topk_spin,
            self.batch_spin,
            self.budget_spin,
        )
        for widget in widgets:
            widget.blockSignals(True)
        try:
            self.url_edit.setText(url)
            self.protocol_box.setCurrentText(protocol)
            self.model_box.setEditText(model)
            self.mode_box.setCurrentIndex(max(0, self.mode_box.findData(mode)))
            self.concurrency_spin.setValue(concurrency)
            self.topk_spin.setValue(topk)
            self.batch_spin.setValue(batch_size)
            self.budget_spin.setValue(budget_ms)
        finally:
            for widget in widgets:
                widget.blockSignals(False)

    def set_url(self, url: str) -> None:
        self.url_edit.setText(url)

    def set_mode(self, mode: str) -> None:
        """Select `mode` as if the operator had (sig_mode_changed follows)."""
        self.mode_box.setCurrentIndex(max(0, self.mode_box.findData(mode)))

    def set_models(self, names: Sequence[str]) -> None:
        current = self.model_box.currentText()
        self.model_box.blockSignals(True)
        self.model_box.clear()
        self.model_box.addItems(list(names))
        self.model_box.setEditText(current)
        self.model_box.blockSignals(False)

    def set_batch_limit(self, max_batch_size: int) -> None:
        """The model's max batch size (0: no batching) bounds the batch size control."""
        self.batch_spin.setMaximum(max(1, max_batch_size))

    def set_connected(self, connected: bool) -> None:
        self.run_button.setEnabled(connected)

    def set_busy(self, busy: bool) -> None:
        """While connecting or starting servers, the connection settings cannot be applied."""
        self.connect_button.setEnabled(not busy)

    def set_autoscale_available(self, available: bool) -> None:
        """Autoscale can be switched on only with a local stack to scale."""
        self.autoscale_box.setEnabled(available)

    def set_autoscale(self, on: bool) -> None:
        """Show autoscale on or off without echoing it as the operator's choice."""
        self.autoscale_box.blockSignals(True)
        self.autoscale_box.setChecked(on)
        self.autoscale_box.blockSignals(False)

    def set_running(self, running: bool) -> None:
        self.run_button.blockSignals(True)
        self.run_button.setChecked(running)
        self.run_button.setText("Stop" if running else "Start")
        self.run_button.blockSignals(False)

    def _on_run_toggled(self, checked: bool) -> None:
        self.run_button.setText("Stop" if checked else "Start")
        if checked and self.mode != "auto":
            self.set_mode("auto")
        self.sig_run_toggled.emit(checked)


def _spin(low: int, high: int, value: int, parent: QWidget) -> QSpinBox:
    spin = QSpinBox(parent)
    spin.setRange(low, high)
    spin.setValue(value)
    spin.setKeyboardTracking(False)
    spin.setAlignment(Qt.AlignmentFlag.AlignRight)
    return spin
