"""The instances in the window: colour marks on the tiles, the Instances panel over the stack's
snapshots and statistics, and its buttons acting on a real stack."""

from __future__ import annotations

import math

import pytest
from PySide6.QtCore import Qt

from flowerdemo.core.events import UNKNOWN_INSTANCE
from flowerdemo.core.stats import InstanceStats, LatencySummary
from flowerdemo.options import RunOptions
from flowerdemo.serving.admin import UpstreamHost
from flowerdemo.serving.stack import InstanceState, LocalStack
from flowerdemo.ui.inference_task import TaskState
from flowerdemo.ui.instance_colors import PALETTE, UNKNOWN_COLOR, color_name
from flowerdemo.ui.instances_panel import (
    NAME_COLUMN,
    SHARE_COLUMN,
    STATE_COLUMN,
    InstanceRow,
    InstancesModel,
    InstancesPanel,
    rows_from_sources,
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


def _instance(name: str, state: str = "ready") -> InstanceState:
    index = int(name.rsplit("-", 1)[1])
    return InstanceState(index, name, None, 8000 + index, 8001 + index, 8002 + index, "cpu", state)


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

    panel.show_states([_instance("triton-0"), _instance("triton-1")])
    assert model.names() == ["triton-0", "triton-1"]
    panel.select("triton-1")
    assert panel.kill_button.isEnabled() and panel.restart_button.isEnabled()

    # A new instance is inserted, a changed state is one dataChanged, the selection stays.
    inserted.clear()
    panel.show_states(
        [_instance("triton-0", state="down"), _instance("triton-1"), _instance("triton-2")]
    )
    assert inserted == [(2, 2)] and changed == [0] and not resets
    assert panel.selected_name() == "triton-1"
    state = model.index(0, STATE_COLUMN)
    assert model.data(state) == "down"
    assert model.data(state, Qt.ItemDataRole.ForegroundRole).name() == "#ef5350"

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

    panel.select(UNKNOWN_INSTANCE)
    assert not panel.kill_button.isEnabled()  # not an instance of the stack
    panel.select("triton-1")

    # A removed instance leaves; the selection follows its row.
    removed.clear()
    panel.show_states([_instance("triton-0"), _instance("triton-1")])
    assert model.names()[:2] == ["triton-0", "triton-1"]
    assert (2, 2) in removed and panel.selected_name() == "triton-1"

    # Nothing to act on without a local stack.
    panel.set_controllable(False, "remote")
    assert not panel.add_button.isEnabled() and not panel.kill_button.isEnabled()


def test_rows_from_a_remote_envoy_name_each_upstream_and_its_health():
    def host(cluster, address, instance, flags=(), status="HEALTHY"):
        return UpstreamHost(cluster, address, instance, not flags, flags, status)

    rows = rows_from_sources(
        upstreams=[
            host("triton_grpc", "10.0.0.1:8001", "triton-0"),
            host("triton_http", "10.0.0.1:8000", "triton-0"),
            host(
                "triton_grpc",
                "10.0.0.2:8001",
                "10.0.0.2:8001",
                ("failed_outlier_check", "\x1b[2Jx"),
            ),
            host("triton_grpc", "10.0.0.3:8001", "triton-2", status="DRAINING"),
        ]
    )
    assert [row.name for row in rows] == ["triton-0", "10.0.0.2:8001", "triton-2"]
    assert [row.state for row in rows] == ["healthy", "ejected", "draining"]
    assert rows[1].detail == "10.0.0.2:8001: failed_outlier_check, x"  # server text cleaned
    assert rows[0] == InstanceRow(
        "triton-0", device="remote", state="healthy", detail="10.0.0.1:8000, 10.0.0.1:8001"
    )


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


def _state(panel, name: str) -> str | None:
    row = panel.model.row_of(name)
    return row.state if row is not None else None


@pytest.mark.stack
def test_add_kill_restart_and_autoscale_from_the_window_change_the_real_stack(
    qtbot, open_window, stack_settings
):
    stack = LocalStack(stack_settings(1))
    stack.start()
    try:
        window = open_window(
            RunOptions(url=stack.grpc_url, mode="auto", concurrency=4), watch_stack=stack
        )
        window.task.monitor_interval_s = 0.25
        panel = window.instances_panel
        seen: dict[str, set[str]] = {}
        window.task.sig_stack_health.connect(
            lambda health: [seen.setdefault(i.name, set()).add(i.state) for i in health.instances]
        )
        qtbot.waitUntil(lambda: panel.add_button.isEnabled(), timeout=20_000)
        assert panel.model.names() == ["triton-0"]

        # Add: a second instance starts, joins Envoy's set and takes a share of the answers.
        qtbot.mouseClick(panel.add_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: _state(panel, "triton-1") == "ready", timeout=60_000)
        qtbot.waitUntil(
            lambda: (panel.model.row_of("triton-1").answered or 0) >= 20, timeout=20_000
        )
        assert "starting" in seen["triton-1"]

        # Kill it from the panel: shown down (or ejected), then back under supervision.
        panel.select("triton-1")
        qtbot.mouseClick(panel.kill_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: bool(seen["triton-1"] & {"down", "ejected"}), timeout=10_000)
        qtbot.waitUntil(lambda: _state(panel, "triton-1") == "ready", timeout=60_000)
        assert panel.model.row_of("triton-1").restarts >= 1
        assert "killed" in window.log_panel.toPlainText().lower()

        # Restart it from the panel: drained first (the other instance carries on), then back.
        seen["triton-1"].clear()
        qtbot.mouseClick(panel.restart_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: "draining" in seen["triton-1"], timeout=10_000)
        qtbot.waitUntil(lambda: _state(panel, "triton-1") == "ready", timeout=60_000)

        # Autoscale with a budget nothing can miss: one fewer instance fits, so one goes, and
        # the decision is logged with its reason and marked on the latency chart.
        window.autoscale_overrides = {"under_for_s": 1.0, "cooldown_s": 1.0, "maximum": 2}
        window.controls.budget_spin.setValue(60_000)
        window.controls.autoscale_box.setChecked(True)
        qtbot.waitUntil(lambda: bool(window.live_panel.markers), timeout=20_000)
        assert window.live_panel.markers[0][1] == "2→1"
        assert "removing one (2 to 1)" in window.log_panel.toPlainText()
        qtbot.waitUntil(lambda: stack.target_instances == 1, timeout=5_000)
        window.controls.autoscale_box.setChecked(False)
        assert not window.task.autoscaling
    finally:
        stack.stop()


@pytest.mark.stack
def test_with_an_admin_address_the_panel_lists_a_stack_it_did_not_start(
    qtbot, open_window, local_stack
):
    window = open_window(
        RunOptions(url=local_stack.grpc_url, admin=local_stack.settings.admin_listen)
    )
    panel = window.instances_panel
    qtbot.waitUntil(lambda: panel.model.names() == ["triton-0", "triton-1"], timeout=20_000)
    assert [row.state for row in panel.model.rows] == ["healthy", "healthy"]
    assert [row.device for row in panel.model.rows] == ["remote", "remote"]
    assert local_stack.settings.admin_listen in panel.source_label.text()
    # Nothing to change on a stack this window does not own.
    assert not panel.add_button.isEnabled() and not panel.kill_button.isEnabled()
    assert not window.controls.autoscale_box.isEnabled()
