"""The desktop user's own photos: a folder opened from the window (the Photos… button, Ctrl+O),
or photos and folders dropped onto the grid.

The sources are scanned and decoded off the GUI thread (`core.images.scan_image_paths` and
`iter_loaded`: reduced copies, bounded memory), and reach the grid in small batches, in name
order, so the tiles appear as the photos load. The window classifies the new set once it is complete
(`MainWindow.load_photo_sources`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QEvent, QMimeData, QObject, Signal
from PySide6.QtGui import QDragMoveEvent, QDropEvent
from PySide6.QtWidgets import QWidget

from flowerdemo.core.images import FlowerImage, ImageProblem, iter_loaded, scan_image_paths
from flowerdemo.ui.tiles import TilePhoto, thumbnail_of

BATCH_SIZE = 8
"""Photos handed to the grid at once: small enough that tiles visibly arrive as they load."""
BATCH_WAIT_S = 0.15
"""A batch goes out after this long even when it is not full."""


def tile_photo(image: FlowerImage, labels: Sequence[str]) -> TilePhoto:
    """The tile of one loaded photo (safe off the GUI thread)."""
    truth = image.truth
    label = labels[truth] if truth is not None and 0 <= truth < len(labels) else None
    return TilePhoto(thumbnail_of(image.thumbnail), image.name, truth, label)


@dataclass(frozen=True)
class PhotoBatch:
    images: tuple[FlowerImage, ...]
    tiles: tuple[TilePhoto, ...]
    problems: tuple[ImageProblem, ...]


class PhotoStream:
    """Photos from files and folders, in batches. Every method blocks: call them in a worker
    thread (asyncio.to_thread), one at a time."""

    def __init__(self, sources: Sequence[Path], labels: Sequence[str]) -> None:
        self.sources = tuple(sources)
        self._labels = tuple(labels)
        self._loaded: Iterator[FlowerImage | ImageProblem] | None = None
        self._ordered: Iterator[FlowerImage | ImageProblem] | None = None
        self._position: dict[Path, int] = {}
        self._waiting: dict[int, FlowerImage | ImageProblem] = {}
        self._next = 0

    def scan(self) -> tuple[int, list[ImageProblem]]:
        """How many image files the sources hold, and the entries skipped while looking."""
        paths, problems = scan_image_paths(self.sources)
        self._position = {path: index for index, path in enumerate(paths)}
        self._waiting, self._next, self._ordered = {}, 0, None
        self._loaded = iter_loaded(paths, labels=self._labels)
        return len(paths), problems

    def _in_order(self) -> Iterator[FlowerImage | ImageProblem]:
        """The decoded photos in the order of their paths (the workers finish them in any
        order): each is held only until the ones before it are done, a few at most."""
        assert self._loaded is not None
        for item in self._loaded:
            self._waiting[self._position[item.path]] = item
            while self._next in self._waiting:
                yield self._waiting.pop(self._next)
                self._next += 1

    def next_batch(self) -> PhotoBatch | None:
        """The next few photos (and problems), in name order as they finish decoding; None when
        all are done."""
        if self._loaded is None:
            return None
        images: list[FlowerImage] = []
        problems: list[ImageProblem] = []
        deadline = time.monotonic() + BATCH_WAIT_S
        if self._ordered is None:
            self._ordered = self._in_order()
        for item in self._ordered:
            if isinstance(item, FlowerImage):
                images.append(item)
            else:
                problems.append(item)
            if len(images) >= BATCH_SIZE or time.monotonic() >= deadline:
                break
        if not images and not problems:
            self._loaded = None
            return None
        tiles = tuple(tile_photo(image, self._labels) for image in images)
        return PhotoBatch(tuple(images), tiles, tuple(problems))

    def close(self) -> None:
        """Stop decoding what has not started (the iterator's pool shuts down)."""
        ordered, loaded = self._ordered, self._loaded
        self._ordered, self._loaded = None, None
        for iterator in (ordered, loaded):
            if iterator is not None and hasattr(iterator, "close"):
                iterator.close()


def local_paths(mime: QMimeData) -> list[Path]:
    """The local files and folders a drag carries (links to web pages and the like are not)."""
    if not mime.hasUrls():
        return []
    return [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile()]


class DropTarget(QObject):
    """Accepts photos and folders dragged onto a widget (the grid's viewport)."""

    sig_dropped = Signal(object)
    """Local files and folders were dropped: a list of Paths."""

    def __init__(self, widget: QWidget, parent: QObject | None = None) -> None:
        super().__init__(parent)
        widget.setAcceptDrops(True)
        widget.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        kind = event.type()
        if kind in (QEvent.Type.DragEnter, QEvent.Type.DragMove) and isinstance(
            event, QDragMoveEvent
        ):
            if local_paths(event.mimeData()):
                event.acceptProposedAction()
                return True
            return False
        if kind == QEvent.Type.Drop and isinstance(event, QDropEvent):
            paths = local_paths(event.mimeData())
            if paths:
                event.acceptProposedAction()
                self.sig_dropped.emit(paths)
                return True
        return False
