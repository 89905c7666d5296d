"""The window against the real local stack (Triton instances behind Envoy): grid, clicks, auto
mode, stop, the rendered picture, settings, and a server that is not there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt

from flowerdemo.options import RunOptions
from flowerdemo.resources import sample_images_dir
from flowerdemo.ui.inference_task import TaskState

pytestmark = [pytest.mark.gui]

SAMPLES = len(list(sample_images_dir().glob("*.jpg")))


def connected(qtbot, window, timeout_ms: int = 20_000) -> None:
    qtbot.waitUntil(lambda: window.task.state is TaskState.CONNECTED, timeout=timeout_ms)


def click_tile(qtbot, window, index: int) -> None:
    grid = window.grid
    qtbot.mouseClick(grid.viewport(), Qt.MouseButton.LeftButton, pos=grid.tile_rect(index).center())


@pytest.mark.stack
def test_window_shows_the_grid_of_samples(qtbot, open_window, local_stack):
    window = open_window(RunOptions(url=local_stack.grpc_url), size=(1920, 1080))
    connected(qtbot, window)

    grid = window.grid
    assert grid.count() == SAMPLES
    # On a full-HD screen every sample is on screen without scrolling, at a readable size.
    viewport = grid.viewport().rect()
    assert grid.tile_size() >= 96
    assert all(viewport.contains(grid.tile_rect(i)) for i in range(grid.count()))
    assert grid.verticalScrollBar().maximum() == 0
    assert grid.tile(0).photo.truth == 0
    assert grid.tile(0).photo.truth_label == "pink primrose"
    assert window.controls.url_edit.text() == local_stack.grpc_url
    assert "flowers" in window.live_panel.server_label.text()
    assert window.controls.run_button.isEnabled()
    assert not window.banner.isVisible()
    # The model chooser lists the server's repository.
    qtbot.waitUntil(lambda: window.controls.model_box.findText("flowers") >= 0, timeout=5_000)

    # F11 toggles full screen.
    qtbot.keyClick(window, Qt.Key.Key_F11)
    qtbot.waitUntil(window.isFullScreen, timeout=2_000)
    qtbot.keyClick(window, Qt.Key.Key_F11)
    qtbot.waitUntil(lambda: not window.isFullScreen(), timeout=2_000)


@pytest.mark.stack
def test_a_click_gets_labels_on_that_tile_and_many_quick_clicks_all_get_answered(
    qtbot, open_window, local_stack
):
    window = open_window(RunOptions(url=local_stack.grpc_url, topk=3))
    connected(qtbot, window)
    grid = window.grid

    click_tile(qtbot, window, 7)
    qtbot.waitUntil(lambda: grid.tile(7).answered, timeout=10_000)
    tile = grid.tile(7)
    assert len(tile.topk) == 3
    assert all(guess.label for guess in tile.topk)
    assert tile.topk[0].score >= tile.topk[1].score >= tile.topk[2].score
    assert tile.latency_ms is not None and tile.latency_ms > 0
    assert tile.correct in (True, False)  # the sample's name gives its truth
    assert tile.in_flight == 0
    assert not grid.tile(6).answered and not grid.tile(8).answered

    # Thirty clicks without waiting: each is its own request and each tile gets its answer.
    clicked = list(range(20, 50))
    for index in clicked:
        click_tile(qtbot, window, index)
    qtbot.waitUntil(lambda: all(grid.tile(i).answered for i in clicked), timeout=20_000)
    assert window.task.snapshot().answered == 1 + len(clicked)
    assert window.task.snapshot().failed == 0


@pytest.mark.stack
def test_auto_mode_keeps_n_in_flight_moves_counters_and_charts_and_stops(
    qtbot, open_window, local_stack, tmp_path
):
    # --mode auto: the window opens straight into automatic mode.
    window = open_window(
        RunOptions(url=local_stack.grpc_url, mode="auto", concurrency=8, budget_ms=50.0)
    )
    peak = {"in_flight": 0}

    def note_in_flight(_indices) -> None:
        peak["in_flight"] = max(peak["in_flight"], window.task.in_flight)

    window.task.sig_sent.connect(note_in_flight)
    connected(qtbot, window)
    assert window.controls.mode == "auto"
    qtbot.waitUntil(lambda: window.task.running_auto, timeout=5_000)
    assert window.controls.run_button.text() == "Stop"

    qtbot.waitUntil(lambda: window.task.snapshot().answered >= 200, timeout=30_000)
    assert peak["in_flight"] == 8
    # Tiles show the requests in flight as they happen.
    qtbot.waitUntil(
        lambda: any(window.grid.tile(i).in_flight for i in range(SAMPLES)), timeout=5_000
    )

    panel = window.live_panel
    qtbot.waitUntil(lambda: panel.answered.value.text() not in ("–", "0"), timeout=2_000)
    xs, throughput = panel.throughput_curve.getData()
    assert xs is not None and len(xs) >= 5
    assert np.nanmax(throughput) > 0
    _, p99 = panel.latency_curves["p99"].getData()
    assert np.isfinite(p99).any()
    assert panel.refresh_rate_hz() >= 10

    # The budget verdict follows the budget, at once.
    window.controls.budget_spin.setValue(60_000)
    assert not panel.over_budget
    assert panel.badge.text().startswith("WITHIN BUDGET")
    # Goodput, the share of the window's answers within the budget, follows at the next refresh.
    qtbot.waitUntil(lambda: "100% within" in panel.badge.text(), timeout=2_000)
    window.controls.budget_spin.setValue(1)
    assert panel.over_budget
    assert panel.badge.text().startswith("OVER BUDGET") and "> 1 ms" in panel.badge.text()
    assert "p90 " in panel.badge.text()  # the verdict percentile, 90 unless --percentile
    window.grab().save(str(tmp_path / "over-budget.png"))

    # Stop: nothing new is sent, the outstanding requests come back.
    qtbot.mouseClick(window.controls.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not window.task.running_auto, timeout=10_000)
    assert window.task.in_flight == 0
    sent = window.task.snapshot().sent
    qtbot.wait(300)
    assert window.task.snapshot().sent == sent
    assert window.controls.run_button.text() == "Start"

    # Start again from the button.
    qtbot.mouseClick(window.controls.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.task.snapshot().sent > sent + 20, timeout=10_000)
    assert window.task.snapshot().failed == 0

    # Closing while requests are outstanding cancels them (each one counted) and closes cleanly.
    qtbot.waitUntil(lambda: window.task.in_flight > 0, timeout=5_000)
    window.close()
    qtbot.waitUntil(lambda: window.is_shut_down, timeout=15_000)
    assert not window.isVisible()
    assert window.task.in_flight == 0
    cancelled = window.task.snapshot().errors_by_kind
    assert set(cancelled) == {"cancelled"} and 1 <= cancelled["cancelled"] <= 8


@pytest.mark.stack
def test_switching_to_http_reconnects_and_answers(qtbot, open_window, local_stack):
    window = open_window(RunOptions(url=local_stack.grpc_url))
    connected(qtbot, window)
    window.controls.protocol_box.setCurrentText("http")
    window.controls.url_edit.setText(local_stack.http_url)
    qtbot.mouseClick(window.controls.connect_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(
        lambda: window.task.connection is not None and window.task.connection.protocol == "http",
        timeout=15_000,
    )
    click_tile(qtbot, window, 11)
    qtbot.waitUntil(lambda: window.grid.tile(11).answered, timeout=10_000)
    assert "http" in window.live_panel.server_label.text()


@pytest.mark.stack
def test_the_rendered_window_is_a_real_picture(qtbot, open_window, local_stack, tmp_path):
    window = open_window(
        RunOptions(url=local_stack.grpc_url, mode="auto", concurrency=4), size=(1600, 1000)
    )
    connected(qtbot, window)
    qtbot.waitUntil(lambda: window.task.snapshot().answered >= 150, timeout=30_000)
    qtbot.waitUntil(lambda: sum(window.grid.tile(i).answered for i in range(SAMPLES)) >= 100)
    path = tmp_path / "window.png"
    assert window.grab().save(str(path))

    with Image.open(path) as shot:
        rgb = np.asarray(shot.convert("RGB"), dtype=np.int16)
    height, width, _ = rgb.shape
    assert (width, height) == (1600, 1000)
    # Photos make a busy picture: thousands of colours and real contrast, not a flat fill.
    colours = len(np.unique(rgb.reshape(-1, 3), axis=0))
    assert colours > 5_000
    assert rgb.std() > 30
    # The tile of sample 0 shows its photo, not the window background.
    tile = window.grid.tile_rect(0).translated(
        window.grid.viewport().mapTo(window, window.grid.viewport().rect().topLeft())
    )
    patch = rgb[
        tile.top() + tile.height() // 3 : tile.top() + tile.height() // 2,
        tile.left() : tile.right(),
    ]
    assert patch.std() > 10


def test_an_unreachable_server_shows_the_banner_and_the_app_keeps_retrying(
    qtbot, open_window, free_port
):
    window = open_window(RunOptions(url=f"127.0.0.1:{free_port()}"))
    window.task.retry_interval_s = 0.3
    qtbot.waitUntil(lambda: window.task.state is TaskState.WAITING, timeout=10_000)
    assert window.banner.isVisible()
    assert "Cannot reach" in window.banner.message
    assert "Retrying" in window.banner.message
    assert window.grid.count() == SAMPLES  # the photos are there, waiting
    assert not window.controls.run_button.isEnabled()
    # Clicking a photo now is answered with a message, not a crash.
    click_tile(qtbot, window, 3)
    qtbot.waitUntil(lambda: "Not connected" in window.banner.message, timeout=2_000)
    qtbot.wait(800)  # a few retries
    assert window.task.state is TaskState.WAITING
    assert window.isVisible()


def test_settings_persist_between_runs(qtbot, open_window, tmp_path: Path, free_port):
    settings_file = tmp_path / "persist.ini"
    options = RunOptions(url=f"127.0.0.1:{free_port()}")
    first = open_window(options, start=False, settings_file=settings_file)
    first.controls.concurrency_spin.setValue(17)
    first.controls.budget_spin.setValue(80)
    first.controls.topk_spin.setValue(5)
    first.controls.set_mode("auto")
    first.shutdown()
    qtbot.waitUntil(lambda: first.is_shut_down, timeout=10_000)

    second = open_window(options, start=False, settings_file=settings_file)
    assert second.controls.concurrency_spin.value() == 17
    assert second.controls.budget_spin.value() == 80
    assert second.live_panel.budget_ms == 80
    assert second.controls.topk_spin.value() == 5
    assert second.controls.mode == "auto"

    # A value given on the command line wins over the saved one.
    third = open_window(
        RunOptions(url=options.url, concurrency=32), start=False, settings_file=settings_file
    )
    assert third.controls.concurrency_spin.value() == 32
    assert third.controls.budget_spin.value() == 80


@pytest.mark.stack
def test_top_k_and_batch_size_changes_reconnect_and_apply(qtbot, open_window, local_stack):
    window = open_window(RunOptions(url=local_stack.grpc_url, topk=3))
    connected(qtbot, window)
    first_connection = window.task.connection

    window.controls.topk_spin.setValue(5)
    window.controls.batch_spin.setValue(4)
    # One reconnection for both changes, once the operator stops turning the spin boxes.
    qtbot.waitUntil(
        lambda: (
            window.task.connection is not None
            and window.task.connection is not first_connection
            and window.task.state is TaskState.CONNECTED
        ),
        timeout=10_000,
    )
    click_tile(qtbot, window, 2)
    qtbot.waitUntil(lambda: window.grid.tile(2).answered, timeout=10_000)
    assert len(window.grid.tile(2).topk) == 5

    # Automatic mode sends four photos per request: four tiles per answer.
    qtbot.mouseClick(window.controls.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.task.snapshot().answered >= 10, timeout=20_000)
    window.task.cancel()
    qtbot.waitUntil(lambda: not window.task.running_auto, timeout=10_000)
    snapshot = window.task.snapshot()
    # The click was one photo; every automatic request after it carried four.
    assert snapshot.failed == 0
    assert snapshot.images_answered == 1 + 4 * (snapshot.answered - 1)


def test_a_folder_with_unusable_files_names_each_one(qtbot, open_window, tmp_path, free_port):
    photos = tmp_path / "photos"
    photos.mkdir()
    samples = sorted(sample_images_dir().glob("*.jpg"))[:3]
    for sample in samples:
        (photos / sample.name).write_bytes(sample.read_bytes())
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "notes.txt").write_text("not a photo\n")

    window = open_window(RunOptions(url=f"127.0.0.1:{free_port()}", images=photos))
    qtbot.waitUntil(lambda: window.grid.count() == 3, timeout=10_000)
    qtbot.waitUntil(lambda: "could not be used" in window.log_panel.toPlainText(), timeout=5_000)
    log = window.log_panel.toPlainText()
    assert "broken.jpg" in log and "notes.txt" in log
    assert "2 file(s)" in log and str(photos) in log


def test_a_folder_without_photos_says_so_and_the_window_stays(qtbot, open_window, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    window = open_window(RunOptions(url="127.0.0.1:1", images=empty))
    qtbot.waitUntil(lambda: "No photos to show" in window.banner.message, timeout=10_000)
    assert str(empty) in window.banner.message
    assert window.grid.count() == 0
    assert window.isVisible()
