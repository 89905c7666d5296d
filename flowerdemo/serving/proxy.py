"""The Envoy process in front of the instances: start it on a bootstrap file, tell whether it
runs, stop it. Its endpoints come from files (serving.envoy.EndpointWriter), so it is started
once and never restarted when instances come and go; the supervisor restarts it only if it dies.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from flowerdemo.serving import envoy as envoy_config
from flowerdemo.serving.instance import lower_priority, read_tail, wait_exit


class ProxyError(RuntimeError):
    """Envoy could not start; the message gives the cause from its log."""


class EnvoyProcess:
    """One Envoy process (own process group, log appended to `log_path`)."""

    def __init__(
        self,
        config_path: Path,
        log_path: Path,
        *,
        binary: Path,
        concurrency: int = 1,
        log_level: str = "warn",
        niceness: int = 0,
        tell_watchdog: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.binary = binary
        self.concurrency = concurrency
        self.log_level = log_level
        self.niceness = niceness
        self._tell_watchdog = tell_watchdog
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.started_at = 0.0
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.alive() and self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Spawn Envoy; ProxyError when it cannot run at all."""
        command = envoy_config.envoy_command(
            self.config_path,
            envoy=self.binary,
            concurrency=self.concurrency,
            log_level=self.log_level,
        )
        self._close_log()
        self._log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.config_path.parent,
                start_new_session=True,
            )
        except OSError as error:
            raise ProxyError(f"envoy: cannot run {command[0]}: {error}") from error
        lower_priority(self.process.pid, self.niceness)
        self._tell_watchdog(f"group {self.process.pid}")
        self.started_at = time.monotonic()

    def exit_message(self) -> str:
        """Why Envoy exited: its status and the last critical line of its log."""
        code = None if self.process is None else self.process.poll()
        tail = read_tail(self.log_path, 4000).strip().splitlines()
        cause = next((line for line in reversed(tail) if "critical" in line), "")
        cause = cause or (tail[-1] if tail else f"see {self.log_path}")
        return f"exited with code {code}: {cause}"

    def stop(self, timeout: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
            wait_exit(process, timeout)
            self._tell_watchdog(f"forget {process.pid}")
        self._close_log()

    def reap(self) -> None:
        """Forget a dead Envoy (the supervisor starts a new one)."""
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            self._tell_watchdog(f"forget {process.pid}")
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
