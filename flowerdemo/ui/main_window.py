"""The booth window: controls across the top, the photo grid, the live panel, banner and log.

Life cycle (qasync): `__init__` builds widgets only. `start()`, called once the event loop runs,
loads the photos in a worker thread, starts the local stack when no address was given (also in
a worker thread, with the grid showing "starting local servers…"), connects, and enters
automatic mode if asked. Closing the window is asynchronous: the first close request is
deferred until in-flight requests are cancelled, the client is closed and the embedded stack has
stopped; then the window really closes and `sig_closed` fires.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QByteArray, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QFont, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from flowerdemo.core.autoscale import AutoscalePolicy, ScaleDecision
from flowerdemo.core.engine import EngineSettings, TransportName
from flowerdemo.core.events import ErrorKind, InferenceEvent
from flowerdemo.core.images import (
    FlowerImage,
    ImageProblem,
    ImageSet,
    display_path,
    load_images,
)
from flowerdemo.core.text import clean_server_text
from flowerdemo.options import RunOptions
from flowerdemo.ui.async_slots import async_slot
from flowerdemo.ui.controls import MAX_CONCURRENCY, MAX_TOPK, ConnectionChoice, ControlPanel
from flowerdemo.ui.inference_task import Connection, InferenceTask, StackHealth, TaskState
from flowerdemo.ui.instances_panel import InstancesPanel
from flowerdemo.ui.live_panel import REFRESH_HZ, LivePanel, ServerInfo
from flowerdemo.ui.messages import Banner, LogBridge, LogPanel, QtLogHandler, Severity
from flowerdemo.ui.photos import DropTarget, PhotoStream, tile_photo
from flowerdemo.ui.security_dialog import ConnectionSecurity
from flowerdemo.ui.tiles import TileGrid, TilePhoto

if TYPE_CHECKING:
    from flowerdemo.serving.stack import LocalStack, StackEvent, StackSettings

log = logging.getLogger(__name__)

RESHAPE_DELAY_MS = 600
"""Top-k and batch size changes reconnect after the operator stops turning the spin box."""
MAX_PROBLEMS_LISTED = 20
_TROUBLE_KINDS = frozenset(("ejected", "killed", "down", "failed", "envoy_down", "envoy_failed"))
"""Stack event kinds that reach the banner as a warning; the others only go to the log."""
# The embedded stack shares the laptop's cores with this window: its servers run at a lower
# priority so the event loop keeps its timing (benchmarks/gui_responsiveness.py --servers-nice).
EMBEDDED_STACK_NICENESS = 10

_BUSY_STATES = (TaskState.STARTING_SERVERS, TaskState.CONNECTING, TaskState.CLOSING)
_STATE_HINTS = {
    TaskState.IDLE: "Not connected",
    TaskState.STARTING_SERVERS: "Starting local servers…",
    TaskState.CONNECTING: "Connecting…",
    TaskState.WAITING: "Waiting for the server…",
    TaskState.CLOSING: "Shutting down…",
}


@dataclasses.dataclass(frozen=True)
class LoadedPhotos:
    images: tuple[FlowerImage, ...]
    tiles: tuple[TilePhoto, ...]
    problems: tuple[str, ...]


def load_photos(folder: Path, labels: Sequence[str]) -> LoadedPhotos:
    """Decode the photos and their thumbnails (runs in a worker thread)."""
    image_set: ImageSet = load_images(folder, labels=labels)
    tiles = tuple(tile_photo(image, labels) for image in image_set.images)
    return LoadedPhotos(image_set.images, tiles, tuple(str(p) for p in image_set.problems))


class MainWindow(QMainWindow):
    """Everything the booth visitor sees."""

    sig_closed = Signal()
    """Shutdown finished: requests cancelled, clients closed, the embedded stack stopped."""

    def __init__(
        self,
        options: RunOptions,
        settings: QSettings,
        *,
        stack_settings: StackSettings | None = None,
        watch_stack: LocalStack | None = None,
        parent: QWidget | None = None,
    ) -> None:
        """`stack_settings`: how to start the embedded stack when `options.url` is None (default:
        `options.instances` instances on the default ports). `watch_stack`: a stack someone else
        runs whose instances the window should report (it is never stopped here)."""
        super().__init__(parent)
        self._options = options
        self._settings = settings
        self._stack_settings = stack_settings
        self._watch_stack = watch_stack
        self._class_names: tuple[str, ...] = ()
        self._images: tuple[FlowerImage, ...] = ()
        self._connected_choice: ConnectionChoice | None = None
        self._failures: Counter[tuple[str, str]] = Counter()
        self._startup: asyncio.Task[None] | None = None
        self._shutdown: asyncio.Task[None] | None = None
        self._shut_down = False
        self._loading_photos = False
        self.autoscale_overrides: dict[str, Any] = {}
        """AutoscalePolicy fields that replace the window's choice (timings, limits)."""

        self.setWindowTitle("Flower demo: Triton Inference Server behind Envoy")
        self.task = InferenceTask(self)
        self.controls = ControlPanel(self)
        self.banner = Banner(self)
        self.grid = TileGrid(self)
        self.live_panel = LivePanel(options.budget_ms, self)
        self.log_panel = LogPanel(self)
        self.instances_panel = InstancesPanel(self)
        self._overlay = QLabel(self.grid.viewport())

        self._refresh_timer = QTimer(self)
        self._refresh_timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._refresh_timer.setInterval(1000 // REFRESH_HZ)
        self._refresh_timer.timeout.connect(self.refresh)
        self._reshape_timer = QTimer(self)
        self._reshape_timer.setSingleShot(True)
        self._reshape_timer.setInterval(RESHAPE_DELAY_MS)
        self._reshape_timer.timeout.connect(self._reconnect_for_new_shape)

        self._build_layout()
        self._connect_signals()

        self._log_bridge = LogBridge(self)
        self._log_bridge.sig_record.connect(
            lambda severity, message: self.log_panel.add(Severity(severity), message)
        )
        self._log_handler = QtLogHandler(self._log_bridge)
        logging.getLogger("flowerdemo").addHandler(self._log_handler)
        self._restore_settings()
        self._show_state(TaskState.IDLE)

    # -- construction -------------------------------------------------------------------
    def _build_layout(self) -> None:
        self.grid.setMinimumWidth(320)
        self.live_panel.setMinimumWidth(360)
        self.splitter = QSplitter(Qt.Orientation.Horizontal, self)
        self.splitter.setObjectName("mainSplitter")
        self.splitter.addWidget(self.grid)
        self.splitter.addWidget(self.live_panel)
        # A bigger screen gives its extra room to the photos; the panel keeps a chart's width.
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 0)
        self.splitter.setChildrenCollapsible(False)
        central = QWidget(self)
        layout = QVBoxLayout(central)
        layout.setContentsMargins(8, 8, 8, 4)
        layout.setSpacing(6)
        layout.addWidget(self.controls)
        layout.addWidget(self.banner)
        layout.addWidget(self.splitter, 1)
        self.setCentralWidget(central)

        dock = QDockWidget("Log", self)
        dock.setObjectName("logDock")
        dock.setWidget(self.log_panel)
        dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetClosable
            | QDockWidget.DockWidgetFeature.DockWidgetMovable
        )
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, dock)
        self.log_dock = dock
        instances = QDockWidget("Instances", self)
        instances.setObjectName("instancesDock")
        instances.setWidget(self.instances_panel)
        instances.setFeatures(dock.features())
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, instances)
        self.splitDockWidget(dock, instances, Qt.Orientation.Horizontal)
        self.resizeDocks([dock], [150], Qt.Orientation.Vertical)
        self.resizeDocks([dock, instances], [560, 840], Qt.Orientation.Horizontal)
        self.instances_dock = instances

        overlay_font = QFont(self._overlay.font())
        overlay_font.setPointSizeF(overlay_font.pointSizeF() * 2.0)
        overlay_font.setBold(True)
        self._overlay.setFont(overlay_font)
        self._overlay.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._overlay.setStyleSheet(
            "background: rgba(10, 14, 18, 200); color: white; border-radius: 10px; padding: 18px;"
        )
        self._overlay.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)

        QShortcut(QKeySequence(Qt.Key.Key_F11), self, self.toggle_fullscreen)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self._leave_fullscreen)
        QShortcut(QKeySequence.StandardKey.Quit, self, self.close)
        QShortcut(QKeySequence("Ctrl+L"), self, self.log_dock.toggleViewAction().trigger)
        QShortcut(QKeySequence("Ctrl+I"), self, self.instances_dock.toggleViewAction().trigger)
        QShortcut(QKeySequence.StandardKey.Open, self, self.choose_photo_folder)
        self.photo_drop = DropTarget(self.grid.viewport(), self)

    def _connect_signals(self) -> None:
        task = self.task
        task.sig_state_changed.connect(self._show_state)
        task.sig_connected.connect(self._on_connected)
        task.sig_models.connect(self.controls.set_models)
        task.sig_sent.connect(self.grid.mark_sent)
        task.sig_event.connect(self._on_event)
        task.sig_problem.connect(self._on_problem)
        task.sig_recovered.connect(self._on_recovered)
        task.sig_auto_running.connect(self.controls.set_running)
        task.sig_stack_health.connect(self._on_stack_health)
        task.sig_stack_event.connect(self._on_stack_event)
        task.sig_upstreams.connect(self.instances_panel.show_upstreams)
        panel = self.instances_panel
        panel.sig_add_requested.connect(self._on_add_instance)
        panel.sig_remove_requested.connect(self._on_remove_instance)
        panel.sig_kill_requested.connect(self._on_kill_instance)
        panel.sig_restart_requested.connect(self._on_restart_instance)
        self.grid.sig_tile_clicked.connect(self._on_tile_clicked)
        controls = self.controls
        controls.sig_connect_requested.connect(self._on_connect_requested)
        controls.sig_request_shape_changed.connect(self._reshape_timer.start)
        controls.sig_protocol_changed.connect(self._on_protocol_changed)
        controls.sig_mode_changed.connect(self._on_mode_changed)
        controls.sig_run_toggled.connect(self._on_run_toggled)
        controls.sig_concurrency_changed.connect(self.task.set_concurrency)
        controls.sig_budget_changed.connect(self.live_panel.set_budget)
        controls.sig_open_photos.connect(self.choose_photo_folder)
        self.photo_drop.sig_dropped.connect(self._on_photos_dropped)
        controls.sig_budget_changed.connect(self._on_budget_changed)
        controls.sig_autoscale_toggled.connect(self._on_autoscale_toggled)
        task.sig_scale_decision.connect(self._on_scale_decision)

    # -- settings -----------------------------------------------------------------------
    def _restore_settings(self) -> None:
        """Saved values fill in what the command line left at its default."""
        options, saved = self._options, self._settings
        defaults = RunOptions(url=None)

        def pick(name: str, key: str) -> str:
            given = getattr(options, name)
            if given != getattr(defaults, name) or not saved.contains(key):
                return str(given)
            return str(saved.value(key))

        mode = pick("mode", "requests/mode")
        self.controls.set_values(
            url=options.url or "",
            protocol=options.protocol,
            model=options.model,
            mode=mode if mode in ("interactive", "auto") else "interactive",
            concurrency=_clamp(
                _number(pick("concurrency", "requests/concurrency"), options.concurrency),
                1,
                MAX_CONCURRENCY,
            ),
            topk=_clamp(_number(pick("topk", "requests/topk"), options.topk), 1, MAX_TOPK),
            batch_size=max(
                1, _number(pick("batch_size", "requests/batch_size"), options.batch_size)
            ),
            budget_ms=max(
                1.0, _decimal(pick("budget_ms", "requests/budget_ms"), options.budget_ms)
            ),
        )
        self.controls.set_security(ConnectionSecurity(options.tls, options.headers))
        self.live_panel.set_budget(self.controls.budget_spin.value())
        self.task.stats.percentile = options.percentile
        self.task.stats.budget_s = self.controls.budget_spin.value() / 1000.0
        geometry = saved.value("window/geometry")
        if isinstance(geometry, QByteArray | bytes):
            self.restoreGeometry(QByteArray(geometry))
        else:
            # First run: most of the screen, since the photos want the room.
            available = self.screen().availableGeometry()
            self.resize(
                min(available.width(), max(1280, available.width() * 9 // 10)),
                min(available.height(), max(800, available.height() * 9 // 10)),
            )
        state = saved.value("window/state")
        if isinstance(state, QByteArray | bytes):
            self.restoreState(QByteArray(state))
        splitter = saved.value("window/splitter")
        if isinstance(splitter, QByteArray | bytes):
            self.splitter.restoreState(QByteArray(splitter))
        else:
            self.splitter.setSizes([1000, 420])

    def save_settings(self) -> None:
        saved, controls = self._settings, self.controls
        saved.setValue("requests/mode", controls.mode)
        saved.setValue("requests/concurrency", controls.concurrency_spin.value())
        saved.setValue("requests/topk", controls.topk_spin.value())
        saved.setValue("requests/batch_size", controls.batch_spin.value())
        saved.setValue("requests/budget_ms", controls.budget_spin.value())
        saved.setValue("window/geometry", self.saveGeometry())
        saved.setValue("window/state", self.saveState())
        saved.setValue("window/splitter", self.splitter.saveState())
        saved.sync()

    # -- start-up -----------------------------------------------------------------------
    def start(self) -> asyncio.Task[None]:
        """Begin loading photos, starting servers and connecting (needs the running loop)."""
        if self._startup is None:
            self._refresh_timer.start()
            self._startup = asyncio.ensure_future(self._start_up())
            self._startup.add_done_callback(self._report_startup_failure)
        return self._startup

    def _report_startup_failure(self, startup: asyncio.Task[None]) -> None:
        if startup.cancelled():
            return
        error = startup.exception()
        if error is not None:
            log.error("start-up failed", exc_info=error)
            self._on_problem("error", f"Start-up failed: {type(error).__name__}: {error}")

    async def _start_up(self) -> None:
        options = self._options
        if not await self._load_photos():
            return
        if self._watch_stack is not None:
            self.task.watch_stack(self._watch_stack)
        if options.admin and self._watch_stack is None and options.url is not None:
            self.task.watch_admin(options.admin)
            self.instances_panel.set_controllable(False, f"Envoy admin {options.admin}")
        if options.url is None:
            url = await self._start_local_stack()
            if url is None:
                return
            self.controls.set_url(url)
        await self._connect(self.controls.connection_choice())
        if options.autoscale is not None:
            self.controls.set_autoscale_available(self.task.can_change_instances)
            self.controls.autoscale_box.setChecked(True)
        if options.mode == "auto":
            # Runs now, or as soon as a retried connection succeeds (sig_auto_running follows).
            self.controls.set_mode("auto")
            self.task.start_auto(self.controls.concurrency_spin.value())

    async def _load_photos(self) -> bool:
        options = self._options
        try:
            self._class_names = options.class_names()
        except OSError as error:
            self._on_problem("warning", f"Labels file unreadable, no ground truth shown: {error}")
            self._class_names = ()
        self._overlay_text("Loading photos…")
        folder = options.images_dir
        # The tiles appear as the photos decode, in name order (a large folder is not a long
        # wait behind "Loading photos…").
        stream = PhotoStream([folder], self._class_names)
        images: list[FlowerImage] = []
        problems: list[ImageProblem] = []
        if folder.is_dir():
            _total, problems = await asyncio.to_thread(stream.scan)
            while (batch := await asyncio.to_thread(stream.next_batch)) is not None:
                images.extend(batch.images)
                problems.extend(batch.problems)
                self.grid.add_photos(batch.tiles)
                self._overlay_text(None)
        if not images:
            if not folder.exists():
                reason = f"image folder {display_path(folder)} does not exist"
            elif not folder.is_dir():
                reason = f"{display_path(folder)} is not a folder"
            else:
                details = "; ".join(str(p) for p in problems[:5]) or "the folder is empty"
                reason = f"no readable image in {display_path(folder)} ({details})"
            self._on_problem(
                "error", f"No photos to show: {reason}. Choose a folder with --images DIR."
            )
            self._overlay_text("No photos")
            return False
        self._images = tuple(images)
        self.task.set_images([image.image for image in images])
        self._report_skipped(problems, str(folder))
        where = f"from {options.images}" if options.images else "(the bundled samples)"
        self.log_panel.add(Severity.INFO, f"{len(images)} photos {where}")
        self._overlay_text(None)
        return True

    async def _start_local_stack(self) -> str | None:
        from_settings = self._stack_settings
        if from_settings is None:
            try:
                from flowerdemo.serving.stack import StackSettings
            except ImportError as error:
                self._on_problem(
                    "error",
                    f"No server address given and the local stack is not installed ({error}). "
                    "Install it with pip install 'flowerdemo[serve]', or enter an address.",
                )
                return None
            from_settings = StackSettings(
                instances=self._options.instances,
                niceness=EMBEDDED_STACK_NICENESS,
                wires=self._options.local_wires(),
            )
        self.log_panel.add(
            Severity.INFO,
            f"Starting the local stack: {from_settings.instances} Triton instance(s) behind Envoy…",
        )
        stack = await self.task.start_local_stack(from_settings)
        if stack is None:
            return None
        self.log_panel.add(
            Severity.INFO, f"Local stack up: gRPC {stack.grpc_url}, HTTP {stack.http_url}"
        )
        return (
            stack.grpc_url if self.controls.protocol_box.currentText() == "grpc" else stack.http_url
        )

    # -- the user's own photos -----------------------------------------------------------
    def choose_photo_folder(self) -> None:
        """Ask for a folder of photos (the Photos… button, Ctrl+O) and show it."""
        start = str(self._options.images or Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Open a folder of photos", start)
        if folder:
            self.photo_drop.sig_dropped.emit([Path(folder)])  # the same path as a drop

    @async_slot(object)
    async def _on_photos_dropped(self, sources: list[Path]) -> None:
        await self.load_photo_sources(sources)

    async def load_photo_sources(self, sources: Sequence[Path]) -> bool:
        """Show the photos in `sources` (files and folders) instead of the current ones, tile by
        tile as they decode, then classify them: the connection is remade with the new set and
        automatic mode resumes if it was on. False, with the current photos kept, when there is
        nothing usable or photos are already loading."""
        if self._loading_photos:
            self._on_problem("warning", "Photos are already loading: try again when they are in.")
            return False
        named = ", ".join(str(source) for source in sources[:3]) + (
            f" and {len(sources) - 3} more" if len(sources) > 3 else ""
        )
        self._loading_photos = True
        try:
            return await self._replace_photos(PhotoStream(sources, self._class_names), named)
        finally:
            self._loading_photos = False

    async def _replace_photos(self, stream: PhotoStream, named: str) -> bool:
        total, problems = await asyncio.to_thread(stream.scan)
        if total == 0:
            reasons = "; ".join(str(p) for p in problems[:3]) or "no image files there"
            self._on_problem("error", f"No photos in {named} ({reasons}). Nothing changed.")
            return False
        auto = self.task.running_auto or self.controls.run_button.isChecked()
        self.task.cancel()
        previous = (self._images, self.grid.photos())
        self.log_panel.add(Severity.INFO, f"Loading {total} photo(s) from {named}…")
        self.grid.set_photos([])
        images: list[FlowerImage] = []
        while not self._shut_down:
            batch = await asyncio.to_thread(stream.next_batch)
            if batch is None:
                break
            images.extend(batch.images)
            problems.extend(batch.problems)
            self.grid.add_photos(batch.tiles)
        await asyncio.to_thread(stream.close)
        if self._shut_down:
            return False
        self._report_skipped(problems, named)
        if not images:
            self._images = previous[0]
            self.grid.set_photos(previous[1])
            self._on_problem(
                "error", f"None of the photos in {named} could be read. Nothing changed."
            )
            return False
        self._images = tuple(images)
        self.task.set_images([image.image for image in images])
        self.log_panel.add(Severity.INFO, f"{len(images)} photos from {named}")
        if self.task.state in (TaskState.CONNECTED, TaskState.UNREACHABLE, TaskState.WAITING):
            # A new engine for the new set; the figures start afresh with it.
            self.task.reset_statistics()
            self.live_panel.clear_history()
            await self._connect(self.controls.connection_choice())
        if auto:
            self.task.start_auto(self.controls.concurrency_spin.value())
        return True

    def _report_skipped(self, problems: Sequence[object], where: str) -> None:
        if not problems:
            return
        listed = problems[:MAX_PROBLEMS_LISTED]
        for problem in listed:
            self.log_panel.add(Severity.WARNING, f"skipped {problem}")
        more = len(problems) - len(listed)
        self._on_problem(
            "warning",
            f"{len(problems)} file(s) in {where} could not be used "
            f"(see the log{f'; {more} more not listed' if more > 0 else ''}).",
        )

    # -- connecting ---------------------------------------------------------------------
    def _engine_settings(self, choice: ConnectionChoice, url: str) -> EngineSettings:
        protocol: TransportName = "http" if choice.protocol == "http" else "grpc"
        return dataclasses.replace(
            self._options.engine_settings(url),
            protocol=protocol,
            model_name=choice.model or self._options.model,
            # --wire names a variant of --model: a model picked by name is taken as named.
            wire=self._options.wire if choice.model in ("", self._options.model) else "fp32",
            topk=choice.topk,
            batch_size=choice.batch_size,
            tls=choice.tls,
            headers=choice.headers,
        )

    async def _connect(self, choice: ConnectionChoice) -> bool:
        if not self._images:
            self._on_problem("error", "There are no photos to classify.")
            return False
        url = choice.url
        if not url:
            stack = self.task.local_stack
            if stack is None:
                started = await self._start_local_stack()
                if started is None:
                    return False
                url = started
            else:
                url = stack.grpc_url if choice.protocol == "grpc" else stack.http_url
            self.controls.set_url(url)
            choice = dataclasses.replace(choice, url=url)
        previous = self._connected_choice
        if previous is None or (previous.url, previous.protocol, previous.model) != (
            choice.url,
            choice.protocol,
            choice.model,
        ):
            # Another server or model: earlier answers and figures no longer describe it.
            self.grid.clear_answers()
            self.task.reset_statistics()
            self.live_panel.clear_history()
        self._connected_choice = choice
        return await self.task.connect_server(self._engine_settings(choice, url))

    @async_slot()
    async def _on_connect_requested(self) -> None:
        self._reshape_timer.stop()
        await self._connect(self.controls.connection_choice())

    @async_slot()
    async def _reconnect_for_new_shape(self) -> None:
        if self.task.state in (TaskState.IDLE, TaskState.STARTING_SERVERS, TaskState.CLOSING):
            return
        await self._connect(self.controls.connection_choice())

    def _on_protocol_changed(self, protocol: str) -> None:
        stack = self.task.local_stack
        if stack is not None and self.controls.url_edit.text() in (stack.grpc_url, stack.http_url):
            self.controls.set_url(stack.grpc_url if protocol == "grpc" else stack.http_url)

    def _on_connected(self, connection: Connection) -> None:
        spec = connection.spec
        self.controls.set_connected(True)
        self.controls.set_batch_limit(spec.max_batch_size)
        self.log_panel.add(Severity.INFO, f"Connected to {connection.url}: {spec.describe()}")
        self.banner.clear_if(Severity.ERROR)
        self._show_server_info()

    def _show_server_info(self) -> None:
        connection = self.task.connection
        if connection is None:
            self.live_panel.set_server_info(None, _STATE_HINTS.get(self.task.state, ""))
            return
        spec = connection.spec
        stack = self.task.control_stack
        info = ServerInfo(
            connection.url,
            connection.protocol,
            f"{spec.name} v{spec.version or 'latest'}",
            # The instances the stack is heading for (slots left stopped by a scale-down do not count).
            stack.target_instances if stack is not None else None,
        )
        layout = f"{spec.input_dtype} {spec.layout} {spec.channels}×{spec.height}×{spec.width}"
        batching = f"max batch {spec.max_batch_size}" if spec.batches else "no batching"
        details = f"{layout}, {spec.num_classes} classes, {batching}"
        details += f"<br>wire {spec.wire}: {_format_bytes(connection.request_bytes)} a request"
        health = self.task.stack_health
        if health is not None:
            details += f"<br>instances serving: {health.serving} of {len(health.instances)}"
        self.live_panel.set_server_info(info, details)

    # -- requests -----------------------------------------------------------------------
    @async_slot(int)
    async def _on_tile_clicked(self, index: int) -> None:
        if self._loading_photos:
            # The tiles shown are the new photos; the connection still has the old ones.
            self._on_problem("info", "The photos are still loading: click again in a moment.")
            return
        await self.task.classify([index])

    def _on_mode_changed(self, mode: str) -> None:
        if mode != "auto":
            self.task.cancel()

    def _on_run_toggled(self, run: bool) -> None:
        if run:
            self.task.start_auto(self.controls.concurrency_spin.value())
        else:
            self.task.cancel()

    # -- results and problems ------------------------------------------------------------
    def _on_event(self, event: InferenceEvent) -> None:
        self.grid.apply_event(event)
        error = event.error
        if error is not None and error.kind is not ErrorKind.CANCELLED:
            first_line = error.message.strip().splitlines()[0] if error.message.strip() else ""
            self._failures[(error.kind.value, first_line)] += 1

    def _on_problem(self, severity: str, message: str) -> None:
        level = Severity(severity)
        self.banner.show_message(level, message)
        self.log_panel.add(level, message)

    def _on_recovered(self, message: str) -> None:
        self.banner.show_message(Severity.INFO, message)
        self.log_panel.add(Severity.INFO, message)

    def _on_stack_health(self, health: StackHealth) -> None:
        self._show_server_info()
        stack = self.task.control_stack
        where = "embedded local stack" if self.task.local_stack is not None else "local stack"
        target = f", target {stack.target_instances}" if stack is not None else ""
        self.controls.set_autoscale_available(self.task.can_change_instances)
        self.instances_panel.set_controllable(
            self.task.can_change_instances,
            f"{where}: {health.serving} of {len(health.instances)} ready{target}",
        )
        self.instances_panel.show_states(health.instances)

    def _on_stack_event(self, event: StackEvent) -> None:
        """What the stack's supervisor reports (on the GUI thread): logged; trouble also reaches
        the banner."""
        who = clean_server_text(event.instance, 80) if event.instance else "stack"
        text = f"{who} {event.kind.replace('_', ' ')}"
        if event.message:
            # Messages may quote a Triton log line: server text.
            text += f": {clean_server_text(event.message)}"
        if event.kind in _TROUBLE_KINDS:
            self._on_problem("warning", text)
        elif event.kind != "target":
            self.log_panel.add(Severity.INFO, text)

    # -- autoscale ----------------------------------------------------------------------
    def _autoscale_policy(self) -> AutoscalePolicy:
        stack = self.task.control_stack
        devices = stack.settings.devices if stack is not None else ("cpu",)
        # What the machine can hold: a core per CPU instance, else one instance per device given.
        maximum = (os.cpu_count() or 1) if set(devices) == {"cpu"} else len(devices)
        # --autoscale MIN:MAX sets the limits (checked when the options were read).
        limits = self._options.autoscale_limits() or (1, max(1, maximum))
        values: dict[str, Any] = {
            "minimum": limits[0],
            "maximum": limits[1],
            "budget_s": self.controls.budget_spin.value() / 1000.0,
            "percentile": self._options.percentile,
        }
        values.update(self.autoscale_overrides)
        return AutoscalePolicy(**values)

    def _on_autoscale_toggled(self, on: bool) -> None:
        if not on:
            self.task.stop_autoscale()
            self.log_panel.add(Severity.INFO, "Autoscale off.")
            return
        policy = self._autoscale_policy()
        if not self.task.start_autoscale(policy):
            self.controls.set_autoscale(False)
            return
        self.log_panel.add(
            Severity.INFO,
            f"Autoscale on: {policy.minimum} to {policy.maximum} instance(s), holding "
            f"p{policy.percentile} under {policy.budget_s * 1000:g} ms.",
        )

    def _on_budget_changed(self, budget_ms: float) -> None:
        self.task.stats.budget_s = budget_ms / 1000.0
        if self.task.autoscaling:
            self.task.set_autoscale_policy(self._autoscale_policy())

    def _on_scale_decision(self, decision: ScaleDecision) -> None:
        self.log_panel.add(Severity.INFO, f"Autoscale: {decision.reason}")
        self.live_panel.add_marker(decision.at, f"{decision.before}→{decision.target}")

    # -- the Instances panel's buttons ----------------------------------------------------
    @async_slot()
    async def _on_add_instance(self) -> None:
        await self.task.add_instance()

    @async_slot(str)
    async def _on_remove_instance(self, name: str) -> None:
        await self.task.remove_instance(name or None)

    @async_slot(str)
    async def _on_kill_instance(self, name: str) -> None:
        await self.task.kill_instance(name)

    @async_slot(str)
    async def _on_restart_instance(self, name: str) -> None:
        await self.task.restart_instance(name)

    def _flush_failures(self) -> None:
        """Failed requests reach the banner and log at most once per refresh, counted."""
        if not self._failures:
            return
        failures, self._failures = self._failures, Counter()
        for (kind, message), count in failures.items():
            text = (
                f"Requests failing ({kind}): {message}" if message else f"Requests failing ({kind})"
            )
            self.banner.show_message(Severity.ERROR, text, repeats=count)
            self.log_panel.add(Severity.ERROR, text, repeats=count)

    def refresh(self) -> None:
        """The live panel's tick: statistics snapshot, charts, counters, pending problems."""
        snapshot = self.task.snapshot()
        self.live_panel.show_snapshot(snapshot)
        self.instances_panel.show_statistics(snapshot.instances)
        self._flush_failures()

    # -- state display ------------------------------------------------------------------
    def _show_state(self, state: TaskState) -> None:
        busy = state in _BUSY_STATES
        self.controls.set_busy(busy)
        connected = state in (TaskState.CONNECTED, TaskState.UNREACHABLE)
        self.controls.set_connected(connected)
        hint = _STATE_HINTS.get(state)
        if state is TaskState.IDLE and self.grid.count():
            hint = "Not connected: enter a server address and press Connect"
        self._overlay_text(hint if not connected else None)
        self._show_server_info()

    def show_overlay(self, text: str | None) -> None:
        """A large message over the photos (None hides it); state changes set their own."""
        self._overlay_text(text)

    def _overlay_text(self, text: str | None) -> None:
        if not text:
            self._overlay.hide()
            return
        self._overlay.setText(text)
        self._overlay.adjustSize()
        viewport = self.grid.viewport().rect()
        self._overlay.move(viewport.center() - self._overlay.rect().center())
        self._overlay.show()
        self._overlay.raise_()

    def resizeEvent(self, event: object) -> None:
        super().resizeEvent(event)  # type: ignore[arg-type]
        if self._overlay.isVisible():
            self._overlay_text(self._overlay.text())

    def toggle_fullscreen(self) -> None:
        if self.isFullScreen():
            self.showNormal()
        else:
            self.showFullScreen()

    def _leave_fullscreen(self) -> None:
        if self.isFullScreen():
            self.showNormal()

    # -- shutdown -----------------------------------------------------------------------
    @property
    def is_shut_down(self) -> bool:
        return self._shut_down

    def shutdown(self) -> asyncio.Task[None]:
        """Begin the asynchronous shutdown (idempotent); the window closes when it is done."""
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._shut_down_then_close())
        return self._shutdown

    async def _shut_down_then_close(self) -> None:
        self._refresh_timer.stop()
        self._reshape_timer.stop()
        self.save_settings()
        stopping = "Stopping local servers…" if self.task.local_stack is not None else "Closing…"
        self._overlay_text(stopping)
        startup = self._startup
        if startup is not None and not startup.done():
            startup.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await startup
        await self.task.shutdown()
        logging.getLogger("flowerdemo").removeHandler(self._log_handler)
        self._shut_down = True
        self.close()
        self.sig_closed.emit()

    def closeEvent(self, event: QCloseEvent) -> None:
        if self._shut_down:
            event.accept()
            return
        # Closing waits for the teardown to finish; the event loop keeps running meanwhile.
        event.ignore()
        self.shutdown()

    async def wait_closed(self) -> None:
        """Return once the window has shut down and closed."""
        if self._shut_down:
            return
        closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done() -> None:
            if not closed.done():
                closed.set_result(None)

        self.sig_closed.connect(done)
        await closed


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _number(text: str, fallback: int) -> int:
    try:
        return int(float(text))
    except ValueError:
        return fallback


def _decimal(text: str, fallback: float) -> float:
    try:
        return float(text)
    except ValueError:
        return fallback


def _format_bytes(count: float) -> str:
    """Request sizes as people read them: 602 kB, 15.3 kB, 1.2 MB."""
    if count >= 1e6:
        return f"{count / 1e6:.1f} MB"
    if count >= 1e4:
        return f"{count / 1e3:.0f} kB"
    if count >= 1e3:
        return f"{count / 1e3:.1f} kB"
    return f"{count:.0f} B"
