"""The grid of flower tiles: each photo with its latest answer painted over it.

One widget paints every tile. A change repaints only the rectangle of its own tile, and changed
tiles are repainted together at most REPAINT_HZ times a second, so hundreds of answers a second
never relayout or redraw the grid. Each answer's overlay (labels, scores, mark) is drawn once and
reused while it stays the same. The layout picks the largest tile size at which every photo fits
on screen, and scrolls only when that would make tiles smaller than `MIN_TILE`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image
from PySide6.QtCore import QEvent, QPoint, QRect, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import (
    QBrush,
    QColor,
    QFont,
    QFontMetrics,
    QHelpEvent,
    QImage,
    QLinearGradient,
    QMouseEvent,
    QPainter,
    QPainterPath,
    QPaintEvent,
    QPen,
    QPixmap,
    QResizeEvent,
)
from PySide6.QtWidgets import QAbstractScrollArea, QToolTip, QWidget

from flowerdemo.core.events import Classification, InferenceEvent
from flowerdemo.core.units import format_ms
from flowerdemo.ui.instance_colors import instance_color

MIN_TILE = 96
TEXT_SHARE = 0.16
"""A tile's best label is this share of the tile's side tall (see tile_text_px)."""
ALL_LABELS_FROM = 200
"""Tiles this large or larger list the top-k with scores; smaller ones show the best label
alone, on up to two lines, as large as the tile allows."""
"""Below this many pixels a tile's labels stop being readable: scroll instead of shrinking."""
REPAINT_HZ = 30
MAX_CACHED_CHIPS = 600
"""Latency labels kept drawn ("12.3 ms"): a few kilobytes each."""
THUMBNAIL_SIZE = 448
"""Longest side of the photo kept in memory: sharp on a 4K screen, light for a thousand photos."""

IN_FLIGHT_COLOR = QColor("#29b6f6")
CORRECT_COLOR = QColor("#43a047")
WRONG_COLOR = QColor("#e53935")
FAILED_COLOR = QColor("#ff7043")


@dataclass(frozen=True)
class TilePhoto:
    """What a tile shows before any answer: the photo, its name and, where known, the truth."""

    thumbnail: QImage
    name: str
    truth: int | None = None
    truth_label: str | None = None


def thumbnail_of(rgb: Image.Image, size: int = THUMBNAIL_SIZE) -> QImage:
    """A QImage copy of a PIL picture, no larger than `size`. Safe to call off the GUI thread."""
    picture = rgb.convert("RGB")
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    data = picture.tobytes("raw", "RGB")
    image = QImage(
        data, picture.width, picture.height, 3 * picture.width, QImage.Format.Format_RGB888
    )
    # The QImage only borrows `data`; the copy owns its pixels.
    return image.copy()


@dataclass
class TileState:
    """One tile's latest answer, as the grid paints it."""

    photo: TilePhoto
    in_flight: int = 0
    topk: tuple[Classification, ...] = ()
    latency_ms: float | None = None
    error: str | None = None
    answers: int = 0
    instance: str | None = None
    """The instance that gave the latest answer (its colour marks the tile)."""

    @property
    def answered(self) -> bool:
        return bool(self.topk)

    @property
    def correct(self) -> bool | None:
        """Whether the best label is the ground truth; None when either is unknown."""
        if not self.topk or self.photo.truth is None or self.error:
            return None
        return self.topk[0].index == self.photo.truth


@dataclass(frozen=True)
class GridLayout:
    columns: int
    rows: int
    tile: int
    spacing: int

    @property
    def content_height(self) -> int:
        return self.rows * (self.tile + self.spacing) + self.spacing

    def rect(self, index: int) -> QRect:
        row, column = divmod(index, self.columns)
        step = self.tile + self.spacing
        return QRect(self.spacing + column * step, self.spacing + row * step, self.tile, self.tile)

    def index_at(self, x: int, y: int, count: int) -> int | None:
        step = self.tile + self.spacing
        column, x_in = divmod(x - self.spacing, step)
        row, y_in = divmod(y - self.spacing, step)
        if (
            column < 0
            or row < 0
            or column >= self.columns
            or x_in >= self.tile
            or y_in >= self.tile
        ):
            return None
        index = int(row * self.columns + column)
        return index if index < count else None


