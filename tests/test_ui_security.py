"""The window's connection security: the dialog's fields become the TLS and headers of the next
connection, mistakes are named in the dialog, and the command line's choice shows at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowerdemo.core.engine import TlsOptions
from flowerdemo.ui.controls import ControlPanel
from flowerdemo.ui.security_dialog import ConnectionSecurity, SecurityDialog, parse_security

pytestmark = pytest.mark.gui


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    return path


def test_the_dialog_fields_become_the_connection_choice(qtbot, ca):
    panel = ControlPanel()
    qtbot.addWidget(panel)
    assert panel.connection_choice().tls is None and panel.security_button.text() == "Security…"
    dialog = SecurityDialog(ConnectionSecurity(), panel)
    qtbot.addWidget(dialog)
    dialog.root_edit.setText(str(ca))
    dialog.headers_edit.setPlainText("Authorization: Bearer t0ken\n\nx-booth: 7")
    dialog.accept()
    assert dialog.result() == SecurityDialog.DialogCode.Accepted
    panel.set_security(dialog.security())
    choice = panel.connection_choice()
    assert choice.tls == TlsOptions(root_certificates=ca)
    assert choice.headers == (("Authorization", "Bearer t0ken"), ("x-booth", "7"))
    assert panel.security_button.text() == "Security: TLS, 2 headers"


def test_a_mistake_is_named_in_the_dialog_and_nothing_changes(qtbot, ca):
    before = ConnectionSecurity(TlsOptions(root_certificates=ca))
    dialog = SecurityDialog(before)
    qtbot.addWidget(dialog)
    dialog.show()
    assert dialog.root_edit.text() == str(ca) and dialog.tls_box.isChecked()
    dialog.headers_edit.setPlainText("no colon")
    dialog.accept()
    assert "Name: value" in dialog.error_label.text()
    assert dialog.isVisible() and dialog.security() == before


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((False, "/no/such.pem", "", "", ""), "does not exist"),
        ((True, "", __file__, "", ""), "needs both its key and its certificate"),
        ((False, "", "", "", "grpc-status: 0"), "set by the protocol itself"),
    ],
)
def test_parse_security_refuses_what_cannot_work(fields, message):
    with pytest.raises(ValueError, match=message):
        parse_security(*fields)


def test_a_certificate_alone_implies_tls_and_nothing_means_plain(ca):
    assert parse_security(False, str(ca), "", "", "").tls == TlsOptions(root_certificates=ca)
    assert parse_security(False, "", "", "", "  \n") == ConnectionSecurity()
