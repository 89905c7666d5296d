"""The local serving stack: N real tritonserver processes behind one real Envoy.

`LocalStack(StackSettings(...)).start()` writes a model repository (a Python-backend model running
the ONNX classifier with ONNX Runtime), prepares the Python backend folder once, starts every
instance at the same time (instance k: HTTP base+10k, gRPC base+10k+1, metrics base+10k+2), waits
until each answers /v2/health/ready, then starts Envoy and waits until Envoy's health checks see
every instance. It is synchronous and thread-safe: the GUI calls it from a worker thread, the CLI
from its main thread.

Each Triton runs in its own process group (its Python-backend stubs with it), with TMPDIR inside
the stack's work folder and its own shared-memory prefix, so `stop()` can remove exactly what our
processes left: nothing of another stack's or another user's is touched.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from flowerdemo.serving import envoy as envoy_config
from flowerdemo.serving.devices import DeviceError, resolve_devices
from flowerdemo.serving.plan import DeploymentPlan, InstancePlan, make_instances
from flowerdemo.serving.repository import RepositoryError, RepositoryOptions, write_repository
from flowerdemo.serving.triton import (
    TritonInstall,
    TritonNotFound,
    find_triton,
    prepare_backend_dir,
    shm_prefix,
    triton_command,
    triton_environment,
)

State = Literal["starting", "ready", "stopped", "failed"]
# POSIX shared memory; only regions named with our own per-instance prefix are ever removed.
SHM_DIR = Path("/dev/shm")  # noqa: S108
_LOG_LINE = re.compile(r'^E\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\]\s+"?(.*?)"?\s*$')
# Error lines a CPU-only machine always prints; they never explain a failure.
_HARMLESS = ("CudaDriverHelper", "NVML", "DCGM", "pinned memory", "No address added")


class StackError(RuntimeError):
    """The stack could not do what was asked; the message names the part and the cause."""


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

    @property
    def ports(self) -> tuple[int, int, int]:
        return self.http_port, self.grpc_port, self.metrics_port


@dataclass(frozen=True)
class StackSettings:
    """What to start.

    `model`: None serves the bundled model (flowerdemo.resources.bundled_model_dir()); a folder
    holding one `.onnx` file and `labels.txt`; or an `.onnx` file, with `labels` or a
    `labels.txt` beside it. `devices` are given to the instances in turn (see
    serving.devices). `workdir`: None makes a temporary folder removed on stop; a given folder
    is kept (repository, envoy.yaml and logs stay there for inspection).
    """

    instances: int = 2
    listen: str = "127.0.0.1:50050"
    http_listen: str = "127.0.0.1:50051"
    admin_listen: str = "127.0.0.1:50052"
    base_port: int = 8000
    devices: tuple[str, ...] = ("cpu",)
    model: Path | None = None
    labels: Path | None = None
    model_name: str = "flowers"
    repository: Path | None = None
    """A model repository to serve as it is, instead of one written from `model` (tests, custom models)."""
    with_envoy: bool = True
    workdir: Path | None = None
    host: str = "127.0.0.1"
    lb_policy: str = "round_robin"
    max_batch_size: int = 32
    dynamic_batching: bool = True
    max_queue_delay_us: int = 500
    intra_op_threads: int = 1
    ready_timeout_s: float = 60.0
    stop_timeout_s: float = 10.0
    envoy_concurrency: int = 1
    niceness: int = 0
    """Scheduling priority added to the Triton and Envoy processes. The window's embedded stack uses 10:
    on a laptop's few cores the window stays responsive while the servers take what is left."""
    envoy_log_level: str = "warn"


@dataclass
class _Instance:
    plan: InstancePlan
    state: State = "stopped"
    message: str = ""
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    tmp_dir: Path | None = None
    shm_prefix: str = ""
    started_at: float = 0.0
    expected_exit: bool = False
    log_file: IO[bytes] | None = field(default=None, repr=False)


