"""The Instances panel: every Triton instance behind the balancer, its state and its share of work.

A table model over the instances (napari's `_qt/containers` pattern: the model wraps the
snapshots and reports only what changed, as row insertions, removals and `dataChanged`), so a
selection survives refreshes and the view repaints only changed cells. Rows come from one of:

- the local stack's snapshots (`LocalStack.states()`: name, device, state, restarts), joined
  with the client's per-instance statistics (`StatsSnapshot.instances`) by instance name;
- for a stack this app did not start, Envoy's admin view (`--admin host:port`), whose upstream
  hosts give a name (or address), health and request counts;
- the statistics alone, when nothing else is known (a server answering with instance names).

The buttons act on the local stack only: they emit requests, and the window's task carries them
out on a worker thread, so the GUI never waits for a process to start or stop.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QItemSelectionModel,
    QModelIndex,
    QPersistentModelIndex,
    Qt,
    Signal,
)
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from flowerdemo.core.stats import InstanceStats
from flowerdemo.core.text import clean_server_text
from flowerdemo.ui.instance_colors import instance_color

if TYPE_CHECKING:
    from flowerdemo.serving.admin import UpstreamHost
    from flowerdemo.serving.stack import InstanceState

STATISTICS_REFRESH_S = 0.5
"""The table's figures change at most this often: readable, and cheap for the GUI thread."""

STATE_COLORS = {
    "ready": "#66bb6a",
    "healthy": "#66bb6a",
    "starting": "#ffa726",
    "draining": "#ffa726",
    "ejected": "#ef5350",
    "down": "#ef5350",
    "failed": "#ef5350",
    "unhealthy": "#ef5350",
    "stopped": "#9e9e9e",
}
"""Text colour of a state (light enough for the booth's dark theme): serving green, changing
amber, not serving red, stopped grey."""


@dataclass(frozen=True)
class InstanceRow:
    """One line of the table."""

    name: str
    device: str = ""
    state: str = ""
    """The stack's state ("ready", "draining", …), Envoy's health for a remote stack, or ""."""
    detail: str = ""
    """Why the state is what it is (the stack's message, Envoy's health flags): the tooltip."""
    restarts: int | None = None
    answered: int | None = None
    failed: int | None = None
    window_share: float = math.nan
    window_images_per_s: float = math.nan
    p50_ms: float = math.nan
    p90_ms: float = math.nan


@dataclass(frozen=True)
class _Column:
    title: str
    tip: str


COLUMNS = (
    _Column("", "The instance's colour on the tiles and the charts"),
    _Column("instance", "Instance name (from the load balancer)"),
    _Column("device", "Where the instance runs: cpu, cuda:k or a MIG device"),
    _Column("state", "starting, ready, draining, ejected, down, stopped, failed"),
    _Column("restarts", "Times the supervisor restarted it"),
    _Column("img/s", "Images it answered per second, over the last statistics window"),
    _Column("share", "Its share of the answers in the last window"),
    _Column("p50 ms", "Median latency of its answers in the last window"),
    _Column("p90 ms", "90th percentile latency of its answers in the last window"),
    _Column("answered", "Requests it answered in this run"),
    _Column("failed", "Requests that failed after reaching it in this run"),
)
_WIDEST = (
    "",
    "triton-00",
    "cuda:0",
    "starting",
    "99",
    "9,999",
    "100%",
    "999.9",
    "999.9",
    "9,999,999",
    "99,999",
)
(
    COLOR_COLUMN,
    NAME_COLUMN,
    DEVICE_COLUMN,
    STATE_COLUMN,
    RESTARTS_COLUMN,
    RATE_COLUMN,
    SHARE_COLUMN,
    P50_COLUMN,
    P90_COLUMN,
    ANSWERED_COLUMN,
    FAILED_COLUMN,
) = range(len(COLUMNS))


