"""The cyclic garbage collector runs on the GUI thread only while the app's collector owns it."""

from __future__ import annotations

import gc
import threading

from flowerdemo.ui.gui_collector import GuiThreadCollector


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_cycles_made_on_a_worker_thread_are_freed_on_the_gui_thread(qtbot):
    collector = GuiThreadCollector(interval_ms=20)
    freed_on: list[str] = []

    class Watched(_Cycle):
        def __del__(self) -> None:
            freed_on.append(threading.current_thread().name)

    enabled_before = gc.isenabled()  # the suite's GUI tests run with it off already
    collector.start()
    try:
        assert not gc.isenabled()

        def churn() -> None:
            Watched()  # unreachable at once, but only a cycle collection frees it
            # Far past every threshold: the automatic collector would have run on this thread.
            garbage = [_Cycle() for _ in range(50 * gc.get_threshold()[0])]
            del garbage

        worker = threading.Thread(target=churn, name="worker")
        worker.start()
        worker.join()
        assert freed_on == []
        qtbot.waitUntil(lambda: freed_on != [], timeout=5_000)
        assert freed_on == [threading.main_thread().name]
    finally:
        collector.stop()
    assert gc.isenabled() == enabled_before
