"""`flowerdemo bench`: a concurrency sweep against a server, as CSV and PNG charts."""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path

from flowerdemo.core.engine import ConnectError, InferenceEngine
from flowerdemo.core.images import NoImagesError, load_images
from flowerdemo.core.model_spec import WIRE_CHOICES
from flowerdemo.core.server_stats import ServerStatsReader
from flowerdemo.core.stats import (
    DEFAULT_PERCENTILE,
    LatencySummary,
    StatsSnapshot,
    perf_analyzer_row,
    write_perf_analyzer_csv,
)
from flowerdemo.core.sweep import (
    BudgetSearch,
    StepMeasurer,
    SweepSettings,
    SweepStep,
    WindowMeasurement,
    find_budget,
    parse_concurrency_range,
    parse_rate_range,
    run_sweep,
)
from flowerdemo.core.units import format_ms
from flowerdemo.embedded import ServerTarget, serving_target
from flowerdemo.guard import EXIT_FAILED_REQUESTS, EXIT_NOT_RUN, report_skipped, stop_on_signals
from flowerdemo.options import (
    RunOptions,
    add_grpc_calls_argument,
    add_security_arguments,
    security_from_args,
    security_problems,
)
from flowerdemo.plots import SweepPoint, plot_sweeps, read_perf_analyzer_csv
from flowerdemo.validation import (
    MAX_BATCH_SIZE,
    MAX_INSTANCES,
    finite_positive,
    int_between,
    output_dir_problem,
)

BAR_WIDTH = 24


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="HOST:PORT to measure; without it a local stack is started")
    add_security_arguments(parser)
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    add_grpc_calls_argument(parser)
    parser.add_argument("--model", default="flowers")
    parser.add_argument(
        "--concurrency-range",
        default="1:16",
        help="START:END[:STEP] or a list like 1,2,4,8 (default 1:16)",
    )
    parser.add_argument("-b", "--batch-size", type=int_between(1, MAX_BATCH_SIZE), default=1)
    parser.add_argument(
        "--wire",
        choices=WIRE_CHOICES,
        default="fp32",
        help="how images travel: fp32, uint8, jpeg (the model's variants) or auto (the smallest)",
    )
    parser.add_argument(
        "--window", type=finite_positive, default=2.0, help="seconds per measurement window"
    )
    parser.add_argument("--max-windows", type=int_between(1, 1000), default=10)
    parser.add_argument(
        "--stability-percentage",
        type=float,
        default=10.0,
        metavar="PERCENT",
        help="as perf_analyzer's: a step is stable when, over its last 3 windows, the largest "
        "throughput and the largest latency are each within PERCENT %% of the smallest (default 10)",
    )
    parser.add_argument(
        "--timeout", type=finite_positive, default=10.0, help="deadline of each request, seconds"
    )
    parser.add_argument(
        "--budget-ms",
        type=finite_positive,
        default=50.0,
        help="latency budget: drawn on the p90 chart, goodput counted against it",
    )
    parser.add_argument(
        "--percentile",
        type=int,
        default=DEFAULT_PERCENTILE,
        help="the latency percentile judged against the budget and by the stability rule "
        "(default 90)",
    )
    parser.add_argument(
        "--request-rate",
        metavar="RANGE",
        help="open loop: measure these request rates per second (START:END[:STEP] or a list) "
        "instead of concurrencies, as perf_analyzer's --request-rate-range",
    )
    parser.add_argument(
        "--poisson",
        action="store_true",
        help="with --request-rate: exponential gaps between requests instead of a constant rate",
    )
    parser.add_argument(
        "--find-budget",
        action="store_true",
        help="search concurrency (doubling, then bisection) for the highest load whose "
        "--percentile latency stays within --budget-ms, and print it",
    )
    parser.add_argument(
        "--server-url",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="an instance behind a remote balancer (repeat, or separate with commas): its own "
        "queue and compute times fill the CSV's server columns",
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
        "--instances",
        type=int_between(1, MAX_INSTANCES),
        default=2,
        help="local stack instances (without --url)",
    )


