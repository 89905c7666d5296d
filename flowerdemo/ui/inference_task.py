"""The bridge between the widgets and the server: a QObject owning the engine (Orange3's task style).

Widgets never await a server themselves. They call this object's coroutines from qasync slots
and listen to its signals. It owns the InferenceEngine (created and connected inside the running
event loop, because the Triton aio clients are bound to their loop), the run statistics, and,
for the embedded default, the LocalStack, whose blocking start and stop run in a worker thread.

Instances: for a local stack (embedded, or one the window watches) the task polls its instance
states on a worker thread, relays the stack's own events (its listener runs on the stack's
supervisor thread) to the GUI thread through a queued signal, and carries out the Instances
panel's add, remove, kill and restart on worker threads. For a remote stack with an Envoy admin
address it polls Envoy's upstream hosts instead.

Recovery: a failed connection is retried until it works or the settings change, first after
`retry_interval_s`, then backing off (doubling) to every `max_retry_interval_s`. Once connected, the gRPC channel and the HTTP session reconnect by themselves, so a server
that goes away and comes back needs no new engine: requests fail (and are counted) while it is
away, and the first answer afterwards reports it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import operator
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image
from PySide6.QtCore import QObject, Signal

from flowerdemo.core.autoscale import AutoscaleController, AutoscalePolicy
from flowerdemo.core.engine import ConnectError, EngineSettings, InferenceEngine
from flowerdemo.core.events import ErrorKind, InferenceEvent
from flowerdemo.core.model_spec import ModelSpec
from flowerdemo.core.stats import RunStatistics, StatsSnapshot
from flowerdemo.core.text import clean_server_text

if TYPE_CHECKING:
    from collections.abc import Callable

    from flowerdemo.serving.stack import InstanceState, LocalStack, StackEvent, StackSettings

log = logging.getLogger(__name__)

STATS_WINDOW_S = 2.0
"""The sliding window of the live figures: short enough that the charts react within seconds."""
MAX_RETRY_INTERVAL_S = 15.0
"""Connection retries back off to this: a server that comes back is used within seconds."""
GRACEFUL_STOP_S = 2.0
"""How long a settings change waits for outstanding requests before cancelling them."""
ADMIN_TIMEOUT_S = 1.0
"""How long one read of a remote Envoy's admin interface may take."""
AUTOSCALE_INTERVAL_S = 1.0
"""How often the autoscaler observes the windowed latency."""
SERVER_STATS_INTERVAL_S = 1.0
"""How often each local instance is asked for its queue and compute times."""


class TaskState(str, enum.Enum):
    IDLE = "not connected"
    STARTING_SERVERS = "starting local servers…"
    CONNECTING = "connecting…"
    WAITING = "waiting for the server…"
    CONNECTED = "connected"
    UNREACHABLE = "server unreachable"
    CLOSING = "shutting down…"
    CLOSED = "closed"


@dataclass(frozen=True)
class Connection:
    """What sig_connected reports."""

    url: str
    protocol: str
    spec: ModelSpec
    request_bytes: float = 0.0
    """The average input payload of one request (what the wire format costs)."""


@dataclass(frozen=True)
class StackHealth:
    """The local stack as the monitor last saw it."""

    instances: tuple[InstanceState, ...]
    envoy_running: bool

    @property
    def serving(self) -> int:
        return sum(1 for i in self.instances if i.state == "ready")

    @property
    def down(self) -> tuple[InstanceState, ...]:
        return tuple(i for i in self.instances if i.state in ("failed", "down"))


