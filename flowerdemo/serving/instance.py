"""One Triton instance and the processes it owns.

A `TritonInstance` starts one `tritonserver` (in its own process group, so the Python-backend stubs
it starts go with it), tells whether it is ready, stops it gracefully or kills it, and reaps it:
ends leftover stubs, removes its shared-memory regions and temporary files. Every step is
non-blocking (start, then poll `check_started`; `begin_stop`, then poll `check_stopped`), so the
stack's supervisor can drive many instances at once from one thread, as Ray Serve's deployment
state drives its replicas. The wrapper keeps no lock: its owner (serving.stack) serialises calls.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from flowerdemo.serving.plan import InstancePlan
from flowerdemo.serving.ports import port_in_use
from flowerdemo.serving.triton import TritonInstall, triton_command, triton_environment

State = Literal["starting", "ready", "draining", "ejected", "down", "stopped", "failed"]
# POSIX shared memory; only regions named with our own per-instance prefix are ever removed.
SHM_DIR = Path("/dev/shm")  # noqa: S108
_LOG_LINE = re.compile(r'^E\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\]\s+"?(.*?)"?\s*$')
# Error lines a CPU-only machine always prints; they never explain a failure.
_HARMLESS = ("CudaDriverHelper", "NVML", "DCGM", "pinned memory", "No address added")


@dataclass(frozen=True)
class LaunchSettings:
    """What every instance of one stack shares."""

    install: TritonInstall
    backend_dir: Path
    workdir: Path
    repositories: dict[str, Path]
    """"cpu" and/or "gpu" -> the model repository instances of that kind serve."""
    niceness: int = 0
    ready_timeout_s: float = 60.0
    stop_timeout_s: float = 10.0


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


def read_tail(path: Path | None, limit: int = 200_000) -> str:
    if path is None or not path.exists():
        return ""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - limit))
        return handle.read().decode("utf-8", errors="replace")


def http_ready(url: str, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http only)
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    # Each server leads its own process group, so its Python-backend stubs get the signal too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def wait_exit(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait for `process`; past `timeout`, SIGKILL its group and wait a little more."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        signal_group(process, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


def lower_priority(pid: int, niceness: int) -> None:
    # Linux keeps a nice value per thread; threads and processes started later inherit it,
    # so setting it right after the spawn covers what the server starts afterwards.
    if niceness:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, niceness)


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


class InstanceError(RuntimeError):
    """An instance could not start; the message names the instance and the cause."""


class TritonInstance:
    """One tritonserver process group on the ports of its plan. See the module docstring."""

    def __init__(
        self,
        plan: InstancePlan,
        launch: LaunchSettings,
        shm_prefix: str,
        tell_watchdog: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.plan = plan
        self.launch = launch
        self.shm_prefix = shm_prefix
        self._tell_watchdog = tell_watchdog
        self.state: State = "stopped"
        self.message = ""
        self.restarts = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._stop_deadline: float | None = None
        self._log_file: IO[bytes] | None = None
        self.folder = launch.workdir / plan.name
        self.tmp_dir = self.folder / "tmp"
        self.log_path = self.folder / "tritonserver.log"

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def pid(self) -> int | None:
        process = self.process
        return process.pid if process is not None and process.poll() is None else None

    def exit_code(self) -> int | None:
        """None while the server runs (or was never started); else its exit status."""
        return None if self.process is None else self.process.poll()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def set_state(self, state: State, message: str | None = None) -> None:
        self.state = state
        if message is not None:
            self.message = message

    # ----- starting ------------------------------------------------------------------------

    def check_ports(self) -> None:
        plan = self.plan
        for what, port in (
            ("HTTP", plan.http_port),
            ("gRPC", plan.grpc_port),
            ("metrics", plan.metrics_port),
        ):
            if port_in_use(plan.host, port):
                self.set_state("failed", f"{what} port {port} on {plan.host} is already in use")
                raise InstanceError(f"{plan.name}: {self.message}")

    def start(self) -> None:
        """Spawn tritonserver; the state becomes "starting". Poll `check_started` after."""
        plan = self.plan
        launch = self.launch
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        command = triton_command(
            launch.install,
            repository=launch.repositories["gpu" if plan.uses_gpu else "cpu"],
            backend_dir=launch.backend_dir,
            host=plan.host,
            http_port=plan.http_port,
            grpc_port=plan.grpc_port,
            metrics_port=plan.metrics_port,
            shm_region_prefix=self.shm_prefix,
            gpu=plan.uses_gpu,
        )
        env = triton_environment(launch.install, device=plan.device, tmp_dir=self.tmp_dir)
        self._close_log()
        self._log_file = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.folder,
                start_new_session=True,
            )
        except OSError as error:
            self.set_state("failed", f"cannot run {command[0]}: {error}")
            raise InstanceError(f"{plan.name}: {self.message}") from error
        # Set before the model loads, so the Python-backend stubs Triton starts inherit it.
        lower_priority(self.process.pid, launch.niceness)
        self._tell_watchdog(f"group {self.process.pid}")
        self._tell_watchdog(f"shm {self.shm_prefix}")
        self._stop_deadline = None
        self.started_at = time.monotonic()
        self.set_state("starting", "")

    def ready_url(self) -> str:
        return f"http://{self.plan.http_address}/v2/health/ready"

    def check_started(
        self, probe_timeout: float = 0.5, *, ready: bool | None = None
    ) -> Literal["starting", "ready", "failed"]:
        """One look at a starting instance: ready, still starting, or failed (it exited, or it
        was not ready within the ready timeout; the message says which, with the log's cause).
        `ready`: the answer of a readiness probe made by the caller; None probes here."""
        code = self.exit_code()
        if code is not None:
            cause = summarize_triton_log(read_tail(self.log_path))
            self.set_state(
                "failed",
                f"exited with code {code} while starting"
                + (f": {cause}" if cause else f" (see {self.log_path})"),
            )
            return "failed"
        if ready is None:
            ready = http_ready(self.ready_url(), timeout=probe_timeout)
        if ready:
            self.set_state("ready", f"ready in {time.monotonic() - self.started_at:.1f} s")
            return "ready"
        if time.monotonic() - self.started_at > self.launch.ready_timeout_s:
            self.set_state(
                "failed",
                f"not ready after {self.launch.ready_timeout_s:g} s (see {self.log_path})",
            )
            return "failed"
        return "starting"

    def death_message(self) -> str:
        """Why a server that was serving is gone: its exit status and the log's cause."""
        code = self.exit_code()
        cause = summarize_triton_log(read_tail(self.log_path))
        return f"exited unexpectedly with code {code}" + (f": {cause}" if cause else "")

    # ----- stopping ------------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL to tritonserver alone, as a crash would (its stubs are left to the reaper)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    def begin_stop(self) -> None:
        """SIGTERM to the whole group; `check_stopped` finishes the job."""
        if self.alive():
            assert self.process is not None
            signal_group(self.process, signal.SIGTERM)
        self._stop_deadline = time.monotonic() + self.launch.stop_timeout_s

    def check_stopped(self) -> bool:
        """True once the server has exited (SIGKILL after the stop timeout); not reaped yet."""
        if not self.alive():
            return True
        if self._stop_deadline is not None and time.monotonic() > self._stop_deadline:
            assert self.process is not None
            signal_group(self.process, signal.SIGKILL)
        return False

    def stop(self, timeout: float | None = None) -> None:
        """Stop and wait (blocking): SIGTERM to the group, SIGKILL past the timeout."""
        if self.process is not None and self.process.poll() is None:
            signal_group(self.process, signal.SIGTERM)
            wait_exit(self.process, timeout if timeout is not None else self.launch.stop_timeout_s)

    def reap(self, state: State, message: str | None = None) -> None:
        """End what is left of the group (stubs outlive a killed tritonserver for seconds),
        remove its shared memory and temporary files, and record the new state."""
        process = self.process
        if process is not None:
            signal_group(process, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            self._tell_watchdog(f"forget {process.pid}")
        self._close_log()
        remove_shm_regions(self.shm_prefix)
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.process = None
        self._stop_deadline = None
        self.set_state(state, message)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