def run_bench(args: argparse.Namespace) -> int:
    try:
        concurrencies = parse_concurrency_range(args.concurrency_range)
        rates = parse_rate_range(args.request_rate) if args.request_rate else ()
        compare = [_parse_compare(item) for item in args.compare]
        problems = _check_args(args)
        if problems:
            raise ValueError("; ".join(problems))
    except ValueError as error:
        print(f"flowerdemo bench: {error}", file=sys.stderr)
        return EXIT_NOT_RUN
    problem = output_dir_problem("--output-dir", args.output_dir)
    if problem is not None:
        print(f"flowerdemo bench: {problem}", file=sys.stderr)
        return EXIT_NOT_RUN
    options = RunOptions(
        url=args.url,
        protocol=args.protocol,
        grpc_calls=args.grpc_calls,
        model=args.model,
        batch_size=args.batch_size,
        wire=args.wire,
        images=args.images,
        timeout_s=args.timeout,
        instances=args.instances,
        mode="auto",
        budget_ms=args.budget_ms,
        percentile=args.percentile,
        server_urls=tuple(
            url.strip() for item in args.server_url for url in item.split(",") if url.strip()
        ),
        **security_from_args(args),
    )
    problems = security_problems(options)
    if problems:
        print(f"flowerdemo bench: {'; '.join(problems)}", file=sys.stderr)
        return EXIT_NOT_RUN
    settings = SweepSettings(
        concurrencies,
        window_s=args.window,
        tolerance=args.stability_percentage / 100,
        max_windows=args.max_windows,
        percentile=args.percentile,
        request_rates=rates,
        poisson=args.poisson,
        budget_s=args.budget_ms / 1000,
    )
    try:
        result = asyncio.run(_measure(options, settings, find=args.find_budget))
    except (ConnectError, NoImagesError) as error:
        print(f"flowerdemo bench: {error}", file=sys.stderr)
        return 2
    if result is None:
        return EXIT_NOT_RUN
    steps, search = result
    if not steps:
        return EXIT_FAILED_REQUESTS
    args.output_dir.mkdir(parents=True, exist_ok=True)
    csv_path = args.output_dir / f"{args.label}.csv"
    budget_s = settings.budget_s
    ordered = sorted(steps, key=lambda s: (s.request_rate or 0.0, s.concurrency))
    write_perf_analyzer_csv(
        csv_path,
        [
            perf_analyzer_row(
                s.concurrency,
                step_snapshot(s, budget_s=budget_s, percentile=settings.percentile),
                request_rate=s.request_rate,
            )
            for s in ordered
        ],
    )
    print(f"CSV: {csv_path}")
    if search is not None:
        print(describe_search(search, settings))
    if not rates:
        series: dict[str, list[SweepPoint]] = {
            args.label: [
                SweepPoint(s.concurrency, s.images_per_s, s.latency.p90 * 1000) for s in ordered
            ]
        }
        for label, path in compare:
            series[label] = read_perf_analyzer_csv(path)
        charts = plot_sweeps(
            series, args.output_dir, budget_ms=args.budget_ms, title=args.title or args.label
        )
        print(f"Charts: {charts[0]}, {charts[1]}")
    return 0 if all(s.failed == 0 for s in steps) else 1


def _check_args(args: argparse.Namespace) -> list[str]:
    problems = []
    if not 1 <= args.percentile <= 99:
        problems.append(f"--percentile must be between 1 and 99, not {args.percentile}")
    if args.poisson and not args.request_rate:
        problems.append("--poisson shapes --request-rate: give rates too")
    if args.find_budget and args.request_rate:
        problems.append("--find-budget searches concurrency: leave out --request-rate")
    if not args.budget_ms > 0:
        problems.append(f"--budget-ms must be positive, not {args.budget_ms}")
    if not args.stability_percentage > 0:
        problems.append(f"--stability-percentage must be positive, not {args.stability_percentage}")
    return problems


def describe_search(search: BudgetSearch, settings: SweepSettings) -> str:
    budget = format_ms(settings.budget_s)
    name = f"p{settings.percentile}"
    best = search.best
    if best is None:
        first = search.steps[0]
        return (
            f"Within budget: nothing. Even concurrency {first.concurrency} gives {name} "
            f"{format_ms(first.verdict_s)} ({first.failed} failed), over the {budget} budget."
        )
    tail = " (the highest tried: the limit may be higher)" if search.limit_reached else ""
    return (
        f"Within budget: concurrency {best.concurrency}{tail}, {best.images_per_s:.1f} images/s "
        f"at {name} {format_ms(best.verdict_s)} (budget {budget}), "
        f"{len(search.steps)} steps measured."
    )