def resolve_model(settings: StackSettings) -> tuple[Path, Path]:
    """The ONNX file and labels file the settings name; StackError when either is missing."""
    if settings.model is None:
        from flowerdemo.resources import bundled_model_dir

        source = bundled_model_dir()
    else:
        source = Path(settings.model)
    if source.is_dir():
        candidates = sorted(source.glob("*.onnx"))
        if not candidates:
            raise StackError(f"model: no .onnx file in {source}")
        if len(candidates) > 1:
            names = ", ".join(c.name for c in candidates)
            raise StackError(f"model: {source} holds several .onnx files ({names}); name one")
        onnx_path = candidates[0]
    elif source.suffix == ".onnx" or source.exists():
        onnx_path = source
    else:
        raise StackError(f"model: {source} is neither an .onnx file nor a folder")
    if not onnx_path.is_file():
        raise StackError(f"model: model file {onnx_path.resolve()} not found")
    labels = (
        Path(settings.labels) if settings.labels is not None else onnx_path.parent / ("labels.txt")
    )
    if not labels.is_file():
        hint = (
            "" if settings.labels is not None else " (name one, or put labels.txt beside the model)"
        )
        raise StackError(f"model: labels file {labels.resolve()} not found{hint}")
    return onnx_path, labels


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on host:port (a socket in TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def summarize_triton_log(text: str) -> str:
    """The first error line of a tritonserver log that explains a failure, else ''."""
    found: list[str] = []
    for line in text.splitlines():
        match = _LOG_LINE.match(line)
        if match is None:
            if line.startswith("error: "):
                found.append(line[len("error: ") :].strip())
            continue
        message = match.group(1)
        if any(noise in message for noise in _HARMLESS):
            continue
        found.append(message.split("\\n")[0].strip())
    preferred = [m for m in found if m.startswith(("failed to load", "failed to start"))]
    chosen = preferred or found
    return chosen[0] if chosen else ""


def _read_tail(path: Path | None, limit: int = 200_000) -> str:
    if path is None or not path.exists():
        return ""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - limit))
        return handle.read().decode("utf-8", errors="replace")


def _http_ready(url: str, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http only)
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _http_get(url: str, timeout: float = 1.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http only)
            return str(response.read().decode("utf-8", errors="replace"))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    # Each Triton leads its own process group, so its Python-backend stubs get the signal too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


