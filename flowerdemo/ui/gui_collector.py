"""Python's cyclic garbage collector, run only on the GUI thread.

Reference counting frees most objects where they are dropped, but objects in reference cycles
are freed by the cyclic collector, and Python runs it on whichever thread happens to cross the
allocation threshold. Our worker threads allocate a lot (photo decoding, gRPC, the stack's
supervisor), so a cycle holding a Qt object (a closed dialog, a widget and the lambda connected
to its signal) could be destroyed on a worker thread, which Qt does not allow: the process dies
later in Qt's event loop with a segmentation fault. The collector is therefore switched off and
run here instead, from a timer on the GUI thread, generation by generation as its own thresholds
say, so its pauses stay as short as the automatic collector's.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer

CHECK_INTERVAL_MS = 250
"""How often the GUI thread looks at the collector's counts."""


class GuiThreadCollector(QObject):
    """Owns the cyclic garbage collector while it runs: start() disables automatic collection
    and collects on the GUI thread; stop() collects once more and gives collection back."""

    def __init__(self, parent: QObject | None = None, interval_ms: int = CHECK_INTERVAL_MS) -> None:
        super().__init__(parent)
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.collect_due)
        self._was_enabled = gc.isenabled()

    def start(self) -> None:
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
        gc.collect()
        if self._was_enabled:
            gc.enable()

    @property
    def running(self) -> bool:
        return self._timer.isActive()

    def collect_due(self) -> int:
        """Collect the generations whose counts have passed their thresholds, youngest first,
        as the automatic collector would; the number of unreachable objects found."""
        first, second, third = gc.get_threshold()
        young, middle, old = gc.get_count()
        if young < first:
            return 0
        if middle + 1 < second:
            return gc.collect(0)
        if old + 1 < third:
            return gc.collect(1)
        return gc.collect(2)
