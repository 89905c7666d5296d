"""The tile grid with the bundled photos, no server: layout, marks, clicks and what gets repainted."""

from __future__ import annotations

import time

import pytest
from PySide6.QtCore import QEvent, QObject, QRect, Qt
from PySide6.QtGui import QPaintEvent

from flowerdemo.core.events import Classification, ErrorKind, InferenceEvent, RequestError
from flowerdemo.core.images import read_labels
from flowerdemo.resources import labels_file, sample_images_dir
from flowerdemo.ui.main_window import load_photos
from flowerdemo.ui.tiles import MIN_TILE, TileGrid, best_layout

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def photos():
    return load_photos(sample_images_dir(), read_labels(labels_file())).tiles


@pytest.fixture
def grid(qtbot, photos):
    widget = TileGrid()
    qtbot.addWidget(widget)
    widget.resize(1500, 900)
    widget.set_photos(photos)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


class PaintRecorder(QObject):
    def __init__(self) -> None:
        super().__init__()
        self.rects: list[QRect] = []

    def eventFilter(self, watched, event):
        if event.type() == QEvent.Type.Paint and isinstance(event, QPaintEvent):
            self.rects.append(event.region().boundingRect())
        return False


def answer(index: int, label_index: int, *, latency_s: float = 0.012) -> InferenceEvent:
    now = time.monotonic()
    guesses = (
        Classification(0.9, label_index, f"class {label_index}"),
        Classification(0.05, 1, "class 1"),
    )
    return InferenceEvent(1, (index,), now - latency_s, now, (guesses,))


def test_layout_fits_every_photo_when_it_can_and_scrolls_when_it_cannot():
    roomy = best_layout(1480, 900, 102)
    assert roomy.tile >= MIN_TILE
    assert roomy.columns * roomy.rows >= 102
    assert roomy.content_height <= 900
    assert roomy.rect(101).right() <= 1480

    cramped = best_layout(600, 400, 102)
    assert cramped.tile >= MIN_TILE  # never shrinks below readable: it scrolls instead
    assert cramped.content_height > 400
    assert cramped.rect(cramped.columns - 1).right() <= 600

    assert best_layout(1000, 800, 0).rows == 0


def test_photos_fill_the_grid_with_their_truth(grid, photos):
    assert grid.count() == len(photos) == 102
    assert grid.tile(17).photo.truth == 17
    assert grid.tile(17).photo.name.startswith("017-")
    assert grid.tile(17).photo.truth_label == read_labels(labels_file())[17]
    assert not grid.tile(17).answered


def test_an_answer_repaints_only_its_own_tile(qtbot, grid):
    recorder = PaintRecorder()
    grid.viewport().installEventFilter(recorder)
    qtbot.wait(50)
    recorder.rects.clear()

    grid.apply_event(answer(40, 40))
    qtbot.waitUntil(lambda: bool(recorder.rects), timeout=2_000)
    tile = grid.tile_rect(40).adjusted(-2, -2, 2, 2)
    assert all(tile.contains(rect) for rect in recorder.rects)
    grid.viewport().removeEventFilter(recorder)


def test_sent_answered_and_failed_tiles_are_marked(grid):
    grid.mark_sent((5, 5, 6))
    assert grid.tile(5).in_flight == 2 and grid.tile(6).in_flight == 1

    grid.apply_event(answer(5, 5))
    state = grid.tile(5)
    assert state.in_flight == 1
    assert state.correct is True
    assert state.topk[0].label == "class 5"
    assert state.latency_ms == pytest.approx(12.0, abs=1.0)

    grid.apply_event(answer(5, 9))
    assert grid.tile(5).correct is False and grid.tile(5).in_flight == 0

    now = time.monotonic()
    failed = InferenceEvent(
        2, (6,), now - 1, now, error=RequestError(ErrorKind.UNAVAILABLE, "connection refused")
    )
    grid.apply_event(failed)
    assert grid.tile(6).error == "unavailable"
    assert grid.tile(6).in_flight == 0
    assert grid.tile(6).correct is None

    grid.clear_answers()
    assert not grid.tile(5).answered and grid.tile(6).error is None


def test_a_click_names_the_photo_under_the_pointer(qtbot, grid):
    for index in (0, 33, 101):
        with qtbot.waitSignal(grid.sig_tile_clicked, timeout=1_000) as clicked:
            qtbot.mouseClick(
                grid.viewport(), Qt.MouseButton.LeftButton, pos=grid.tile_rect(index).center()
            )
        assert clicked.args == [index]
    # Between tiles nothing is clicked.
    gap = grid.tile_rect(0).topRight()
    gap.setX(gap.x() + 3)
    assert grid.index_at(gap) is None
