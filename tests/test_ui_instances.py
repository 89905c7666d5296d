"""The instances in the window: colour marks on the tiles, the Instances panel over the stack's
snapshots and statistics, and its buttons acting on a real stack."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from PySide6.QtCore import Qt

from flowerdemo.core.events import UNKNOWN_INSTANCE
from flowerdemo.core.stats import InstanceStats, LatencySummary
from flowerdemo.options import RunOptions
from flowerdemo.ui.inference_task import TaskState
from flowerdemo.ui.instance_colors import PALETTE, UNKNOWN_COLOR, color_name
from flowerdemo.ui.instances_panel import (
    NAME_COLUMN,
    SHARE_COLUMN,
    STATE_COLUMN,
    InstancesModel,
    InstancesPanel,
)

pytestmark = [pytest.mark.gui]


def test_each_instance_keeps_its_colour_and_the_unknown_one_is_grey():
    names = [f"triton-{k}" for k in range(len(PALETTE))]
    colours = [color_name(name) for name in names]
    assert len(set(colours)) == len(PALETTE)
    assert colours == [color_name(name) for name in names]  # stable
    assert color_name(UNKNOWN_INSTANCE) == UNKNOWN_COLOR
    assert UNKNOWN_COLOR not in PALETTE
    # A name from a remote stack (an address) gets a palette colour, the same every time.
    assert color_name("10.0.0.7:8001") in PALETTE
    assert color_name("10.0.0.7:8001") == color_name("10.0.0.7:8001")


@dataclass(frozen=True)
class _State:
    name: str
    device: str = "cpu"
    state: str = "ready"
    message: str = ""
    restarts: int = 0


def _stats(name: str, answered: int, share: float, rate: float, p50: float, p90: float):
    window = LatencySummary(answered, p50, p50, p90, p90, p90)
    return InstanceStats(name, answered, 0, answered, share, rate, window, window)


def test_the_model_reports_only_what_changed_and_keeps_the_selection(qtbot):
    panel = InstancesPanel()
    qtbot.addWidget(panel)
    model: InstancesModel = panel.model
    inserted, removed, changed, resets = [], [], [], []
    model.rowsInserted.connect(lambda _p, first, last: inserted.append((first, last)))
    model.rowsRemoved.connect(lambda _p, first, last: removed.append((first, last)))
    model.dataChanged.connect(lambda top, _bottom, _roles=(): changed.append(top.row()))
    model.modelReset.connect(lambda: resets.append(True))
    panel.set_controllable(True, "local stack")

    panel.show_states([_State("triton-0"), _State("triton-1")])
    assert model.names() == ["triton-0", "triton-1"]
    panel.select("triton-1")
    assert panel.kill_button.isEnabled() and panel.restart_button.isEnabled()

    # A new instance is inserted, a changed state is one dataChanged, the selection stays.
    inserted.clear()
    panel.show_states([_State("triton-0", state="down"), _State("triton-1"), _State("triton-2")])
    assert inserted == [(2, 2)] and changed == [0] and not resets
    assert panel.selected_name() == "triton-1"
    state = model.index(0, STATE_COLUMN)
    assert model.data(state) == "down"
    assert model.data(state, Qt.ItemDataRole.ForegroundRole).name() == "#b71c1c"

    # Statistics join by name; an instance only the answers know (unknown) gets its own row.
    statistics = [
        _stats("triton-1", 90, 0.75, 120.0, 0.010, 0.020),
        _stats(UNKNOWN_INSTANCE, 30, 0.25, 40.0, 0.011, 0.021),
    ]
    panel.show_statistics(statistics, now=100.0)
    assert model.names() == ["triton-0", "triton-1", "triton-2", UNKNOWN_INSTANCE]
    assert model.data(model.index(1, SHARE_COLUMN)) == "75%"
    assert model.row_of("triton-1").p90_ms == pytest.approx(20.0)
    assert math.isnan(model.row_of("triton-0").p90_ms)
    # Statistics alone refresh the table at most every half second.
    panel.show_statistics([_stats("triton-1", 99, 1.0, 1.0, 0.01, 0.02)], now=100.2)
    assert model.row_of("triton-1").answered == 90

    # A removed instance leaves; the selection follows its row.
    removed.clear()
    panel.show_states([_State("triton-0"), _State("triton-1")])
    assert model.names()[:2] == ["triton-0", "triton-1"]
    assert (2, 2) in removed and panel.selected_name() == "triton-1"

    # Nothing to act on without a local stack.
    panel.set_controllable(False, "remote")
    assert not panel.add_button.isEnabled() and not panel.kill_button.isEnabled()


@pytest.mark.stack
def test_the_panel_lists_the_stack_and_tiles_are_marked_by_who_answered(
    qtbot, open_window, local_stack, tmp_path
):
    window = open_window(
        RunOptions(url=local_stack.grpc_url, mode="auto", concurrency=8),
        watch_stack=local_stack,
        size=(1920, 1080),
    )
    qtbot.waitUntil(lambda: window.task.state is TaskState.CONNECTED, timeout=20_000)
    panel = window.instances_panel
    assert window.instances_dock.isVisible()
    qtbot.waitUntil(lambda: panel.model.names()[:2] == ["triton-0", "triton-1"], timeout=10_000)
    model = panel.model
    assert [model.data(model.index(row, STATE_COLUMN)) for row in range(2)] == ["ready", "ready"]
    assert model.data(model.index(0, NAME_COLUMN)) == "triton-0"

    qtbot.waitUntil(lambda: window.task.snapshot().answered >= 150, timeout=30_000)
    grid = window.grid
    qtbot.waitUntil(lambda: sum(grid.tile(i).answered for i in range(grid.count())) >= 40)
    answered = [grid.tile(i) for i in range(grid.count()) if grid.tile(i).answered]
    # Every answered tile carries the mark of the instance that answered it, named by Envoy.
    assert {tile.instance for tile in answered} == {"triton-0", "triton-1"}
    # The table joins the answers to the instances: both answer, the shares add up.
    qtbot.waitUntil(lambda: all(row.answered for row in model.rows[:2]), timeout=5_000)
    assert sum(row.window_share for row in model.rows) == pytest.approx(1.0)
    assert set(window.live_panel.instances_chart.names) >= {"triton-0", "triton-1"}
    window.grab().save(str(tmp_path / "instances.png"))
