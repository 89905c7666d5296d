"""`flowerdemo bench`: a concurrency sweep against a server, as CSV and PNG charts."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from pathlib import Path

from flowerdemo.core.engine import ConnectError, InferenceEngine
from flowerdemo.core.images import NoImagesError, load_images
from flowerdemo.core.stats import (
    DEFAULT_PERCENTILE,
    LatencySummary,
    StatsSnapshot,
    perf_analyzer_row,
    write_perf_analyzer_csv,
)
from flowerdemo.core.sweep import (
    SweepSettings,
    SweepStep,
    WindowMeasurement,
    parse_concurrency_range,
    run_sweep,
)
from flowerdemo.embedded import server_url
from flowerdemo.guard import report_skipped
from flowerdemo.options import RunOptions
from flowerdemo.plots import SweepPoint, plot_sweeps, read_perf_analyzer_csv

BAR_WIDTH = 24


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="HOST:PORT to measure; without it a local stack is started")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--model", default="flowers")
    parser.add_argument(
        "--concurrency-range",
        default="1:16",
        help="START:END[:STEP] or a list like 1,2,4,8 (default 1:16)",
    )
    parser.add_argument("-b", "--batch-size", type=int, default=1)
    parser.add_argument("--window", type=float, default=2.0, help="seconds per measurement window")
    parser.add_argument("--max-windows", type=int, default=10)
    parser.add_argument(
        "--stability-percentage",
        type=float,
        default=10.0,
        metavar="PERCENT",
        help="as perf_analyzer's: a step is stable when, over its last 3 windows, the largest "
        "throughput and the largest latency are each within PERCENT %% of the smallest (default 10)",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="deadline of each request, seconds"
    )
    parser.add_argument(
        "--budget-ms", type=float, default=50.0, help="latency budget drawn on the p90 chart"
    )
    parser.add_argument(
        "--label", default="flowerdemo", help="name of this configuration in CSV and charts"
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=CSV",
        help="another configuration's CSV (ours or perf_analyzer's) to draw on the same charts",
    )
    parser.add_argument("--title", default="", help="chart subtitle (say what the hardware is)")
    parser.add_argument("--output-dir", type=Path, default=Path("bench-results"))
    parser.add_argument(
        "--images", type=Path, help="folder of photos (default: the bundled samples)"
    )
    parser.add_argument(
        "--instances", type=int, default=2, help="local stack instances (without --url)"
    )


def run_bench(args: argparse.Namespace) -> int:
    try:
        concurrencies = parse_concurrency_range(args.concurrency_range)
        compare = [_parse_compare(item) for item in args.compare]
    except ValueError as error:
        print(f"flowerdemo bench: {error}", file=sys.stderr)
        return 2
    options = RunOptions(
        url=args.url,
        protocol=args.protocol,
        model=args.model,
        batch_size=args.batch_size,
        images=args.images,
        timeout_s=args.timeout,
        instances=args.instances,
        mode="auto",
    )
    settings = SweepSettings(
        concurrencies,
        window_s=args.window,
        tolerance=args.stability_percentage / 100,
        max_windows=args.max_windows,
    )
    try:
        steps = asyncio.run(_sweep(options, settings))
    except (ConnectError, NoImagesError) as error:
        print(f"flowerdemo bench: {error}", file=sys.stderr)
        return 2
    if steps is None:
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    csv_path = args.output_dir / f"{args.label}.csv"
    write_perf_analyzer_csv(
        csv_path, [perf_analyzer_row(s.concurrency, step_snapshot(s)) for s in steps]
    )
    series: dict[str, list[SweepPoint]] = {
        args.label: [SweepPoint(s.concurrency, s.images_per_s, s.latency.p90 * 1000) for s in steps]
    }
    for label, path in compare:
        series[label] = read_perf_analyzer_csv(path)
    charts = plot_sweeps(
        series, args.output_dir, budget_ms=args.budget_ms, title=args.title or args.label
    )
    print(f"CSV: {csv_path}\nCharts: {charts[0]}, {charts[1]}")
    return 0 if all(s.failed == 0 for s in steps) else 1


async def _sweep(options: RunOptions, settings: SweepSettings) -> list[SweepStep] | None:
    image_set = load_images(options.images_dir, labels=options.class_names())
    report_skipped(image_set.problems, sys.stderr, "flowerdemo bench")
    with server_url(options, sys.stderr) as url:
        if url is None:
            return None
        engine = InferenceEngine(options.engine_settings(url), [i.image for i in image_set.images])
        try:
            spec = await engine.connect()
            print(f"Measuring {url}: {spec.describe()}")
            print(
                f"{'conc':>5} {'img/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'failed':>7}  windows"
            )
            return await run_sweep(
                engine, settings, on_step=_print_step, on_window=_progress(settings)
            )
        finally:
            await engine.close()


def _progress(settings: SweepSettings):  # type: ignore[no-untyped-def]
    total = len(settings.concurrencies)
    position = {c: k for k, c in enumerate(settings.concurrencies)}

    def show(concurrency: int, window: int, measurement: WindowMeasurement) -> None:
        if not sys.stdout.isatty():
            return
        done = position[concurrency] + window / settings.max_windows
        filled = int(BAR_WIDTH * done / total)
        print(
            f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] c={concurrency} window {window} "
            f"{measurement.images_per_s:8.1f} img/s\x1b[K",
            end="",
            flush=True,
        )

    return show


def _print_step(step: SweepStep) -> None:
    if sys.stdout.isatty():
        print("\r\x1b[K", end="")
    latency = step.latency
    print(
        f"{step.concurrency:>5} {step.images_per_s:>10.1f} {latency.p50 * 1000:>8.2f} {latency.p90 * 1000:>8.2f} "
        f"{latency.p99 * 1000:>8.2f} {step.failed:>7}  {step.windows}{'' if step.stable else ' (not stable)'}",
        flush=True,
    )


def step_snapshot(
    step: SweepStep, *, budget_s: float = math.nan, percentile: int = DEFAULT_PERCENTILE
) -> StatsSnapshot:
    """A sweep step in the shape the CSV writer takes."""
    return StatsSnapshot(
        elapsed_s=1.0,
        sent=step.latency.count + step.failed,
        answered=step.latency.count,
        failed=step.failed,
        in_flight=0,
        images_answered=0,
        errors_by_kind={},
        run=step.latency if step.latency.count else LatencySummary.empty(),
        window=step.latency,
        window_s=1.0,
        window_requests_per_s=step.requests_per_s,
        window_images_per_s=step.images_per_s,
        run_images_per_s=step.images_per_s,
        percentile=percentile,
        budget_s=budget_s,
        run_verdict_s=step.verdict_s,
        run_goodput=step.goodput,
        run_server=step.server,
        delayed=step.delayed,
    )


def _parse_compare(item: str) -> tuple[str, Path]:
    label, sep, path = item.partition("=")
    if not sep or not label or not path:
        raise ValueError(f"--compare takes LABEL=CSV, not '{item}'")
    if not Path(path).is_file():
        raise ValueError(f"--compare: {path} does not exist")
    return label, Path(path)