async def _measure(
    options: RunOptions, settings: SweepSettings, *, find: bool
) -> tuple[list[SweepStep], BudgetSearch | None] | None:
    image_set = load_images(options.images_dir, labels=options.class_names())
    report_skipped(image_set.problems, sys.stderr, "flowerdemo bench")
    with serving_target(options, sys.stderr) as target:
        if target is None:
            return None
        url = target.url
        photos = [i.image for i in image_set.images]
        engine = InferenceEngine(options.engine_settings(url), photos)
        reader = _server_reader(options, target)
        try:
            spec = await engine.connect()
            print(
                f"Measuring {url}: {spec.describe()}; wire {spec.wire}, "
                f"{engine.mean_request_bytes():,.0f} bytes a request"
            )
            if reader is not None:
                print(f"Server-side split read from {', '.join(reader.urls)}")
            level = "rate/s" if settings.request_rates else "conc"
            print(
                f"{level:>7} {'img/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
                f"{_verdict_header(settings.percentile)}{'good':>6} {'failed':>7}  windows"
            )
            measured: list[SweepStep] = []
            printer = _step_printer(settings.percentile)

            def keep(step: SweepStep) -> None:
                measured.append(step)
                printer(step)

            async def measure_all() -> tuple[list[SweepStep], BudgetSearch | None]:
                if find:
                    async with StepMeasurer(
                        engine, settings, server_reader=reader, image_count=len(photos)
                    ) as measure:
                        search = await find_budget(measure, settings.budget_s, on_step=keep)
                    return list(search.steps), search
                steps = await run_sweep(
                    engine,
                    settings,
                    on_step=keep,
                    on_window=_progress(settings),
                    server_reader=reader,
                    image_count=len(photos),
                )
                return steps, None

            work = asyncio.ensure_future(measure_all())
            stopped = False

            def stop() -> None:
                nonlocal stopped
                stopped = True
                work.cancel()

            # Ctrl+C or SIGTERM ends the measurement; the steps measured so far are still written.
            with stop_on_signals(stop):
                try:
                    return await work
                except asyncio.CancelledError:
                    if not stopped:
                        raise
            if sys.stdout.isatty():
                print("\r\x1b[K", end="")
            print(f"Stopped early: {len(measured)} step(s) measured; they are written below.")
            return measured, None
        finally:
            if reader is not None:
                await reader.close()
            await engine.close()


def _server_reader(options: RunOptions, target: ServerTarget) -> ServerStatsReader | None:
    """The instances behind the balancer: the embedded stack's, or --server-url's."""
    if target.stack is not None:
        urls = [f"127.0.0.1:{s.grpc_port}" for s in target.stack.states() if s.state == "ready"]
        return ServerStatsReader(urls, options.model)
    if options.server_urls:
        return ServerStatsReader(options.server_urls, options.model, protocol=options.protocol)
    return None


def _progress(settings: SweepSettings):  # type: ignore[no-untyped-def]
    levels = settings.levels
    total = len(levels)
    position = {c: k for k, c in enumerate(levels)}
    name = "rate" if settings.request_rates else "c"

    def show(level: float, window: int, measurement: WindowMeasurement) -> None:
        if not sys.stdout.isatty():
            return
        done = position.get(level, 0) + window / settings.max_windows
        filled = int(BAR_WIDTH * done / total)
        print(
            f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {name}={level:g} window {window} "
            f"{measurement.images_per_s:8.1f} img/s\x1b[K",
            end="",
            flush=True,
        )

    return show


SHOWN_PERCENTILES = (50, 90, 99)


def _verdict_header(percentile: int) -> str:
    return "" if percentile in SHOWN_PERCENTILES else f"{'p' + str(percentile) + ' ms':>8} "


def _step_printer(percentile: int) -> Callable[[SweepStep], None]:
    return functools.partial(_print_step, percentile=percentile)


def _print_step(step: SweepStep, percentile: int = DEFAULT_PERCENTILE) -> None:
    if sys.stdout.isatty():
        print("\r\x1b[K", end="")
    latency = step.latency
    level = f"{step.request_rate:g}" if step.request_rate is not None else str(step.concurrency)
    good = "-" if math.isnan(step.goodput) else f"{step.goodput * 100:.0f}%"
    # The verdict percentile gets its own column unless it is one already shown.
    verdict = "" if percentile in SHOWN_PERCENTILES else f"{_column_ms(step.verdict_s)} "
    notes = "" if step.stable else " (not stable)"
    if step.delayed:
        notes += f" ({step.delayed} sent late)"
    print(
        f"{level:>7} {step.images_per_s:>10.1f} {_column_ms(latency.p50)} {_column_ms(latency.p90)} "
        f"{_column_ms(latency.p99)} {verdict}{good:>6} {step.failed:>7}  "
        f"{step.windows}{notes}",
        flush=True,
    )


def _column_ms(seconds: float) -> str:
    """A latency in the step table's millisecond columns."""
    return format_ms(seconds, unit=False, width=8)


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
