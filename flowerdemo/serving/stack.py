"""The local serving stack: Triton instances behind one Envoy, kept at a target count.

`LocalStack(StackSettings(...)).start()` writes a model repository (a Python-backend model running
the ONNX classifier with ONNX Runtime), prepares the Python backend folder once, starts the
instances (instance k: HTTP base+10k, gRPC base+10k+1, metrics base+10k+2), waits until each is
ready, publishes them to Envoy's endpoint files and starts Envoy. From then on a supervisor
thread reconciles toward the target (as Ray Serve's deployment state does): it starts instances
that are wanted, drains and stops those that are not, notices a dead Triton or Envoy within a
second and restarts it with bounded retries and back-off (unless `restart=False`). Envoy reads its
endpoints from files it watches (file-based EDS), so it is never restarted to change the set.

Removing drains first: the endpoint is published as DRAINING (Envoy sends it nothing new), and
the instance is stopped once Envoy shows no request in flight on it.

Every public method is thread-safe and returns quickly except `start`, `stop` and the blocking
`start_instance` / `stop_instance` / `wait_*` helpers. Listeners get `StackEvent`s on the
supervisor thread.

Each Triton runs in its own process group (its Python-backend stubs with it), with TMPDIR inside
the stack's work folder and its own shared-memory prefix, so stopping removes exactly what our
processes left: nothing of another stack's or another user's is touched.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from flowerdemo.serving import envoy as envoy_config
from flowerdemo.serving.admin import AdminError, UpstreamHost, read_upstream_hosts
from flowerdemo.serving.devices import DeviceError, resolve_devices
from flowerdemo.serving.instance import (
    SHM_DIR,
    InstanceError,
    LaunchSettings,
    State,
    TritonInstance,
    http_ready,
    remove_shm_regions,
    summarize_triton_log,
)
from flowerdemo.serving.plan import PORT_STRIDE, InstancePlan, make_instance
from flowerdemo.serving.ports import port_in_use
from flowerdemo.serving.proxy import EnvoyProcess, ProxyError
from flowerdemo.serving.triton import (
    TritonInstall,
    TritonNotFound,
    find_triton,
    prepare_backend_dir,
    shm_prefix,
)
from flowerdemo.serving.watchdog import WatchdogClient
from flowerdemo.serving.workspace import (
    StackError,
    StackSettings,
    resolve_model,
    write_model_repositories,
)

__all__ = [
    "SHM_DIR",
    "InstanceState",
    "LocalStack",
    "StackError",
    "StackEvent",
    "StackSettings",
    "State",
    "port_in_use",
    "remove_shm_regions",
    "resolve_model",
    "summarize_triton_log",
    "wait_until",
]

log = logging.getLogger(__name__)

# Event kinds a listener receives.
EVENT_KINDS = (
    "target",  # the target count changed
    "starting",
    "ready",
    "ejected",  # Envoy's health checks or outlier detection took it out
    "draining",
    "stopped",
    "killed",  # SIGKILL on request (fault injection)
    "down",  # died on its own
    "restarting",
    "failed",  # could not start, or out of restarts
    "envoy_down",
    "envoy_restarting",
    "envoy_ready",
    "envoy_failed",
)


@dataclass(frozen=True)
class InstanceState:
    """A snapshot of one Triton instance, for display."""

    index: int
    name: str
    pid: int | None
    http_port: int
    grpc_port: int
    metrics_port: int
    device: str
    state: State
    message: str = ""
    restarts: int = 0

    @property
    def ports(self) -> tuple[int, int, int]:
        return self.http_port, self.grpc_port, self.metrics_port


@dataclass(frozen=True)
class StackEvent:
    """Something that happened to the stack. `at` is a time.monotonic() reading; `instance` is
    the instance's name, None for Envoy and the stack as a whole; `kind` one of EVENT_KINDS."""

    at: float
    instance: str | None
    kind: str
    message: str


_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 8.0
_STABLE_S = 60.0
# Envoy checks every 0.5 s; past this, "ready" is said anyway and Envoy's view shows as ejected.
_ENVOY_CHECK_S = 5.0
_PORT_TRIES = 50


def _backoff(attempt: int) -> float:
    return float(min(_BACKOFF_MAX_S, _BACKOFF_FIRST_S * 2 ** max(0, attempt - 1)))


