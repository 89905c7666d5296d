"""The live panel: counters, throughput and latency charts with the budget, server information.

The window's refresh timer hands it a StatsSnapshot ten or more times a second; the panel keeps
the last `HISTORY_S` seconds of figures and redraws its charts from them. Over budget (the
sliding window's latency at the verdict percentile, p90 unless `--percentile` says otherwise,
above the budget) turns the badge and the latency chart red.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QFont, QFontMetrics
from PySide6.QtWidgets import (
    QFrame,
    QGraphicsItem,
    QGridLayout,
    QLabel,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from flowerdemo.core.stats import StatsSnapshot
from flowerdemo.core.text import clean_server_text
from flowerdemo.core.units import format_ms
from flowerdemo.ui.instance_chart import InstanceThroughputChart

HISTORY_S = 60.0
REFRESH_HZ = 15
"""The window refreshes this panel this often (the issue asks for at least 10)."""
MARKER_COLOR = "#b39ddb"
MIN_RATE_WINDOW_S = 0.5
MIN_SAMPLES_FOR_VERDICT = 3
"""Fewer answers than this in the window say nothing about a percentile: no budget verdict."""

OK_COLOR = "#2e7d32"
OVER_COLOR = "#c62828"
IDLE_COLOR = "#455a64"
CHART_BACKGROUND = "#15191d"
OVER_BUDGET_BACKGROUND = "#4a1010"
CURVES = (("p50", "#81c784"), ("p90", "#ffd54f"), ("p99", "#ff8a65"))


@dataclass(frozen=True)
class ServerInfo:
    """What the info box shows about the server side."""

    url: str
    protocol: str
    model: str
    local_instances: int | None = None
    """Triton instances of the embedded local stack; None when connected elsewhere."""


class _Figure(QFrame):
    """A caption over a large number."""

    def __init__(self, caption: str, parent: QWidget | None = None, scale: float = 1.8) -> None:
        super().__init__(parent)
        self.setObjectName("figure")
        self.caption = QLabel(caption, self)
        self.value = QLabel("–", self)
        font = QFont(self.value.font())
        font.setPointSizeF(font.pointSizeF() * scale)
        font.setBold(True)
        self.value.setFont(font)
        self.value.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.value.setMinimumWidth(self.value.fontMetrics().horizontalAdvance("00000"))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 4)
        layout.setSpacing(0)
        layout.addWidget(self.caption)
        layout.addWidget(self.value)

        self._color: str | None = None

    def set(self, text: str, color: str | None = None) -> None:
        self.value.setText(text)
        # A style sheet change re-polishes the widget: only when the colour really changes.
        if color != self._color:
            self._color = color
            self.value.setStyleSheet(f"color: {color};" if color else "")


class LivePanel(QWidget):
    """Throughput and latency over time, the budget, counters and server information."""

    def __init__(self, budget_ms: float = 50.0, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._budget_ms = budget_ms
        self._over_budget = False
        self._last_verdict: tuple[int, float, int, str] | None = None
        self._counts: deque[tuple[float, int, int]] = deque()
        """(time, answered, failed) at each refresh over the last window: are requests failing?"""
        """The last snapshot's (window answers, latency at the verdict percentile, percentile)."""
        self._latency_top = 0.0
        self._throughput_top = 0.0
        self._instances_top = 0.0
        self._markers: deque[tuple[float, pg.InfiniteLine]] = deque()
        self._verdict: bool | str | None = "unset"
        self._history: deque[tuple[float, float, float, float, float]] = deque()
        self._refresh_times: deque[float] = deque(maxlen=64)

        self.badge = QLabel(self)
        self.badge.setAlignment(Qt.AlignmentFlag.AlignCenter)
        # The verdict with its goodput, or a failure with its reason, is wider than the panel
        # at some sizes: it wraps instead of being cut off at both ends.
        self.badge.setWordWrap(True)
        badge_font = QFont(self.badge.font())
        badge_font.setPointSizeF(badge_font.pointSizeF() * 1.6)
        badge_font.setBold(True)
        self.badge.setFont(badge_font)
        # Room for two lines from the start, so the panel does not jump when the text wraps.
        self.badge.setMinimumHeight(max(48, 2 * QFontMetrics(badge_font).lineSpacing() + 14))
        self.badge.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

        self.throughput = _Figure("images/s", self, scale=2.2)
        self.p50 = _Figure("p50 ms", self)
        self.p90 = _Figure("p90 ms", self)
        self.p99 = _Figure("p99 ms", self)
        self.sent = _Figure("sent", self, scale=1.4)
        self.answered = _Figure("answered", self, scale=1.4)
        self.failed = _Figure("failed", self, scale=1.4)
        self.in_flight = _Figure("in flight", self, scale=1.4)
        figures = QGridLayout()
        figures.setSpacing(4)
        figures.addWidget(self.throughput, 0, 0)
        figures.addWidget(self.p50, 0, 1)
        figures.addWidget(self.p90, 0, 2)
        figures.addWidget(self.p99, 0, 3)
        figures.addWidget(self.sent, 1, 0)
        figures.addWidget(self.answered, 1, 1)
        figures.addWidget(self.failed, 1, 2)
        figures.addWidget(self.in_flight, 1, 3)

        self.throughput_plot = self._make_plot("Throughput (images/s)")
        self.throughput_curve = self.throughput_plot.plot(
            pen=pg.mkPen("#4fc3f7", width=2),
            fillLevel=0,
            brush=pg.mkBrush(79, 195, 247, 50),
            connect="finite",
        )
        self.instances_plot = self._make_plot("Throughput by instance (images/s)")
        self.instances_chart = InstanceThroughputChart(
            self.instances_plot, HISTORY_S, CHART_BACKGROUND
        )
        self.latency_plot = self._make_plot("Latency percentiles (ms)")
        self.latency_plot.addLegend(offset=(8, 4), labelTextColor="#dddddd")
        self.latency_curves = {
            name: self.latency_plot.plot(pen=pg.mkPen(color, width=2), name=name, connect="finite")
            for name, color in CURVES
        }
        self.budget_line = pg.InfiniteLine(
            pos=budget_ms,
            angle=0,
            movable=False,
            pen=pg.mkPen("#ef5350", width=2, style=Qt.PenStyle.DashLine),
            label="budget {value:.0f} ms",
            labelOpts={"position": 0.55, "color": "#ef9a9a", "anchors": [(0, 1), (0, 1)]},
        )
        self.latency_plot.addItem(self.budget_line, ignoreBounds=True)

        self.server_split = QLabel(self)
        self.server_split.setObjectName("serverSplit")
        self.server_split.setToolTip(
            "Where the servers spent each request's time over the last window, from Triton's "
            "own statistics: waiting in the queue, and computing (input, inference, output)"
        )
        self.server_split.hide()
        self.server_label = QLabel("Not connected", self)
        self.server_label.setWordWrap(True)
        self.server_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.server_label.setObjectName("serverInfo")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.badge)
        layout.addLayout(figures)
        layout.addWidget(self.latency_plot, 3)
        layout.addWidget(self.throughput_plot, 2)
        layout.addWidget(self.instances_plot, 2)
        layout.addWidget(self.server_split)
        layout.addWidget(self.server_label)
        self._show_verdict(None)

    @staticmethod
    def _make_plot(title: str) -> pg.PlotWidget:
        plot = pg.PlotWidget(background=CHART_BACKGROUND)
        plot.setTitle(title, color="#e0e0e0")
        plot.showGrid(x=True, y=True, alpha=0.25)
        plot.setMouseEnabled(x=False, y=False)
        plot.hideButtons()
        plot.setMenuEnabled(False)
        plot.setXRange(-HISTORY_S, 0, padding=0)
        plot.setLabel("bottom", "seconds ago")
        plot.setMinimumHeight(120)
        for axis in ("left", "bottom"):
            item = plot.getAxis(axis)
            item.setTextPen("#cfcfcf")
            # An axis (its labels and the grid it draws) changes only with its range, yet was
            # replayed on every refresh: cached as a pixmap, the panel's refresh costs the GUI
            # thread about half as much (offscreen, 3 charts: 7.3 -> 3.9 ms of thread time).
            item.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        return plot

    # -- state --------------------------------------------------------------------------
    @property
    def budget_ms(self) -> float:
        return self._budget_ms

    @property
    def over_budget(self) -> bool:
        return self._over_budget

    def refresh_rate_hz(self) -> float:
        """How often the panel was actually redrawn, over its last 64 refreshes."""
        if len(self._refresh_times) < 2:
            return 0.0
        span = self._refresh_times[-1] - self._refresh_times[0]
        return (len(self._refresh_times) - 1) / span if span > 0 else 0.0

    def set_budget(self, budget_ms: float) -> None:
        self._budget_ms = budget_ms
        self.budget_line.setValue(budget_ms)
        # The verdict follows at once, not at the next refresh.
        self._judge(self._last_verdict)

    def set_server_info(self, info: ServerInfo | None, details: str = "") -> None:
        if info is None:
            self.server_label.setText(details or "Not connected")
            return
        where = (
            f"local stack, {info.local_instances} Triton instance(s) behind Envoy"
            if info.local_instances is not None
            else "remote server"
        )
        text = f"<b>{info.protocol}</b> {info.url} ({where})<br>model {info.model}"
        if details:
            text += f"<br>{details}"
        self.server_label.setText(text)

    def clear_history(self) -> None:
        self._history.clear()
        self._counts.clear()
        self.instances_chart.clear()

    def add_marker(self, at: float, text: str) -> None:
        """A vertical line with a label on the latency chart at monotonic time `at` (an
        autoscale decision, say); it scrolls with the chart and leaves with the history."""
        line = pg.InfiniteLine(
            pos=at - time.monotonic(),
            angle=90,
            movable=False,
            pen=pg.mkPen(MARKER_COLOR, width=1.5, style=Qt.PenStyle.DotLine),
            label=text,
            labelOpts={"position": 0.92, "color": MARKER_COLOR, "anchors": [(1, 0), (1, 0)]},
        )
        self.latency_plot.addItem(line, ignoreBounds=True)
        self._markers.append((at, line))

    @property
    def markers(self) -> list[tuple[float, str]]:
        """The markers on the latency chart: (monotonic time, label)."""
        return [(at, line.label.toPlainText()) for at, line in self._markers]

    # -- refresh ------------------------------------------------------------------------
    def show_snapshot(self, snapshot: StatsSnapshot, now: float | None = None) -> None:
        """Update every figure and chart from one snapshot (the refresh timer calls this)."""
        now = time.monotonic() if now is None else now
        self._refresh_times.append(now)
        window = snapshot.window
        have_window = window.count > 0
        # A rate over the first instants after a (re)start is one burst divided by almost no
        # time: leave it out rather than draw a spike.
        settled = snapshot.window_s >= MIN_RATE_WINDOW_S
        rate = snapshot.window_images_per_s if settled else math.nan
        ms = (lambda s: s * 1000.0) if have_window else (lambda _s: math.nan)
        self._history.append(
            (
                now,
                rate,
                ms(window.p50),
                ms(window.p90),
                ms(window.p99),
            )
        )
        while self._history and self._history[0][0] < now - HISTORY_S:
            self._history.popleft()

        # A few clicks (interactive mode) leave the short window empty within seconds: the
        # figures and the verdict then describe every answer of the run instead.
        shown, verdict_s = window, snapshot.window_verdict_s
        if window.count < MIN_SAMPLES_FOR_VERDICT and snapshot.run.count > window.count:
            shown, verdict_s = snapshot.run, snapshot.run_verdict_s
        failing = self._failing_text(snapshot, now)
        if failing is not None:
            self._last_verdict = None
            self._show_failing(failing)
            verdict = None
        else:
            scope = "" if shown is window else f"  (all {shown.count:,} answers)"
            # Goodput: the share of those answers within the budget.
            goodput = snapshot.window_goodput if shown is window else snapshot.run_goodput
            if not math.isnan(goodput):
                scope = f"  ·  {goodput:.0%} within{scope}"
            verdict = self._judge((shown.count, verdict_s, snapshot.percentile, scope))
        self.throughput.set(f"{rate:,.0f}" if settled else "–")
        for figure, value in (
            (self.p50, shown.p50),
            (self.p90, shown.p90),
            (self.p99, shown.p99),
        ):
            figure.set(format_ms(value, unit=False) if shown.count else "–")
        judged = {50: self.p50, 90: self.p90, 99: self.p99}.get(snapshot.percentile)
        if verdict is False and judged is not None:
            judged.set(format_ms(verdict_s, unit=False), OVER_COLOR)
        self.sent.set(f"{snapshot.sent:,}")
        self.answered.set(f"{snapshot.answered:,}")
        self.failed.set(f"{snapshot.failed:,}", "#ff7043" if snapshot.failed else None)
        self.in_flight.set(f"{snapshot.in_flight:,}")
        self.instances_chart.record(now, snapshot.instances, settled)
        self._show_server_split(snapshot)
        self._redraw(now)

    def _redraw(self, now: float) -> None:
        if not self._history:
            return
        data = np.asarray(self._history, dtype=np.float64)
        ago = data[:, 0] - now
        self.throughput_curve.setData(ago, data[:, 1])
        for column, (name, _color) in enumerate(CURVES, start=2):
            self.latency_curves[name].setData(ago, data[:, column])
        peak = np.nanmax(data[:, 4]) if np.isfinite(data[:, 4]).any() else 0.0
        # The budget line always stays in view, with room above the worst p99 shown.
        self._latency_top = _steady_top(
            self.latency_plot, self._latency_top, max(self._budget_ms * 1.25, float(peak) * 1.1)
        )
        top = float(np.nanmax(data[:, 1])) if np.isfinite(data[:, 1]).any() else 0.0
        self._throughput_top = _steady_top(
            self.throughput_plot, self._throughput_top, max(10.0, top * 1.15)
        )
        stacked_top = self.instances_chart.redraw(now)
        self._instances_top = _steady_top(
            self.instances_plot, self._instances_top, max(10.0, stacked_top * 1.15)
        )
        while self._markers and self._markers[0][0] < now - HISTORY_S:
            self.latency_plot.removeItem(self._markers.popleft()[1])
        for at, line in self._markers:
            line.setValue(at - now)

    def _show_server_split(self, snapshot: StatsSnapshot) -> None:
        split = snapshot.window_server
        if split is None:
            if not self.server_split.isHidden():
                self.server_split.hide()
            return
        text = (
            f"server time per request: queue <b>{format_ms(split.queue_s)}</b>, "
            f"compute <b>{format_ms(split.compute_s)}</b>"
        )
        # The split changes with each server reading (once a second), not every refresh; setting
        # the same text again would still relayout the label.
        if text != self.server_split.text():
            self.server_split.setText(text)
        if self.server_split.isHidden():
            self.server_split.show()

    def _failing_text(self, snapshot: StatsSnapshot, now: float) -> str | None:
        """The headline when requests fail and none is answered: over the last window, or, when
        nothing was ever answered, over the whole run. None otherwise."""
        self._counts.append((now, snapshot.answered, snapshot.failed))
        while len(self._counts) > 1 and self._counts[1][0] <= now - max(snapshot.window_s, 1.0):
            self._counts.popleft()
        _at, answered_before, failed_before = self._counts[0]
        recent_failed = snapshot.failed - failed_before
        if snapshot.answered == 0 and snapshot.failed > 0:
            count, where = snapshot.failed, "every request failed"
        elif recent_failed > 0 and snapshot.answered == answered_before:
            count, where = recent_failed, "requests failing, none answered"
        else:
            return None
        reason = clean_server_text(snapshot.last_error, limit=90) if snapshot.last_error else ""
        text = f"{where.upper()} ({count:,})"
        return f"{text}: {reason}" if reason else text

    def _show_failing(self, text: str) -> None:
        changed = self._verdict != "failing"
        self._verdict = "failing"
        self._over_budget = False
        self.badge.setText(text)
        if changed:
            self.badge.setStyleSheet(
                f"background: {OVER_COLOR}; color: white; border-radius: 6px; padding: 6px;"
            )
            self.latency_plot.setBackground(CHART_BACKGROUND)

    def _judge(self, verdict: tuple[int, float, int, str] | None) -> bool | None:
        """Within budget (True), over (False), or too few answers to say (None); shown.
        `verdict`: answers judged, the latency at the verdict percentile, the percentile, and
        what was judged when it is not the window (shown after the figures)."""
        self._last_verdict = verdict
        if verdict is None or verdict[0] < MIN_SAMPLES_FOR_VERDICT or math.isnan(verdict[1]):
            self._show_verdict(None, answers=verdict[0] if verdict is not None else 0)
            return None
        latency_ms = verdict[1] * 1000.0
        within = latency_ms <= self._budget_ms
        self._show_verdict(within, latency_ms, verdict[2], verdict[3])
        return within

    def _show_verdict(
        self,
        within: bool | None,
        latency_ms: float = math.nan,
        percentile: int = 90,
        scope: str = "",
        *,
        answers: int = 0,
    ) -> None:
        changed = within is not self._verdict
        self._verdict = within
        self._over_budget = within is False
        if within is None:
            if answers:
                text = f"budget {self._budget_ms:.0f} ms: {answers} answer(s) so far"
            else:
                text = f"budget {self._budget_ms:.0f} ms: waiting for answers"
            color = IDLE_COLOR
        elif within:
            text = f"WITHIN BUDGET  p{percentile} {latency_ms:.0f} ≤ {self._budget_ms:.0f} ms"
            color = OK_COLOR
        else:
            text = f"OVER BUDGET  p{percentile} {latency_ms:.0f} > {self._budget_ms:.0f} ms"
            color = OVER_COLOR
        self.badge.setText(text + scope)
        if changed:
            self.badge.setStyleSheet(
                f"background: {color}; color: white; border-radius: 6px; padding: 6px;"
            )
            self.latency_plot.setBackground(
                OVER_BUDGET_BACKGROUND if self._over_budget else CHART_BACKGROUND
            )


def _nice_ceiling(value: float) -> float:
    """The next round number at or above `value` (1, 1.5, 2, 3, 5 or 7.5 times a power of 10)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0):
        if value <= step * power:
            return step * power
    return 10.0 * power


def _steady_top(plot: pg.PlotWidget, current: float, needed: float) -> float:
    """Move a chart's y range only when the data leaves it or shrinks well inside it: a range
    that changes every refresh makes pyqtgraph redraw its axis text every time."""
    if current <= 0 or needed > current or needed < current * 0.5:
        current = _nice_ceiling(needed)
        plot.setYRange(0, current, padding=0)
    return current
