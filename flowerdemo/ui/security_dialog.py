"""The connection's security: TLS certificates and request headers, as on the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from flowerdemo.core.engine import TlsOptions
from flowerdemo.options import header_problem


@dataclass(frozen=True)
class ConnectionSecurity:
    """TLS (None: plain unless the address says https://) and headers sent with every call."""

    tls: TlsOptions | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        parts = []
        if self.tls is not None:
            parts.append("TLS")
        if self.headers:
            parts.append(f"{len(self.headers)} header{'s' if len(self.headers) > 1 else ''}")
        return ", ".join(parts) or "plain"


def parse_security(
    use_tls: bool, root: str, key: str, chain: str, header_lines: str
) -> ConnectionSecurity:
    """The dialog's fields as a ConnectionSecurity; ValueError with one sentence otherwise."""
    paths: list[Path | None] = []
    for what, text in (
        ("CA certificates", root),
        ("client key", key),
        ("client certificate", chain),
    ):
        text = text.strip()
        if text and not Path(text).is_file():
            raise ValueError(f"The {what} file {text} does not exist.")
        paths.append(Path(text) if text else None)
    if (paths[1] is None) != (paths[2] is None):
        raise ValueError("A client certificate needs both its key and its certificate file.")
    headers = []
    for line in header_lines.splitlines():
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        problem = header_problem(name.strip(), value.strip()) if sep else None
        if not sep or problem:
            raise ValueError(
                problem or f"Write each header as 'Name: value', not '{line.strip()}'."
            )
        headers.append((name.strip(), value.strip()))
    use_tls = use_tls or any(path is not None for path in paths)
    return ConnectionSecurity(TlsOptions(*paths) if use_tls else None, tuple(headers))


class SecurityDialog(QDialog):
    """TLS on or off, the CA and client certificate files, and headers (one 'Name: value' a line)."""

    def __init__(self, security: ConnectionSecurity, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Connection security")
        tls = security.tls
        self.tls_box = QCheckBox("Use TLS (also implied by an https:// address)", self)
        self.tls_box.setChecked(tls is not None)
        self.root_edit = self._path_edit(tls.root_certificates if tls else None)
        self.key_edit = self._path_edit(tls.private_key if tls else None)
        self.chain_edit = self._path_edit(tls.certificate_chain if tls else None)
        self.headers_edit = QPlainTextEdit(self)
        self.headers_edit.setPlaceholderText("Authorization: Bearer ...")
        self.headers_edit.setPlainText("\n".join(f"{n}: {v}" for n, v in security.headers))
        self.error_label = QLabel("", self)
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #c62828")
        form = QFormLayout()
        form.addRow(self.tls_box)
        form.addRow("CA certificates", self._with_browse(self.root_edit))
        form.addRow("Client key", self._with_browse(self.key_edit))
        form.addRow("Client certificate", self._with_browse(self.chain_edit))
        form.addRow("Headers", self.headers_edit)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.error_label)
        layout.addWidget(buttons)
        self._result = security

    def _path_edit(self, path: Path | None) -> QLineEdit:
        edit = QLineEdit(str(path) if path else "", self)
        edit.setPlaceholderText("PEM file (empty: none)")
        return edit

    def _with_browse(self, edit: QLineEdit) -> QWidget:
        holder = QWidget(self)
        row = QHBoxLayout(holder)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(edit, 1)
        button = QPushButton("Browse…", holder)
        button.clicked.connect(lambda: self._browse(edit))
        row.addWidget(button)
        return holder

    def _browse(self, edit: QLineEdit) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "PEM file", edit.text(), "PEM (*.pem *.crt *.key);;All (*)"
        )
        if path:
            edit.setText(path)

    def security(self) -> ConnectionSecurity:
        """What was accepted (the settings passed in, if the dialog was cancelled)."""
        return self._result

    def accept(self) -> None:
        try:
            self._result = parse_security(
                self.tls_box.isChecked(),
                self.root_edit.text(),
                self.key_edit.text(),
                self.chain_edit.text(),
                self.headers_edit.toPlainText(),
            )
        except ValueError as error:
            self.error_label.setText(str(error))
            return
        super().accept()
