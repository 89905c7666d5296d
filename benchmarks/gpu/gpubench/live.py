"""The seed's Figure 6 as one live run: Triton instances on one GPU, each a CUDA MPS client at
14% of the SMs (NOT MIG), behind Envoy, while the load's concurrency ramps up; the autoscale
controller (`flowerdemo.core.autoscale`, driven as `flowerdemo --headless --autoscale` drives
it: `flowerdemo.headless.drive_autoscale`) adds and removes instances to hold the p90 within the
budget. The same ramp with autoscale off at a fixed count, for comparison.

The load is our engine in one process, as the headless client runs it. Every 0.5 s the run
records the p90 the controller saw (last 2 s of answers), the ready and target instance counts,
the concurrency and the throughput. Per run: live-MODE.png (flowerdemo.plots.plot_autoscale),
timeline-MODE.csv, probe-MODE.csv (the CPU of each part and the GPU's utilisation, every 2 s),
and live.json with the decisions and the totals. `step_table` / `live_report` read a run back, one
row per step (`run_gpu_bench.py --live-report DIR`).
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from gpubench.configs import MODEL, TEARDOWN_RESERVE_S, Config, Plan
from gpubench.machine import Deadline, log
from gpubench.measure import stack_parts
from gpubench.mps import Mps
from gpubench.probe import DRIVER, GpuSampler, ProcessSample

MPS_PERCENTAGE = 14
PROBE_INTERVAL_S = 2.0
PROBE_COLUMNS = (
    ("client_cores", DRIVER, "cores"),
    ("client_busiest_thread", DRIVER, "busiest_thread"),
    ("envoy_cores", "envoy", "cores"),
    ("tritonserver_cores", "tritonserver", "cores"),
    ("stub_cores", "python stub", "cores"),
)
PROBE_FIELDS = (*(column for column, _, _ in PROBE_COLUMNS), "machine_idle", "gpu_util")
"""A probe row's figures, after its time (`t_s`): the probe CSV's columns, in order."""


def live_config(instances: int) -> Config:
    """The live run's stack: `instances` Tritons, each an MPS client at MPS_PERCENTAGE of the
    SMs with one model instance, one torch thread and UINT8 input (the ceiling's best
    settings for the slices)."""
    return Config(
        f"live-{instances}",
        tritons=instances,
        mps=True,
        model_instances=1,
        copy_threads=1,
        mps_percentage=MPS_PERCENTAGE,
        input_dtype="uint8",
    )


async def probe_timeline(
    stack: Any, started: float, gpu: GpuSampler, rows: list[dict[str, Any]]
) -> None:
    """Until cancelled: every PROBE_INTERVAL_S, the CPU of each part of the path over the last
    interval (the load runs in this process, so "client" is this process), the machine's idle
    share and the GPU's utilisation, so the chart's plateaus can be read against what was busy."""

    def take() -> ProcessSample:
        roots = {state.pid for state in stack.states() if state.pid}
        roots.add(stack.envoy_pid() or 0)
        return ProcessSample.take((), roots)

    before = await asyncio.to_thread(take)
    while True:
        await asyncio.sleep(PROBE_INTERVAL_S)
        after = await asyncio.to_thread(take)
        usage = before.usage_until(after)
        row: dict[str, Any] = {"t_s": round(after.at - started, 2)}
        for column, component, key in PROBE_COLUMNS:
            row[column] = usage["components"].get(component, {}).get(key, 0.0)
        row["machine_idle"] = usage["machine_idle"]
        row["gpu_util"] = gpu.summary(since=before.at).get("gpu_util_mean", "")
        rows.append(row)
        before = after


async def ramp(
    stack: Any,
    model: str,
    scaling: str,
    steps: list[int],
    step_s: float,
    budget_ms: float,
    autoscale: tuple[int, int] | None,
) -> dict[str, Any]:
    from flowerdemo.core.autoscale import AutoscaleController, AutoscalePolicy, ScaleDecision
    from flowerdemo.core.engine import EngineSettings, InferenceEngine
    from flowerdemo.core.images import load_images
    from flowerdemo.core.preprocess import SCALINGS, PreprocessOptions
    from flowerdemo.core.stats import RunStatistics
    from flowerdemo.headless import AUTOSCALE_WINDOW_S, ramp_with_autoscale
    from flowerdemo.plots import AutoscaleSample
    from flowerdemo.resources import sample_images_dir

    photos = [image.image for image in load_images(sample_images_dir()).images]
    engine = InferenceEngine(
        EngineSettings(
            url=stack.grpc_url,
            model_name=model,
            preprocess=PreprocessOptions(scaling=next(s for s in SCALINGS if s == scaling)),
        ),
        photos,
    )
    await engine.connect()
    budget_s = budget_ms / 1000
    statistics = RunStatistics(window_s=AUTOSCALE_WINDOW_S, budget_s=budget_s)
    engine.add_sink(statistics.record)
    controller = (
        AutoscaleController(
            AutoscalePolicy(minimum=autoscale[0], maximum=autoscale[1], budget_s=budget_s)
        )
        if autoscale
        else None
    )
    samples: list[AutoscaleSample] = []
    probes: list[dict[str, Any]] = []
    started = time.monotonic()
    statistics.reset()

    def on_decision(decision: ScaleDecision) -> None:
        log(f"  {decision.at - started:6.1f} s  {decision.reason}")

    def on_step(at: float, concurrency: int) -> None:
        log(f"{at:6.1f} s  concurrency {concurrency}")

    try:
        with GpuSampler(period_s=0.5) as gpu:
            snapshot = await ramp_with_autoscale(
                stack,
                engine,
                statistics,
                [(concurrency, step_s) for concurrency in steps],
                samples,
                started=started,
                controller=controller,
                on_step=on_step,
                on_decision=on_decision,
                alongside=[probe_timeline(stack, started, gpu, probes)],
            )
    finally:
        await engine.close()
    decisions = controller.decisions if controller is not None else []
    return {
        "samples": samples,
        "probes": probes,
        "decisions": [
            {
                "at": round(d.at - started, 2),
                "before": d.before,
                "target": d.target,
                "reason": d.reason,
            }
            for d in decisions
        ],
        "answered": snapshot.answered,
        "failed": snapshot.failed,
    }


def run_live(
    plan: Plan,
    out: Path,
    deadline: Deadline,
    gpu: str,
    *,
    cpu_check: bool,
    modes: list[str],
    steps: list[int],
    step_s: float,
    maximum: int,
) -> int:
    """Each mode in turn ("autoscale", or "fixedK" for K instances, autoscale off), while the
    deadline allows a whole ramp."""
    from flowerdemo.plots import plot_autoscale
    from flowerdemo.serving.stack import LocalStack, StackError, StackSettings

    out.mkdir(parents=True, exist_ok=True)
    mps = None if cpu_check else Mps(Path(tempfile.gettempdir()) / "flowerdemo-mps-live")
    results: dict[str, Any] = {
        "gpu": gpu,
        "steps": steps,
        "step_s": step_s,
        "budget_ms": plan.budget_ms,
        "runs": {},
    }
    failures = 0
    try:
        if mps is not None:
            mps.start()
            # Every Triton the stack starts, now or when scaling up, is an MPS client at 14%.
            os.environ.update({**mps.env, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(MPS_PERCENTAGE)})
        for mode in modes:
            autoscale = (1, maximum) if mode == "autoscale" else None
            count = 1 if autoscale else int(mode.removeprefix("fixed"))
            need = 25 + 3 * count + step_s * len(steps) + 10
            if deadline.left() - TEARDOWN_RESERVE_S < need:
                log(f"live {mode}: skipped ({deadline.left():.0f} s left, needs {need:.0f} s)")
                results["runs"][mode] = {"status": "skipped: time"}
                continue
            work = Path(tempfile.mkdtemp(prefix=f"flowerdemo-live-{mode}-"))
            if cpu_check:
                model, scaling = "flowers", "inception"
                settings = StackSettings(
                    instances=count,
                    workdir=work / "stack",
                    base_port=plan.base_port,
                    listen=plan.listen,
                    http_listen=plan.http_listen,
                    admin_listen=plan.admin_listen,
                )
            else:
                model, scaling = MODEL, "none"
                _, settings, _ = stack_parts(live_config(count), plan, work, deadline, mps)
            stack = LocalStack(settings)
            record: dict[str, Any] = {"instances_at_start": count, "autoscale": autoscale}
            try:
                began = time.monotonic()
                stack.start()
                record["ready_s"] = round(time.monotonic() - began, 1)
                log(f"live {mode}: {count} instance(s) ready in {record['ready_s']} s")
                run = asyncio.run(
                    ramp(stack, model, scaling, steps, step_s, plan.budget_ms, autoscale)
                )
                samples = run.pop("samples")
                probes = run.pop("probes")
                with (out / f"probe-{mode}.csv").open("w", encoding="utf-8", newline="") as handle:
                    writer = csv.DictWriter(handle, fieldnames=("t_s", *PROBE_FIELDS))
                    writer.writeheader()
                    writer.writerows(probes)
                record.update(run, status="ran")
                with (out / f"timeline-{mode}.csv").open("w", encoding="utf-8") as handle:
                    handle.write("t_s,concurrency,p90_ms,ready,target,images_per_s\n")
                    for s in samples:
                        p90 = "" if math.isnan(s.p90_ms) else f"{s.p90_ms:.2f}"
                        handle.write(
                            f"{s.t_s:.2f},{s.concurrency},{p90},{s.ready},{s.target},"
                            f"{s.images_per_s:.2f}\n"
                        )
                where = "CPU check, bundled model" if cpu_check else f"{gpu}, ResNet-50 FP16"
                what = (
                    f"autoscale 1:{maximum}" if autoscale else f"{count} instance(s), autoscale off"
                )
                plot_autoscale(
                    samples,
                    [(d["at"], d["before"], d["target"]) for d in record["decisions"]],
                    out / f"live-{mode}.png",
                    budget_ms=plan.budget_ms,
                    title=f"{where}: {what}, concurrency {steps[0]}..{max(steps)} "
                    f"({step_s:g} s a step), one client process\n"
                    + (
                        ""
                        if cpu_check
                        else f"NOT MIG: each instance is a process sharing one GPU via MPS "
                        f"({MPS_PERCENTAGE}% of the SMs)"
                    ),
                )
                log(
                    f"live {mode}: answered {record['answered']}, failed {record['failed']}, "
                    f"{len(record['decisions'])} decisions"
                )
            except (StackError, Exception) as error:
                record["status"] = f"error: {type(error).__name__}: {error}"
                log(f"live {mode}: {record['status']}")
                failures += 1
            finally:
                stack.stop()
                shutil.rmtree(work, ignore_errors=True)
            results["runs"][mode] = record
            (out / "live.json").write_text(json.dumps(results, indent=1) + "\n")
    finally:
        if mps is not None:
            mps.stop()
        (out / "live.json").write_text(json.dumps(results, indent=1) + "\n")
    return failures


# Reading a run back: one row per step of the ramp (`run_gpu_bench.py --live-report DIR`).

SETTLE_SHARE = 0.4


def _read_csv(path: Path) -> list[dict[str, float]]:
    """A results CSV as rows of floats, NaN where a cell is empty."""
    with path.open(encoding="utf-8") as handle:
        return [
            {key: float(value) if value else math.nan for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]


def _median(values: list[float]) -> float:
    present = [v for v in values if not math.isnan(v)]
    return statistics.median(present) if present else math.nan


def step_table(
    timeline: Path, probe: Path | None, budget_ms: float, step_s: float | None = None
) -> list[dict[str, float]]:
    """One row per step of a live run's timeline. A step is a contiguous run of one concurrency,
    cut into equal pieces of about `step_s` when the ramp repeated a value (256 five times); it
    ends where the next step's first sample is. Its first SETTLE_SHARE (40%) is left out as
    settling; the rest gives the median throughput and p90, the share of samples whose p90 is
    within the budget, the instances ready at the step's last sample, and the median of each
    probe column over the probe rows whose whole interval (from the previous row) lies there."""
    samples = _read_csv(timeline)
    probes = _read_csv(probe) if probe is not None and probe.exists() else []
    runs: list[list[dict[str, float]]] = []
    for sample in samples:
        if runs and runs[-1][0]["concurrency"] == sample["concurrency"]:
            runs[-1].append(sample)
        else:
            runs.append([sample])
    steps: list[tuple[float, float]] = []
    for index, run in enumerate(runs):
        start = run[0]["t_s"]
        end = (runs[index + 1][0] if index + 1 < len(runs) else run[-1])["t_s"]
        pieces = max(1, round((end - start) / step_s)) if step_s else 1
        width = (end - start) / pieces
        steps += [(start + k * width, start + (k + 1) * width) for k in range(pieces)]
    # A probe row covers the time since the row before it (the first, since the start).
    began = [0.0, *(row["t_s"] for row in probes)]
    rows = []
    for start, end in steps:
        last = end if (start, end) != steps[-1] else math.inf  # the last step keeps its last sample
        step = [s for s in samples if start <= s["t_s"] < last]
        if not step:
            continue
        kept_from = start + SETTLE_SHARE * (end - start)
        kept = [s for s in step if s["t_s"] >= kept_from]
        p90s = [s["p90_ms"] for s in kept if not math.isnan(s["p90_ms"])]
        in_span = [
            row
            for since, row in zip(began, probes, strict=False)
            if since >= kept_from and row["t_s"] <= end
        ]
        rows.append(
            {
                "concurrency": step[0]["concurrency"],
                "from_s": kept_from,
                "to_s": end,
                "samples": len(kept),
                "images_per_s": _median([s["images_per_s"] for s in kept]),
                "p90_ms": _median(p90s),
                "within_budget": sum(p <= budget_ms for p in p90s) / len(p90s)
                if p90s
                else math.nan,
                "ready_at_end": step[-1]["ready"],
                "probe_rows": len(in_span),
                **{column: _median([row[column] for row in in_span]) for column in PROBE_FIELDS},
            }
        )
    return rows


def live_report(folder: Path) -> str:
    """A markdown table per mode of the live run in `folder` (live.json and its CSVs)."""
    results = (
        json.loads((folder / "live.json").read_text()) if (folder / "live.json").exists() else {}
    )
    budget_ms = float(results.get("budget_ms", 50.0))
    modes = list(results.get("runs", {})) or sorted(
        p.stem.removeprefix("timeline-") for p in folder.glob("timeline-*.csv")
    )
    out = [
        f"Per step: the first {SETTLE_SHARE:.0%} of each step left out as settling, medians of the "
        f"rest (0.5 s samples; probe rows of about {PROBE_INTERVAL_S:g} s wholly inside it). "
        f"Budget: p90 <= {budget_ms:g} ms. Cores: 1.00 = one core busy all the time; idle: the "
        "machine's idle share of all its cores; GPU: NVML utilisation.",
    ]
    for mode in modes:
        timeline = folder / f"timeline-{mode}.csv"
        if not timeline.exists():
            continue
        step_s = results.get("step_s")
        step_s = step_s.get(mode) if isinstance(step_s, dict) else step_s
        rows = step_table(timeline, folder / f"probe-{mode}.csv", budget_ms, step_s)
        out += [
            "",
            f"### {mode}" + (f" ({step_s:g} s a step)" if step_s else ""),
            "",
            "| c | s kept | img/s | p90 ms | within budget | ready at end | client cores "
            "| client top thread | Envoy | tritonservers | stubs | idle | GPU % |",
            "|" + "---|" * 13,
        ]
        for row in rows:
            cells = [
                f"{row['concurrency']:.0f}",
                f"{row['from_s']:.0f}-{row['to_s']:.0f}",
                _cell(row["images_per_s"], "{:,.0f}"),
                _cell(row["p90_ms"], "{:.1f}"),
                _cell(row["within_budget"], "{:.0%}"),
                f"{row['ready_at_end']:.0f}",
                *(_cell(row[c], "{:.2f}") for c in PROBE_FIELDS[:-2]),
                _cell(row["machine_idle"], "{:.0%}"),
                _cell(row["gpu_util"], "{:.0f}"),
            ]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _cell(value: float, pattern: str) -> str:
    return "-" if math.isnan(value) else pattern.format(value)
