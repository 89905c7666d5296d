"""The desktop user's own photos: dropped onto the grid (files and folders, real JPEGs) or opened
with Ctrl+O; tiles appear as the photos load, unusable files are named, and the new set is what
gets classified."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication, QFileDialog

from flowerdemo.options import RunOptions
from flowerdemo.resources import sample_images_dir
from flowerdemo.ui.inference_task import TaskState

pytestmark = [pytest.mark.gui]

SAMPLES = sorted(sample_images_dir().glob("*.jpg"))


def photo_folder(root: Path, count: int) -> Path:
    """`count` real photos in a folder named after their class (the folder gives the truth)."""
    folder = root / "tiger lily"
    folder.mkdir(parents=True)
    for number, sample in enumerate(SAMPLES[:count]):
        shutil.copy(sample, folder / f"holiday-{number:03d}.jpg")
    (folder / "notes.txt").write_text("not a photo")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def drop(widget, paths: list[Path]) -> None:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path)) for path in paths])
    action = Qt.DropAction.CopyAction
    enter = QDragEnterEvent(
        QPoint(50, 50), action, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    QApplication.sendEvent(widget, enter)
    assert enter.isAccepted()
    dropped = QDropEvent(
        QPointF(50, 50), action, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    QApplication.sendEvent(widget, dropped)
    assert dropped.isAccepted()


def record_counts(grid) -> list[int]:
    counts: list[int] = []
    add = grid.add_photos

    def recording(photos):
        add(photos)
        counts.append(grid.count())

    grid.add_photos = recording
    return counts


@pytest.mark.stack
def test_photos_dropped_on_the_grid_appear_as_they_load_and_are_classified(
    qtbot, open_window, local_stack, tmp_path
):
    folder = photo_folder(tmp_path / "drop", 30)
    loose = tmp_path / "loose.jpg"
    shutil.copy(SAMPLES[60], loose)
    window = open_window(RunOptions(url=local_stack.grpc_url, mode="auto", concurrency=2))
    qtbot.waitUntil(lambda: window.task.running_auto, timeout=20_000)
    grid = window.grid
    counts = record_counts(grid)

    drop(grid.viewport(), [folder, loose])
    qtbot.waitUntil(lambda: grid.count() == 31 and not window._loading_photos, timeout=30_000)
    # Tiles arrived batch by batch while the photos decoded, not all at the end.
    assert len(counts) >= 3 and counts == sorted(counts) and counts[-1] == 31
    # In the order of the sources and of the names within them, whichever decoded first.
    names = [grid.tile(i).photo.name for i in range(31)]
    assert names == [f"holiday-{n:03d}.jpg" for n in range(30)] + ["loose.jpg"]
    truths = {grid.tile(i).photo.truth_label for i in range(31)}
    assert "tiger lily" in truths  # the folder's name gives the truth
    assert "2 file(s)" in window.banner.message

    # The new set is what the server classifies, and automatic mode carried on with it.
    qtbot.waitUntil(lambda: window.task.state is TaskState.CONNECTED, timeout=20_000)
    qtbot.waitUntil(lambda: window.task.running_auto, timeout=10_000)
    qtbot.waitUntil(lambda: all(grid.tile(i).answered for i in range(31)), timeout=30_000)
    assert window.task.snapshot().failed == 0


def test_ctrl_o_opens_a_folder_and_unusable_drops_change_nothing(
    qtbot, open_window, tmp_path, free_port, monkeypatch
):
    folder = photo_folder(tmp_path / "open", 5)
    window = open_window(RunOptions(url=f"127.0.0.1:{free_port()}"))
    grid = window.grid
    qtbot.waitUntil(lambda: grid.count() == len(SAMPLES), timeout=20_000)

    # The system's folder dialog stands in for a person choosing the folder.
    asked = []

    def choose(parent, caption, start):
        asked.append(caption)
        return str(folder)

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(choose))
    window.activateWindow()
    qtbot.keyClick(window, Qt.Key.Key_O, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: grid.count() == 5 and not window._loading_photos, timeout=20_000)
    assert asked == ["Open a folder of photos"]
    assert len(window._images) == 5

    # The button does the same.
    qtbot.mouseClick(window.controls.photos_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(
        lambda: (
            window.log_panel.toPlainText().count("5 photos from") == 2
            and not window._loading_photos
        ),
        timeout=20_000,
    )
    assert len(asked) == 2
    assert grid.count() == 5

    # A drop with nothing usable is explained, and the photos shown stay.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no photos here")
    drop(grid.viewport(), [empty])
    qtbot.waitUntil(lambda: "No photos in" in window.banner.message, timeout=10_000)
    assert "Nothing changed" in window.banner.message
    assert grid.count() == 5 and len(window._images) == 5