@dataclass
class _Member:
    """The stack's bookkeeping for one instance slot."""

    instance: TritonInstance
    wanted: bool = True
    published: bool = False
    """In Envoy's endpoint files (DRAINING while draining)."""
    drain_started: float | None = None
    stop_begun: bool = False
    restart_after_stop: bool = False
    restart_at: float | None = None
    attempts: int = 0
    ready_at: float | None = None
    next_is_restart: bool = False
    envoy_check_since: float | None = None
    """Triton answered ready at this time; waiting for Envoy's health check to agree."""
    ready_message: str = ""
    stopped_message: str = "stopped on request"


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; True if it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def envoy_settings_for(
    settings: StackSettings,
    instances: Sequence[InstancePlan],
    *,
    endpoints_dir: Path | None = None,
) -> envoy_config.EnvoySettings:
    """The Envoy in front of these instances, as the stack's settings ask for it: the running
    stack (endpoints from files in `endpoints_dir`) and `serve --print-config` share it."""
    return envoy_config.EnvoySettings(
        grpc_upstreams=tuple(i.grpc_address for i in instances),
        http_upstreams=tuple(i.http_address for i in instances),
        instance_names=tuple(i.name for i in instances),
        listen=settings.listen,
        http_listen=settings.http_listen,
        admin_listen=settings.admin_listen,
        lb_policy=settings.lb_policy,
        endpoints_dir=endpoints_dir,
        tls_certificate=str(Path(settings.tls_cert).resolve()) if settings.tls_cert else None,
        tls_private_key=str(Path(settings.tls_key).resolve()) if settings.tls_key else None,
    )


