"""ResNet-50 FP16 scaling on one GPU: Triton instances behind Envoy, our engine and perf_analyzer.

Runs on the GPU machine after `stage.sh` (README.md here gives the exact device calls). For each
configuration it writes the ResNet-50 repository (resnet50_model.py), starts the stack through
flowerdemo's LocalStack (Envoy in front), sweeps concurrency through Envoy with our engine
(driven from several processes, merged: multiload.py), then perf_analyzer at the same point,
and writes CSVs in perf_analyzer's layout, charts and a summary with the issue's figures.

Configurations (--configs, run in the order given):
  whole     one Triton owning the whole GPU, no MPS (its model has M instances, default 2)
  mpsK      K Tritons sharing the GPU, each a CUDA MPS client limited to --mps-percentage (14)
            of the SMs: the stand-in for K 1g MIG slices. NOT MIG, and every chart says so.
  wholexM, mpsKxM   the same with M model instances per Triton (default: whole 2, mps 1)
  cpu       (with --cpu) one Triton on the CPU: the whole driver path, checkable anywhere
  NAME-u8   the model takes UINT8 pixels (scaled on the GPU): 4x fewer bytes per request;
            our engine sends raw pixels (scaling "none")
  NAME-direct  (one Triton only) our engine and perf_analyzer talk to Triton's own gRPC port,
            no Envoy: a diagnostic of Envoy's cost, swept at --direct-concurrency
  e.g. whole-u8, whole-u8-direct, whole-direct, mps1-u8, mps7-u8, cpu-u8-direct

Time: every phase is guarded by --deadline-epoch (or --budget-s); what is done is written to
--out after every configuration, so a late stop still leaves results. Results also go to
--state-dir (default HOME/results), so a later device call's summary includes earlier ones.

    python3 benchmarks/gpu/run_gpu_bench.py --out $OUT --configs whole,mps1,mps7
    python3 benchmarks/gpu/run_gpu_bench.py --dry-run --configs whole,mps1,mps7
    python3 benchmarks/gpu/run_gpu_bench.py --cpu --out /tmp/cpu-check   # here, no GPU
    python3 benchmarks/gpu/run_gpu_bench.py --summarize OUT_B OUT_C --out benchmarks/results/x
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
for _path in (str(ROOT), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import resnet50_model  # noqa: E402  (stdlib-only at import time)

DEFAULT_HOME = "/opt/flowerdemo-gpu"
MODEL = resnet50_model.MODEL_NAME
BUDGET_MS = 50.0
TARGETS = {
    "p50_c1_ms": 2.5,
    "peak_images_per_s": 8000.0,
    "scaling_7_vs_1": 5.0,
}
COLLAPSE_TOLERANCE = 0.05  # a fall below 95% of the best so far counts as a fall
TEARDOWN_RESERVE_S = 30.0
# perf_analyzer's CSV columns, and whether the row is a stable measurement.
PERF_COLUMNS = (
    "Concurrency",
    "Inferences/Second",
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
    "stable",
)
OUT_FILES = ("summary.md", "results.tar.gz", "throughput.png", "latency_p90.png", "machine.txt")


# ----- configurations and the plan -----------------------------------------------------------


@dataclass(frozen=True)
class Config:
    name: str
    tritons: int
    mps: bool
    model_instances: int
    kind: str = "gpu"
    copy_threads: int = 4
    mps_percentage: int = 14
    input_dtype: str = "fp32"
    direct: bool = False

    @property
    def variant(self) -> str:
        """What differs from the first round's setup, for titles and labels ('' if nothing)."""
        parts = []
        if self.input_dtype == "uint8":
            parts.append("UINT8 input")
        if self.direct:
            parts.append("direct, no Envoy: diagnostic")
        return ", ".join(parts)

    def title(self, gpu: str) -> str:
        suffix = f" [{self.variant}]" if self.variant else ""
        if self.kind == "cpu":
            return "CPU check: one Triton on the CPU (not a GPU measurement)" + suffix
        if self.mps:
            share = "one process" if self.tritons == 1 else f"{self.tritons} processes"
            return (
                f"{gpu}, NOT MIG: {share} sharing one GPU via MPS "
                f"({self.mps_percentage}% of the SMs each)" + suffix
            )
        return f"{gpu}: one Triton owning the whole GPU (no MPS)" + suffix

    @property
    def label(self) -> str:
        suffix = f" ({self.variant})" if self.variant else ""
        if self.kind == "cpu":
            return "1 Triton, CPU" + suffix
        if self.mps:
            return (
                f"{self.tritons} Triton{'s' if self.tritons > 1 else ''} x MPS {self.mps_percentage}%"
                + suffix
            )
        # Two whole-GPU runs can differ only in model instances: the label must tell them apart.
        instances = (
            f", {self.model_instances} model instance{'s' if self.model_instances > 1 else ''}"
        )
        return "1 Triton, whole GPU" + instances + suffix


def parse_configs(
    text: str,
    *,
    mps_percentage: int,
    whole_instances: int,
    mps_instances: int,
    whole_copy_threads: int,
    mps_copy_threads: int,
) -> list[Config]:
    configs = []
    for raw in (part.strip() for part in text.split(",")):
        if not raw:
            continue
        match = re.fullmatch(r"(whole|mps(\d+)|cpu)(?:x(\d+))?(-u8)?(-direct)?", raw)
        if not match:
            raise ValueError(
                f"configuration '{raw}': use whole, mpsK, wholexM, mpsKxM or cpu, "
                "optionally followed by -u8 and/or -direct"
            )
        kind, count, instances = match.group(1), match.group(2), match.group(3)
        input_dtype, direct = ("uint8" if match.group(4) else "fp32"), bool(match.group(5))
        if kind == "whole":
            config = Config(
                raw, 1, False, int(instances or whole_instances), "gpu", whole_copy_threads
            )
        elif kind == "cpu":
            config = Config(raw, 1, False, int(instances or 1), "cpu", 1)
        else:
            tritons = int(count)
            if not 1 <= tritons <= 48:
                raise ValueError(f"configuration '{raw}': 1 to 48 MPS clients")
            config = Config(
                raw,
                tritons,
                True,
                int(instances or mps_instances),
                "gpu",
                mps_copy_threads,
                mps_percentage,
            )
        if direct and config.tritons != 1:
            raise ValueError(
                f"configuration '{raw}': -direct needs one Triton (it bypasses Envoy, "
                "which is what spreads the load over several)"
            )
        configs.append(replace(config, input_dtype=input_dtype, direct=direct))
    if not configs:
        raise ValueError("no configuration given")
    return configs