class InferenceTask(QObject):
    """Owns the engine, the statistics and the embedded stack; reports through signals."""

    sig_state_changed = Signal(object)
    """The connection state changed (a TaskState)."""
    sig_connected = Signal(object)
    """Connected and the model validated (a Connection)."""
    sig_models = Signal(list)
    """The model names in the server's repository (a list of str; empty when unknown)."""
    sig_sent = Signal(object)
    """A request went out (a tuple of image indices)."""
    sig_event = Signal(object)
    """One request finished (an InferenceEvent)."""
    sig_problem = Signal(str, str)
    """Something the operator should know: severity ('info', 'warning', 'error'), message."""
    sig_retrying = Signal(int, float)
    """A connection retry failed: attempts so far, seconds until the next one."""
    sig_recovered = Signal(str)
    """A problem went away (server answering again, instances back): a message."""
    sig_auto_running = Signal(bool)
    """Automatic mode started (True) or finished (False)."""
    sig_stack_health = Signal(object)
    """The local stack's instances changed state (a StackHealth)."""
    sig_stack_event = Signal(object)
    """Something happened in the local stack (a serving StackEvent), delivered on the GUI thread."""
    sig_upstreams = Signal(object)
    """A remote stack's instances as its Envoy admin sees them (a list of UpstreamHost)."""
    sig_scale_decision = Signal(object)
    """The autoscaler changed the stack's target instance count (a core.autoscale ScaleDecision)."""
    _sig_stack_event_from_thread = Signal(object)
    """A StackEvent emitted on the stack's supervisor thread (queued to the GUI thread)."""

    def __init__(
        self,
        parent: QObject | None = None,
        *,
        retry_interval_s: float = 2.0,
        monitor_interval_s: float = 1.0,
        stats_window_s: float = STATS_WINDOW_S,
    ) -> None:
        super().__init__(parent)
        self.retry_interval_s = retry_interval_s
        self.max_retry_interval_s = max(retry_interval_s, MAX_RETRY_INTERVAL_S)
        self.monitor_interval_s = monitor_interval_s
        self.stats = RunStatistics(window_s=stats_window_s)
        self._images: Sequence[Image.Image] = ()
        self._engine: InferenceEngine | None = None
        self._connection: Connection | None = None
        self._state = TaskState.IDLE
        self._connect_lock: asyncio.Lock | None = None
        self._retry: asyncio.Task[None] | None = None
        self._auto: asyncio.Task[None] | None = None
        self._auto_wanted: int | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._stack_start: asyncio.Future[None] | None = None
        self._owned_stack: LocalStack | None = None
        self._watched_stack: LocalStack | None = None
        self._last_health: StackHealth | None = None
        self._health_wake: asyncio.Event | None = None
        self._listened: list[LocalStack] = []
        self._admin_address: str | None = None
        self._admin_watch: asyncio.Task[None] | None = None
        self._stack_calls: set[asyncio.Future[object]] = set()
        self.autoscale_interval_s = AUTOSCALE_INTERVAL_S
        self._autoscaler: AutoscaleController | None = None
        self._autoscale: asyncio.Task[None] | None = None
        self._server_stats: asyncio.Task[None] | None = None
        self._ending: set[asyncio.Task[None]] = set()
        self._requests: set[asyncio.Task[InferenceEvent]] = set()
        self._closing = False
        # A queued connection: the stack calls its listeners on its own thread.
        self._sig_stack_event_from_thread.connect(self._on_stack_event)

    # -- state --------------------------------------------------------------------------
    @property
    def state(self) -> TaskState:
        return self._state

    @property
    def connection(self) -> Connection | None:
        return self._connection

    @property
    def connected(self) -> bool:
        return self._connection is not None and self._state in (
            TaskState.CONNECTED,
            TaskState.UNREACHABLE,
        )

    @property
    def running_auto(self) -> bool:
        return self._auto is not None and not self._auto.done()

    @property
    def in_flight(self) -> int:
        return self._engine.in_flight if self._engine is not None else 0

    @property
    def local_stack(self) -> LocalStack | None:
        """The stack this task started and will stop (the embedded default), if any."""
        return self._owned_stack

    @property
    def stack_health(self) -> StackHealth | None:
        return self._last_health

    @property
    def control_stack(self) -> LocalStack | None:
        """The local stack the Instances panel acts on: the embedded one or the watched one."""
        return self._owned_stack or self._watched_stack

    @property
    def can_change_instances(self) -> bool:
        stack = self.control_stack
        return stack is not None

    def snapshot(self) -> StatsSnapshot:
        return self.stats.snapshot(in_flight=self.in_flight)

    def reset_statistics(self) -> None:
        self.stats.reset()

    def set_images(self, images: Sequence[Image.Image]) -> None:
        """The photos every later connection classifies, in tile order."""
        self._images = images

    def _set_state(self, state: TaskState) -> None:
        if state is not self._state:
            self._state = state
            self.sig_state_changed.emit(state)

    # -- the embedded stack -------------------------------------------------------------
    async def start_local_stack(self, settings: StackSettings) -> LocalStack | None:
        """Start N Triton instances behind Envoy in a worker thread; None (after sig_problem) on
        failure. The task stops this stack at shutdown."""
        try:
            from flowerdemo.serving.stack import LocalStack, StackError
        except ImportError as error:
            self.sig_problem.emit(
                "error",
                f"No server address was given and the local stack cannot start ({error}). "
                "Install it with pip install 'flowerdemo[serve]', or enter a server address.",
            )
            return None
        self._set_state(TaskState.STARTING_SERVERS)
        try:
            stack = LocalStack(settings)
        except StackError as error:
            self._set_state(TaskState.IDLE)
            self.sig_problem.emit("error", f"The local stack cannot start: {error}")
            return None
        self._owned_stack = stack
        start = asyncio.ensure_future(asyncio.to_thread(stack.start))
        self._stack_start = start
        try:
            # Shielded: closing the window while servers start must not orphan the thread's work;
            # shutdown waits for it and then stops what it started.
            await asyncio.shield(start)
        except StackError as error:
            self._owned_stack = None
            self._set_state(TaskState.IDLE)
            self.sig_problem.emit("error", f"The local stack did not start: {error}")
            return None
        if self._closing:
            return None
        self._set_state(TaskState.IDLE)
        self.watch_stack(stack)
        return stack

    def watch_stack(self, stack: LocalStack) -> None:
        """Report the instances of `stack` as they go down and come back (sig_stack_health),
        and relay its events (sig_stack_event)."""
        self._watched_stack = stack
        if all(stack is not other for other in self._listened):
            self._listened.append(stack)
            stack.add_listener(self._on_stack_event_in_thread)
        if self._health_wake is None:
            self._health_wake = asyncio.Event()
        if self._monitor is None or self._monitor.done():
            self._monitor = asyncio.ensure_future(self._watch())

    def refresh_health_soon(self) -> None:
        """Read the stack's states now rather than at the next poll."""
        if self._health_wake is not None:
            self._health_wake.set()

    async def _watch(self) -> None:
        while not self._closing:
            stack = self._watched_stack
            if stack is None:
                return
            try:
                # states() may probe an instance over HTTP: never on the GUI thread.
                states, envoy = await asyncio.to_thread(_read_health, stack)
            except Exception as error:
                log.debug("stack monitor: %s", error)
            else:
                health = StackHealth(tuple(states), envoy or not stack.settings.with_envoy)
                previous = self._last_health
                if previous is None or _health_key(previous) != _health_key(health):
                    self._last_health = health
                    self._report_health(previous, health)
                    self.sig_stack_health.emit(health)
            wake = self._health_wake
            if wake is None:
                await asyncio.sleep(self.monitor_interval_s)
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), self.monitor_interval_s)
            wake.clear()

    def _on_stack_event_in_thread(self, event: StackEvent) -> None:
        """The stack's listener (its supervisor thread): hop to the GUI thread."""
        if self._closing:
            return
        # RuntimeError: the task is gone (the window closed while the stack was stopping).
        with contextlib.suppress(RuntimeError):
            self._sig_stack_event_from_thread.emit(event)

    def _on_stack_event(self, event: StackEvent) -> None:
        if self._closing:
            return
        self.sig_stack_event.emit(event)
        self.refresh_health_soon()

    # -- changing the local stack's instances (the Instances panel) -----------------------
    async def add_instance(self) -> str | None:
        """Start one more instance; its name, or None (after sig_problem)."""
        name = await self._stack_call("Adding an instance", lambda stack: stack.add_instance())
        if name is not None:
            self.sig_problem.emit("info", f"Adding instance {name}: it joins once ready.")
        return None if name is None else str(name)

    async def remove_instance(self, name: str | None = None) -> str | None:
        """Drain and stop `name` (the newest when None); its name, or None (after sig_problem)."""
        removed = await self._stack_call(
            f"Removing {name or 'an instance'}", lambda stack: stack.remove_instance(name)
        )
        if removed is not None:
            self.sig_problem.emit(
                "info", f"Draining {removed}: it stops once its requests are answered."
            )
        return None if removed is None else str(removed)

    async def kill_instance(self, name: str) -> bool:
        """SIGKILL `name` (fault injection)."""
        # The stack reports the kill itself (a "killed" event, then "down"): nothing to add.
        done = await self._stack_call(f"Killing {name}", lambda stack: stack.kill_instance(name))
        return done is not None

    async def restart_instance(self, name: str) -> bool:
        done = await self._stack_call(
            f"Restarting {name}", lambda stack: stack.restart_instance(name)
        )
        if done is not None:
            self.sig_problem.emit("info", f"Restarting {name}.")
        return done is not None

    async def _stack_call(self, what: str, call: Callable[[Any], object]) -> object | None:
        """`call(stack)` on a worker thread; its result (True for None), or None after
        sig_problem when there is no local stack or the call failed."""
        stack = self.control_stack
        if stack is None or self._closing:
            self.sig_problem.emit("warning", f"{what}: there is no local stack to change.")
            return None
        future = asyncio.ensure_future(asyncio.to_thread(call, stack))
        self._stack_calls.add(future)
        try:
            result = await future
        except Exception as error:
            self.sig_problem.emit(
                "error", f"{what} failed: {clean_server_text(error) or type(error).__name__}"
            )
            return None
        finally:
            self._stack_calls.discard(future)
            self.refresh_health_soon()
        return True if result is None else result

    # -- autoscale ----------------------------------------------------------------------
    @property
    def autoscaling(self) -> bool:
        return self._autoscale is not None and not self._autoscale.done()

    @property
    def autoscaler(self) -> AutoscaleController | None:
        return self._autoscaler

    def start_autoscale(
        self, policy: AutoscalePolicy, clock: Callable[[], float] = time.monotonic
    ) -> bool:
        """Hold the budget: every `autoscale_interval_s`, feed the controller the windowed
        latency at the policy's percentile and apply its decisions with `stack.scale_to`
        (sig_scale_decision). False (after sig_problem) without a stack to scale."""
        if not self.can_change_instances:
            self.sig_problem.emit(
                "warning", "Autoscale needs the local stack: there is no instance to add here."
            )
            return False
        self.stop_autoscale()
        self._autoscaler = AutoscaleController(policy)
        self._autoscale = asyncio.ensure_future(self._run_autoscale(self._autoscaler, clock))
        return True

    def set_autoscale_policy(self, policy: AutoscalePolicy) -> None:
        """A new budget or limits for the running autoscaler (its history is kept)."""
        if self._autoscaler is not None:
            self._autoscaler.policy = policy

    def stop_autoscale(self) -> None:
        if self._autoscale is not None and not self._autoscale.done():
            self._autoscale.cancel()
        self._autoscale = None

    async def _run_autoscale(
        self, controller: AutoscaleController, clock: Callable[[], float]
    ) -> None:
        while not self._closing:
            await asyncio.sleep(self.autoscale_interval_s)
            stack = self.control_stack
            if stack is None:
                continue
            policy = controller.policy
            latency = self.stats.recent_latency(policy.percentile, self.stats.window_s)
            try:
                states = await asyncio.to_thread(stack.states)
            except Exception as error:
                log.debug("autoscale: %s", error)
                continue
            ready = sum(1 for state in states if state.state == "ready")
            decision = controller.observe(
                clock(),
                None if math.isnan(latency) else latency,
                ready,
                target_instances=stack.target_instances,
            )
            if decision is None or self._closing:
                continue
            applied = await self._stack_call(
                f"Scaling to {decision.target} instance(s)",
                operator.methodcaller("scale_to", decision.target),
            )
            if applied is not None:
                self.sig_scale_decision.emit(decision)

    # -- the servers' own queue and compute times (local stack) ---------------------------
    def _watch_server_statistics(self, model: str) -> None:
        """Ask each ready local instance for its statistics of `model` every second (through
        the balancer a statistics call would reach one instance only); the snapshots then carry
        the servers' queue and compute split."""
        self._stop_server_statistics()
        if self._watched_stack is not None and not self._closing:
            self._server_stats = asyncio.ensure_future(self._poll_server_statistics(model))

    def _stop_server_statistics(self) -> None:
        polling, self._server_stats = self._server_stats, None
        if polling is not None and not polling.done():
            polling.cancel()
            # Its clients close as it ends: shutdown waits for that.
            self._ending.add(polling)
            polling.add_done_callback(self._ending.discard)

    async def _poll_server_statistics(self, model: str) -> None:
        from flowerdemo.core.server_stats import ServerStatsReader, poll_server_statistics

        reader = ServerStatsReader((), model, timeout_s=SERVER_STATS_INTERVAL_S / 2)

        async def ready_instances() -> list[str]:
            stack, health = self._watched_stack, self._last_health
            if stack is None or health is None:
                return []
            return [
                f"{stack.settings.host}:{i.grpc_port}"
                for i in health.instances
                if i.state in ("ready", "draining")
            ]

        try:
            await poll_server_statistics(
                reader, self.stats, interval_s=SERVER_STATS_INTERVAL_S, urls=ready_instances
            )
        finally:
            await reader.close()

    # -- a remote stack's instances, from its Envoy admin interface ------------------------
    def watch_admin(self, address: str) -> None:
        """Poll Envoy's admin at `address` (host:port) for the upstream hosts (sig_upstreams)."""
        self._admin_address = address
        if self._admin_watch is None or self._admin_watch.done():
            self._admin_watch = asyncio.ensure_future(self._watch_admin())

    async def _watch_admin(self) -> None:
        from flowerdemo.serving.admin import read_upstream_hosts

        failing = False
        while not self._closing and self._admin_address is not None:
            address = self._admin_address
            try:
                hosts = await asyncio.to_thread(read_upstream_hosts, address, ADMIN_TIMEOUT_S)
            except Exception as error:
                if not failing:
                    self.sig_problem.emit(
                        "warning",
                        f"Envoy admin at {address} does not answer "
                        f"({clean_server_text(error) or type(error).__name__}); "
                        f"the Instances panel shows what the answers say.",
                    )
                failing = True
            else:
                if failing:
                    self.sig_recovered.emit(f"Envoy admin at {address} answers again.")
                failing = False
                self.sig_upstreams.emit(hosts)
            await asyncio.sleep(self.monitor_interval_s)

    def _report_health(self, previous: StackHealth | None, health: StackHealth) -> None:
        total = len(health.instances)
        down = health.down
        if down:
            names = "; ".join(
                f"Triton instance {i.index} ({i.name}) is down"
                + (f": {i.message}" if i.message else "")
                for i in down
            )
            self.sig_problem.emit(
                "warning" if health.serving else "error",
                f"{names}. {health.serving} of {total} instance(s) serving.",
            )
        elif previous is not None and previous.down:
            self.sig_recovered.emit(f"All {total} Triton instances are serving again.")
        if not health.envoy_running:
            self.sig_problem.emit("error", "The Envoy load balancer of the local stack stopped.")
        elif previous is not None and not previous.envoy_running:
            self.sig_recovered.emit("The Envoy load balancer is running again.")

    # -- connecting ---------------------------------------------------------------------
    async def connect_server(self, settings: EngineSettings) -> bool:
        """Replace the engine with one for `settings` and connect it. On failure, sig_problem and
        a retry every `retry_interval_s`; automatic mode resumes once connected if it was on."""
        if self._closing:
            return False
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            self._cancel_retry()
            await self._drop_engine(graceful=True)
            engine = InferenceEngine(settings, self._images)
            engine.add_sink(self._on_event)
            engine.add_send_sink(self._on_sent)
            self._engine = engine
            self._set_state(TaskState.CONNECTING)
            try:
                spec = await engine.connect()
            except ConnectError as error:
                if self._engine is engine and not self._closing:
                    self._set_state(TaskState.WAITING)
                    self.sig_problem.emit(
                        "error",
                        f"{error} Retrying in {self.retry_interval_s:g} s, then less often "
                        f"(up to every {self.max_retry_interval_s:g} s).",
                    )
                    self._retry = asyncio.ensure_future(self._retry_connect(engine))
                return False
            await self._connected(engine, spec)
            return True

    async def _retry_connect(self, engine: InferenceEngine) -> None:
        attempts = 0
        while self._engine is engine and not self._closing:
            delay = min(self.retry_interval_s * 2**attempts, self.max_retry_interval_s)
            await asyncio.sleep(delay)
            attempts += 1
            try:
                spec = await engine.connect()
            except ConnectError as error:
                log.debug("retry %d: %s", attempts, error)
                if self._engine is engine and not self._closing:
                    next_delay = min(self.retry_interval_s * 2**attempts, self.max_retry_interval_s)
                    self.sig_retrying.emit(attempts, next_delay)
                continue
            if self._engine is engine and not self._closing:
                self.sig_recovered.emit(f"Connected to {engine.settings.url}.")
                await self._connected(engine, spec)
            return

    async def _connected(self, engine: InferenceEngine, spec: ModelSpec) -> None:
        settings = engine.settings
        self._watch_server_statistics(spec.name)
        self._connection = Connection(
            settings.url, settings.protocol, spec, engine.mean_request_bytes()
        )
        self._set_state(TaskState.CONNECTED)
        self.sig_connected.emit(self._connection)
        if self._auto_wanted is not None:
            self._launch_auto(engine, self._auto_wanted)
        names = await engine.model_names()
        if self._engine is engine:
            self.sig_models.emit(names)

    def _cancel_retry(self) -> None:
        if self._retry is not None and not self._retry.done():
            self._retry.cancel()
        self._retry = None

    async def _drop_engine(self, *, graceful: bool) -> None:
        self._stop_server_statistics()
        engine, self._engine = self._engine, None
        self._connection = None
        if engine is None:
            return
        engine.stop()
        auto = self._auto
        if graceful and auto is not None and not auto.done():
            # Outstanding requests of automatic mode get a moment to come back and be counted.
            await asyncio.wait({auto}, timeout=GRACEFUL_STOP_S)
        await engine.close()
        if auto is not None and not auto.done():
            await asyncio.wait({auto}, timeout=GRACEFUL_STOP_S)

    # -- requests -----------------------------------------------------------------------
    async def classify(self, indices: Sequence[int]) -> InferenceEvent | None:
        """One request (interactive mode); its event also goes out as sig_event. None when not
        connected (after sig_problem)."""
        engine = self._engine
        if engine is None or not self.connected:
            self.sig_problem.emit(
                "warning", f"Not connected ({self._state.value}): the photo was not sent."
            )
            return None
        task = asyncio.ensure_future(engine.classify(indices))
        self._requests.add(task)
        try:
            return await task
        finally:
            self._requests.discard(task)

    def start_auto(self, concurrency: int) -> None:
        """Keep `concurrency` requests outstanding (now, or as soon as connected)."""
        self._auto_wanted = concurrency
        engine = self._engine
        if self.running_auto:
            self.set_concurrency(concurrency)
        elif engine is not None and self.connected:
            self._launch_auto(engine, concurrency)

    def _launch_auto(self, engine: InferenceEngine, concurrency: int) -> None:
        if self.running_auto:
            return
        self._auto = asyncio.ensure_future(self._run_auto(engine, concurrency))

    async def _run_auto(self, engine: InferenceEngine, concurrency: int) -> None:
        self.sig_auto_running.emit(True)
        try:
            await engine.run_automatic(concurrency)
        except Exception as error:
            self.sig_problem.emit("error", f"Automatic mode stopped: {error}")
        finally:
            if not self._closing:
                self.sig_auto_running.emit(False)

    def cancel(self) -> None:
        """Stop automatic mode: nothing new is sent; outstanding requests still come back."""
        self._auto_wanted = None
        if self._engine is not None:
            self._engine.stop()

    def set_concurrency(self, concurrency: int) -> None:
        if self._auto_wanted is not None:
            self._auto_wanted = concurrency
        if self._engine is not None and self.running_auto:
            self._engine.set_concurrency(concurrency)

    # -- events -------------------------------------------------------------------------
    def _on_sent(self, _request_id: int, indices: tuple[int, ...]) -> None:
        self.sig_sent.emit(indices)

    def _on_event(self, event: InferenceEvent) -> None:
        self.stats.record(event)
        self.sig_event.emit(event)
        if self._closing:
            return
        if event.ok:
            if self._state is TaskState.UNREACHABLE:
                self._set_state(TaskState.CONNECTED)
                url = self._connection.url if self._connection else "the server"
                self.sig_recovered.emit(f"{url} is answering again.")
        elif (
            event.error is not None
            and event.error.kind is ErrorKind.UNAVAILABLE
            and self._state is TaskState.CONNECTED
        ):
            self._set_state(TaskState.UNREACHABLE)

    # -- teardown -----------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Cancel what is in flight, close the client, stop the embedded stack. Emits nothing
        after it starts except the final state."""
        if self._closing:
            return
        self._closing = True
        self._set_state(TaskState.CLOSING)
        self._cancel_retry()
        # The statistics poller is stopped with the engine (_drop_engine), exactly once: a second
        # cancel could interrupt it while it closes its gRPC clients.
        for task in (self._monitor, self._admin_watch, self._autoscale):
            if task is not None and not task.done():
                task.cancel()
        if self._stack_calls:
            # A start or drain under way finishes before the stack itself is stopped.
            await asyncio.gather(*self._stack_calls, return_exceptions=True)
        self._auto_wanted = None
        await self._drop_engine(graceful=False)
        for request in list(self._requests):
            request.cancel()
        pending = [
            t
            for t in (
                self._monitor,
                self._admin_watch,
                self._autoscale,
                self._server_stats,
                *self._ending,
                self._retry,
                *self._requests,
            )
            if t is not None
        ]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for listened in self._listened:
            # The stack's lock guards its listeners: not on the GUI thread.
            await asyncio.to_thread(listened.remove_listener, self._on_stack_event_in_thread)
        self._listened.clear()
        if self._stack_start is not None and not self._stack_start.done():
            with contextlib.suppress(Exception):
                await self._stack_start
        stack, self._owned_stack = self._owned_stack, None
        self._watched_stack = None
        if stack is not None:
            await asyncio.to_thread(stack.stop)
        self._set_state(TaskState.CLOSED)


def _read_health(stack: LocalStack) -> tuple[list[InstanceState], bool]:
    return stack.states(), stack.envoy_pid() is not None


def _health_key(health: StackHealth) -> tuple[object, ...]:
    return (
        tuple((i.index, i.name, i.state, i.message, i.restarts) for i in health.instances),
        health.envoy_running,
    )