class LocalStack:
    """Triton instances and one Envoy on this machine. See the module docstring."""

    def __init__(self, settings: StackSettings | None = None) -> None:
        self.settings = settings or StackSettings()
        s = self.settings
        if s.instances < 1:
            raise StackError(f"instances: need at least 1, got {s.instances}")
        try:
            self._devices = resolve_devices(tuple(s.devices))
        except DeviceError as error:
            raise StackError(str(error)) from error
        try:
            for what, address in (
                ("listen", s.listen),
                ("http listen", s.http_listen),
                ("admin listen", s.admin_listen),
            ):
                envoy_config.split_address(address, what)
        except envoy_config.EnvoyConfigError as error:
            raise StackError(str(error)) from error
        last_port = s.base_port + PORT_STRIDE * (s.instances - 1) + 2
        if s.base_port < 1 or last_port > 65535:
            raise StackError(
                f"base port {s.base_port}: instance ports would run to {last_port} (max 65535)"
            )
        self._lock = threading.RLock()
        self._workdir: Path | None = None
        self._owns_workdir = False
        self._install: TritonInstall | None = None
        self._launch_settings: LaunchSettings | None = None
        self._members: list[_Member] = []
        self._plans = [
            make_instance(k, self._devices, s.base_port, s.host) for k in range(s.instances)
        ]
        self._envoy: EnvoyProcess | None = None
        self._envoy_binary: Path | None = None
        self._envoy_restart_at: float | None = None
        self._envoy_attempts = 0
        self._envoy_state = "stopped"
        self._endpoints: envoy_config.EndpointWriter | None = None
        self._started = False
        self._atexit_registered = False
        self._watchdog = WatchdogClient()
        self._listeners: list[Callable[[StackEvent], None]] = []
        self._pending_events: list[StackEvent] = []
        self._supervisor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        # Names this stack's shared-memory regions apart from any other stack's, even another
        # one in this same process.
        self._owner_token = f"{os.getpid()}{secrets.token_hex(3)}"

    # ----- addresses -------------------------------------------------------------------------

    @property
    def grpc_url(self) -> str:
        """What a gRPC client passes: Envoy's listener, or instance 0 without Envoy."""
        if self.settings.with_envoy:
            return self.settings.listen
        return self._plans[0].grpc_address

    @property
    def http_url(self) -> str:
        if self.settings.with_envoy:
            return self.settings.http_listen
        return self._plans[0].http_address

    @property
    def admin_url(self) -> str:
        return f"http://{self.settings.admin_listen}"

    @property
    def workdir(self) -> Path | None:
        return self._workdir

    @property
    def instance_count(self) -> int:
        """How many instance slots exist (running or not)."""
        with self._lock:
            return max(len(self._plans), len(self._members))

    @property
    def target_instances(self) -> int:
        """How many instances the stack is keeping up (wanted), whatever their state now.
        Takes no lock (a window reads it on its own thread while the supervisor works)."""
        members = list(self._members)
        if not members:
            return len(self._plans)
        return sum(1 for m in members if m.wanted)

    def _plan(self, index: int) -> InstancePlan:
        with self._lock:
            plans = [m.instance.plan for m in self._members] or self._plans
            for plan in plans:
                if plan.index == index:
                    return plan
        raise IndexError(f"instance {index}: this stack has no instance {index}")

    def instance_grpc_url(self, index: int) -> str:
        return self._plan(index).grpc_address

    def instance_http_url(self, index: int) -> str:
        return self._plan(index).http_address

    def instance_shm_prefix(self, index: int) -> str:
        """The name prefix of instance `index`'s shared-memory regions under /dev/shm."""
        return shm_prefix(self._owner_token, index)

    def instance_log(self, index: int) -> Path | None:
        with self._lock:
            for member in self._members:
                if member.instance.plan.index == index:
                    return member.instance.log_path
        return None

    def envoy_pid(self) -> int | None:
        envoy = self._envoy
        return envoy.pid if envoy is not None else None

    # ----- listeners -------------------------------------------------------------------------

    def add_listener(self, callback: Callable[[StackEvent], None]) -> None:
        """`callback(event)` for every StackEvent, called on the supervisor thread (a GUI must
        hop to its own thread). An exception in it is logged and ignored."""
        with self._lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[StackEvent], None]) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    def _emit(self, instance: str | None, kind: str, message: str = "") -> None:
        with self._lock:
            self._pending_events.append(StackEvent(time.monotonic(), instance, kind, message))
        self._wake.set()

    def _dispatch_events(self) -> None:
        with self._lock:
            events, self._pending_events = self._pending_events, []
            listeners = list(self._listeners)
        for event in events:
            for listener in listeners:
                try:
                    listener(event)
                except Exception:  # a listener's bug must not stop the supervisor
                    log.exception("stack listener failed on %s", event)

    # ----- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start every instance, then Envoy, then the supervisor; on any failure stop what was
        started and raise StackError."""
        with self._lock:
            if self._started:
                raise StackError("stack: already started")
            self._started = True
            self._stopping.clear()
            if not self._atexit_registered:
                atexit.register(self.stop)
                self._atexit_registered = True
            try:
                self._prepare()
                try:
                    self._watchdog.start()
                except OSError as error:
                    raise StackError(f"stack: cannot start its watchdog: {error}") from error
                if self._owns_workdir and self._workdir is not None:
                    self._watchdog.tell(f"path {self._workdir}")
                self._members = [_Member(self._new_instance(plan)) for plan in self._plans]
                self._check_ports()
                for member in self._members:
                    self._launch(member)
                self._wait_started([m.instance for m in self._members])
                for member in self._members:
                    member.ready_at = time.monotonic()
                    member.published = True
                if self.settings.with_envoy:
                    self._start_envoy()
            except InstanceError as error:
                self.stop()
                raise StackError(str(error)) from error
            except BaseException:
                self.stop()
                raise
            self._supervisor = threading.Thread(
                target=self._supervise, name="stack-supervisor", daemon=True
            )
            self._supervisor.start()

    def _prepare(self) -> None:
        s = self.settings
        if s.workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="flowerdemo-stack-"))
            self._owns_workdir = True
        else:
            self._workdir = Path(s.workdir)
            self._workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._install = find_triton()
        except TritonNotFound as error:
            raise StackError(f"{self._plans[0].name}: cannot start: {error}") from error
        if s.with_envoy:
            try:
                self._envoy_binary = envoy_config.find_envoy()
            except envoy_config.EnvoyNotFound as error:
                raise StackError(f"envoy: cannot start: {error}") from error
        repositories = write_model_repositories(s, self._devices, self._workdir)
        # Once, before any instance runs: replacing this library under a running Triton
        # crashes it.
        backend_dir = prepare_backend_dir(self._install, self._workdir / "backends")
        self._launch_settings = LaunchSettings(
            install=self._install,
            backend_dir=backend_dir,
            workdir=self._workdir,
            repositories=repositories,
            niceness=s.niceness,
            ready_timeout_s=s.ready_timeout_s,
            stop_timeout_s=s.stop_timeout_s,
        )

    def _new_instance(self, plan: InstancePlan) -> TritonInstance:
        assert self._launch_settings is not None
        return TritonInstance(
            plan,
            self._launch_settings,
            self.instance_shm_prefix(plan.index),
            tell_watchdog=self._watchdog.tell,
        )

    def _check_ports(self) -> None:
        s = self.settings
        for member in self._members:
            member.instance.check_ports()
        if s.with_envoy:
            for what, address in (
                ("gRPC listener", s.listen),
                ("HTTP listener", s.http_listen),
                ("admin", s.admin_listen),
            ):
                host, port = envoy_config.split_address(address, what)
                if port_in_use(host, port):
                    raise StackError(f"envoy: {what} port {port} on {host} is already in use")

    def _launch(self, member: _Member) -> None:
        member.instance.start()
        member.envoy_check_since = None
        member.ready_at = None
        member.stop_begun = False
        member.drain_started = None

    def _wait_started(self, instances: list[TritonInstance]) -> None:
        """Blocking: until each is ready; StackError naming the first that failed."""
        waiting = list(instances)
        while waiting:
            for instance in list(waiting):
                outcome = instance.check_started(probe_timeout=0.5)
                if outcome == "failed":
                    raise StackError(f"{instance.name}: {instance.message}")
                if outcome == "ready":
                    waiting.remove(instance)
            if waiting:
                time.sleep(0.1)

    # ----- Envoy -----------------------------------------------------------------------------

    def _endpoint_set(self) -> tuple[envoy_config.Endpoint, ...]:
        return tuple(
            envoy_config.Endpoint(
                instance=m.instance.name,
                grpc_address=m.instance.plan.grpc_address,
                http_address=m.instance.plan.http_address,
                draining=m.drain_started is not None,
            )
            for m in self._members
            if m.published
        )

    def _publish(self) -> None:
        """Write Envoy's endpoint files from the members now published (atomically)."""
        if self._endpoints is not None:
            self._endpoints.write(self._endpoint_set())

    def _start_envoy(self) -> None:
        assert self._workdir is not None and self._envoy_binary is not None
        s = self.settings
        self._endpoints = envoy_config.EndpointWriter(self._workdir / "endpoints")
        self._publish()
        published = [m.instance.plan for m in self._members if m.published]
        try:
            config = envoy_settings_for(s, published, endpoints_dir=self._endpoints.directory)
            config_path = envoy_config.write_config(config, self._workdir / "envoy.yaml")
        except envoy_config.EnvoyConfigError as error:
            raise StackError(f"envoy: {error}") from error
        self._envoy = EnvoyProcess(
            config_path,
            self._workdir / "envoy.log",
            binary=self._envoy_binary,
            concurrency=s.envoy_concurrency,
            log_level=s.envoy_log_level,
            niceness=s.niceness,
            tell_watchdog=self._watchdog.tell,
        )
        try:
            self._envoy.start()
        except ProxyError as error:
            raise StackError(str(error)) from error
        deadline = time.monotonic() + 15.0
        while True:
            if not self._envoy.alive():
                raise StackError(f"envoy: {self._envoy.exit_message()} (while starting)")
            health = self.envoy_host_health()
            if health and all(flag == "healthy" for flag in health.values()):
                self._envoy_state = "ready"
                return
            if time.monotonic() > deadline:
                raise StackError(f"envoy: instances not all healthy after 15 s: {health}")
            time.sleep(0.05)

    def upstream_hosts(self, timeout_s: float = 1.0) -> list[UpstreamHost]:
        """Envoy's hosts, every cluster (empty without Envoy or while it does not answer)."""
        if not self.settings.with_envoy:
            return []
        try:
            return read_upstream_hosts(self.settings.admin_listen, timeout_s)
        except AdminError:
            return []

    def envoy_host_health(self) -> dict[str, str]:
        """Per-instance health as Envoy sees it, for the gRPC cluster: name -> "healthy" or
        Envoy's flags (for example "/failed_active_hc", "/failed_outlier_check", "/draining").
        Empty while Envoy does not answer."""
        health: dict[str, str] = {}
        for host in self.upstream_hosts():
            if host.cluster != envoy_config.GRPC_CLUSTER:
                continue
            flags = list(host.health_flags) + (["draining"] if host.draining else [])
            health[host.instance] = "healthy" if host.healthy else "".join(f"/{f}" for f in flags)
        return health

    # ----- what the stack is asked to do -----------------------------------------------------

    def states(self) -> list[InstanceState]:
        """A snapshot of every instance slot, in index order."""
        with self._lock:
            if not self._members:
                return [
                    InstanceState(
                        index=p.index,
                        name=p.name,
                        pid=None,
                        http_port=p.http_port,
                        grpc_port=p.grpc_port,
                        metrics_port=p.metrics_port,
                        device=p.device,
                        state="stopped",
                    )
                    for p in self._plans
                ]
            return [self._snapshot(m) for m in self._members]

    @staticmethod
    def _snapshot(member: _Member) -> InstanceState:
        instance = member.instance
        plan = instance.plan
        return InstanceState(
            index=plan.index,
            name=plan.name,
            pid=instance.pid,
            http_port=plan.http_port,
            grpc_port=plan.grpc_port,
            metrics_port=plan.metrics_port,
            device=plan.device,
            state=instance.state,
            message=instance.message,
            restarts=instance.restarts,
        )

    def _member(self, name_or_index: str | int) -> _Member:
        with self._lock:
            for member in self._members:
                if name_or_index in (member.instance.name, member.instance.plan.index):
                    return member
        raise StackError(f"no instance named {name_or_index!r}")

    def _require_started(self) -> None:
        if not self._started or self._launch_settings is None:
            raise StackError("stack: not started")

    def scale_to(self, count: int) -> None:
        """Set the target: add instances or drain the newest until `count` are wanted. Returns
        at once; the supervisor does the work."""
        if count < 1:
            raise StackError(f"instances: need at least 1, got {count}")
        with self._lock:
            self._require_started()
            while self.target_instances < count:
                self._add()
            while self.target_instances > count:
                self._remove(None)
        self._wake.set()

    def add_instance(self) -> str:
        """Want one more instance; returns its name. It starts in the background and joins
        Envoy's set once ready."""
        with self._lock:
            self._require_started()
            name = self._add()
        self._wake.set()
        return name

    def remove_instance(self, name: str | None = None) -> str:
        """Drain and stop an instance (the newest wanted one by default); returns its name."""
        with self._lock:
            self._require_started()
            removed = self._remove(name)
        self._wake.set()
        return removed

    def kill_instance(self, name: str) -> None:
        """SIGKILL the instance's tritonserver, as a crash would (fault injection). It stays
        wanted: the supervisor reports it down and restarts it (unless restart is off)."""
        with self._lock:
            self._require_started()
            member = self._member(name)
            if not member.instance.alive():
                raise StackError(f"{member.instance.name}: not running")
            member.instance.kill()
            self._emit(member.instance.name, "killed", "SIGKILL on request")
        self._wake.set()

    def restart_instance(self, name: str) -> None:
        """Restart an instance: a running one is drained and stopped first; a down or failed one
        (or one removed) starts again at once, with its restart count kept."""
        with self._lock:
            self._require_started()
            member = self._member(name)
            instance = member.instance
            if instance.alive() and instance.state in ("starting", "ready", "ejected"):
                member.restart_after_stop = True
                member.wanted = False
                self._begin_drain(member, "restart requested")
            elif instance.alive():
                member.restart_after_stop = True
            else:
                if not member.wanted:
                    member.wanted = True
                    self._emit(None, "target", f"target {self.target_instances}")
                member.attempts = 0
                member.next_is_restart = True
                member.restart_at = time.monotonic()
        self._wake.set()

    def _add(self) -> str:
        # Reuse the lowest free slot (its ports and name), else open a new one.
        for member in self._members:
            if (
                not member.wanted
                and member.instance.state in ("stopped", "failed")
                and not member.instance.alive()
                and not member.published
            ):
                member.wanted = True
                member.attempts = 0
                member.restart_at = time.monotonic()
                self._emit(
                    None,
                    "target",
                    f"target {self.target_instances}: add {member.instance.name}",
                )
                return member.instance.name
        plan = self._next_free_plan()
        member = _Member(self._new_instance(plan), wanted=True, restart_at=time.monotonic())
        self._members.append(member)
        self._emit(None, "target", f"target {self.target_instances}: add {plan.name}")
        return plan.name

    def _next_free_plan(self) -> InstancePlan:
        """The next instance's plan: the index after the highest, skipping any whose ports
        something else on this machine holds (another stack, another program)."""
        s = self.settings
        index = max((m.instance.plan.index for m in self._members), default=-1) + 1
        for _ in range(_PORT_TRIES):
            last_port = s.base_port + PORT_STRIDE * index + 2
            if last_port > 65535:
                break
            plan = make_instance(index, self._devices, s.base_port, s.host)
            ports = (plan.http_port, plan.grpc_port, plan.metrics_port)
            if not any(port_in_use(plan.host, port) for port in ports):
                return plan
            index += 1
        raise StackError(
            f"no free ports for another instance from {s.base_port + PORT_STRIDE * index} on"
        )

    def _remove(self, name: str | None) -> str:
        wanted = [m for m in self._members if m.wanted]
        if name is None:
            if not wanted:
                raise StackError("no instance to remove")
            member = max(wanted, key=lambda m: m.instance.plan.index)
        else:
            member = self._member(name)
            if not member.wanted:
                raise StackError(f"{member.instance.name}: already removed")
        if len(wanted) <= 1:
            raise StackError(f"{member.instance.name}: the last instance cannot be removed")
        member.wanted = False
        member.restart_after_stop = False
        member.restart_at = None
        self._emit(None, "target", f"target {self.target_instances}: remove {member.instance.name}")
        self._begin_drain(member, "removed")
        return member.instance.name

    def _begin_drain(self, member: _Member, why: str) -> None:
        instance = member.instance
        member.stopped_message = why
        member.envoy_check_since = None
        if instance.alive():
            member.drain_started = time.monotonic()
            member.stop_begun = False
            instance.set_state("draining", why)
            if member.published:
                self._publish()
            self._emit(instance.name, "draining", why)
        else:
            self._finish_stop(member)

    # ----- blocking helpers (tests, the console) --------------------------------------------

    def wait_settled(self, timeout: float) -> bool:
        """Until every wanted instance is ready and every other one stopped; True if so."""

        def settled() -> bool:
            with self._lock:
                return all(
                    (m.instance.state == "ready" and m.published and m.drain_started is None)
                    if m.wanted
                    else (m.instance.state in ("stopped", "failed") and not m.instance.alive())
                    for m in self._members
                )

        return wait_until(settled, timeout, 0.05)

    def start_instance(self, index: int, *, wait: bool = True) -> None:
        """(Re)start instance `index` on its ports; with `wait`, return once it is ready (or
        raise StackError with the cause)."""
        with self._lock:
            self._require_started()
            member = self._member(index)
            if not member.wanted:
                member.wanted = True
                self._emit(None, "target", f"target {self.target_instances}")
            if not member.instance.alive():
                member.attempts = 0
                member.restart_at = time.monotonic()
        self._wake.set()
        if not wait:
            return
        deadline = time.monotonic() + self.settings.ready_timeout_s + 5

        def outcome() -> bool:
            with self._lock:
                return member.instance.state in ("ready", "failed") and member.restart_at is None

        while not outcome():
            if time.monotonic() > deadline:
                raise StackError(f"{member.instance.name}: not ready in time")
            time.sleep(0.05)
        if member.instance.state == "failed":
            raise StackError(f"{member.instance.name}: {member.instance.message}")
        # Ready means published too.
        wait_until(lambda: member.published, 5.0)

    def stop_instance(
        self, index: int, *, kill: bool = False, timeout: float | None = None
    ) -> None:
        """Stop instance `index` now, without draining (fault injection, tests): `kill=True`
        sends SIGKILL to tritonserver alone, as a crash would; otherwise SIGTERM to its group.
        It is no longer wanted, so the supervisor does not restart it."""
        with self._lock:
            member = self._member(index)
            instance = member.instance
            was_wanted = member.wanted
            member.wanted = False
            member.restart_at = None
            member.restart_after_stop = False
            if kill:
                instance.kill()
            instance.stop(timeout)
            member.stopped_message = "killed (SIGKILL)" if kill else "stopped on request"
            self._finish_stop(member)
            if was_wanted:
                self._emit(None, "target", f"target {self.target_instances}")

    # ----- the supervisor --------------------------------------------------------------------

    def _supervise(self) -> None:
        interval = self.settings.supervise_interval_s
        while not self._stopping.is_set():
            try:
                self._tick()
            except Exception:  # keep supervising whatever one step did
                log.exception("stack supervisor step failed")
            self._dispatch_events()
            self._wake.wait(interval)
            self._wake.clear()
        self._dispatch_events()

    def _tick(self) -> None:
        envoy = self._envoy
        # None: Envoy's view is unknown this time (it does not run or does not answer).
        hosts: list[UpstreamHost] | None = None
        if envoy is not None and envoy.alive():
            try:
                hosts = read_upstream_hosts(self.settings.admin_listen, 0.5)
            except AdminError:
                hosts = None
        # Readiness probes go over HTTP: made outside the lock, so states() never waits on them.
        with self._lock:
            starting = [
                m.instance
                for m in self._members
                if m.instance.state == "starting" and m.envoy_check_since is None
            ]
        probed = {i.name: http_ready(i.ready_url(), timeout=0.2) for i in starting if i.alive()}
        with self._lock:
            if self._stopping.is_set():
                return
            self._supervise_envoy()
            for member in list(self._members):
                self._step(member, hosts, probed)

    def _hosts_of(self, member: _Member, hosts: list[UpstreamHost] | None) -> list[UpstreamHost]:
        plan = member.instance.plan
        return [h for h in hosts or () if h.address in (plan.grpc_address, plan.http_address)]

    def _step(
        self, member: _Member, hosts: list[UpstreamHost] | None, probed: dict[str, bool]
    ) -> None:
        instance = member.instance
        now = time.monotonic()
        state = instance.state
        if state == "starting" and member.envoy_check_since is not None:
            # Triton is ready; "ready" once Envoy's health check agrees, so that ready always
            # means "Envoy sends it requests".
            mine = self._hosts_of(member, hosts)
            if not instance.alive():
                message = instance.death_message()
                instance.reap("down", message)
                member.envoy_check_since = None
                self._after_failure(member, "down", message)
            elif (
                (mine and all(h.healthy for h in mine))
                or self._envoy_state != "ready"
                or now - member.envoy_check_since > _ENVOY_CHECK_S
            ):
                member.envoy_check_since = None
                instance.set_state("ready", member.ready_message)
                self._emit(instance.name, "ready", instance.message)
            return
        if state == "starting":
            outcome = instance.check_started(ready=probed.get(instance.name, False))
            if outcome == "ready":
                member.ready_at = now
                if member.wanted:
                    member.published = True
                    self._publish()
                    if self._envoy is None:
                        self._emit(instance.name, "ready", instance.message)
                    else:
                        member.ready_message = instance.message
                        member.envoy_check_since = now
                        instance.set_state("starting", "ready; waiting for Envoy's health check")
                else:
                    self._begin_drain(member, member.stopped_message)
            elif outcome == "failed":
                message = instance.message
                instance.reap("failed", message)
                self._after_failure(member, "failed", message)
            return
        if state in ("ready", "ejected"):
            if not instance.alive():
                message = instance.death_message()
                instance.reap("down", message)
                self._after_failure(member, "down", message)
                return
            if member.ready_at is not None and now - member.ready_at > _STABLE_S:
                member.attempts = 0
            mine = self._hosts_of(member, hosts)
            if mine:
                ejected = any(h.ejected for h in mine)
                if ejected and state == "ready":
                    flags = sorted({f for h in mine for f in h.health_flags})
                    instance.set_state("ejected", "Envoy: " + ", ".join(flags))
                    self._emit(instance.name, "ejected", instance.message)
                elif not ejected and state == "ejected":
                    instance.set_state("ready", "healthy again")
                    self._emit(instance.name, "ready", instance.message)
            return
        if state == "draining":
            self._step_drain(member, hosts, now)
            return
        if state in ("down", "failed", "stopped") and (
            member.wanted
            and member.restart_at is not None
            and now >= member.restart_at
            and not instance.alive()
        ):
            self._relaunch(member)

    def _step_drain(self, member: _Member, hosts: list[UpstreamHost] | None, now: float) -> None:
        instance = member.instance
        if not member.stop_begun:
            assert member.drain_started is not None
            mine = self._hosts_of(member, hosts)
            envoy_up = self._envoy is not None and self._envoy.alive()
            # Envoy has taken the new endpoint set (the host shows DRAINING, or is gone) and
            # has nothing in flight on it.
            drained = (
                not member.published
                or not envoy_up
                or (hosts is not None and all(h.draining and h.rq_active == 0 for h in mine))
            )
            timed_out = now - member.drain_started > self.settings.drain_timeout_s
            if drained or timed_out or not instance.alive():
                instance.begin_stop()
                member.stop_begun = True
            return
        if instance.check_stopped():
            self._finish_stop(member)

    def _finish_stop(self, member: _Member) -> None:
        instance = member.instance
        instance.reap("stopped", member.stopped_message)
        member.drain_started = None
        member.stop_begun = False
        if member.published:
            member.published = False
            self._publish()
        self._emit(instance.name, "stopped", member.stopped_message)
        if member.restart_after_stop:
            member.restart_after_stop = False
            member.wanted = True
            member.attempts = 0
            member.next_is_restart = True
            member.restart_at = time.monotonic()

    def _after_failure(self, member: _Member, kind: State, message: str) -> None:
        instance = member.instance
        self._emit(instance.name, kind, message)
        if not member.wanted:
            instance.set_state("stopped", member.stopped_message)
            if member.published:
                member.published = False
                self._publish()
            return
        if not self.settings.restart:
            member.restart_at = None
            return
        if member.attempts >= self.settings.max_restarts:
            member.restart_at = None
            instance.set_state("failed", f"{message}; gave up after {member.attempts} restart(s)")
            self._emit(instance.name, "failed", instance.message)
            return
        member.attempts += 1
        delay = _backoff(member.attempts)
        member.restart_at = time.monotonic() + delay
        member.next_is_restart = True
        instance.set_state(kind, f"{message}; restart {member.attempts} in {delay:g} s")

    def _relaunch(self, member: _Member) -> None:
        instance = member.instance
        member.restart_at = None
        restart, member.next_is_restart = member.next_is_restart, False
        try:
            instance.check_ports()
            self._launch(member)
        except InstanceError:
            message = instance.message
            instance.reap("failed", message)
            self._after_failure(member, "failed", message)
            return
        if restart:
            instance.restarts += 1
        self._emit(
            instance.name, "restarting" if restart else "starting", f"on {instance.plan.device}"
        )

    def _supervise_envoy(self) -> None:
        envoy = self._envoy
        if envoy is None:
            return
        now = time.monotonic()
        if self._envoy_state == "ready" and not envoy.alive():
            message = envoy.exit_message()
            envoy.reap()
            self._emit(None, "envoy_down", message)
            if not self.settings.restart:
                self._envoy_state = "down"
                return
            if self._envoy_attempts >= self.settings.max_restarts:
                self._envoy_state = "failed"
                self._emit(None, "envoy_failed", f"gave up after {self._envoy_attempts} restart(s)")
                return
            self._envoy_attempts += 1
            self._envoy_restart_at = now + _backoff(self._envoy_attempts)
            self._envoy_state = "down"
            return
        if self._envoy_state == "down" and self._envoy_restart_at is not None:
            if now < self._envoy_restart_at:
                return
            self._envoy_restart_at = None
            try:
                self._publish()
                envoy.start()
            except (ProxyError, OSError) as error:
                self._emit(None, "envoy_failed", str(error))
                self._envoy_state = "failed"
                return
            envoy.restarts += 1
            self._envoy_state = "starting"
            self._emit(None, "envoy_restarting", f"restart {self._envoy_attempts}")
            return
        if self._envoy_state == "starting":
            if not envoy.alive():
                self._envoy_state = "ready"  # noticed as down on the next step
                return
            if http_ready(f"{self.admin_url}/ready", timeout=0.2):
                self._envoy_state = "ready"
                self._emit(None, "envoy_ready", f"pid {envoy.pid}")
        if self._envoy_state == "ready" and now - envoy.started_at > _STABLE_S:
            self._envoy_attempts = 0

    @property
    def envoy_state(self) -> str:
        """ "ready", "starting", "down", "failed" or "stopped"."""
        return self._envoy_state

    # ----- stopping --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the supervisor, Envoy and every instance, then remove what they left. Safe to
        call twice."""
        self._stopping.set()
        self._wake.set()
        supervisor = self._supervisor
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(timeout=30)
        self._supervisor = None
        with self._lock:
            if self._envoy is not None:
                self._envoy.stop()
            self._envoy_state = "stopped"
            # Signal every instance first, then wait: they shut down in parallel.
            for member in self._members:
                if member.instance.alive():
                    member.instance.begin_stop()
            for member in self._members:
                instance = member.instance
                instance.stop()
                keep_failure = instance.state == "failed"
                instance.reap("failed" if keep_failure else "stopped", None if keep_failure else "")
                member.published = False
            if self._owns_workdir and self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
            self._watchdog.release()
            self._started = False
            if self._atexit_registered:
                atexit.unregister(self.stop)
                self._atexit_registered = False
        self._dispatch_events()
