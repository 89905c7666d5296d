"""What each part of the serving path costs during one measurement, read from the machine:
CPU per process and per thread from /proc, the machine's idle CPU, the GPU's utilisation, and
the stub's own timing of `execute` (resnet50_model.ExecuteTiming files).

    sample = ProcessSample.take(client_pids, stack_pids)   # before
    ...                                                    # the load runs
    usage = sample.usage_until(ProcessSample.take(client_pids, stack_pids))
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")
# The components of the serving path, by executable name; our engine's load workers are named
# by their pids (they are python processes like any other).
COMPONENTS = (
    ("tritonserver", "tritonserver"),
    ("triton_python_backend_stub", "python stub"),
    ("envoy", "envoy"),
    ("perf_analyzer", "perf_analyzer"),
    ("nvidia-cuda-mps-server", "mps server"),
)
CLIENT = "client (our engine)"
DRIVER = "driver"


def _stat(stat_path: Path) -> tuple[int, int] | None:
    """(parent pid, utime + stime in clock ticks) of a process or thread."""
    try:
        text = stat_path.read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def _ticks(stat_path: Path) -> int | None:
    stat = _stat(stat_path)
    return None if stat is None else stat[1]


def _component(pid: int, parent: int, clients: set[int], roots: set[int]) -> str | None:
    """The component a process belongs to, or None if it is not on this run's serving path:
    our engine's workers, the driver, and by executable name the stack's processes (`roots`),
    their children (the stubs), the driver's children (perf_analyzer) and the MPS server."""
    if pid in clients:
        return CLIENT
    if pid == os.getpid():
        return DRIVER
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return None
    name = Path(argv0).name
    ours = pid in roots or parent in roots or parent == os.getpid()
    for executable, component in COMPONENTS:
        if name == executable and (ours or component == "mps server"):
            return component
    return None


