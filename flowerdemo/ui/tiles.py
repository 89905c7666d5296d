"""The grid of flower tiles: each photo with its latest answer painted over it.

One widget paints every tile. An answer repaints only the rectangle of its own tile, so a
thousand answers a second cost a thousand small repaints (which Qt merges per frame), never a
relayout of the grid. The layout picks the largest tile size at which every photo fits on screen,
and scrolls only when that would make tiles smaller than `MIN_TILE`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image
from PySide6.QtCore import QEvent, QPoint, QRect, QRectF, QSize, Qt, Signal
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

MIN_TILE = 96
"""Below this many pixels a tile's labels stop being readable: scroll instead of shrinking."""
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

    def count(self) -> int:
        return len(self._tiles)

    def tile(self, index: int) -> TileState:
        return self._tiles[index]

    def clear_answers(self) -> None:
        """Forget every answer (the photos stay); in-flight marks stay until their answers come."""
        for state in self._tiles:
            state.topk, state.latency_ms, state.error, state.answers = (), None, None, 0
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
        self._layout = layout
        scroll = self.verticalScrollBar()
        scroll.setRange(0, max(0, layout.content_height - viewport.height()))
        scroll.setPageStep(max(1, viewport.height()))
        scroll.setSingleStep(max(1, layout.tile // 3))

    def _update_tile(self, index: int) -> None:
        self.viewport().update(self.tile_rect(index).adjusted(-2, -2, 2, 2))

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
            lines.append(f"last latency {state.latency_ms:.1f} ms, answered {state.answers}x")
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
        exposed = event.rect()
        offset = self.verticalScrollBar().value()
        step = self._layout.tile + self._layout.spacing
        first_row = max(0, (exposed.top() + offset) // step)
        last_row = (exposed.bottom() + offset) // step
        columns = self._layout.columns
        for row in range(first_row, last_row + 1):
            for index in range(row * columns, min((row + 1) * columns, len(self._tiles))):
                rect = self.tile_rect(index)
                if rect.intersects(exposed):
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
            # Centre crop to a square, as the model sees the photo.
            x, y = (image.width() - side) // 2, (image.height() - side) // 2
            pixmap = QPixmap.fromImage(image.copy(x, y, side, side))
            pixmap.setDevicePixelRatio(ratio)
            self._pixmaps[index] = pixmap
        return pixmap

    def _paint_tile(self, painter: QPainter, index: int, rect: QRect) -> None:
        state = self._tiles[index]
        size = rect.width()
        radius = max(4.0, size * 0.05)
        frame = QPainterPath()
        frame.addRoundedRect(QRectF(rect), radius, radius)
        painter.save()
        painter.setClipPath(frame)
        painter.drawPixmap(rect.topLeft(), self._pixmap(index))
        if state.in_flight:
            painter.fillRect(rect, QColor(41, 182, 246, 60))
        if state.answered or state.error:
            self._paint_answer(painter, state, rect)
        painter.restore()

        # Only states that need attention get a frame; right or wrong is the corner mark.
        border: QColor | None = None
        width = max(2.0, size * 0.025)
        if state.in_flight:
            border, width = IN_FLIGHT_COLOR, max(3.0, size * 0.045)
        elif state.error:
            border = FAILED_COLOR
        if border is not None:
            painter.setPen(QPen(border, width))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            inset = width / 2
            painter.drawRoundedRect(
                QRectF(rect).adjusted(inset, inset, -inset, -inset), radius, radius
            )
        if state.in_flight:
            self._paint_in_flight_badge(painter, rect)

    def _paint_answer(self, painter: QPainter, state: TileState, rect: QRect) -> None:
        size = rect.width()
        font_px = max(9, min(26, round(size / 11)))
        font = QFont(self.font())
        font.setPixelSize(font_px)
        bold = QFont(font)
        bold.setBold(True)
        bold.setPixelSize(round(font_px * 1.1))
        line = QFontMetrics(font).height()
        margin = max(3, size // 28)

        if state.error and not state.topk:
            lines: list[tuple[str, str]] = [(f"failed: {state.error}", "")]
        else:
            # Show as many of the top-k as fit in the lower half of the tile, the best one bold.
            fit = max(1, int((size * 0.55 - 2 * margin) // line))
            lines = [(g.label, f"{g.score:.0%}") for g in state.topk[:fit]]
        box_height = len(lines) * line + 2 * margin + (line // 4)
        box = QRect(rect.left(), rect.bottom() - box_height + 1, size, box_height)
        gradient = QLinearGradient(box.topLeft(), box.bottomLeft())
        gradient.setColorAt(0.0, QColor(0, 0, 0, 150))
        gradient.setColorAt(1.0, QColor(0, 0, 0, 215))
        painter.fillRect(box, QBrush(gradient))

        y = box.top() + margin
        for number, (label, score) in enumerate(lines):
            painter.setFont(bold if number == 0 else font)
            metrics = painter.fontMetrics()
            painter.setPen(QColor("#ffffff") if number == 0 else QColor("#d8d8d8"))
            score_width = metrics.horizontalAdvance(score) if score else 0
            label_room = size - 2 * margin - score_width - (margin if score else 0)
            text = metrics.elidedText(label, Qt.TextElideMode.ElideRight, max(0, label_room))
            row = QRect(rect.left() + margin, y, size - 2 * margin, line)
            painter.drawText(row, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, text)
            if score:
                painter.drawText(
                    row, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, score
                )
            y += line

        chip_font = QFont(font)
        chip_font.setPixelSize(max(9, round(font_px * 0.95)))
        chip_font.setBold(True)
        if state.latency_ms is not None:
            self._paint_chip(
                painter,
                QPoint(rect.left() + margin, rect.top() + margin),
                _format_ms(state.latency_ms),
                QColor(0, 0, 0, 185),
                chip_font,
            )
        correct = state.correct
        if correct is not None:
            diameter = max(14, round(size * 0.17))
            circle = QRect(
                rect.right() - margin - diameter, rect.top() + margin, diameter, diameter
            )
            painter.setPen(QPen(QColor("#ffffff"), max(1.5, diameter / 12)))
            painter.setBrush(CORRECT_COLOR if correct else WRONG_COLOR)
            painter.drawEllipse(circle)
            mark = QFont(chip_font)
            mark.setPixelSize(round(diameter * 0.7))
            painter.setFont(mark)
            painter.drawText(circle, Qt.AlignmentFlag.AlignCenter, "✓" if correct else "✗")

    def _paint_in_flight_badge(self, painter: QPainter, rect: QRect) -> None:
        size = rect.width()
        font = QFont(self.font())
        font.setPixelSize(max(9, min(22, round(size / 12))))
        font.setBold(True)
        margin = max(3, size // 28)
        metrics = QFontMetrics(font)
        text = "in flight"
        width, height = metrics.horizontalAdvance(text) + 2 * margin, metrics.height() + margin
        chip = QRect(rect.center().x() - width // 2, rect.center().y() - height // 2, width, height)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(IN_FLIGHT_COLOR)
        painter.drawRoundedRect(chip, height / 2, height / 2)
        painter.setFont(font)
        painter.setPen(QColor("#00212e"))
        painter.drawText(chip, Qt.AlignmentFlag.AlignCenter, text)

    @staticmethod
    def _paint_chip(
        painter: QPainter, corner: QPoint, text: str, background: QColor, font: QFont
    ) -> None:
        metrics = QFontMetrics(font)
        pad = max(2, metrics.height() // 5)
        chip = QRect(
            corner.x(),
            corner.y(),
            metrics.horizontalAdvance(text) + 2 * pad,
            metrics.height() + pad,
        )
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(background)
        painter.drawRoundedRect(chip, pad * 1.5, pad * 1.5)
        painter.setFont(font)
        painter.setPen(QColor("#ffffff"))
        painter.drawText(chip, Qt.AlignmentFlag.AlignCenter, text)


def _format_ms(milliseconds: float) -> str:
    if milliseconds >= 1000:
        return f"{milliseconds / 1000:.1f} s"
    if milliseconds >= 100:
        return f"{milliseconds:.0f} ms"
    return f"{milliseconds:.1f} ms"
