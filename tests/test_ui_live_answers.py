"""The live panel's headline and figures follow what interactive clicks produced, and say so
when every request fails, instead of "waiting for answers"."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from flowerdemo.core.events import ErrorKind, InferenceEvent, RequestError
from flowerdemo.core.stats import RunStatistics
from flowerdemo.options import RunOptions
from flowerdemo.ui.inference_task import TaskState
from flowerdemo.ui.live_panel import LivePanel

pytestmark = [pytest.mark.gui]


@pytest.mark.stack
def test_four_clicks_give_the_headline_and_the_percentiles(qtbot, open_window, local_stack):
    window = open_window(RunOptions(url=local_stack.grpc_url, budget_ms=5000.0))
    qtbot.waitUntil(lambda: window.task.state is TaskState.CONNECTED, timeout=20_000)
    grid, panel = window.grid, window.live_panel
    for index in (1, 5, 9, 13):
        qtbot.mouseClick(
            grid.viewport(), Qt.MouseButton.LeftButton, pos=grid.tile_rect(index).center()
        )
        qtbot.waitUntil(lambda i=index: grid.tile(i).answered, timeout=10_000)
        qtbot.wait(700)  # clicks a visitor's pace apart
    # Long after the short window has emptied, the panel still describes the four answers.
    qtbot.waitUntil(lambda: "(all 4 answers)" in panel.badge.text(), timeout=10_000)
    assert panel.badge.text().startswith("WITHIN BUDGET  p90 ")
    for figure in (panel.p50, panel.p90, panel.p99):
        assert figure.value.text() != "–"
        assert float(figure.value.text()) > 0
    assert "waiting" not in panel.badge.text()


def failed_event(request_id: int, at: float) -> InferenceEvent:
    return InferenceEvent(
        request_id,
        (request_id,),
        at - 0.01,
        at,
        error=RequestError(ErrorKind.UNAVAILABLE, "Cannot reach 127.0.0.1:9: connection refused"),
    )


def answered_event(request_id: int, at: float) -> InferenceEvent:
    return InferenceEvent(request_id, (request_id,), at - 0.012, at, topk=((),))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_every_request_failing_is_the_headline(qtbot):
    clock = Clock()
    stats = RunStatistics(window_s=2.0, clock=clock)
    panel = LivePanel(50.0)
    qtbot.addWidget(panel)
    panel.show_snapshot(stats.snapshot(), now=clock.now)
    assert "waiting for answers" in panel.badge.text()

    for request_id in range(4):
        clock.now += 0.5
        stats.record(failed_event(request_id, clock.now))
        panel.show_snapshot(stats.snapshot(), now=clock.now)
    assert panel.badge.text().startswith("EVERY REQUEST FAILED (4): Cannot reach")
    clock.now += 30  # and it stays said, long after
    panel.show_snapshot(stats.snapshot(), now=clock.now)
    assert panel.badge.text().startswith("EVERY REQUEST FAILED (4)")

    # Answers come (three: enough for a verdict), then the server goes away again.
    for request_id in range(4, 7):
        clock.now += 0.1
        stats.record(answered_event(request_id, clock.now))
        panel.show_snapshot(stats.snapshot(), now=clock.now)
    assert panel.badge.text().startswith("WITHIN BUDGET")
    clock.now += 3
    panel.show_snapshot(stats.snapshot(), now=clock.now)
    for request_id in range(7, 10):
        clock.now += 0.2
        stats.record(failed_event(request_id, clock.now))
        panel.show_snapshot(stats.snapshot(), now=clock.now)
    assert panel.badge.text().startswith("REQUESTS FAILING, NONE ANSWERED (3)")
    assert not panel.over_budget
