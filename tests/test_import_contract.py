"""The layering of docs/ARCHITECTURE.md: core and serving stay Qt-free; the UI never speaks gRPC itself."""

from __future__ import annotations

import ast
from pathlib import Path

import flowerdemo

PACKAGE = Path(flowerdemo.__file__).parent

FORBIDDEN = {
    "core": ("PySide6", "pyqtgraph", "qasync", "flowerdemo.ui", "flowerdemo.serving"),
    "serving": ("PySide6", "pyqtgraph", "qasync", "flowerdemo.ui"),
    "ui": ("tritonclient", "grpc"),
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_layers_import_only_what_they_may():
    violations = []
    checked = 0
    for layer, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            checked += 1
            for module in imported_modules(path):
                if any(module == f or module.startswith(f + ".") for f in forbidden):
                    violations.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
    assert checked >= 5, "the layer folders were not found"
    assert violations == []


def test_the_contract_check_sees_a_violation(tmp_path):
    offending = tmp_path / "widget.py"
    offending.write_text(
        "import tritonclient.grpc.aio as aio\nfrom PySide6.QtCore import QObject\n"
    )
    assert {"tritonclient.grpc.aio", "PySide6.QtCore"} <= imported_modules(offending)
