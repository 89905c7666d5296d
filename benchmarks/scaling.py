"""Scaling on this machine: 1, 2 and 4 local Triton instances (CPU) behind Envoy.

For each instance count the stack is started, then the same concurrency sweep is measured by our
engine and by perf_analyzer, both through Envoy. CSVs (perf_analyzer's layout), charts, the exact
commands and the machine's description go to benchmarks/results/<date>-<machine>/.

    python benchmarks/scaling.py [--instances 1,2,4] [--concurrency 1,2,4,8,16,32] [--window 2]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import math
import os
import platform
import shlex
import sys
from pathlib import Path

from perf_analyzer_runner import perf_analyzer_version, run_perf_analyzer
from PIL import Image

from flowerdemo.bench import step_snapshot
from flowerdemo.core.engine import EngineSettings
from flowerdemo.core.images import load_images
from flowerdemo.core.stats import perf_analyzer_row, write_perf_analyzer_csv
from flowerdemo.core.sweep import SweepSettings, parse_concurrency_range, sweep_server
from flowerdemo.plots import SweepPoint, best_within_budget, plot_sweeps
from flowerdemo.resources import sample_images_dir
from flowerdemo.serving.stack import LocalStack, StackSettings

RESULTS = Path(__file__).resolve().parent / "results"


def machine_name() -> str:
    return f"cpu{os.cpu_count()}-{platform.machine()}"


def machine_description() -> str:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({model or platform.processor() or 'unknown CPU'}), {platform.system()} {platform.release()}, Python {platform.python_version()}, no GPU"


def photos() -> list[Image.Image]:
    return [image.image for image in load_images(sample_images_dir()).images]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", default="1,2,4")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32")
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--budget-ms", type=float, default=50.0)
    parser.add_argument("--base-port", type=int, default=19000)
    parser.add_argument(
        "--listen-port", type=int, default=19500, help="Envoy's gRPC port (HTTP +1, admin +2)"
    )
    parser.add_argument("--output-dir", type=Path)
    args = parser.parse_args()
    instance_counts = parse_concurrency_range(args.instances)
    concurrencies = parse_concurrency_range(args.concurrency)
    out = args.output_dir or RESULTS / f"{datetime.date.today().isoformat()}-{machine_name()}"
    out.mkdir(parents=True, exist_ok=True)

    series: dict[str, list[SweepPoint]] = {}
    commands = [f"python benchmarks/scaling.py {shlex.join(sys.argv[1:])}".strip()]
    table = []
    for count in instance_counts:
        settings = StackSettings(
            instances=count,
            base_port=args.base_port,
            listen=f"127.0.0.1:{args.listen_port}",
            http_listen=f"127.0.0.1:{args.listen_port + 1}",
            admin_listen=f"127.0.0.1:{args.listen_port + 2}",
        )
        print(f"== {count} instance(s)", flush=True)
        with LocalStack(settings) as stack:
            url = stack.grpc_url
            ours = asyncio.run(
                sweep_server(
                    EngineSettings(url=url),
                    photos(),
                    SweepSettings(concurrencies, window_s=args.window),
                )
            )
            theirs, pa_commands = run_perf_analyzer(
                url, settings.model_name, list(concurrencies), window_ms=int(args.window * 1000)
            )
        commands.extend(pa_commands)
        label = f"{count} instance{'s' if count > 1 else ''}"
        write_perf_analyzer_csv(
            out / f"flowerdemo-{count}.csv",
            [perf_analyzer_row(s.concurrency, step_snapshot(s)) for s in ours],
        )
        write_perf_analyzer_csv(
            out / f"perf_analyzer-{count}.csv",
            [
                {
                    "Concurrency": r.concurrency,
                    "Inferences/Second": r.images_per_s,
                    "p50 latency": round(r.p50_ms * 1000),
                    "p90 latency": round(r.p90_ms * 1000),
                    "p99 latency": round(r.p99_ms * 1000),
                }
                for r in theirs
                if not math.isnan(r.images_per_s)  # a point perf_analyzer could not measure
            ],
        )
        series[f"{label}, flowerdemo"] = [
            SweepPoint(s.concurrency, s.images_per_s, s.latency.p90 * 1000) for s in ours
        ]
        series[f"{label}, perf_analyzer"] = [
            SweepPoint(r.concurrency, r.images_per_s, r.p90_ms) for r in theirs
        ]
        for step, row in zip(ours, theirs, strict=True):
            table.append(
                (
                    count,
                    step.concurrency,
                    step.images_per_s,
                    step.latency.p90 * 1000,
                    row.images_per_s,
                    row.p90_ms,
                )
            )
            print(
                f"  c={step.concurrency:>3}  ours {step.images_per_s:8.1f} img/s p90 {step.latency.p90 * 1000:7.2f} ms | "
                f"perf_analyzer {row.images_per_s:8.1f} img/s p90 {row.p90_ms:7.2f} ms | ratio {step.images_per_s / row.images_per_s:.3f}",
                flush=True,
            )

    title = f"local CPU stack through Envoy ({machine_description().split(',')[0]})"
    plot_sweeps(series, out, budget_ms=args.budget_ms, title=title)
    summary = [
        f"# Scaling on {machine_description()}",
        "",
        f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M} with {perf_analyzer_version()} as the reference.",
        "",
        "| instances | concurrency | flowerdemo img/s | flowerdemo p90 ms | perf_analyzer img/s | perf_analyzer p90 ms | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    summary += [
        f"| {n} | {c} | {a:.1f} | {b:.2f} | {x:.1f} | {y:.2f} | {a / x:.3f} |"
        for n, c, a, b, x, y in table
    ]
    summary += ["", f"Per configuration (budget {args.budget_ms:g} ms p90, our engine):", ""]
    base = None
    for count in instance_counts:
        points = series[f"{count} instance{'s' if count > 1 else ''}, flowerdemo"]
        peak = max(points, key=lambda p: p.images_per_s)
        within = best_within_budget(points, args.budget_ms)
        if base is None and within is not None:
            base = within.images_per_s
        scaling = f"{within.images_per_s / base:.2f}x" if within is not None and base else "-"
        summary.append(
            f"- {count} instance(s): peak {peak.images_per_s:.1f} img/s at c={peak.concurrency}; "
            f"highest concurrency within budget: {max((p.concurrency for p in points if p.p90_ms <= args.budget_ms), default='none')}; "
            f"throughput within budget {within.images_per_s if within else 0:.1f} img/s ({scaling} of 1 instance)"
        )
    summary += ["", "Commands:", "", *[f"    {c}" for c in commands], ""]
    (out / "README.md").write_text("\n".join(summary))
    print(f"\nresults in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