def best_layout(width: int, height: int, count: int, spacing: int = 6) -> GridLayout:
    """The largest square tiles that put all `count` photos in width x height, or scroll rows of
    MIN_TILE-or-larger tiles when they cannot all fit that large."""
    width, height = max(width, 1), max(height, 1)
    if count <= 0:
        return GridLayout(1, 0, MIN_TILE, spacing)
    best = GridLayout(1, count, 0, spacing)
    for columns in range(1, count + 1):
        rows = math.ceil(count / columns)
        tile = min(
            (width - spacing * (columns + 1)) // columns,
            (height - spacing * (rows + 1)) // rows,
        )
        if tile > best.tile:
            best = GridLayout(columns, rows, tile, spacing)
    if best.tile >= MIN_TILE:
        return best
    columns = max(1, (width - spacing) // (MIN_TILE + spacing))
    tile = max(MIN_TILE, (width - spacing * (columns + 1)) // columns)
    return GridLayout(columns, math.ceil(count / columns), tile, spacing)


class TileGrid(QAbstractScrollArea):
    """All photos as square tiles; click one to classify it."""

    sig_tile_clicked = Signal(int)
    """A tile was clicked: the index of its photo."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._tiles: list[TileState] = []
        self._layout = best_layout(1, 1, 0)
        self._pixmaps: dict[int, QPixmap] = {}
        self._overlays: dict[tuple[object, ...], QPixmap] = {}
        self._chips: dict[tuple[object, ...], QPixmap] = {}
        self._dirty: set[int] = set()
        # Changed tiles are repainted together at most REPAINT_HZ times a second: a tile sent
        # and answered within one period is painted once, and the event loop stays free.
        self._repaint_timer = QTimer(self)
        self._repaint_timer.setSingleShot(True)
        self._repaint_timer.setInterval(1000 // REPAINT_HZ)
        self._repaint_timer.timeout.connect(self._repaint_dirty)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setFrameShape(QAbstractScrollArea.Shape.NoFrame)
        self.viewport().setMouseTracking(True)
        self.viewport().setCursor(Qt.CursorShape.PointingHandCursor)
        self.verticalScrollBar().valueChanged.connect(lambda _value: self.viewport().update())
        self.setAccessibleName("Flower photos")

    # -- contents -----------------------------------------------------------------------
    def set_photos(self, photos: Sequence[TilePhoto]) -> None:
        self._tiles = [TileState(photo) for photo in photos]
        self._pixmaps.clear()
        self._relayout()
        self.viewport().update()

    def add_photos(self, photos: Sequence[TilePhoto]) -> None:
        """More photos after the ones shown (photos arriving as they load)."""
        self._tiles.extend(TileState(photo) for photo in photos)
        self._relayout()
        self.viewport().update()

    def photos(self) -> list[TilePhoto]:
        return [state.photo for state in self._tiles]

    def count(self) -> int:
        return len(self._tiles)

    def tile(self, index: int) -> TileState:
        return self._tiles[index]

    def clear_answers(self) -> None:
        """Forget every answer (the photos stay); in-flight marks stay until their answers come."""
        for state in self._tiles:
            state.topk, state.latency_ms, state.error, state.answers = (), None, None, 0
            state.instance = None
        self.viewport().update()

    def mark_sent(self, indices: Sequence[int]) -> None:
        for index in set(indices):
            if 0 <= index < len(self._tiles):
                self._tiles[index].in_flight += indices.count(index)
                self._update_tile(index)

    def apply_event(self, event: InferenceEvent) -> None:
        """Show one finished request on the tiles of its photos."""
        latency_ms = event.latency_s * 1000.0
        for position, index in enumerate(event.image_indices):
            if not 0 <= index < len(self._tiles):
                continue
            state = self._tiles[index]
            state.in_flight = max(0, state.in_flight - 1)
            if event.ok and position < len(event.topk):
                state.topk = event.topk[position]
                state.latency_ms = latency_ms
                state.error = None
                state.answers += 1
                state.instance = event.instance
            elif event.error is not None:
                state.error = event.error.kind.value
            self._update_tile(index)

    # -- geometry -----------------------------------------------------------------------
    def tile_rect(self, index: int) -> QRect:
        """Where tile `index` is, in the coordinates of the viewport (which receives clicks)."""
        return self._layout.rect(index).translated(0, -self.verticalScrollBar().value())

    def tile_size(self) -> int:
        return self._layout.tile

    def index_at(self, point: QPoint) -> int | None:
        return self._layout.index_at(
            point.x(), point.y() + self.verticalScrollBar().value(), len(self._tiles)
        )

    def sizeHint(self) -> QSize:
        return QSize(900, 700)

    def minimumSizeHint(self) -> QSize:
        return QSize(MIN_TILE * 2, MIN_TILE * 2)

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._relayout()

    def _relayout(self) -> None:
        viewport = self.viewport().size()
        layout = best_layout(viewport.width(), viewport.height(), len(self._tiles))
        if layout.tile != self._layout.tile:
            self._pixmaps.clear()
            self._overlays.clear()
            self._chips.clear()
        self._layout = layout
        scroll = self.verticalScrollBar()
        scroll.setRange(0, max(0, layout.content_height - viewport.height()))
        scroll.setPageStep(max(1, viewport.height()))
        scroll.setSingleStep(max(1, layout.tile // 3))

    def _update_tile(self, index: int) -> None:
        self._dirty.add(index)
        if not self._repaint_timer.isActive():
            self._repaint_timer.start()

    def _repaint_dirty(self) -> None:
        dirty, self._dirty = self._dirty, set()
        viewport = self.viewport()
        for index in dirty:
            viewport.update(self.tile_rect(index))

    # -- input --------------------------------------------------------------------------
    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            index = self.index_at(event.position().toPoint())
            if index is not None:
                self.sig_tile_clicked.emit(index)
                event.accept()
                return
        super().mousePressEvent(event)

    def viewportEvent(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ToolTip and isinstance(event, QHelpEvent):
            index = self.index_at(event.pos())
            if index is None:
                QToolTip.hideText()
            else:
                QToolTip.showText(event.globalPos(), self._describe(index), self.viewport())
            return True
        return super().viewportEvent(event)

    def _describe(self, index: int) -> str:
        state = self._tiles[index]
        lines = [f"<b>{state.photo.name}</b>"]
        if state.photo.truth_label:
            lines.append(f"truth: {state.photo.truth_label}")
        for guess in state.topk:
            lines.append(f"{guess.score:6.1%}  {guess.label}")
        if state.latency_ms is not None:
            lines.append(
                f"last latency {format_ms(state.latency_ms / 1000)}, answered {state.answers}x"
            )
        if state.instance is not None:
            lines.append(f"answered by {state.instance}")
        if state.error:
            lines.append(f"last request failed: {state.error}")
        if state.in_flight:
            lines.append(f"{state.in_flight} request(s) in flight")
        return "<br>".join(lines)

    # -- painting -----------------------------------------------------------------------
    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self.viewport())
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        # The region, not its bounding rectangle: two answers far apart repaint two tiles, not
        # every tile between them.
        region = event.region()
        exposed = region.boundingRect()
        offset = self.verticalScrollBar().value()
        step = self._layout.tile + self._layout.spacing
        first_row = max(0, (exposed.top() + offset) // step)
        last_row = (exposed.bottom() + offset) // step
        columns = self._layout.columns
        for row in range(first_row, last_row + 1):
            for index in range(row * columns, min((row + 1) * columns, len(self._tiles))):
                rect = self.tile_rect(index)
                if region.intersects(rect):
                    self._paint_tile(painter, index, rect)
        painter.end()

    def _pixmap(self, index: int) -> QPixmap:
        pixmap = self._pixmaps.get(index)
        if pixmap is None:
            ratio = self.devicePixelRatioF()
            side = max(1, round(self._layout.tile * ratio))
            image = self._tiles[index].photo.thumbnail.scaled(
                side,
                side,
                Qt.AspectRatioMode.KeepAspectRatioByExpanding,
                Qt.TransformationMode.SmoothTransformation,
            )
            # Centre crop to a square, as the model sees the photo, with the tile's rounded
            # corners cut once here: drawing through a clip path on every repaint costs more.
            x, y = (image.width() - side) // 2, (image.height() - side) // 2
            rounded = QImage(side, side, QImage.Format.Format_ARGB32_Premultiplied)
            rounded.fill(Qt.GlobalColor.transparent)
            painter = QPainter(rounded)
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(QBrush(image.copy(x, y, side, side)))
            radius = self._corner_radius(side)
            painter.drawRoundedRect(QRectF(0, 0, side, side), radius, radius)
            painter.end()
            pixmap = QPixmap.fromImage(rounded)
            pixmap.setDevicePixelRatio(ratio)
            self._pixmaps[index] = pixmap
        return pixmap

    @staticmethod
    def _corner_radius(size: float) -> float:
        return max(4.0, size * 0.05)

    def _paint_tile(self, painter: QPainter, index: int, rect: QRect) -> None:
        state = self._tiles[index]
        size = rect.width()
        painter.drawPixmap(rect.topLeft(), self._pixmap(index))
        if state.answered or state.error:
            painter.drawPixmap(rect.topLeft(), self._answer_overlay(state))
            if state.instance is not None:
                painter.drawPixmap(
                    QPoint(rect.left(), rect.bottom() + 1 - _band_height(size)),
                    self._instance_band(state.instance),
                )
            if state.latency_ms is not None:
                margin = max(3, size // 28)
                painter.drawPixmap(
                    QPoint(rect.left() + margin, rect.top() + margin),
                    self._latency_chip(format_ms(state.latency_ms / 1000)),
                )
        if state.in_flight:
            painter.drawPixmap(rect.topLeft(), self._in_flight_overlay())
        elif state.error:
            width = max(2.0, size * 0.025)
            inset = width / 2
            radius = self._corner_radius(size)
            painter.setPen(QPen(FAILED_COLOR, width))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRoundedRect(
                QRectF(rect).adjusted(inset, inset, -inset, -inset), radius, radius
            )

    # Overlays are drawn once per look and size, then blitted: at hundreds of answers a second,
    # text layout would otherwise be most of the GUI thread's work.
    def _transparent_layer(self, width: int, height: int) -> tuple[QImage, QPainter]:
        """A clear, antialiased image of width x height logical pixels at the screen's density."""
        ratio = self.devicePixelRatioF()
        layer = QImage(
            max(1, round(width * ratio)),
            max(1, round(height * ratio)),
            QImage.Format.Format_ARGB32_Premultiplied,
        )
        layer.setDevicePixelRatio(ratio)
        layer.fill(Qt.GlobalColor.transparent)
        painter = QPainter(layer)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        return layer, painter

    def _new_layer(self) -> tuple[QImage, QPainter, int]:
        side = self._layout.tile
        layer, painter = self._transparent_layer(side, side)
        painter.setRenderHint(QPainter.RenderHint.TextAntialiasing)
        frame = QPainterPath()
        radius = self._corner_radius(side)
        frame.addRoundedRect(QRectF(0, 0, side, side), radius, radius)
        painter.setClipPath(frame)
        return layer, painter, side

    def _in_flight_overlay(self) -> QPixmap:
        key = ("in flight", self._layout.tile, self.devicePixelRatioF())
        cached = self._overlays.get(key)
        if cached is not None:
            return cached
        layer, painter, size = self._new_layer()
        rect = QRect(0, 0, size, size)
        painter.fillRect(rect, QColor(41, 182, 246, 60))
        width = max(3.0, size * 0.045)
        inset = width / 2
        radius = self._corner_radius(size)
        painter.setPen(QPen(IN_FLIGHT_COLOR, width))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.drawRoundedRect(QRectF(rect).adjusted(inset, inset, -inset, -inset), radius, radius)
        font = QFont(self.font())
        font.setPixelSize(max(10, round(tile_text_px(size) * 0.8)))
        font.setBold(True)
        margin = max(3, size // 28)
        metrics = QFontMetrics(font)
        text = "in flight"
        chip_width, chip_height = (
            metrics.horizontalAdvance(text) + 2 * margin,
            metrics.height() + margin,
        )
        chip = QRect(
            rect.center().x() - chip_width // 2,
            rect.center().y() - chip_height // 2,
            chip_width,
            chip_height,
        )
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(IN_FLIGHT_COLOR)
        painter.drawRoundedRect(chip, chip_height / 2, chip_height / 2)
        painter.setFont(font)
        painter.setPen(QColor("#00212e"))
        painter.drawText(chip, Qt.AlignmentFlag.AlignCenter, text)
        painter.end()
        pixmap = QPixmap.fromImage(layer)
        self._overlays[key] = pixmap
        return pixmap

    def _answer_overlay(self, state: TileState) -> QPixmap:
        key = (
            tuple((g.label, round(g.score * 100)) for g in state.topk),
            state.error if not state.topk else None,
            state.correct,
            self._layout.tile,
            self.devicePixelRatioF(),
        )
        cached = self._overlays.get(key)
        if cached is not None:
            return cached
        # Each photo normally has one look; many more means the answers changed: start afresh.
        if len(self._overlays) > 2 * len(self._tiles) + 8:
            self._overlays.clear()
        layer, painter, size = self._new_layer()
        self._paint_answer(painter, state, QRect(0, 0, size, size))
        painter.end()
        pixmap = QPixmap.fromImage(layer)
        self._overlays[key] = pixmap
        return pixmap

    def _instance_band(self, instance: str) -> QPixmap:
        """A strip in the instance's colour along the tile's bottom edge, inside its rounded
        corners: which instance answered, readable from across a booth."""
        color = instance_color(instance)
        key = ("instance", color.rgb(), self._layout.tile, self.devicePixelRatioF())
        cached = self._overlays.get(key)
        if cached is not None:
            return cached
        size = self._layout.tile
        height = _band_height(size)
        layer, painter = self._transparent_layer(size, height)
        frame = QPainterPath()
        radius = self._corner_radius(size)
        frame.addRoundedRect(QRectF(0, height - size, size, size), radius, radius)
        painter.setClipPath(frame)
        painter.fillRect(QRect(0, 0, size, height), color)
        painter.end()
        pixmap = QPixmap.fromImage(layer)
        self._overlays[key] = pixmap
        return pixmap

    def _chip_font(self, size: int) -> QFont:
        font = QFont(self.font())
        font.setPixelSize(max(10, round(tile_text_px(size) * 0.8)))
        font.setBold(True)
        return font

    def _paint_answer(self, painter: QPainter, state: TileState, rect: QRect) -> None:
        size = rect.width()
        margin = max(3, size // 28)
        width = size - 2 * margin
        font = QFont(self.font())
        font.setPixelSize(max(10, round(tile_text_px(size) * 0.78)))
        bold = QFont(self.font())
        bold.setBold(True)
        bold.setPixelSize(tile_text_px(size))
        bold_metrics, metrics = QFontMetrics(bold), QFontMetrics(font)

        # (text, score, font, colour) per row: the best label large and bold; the rest of the
        # top-k, with scores, only on tiles large enough to keep them readable.
        rows: list[tuple[str, str, QFont, QColor]] = []
        white, grey = QColor("#ffffff"), QColor("#d8d8d8")
        if state.error and not state.topk:
            for text in _wrap(bold_metrics, f"failed: {state.error}", width, 2):
                rows.append((text, "", bold, white))
        elif size >= ALL_LABELS_FROM:
            best = state.topk[0]
            rows.append((best.label, f"{best.score:.0%}", bold, white))
            room = size * 0.55 - 2 * margin - bold_metrics.height()
            for guess in state.topk[1 : 1 + max(0, int(room // metrics.height()))]:
                rows.append((guess.label, f"{guess.score:.0%}", font, grey))
        else:
            for text in _wrap(bold_metrics, state.topk[0].label, width, 2):
                rows.append((text, "", bold, white))
        heights = [QFontMetrics(row_font).height() for _t, _s, row_font, _c in rows]
        box_height = sum(heights) + 2 * margin + heights[0] // 4
        box = QRect(rect.left(), rect.bottom() - box_height + 1, size, box_height)
        gradient = QLinearGradient(box.topLeft(), box.bottomLeft())
        gradient.setColorAt(0.0, QColor(0, 0, 0, 150))
        gradient.setColorAt(1.0, QColor(0, 0, 0, 215))
        painter.fillRect(box, QBrush(gradient))

        y = box.top() + margin
        for (label, score, row_font, color), height in zip(rows, heights, strict=True):
            painter.setFont(row_font)
            row_metrics = painter.fontMetrics()
            painter.setPen(color)
            score_width = row_metrics.horizontalAdvance(score) if score else 0
            label_room = width - score_width - (margin if score else 0)
            text = row_metrics.elidedText(label, Qt.TextElideMode.ElideRight, max(0, label_room))
            row = QRect(rect.left() + margin, y, width, height)
            painter.drawText(row, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, text)
            if score:
                painter.drawText(
                    row, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, score
                )
            y += height

        correct = state.correct
        if correct is not None:
            diameter = max(14, round(size * 0.17))
            circle = QRect(
                rect.right() - margin - diameter, rect.top() + margin, diameter, diameter
            )
            painter.setPen(QPen(QColor("#ffffff"), max(1.5, diameter / 12)))
            painter.setBrush(CORRECT_COLOR if correct else WRONG_COLOR)
            painter.drawEllipse(circle)
            mark = QFont(font)
            mark.setBold(True)
            mark.setPixelSize(round(diameter * 0.7))
            painter.setFont(mark)
            painter.drawText(circle, Qt.AlignmentFlag.AlignCenter, "✓" if correct else "✗")

    def _latency_chip(self, text: str) -> QPixmap:
        key = (text, self._layout.tile, self.devicePixelRatioF())
        cached = self._chips.get(key)
        if cached is not None:
            return cached
        if len(self._chips) >= MAX_CACHED_CHIPS:
            self._chips.clear()
        size = self._layout.tile
        font = self._chip_font(size)
        metrics = QFontMetrics(font)
        pad = max(2, metrics.height() // 5)
        width, height = metrics.horizontalAdvance(text) + 2 * pad, metrics.height() + pad
        layer, painter = self._transparent_layer(width, height)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(0, 0, 0, 185))
        chip = QRect(0, 0, width, height)
        painter.drawRoundedRect(chip, pad * 1.5, pad * 1.5)
        painter.setFont(font)
        painter.setPen(QColor("#ffffff"))
        painter.drawText(chip, Qt.AlignmentFlag.AlignCenter, text)
        painter.end()
        pixmap = QPixmap.fromImage(layer)
        self._chips[key] = pixmap
        return pixmap


def tile_text_px(tile: int) -> int:
    """The pixel size of a tile's best label: a fixed share of the tile, so the text grows with
    the window and the screen. 102 photos in a 1080p window make tiles of about 100 px: 16 px
    labels, readable from two metres (it was 9 px); a 4K screen doubles both."""
    return max(11, min(48, round(tile * TEXT_SHARE)))


def _wrap(metrics: QFontMetrics, text: str, width: int, max_lines: int) -> list[str]:
    """`text` broken at spaces into at most `max_lines` lines of `width` pixels; the last one
    elided if the rest does not fit."""
    lines: list[str] = []
    words = text.split()
    while words and len(lines) < max_lines - 1:
        line = words.pop(0)
        while words and metrics.horizontalAdvance(f"{line} {words[0]}") <= width:
            line = f"{line} {words.pop(0)}"
        if metrics.horizontalAdvance(line) > width:
            words.insert(0, line)  # a single word too long: it gets the elided last line
            break
        lines.append(line)
    if words:
        lines.append(metrics.elidedText(" ".join(words), Qt.TextElideMode.ElideRight, width))
    return lines or [""]


def _band_height(tile: int) -> int:
    """The instance band's height: thinner than the label box's bottom margin, so it never
    covers a label."""
    return max(3, round(tile * 0.045))