@dataclass(frozen=True)
class Plan:
    configs: tuple[Config, ...]
    concurrencies: tuple[int, ...]
    direct_concurrencies: tuple[int, ...]
    window_s: float
    stable_windows: int
    max_windows: int
    tolerance: float
    load_processes: int
    envoy_workers: int
    base_port: int
    listen: str
    http_listen: str
    admin_listen: str
    perf_analyzer: str | None
    perf_libs: str
    weights: str
    buckets: tuple[int, ...]
    max_queue_delay_us: int
    budget_ms: float
    home: str

    def perf_command(self, url: str, concurrency: int, report: str) -> list[str]:
        assert self.perf_analyzer is not None
        return [
            self.perf_analyzer,
            "-m",
            MODEL,
            "-u",
            url,
            "-i",
            "grpc",
            "-b",
            "1",
            "--concurrency-range",
            f"{concurrency}:{concurrency}",
            "--measurement-interval",
            str(int(self.window_s * 1000)),
            "--stability-percentage",
            str(int(self.tolerance * 100)),
            "--max-trials",
            str(self.max_windows),
            "--percentile",
            "90",
            "-v",
            "-f",
            report,
        ]

    def concurrencies_for(self, config: Config) -> tuple[int, ...]:
        """The diagnostic (direct) configurations sweep a shorter list."""
        return self.direct_concurrencies if config.direct else self.concurrencies

    def estimate_s(self, config: Config) -> float:
        """The bound the time guards use: stack start, every point at its slowest."""
        return self.load_estimate_s(config) + self.point_estimate_s() * len(
            self.concurrencies_for(config)
        )

    def typical_s(self, config: Config) -> float:
        """What a configuration took on the H100 in the first round: the stack ready in 15-23 s,
        load processes and teardown about 15 s more, 7-13 s a point (10 on average, with
        perf_analyzer; about 55% of that without)."""
        if config.kind == "cpu":
            return self.estimate_s(config)
        per_point = 10.0 if self.perf_analyzer else 5.5
        return (
            30.0
            + 1.0 * config.tritons * config.model_instances
            + per_point * len(self.concurrencies_for(config))
        )

    def point_estimate_s(self) -> float:
        ours = self.window_s * (0.5 + self.max_windows) + 0.5
        theirs = self.window_s * (self.max_windows + 1) + 2.0 if self.perf_analyzer else 0.0
        return ours + theirs

    @staticmethod
    def load_estimate_s(config: Config) -> float:
        if config.kind == "cpu":
            return 20.0
        return 45.0 + 4.0 * config.tritons * config.model_instances


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


def free_port_block(span: int) -> int:
    """The first of `span` consecutive free ports on 127.0.0.1 (for --cpu runs beside others)."""
    chooser = random.Random(os.getpid() ^ time.time_ns())
    for _ in range(500):
        first = chooser.randrange(20000, 32000 - span)
        ok = True
        for port in range(first, first + span):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return first
    raise RuntimeError("no block of free ports on 127.0.0.1")


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


def gpu_name() -> str:
    text = run_text(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], timeout=20)
    name = text.splitlines()[0].strip() if text and not text.startswith("(") else "GPU"
    short = re.search(r"\b([A-Z]\d{2,3}[A-Z]?)\b", name)
    return short.group(1) if short else name


# ----- the machine's python environment ------------------------------------------------------


def maybe_reexec(home: Path) -> None:
    """Run under HOME/venv's python: Triton's stub takes the python3 beside ours (numpy<2)."""
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
    os.execve(
        str(venv_python), [str(venv_python), str(Path(__file__).resolve()), *sys.argv[1:]], env
    )


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


class Mps:
    """The MPS control daemon for the MPS configurations (started with our own pipe folder)."""

    def __init__(self, base: Path) -> None:
        self.pipe = base / "pipe"
        self.logs = base / "log"
        self.control = shutil.which("nvidia-cuda-mps-control") or next(
            (
                str(p)
                for p in (
                    Path("/usr/bin/nvidia-cuda-mps-control"),
                    Path("/usr/local/nvidia/bin/nvidia-cuda-mps-control"),
                    Path("/usr/local/cuda/bin/nvidia-cuda-mps-control"),
                )
                if p.exists()
            ),
            None,
        )
        self.running = False

    @property
    def env(self) -> dict[str, str]:
        return {"CUDA_MPS_PIPE_DIRECTORY": str(self.pipe), "CUDA_MPS_LOG_DIRECTORY": str(self.logs)}

    def start(self) -> None:
        if self.control is None:
            raise RuntimeError("nvidia-cuda-mps-control not found: MPS configurations cannot run")
        self.pipe.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        result = subprocess.run(
            [self.control, "-d"], env=env, capture_output=True, text=True, timeout=30
        )
        if result.returncode != 0:
            raise RuntimeError(f"MPS daemon did not start: {result.stdout}{result.stderr}")
        self.running = True
        log(f"MPS control daemon started (pipe {self.pipe})")

    def query(self, command: str) -> str:
        if not self.running or self.control is None:
            return ""
        return run_text(
            [self.control], timeout=15, input=command + "\n", env={**os.environ, **self.env}
        )

    def stop(self) -> None:
        if not self.running or self.control is None:
            return
        self.query("quit")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (self.pipe / "control").exists():
            time.sleep(0.2)
        self.running = False
        log("MPS control daemon stopped")

    def __enter__(self) -> Mps:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


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


def mps_check(percentage: int) -> int:
    """MPS works here: the model timed as one MPS client at `percentage`% (no Triton)."""
    mps = Mps(Path(tempfile.gettempdir()) / "flowerdemo-mps-check")
    try:
        mps.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        print(f"mps check: {error}")
        return 1
    try:
        env = {**os.environ, **mps.env, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(percentage)}
        command = [sys.executable, str(HERE / "resnet50_model.py"), "--gpu-smoke"]
        command += ["--buckets", "1,8,32,128", "--seconds", "2"]
        print(f"mps check: {' '.join(command)} with CUDA_MPS_ACTIVE_THREAD_PERCENTAGE={percentage}")
        print(run_text(command, timeout=150, env=env))
        print("get_server_list:", mps.query("get_server_list") or "(none)")
        print(
            run_text(
                ["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory", "--format=csv"]
            )
        )
    finally:
        mps.stop()
    return 0


# ----- one configuration ---------------------------------------------------------------------


@dataclass
class PointResult:
    concurrency: int
    ours: dict[str, Any] | None = None
    perf_analyzer: dict[str, Any] | None = None
    perf_analyzer_error: str = ""
    seconds: float = 0.0


@dataclass
class ConfigResult:
    config: dict[str, Any]
    label: str
    title: str
    status: str = "not run"
    message: str = ""
    load_s: float | None = None
    model_init: list[str] = field(default_factory=list)
    commands: dict[str, Any] = field(default_factory=dict)
    gpu_snapshot: str = ""
    mps_servers: str = ""
    points: list[PointResult] = field(default_factory=list)
    load_description: str = ""
    weights: str = ""
    target: str = ""


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


def read_perf_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


_PASS = re.compile(r"Pass \[(\d+)\] throughput: ([\d.]+) infer/sec\.\s+p(\d+) latency: (\d+) usec")


def unstable_perf_row(output: str, concurrency: int, last: int) -> dict[str, str] | None:
    """When perf_analyzer gives up on stability it writes no CSV; its verbose output still has
    every window ("Pass [k] throughput: ... p90 latency: ..."). Like our engine, take the mean of
    the last `last` windows (throughput and p90 only) and mark the row not stable."""
    passes = [(float(m.group(2)), int(m.group(4))) for m in _PASS.finditer(output)]
    if not passes:
        return None
    used = passes[-last:]
    return {
        "Concurrency": str(concurrency),
        "Inferences/Second": f"{sum(t for t, _ in used) / len(used):.4f}",
        "p90 latency": str(round(sum(p for _, p in used) / len(used))),
        "stable": "no",
    }