class LocalStack:
    """N Triton instances and one Envoy on this machine. See the module docstring."""

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
        last_port = s.base_port + 10 * (s.instances - 1) + 2
        if s.base_port < 1 or last_port > 65535:
            raise StackError(
                f"base port {s.base_port}: instance ports would run to {last_port} (max 65535)"
            )
        plans = make_instances(s.instances, self._devices, s.base_port, s.host)
        self._instances = [_Instance(plan=p) for p in plans]
        self._lock = threading.RLock()
        self._workdir: Path | None = None
        self._owns_workdir = False
        self._install: TritonInstall | None = None
        self._backend_dir: Path | None = None
        self._repositories: dict[str, Path] = {}
        self._envoy: subprocess.Popen[bytes] | None = None
        self._envoy_log: IO[bytes] | None = None
        self._envoy_config_path: Path | None = None
        self._started = False
        self._atexit_registered = False
        self._watchdog: subprocess.Popen[str] | None = None
        # Names this stack's shared-memory regions apart from any other stack's, even another
        # one in this same process.
        self._owner_token = f"{os.getpid()}{secrets.token_hex(3)}"

    # ----- addresses -------------------------------------------------------------------------

    @property
    def grpc_url(self) -> str:
        """What a gRPC client passes: Envoy's listener, or instance 0 without Envoy."""
        if self.settings.with_envoy:
            return self.settings.listen
        return self._instances[0].plan.grpc_address

    @property
    def http_url(self) -> str:
        if self.settings.with_envoy:
            return self.settings.http_listen
        return self._instances[0].plan.http_address

    @property
    def admin_url(self) -> str:
        return f"http://{self.settings.admin_listen}"

    @property
    def workdir(self) -> Path | None:
        return self._workdir

    @property
    def instance_count(self) -> int:
        return len(self._instances)

    def instance_grpc_url(self, index: int) -> str:
        return self._instance(index).plan.grpc_address

    def instance_http_url(self, index: int) -> str:
        return self._instance(index).plan.http_address

    def instance_shm_prefix(self, index: int) -> str:
        """The name prefix of instance `index`'s shared-memory regions under /dev/shm."""
        return shm_prefix(self._owner_token, index)

    def instance_log(self, index: int) -> Path | None:
        return self._instance(index).log_path

    def plan(self) -> DeploymentPlan:
        """The deployment this stack runs (repository and Envoy paths once started)."""
        workdir = self._workdir or Path()
        return DeploymentPlan(
            model_name=self.settings.model_name,
            repository=self._repositories.get("cpu", workdir / "repository"),
            envoy_config=self._envoy_config_path or workdir / "envoy.yaml",
            instances=tuple(i.plan for i in self._instances),
            listen=self.settings.listen,
            http_listen=self.settings.http_listen,
            admin_listen=self.settings.admin_listen,
        )

    def _instance(self, index: int) -> _Instance:
        if not 0 <= index < len(self._instances):
            raise IndexError(f"instance {index}: this stack has {len(self._instances)} instances")
        return self._instances[index]

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
        """Start every instance, then Envoy; on any failure stop what was started and raise."""
        with self._lock:
            if self._started:
                raise StackError("stack: already started")
            self._started = True
            if not self._atexit_registered:
                atexit.register(self.stop)
                self._atexit_registered = True
            try:
                self._prepare()
                self._start_watchdog()
                self._check_ports()
                for instance in self._instances:
                    self._launch(instance)
                self._wait_ready(self._instances)
                if self.settings.with_envoy:
                    self._start_envoy()
            except BaseException:
                self.stop()
                raise

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
            raise StackError(f"{self._instances[0].plan.name}: cannot start: {error}") from error
        if s.with_envoy:
            try:
                self._envoy_binary = envoy_config.find_envoy()
            except envoy_config.EnvoyNotFound as error:
                raise StackError(f"envoy: cannot start: {error}") from error
        kinds = {"gpu" if i.plan.uses_gpu else "cpu" for i in self._instances}
        if s.repository is not None:
            if not (Path(s.repository) / s.model_name).is_dir():
                raise StackError(
                    f"model: repository {s.repository} has no model folder '{s.model_name}'"
                )
            self._repositories = dict.fromkeys(kinds, Path(s.repository))
            kinds = set()
        else:
            onnx_path, labels_path = resolve_model(s)
        for kind in sorted(kinds):
            options = RepositoryOptions(
                model_name=s.model_name,
                max_batch_size=s.max_batch_size,
                dynamic_batching=s.dynamic_batching,
                max_queue_delay_us=s.max_queue_delay_us,
                instance_kind=kind,
                # Each GPU instance sees only its own device (or MIG slice), as ordinal 0.
                gpus=(0,),
                intra_op_threads=s.intra_op_threads,
            )
            root = self._workdir / f"repository-{kind}"
            try:
                write_repository(onnx_path, labels_path, root, options, flavour="python")
            except RepositoryError as error:
                raise StackError(f"model: {error}") from error
            self._repositories[kind] = root
        # Once, before any instance runs: replacing this library under a running Triton
        # crashes it.
        self._backend_dir = prepare_backend_dir(self._install, self._workdir / "backends")

    def _start_watchdog(self) -> None:
        """A helper process that ends our children if this process dies without stop()
        (killed by a signal, a crashed GUI): see serving.watchdog."""
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-m", "flowerdemo.serving.watchdog"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
        except OSError as error:
            raise StackError(f"stack: cannot start its watchdog: {error}") from error
        if self._owns_workdir and self._workdir is not None:
            self._tell_watchdog(f"path {self._workdir}")

    def _tell_watchdog(self, line: str) -> None:
        watchdog = self._watchdog
        if watchdog is None or watchdog.stdin is None:
            return
        with contextlib.suppress(OSError, ValueError):
            watchdog.stdin.write(line + "\n")
            watchdog.stdin.flush()

    def _release_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if watchdog.stdin is not None:
                watchdog.stdin.write("release\n")
                watchdog.stdin.close()
        try:
            watchdog.wait(timeout=5)
        except subprocess.TimeoutExpired:
            watchdog.kill()
            watchdog.wait()

    def _check_ports(self) -> None:
        s = self.settings
        for instance in self._instances:
            self._check_instance_ports(instance)
        if s.with_envoy:
            for what, address in (
                ("gRPC listener", s.listen),
                ("HTTP listener", s.http_listen),
                ("admin", s.admin_listen),
            ):
                host, port = envoy_config.split_address(address, what)
                if port_in_use(host, port):
                    raise StackError(f"envoy: {what} port {port} on {host} is already in use")

    def _check_instance_ports(self, instance: _Instance) -> None:
        plan = instance.plan
        for what, port in (
            ("HTTP", plan.http_port),
            ("gRPC", plan.grpc_port),
            ("metrics", plan.metrics_port),
        ):
            if port_in_use(plan.host, port):
                instance.state = "failed"
                instance.message = f"{what} port {port} on {plan.host} is already in use"
                raise StackError(f"{plan.name}: {instance.message}")

    def _launch(self, instance: _Instance) -> None:
        assert self._install is not None and self._backend_dir is not None
        assert self._workdir is not None
        plan = instance.plan
        instance_dir = self._workdir / plan.name
        instance.tmp_dir = instance_dir / "tmp"
        instance.tmp_dir.mkdir(parents=True, exist_ok=True)
        instance.log_path = instance_dir / "tritonserver.log"
        instance.shm_prefix = self.instance_shm_prefix(plan.index)
        repository = self._repositories["gpu" if plan.uses_gpu else "cpu"]
        command = triton_command(
            self._install,
            repository=repository,
            backend_dir=self._backend_dir,
            host=plan.host,
            http_port=plan.http_port,
            grpc_port=plan.grpc_port,
            metrics_port=plan.metrics_port,
            shm_region_prefix=instance.shm_prefix,
            gpu=plan.uses_gpu,
        )
        env = triton_environment(self._install, device=plan.device, tmp_dir=instance.tmp_dir)
        if instance.log_file is not None:
            instance.log_file.close()
        instance.log_file = instance.log_path.open("ab")
        try:
            instance.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=instance.log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=instance_dir,
                start_new_session=True,
            )
        except OSError as error:
            instance.state = "failed"
            instance.message = f"cannot run {command[0]}: {error}"
            raise StackError(f"{plan.name}: {instance.message}") from error
        # Set before the model loads, so the Python-backend stubs Triton starts inherit it.
        self._lower_priority(instance.process.pid)
        self._tell_watchdog(f"group {instance.process.pid}")
        self._tell_watchdog(f"shm {instance.shm_prefix}")
        instance.state = "starting"
        instance.message = ""
        instance.expected_exit = False
        instance.started_at = time.monotonic()

    def _lower_priority(self, pid: int) -> None:
        # Linux keeps a nice value per thread; threads and processes started later inherit it,
        # so setting it right after the spawn covers what the server starts afterwards.
        if self.settings.niceness:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, pid, self.settings.niceness)

    def _wait_ready(self, instances: list[_Instance]) -> None:
        deadline = time.monotonic() + self.settings.ready_timeout_s
        waiting = list(instances)
        while waiting:
            for instance in list(waiting):
                process = instance.process
                assert process is not None
                code = process.poll()
                if code is not None:
                    cause = summarize_triton_log(_read_tail(instance.log_path))
                    instance.state = "failed"
                    instance.message = f"exited with code {code} while starting" + (
                        f": {cause}" if cause else f" (see {instance.log_path})"
                    )
                    raise StackError(f"{instance.plan.name}: {instance.message}")
                url = f"http://{instance.plan.http_address}/v2/health/ready"
                if _http_ready(url, timeout=0.5):
                    instance.state = "ready"
                    elapsed = time.monotonic() - instance.started_at
                    instance.message = f"ready in {elapsed:.1f} s"
                    waiting.remove(instance)
            if not waiting:
                return
            if time.monotonic() > deadline:
                names = ", ".join(i.plan.name for i in waiting)
                for instance in waiting:
                    instance.state = "failed"
                    instance.message = (
                        f"not ready after {self.settings.ready_timeout_s:g} s "
                        f"(see {instance.log_path})"
                    )
                raise StackError(
                    f"{names}: not ready after {self.settings.ready_timeout_s:g} s; "
                    f"logs in {self._workdir}"
                )
            time.sleep(0.1)

    def _envoy_settings(self) -> envoy_config.EnvoySettings:
        s = self.settings
        return envoy_config.EnvoySettings(
            grpc_upstreams=tuple(i.plan.grpc_address for i in self._instances),
            http_upstreams=tuple(i.plan.http_address for i in self._instances),
            instance_names=tuple(i.plan.name for i in self._instances),
            listen=s.listen,
            http_listen=s.http_listen,
            admin_listen=s.admin_listen,
            lb_policy=s.lb_policy,
        )

    def _start_envoy(self) -> None:
        assert self._workdir is not None
        try:
            config = self._envoy_settings()
            self._envoy_config_path = envoy_config.write_config(
                config, self._workdir / "envoy.yaml"
            )
        except envoy_config.EnvoyConfigError as error:
            raise StackError(f"envoy: {error}") from error
        command = envoy_config.envoy_command(
            self._envoy_config_path,
            envoy=self._envoy_binary,
            concurrency=self.settings.envoy_concurrency,
            log_level=self.settings.envoy_log_level,
        )
        log_path = self._workdir / "envoy.log"
        self._envoy_log = log_path.open("ab")
        try:
            self._envoy = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._envoy_log,
                stderr=subprocess.STDOUT,
                cwd=self._workdir,
                start_new_session=True,
            )
        except OSError as error:
            raise StackError(f"envoy: cannot run {command[0]}: {error}") from error
        self._lower_priority(self._envoy.pid)
        self._tell_watchdog(f"group {self._envoy.pid}")
        deadline = time.monotonic() + 15.0
        while True:
            code = self._envoy.poll()
            if code is not None:
                tail = _read_tail(log_path, 4000).strip().splitlines()
                cause = next((line for line in reversed(tail) if "critical" in line), "")
                cause = cause or (tail[-1] if tail else f"see {log_path}")
                raise StackError(f"envoy: exited with code {code} while starting: {cause}")
            health = self.envoy_host_health()
            if health and all(flag == "healthy" for flag in health.values()):
                return
            if time.monotonic() > deadline:
                raise StackError(f"envoy: instances not all healthy after 15 s: {health}")
            time.sleep(0.05)

    def envoy_host_health(self) -> dict[str, str]:
        """Per-instance health as Envoy sees it, for the gRPC cluster: name -> "healthy" or
        Envoy's failure flags (for example "/failed_active_hc", "/failed_outlier_check").
        Empty while Envoy does not answer."""
        text = _http_get(f"{self.admin_url}/clusters", timeout=1.0)
        if text is None:
            return {}
        by_address = {i.plan.grpc_address: i.plan.name for i in self._instances}
        health: dict[str, str] = {}
        for line in text.splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == "triton_grpc" and parts[2] == "health_flags":
                name = by_address.get(parts[1], parts[1])
                health[name] = parts[3].strip()
        return health

    def envoy_pid(self) -> int | None:
        return self._envoy.pid if self._envoy is not None and self._envoy.poll() is None else None

    # ----- one instance ----------------------------------------------------------------------

    def stop_instance(
        self, index: int, *, kill: bool = False, timeout: float | None = None
    ) -> None:
        """Stop instance `index`. `kill=True` sends SIGKILL to tritonserver alone, as a crash
        would; otherwise SIGTERM to its process group. Either way we wait for it, then end its
        leftover stubs and remove its shared memory and temporary files."""
        with self._lock:
            instance = self._instance(index)
            process = instance.process
            if process is None or process.poll() is not None:
                self._reap(instance, "stopped" if instance.state != "failed" else "failed")
                return
            instance.expected_exit = True
            if kill:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            else:
                _signal_group(process, signal.SIGTERM)
            self._wait_exit(
                process, timeout if timeout is not None else self.settings.stop_timeout_s
            )
            self._reap(instance, "stopped", "killed (SIGKILL)" if kill else "stopped on request")

    def start_instance(self, index: int, *, wait: bool = True) -> None:
        """(Re)start instance `index` on its ports; with `wait`, return once it is ready."""
        with self._lock:
            if not self._started:
                raise StackError("stack: not started")
            instance = self._instance(index)
            if instance.process is not None and instance.process.poll() is None:
                if instance.state == "ready":
                    return
            else:
                self._reap(instance, instance.state)
                self._check_instance_ports(instance)
                self._launch(instance)
            if wait:
                try:
                    self._wait_ready([instance])
                except StackError:
                    self._stop_group(instance)
                    self._reap(instance, "failed", instance.message)
                    raise

    def states(self) -> list[InstanceState]:
        with self._lock:
            result = []
            for instance in self._instances:
                self._refresh(instance)
                plan = instance.plan
                process = instance.process
                result.append(
                    InstanceState(
                        index=plan.index,
                        name=plan.name,
                        pid=process.pid if process is not None and process.poll() is None else None,
                        http_port=plan.http_port,
                        grpc_port=plan.grpc_port,
                        metrics_port=plan.metrics_port,
                        device=plan.device,
                        state=instance.state,
                        message=instance.message,
                    )
                )
            return result

    def _refresh(self, instance: _Instance) -> None:
        process = instance.process
        if process is None:
            return
        code = process.poll()
        if code is None:
            if instance.state == "starting" and _http_ready(
                f"http://{instance.plan.http_address}/v2/health/ready", timeout=0.2
            ):
                instance.state = "ready"
            return
        if instance.state in ("ready", "starting"):
            cause = summarize_triton_log(_read_tail(instance.log_path))
            detail = f": {cause}" if cause else ""
            self._reap(instance, "failed", f"exited unexpectedly with code {code}{detail}")

    # ----- stopping and cleaning up ----------------------------------------------------------

    @staticmethod
    def _wait_exit(process: subprocess.Popen[bytes], timeout: float) -> None:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)

    def _stop_group(self, instance: _Instance) -> None:
        process = instance.process
        if process is None:
            return
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            self._wait_exit(process, self.settings.stop_timeout_s)
        # Stubs outlive a killed tritonserver for a few seconds; end them now.
        _signal_group(process, signal.SIGKILL)

    def _reap(self, instance: _Instance, state: State, message: str | None = None) -> None:
        process = instance.process
        if process is not None:
            _signal_group(process, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            self._tell_watchdog(f"forget {process.pid}")
        if instance.log_file is not None:
            instance.log_file.close()
            instance.log_file = None
        remove_shm_regions(instance.shm_prefix)
        if instance.tmp_dir is not None and instance.tmp_dir.exists():
            shutil.rmtree(instance.tmp_dir, ignore_errors=True)
            instance.tmp_dir.mkdir(parents=True, exist_ok=True)
        instance.process = None
        instance.state = state
        if message is not None:
            instance.message = message

    def stop(self) -> None:
        """Stop Envoy and every instance, then remove what they left. Safe to call twice."""
        with self._lock:
            if self._envoy is not None:
                if self._envoy.poll() is None:
                    self._envoy.terminate()
                self._wait_exit(self._envoy, 5.0)
                self._tell_watchdog(f"forget {self._envoy.pid}")
                self._envoy = None
            if self._envoy_log is not None:
                self._envoy_log.close()
                self._envoy_log = None
            # Signal every instance first, then wait: they shut down in parallel.
            for instance in self._instances:
                process = instance.process
                if process is not None and process.poll() is None:
                    instance.expected_exit = True
                    _signal_group(process, signal.SIGTERM)
            for instance in self._instances:
                process = instance.process
                if process is not None:
                    self._wait_exit(process, self.settings.stop_timeout_s)
                keep_failure = instance.state == "failed"
                self._reap(
                    instance,
                    "failed" if keep_failure else "stopped",
                    None if keep_failure else "",
                )
                if instance.tmp_dir is not None:
                    shutil.rmtree(instance.tmp_dir, ignore_errors=True)
            if self._owns_workdir and self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
            self._release_watchdog()
            self._started = False
            if self._atexit_registered:
                atexit.unregister(self.stop)
                self._atexit_registered = False


def remove_shm_regions(prefix: str, shm_dir: Path = SHM_DIR) -> list[Path]:
    """Remove the shared-memory regions named with `prefix` (one instance's own prefix)."""
    if not prefix or not shm_dir.is_dir():
        return []
    removed = []
    for path in shm_dir.glob(f"{prefix}*"):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            path.unlink()
            removed.append(path)
    return removed


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; True if it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