def rows_from_sources(
    states: Sequence[InstanceState] | None = None,
    statistics: Iterable[InstanceStats] = (),
    upstreams: Sequence[UpstreamHost] | None = None,
) -> list[InstanceRow]:
    """Join what is known about each instance by name: the stack's (or Envoy's) list first, in
    its order, then instances only the statistics know (the unknown instance, say)."""
    by_name = {stat.name: stat for stat in statistics}
    rows: list[InstanceRow] = []
    seen: set[str] = set()
    if states is not None:
        for state in states:
            seen.add(state.name)
            rows.append(
                _with_statistics(
                    InstanceRow(
                        name=state.name,
                        device=state.device,
                        state=state.state,
                        detail=clean_server_text(state.message) if state.message else "",
                        restarts=state.restarts,
                    ),
                    by_name.get(state.name),
                )
            )
    elif upstreams is not None:
        # Envoy lists each host once per cluster (gRPC and HTTP): one row per instance, in the
        # worst state any of its clusters reports.
        hosts: dict[str, list[UpstreamHost]] = {}
        for host in upstreams:
            hosts.setdefault(clean_server_text(host.instance or host.address, 80), []).append(host)
        for name, group in hosts.items():
            seen.add(name)
            flags = sorted({clean_server_text(f, 60) for h in group for f in h.health_flags})
            addresses = sorted({clean_server_text(h.address, 80) for h in group})
            rows.append(
                _with_statistics(
                    InstanceRow(
                        name=name,
                        device="remote",
                        state=_upstream_state(group),
                        detail=", ".join(addresses) + (f": {', '.join(flags)}" if flags else ""),
                    ),
                    by_name.get(name),
                )
            )
    for name, stat in by_name.items():
        if name not in seen:
            rows.append(_with_statistics(InstanceRow(name=name), stat))
    return rows


def _upstream_state(group: Sequence[UpstreamHost]) -> str:
    if any(host.ejected for host in group):
        return "ejected"
    if any(host.draining for host in group):
        return "draining"
    return "healthy" if all(host.healthy for host in group) else "unhealthy"


def _with_statistics(row: InstanceRow, stat: InstanceStats | None) -> InstanceRow:
    if stat is None:
        return row
    return dataclasses.replace(
        row,
        answered=stat.answered,
        failed=stat.failed,
        window_share=stat.window_share,
        window_images_per_s=stat.window_images_per_s,
        p50_ms=_ms(stat.window.p50),
        p90_ms=_ms(stat.window.p90),
    )


def _ms(seconds: float) -> float:
    return seconds * 1000.0 if math.isfinite(seconds) else math.nan


