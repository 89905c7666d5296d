"""`flowerdemo --headless`: the same engine and statistics as the window, on a terminal."""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import sys
from typing import TextIO

from flowerdemo.core.engine import ConnectError, InferenceEngine
from flowerdemo.core.events import UNKNOWN_INSTANCE, InferenceEvent
from flowerdemo.core.images import FlowerImage, NoImagesError, load_images
from flowerdemo.core.stats import (
    RunStatistics,
    StatsSnapshot,
    perf_analyzer_row,
    write_json_report,
    write_perf_analyzer_csv,
)
from flowerdemo.embedded import server_url
from flowerdemo.guard import report_skipped
from flowerdemo.options import RunOptions

STATUS_INTERVAL_S = 0.5


def run_headless(options: RunOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """0: every request answered; 1: some failed; 2: nothing could be run (the reason is printed)."""
    try:
        return asyncio.run(_run(options, out, err))
    except KeyboardInterrupt:
        return 130


async def _run(options: RunOptions, out: TextIO, err: TextIO) -> int:
    try:
        image_set = load_images(options.images_dir, labels=options.class_names())
    except NoImagesError as error:
        print(f"flowerdemo: {error}", file=err)
        return 2
    report_skipped(image_set.problems, err, "flowerdemo")
    images = image_set.images

    with server_url(options, err) as url:
        if url is None:
            return 2
        engine = InferenceEngine(options.engine_settings(url), [image.image for image in images])
        statistics = RunStatistics(budget_s=options.budget_ms / 1000, percentile=options.percentile)
        engine.add_sink(statistics.record)
        try:
            try:
                spec = await engine.connect()
            except ConnectError as error:
                print(f"flowerdemo: {error}", file=err)
                return 2
            print(f"Connected to {url} ({options.protocol}): {spec.describe()}", file=out)
            statistics.reset()
            if options.mode == "auto":
                await _run_automatic(engine, statistics, options, out)
            else:
                await _classify_each(engine, images, out)
        finally:
            await engine.close()
        snapshot = statistics.snapshot(in_flight=engine.in_flight)
        _print_summary(snapshot, options, out)
        if options.report is not None:
            _write_report(options, snapshot)
            print(f"Report written to {options.report}", file=out)
        return 0 if snapshot.failed == 0 and snapshot.answered > 0 else 1


async def _run_automatic(
    engine: InferenceEngine, statistics: RunStatistics, options: RunOptions, out: TextIO
) -> None:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        # Ctrl-C ends the run the normal way: outstanding requests still finish and are counted.
        loop.add_signal_handler(signal.SIGINT, engine.stop)
    reporter = asyncio.ensure_future(_report_status(engine, statistics, out))
    try:
        await engine.run_automatic(options.concurrency, duration_s=options.duration_s)
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
        if out.isatty():
            print(file=out)


async def _report_status(engine: InferenceEngine, statistics: RunStatistics, out: TextIO) -> None:
    interactive = out.isatty()
    ticks = 0
    while True:
        await asyncio.sleep(STATUS_INTERVAL_S)
        ticks += 1
        line = status_line(statistics.snapshot(in_flight=engine.in_flight))
        if interactive:
            print(f"\r{line}\x1b[K", end="", file=out, flush=True)
        elif ticks % 4 == 0:  # a log file gets one line every two seconds
            print(line, file=out, flush=True)


async def _classify_each(
    engine: InferenceEngine, images: tuple[FlowerImage, ...], out: TextIO
) -> None:
    """Interactive mode without a window: one request per photo, in order, one line each."""
    for index, image in enumerate(images):
        event = await engine.classify([index])
        print(describe_event(event, image), file=out)


def describe_event(event: InferenceEvent, image: FlowerImage) -> str:
    if not event.ok:
        return f"{image.name}: FAILED ({event.error})"
    labels = ", ".join(f"{c.label} {c.score:.2f}" for c in event.topk[0])
    mark = ""
    if image.truth is not None and event.topk[0]:
        mark = " [correct]" if event.topk[0][0].index == image.truth else " [wrong]"
    return f"{image.name}: {labels} ({event.latency_s * 1000:.1f} ms){mark}"


def status_line(snapshot: StatsSnapshot) -> str:
    window = snapshot.window
    verdict = snapshot.over_budget
    mark = "" if verdict is None else (" OVER BUDGET" if verdict else " ok")
    return (
        f"sent {snapshot.sent}  answered {snapshot.answered}  failed {snapshot.failed}  "
        f"in flight {snapshot.in_flight} | {snapshot.window_images_per_s:8.1f} img/s | "
        f"p50 {_ms(window.p50)}  p{snapshot.percentile} {_ms(snapshot.window_verdict_s)}{mark}"
    )


def _print_summary(snapshot: StatsSnapshot, options: RunOptions, out: TextIO) -> None:
    run = snapshot.run
    print(
        f"Summary: {snapshot.sent} sent, {snapshot.answered} answered, {snapshot.failed} failed "
        f"in {snapshot.elapsed_s:.1f} s; {snapshot.run_images_per_s:.1f} images/s",
        file=out,
    )
    print(
        f"Latency: mean {_ms(run.mean)}  p50 {_ms(run.p50)}  p90 {_ms(run.p90)}  "
        f"p95 {_ms(run.p95)}  p99 {_ms(run.p99)}",
        file=out,
    )
    verdict = "within" if snapshot.run_verdict_s <= snapshot.budget_s else "OVER"
    if math.isnan(snapshot.run_verdict_s):
        verdict = "no answer to judge against"
    print(
        f"Budget {options.budget_ms:g} ms: p{snapshot.percentile} {_ms(snapshot.run_verdict_s).strip()} "
        f"{verdict} the budget; Goodput {_percent(snapshot.run_goodput).strip()} of answers within it",
        file=out,
    )
    for line in instance_lines(snapshot):
        print(line, file=out)
    for kind, count in sorted(snapshot.errors_by_kind.items()):
        print(f"Errors: {count} {kind}", file=out)
    if snapshot.last_error:
        print(f"Last error: {snapshot.last_error}", file=out)


def instance_lines(snapshot: StatsSnapshot) -> list[str]:
    """One summary line per instance that answered or failed (none when no answer named one)."""
    instances = snapshot.instances
    if not instances or [i.name for i in instances] == [UNKNOWN_INSTANCE]:
        return []
    width = max(len(i.name) for i in instances)
    lines = []
    for instance in instances:
        share = instance.answered / snapshot.answered if snapshot.answered else math.nan
        lines.append(
            f"  {instance.name:<{width}}  {instance.answered:>8} answered ({_percent(share)})  "
            f"{instance.failed:>5} failed  p50 {_ms(instance.run.p50)}  p90 {_ms(instance.run.p90)}"
        )
    return [f"Instances ({len(instances)}):", *lines]


def _percent(share: float) -> str:
    return "  -  " if math.isnan(share) else f"{share * 100:4.1f}%"


def _write_report(options: RunOptions, snapshot: StatsSnapshot) -> None:
    assert options.report is not None
    options.report.parent.mkdir(parents=True, exist_ok=True)
    if options.report.suffix.lower() == ".csv":
        write_perf_analyzer_csv(options.report, [perf_analyzer_row(options.concurrency, snapshot)])
    else:
        settings = {
            "url": options.url or "local stack",
            "protocol": options.protocol,
            "model": options.model,
            "mode": options.mode,
            "concurrency": options.concurrency,
            "batch_size": options.batch_size,
            "topk": options.topk,
        }
        write_json_report(options.report, snapshot, settings)


def _ms(seconds: float) -> str:
    return "   -    " if seconds != seconds else f"{seconds * 1000:6.1f} ms"
