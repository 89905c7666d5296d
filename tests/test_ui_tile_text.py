"""Tile labels readable from two metres at a booth: the text scales with the tile, and at 1080p
with the 102 bundled photos the best label is drawn about 16 px tall (it was 9-10 px)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from flowerdemo.core.events import Classification, InferenceEvent
from flowerdemo.options import RunOptions
from flowerdemo.ui.tiles import tile_text_px

pytestmark = pytest.mark.gui


def test_label_size_follows_the_tile() -> None:
    sizes = [tile_text_px(tile) for tile in (60, 99, 150, 200, 300, 400)]
    assert sizes == sorted(sizes)
    assert tile_text_px(99) >= 15
    assert tile_text_px(200) >= 2 * tile_text_px(99) - 2  # a 4K screen doubles it


def _white_runs(tile: np.ndarray) -> list[int]:
    """Heights of the runs of rows that hold near-white pixels (label text: the photo under the
    label box is darkened), in the tile's lower half."""
    lower = tile[tile.shape[0] // 2 :]
    white = (lower[:, :, :3] > 235).all(axis=2).any(axis=1)
    runs, current = [], 0
    for row in white:
        if row:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    if current:
        runs.append(current)
    return runs


def test_at_1080p_the_best_label_is_large(qtbot, open_window, free_port) -> None:
    window = open_window(RunOptions(url=f"127.0.0.1:{free_port()}"), size=(1920, 1080))
    grid = window.grid
    qtbot.waitUntil(lambda: grid.count() == 102, timeout=20_000)
    qtbot.wait(200)
    tile = grid.tile_size()
    assert 90 <= tile <= 130  # every photo on screen
    now = time.monotonic()
    guesses = (Classification(0.93, 0, "pink primrose"), Classification(0.04, 3, "sweet pea"))
    grid.apply_event(InferenceEvent(1, (0,), now - 0.02, now, (guesses,)))
    qtbot.wait(100)
    rect = grid.tile_rect(0)
    image = grid.viewport().grab(rect).toImage().convertToFormat(image_format())
    pixels = np.frombuffer(image.constBits(), dtype=np.uint8).reshape(
        image.height(), image.bytesPerLine() // 4, 4
    )[:, : image.width()]
    runs = _white_runs(pixels[:, :, [2, 1, 0, 3]])
    # "pink primrose" on two lines: each line's glyphs (p's descender, k's ascender) span
    # most of the font's pixel size.
    assert len(runs) >= 1
    assert max(runs) >= 12, runs  # 9 px labels drew runs of about 9 rows


def image_format():
    from PySide6.QtGui import QImage

    return QImage.Format.Format_ARGB32
