"""Fixtures shared by the whole suite.

Subsets
    A test is marked `stack` or `gui` by the fixtures it uses (STACK_FIXTURES, GUI_FIXTURES,
    through any chain of fixtures), so `make unit` (`-m "not stack and not gui"`) never starts a
    server or a QApplication. A test that starts a LocalStack without being a stack test fails
    with the reason; one that starts servers in a child process marks itself.

Ports
    `free_port()` and `free_port_block(span)` give ports on 127.0.0.1 that are free when asked
    (flowerdemo.serving.ports: chosen at random below Linux's ephemeral range, never the same
    block twice in one process), so parallel test runs on one machine do not collide.

Models and the local stack
    `served_model_dir` is the folder (`*.onnx` + `labels.txt`) the stack tests serve: the bundled
    model. `standin_model_dir` is a tiny ONNX model with the same contract, for the repository
    writer's own tests (its labels and shapes are easy to vary).
    `stack_settings(...)` builds StackSettings on free ports for that model.
    `local_stack` is one real stack (2 Triton instances behind Envoy on 127.0.0.1) shared by the
    whole session; tests that kill or restart instances start their own instead.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flowerdemo.resources import bundled_model_dir, labels_file
from flowerdemo.serving.ports import free_port_block as free_ports
from flowerdemo.serving.stack import LocalStack, StackSettings

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
NUM_CLASSES = 102

# ---- subsets: chosen from the fixtures a test uses -------------------------------------------
STACK_FIXTURES = frozenset(
    {"local_stack", "stack_settings", "validation_server", "hostile_server", "stack_url"}
)
"""Fixtures that start Triton or Envoy (or hand out what starts them): a test using any of them,
directly or through another fixture, is a `stack` test."""
GUI_FIXTURES = frozenset({"qtbot", "qapp", "qt_event_loop", "open_window"})
"""Fixtures that create Qt widgets or the QApplication: a `gui` test."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by the fixtures it uses (their whole closure), so `-m "not stack and not
    gui"` (make unit) never starts a server or a QApplication, without anyone remembering a
    marker. Tests that start servers another way (a `flowerdemo serve` child) mark themselves."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & STACK_FIXTURES:
            item.add_marker(pytest.mark.stack)
        if used & GUI_FIXTURES:
            item.add_marker(pytest.mark.gui)


@pytest.fixture(autouse=True)
def _cycles_freed_on_the_main_thread(request: pytest.FixtureRequest) -> Iterator[None]:
    """As in the app (flowerdemo/ui/gui_collector.py): while a GUI test runs, Python's cyclic
    collector never runs on its own, so a worker thread (photo decoding, gRPC, a stack's
    supervisor) cannot free a Qt object left in a reference cycle; the test's cycles are
    collected here, on the main thread, before and after it."""
    if request.node.get_closest_marker("gui") is None:
        yield
        return
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        if enabled:
            gc.enable()


@pytest.fixture(autouse=True)
def _servers_only_in_stack_tests(request: pytest.FixtureRequest, monkeypatch: Any) -> None:
    """A test outside the `stack` subset that starts a LocalStack fails at once with the reason,
    instead of quietly making `make unit` slow."""
    if request.node.get_closest_marker("stack") is not None:
        return

    def refuse(self: LocalStack) -> None:
        raise AssertionError(
            f"{request.node.nodeid} starts a local stack but is not a stack test: use the "
            "local_stack or stack_settings fixture, or mark it @pytest.mark.stack"
        )

    monkeypatch.setattr(LocalStack, "start", refuse)


# ---- ports -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def free_port_block() -> Callable[[int], int]:
    """`free_port_block(span)`: the first of `span` consecutive free ports."""
    return free_ports


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """`free_port()`: one free port."""
    return lambda: free_ports(1)


def write_standin_model(folder: Path, *, classes: int = NUM_CLASSES, seed: int = 0) -> Path:
    """A tiny ONNX classifier with the bundled model's contract, and labels.txt beside it.

    Input `input` float32 [N, 3, 224, 224], output `probabilities` float32 [N, classes]
    (softmax of a fixed linear map of the per-channel means): cheap enough for CPU tests.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = (rng.normal(size=(3, classes)) * 3).astype(np.float32)
    bias = rng.normal(size=(classes,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", [INPUT_NAME], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["means"], axis=1),
            helper.make_node("Gemm", ["means", "weights", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=1),
        ],
        "flowers_standin",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by any ONNX Runtime from 1.14 on
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "flowers.onnx"
    onnx.save(model, str(path))
    labels = labels_file().read_text(encoding="utf-8").splitlines()[:classes]
    labels += [f"class {k}" for k in range(len(labels), classes)]
    (folder / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def standin_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with the bundled model's contract: it classifies nothing useful, it only
    makes the repository writer's tests fast (see write_standin_model)."""
    folder = tmp_path_factory.mktemp("standin-model")
    write_standin_model(folder)
    return folder


