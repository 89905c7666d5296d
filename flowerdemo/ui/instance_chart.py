"""Throughput by instance: each instance's images/s as stacked areas over the last minute.

The live panel refreshes 15 times a second; this chart samples and redraws at SAMPLE_HZ only:
each rate is already an average over the statistics window (seconds), and a minute across a
few hundred pixels moves less than a pixel between samples, while filled areas are the dearest
thing the panel paints. The history sits in preallocated numpy buffers (time along the second
axis, so each series is one contiguous row); a sample writes one column. Stacking: instance k's curve is the sum of
the rates of instances 0..k, filled down to zero with an opaque colour, and the lower curves are
drawn above the higher ones, so each band shows one instance's share.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol

import numpy as np
import pyqtgraph as pg
from PySide6.QtGui import QColor

from flowerdemo.ui.instance_colors import instance_color

MAX_SERIES = 16
"""Instances drawn; answers from more (a remote stack of many) are left off this chart."""
SAMPLE_HZ = 5.0
"""Samples (and redraws) per second."""


class _InstanceRate(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def window_images_per_s(self) -> float: ...


class InstanceThroughputChart:
    """Draws on `plot` (a PlotWidget styled like the panel's other charts)."""

    def __init__(self, plot: pg.PlotWidget, history_s: float, background: str) -> None:
        self.plot = plot
        self._history_s = history_s
        # Room for the history at up to twice the sample rate before the buffer slides back.
        self._capacity = max(16, int(history_s * SAMPLE_HZ * 2))
        self._times = np.zeros(2 * self._capacity)
        self._rates = np.zeros((MAX_SERIES, 2 * self._capacity))
        self._stacked = np.zeros((MAX_SERIES, 2 * self._capacity))
        self._ago = np.zeros(2 * self._capacity)
        self._start = 0
        self._end = 0
        self._series: dict[str, int] = {}
        self._sampled_at = -math.inf
        self._drawn_end = -1
        self._top = 0.0
        self._curves: list[pg.PlotDataItem] = []
        self._background = QColor(background)
        self._legend = plot.addLegend(offset=(8, 4), labelTextColor="#dddddd")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._series)

    def clear(self) -> None:
        self._start = self._end = 0
        self._sampled_at = -math.inf
        self._drawn_end = -1
        self._top = 0.0
        for curve in self._curves:
            curve.setData([], [])

    def record(self, now: float, instances: Iterable[_InstanceRate], settled: bool) -> None:
        """A refresh's rates (0 until the statistics window has settled after a start); kept
        SAMPLE_HZ times a second."""
        if now - self._sampled_at < 1.0 / SAMPLE_HZ:
            return
        self._sampled_at = now
        if self._end == len(self._times):
            self._slide()
        column = self._end
        self._times[column] = now
        self._rates[:, column] = 0.0
        for instance in instances:
            row = self._series.get(instance.name)
            if row is None:
                row = self._add_series(instance.name)
                if row is None:
                    continue
            rate = instance.window_images_per_s
            self._rates[row, column] = rate if settled and rate == rate else 0.0
        self._end += 1
        horizon = now - self._history_s
        while self._start < self._end and self._times[self._start] < horizon:
            self._start += 1

    def redraw(self, now: float) -> float:
        """Redraw the areas if a sample came since the last time; the highest stacked rate
        shown (for the y range)."""
        count = len(self._series)
        start, end = self._start, self._end
        if not count or end <= start:
            return 0.0
        if end == self._drawn_end:
            return self._top
        self._drawn_end = end
        ago = self._ago[start:end]
        np.subtract(self._times[start:end], now, out=ago)
        stacked = self._stacked[:count, start:end]
        np.cumsum(self._rates[:count, start:end], axis=0, out=stacked)
        for row in range(count):
            self._curves[row].setData(ago, stacked[row])
        self._top = float(stacked[count - 1].max())
        return self._top

    def _add_series(self, name: str) -> int | None:
        row = len(self._series)
        if row >= MAX_SERIES:
            return None
        self._series[name] = row
        color = instance_color(name)
        # Opaque, a little darker than the instance's colour: the bands read as areas, the
        # curve on top of each as its edge.
        fill = QColor(
            *(
                round(0.72 * part + 0.28 * back)
                for part, back in zip(
                    (color.red(), color.green(), color.blue()),
                    (self._background.red(), self._background.green(), self._background.blue()),
                    strict=True,
                )
            )
        )
        curve = self.plot.plot(
            pen=pg.mkPen(color, width=1), fillLevel=0, brush=pg.mkBrush(fill), name=name
        )
        # Lower series above higher ones: each higher band shows only above the ones below it.
        curve.setZValue(-row)
        self._curves.append(curve)
        self._rates[row, :] = 0.0
        return row

    def _slide(self) -> None:
        """Move the kept history to the front of the buffers (once per `capacity` refreshes)."""
        keep = self._end - self._start
        if keep >= self._capacity:
            self._start = self._end - self._capacity + 1
            keep = self._capacity - 1
        source = slice(self._start, self._end)
        self._times[:keep] = self._times[source]
        self._rates[:, :keep] = self._rates[:, source]
        self._start, self._end = 0, keep
