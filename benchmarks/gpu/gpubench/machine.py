"""Facts about the machine and its processes, logging, and the time guard."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpubench.configs import Plan


# ----- small helpers -------------------------------------------------------------------------


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def run_text(command: Sequence[str], timeout: float = 30, **kwargs: Any) -> str:
    try:
        result = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"({' '.join(command)}: {error})"
    return str(result.stdout + result.stderr).strip()


class Deadline:
    def __init__(self, at_monotonic: float) -> None:
        self.at = at_monotonic

    @classmethod
    def from_args(cls, epoch: float | None, budget_s: float | None) -> Deadline:
        now = time.monotonic()
        if epoch is not None:
            return cls(now + (epoch - time.time()))
        return cls(now + (budget_s if budget_s is not None else 540.0))

    def left(self) -> float:
        return self.at - time.monotonic()


# ----- the machine's python environment ------------------------------------------------------


def gpu_name() -> str:
    text = run_text(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], timeout=20)
    name = text.splitlines()[0].strip() if text and not text.startswith("(") else "GPU"
    short = re.search(r"\b([A-Z]\d{2,3}[A-Z]?)\b", name)
    return short.group(1) if short else name


def maybe_reexec(home: Path, script: Path) -> None:
    """Run `script` again under HOME/venv's python: Triton's stub takes the python3 beside ours
    (numpy<2)."""
    venv_python = home / "venv" / "bin" / "python"
    if not venv_python.exists():
        return
    if Path(sys.prefix).resolve() == (home / "venv").resolve():
        return
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(
        [str(home / "venv" / "bin"), str(home / "bin"), env.get("PATH", "")]
    )
    env["FLOWERDEMO_GPU_HOME"] = str(home)
    log(f"re-running under {venv_python}")
    os.execve(str(venv_python), [str(venv_python), str(script.resolve()), *sys.argv[1:]], env)


def machine_info(home: Path, plan: Plan) -> str:
    import numpy

    parts = [
        f"date: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
        f"host: {platform.node()} {platform.machine()} {platform.release()}",
        f"python (driver and Triton's stub): {sys.executable} {platform.python_version()}, numpy {numpy.__version__}",
        f"cpu: {os.cpu_count()} logical cores; "
        + next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "?",
        ),
    ]
    try:
        import torch

        parts.append(
            f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
        )
    except Exception as error:
        parts.append(f"torch: {error}")
    with contextlib.suppress(Exception):
        import grpc
        import tritonclient

        parts.append(
            f"tritonclient {getattr(tritonclient, '__version__', '?')}, grpcio {grpc.__version__}"
        )
    versions = home / "versions.json"
    if versions.is_file():
        parts.append("carried: " + versions.read_text().strip())
    if plan.perf_analyzer:
        parts.append(f"perf_analyzer: {plan.perf_analyzer} (tritonclient 2.51.0 binary)")
    with contextlib.suppress(Exception):
        from flowerdemo.serving.envoy import find_envoy

        parts.append("envoy: " + run_text([str(find_envoy()), "--version"]).splitlines()[-1])
    parts.append("\n$ nvidia-smi\n" + run_text(["nvidia-smi"]))
    parts.append(
        "$ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,"
        "power.limit,mig.mode.current --format=csv\n"
        + run_text(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,mig.mode.current",
                "--format=csv",
            ]
        )
    )
    return "\n".join(parts) + "\n"


# ----- CUDA MPS ------------------------------------------------------------------------------


# ----- processes -----------------------------------------------------------------------------


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set variables for the processes started inside (the stack reads os.environ)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def proc_command(pid: int | None, keys: Sequence[str]) -> dict[str, Any]:
    """The exact command line of a running process and the variables of interest."""
    if pid is None:
        return {}
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError as error:
        return {"error": str(error)}
    env = dict(item.decode(errors="replace").split("=", 1) for item in environ if b"=" in item)
    return {
        "argv": [a.decode(errors="replace") for a in argv if a],
        "env": {k: env[k] for k in keys if k in env},
    }