@pytest.fixture(scope="session")
def served_model_dir() -> Path:
    """The bundled model: what the app serves is what the tests serve."""
    bundled = bundled_model_dir()
    missing = [name for name in ("flowers.onnx", "labels.txt") if not (bundled / name).is_file()]
    assert not missing, (
        f"the bundled model is incomplete: {', '.join(missing)} missing in {bundled}"
    )
    return bundled


@pytest.fixture(scope="session")
def stack_settings(served_model_dir: Path) -> Callable[..., StackSettings]:
    """`stack_settings(instances=2, **overrides)`: StackSettings on free ports for the served
    model (instance ports and Envoy's three listeners each picked at run time)."""

    def make(instances: int = 2, **overrides: Any) -> StackSettings:
        base_port = free_ports(10 * (instances - 1) + 3)
        envoy_first = free_ports(3)
        values: dict[str, Any] = {
            "instances": instances,
            "base_port": base_port,
            "listen": f"127.0.0.1:{envoy_first}",
            "http_listen": f"127.0.0.1:{envoy_first + 1}",
            "admin_listen": f"127.0.0.1:{envoy_first + 2}",
            "model": served_model_dir,
        }
        values.update(overrides)
        return StackSettings(**values)

    return make


@pytest.fixture(scope="session")
def local_stack(stack_settings: Callable[..., StackSettings]) -> Iterator[LocalStack]:
    """A started stack of 2 Triton instances behind Envoy, shared by the session.

    Do not stop or kill its instances (start a stack of your own for that); its gRPC address is
    `local_stack.grpc_url`, HTTP `local_stack.http_url`.
    """
    stack = LocalStack(stack_settings(2))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


# ---- GUI tests (pytest-qt) ---------------------------------------------------------------------
# Real widgets on Qt's offscreen platform: no display needed. Set before any QApplication exists.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture
def qt_event_loop(qapp: Any) -> Iterator[Any]:
    """An asyncio loop (qasync) on pytest-qt's QApplication. Its callbacks run whenever Qt
    processes events, so `qtbot.waitUntil(...)` drives both the widgets and the coroutines."""
    import asyncio

    import qasync
    from PySide6.QtCore import QTimer

    # As in the app: the window, not Qt, decides when to quit (after its async shutdown).
    quit_on_close = qapp.quitOnLastWindowClosed()
    qapp.setQuitOnLastWindowClosed(False)
    loop = qasync.QEventLoop(qapp, already_running=True)
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        loop.stop()
        loop.close()
        asyncio.events._set_running_loop(None)
        asyncio.set_event_loop(None)
        # qasync's stop() calls QApplication.exit() outside exec(), which leaves Qt's quit flag
        # set: every later local event loop (qtbot.wait) would return at once. A real exec()
        # clears it.
        QTimer.singleShot(0, qapp.quit)
        qapp.exec()
        qapp.setQuitOnLastWindowClosed(quit_on_close)


@pytest.fixture
def open_window(qtbot: Any, qt_event_loop: Any, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """`open_window(options, start=True, settings_file=None, **kwargs)`: a shown flowerdemo
    MainWindow with a settings file of its own, started on the qasync loop; after the test it is
    shut down the way the close button does it (requests cancelled, clients closed)."""
    from PySide6.QtCore import QSettings

    from flowerdemo.ui.main_window import MainWindow

    windows: list[MainWindow] = []

    def open_(
        options: Any,
        *,
        start: bool = True,
        settings_file: Path | None = None,
        size: tuple[int, int] = (1400, 900),
        **kwargs: Any,
    ) -> MainWindow:
        settings = QSettings(
            str(settings_file or tmp_path / "flowerdemo.ini"), QSettings.Format.IniFormat
        )
        window = MainWindow(options, settings, **kwargs)
        window.resize(*size)
        window.show()
        windows.append(window)
        if start:
            window.start()
        return window

    yield open_
    for window in windows:
        window.shutdown()
        qtbot.waitUntil(lambda w=window: w.is_shut_down, timeout=30_000)
        window.deleteLater()