def _machine_ticks() -> tuple[int, int]:
    """(idle + iowait, total) clock ticks of all cores together, from /proc/stat."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in first[:8]]
    return values[3] + values[4], sum(values)


@dataclass
class ProcessSample:
    """CPU ticks of every serving-path process and of each of its threads at one instant."""

    at: float
    components: dict[int, str]
    processes: dict[int, int]
    threads: dict[tuple[int, int], int]
    machine: tuple[int, int]

    @classmethod
    def take(cls, clients: Iterable[int] = (), roots: Iterable[int] = ()) -> ProcessSample:
        """`clients`: our engine's worker pids; `roots`: the stack's Triton and Envoy pids."""
        client_pids, root_pids = set(clients), set(roots)
        components: dict[int, str] = {}
        processes: dict[int, int] = {}
        threads: dict[tuple[int, int], int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            stat = _stat(entry / "stat")
            if stat is None:
                continue
            component = _component(pid, stat[0], client_pids, root_pids)
            if component is None:
                continue
            components[pid], processes[pid] = component, stat[1]
            with contextlib.suppress(OSError):
                for task in (entry / "task").iterdir():
                    value = _ticks(task / "stat")
                    if value is not None:
                        threads[(pid, int(task.name))] = value
        return cls(time.monotonic(), components, processes, threads, _machine_ticks())

    def usage_until(self, later: ProcessSample) -> dict[str, Any]:
        """Per component: cores used in all (1.0 = one core busy all the time), the busiest
        process and the busiest thread (fractions of one core), process count; the machine's
        idle share of all its cores."""
        seconds = max(later.at - self.at, 1e-6)
        per: dict[str, dict[str, Any]] = {}
        for pid, component in later.components.items():
            if pid not in self.processes:
                continue
            used = (later.processes[pid] - self.processes[pid]) / TICKS / seconds
            entry = per.setdefault(
                component, {"cores": 0.0, "busiest_process": 0.0, "busiest_thread": 0.0, "n": 0}
            )
            entry["cores"] += used
            entry["busiest_process"] = max(entry["busiest_process"], used)
            entry["n"] += 1
        for (pid, tid), ticks in later.threads.items():
            before = self.threads.get((pid, tid))
            component = later.components.get(pid)
            if before is None or component not in per:
                continue
            used = (ticks - before) / TICKS / seconds
            per[component]["busiest_thread"] = max(per[component]["busiest_thread"], used)
        idle = later.machine[0] - self.machine[0]
        total = max(later.machine[1] - self.machine[1], 1)
        for entry in per.values():
            for key in ("cores", "busiest_process", "busiest_thread"):
                entry[key] = round(entry[key], 3)
        return {
            "seconds": round(seconds, 2),
            "components": per,
            "machine_idle": round(idle / total, 3),
            "cpus": os.cpu_count(),
        }


class GpuSampler:
    """The GPU's utilisation (percent of time a kernel ran) every 100 ms, in a thread: NVML
    where pynvml imports, else nvidia-smi. Use as a context manager around the measurement."""

    def __init__(self, index: int = 0, period_s: float = 0.1) -> None:
        self.index, self.period_s = index, period_s
        self.samples: list[tuple[float, float, float]] = []  # (at, gpu %, memory %)
        self.source = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _reader(self) -> Any:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self.source = "NVML"

            def read() -> tuple[float, float]:
                rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
                return float(rates.gpu), float(rates.memory)

            return read
        except Exception:
            self.source = "nvidia-smi"

            def read_smi() -> tuple[float, float]:
                text = subprocess.run(
                    [
                        "nvidia-smi",
                        f"--id={self.index}",
                        "--query-gpu=utilization.gpu,utilization.memory",
                        "--format=csv,noheader,nounits",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=False,
                ).stdout
                gpu, memory = (float(v) for v in text.strip().split(",")[:2])
                return gpu, memory

            return read_smi

    def _run(self) -> None:
        try:
            read = self._reader()
            while not self._stop.is_set():
                with contextlib.suppress(Exception):
                    gpu, memory = read()
                    self.samples.append((time.monotonic(), gpu, memory))
                self._stop.wait(self.period_s)
        except Exception as error:  # no GPU here (the --cpu check): no samples
            self.source = f"unavailable ({type(error).__name__})"

    def __enter__(self) -> GpuSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def summary(self, since: float | None = None) -> dict[str, Any]:
        values = [s for s in self.samples if since is None or s[0] >= since]
        if not values:
            return {"source": self.source, "samples": 0}
        return {
            "source": self.source,
            "samples": len(values),
            "gpu_util_mean": round(sum(v[1] for v in values) / len(values), 1),
            "gpu_util_max": max(v[1] for v in values),
            "mem_util_mean": round(sum(v[2] for v in values) / len(values), 1),
        }


@dataclass
class StubTiming:
    """The stub's `execute` totals (ExecuteTiming files), one entry per model instance."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: Path | None) -> StubTiming:
        files: dict[str, dict[str, Any]] = {}
        if folder is not None and folder.is_dir():
            for path in sorted(folder.glob("*.json")):
                with contextlib.suppress(OSError, ValueError):
                    files[path.stem] = json.loads(path.read_text())
        return cls(files)

    def until(self, later: StubTiming) -> dict[str, Any]:
        """Per model instance and in all: batches, requests, images, mean batch, and per batch
        the host time (fetch + run + respond - device span) and device times, in ms; the share
        of the time each instance spent inside `execute` (busy)."""
        instances = {}
        sums: dict[str, float] = {}
        keys = ("batches", "requests", "images", "fetch_s", "run_s", "respond_s")
        keys += ("network_ms", "span_ms", "between_s")
        for name, after in later.files.items():
            before = self.files.get(name, {})
            delta = {k: float(after.get(k, 0)) - float(before.get(k, 0)) for k in keys}
            seconds = float(after.get("at", 0)) - float(before.get("at", after.get("at", 0)))
            if delta["batches"] <= 0:
                continue
            busy_s = delta["fetch_s"] + delta["run_s"] + delta["respond_s"]
            instances[name] = {
                "batches": int(delta["batches"]),
                "mean_batch": round(delta["images"] / delta["batches"], 2),
                "busy": round(busy_s / seconds, 3) if seconds > 0 else None,
            }
            for key, value in delta.items():
                sums[key] = sums.get(key, 0.0) + value
        if not sums:
            return {"instances": {}}
        batches, requests = sums["batches"], max(sums["requests"], 1)
        busy_ms = (sums["fetch_s"] + sums["run_s"] + sums["respond_s"]) * 1000
        host_ms = busy_ms - sums["span_ms"]
        return {
            "instances": instances,
            "batches": int(batches),
            "requests": int(sums["requests"]),
            "mean_batch": round(sums["images"] / batches, 2),
            "per_batch_ms": {
                "execute": round(busy_ms / batches, 3),
                "fetch_inputs": round(sums["fetch_s"] * 1000 / batches, 3),
                "respond": round(sums["respond_s"] * 1000 / batches, 3),
                "device_network": round(sums["network_ms"] / batches, 3),
                "device_span": round(sums["span_ms"] / batches, 3),
                "host": round(host_ms / batches, 3),
                "between_executes": round(sums["between_s"] * 1000 / batches, 3),
            },
            "per_request_us": {
                "host": round(host_ms * 1000 / requests, 1),
                "device_network": round(sums["network_ms"] * 1000 / requests, 1),
            },
            "busiest_instance": max(
                (v["busy"] for v in instances.values() if v["busy"] is not None), default=None
            ),
        }