class InstancesModel(QAbstractTableModel):
    """The instances as table rows; `set_rows` reports only the difference to the views."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._rows: list[InstanceRow] = []

    # -- reading ------------------------------------------------------------------------
    @property
    def rows(self) -> tuple[InstanceRow, ...]:
        return tuple(self._rows)

    def names(self) -> list[str]:
        return [row.name for row in self._rows]

    def row_of(self, name: str) -> InstanceRow | None:
        return next((row for row in self._rows if row.name == name), None)

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(COLUMNS):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section].title
        if role == Qt.ItemDataRole.ToolTipRole:
            return COLUMNS[section].tip
        return None

    def data(
        self,
        index: QModelIndex | QPersistentModelIndex,
        role: int = Qt.ItemDataRole.DisplayRole,
    ) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        row, column = self._rows[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return _cell_text(row, column)
        if role == Qt.ItemDataRole.BackgroundRole and column == COLOR_COLUMN:
            return instance_color(row.name)
        if role == Qt.ItemDataRole.ForegroundRole and column == STATE_COLUMN:
            color = STATE_COLORS.get(row.state)
            return QColor(color) if color else None
        if role == Qt.ItemDataRole.ToolTipRole:
            return row.detail or None
        if role == Qt.ItemDataRole.TextAlignmentRole and column >= RESTARTS_COLUMN:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    # -- writing ------------------------------------------------------------------------
    def set_rows(self, rows: Sequence[InstanceRow]) -> None:
        """Show `rows`: removed instances leave, new ones are inserted where they belong and
        changed rows report the change, so selections and scroll positions stay put."""
        wanted = [row.name for row in rows]
        if len(set(wanted)) != len(wanted):
            rows = list({row.name: row for row in rows}.values())
            wanted = [row.name for row in rows]
        for position in range(len(self._rows) - 1, -1, -1):
            if self._rows[position].name not in wanted:
                self.beginRemoveRows(QModelIndex(), position, position)
                del self._rows[position]
                self.endRemoveRows()
        kept = [row.name for row in self._rows]
        if kept != [name for name in wanted if name in kept]:
            # The order changed (it does not for our stack): rebuild rather than move rows.
            self.beginResetModel()
            self._rows = list(rows)
            self.endResetModel()
            return
        for position, row in enumerate(rows):
            if position >= len(self._rows) or self._rows[position].name != row.name:
                self.beginInsertRows(QModelIndex(), position, position)
                self._rows.insert(position, row)
                self.endInsertRows()
            elif self._rows[position] != row:
                self._rows[position] = row
                self.dataChanged.emit(
                    self.index(position, 0), self.index(position, len(COLUMNS) - 1)
                )


def _cell_text(row: InstanceRow, column: int) -> str | None:
    if column == COLOR_COLUMN:
        return None
    if column == NAME_COLUMN:
        return row.name
    if column == DEVICE_COLUMN:
        return row.device or "–"
    if column == STATE_COLUMN:
        return row.state or "–"
    if column == RESTARTS_COLUMN:
        return "–" if row.restarts is None else str(row.restarts)
    if column == RATE_COLUMN:
        return _number(row.window_images_per_s, "{:,.0f}")
    if column == SHARE_COLUMN:
        return _number(row.window_share * 100.0, "{:.0f}%")
    if column == P50_COLUMN:
        return _number(row.p50_ms, "{:.1f}")
    if column == P90_COLUMN:
        return _number(row.p90_ms, "{:.1f}")
    if column == ANSWERED_COLUMN:
        return "–" if row.answered is None else f"{row.answered:,}"
    if column == FAILED_COLUMN:
        return "–" if row.failed is None else f"{row.failed:,}"
    return None


def _number(value: float, template: str) -> str:
    return template.format(value) if math.isfinite(value) else "–"


class InstancesPanel(QWidget):
    """The table of instances with Add, Remove, Kill and Restart for the local stack."""

    sig_add_requested = Signal()
    """Start one more instance."""
    sig_remove_requested = Signal(str)
    """Drain and stop an instance: its name, or "" for the newest."""
    sig_kill_requested = Signal(str)
    """SIGKILL an instance (fault injection): its name."""
    sig_restart_requested = Signal(str)
    """Restart an instance: its name."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("instancesPanel")
        self._states: Sequence[InstanceState] | None = None
        self._upstreams: Sequence[UpstreamHost] | None = None
        self._statistics: tuple[InstanceStats, ...] = ()
        self._shown_at = -math.inf
        self._controllable = False

        self.model = InstancesModel(self)
        self.view = QTableView(self)
        self.view.setModel(self.model)
        self.view.setAccessibleName("Instances")
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.verticalHeader().hide()
        self.view.verticalHeader().setDefaultSectionSize(self.view.fontMetrics().height() + 6)
        self.view.setAlternatingRowColors(True)
        self.view.setWordWrap(False)
        # Widths from the widest text each column shows, set once: measuring the cells on every
        # refresh (ResizeToContents) costs the GUI thread for nothing.
        header = self.view.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        metrics = self.view.fontMetrics()
        for column, widest in enumerate(_WIDEST):
            width = max(
                metrics.horizontalAdvance(widest), metrics.horizontalAdvance(COLUMNS[column].title)
            )
            header.resizeSection(column, width + 14)
        header.resizeSection(COLOR_COLUMN, 14)
        header.setSectionResizeMode(NAME_COLUMN, QHeaderView.ResizeMode.Stretch)

        self.source_label = QLabel("No instances known yet", self)
        self.source_label.setObjectName("instancesSource")
        self.add_button = QPushButton("Add", self)
        self.add_button.setToolTip("Start one more Triton instance behind Envoy")
        self.remove_button = QPushButton("Remove", self)
        self.remove_button.setToolTip(
            "Drain the selected instance (the newest if none is selected): Envoy sends it no new "
            "requests and it stops once its requests are answered"
        )
        self.kill_button = QPushButton("Kill", self)
        self.kill_button.setToolTip(
            "SIGKILL the selected instance, as a crash would (fault injection)"
        )
        self.restart_button = QPushButton("Restart", self)
        self.restart_button.setToolTip("Stop and start the selected instance")
        self.add_button.clicked.connect(self.sig_add_requested)
        self.remove_button.clicked.connect(
            lambda: self.sig_remove_requested.emit(self.selected_name() or "")
        )
        self.kill_button.clicked.connect(self._emit_for_selection(self.sig_kill_requested))
        self.restart_button.clicked.connect(self._emit_for_selection(self.sig_restart_requested))
        self.view.selectionModel().selectionChanged.connect(
            lambda _selected, _deselected: self._enable_buttons()
        )
        self.model.modelReset.connect(self._enable_buttons)
        self.model.rowsRemoved.connect(self._enable_buttons)

        buttons = QHBoxLayout()
        buttons.setSpacing(4)
        buttons.addWidget(self.source_label, 1)
        for button in (self.add_button, self.remove_button, self.kill_button, self.restart_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.setSpacing(2)
        layout.addLayout(buttons)
        layout.addWidget(self.view, 1)
        self._enable_buttons()

    # -- what the window feeds in -------------------------------------------------------
    def set_controllable(self, controllable: bool, source: str) -> None:
        """Whether the buttons act (a local stack) and where the rows come from, in words."""
        self._controllable = controllable
        self.source_label.setText(source)
        self._enable_buttons()

    def show_states(self, states: Sequence[InstanceState]) -> None:
        """The local stack's instances changed (shown at once)."""
        self._states, self._upstreams = states, None
        self._show()

    def show_upstreams(self, hosts: Sequence[UpstreamHost]) -> None:
        """Envoy's admin view of a stack this app did not start (shown at once)."""
        if self._states is None:
            self._upstreams = hosts
            self._show()

    def show_statistics(self, instances: Sequence[InstanceStats], now: float | None = None) -> None:
        """Per-instance statistics from a snapshot; shown at most every STATISTICS_REFRESH_S."""
        self._statistics = tuple(instances)
        now = time.monotonic() if now is None else now
        if now - self._shown_at >= STATISTICS_REFRESH_S:
            self._shown_at = now
            self._show()

    def clear(self) -> None:
        self._states, self._upstreams, self._statistics = None, None, ()
        self._show()

    def _show(self) -> None:
        self.model.set_rows(rows_from_sources(self._states, self._statistics, self._upstreams))
        self._enable_buttons()

    # -- selection and buttons ----------------------------------------------------------
    def selected_name(self) -> str | None:
        rows = self.view.selectionModel().selectedRows()
        if not rows:
            return None
        names = self.model.names()
        row = rows[0].row()
        return names[row] if 0 <= row < len(names) else None

    def select(self, name: str) -> None:
        names = self.model.names()
        if name in names:
            self.view.selectionModel().select(
                self.model.index(names.index(name), 0),
                QItemSelectionModel.SelectionFlag.ClearAndSelect
                | QItemSelectionModel.SelectionFlag.Rows,
            )

    def _emit_for_selection(self, signal: Any) -> Any:
        def emit() -> None:
            name = self.selected_name()
            if name is not None:
                signal.emit(name)

        return emit

    def _enable_buttons(self) -> None:
        local = self._controllable and self._states is not None
        # Only the stack's own instances can be killed or restarted (not a row only the
        # answers know, such as "unknown").
        selected = self._states is not None and self.selected_name() in {
            state.name for state in self._states
        }
        self.add_button.setEnabled(local)
        self.remove_button.setEnabled(local and bool(self._states))
        self.kill_button.setEnabled(local and selected)
        self.restart_button.setEnabled(local and selected)