def run_config(
    config: Config, plan: Plan, results: Path, deadline: Deadline, mps: Mps | None, gpu: str
) -> ConfigResult:
    from multiload import LoadError, LoadPool, LoadSettings

    from flowerdemo.bench import step_snapshot
    from flowerdemo.core.stats import perf_analyzer_row, write_perf_analyzer_csv
    from flowerdemo.core.sweep import SweepSettings
    from flowerdemo.resources import labels_file
    from flowerdemo.serving.stack import LocalStack, StackError, StackSettings

    folder = results / config.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    result = ConfigResult(
        asdict(config),
        config.label,
        config.title(gpu),
        weights=plan.weights or "random weights, seed 0",
    )
    work = Path(tempfile.mkdtemp(prefix=f"flowerdemo-gpu-{config.name}-"))
    repository = resnet50_model.write_repository(
        work / "repository",
        labels_file(),
        kind=config.kind,
        instances=config.model_instances,
        buckets=plan.buckets,
        max_queue_delay_us=plan.max_queue_delay_us,
        weights=plan.weights,
        copy_threads=config.copy_threads,
        input_dtype=config.input_dtype,
    )
    shutil.copyfile(repository / MODEL / "config.pbtxt", folder / "config.pbtxt")
    settings = StackSettings(
        instances=config.tritons,
        devices=("cpu",) if config.kind == "cpu" else ("cuda:0",),
        repository=repository,
        model_name=MODEL,
        # A direct configuration starts no Envoy: the load goes to Triton's own gRPC port.
        with_envoy=not config.direct,
        workdir=work / "stack",
        base_port=plan.base_port,
        listen=plan.listen,
        http_listen=plan.http_listen,
        admin_listen=plan.admin_listen,
        envoy_concurrency=plan.envoy_workers,
        ready_timeout_s=max(30.0, min(300.0, deadline.left() - TEARDOWN_RESERVE_S)),
    )
    variables = dict(mps.env) if (config.mps and mps is not None) else {}
    if config.mps:
        variables["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(config.mps_percentage)
    stack = LocalStack(settings)
    sweep = SweepSettings(
        (1,),
        window_s=plan.window_s,
        tolerance=plan.tolerance,
        stable_windows=plan.stable_windows,
        max_windows=plan.max_windows,
    )
    ours_rows: list[dict[str, Any]] = []
    theirs_rows: list[dict[str, str]] = []
    started = time.monotonic()
    try:
        log(
            f"{config.name}: starting {config.tritons} Triton(s) x {config.model_instances} model instance(s) on {settings.devices[0]}"
            + (f" under MPS at {config.mps_percentage}%" if config.mps else "")
            + (
                ", no Envoy (direct to Triton's gRPC port: diagnostic)"
                if config.direct
                else f", Envoy with {plan.envoy_workers} workers"
            )
            + f", {config.input_dtype.upper()} input"
        )
        try:
            with environment(variables):
                stack.start()
        except StackError as error:
            result.status, result.message = "failed to start", str(error)
            log(f"{config.name}: {error}")
            for index in range(config.tritons):
                path = stack.instance_log(index)
                if path is not None and path.exists():
                    shutil.copyfile(path, folder / f"tritonserver-{index}.log")
            return result
        result.load_s = round(time.monotonic() - started, 1)
        log(f"{config.name}: stack ready in {result.load_s} s")
        keys = (
            "CUDA_VISIBLE_DEVICES",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
            "CUDA_MPS_PIPE_DIRECTORY",
            "LD_LIBRARY_PATH",
            "OMP_NUM_THREADS",
        )
        result.commands["tritonserver"] = [
            proc_command(state.pid, keys) for state in stack.states()
        ]
        result.commands["envoy"] = proc_command(stack.envoy_pid(), ())
        for index in range(config.tritons):
            path = stack.instance_log(index)
            if path is not None and path.exists():
                text = path.read_text(errors="replace")
                result.model_init += [
                    line for line in text.splitlines() if "resnet50 instance" in line
                ]
        if stack.workdir is not None and (stack.workdir / "envoy.yaml").exists():
            shutil.copyfile(stack.workdir / "envoy.yaml", folder / "envoy.yaml")
        if config.kind == "gpu":
            result.gpu_snapshot = run_text(["nvidia-smi"])
        if mps is not None and config.mps:
            result.mps_servers = mps.query("get_server_list")
        # Through Envoy's listener, or (direct) Triton 0's own gRPC port: both ours and
        # perf_analyzer use this address.
        url = stack.instance_grpc_url(0) if config.direct else stack.grpc_url
        result.target = (
            f"Triton's own gRPC port {url}, no Envoy (diagnostic)"
            if config.direct
            else f"Envoy {url}"
        )
        load = LoadSettings(
            url=url,
            model=MODEL,
            processes=plan.load_processes,
            # UINT8 models take raw pixels: the engine must not scale them.
            scaling="none" if config.input_dtype == "uint8" else "inception",
        )
        pool = LoadPool(load)
        try:
            pool.start()
        except LoadError as error:
            pool.close()
            result.status, result.message = "load failed", str(error)
            return result
        result.load_description = (
            f"our engine (flowerdemo InferenceEngine, gRPC aio, batch-1 requests of the bundled "
            f"photos, top-3 classification asked) in {plan.load_processes} processes, one gRPC "
            f"connection each, windows merged, "
            f"{'raw pixels (scaling none)' if config.input_dtype == 'uint8' else 'inception scaling'}; "
            f"model: {pool.model_description}"
        )
        scratch = Path(tempfile.mkdtemp(prefix="flowerdemo-pa-"))
        try:
            point_s: list[float] = []
            for concurrency in plan.concurrencies_for(config):
                estimate = (sum(point_s) / len(point_s)) if point_s else plan.point_estimate_s()
                if deadline.left() - TEARDOWN_RESERVE_S < estimate * 0.8:
                    result.message += f" cut short before c={concurrency} (time budget)."
                    log(f"{config.name}: no time left for c={concurrency}: stopping the sweep")
                    break
                point = PointResult(concurrency)
                began = time.monotonic()
                step = pool.measure(concurrency, sweep, deadline=deadline.at - TEARDOWN_RESERVE_S)
                row = perf_analyzer_row(concurrency, step_snapshot(step))
                ours_rows.append(row)
                point.ours = {
                    "images_per_s": step.images_per_s,
                    "p50_ms": step.latency.p50 * 1000,
                    "p90_ms": step.latency.p90 * 1000,
                    "p99_ms": step.latency.p99 * 1000,
                    "answered": step.latency.count,
                    "failed": step.failed,
                    "windows": step.windows,
                    "stable": step.stable,
                }
                write_perf_analyzer_csv(folder / "ours.csv", ours_rows)
                if (
                    plan.perf_analyzer
                    and deadline.left() - TEARDOWN_RESERVE_S > plan.window_s * 4 + 3
                ):
                    report = scratch / f"c{concurrency}.csv"
                    command = plan.perf_command(url, concurrency, str(report))
                    result.commands.setdefault(
                        "perf_analyzer",
                        " ".join(["perf_analyzer", *command[1:-2]]).replace(
                            f"{concurrency}:{concurrency}", "C:C"
                        ),
                    )
                    env = dict(os.environ)
                    env["LD_LIBRARY_PATH"] = os.pathsep.join(
                        p for p in (plan.perf_libs, env.get("LD_LIBRARY_PATH", "")) if p
                    )
                    for key in (
                        "CUDA_MPS_PIPE_DIRECTORY",
                        "CUDA_MPS_LOG_DIRECTORY",
                        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
                    ):
                        env.pop(key, None)
                    timeout = max(
                        5.0,
                        min(
                            plan.window_s * (plan.max_windows + 2) * 3 + 20,
                            deadline.left() - TEARDOWN_RESERVE_S,
                        ),
                    )
                    try:
                        completed = subprocess.run(
                            command,
                            env=env,
                            capture_output=True,
                            text=True,
                            timeout=timeout,
                            check=False,
                        )
                        rows = read_perf_csv(report) if report.is_file() else []
                        if completed.returncode == 0 and rows:
                            point.perf_analyzer = {**rows[0], "stable": "yes"}
                        else:
                            output = completed.stdout + completed.stderr
                            point.perf_analyzer = unstable_perf_row(
                                output, concurrency, plan.stable_windows
                            )
                            reason = next(
                                (line for line in output.splitlines() if "Failed" in line),
                                output.strip()[-300:],
                            )
                            point.perf_analyzer_error = (
                                f"exit {completed.returncode}: {reason.strip()}"
                                + (
                                    "; mean of its last windows shown"
                                    if point.perf_analyzer
                                    else ""
                                )
                            )
                        if point.perf_analyzer:
                            theirs_rows.append(point.perf_analyzer)
                    except subprocess.TimeoutExpired:
                        point.perf_analyzer_error = f"no result within {timeout:.0f} s"
                    if theirs_rows:
                        with (folder / "perf_analyzer.csv").open(
                            "w", newline="", encoding="utf-8"
                        ) as handle:
                            writer = csv.DictWriter(
                                handle, fieldnames=PERF_COLUMNS, extrasaction="ignore"
                            )
                            writer.writeheader()
                            writer.writerows(theirs_rows)
                elif plan.perf_analyzer:
                    point.perf_analyzer_error = "skipped: time budget"
                point.seconds = round(time.monotonic() - began, 1)
                point_s.append(point.seconds)
                result.points.append(point)
                pa = point.perf_analyzer
                log(
                    f"{config.name} c={concurrency:>3}: ours {step.images_per_s:8.1f} img/s p50 {step.latency.p50 * 1000:7.2f} "
                    f"p90 {step.latency.p90 * 1000:7.2f} ms ({step.windows} windows{'' if step.stable else ', not stable'}, "
                    f"{step.failed} failed) | perf_analyzer "
                    + (
                        f"{float(pa['Inferences/Second']):8.1f} img/s p90 {float(pa['p90 latency']) / 1000:7.2f} ms"
                        if pa
                        else (point.perf_analyzer_error[:120] or "off")
                    )
                    + f" [{point.seconds:.0f} s]"
                )
                save_meta(folder, result)
            result.status = (
                "done"
                if result.points and not result.message
                else ("partial" if result.points else "no points")
            )
        finally:
            pool.close()
            shutil.rmtree(scratch, ignore_errors=True)
    except Exception as error:  # one configuration's failure must not lose the others
        result.status, result.message = "error", f"{type(error).__name__}: {error}"
        log(f"{config.name}: {result.message}")
    finally:
        for index in range(config.tritons):
            path = stack.instance_log(index)
            if path is not None and path.exists():
                text = path.read_text(errors="replace")
                (folder / f"tritonserver-{index}.log").write_text(text[-200_000:])
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
        save_meta(folder, result)
        log(f"{config.name}: {result.status} {result.message}".rstrip())
    return result


def save_meta(folder: Path, result: ConfigResult) -> None:
    (folder / "meta.json").write_text(json.dumps(asdict(result), indent=1, default=str) + "\n")


# ----- the report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Curve:
    concurrency: list[int]
    images_per_s: list[float]
    p50_ms: list[float]
    p90_ms: list[float]


def curves(meta: dict[str, Any]) -> tuple[Curve, Curve]:
    ours = Curve([], [], [], [])
    theirs = Curve([], [], [], [])
    for point in meta.get("points", []):
        if point.get("ours"):
            ours.concurrency.append(point["concurrency"])
            ours.images_per_s.append(point["ours"]["images_per_s"])
            ours.p50_ms.append(point["ours"]["p50_ms"])
            ours.p90_ms.append(point["ours"]["p90_ms"])
        row = point.get("perf_analyzer")
        if row:
            theirs.concurrency.append(int(row["Concurrency"]))
            theirs.images_per_s.append(float(row["Inferences/Second"]))
            theirs.p50_ms.append(_number(row.get("p50 latency")) / 1000)
            theirs.p90_ms.append(_number(row.get("p90 latency")) / 1000)
    return ours, theirs


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def budget_figures(curve: Curve, budget_ms: float) -> tuple[int | None, float | None]:
    """(highest concurrency whose p90 is within the budget, best throughput among those points)."""
    within = [
        (c, t)
        for c, t, p in zip(curve.concurrency, curve.images_per_s, curve.p90_ms, strict=True)
        if not math.isnan(p) and p <= budget_ms
    ]
    if not within:
        return None, None
    return max(c for c, _ in within), max(t for _, t in within)


def largest_fall(curve: Curve) -> tuple[float, int | None]:
    """The largest fall of throughput below the best seen at lower concurrency: (fraction, c)."""
    best, worst, where = 0.0, 0.0, None
    for c, t in zip(curve.concurrency, curve.images_per_s, strict=True):
        if best > 0 and (best - t) / best > worst:
            worst, where = (best - t) / best, c
        best = max(best, t)
    return worst, where


def _within(concurrency: int | None, curve: Curve) -> str:
    """The highest concurrency within the budget; says so when the sweep ended before the
    budget was reached (then the throughput at budget is a lower bound)."""
    if concurrency is None:
        return "none"
    if curve.concurrency and concurrency == max(curve.concurrency):
        return f"{concurrency} (top of the sweep)"
    return str(concurrency)


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def summary_markdown(
    metas: dict[str, dict[str, Any]], plan_text: str, machine: str, budget_ms: float
) -> str:
    lines = ["# ResNet-50 FP16 on one GPU: Triton instances behind Envoy", ""]
    lines += [
        "Several Triton instances on one GPU here are **NOT MIG**: they are processes sharing one "
        "GPU through CUDA MPS (each limited to a share of the SMs), the stand-in for MIG slices. "
        "Every chart says so.",
        "",
        f"Latency budget: p90 <= {budget_ms:g} ms, measured end to end through Envoy "
        "(except the configurations marked 'direct, no Envoy: diagnostic', which talk to "
        "Triton's own gRPC port to show what Envoy costs). 'UINT8 input': the model takes raw "
        "pixels (1 byte each instead of FP32's 4) and scales them on the GPU.",
        "",
    ]
    weights = {m.get("weights", "") for m in metas.values()}
    lines.append(
        f"Weights: {', '.join(sorted(w for w in weights if w)) or 'random'} (timing does not depend on them)."
    )
    loads = {m.get("load_description", "") for m in metas.values() if m.get("load_description")}
    for text in sorted(loads):
        lines.append(f"Load: {text}.")
    lines.append("")
    lines += ["## Per configuration (our engine; perf_analyzer in brackets)", ""]
    lines.append(
        "| configuration | status | stack ready | peak img/s | highest c with p90 <= budget | img/s at budget | scaling vs 1 MPS instance | largest fall | p50 at c=1 (ms) |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")

    def variant_of(name: str) -> str:
        """'-u8', '-direct'...: what follows the base name (mps7-u8 scales against mps1-u8)."""
        match = re.fullmatch(r"(?:whole|mps\d+|cpu)(?:x\d+)?(.*)", name)
        return match.group(1) if match else ""

    base_budgets = {
        variant_of(name): budget_figures(curves(metas[name])[0], budget_ms)[1]
        for name in metas
        if re.fullmatch(r"mps1(-.*)?", name)
    }
    figures: dict[str, dict[str, Any]] = {}
    for name, meta in metas.items():
        ours, theirs = curves(meta)
        c_ok, thr_ok = budget_figures(ours, budget_ms)
        pc_ok, pthr_ok = budget_figures(theirs, budget_ms)
        fall, fall_at = largest_fall(ours)
        peak = max(ours.images_per_s) if ours.images_per_s else None
        ppeak = max(theirs.images_per_s) if theirs.images_per_s else None
        p50_c1 = ours.p50_ms[ours.concurrency.index(1)] if 1 in ours.concurrency else None
        base_budget = base_budgets.get(variant_of(name))
        scaling = (
            thr_ok / base_budget if (thr_ok and base_budget and meta["config"]["mps"]) else None
        )
        figures[name] = {
            "peak": peak,
            "thr_ok": thr_ok,
            "fall": fall,
            "p50_c1": p50_c1,
            "scaling": scaling,
            "points": len(ours.concurrency),
        }
        lines.append(
            f"| {meta['label']} (`{name}`) | {meta['status']} | {_fmt(meta.get('load_s'), 1)} s | "
            f"{_fmt(peak)} [{_fmt(ppeak)}] | {_within(c_ok, ours)} [{_within(pc_ok, theirs)}] | "
            f"{_fmt(thr_ok)} [{_fmt(pthr_ok)}] | {_fmt(scaling, 2) + 'x' if scaling else 'n/a'} | "
            f"{fall * 100:.1f}%{f' at c={fall_at}' if fall_at else ''} | {_fmt(p50_c1, 2)} |"
        )
    lines += ["", "## Targets", ""]
    lines.append("| target | measured | met |")
    lines.append("|---|---|---|")

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("yes" if ok else "**no**")

    # The whole-GPU targets for `whole` and each of its variants (`whole-u8`, ...); the first
    # whole-GPU configuration if none of those ran.
    wholes = [n for n in metas if re.fullmatch(r"whole(-.*)?", n)]
    if not wholes:
        wholes = [n for n in metas if n.startswith("whole")][:1]
    for whole in wholes:
        w = figures[whole]
        tag = f" (`{whole}`)" if whole != "whole" else ""
        ok = None if w["p50_c1"] is None else w["p50_c1"] <= TARGETS["p50_c1_ms"]
        lines.append(
            f"| whole GPU{tag}: p50 at concurrency 1 <= {TARGETS['p50_c1_ms']} ms | {_fmt(w['p50_c1'], 2)} ms | {verdict(ok)} |"
        )
        ok = None if w["peak"] is None else w["peak"] >= TARGETS["peak_images_per_s"]
        lines.append(
            f"| whole GPU{tag}: peak >= {TARGETS['peak_images_per_s']:,.0f} img/s | {_fmt(w['peak'])} img/s | {verdict(ok)} |"
        )
    for name in (n for n in figures if re.fullmatch(r"mps7(-.*)?", n)):
        s = figures[name]["scaling"]
        tag = f" (`{name}` vs `mps1{variant_of(name)}`)" if name != "mps7" else ""
        lines.append(
            f"| 7 vs 1 MPS instances{tag} at p90 <= {budget_ms:g} ms: >= {TARGETS['scaling_7_vs_1']:g}x | {_fmt(s, 2) + 'x' if s else 'n/a'} | {verdict(None if s is None else s >= TARGETS['scaling_7_vs_1'])} |"
        )
    for name, f in figures.items():
        complete = f["points"] > 0
        lines.append(
            f"| no collapse up to the highest concurrency run ({name}) | largest fall {f['fall'] * 100:.1f}% (a fall beyond {COLLAPSE_TOLERANCE * 100:.0f}% counts) | "
            f"{verdict(f['fall'] <= COLLAPSE_TOLERANCE if complete else None)} |"
        )
    for name, meta in metas.items():
        lines += ["", f"## {meta['label']} (`{name}`)", "", meta["title"], ""]
        if meta.get("target"):
            lines += [f"Load sent to: {meta['target']}.", ""]
        if meta.get("message"):
            lines += [f"Note: {meta['message'].strip()}", ""]
        lines.append(
            "| c | ours img/s | perf_analyzer img/s | ours / perf_analyzer | ours p50 ms | PA p50 ms | ours p90 ms | PA p90 ms | ours p99 ms | failed | windows |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for point in meta.get("points", []):
            o, p = point.get("ours") or {}, point.get("perf_analyzer") or {}
            pa_thr = float(p["Inferences/Second"]) if p else None
            ratio = o.get("images_per_s", 0) / pa_thr if (o and pa_thr) else None
            lines.append(
                f"| {point['concurrency']} | {_fmt(o.get('images_per_s'), 1)} | {_fmt(pa_thr, 1)} | {_fmt(ratio, 3)} | "
                f"{_fmt(o.get('p50_ms'), 2)} | {_fmt(_number(p.get('p50 latency')) / 1000 if p else None, 2)} | "
                f"{_fmt(o.get('p90_ms'), 2)} | {_fmt(_number(p.get('p90 latency')) / 1000 if p else None, 2)}{'' if p.get('stable', 'yes') == 'yes' else ' (not stable)'} | "
                f"{_fmt(o.get('p99_ms'), 2)} | {o.get('failed', 'n/a')} | {o.get('windows', 'n/a')}{'' if o.get('stable', True) else ' (not stable)'} |"
            )
            if point.get("perf_analyzer_error"):
                lines.append(
                    f"|  | perf_analyzer: {point['perf_analyzer_error'][:200].replace('|', '/')} |||||||||"
                )
        if meta.get("model_init"):
            lines += ["", "Model instances at load:", ""] + [
                f"    {line.strip()[-200:]}" for line in meta["model_init"]
            ]
        commands = meta.get("commands", {})
        if commands:
            lines += ["", "Exact commands:", ""]
            for entry in commands.get("tritonserver", []):
                if entry.get("argv"):
                    env = " ".join(f"{k}={v}" for k, v in entry.get("env", {}).items())
                    lines.append(f"    {env} {' '.join(entry['argv'])}")
            if commands.get("envoy", {}).get("argv"):
                lines.append(f"    {' '.join(commands['envoy']['argv'])}")
            if commands.get("perf_analyzer"):
                lines.append(f"    {commands['perf_analyzer']}   (C = each concurrency)")
        if meta.get("mps_servers"):
            lines += ["", f"MPS servers (get_server_list): {meta['mps_servers'].strip()}"]
        snapshot = meta.get("gpu_snapshot", "")
        if "Processes" in snapshot:
            # nvidia-smi's process table once the stack was ready: type M+C = an MPS client.
            table = snapshot[snapshot.index("Processes") :].splitlines()[:30]
            lines += ["", "GPU processes once ready (nvidia-smi):", ""] + [
                f"    {t}" for t in table
            ]
    lines += [
        "",
        "## Plan",
        "",
        "```",
        plan_text.strip(),
        "```",
        "",
        "## Machine",
        "",
        "```",
        machine.strip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def plot_all(
    metas: dict[str, dict[str, Any]], out: Path, budget_ms: float, plot_python: str | None
) -> list[str]:
    """Charts per configuration (ours and perf_analyzer) and all configurations together."""
    jobs = []
    for name, meta in metas.items():
        ours, theirs = curves(meta)
        series = {"our engine": ours, "perf_analyzer": theirs}
        jobs.append(
            {
                "series": {
                    k: [
                        [c, t, p]
                        for c, t, p in zip(v.concurrency, v.images_per_s, v.p90_ms, strict=True)
                    ]
                    for k, v in series.items()
                    if v.concurrency
                },
                "out_dir": str(out / name),
                "title": meta["title"]
                + f"\nResNet-50 FP16, batch-1 requests through Envoy; {meta.get('weights') or 'random weights'}",
                "prefix": "",
            }
        )
    combined = {}
    for meta in metas.values():
        ours, _ = curves(meta)
        if ours.concurrency:
            combined[meta["label"]] = [
                [c, t, p]
                for c, t, p in zip(ours.concurrency, ours.images_per_s, ours.p90_ms, strict=True)
            ]
    gpu = next((m["title"].split(",")[0].split(":")[0] for m in metas.values()), "GPU")
    jobs.append(
        {
            "series": combined,
            "out_dir": str(out),
            "prefix": "",
            "title": f"{gpu}: ResNet-50 FP16, our engine through Envoy\n"
            "NOT MIG: the MPS configurations are processes sharing one GPU via MPS",
        }
    )
    jobs = [j for j in jobs if j["series"]]
    job_file = out / "plot-jobs.json"
    job_file.write_text(json.dumps({"budget_ms": budget_ms, "jobs": jobs}))
    # In a child process: a matplotlib that does not get along with numpy<2 cannot take the
    # benchmark down with it. This python first, then the machine's own.
    problems: list[str] = []
    for python in dict.fromkeys(p for p in (sys.executable, plot_python) if p):
        text = run_text(
            [python, str(Path(__file__).resolve()), "--plot-jobs", str(job_file)], timeout=180
        )
        if "plots: done" in text:
            if python != sys.executable:
                problems = [f"drawn with {python} (matplotlib not usable beside numpy<2 here)"]
            break
        problems.append(f"drawing with {python} failed: {text[-400:]}")
    job_file.unlink(missing_ok=True)
    return problems


def run_plot_jobs(job_file: Path) -> None:
    from flowerdemo.plots import SweepPoint, plot_sweeps

    data = json.loads(job_file.read_text())
    for job in data["jobs"]:
        series = {
            label: [SweepPoint(int(c), float(t), float(p)) for c, t, p in points]
            for label, points in job["series"].items()
        }
        values = [p.concurrency for points in series.values() for p in points]
        plot_sweeps(
            series,
            Path(job["out_dir"]),
            budget_ms=data["budget_ms"],
            title=job["title"],
            prefix=job["prefix"],
            log_x=bool(values) and max(values) >= 8 * min(values),
        )


def load_metas(results: Path) -> dict[str, dict[str, Any]]:
    """Every configuration's meta.json: whole GPU first, then MPS by instance count."""
    found = {p.parent.name: json.loads(p.read_text()) for p in sorted(results.glob("*/meta.json"))}

    def key(name: str) -> tuple[int, int, str]:
        if name.startswith("whole"):
            return (0, 0, name)
        match = re.match(r"mps(\d+)", name)
        return (1, int(match.group(1)), name) if match else (2, 0, name)

    return {name: found[name] for name in sorted(found, key=key)}


def write_outputs(
    results: Path, out: Path, plan_text: str, budget_ms: float, plot_python: str | None
) -> None:
    """summary.md, charts and results.tar.gz from everything in `results` (earlier calls too)."""
    metas = load_metas(results)
    if not metas:
        return
    machine = (results / "machine.txt").read_text() if (results / "machine.txt").exists() else ""
    problems = plot_all(metas, results, budget_ms, plot_python)
    text = summary_markdown(metas, plan_text, machine, budget_ms)
    if problems:
        text += "\n" + "\n".join(f"Charts: {p}" for p in problems) + "\n"
    (results / "summary.md").write_text(text)
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "results.tar.gz.tmp", "w:gz") as archive:
        archive.add(results, arcname="gpu-results")
    (out / "results.tar.gz.tmp").replace(out / "results.tar.gz")
    for name in ("summary.md", "throughput.png", "latency_p90.png", "machine.txt"):
        if (results / name).exists():
            shutil.copyfile(results / name, out / name)


# ----- main ----------------------------------------------------------------------------------


def cpu_configs(text: str | None) -> str:
    """--cpu runs only CPU configurations: 'cpu' unless --configs names cpu variants."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    if names and all(n.startswith("cpu") for n in names):
        return ",".join(names)
    return "cpu"


def build_plan(args: argparse.Namespace, home: Path) -> Plan:
    from flowerdemo.core.sweep import parse_concurrency_range

    configs = parse_configs(
        cpu_configs(args.configs) if args.cpu else (args.configs or "whole,mps1,mps7"),
        mps_percentage=args.mps_percentage,
        whole_instances=args.whole_model_instances,
        mps_instances=args.mps_model_instances,
        whole_copy_threads=args.whole_copy_threads,
        mps_copy_threads=args.mps_copy_threads,
    )
    perf = args.perf_analyzer
    perf_libs = args.perf_libs
    if perf is None:
        staged = home / "perf" / "perf_analyzer"
        local = ROOT / ".venv-perf" / "bin" / "perf_analyzer"
        if staged.exists():
            perf, perf_libs = str(staged), perf_libs or str(home / "perf" / "lib")
        elif local.exists():
            perf = str(local)
            libs = sorted(
                (ROOT / ".venv-perf").glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib")
            )
            perf_libs = perf_libs or (str(libs[0]) if libs else "")
    if args.no_perf_analyzer:
        perf = None
    weights = args.weights
    if weights == "auto":
        staged_weights = (
            sorted((home / "weights").glob("*.pt")) if (home / "weights").is_dir() else []
        )
        parts = sorted((home / "weights").glob("*.pt.part0")) if (home / "weights").is_dir() else []
        weights = (
            str(staged_weights[0])
            if staged_weights
            else (str(parts[0])[: -len(".part0")] if parts else "")
        )
    base_port, listen, http_listen, admin = (
        args.base_port,
        args.listen,
        args.http_listen,
        args.admin_listen,
    )
    if args.cpu and args.base_port == 8000:
        first = free_port_block(3 + 3)
        listen, http_listen, admin = (f"127.0.0.1:{first + k}" for k in range(3))
        base_port = first + 3
    concurrency = args.concurrency or ("1,2" if args.cpu else "1,2,4,8,16,32,64,128,256")
    direct = args.direct_concurrency or ("1,2" if args.cpu else "1,8,64,256")
    return Plan(
        configs=tuple(configs),
        concurrencies=parse_concurrency_range(concurrency),
        direct_concurrencies=parse_concurrency_range(direct),
        window_s=args.window,
        stable_windows=args.stable_windows,
        max_windows=args.max_windows,
        tolerance=args.tolerance,
        load_processes=args.load_processes or (2 if args.cpu else 8),
        envoy_workers=args.envoy_workers or (1 if args.cpu else 8),
        base_port=base_port,
        listen=listen,
        http_listen=http_listen,
        admin_listen=admin,
        perf_analyzer=perf,
        perf_libs=perf_libs or "",
        weights=weights or "",
        buckets=tuple(int(b) for b in args.buckets.split(",")),
        max_queue_delay_us=args.max_queue_delay_us,
        budget_ms=args.budget_ms,
        home=str(home),
    )


def describe_plan(plan: Plan, deadline: Deadline | None = None) -> str:
    lines = ["configurations, in order:"]
    for config in plan.configs:
        lines.append(
            f"  {config.name:<8} {config.label}: {config.tritons} Triton(s) x {config.model_instances} model instance(s), "
            f"{'CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=' + str(config.mps_percentage) if config.mps else 'no MPS'}, "
            f"{config.kind}, copy threads {config.copy_threads}, {config.input_dtype.upper()} input, "
            + (
                "direct to Triton's gRPC port (no Envoy: diagnostic)"
                if config.direct
                else "through Envoy"
            )
            + f", c = {','.join(str(c) for c in plan.concurrencies_for(config))}; "
            f"estimated {plan.typical_s(config):.0f} s (first round's H100 timings), "
            f"at most {plan.estimate_s(config):.0f} s"
        )
    lines.append(
        f"  in all: estimated {sum(plan.typical_s(c) for c in plan.configs):.0f} s, "
        f"at most {sum(plan.estimate_s(c) for c in plan.configs):.0f} s"
    )
    lines += [
        f"concurrency: {','.join(str(c) for c in plan.concurrencies)}; windows of {plan.window_s:g} s, "
        f"stable when the last {plan.stable_windows} agree within {plan.tolerance:.0%} (at most {plan.max_windows})",
        f"model: ResNet-50 FP16 ({plan.weights or 'random weights, seed 0'}), CUDA graphs for buckets {list(plan.buckets)}, "
        f"preferred_batch_size = buckets, max_batch_size {max(plan.buckets)}, max_queue_delay {plan.max_queue_delay_us} us",
        f"load: our engine in {plan.load_processes} processes through Envoy {plan.listen} ({plan.envoy_workers} Envoy workers); Tritons from port {plan.base_port}",
        "perf_analyzer: "
        + (
            " ".join(
                ["perf_analyzer", *plan.perf_command(plan.listen, 0, "REPORT.csv")[1:-2]]
            ).replace("0:0", "C:C")
            + f"  (LD_LIBRARY_PATH={plan.perf_libs})"
            if plan.perf_analyzer
            else "off"
        ),
        f"budget: p90 <= {plan.budget_ms:g} ms",
    ]
    if deadline is not None:
        lines.append(
            f"time left now: {deadline.left():.0f} s (teardown reserve {TEARDOWN_RESERVE_S:.0f} s)"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT", "gpu-bench-out")),
        help="where the result files go (default $OUT)",
    )
    parser.add_argument(
        "--configs", help="comma-separated (default whole,mps1,mps7; --cpu: cpu or cpu variants)"
    )
    parser.add_argument("--concurrency", help="list or range (default 1,2,4,...,256; --cpu: 1,2)")
    parser.add_argument(
        "--direct-concurrency",
        help="for the -direct (diagnostic) configurations (default 1,8,64,256; --cpu: 1,2)",
    )
    parser.add_argument("--window", type=float, default=1.0, help="seconds per measurement window")
    parser.add_argument("--stable-windows", type=int, default=3)
    parser.add_argument("--max-windows", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument(
        "--load-processes", type=int, help="processes driving our engine (default 8; --cpu 2)"
    )
    parser.add_argument(
        "--envoy-workers", type=int, help="Envoy worker threads (default 8; --cpu 1)"
    )
    parser.add_argument("--mps-percentage", type=int, default=14)
    parser.add_argument("--whole-model-instances", type=int, default=2)
    parser.add_argument("--mps-model-instances", type=int, default=1)
    parser.add_argument("--whole-copy-threads", type=int, default=4)
    parser.add_argument("--mps-copy-threads", type=int, default=2)
    parser.add_argument(
        "--buckets", default=",".join(str(b) for b in resnet50_model.DEFAULT_BUCKETS)
    )
    parser.add_argument("--max-queue-delay-us", type=int, default=100)
    parser.add_argument("--budget-ms", type=float, default=BUDGET_MS)
    parser.add_argument(
        "--weights",
        default="auto",
        help="state dict for the model ('auto': HOME/weights if staged, else random)",
    )
    parser.add_argument(
        "--perf-analyzer", help="perf_analyzer binary (default: HOME/perf, else .venv-perf)"
    )
    parser.add_argument("--perf-libs", help="LD_LIBRARY_PATH for perf_analyzer")
    parser.add_argument("--no-perf-analyzer", action="store_true")
    parser.add_argument("--base-port", type=int, default=8000)
    parser.add_argument("--listen", default="127.0.0.1:50050")
    parser.add_argument("--http-listen", default="127.0.0.1:50051")
    parser.add_argument("--admin-listen", default="127.0.0.1:50052")
    parser.add_argument(
        "--home", type=Path, default=Path(os.environ.get("FLOWERDEMO_GPU_HOME", DEFAULT_HOME))
    )
    parser.add_argument(
        "--state-dir", type=Path, help="results kept across device calls (default HOME/results)"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="forget results of earlier calls in --state-dir"
    )
    parser.add_argument(
        "--plot-python",
        help="python with matplotlib, used if ours cannot draw (default: the machine's)",
    )
    parser.add_argument(
        "--deadline-epoch", type=float, help="stop everything by this time (seconds since 1970)"
    )
    parser.add_argument(
        "--budget-s", type=float, help="or: stop within this many seconds (default 540)"
    )
    parser.add_argument(
        "--cpu", action="store_true", help="tiny run on the CPU: checks the whole driver path here"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan and the commands, run nothing"
    )
    parser.add_argument(
        "--summarize",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="merge results.tar.gz of these output folders into --out (no run)",
    )
    parser.add_argument(
        "--mps-check",
        action="store_true",
        help="start MPS, time the model at --mps-percentage without Triton, stop MPS",
    )
    parser.add_argument("--plot-jobs", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def summarize_folders(folders: Sequence[Path], out: Path, budget_ms: float) -> int:
    """Merge results brought back from several device calls (later calls win) into `out`."""
    merged = Path(tempfile.mkdtemp(prefix="flowerdemo-gpu-merge-"))
    try:
        plans = []
        for folder in folders:
            if folder.is_dir() and not (folder / "results.tar.gz").exists():
                # A folder written by an earlier --summarize (e.g. the committed results):
                # its configurations as they are, its plan from its summary.md.
                found = [c for c in sorted(folder.iterdir()) if (c / "meta.json").is_file()]
                if not found:
                    raise SystemExit(f"{folder}: no results.tar.gz and no */meta.json")
                for config in found:
                    shutil.rmtree(merged / config.name, ignore_errors=True)
                    shutil.copytree(config, merged / config.name)
                if (folder / "machine.txt").exists():
                    shutil.copyfile(folder / "machine.txt", merged / "machine.txt")
                summary = folder / "summary.md"
                text = summary.read_text() if summary.exists() else ""
                plan = re.search(r"## Plan\n\n```\n(.*?)\n```", text, re.S)
                if plan:
                    plans.append(plan.group(1))
                continue
            archive = folder / "results.tar.gz" if folder.is_dir() else folder
            with tarfile.open(archive) as tar, tempfile.TemporaryDirectory() as scratch:
                if sys.version_info >= (3, 12):
                    tar.extractall(scratch, filter="data")
                else:
                    tar.extractall(scratch)
                source = Path(scratch) / "gpu-results"
                for config in source.iterdir():
                    if config.is_dir() and (config / "meta.json").exists():
                        shutil.rmtree(merged / config.name, ignore_errors=True)
                        shutil.copytree(config, merged / config.name)
                if (source / "machine.txt").exists():
                    shutil.copyfile(source / "machine.txt", merged / "machine.txt")
                if (source / "plan.txt").exists():
                    plans.append(f"{folder}:\n" + (source / "plan.txt").read_text())
        (merged / "plan.txt").write_text("\n".join(plans))
        write_outputs(merged, out, "\n".join(plans), budget_ms, None)
        for name in ("throughput.png", "latency_p90.png"):
            if (merged / name).exists():
                shutil.copyfile(merged / name, out / name)
        for config in merged.iterdir():
            if config.is_dir():
                target = out / config.name
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(config, target, ignore=shutil.ignore_patterns("tritonserver-*.log"))
        (out / "results.tar.gz").unlink(missing_ok=True)
        print(f"summary: {out / 'summary.md'}")
    finally:
        shutil.rmtree(merged, ignore_errors=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot_jobs:
        run_plot_jobs(args.plot_jobs)
        print("plots: done")
        return 0
    if args.summarize:
        return summarize_folders(args.summarize, args.out, args.budget_ms)
    if args.mps_check:
        return mps_check(args.mps_percentage)
    home: Path = args.home
    if not args.dry_run and not args.cpu:
        maybe_reexec(home)
    if (home / "bin").is_dir():
        # The carried envoy; LocalStack looks for it on PATH.
        os.environ["PATH"] = os.pathsep.join([str(home / "bin"), os.environ.get("PATH", "")])
    deadline = Deadline.from_args(args.deadline_epoch, args.budget_s)
    plan = build_plan(args, home)
    plan_text = describe_plan(plan, deadline)
    print(plan_text, flush=True)
    if args.dry_run:
        print(
            f"results: {args.out} ({', '.join(OUT_FILES)}); kept across calls in {args.state_dir or home / 'results'}"
        )
        return 0
    if not plan.perf_analyzer:
        log("perf_analyzer: not found or off; only our engine will be measured")
    if args.cpu:
        try:
            import torch  # noqa: F401  (Triton's stub runs the python beside this one)
        except ImportError:
            print(
                "run_gpu_bench --cpu: this python has no torch, but Triton's stub runs the python3 "
                "beside it: run it with a venv made by stage.sh (see README.md)",
                file=sys.stderr,
            )
            return 2

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    results: Path = args.state_dir or (
        Path(tempfile.mkdtemp(prefix="flowerdemo-cpu-check-")) if args.cpu else home / "results"
    )
    if args.fresh:
        shutil.rmtree(results, ignore_errors=True)
    results.mkdir(parents=True, exist_ok=True)
    # Each device call's plan, kept with the results that call left (--fresh starts over).
    earlier = (results / "plan.txt").read_text() if (results / "plan.txt").exists() else ""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    plan_text = f"{earlier}run of {stamp}:\n{plan_text}\n"
    (results / "plan.txt").write_text(plan_text)
    plot_python = args.plot_python or (
        (home / "base_python.txt").read_text().strip()
        if (home / "base_python.txt").exists()
        else None
    )
    gpu = "CPU" if args.cpu else gpu_name()
    (results / "machine.txt").write_text(machine_info(home, plan))
    mps = Mps(Path(tempfile.gettempdir()) / "flowerdemo-mps")
    failures = 0
    try:
        for config in plan.configs:
            left = deadline.left() - TEARDOWN_RESERVE_S
            need = Plan.load_estimate_s(config) + plan.point_estimate_s() * min(
                3, len(plan.concurrencies_for(config))
            )
            if left < need:
                log(
                    f"{config.name}: skipped, {left:.0f} s left and it needs about {need:.0f} s for three points"
                )
                continue
            if config.mps and not mps.running:
                try:
                    mps.start()
                except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
                    log(f"{config.name}: {error}")
                    failures += 1
                    failed = ConfigResult(
                        asdict(config), config.label, config.title(gpu), "MPS failed", str(error)
                    )
                    (results / config.name).mkdir(parents=True, exist_ok=True)
                    save_meta(results / config.name, failed)
                    continue
            if not config.mps and mps.running:
                mps.stop()
            result = run_config(config, plan, results, deadline, mps, gpu)
            failures += result.status not in ("done", "partial")
            write_outputs(results, args.out, plan_text, plan.budget_ms, plot_python)
    finally:
        mps.stop()
        write_outputs(results, args.out, plan_text, plan.budget_ms, plot_python)
        log(
            f"results in {args.out}: {', '.join(sorted(p.name for p in args.out.iterdir())) if args.out.exists() else 'none'}"
        )
        if args.cpu and args.state_dir is None:
            shutil.rmtree(results, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
