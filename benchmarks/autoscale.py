"""Autoscale against rising load: does the p90 come back under the budget?

A local stack starts with one Triton instance (CPU) behind Envoy; the engine keeps N requests
outstanding, N rising in steps (1 to 32 by default, then back to 1), while the autoscale
controller (flowerdemo.core.autoscale, the same loop as `flowerdemo --headless --autoscale`)
watches the p90 of the last 2 s and scales the stack between 1 and MAX instances. Every 0.5 s
the run records the p90 it saw, the ready and target instance counts, N and the throughput.

Writes to benchmarks/results/<date>-cpu<cores>-autoscale/: autoscale.png (p90 with the budget,
instances with N, throughput, decisions as vertical lines), timeline.csv, decisions.json, and
README.md with the exact command, the machine's load, and for every time the p90 crossed the
budget how long it took to come back under it (and whether the stack was at MAX by then).

    python benchmarks/autoscale.py [--max 2] [--steps 1,2,3,4,6,8,16,32,1] [--step-s 15]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from flowerdemo.core.autoscale import AutoscaleController, AutoscalePolicy, ScaleDecision
from flowerdemo.core.engine import EngineSettings, InferenceEngine
from flowerdemo.core.images import load_images
from flowerdemo.core.stats import RunStatistics
from flowerdemo.headless import AUTOSCALE_WINDOW_S, TIMELINE_INTERVAL_S, ramp_with_autoscale
from flowerdemo.plots import AutoscaleSample, plot_autoscale
from flowerdemo.resources import sample_images_dir
from flowerdemo.serving.ports import free_port_block
from flowerdemo.serving.stack import LocalStack, StackSettings

RESULTS = Path(__file__).resolve().parent / "results"
RECOVERY_TARGET_S = 10.0


def stack_settings(maximum: int) -> StackSettings:
    base = free_port_block(10 * maximum + 3)
    envoy = free_port_block(3)
    return StackSettings(
        instances=1,
        base_port=base,
        listen=f"127.0.0.1:{envoy}",
        http_listen=f"127.0.0.1:{envoy + 1}",
        admin_listen=f"127.0.0.1:{envoy + 2}",
    )


@dataclass(frozen=True)
class Crossing:
    """The p90 went over the budget at `over_at` and came back at `back_at` (None: never)."""

    over_at: float
    back_at: float | None
    at_maximum: bool
    """The stack was already at MAX when it crossed, or reached MAX before coming back: no
    capacity left to add."""
    concurrency: int

    @property
    def recovery_s(self) -> float | None:
        return None if self.back_at is None else self.back_at - self.over_at


def crossings(samples: list[AutoscaleSample], budget_ms: float, maximum: int) -> list[Crossing]:
    found: list[Crossing] = []
    over_at: float | None = None
    concurrency = 0
    reached_max = False
    for sample in samples:
        if math.isnan(sample.p90_ms):
            continue
        if over_at is None and sample.p90_ms > budget_ms:
            over_at, concurrency = sample.t_s, sample.concurrency
            reached_max = sample.ready >= maximum
        elif over_at is not None:
            reached_max = reached_max or sample.ready >= maximum
            if sample.p90_ms <= budget_ms:
                found.append(Crossing(over_at, sample.t_s, reached_max, concurrency))
                over_at = None
    if over_at is not None:
        found.append(Crossing(over_at, None, reached_max, concurrency))
    return found


def reached_at(samples: list[AutoscaleSample], at: float, target: int) -> float | None:
    """When the stack first reported `target` instances ready after a decision at `at`."""
    return next((s.t_s for s in samples if s.t_s >= at and s.ready == target), None)


async def measure(
    stack: LocalStack, args: argparse.Namespace, steps: list[int]
) -> tuple[list[AutoscaleSample], list[ScaleDecision], float, int]:
    photos = [image.image for image in load_images(sample_images_dir()).images]
    engine = InferenceEngine(EngineSettings(url=stack.grpc_url), photos)
    await engine.connect()
    budget_s = args.budget_ms / 1000
    statistics = RunStatistics(window_s=AUTOSCALE_WINDOW_S, budget_s=budget_s)
    engine.add_sink(statistics.record)
    controller = AutoscaleController(
        AutoscalePolicy(minimum=1, maximum=args.max, budget_s=budget_s)
    )
    samples: list[AutoscaleSample] = []
    started = time.monotonic()
    statistics.reset()

    def on_decision(decision: ScaleDecision) -> None:
        print(f"  {decision.at - started:6.1f} s  {decision.reason}", flush=True)

    def on_step(at: float, concurrency: int) -> None:
        print(f"{at:6.1f} s  N = {concurrency}", flush=True)

    # The last N is held longer: room to scale down.
    seconds = [args.step_s] * (len(steps) - 1) + [args.final_s]
    try:
        snapshot = await ramp_with_autoscale(
            stack,
            engine,
            statistics,
            list(zip(steps, seconds, strict=True)),
            samples,
            started=started,
            controller=controller,
            on_step=on_step,
            on_decision=on_decision,
        )
    finally:
        await engine.close()
    print(f"answered {snapshot.answered}, failed {snapshot.failed}")
    return samples, controller.decisions, started, snapshot.failed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max", type=int, default=os.cpu_count() or 1, help="MAX instances")
    parser.add_argument("--budget-ms", type=float, default=50.0)
    parser.add_argument("--steps", default="1,2,3,4,6,8,16,32,1", help="N in turn")
    parser.add_argument("--step-s", type=float, default=15.0, help="seconds at each N")
    parser.add_argument(
        "--final-s", type=float, default=30.0, help="seconds at the last N (room to scale down)"
    )
    parser.add_argument("--output-dir", type=Path)
    args = parser.parse_args()
    steps = [int(v) for v in args.steps.split(",")]
    machine = f"cpu{os.cpu_count()}"
    out = args.output_dir or RESULTS / f"{datetime.date.today().isoformat()}-{machine}-autoscale"
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()

    stack = LocalStack(stack_settings(args.max))
    print("Starting the stack with 1 instance...", flush=True)
    stack.start()
    try:
        samples, decisions, started, failed = asyncio.run(measure(stack, args, steps))
    finally:
        stack.stop()
    load_after = os.getloadavg()

    title = (
        f"Autoscale 1:{args.max}, budget {args.budget_ms:g} ms, N = {args.steps} "
        f"({args.step_s:g} s each): {os.cpu_count()} cores, CPU instances, bundled model"
    )
    chart = plot_autoscale(
        samples,
        [(d.at - started, d.before, d.target) for d in decisions],
        out / "autoscale.png",
        budget_ms=args.budget_ms,
        title=title,
    )
    with (out / "timeline.csv").open("w", encoding="utf-8") as handle:
        handle.write("t_s,concurrency,p90_ms,ready,target,images_per_s\n")
        for s in samples:
            p90 = "" if math.isnan(s.p90_ms) else f"{s.p90_ms:.2f}"
            handle.write(
                f"{s.t_s:.2f},{s.concurrency},{p90},{s.ready},{s.target},{s.images_per_s:.2f}\n"
            )
    decision_rows = [{**asdict(d), "at": round(d.at - started, 2)} for d in decisions]
    (out / "decisions.json").write_text(json.dumps(decision_rows, indent=2) + "\n")

    found = crossings(samples, args.budget_ms, args.max)
    command = "python benchmarks/autoscale.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        "# Autoscale against rising load",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} cores ({platform.machine()}), {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, no GPU; CPU instances of "
        "the bundled model behind Envoy, one stack on this machine. Load average (1 min) "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (this run's own stack and "
        f"client count in it; more than about {os.cpu_count()} means other work shared the "
        "machine, and every figure is then a lower bound).",
        "",
        "The p90 is the controller's own view: the 90th percentile of the answers of the last "
        f"{AUTOSCALE_WINDOW_S:g} s, sampled every {TIMELINE_INTERVAL_S:g} s.",
        "",
        f"![autoscale]({chart.name})",
        "",
        f"Failed requests: {failed} (of every request sent, through every scale change).",
        "",
        "## Decisions",
        "",
    ]
    for row in decision_rows:
        reached = reached_at(samples, row["at"], row["target"])
        when = (
            f"; the stack reported {row['target']} ready {reached - row['at']:.1f} s later"
            if reached is not None
            else f"; {row['target']} were never reported ready during the run"
        )
        reason = str(row["reason"]).rstrip(".")
        lines.append(f"- {row['at']:.1f} s: {row['before']} -> {row['target']}: {reason}{when}.")
    if not decision_rows:
        lines.append("- none")
    lines += ["", "## Each time the p90 crossed the budget", ""]
    for crossing in found:
        if crossing.recovery_s is None:
            outcome = "never came back under the budget"
        else:
            verdict = "within" if crossing.recovery_s <= RECOVERY_TARGET_S else "NOT within"
            outcome = (
                f"back under after {crossing.recovery_s:.1f} s ({verdict} {RECOVERY_TARGET_S:g} s)"
            )
        capacity = (
            f"at MAX ({args.max}) instances: no capacity left"
            if crossing.at_maximum
            else "capacity left"
        )
        lines.append(
            f"- over at {crossing.over_at:.1f} s (N = {crossing.concurrency}): {outcome}; {capacity}"
        )
    if not found:
        lines.append("- the p90 never went over the budget")
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(f"\nResults in {out}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
