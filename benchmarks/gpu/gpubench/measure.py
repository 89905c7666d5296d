"""One configuration end to end: the stack, our engine's sweep from several processes,
perf_analyzer at the same points, CSVs in perf_analyzer's layout and meta.json."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import resnet50_model

from gpubench.configs import MODEL, TEARDOWN_RESERVE_S, Config, Plan
from gpubench.machine import Deadline, environment, log, proc_command, run_text
from gpubench.mps import Mps

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


def perf_analyzer_point(
    plan: Plan,
    url: str,
    concurrency: int,
    scratch: Path,
    time_left_s: float,
    batch: int = 1,
    model: str = MODEL,
) -> tuple[str, dict[str, Any] | None, str]:
    """perf_analyzer at one concurrency: (its command with C for the concurrency, its CSV row
    or the mean of its last windows when it found no stable measurement, what went wrong)."""
    report = scratch / f"c{concurrency}-b{batch}.csv"
    command = plan.perf_command(url, concurrency, str(report), batch, model)
    text = " ".join(["perf_analyzer", *command[1:-2]]).replace(
        f"{concurrency}:{concurrency}", "C:C"
    )
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (plan.perf_libs, env.get("LD_LIBRARY_PATH", "")) if p
    )
    for key in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"):
        env.pop(key, None)
    env.pop("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", None)
    timeout = max(5.0, min(plan.window_s * (plan.max_windows + 2) * 3 + 20, time_left_s))
    try:
        completed = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return text, None, f"no result within {timeout:.0f} s"
    rows = read_perf_csv(report) if report.is_file() else []
    if completed.returncode == 0 and rows:
        return text, {**rows[0], "stable": "yes"}, ""
    output = completed.stdout + completed.stderr
    row = unstable_perf_row(output, concurrency, plan.stable_windows)
    reason = next((line for line in output.splitlines() if "Failed" in line), output.strip()[-300:])
    error = f"exit {completed.returncode}: {reason.strip()}" + (
        "; mean of its last windows shown" if row else ""
    )
    return text, row, error


def stack_parts(
    config: Config,
    plan: Plan,
    work: Path,
    deadline: Deadline,
    mps: Mps | None,
    timing_dir: str = "",
) -> tuple[Path, Any, dict[str, str]]:
    """The ResNet-50 repository written under `work`, the stack's settings, and the variables
    its processes need (MPS). `timing_dir`: the stub writes its execute timing there."""
    from flowerdemo.resources import labels_file
    from flowerdemo.serving.stack import StackSettings

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
        timing_dir=timing_dir,
    )
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
    return repository, settings, variables


def run_config(
    config: Config, plan: Plan, results: Path, deadline: Deadline, mps: Mps | None, gpu: str
) -> ConfigResult:
    from multiload import LoadError, LoadPool, LoadSettings

    from flowerdemo.bench import step_snapshot
    from flowerdemo.core.stats import perf_analyzer_row, write_perf_analyzer_csv
    from flowerdemo.core.sweep import SweepSettings
    from flowerdemo.serving.stack import LocalStack, StackError

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
    repository, settings, variables = stack_parts(config, plan, work, deadline, mps)
    shutil.copyfile(repository / MODEL / "config.pbtxt", folder / "config.pbtxt")
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
                    command_text, point.perf_analyzer, point.perf_analyzer_error = (
                        perf_analyzer_point(
                            plan, url, concurrency, scratch, deadline.left() - TEARDOWN_RESERVE_S
                        )
                    )
                    result.commands.setdefault("perf_analyzer", command_text)
                    if point.perf_analyzer:
                        theirs_rows.append(point.perf_analyzer)
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


# ----- every configuration of a plan --------------------------------------------------------


def run_plan(
    plan: Plan, results: Path, deadline: Deadline, gpu: str, after_each: Callable[[], None]
) -> int:
    """Every configuration of the plan in turn, within the deadline (one that cannot fit three
    points is skipped); MPS runs only for the MPS configurations. Returns how many failed."""
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
            after_each()
    finally:
        mps.stop()
    return failures
