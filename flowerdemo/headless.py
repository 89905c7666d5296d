"""`flowerdemo --headless`: the same engine and statistics as the window, on a terminal."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict
from typing import Any, TextIO

from flowerdemo.core.autoscale import AutoscaleController, AutoscalePolicy, ScaleDecision
from flowerdemo.core.engine import ConnectError, InferenceEngine
from flowerdemo.core.events import UNKNOWN_INSTANCE, InferenceEvent
from flowerdemo.core.images import FlowerImage, NoImagesError, display_path, load_images
from flowerdemo.core.load import OpenLoopLoad
from flowerdemo.core.server_stats import ServerStatsReader, poll_server_statistics
from flowerdemo.core.stats import (
    RunStatistics,
    StatsSnapshot,
    perf_analyzer_row,
    write_json_report,
    write_perf_analyzer_csv,
)
from flowerdemo.core.text import clean_server_text
from flowerdemo.core.units import format_ms
from flowerdemo.embedded import ServerTarget, serving_target
from flowerdemo.guard import (
    EXIT_FAILED_REQUESTS,
    EXIT_INTERRUPTED,
    EXIT_NOT_RUN,
    EXIT_OK,
    report_skipped,
    stop_on_signals,
)
from flowerdemo.options import RunOptions
from flowerdemo.plots import AutoscaleSample

STATUS_INTERVAL_S = 0.5


AUTOSCALE_INTERVAL_S = 0.5
"""How often the autoscaler looks at the latency."""
AUTOSCALE_WINDOW_S = 2.0
"""The autoscaler judges the verdict percentile of the last this-many seconds of answers: shorter
than the status window, so it reacts within seconds of the budget being crossed."""
TIMELINE_INTERVAL_S = 0.5
"""How often the autoscale benchmarks' timeline is sampled (record_autoscale_timeline)."""
SERVER_STATS_INTERVAL_S = 1.0


def run_headless(
    options: RunOptions,
    out: TextIO | None = None,
    err: TextIO | None = None,
    *,
    stack_settings: Any = None,
) -> int:
    """0: every request answered; 1: some failed; 2: nothing could be run (the reason is printed).
    Ctrl+C and SIGTERM end a run the normal way: outstanding requests finish and are counted,
    the summary is printed and the report written.

    `stack_settings` (serving.stack.StackSettings) places the embedded stack (tests, benchmarks)."""
    try:
        return asyncio.run(_run(options, out or sys.stdout, err or sys.stderr, stack_settings))
    except KeyboardInterrupt:
        # Only before the run: once it runs, Ctrl+C and SIGTERM end it with its summary.
        print(
            "flowerdemo: interrupted before the run started; nothing was sent",
            file=err or sys.stderr,
        )
        return EXIT_INTERRUPTED


class _Run:
    """What one headless run owns besides the engine: statistics, background tasks, decisions."""

    def __init__(self, options: RunOptions, target: ServerTarget, out: TextIO) -> None:
        self.options = options
        self.target = target
        self.out = out
        self.statistics = RunStatistics(
            budget_s=options.budget_ms / 1000, percentile=options.percentile
        )
        self.open_loop: OpenLoopLoad | None = None
        self.controller: AutoscaleController | None = None
        limits = options.autoscale_limits()
        if limits is not None and target.stack is not None:
            self.controller = AutoscaleController(
                AutoscalePolicy(
                    minimum=limits[0],
                    maximum=limits[1],
                    budget_s=options.budget_ms / 1000,
                    percentile=options.percentile,
                )
            )
        self.server_reader: ServerStatsReader | None = None
        if target.stack is not None or options.server_urls:
            self.server_reader = ServerStatsReader(
                options.server_urls,
                options.model,
                protocol="grpc" if target.stack is not None else options.protocol,
            )
        self.tasks: list[asyncio.Future[None]] = []
        self.stop_requested = False
        self.stop_load: Callable[[], None] | None = None
        """Ends the load that runs now (closed or open loop) the normal way."""

    def request_stop(self) -> None:
        """Ctrl+C or SIGTERM: send nothing new; outstanding requests finish and are counted."""
        self.stop_requested = True
        if self.stop_load is not None:
            self.stop_load()

    @property
    def delayed(self) -> int:
        return self.open_loop.delayed if self.open_loop is not None else 0

    def start_background(self) -> None:
        if self.server_reader is not None:
            urls = self._stack_instance_urls if self.target.stack is not None else None
            self.tasks.append(
                asyncio.ensure_future(
                    poll_server_statistics(
                        self.server_reader,
                        self.statistics,
                        interval_s=SERVER_STATS_INTERVAL_S,
                        urls=urls,
                    )
                )
            )
        if self.controller is not None:
            self.tasks.append(asyncio.ensure_future(self._autoscale()))

    async def stop_background(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            # Each loop keeps going through its own errors; whatever is left must not turn the
            # run's summary into a traceback.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.server_reader is not None:
            # A last reading, so the run's split covers its final requests.
            with contextlib.suppress(Exception):
                self.statistics.record_server(await self.server_reader.read())
            await self.server_reader.close()

    async def _stack_instance_urls(self) -> list[str]:
        stack = self.target.stack
        assert stack is not None
        states = await asyncio.to_thread(stack.states)
        return [f"127.0.0.1:{s.grpc_port}" for s in states if s.state in ("ready", "draining")]

    async def _autoscale(self) -> None:
        stack, controller = self.target.stack, self.controller
        assert stack is not None and controller is not None
        percentile = controller.policy.percentile

        def report(decision: ScaleDecision) -> None:
            print(
                f"{_clear_line(self.out)}Autoscale at "
                f"{decision.at - self.statistics.started_at:.1f} s: {decision.reason}",
                file=self.out,
                flush=True,
            )

        await drive_autoscale(
            stack,
            controller,
            lambda: self.statistics.recent_latency(percentile, AUTOSCALE_WINDOW_S),
            report,
            on_error=lambda error: print(
                f"Autoscale: no change this time ({error})", file=self.out, flush=True
            ),
        )


async def drive_autoscale(
    stack: Any,
    controller: AutoscaleController,
    latency_s: Callable[[], float],
    on_decision: Callable[[ScaleDecision], None],
    *,
    on_error: Callable[[Exception], None] | None = None,
    interval_s: float = AUTOSCALE_INTERVAL_S,
) -> None:
    """Until cancelled: every `interval_s`, show the controller the latency (`latency_s()`, NaN
    when nothing was answered) and the stack's ready and target counts, and apply what it
    decides with `stack.scale_to` (LocalStack's; it returns at once, the supervisor works)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            states = await asyncio.to_thread(stack.states)
            target = getattr(stack, "target_instances", None)
        except Exception as error:  # a stack shutting down: no decision this time
            if on_error is not None:
                on_error(error)
            continue
        ready = sum(1 for s in states if s.state == "ready")
        latency = latency_s()
        decision = controller.observe(
            time.monotonic(),
            None if math.isnan(latency) else latency,
            ready,
            target_instances=target if isinstance(target, int) else None,
        )
        if decision is None:
            continue
        on_decision(decision)
        try:
            await asyncio.to_thread(stack.scale_to, decision.target)
        except Exception as error:  # the stack says why; the run goes on with what it has
            if on_error is not None:
                on_error(error)


async def record_autoscale_timeline(
    stack: Any,
    statistics: RunStatistics,
    engine: InferenceEngine,
    started: float,
    samples: list[AutoscaleSample],
    *,
    interval_s: float = TIMELINE_INTERVAL_S,
) -> None:
    """Until cancelled: every `interval_s`, append what an autoscale chart draws (the verdict
    latency, the stack's ready and target counts, N and throughput) to `samples`; the
    autoscale benchmarks (CPU and GPU) share it."""
    while True:
        await asyncio.sleep(interval_s)
        snapshot = statistics.snapshot()
        states = await asyncio.to_thread(stack.states)
        samples.append(
            AutoscaleSample(
                t_s=time.monotonic() - started,
                concurrency=engine.concurrency,
                p90_ms=snapshot.window_verdict_s * 1000,
                ready=sum(1 for s in states if s.state == "ready"),
                target=stack.target_instances,
                images_per_s=snapshot.window_images_per_s,
            )
        )


async def ramp_with_autoscale(
    stack: Any,
    engine: InferenceEngine,
    statistics: RunStatistics,
    steps: Sequence[tuple[int, float]],
    samples: list[AutoscaleSample],
    *,
    started: float,
    controller: AutoscaleController | None = None,
    on_step: Callable[[float, int], None] = lambda at, concurrency: None,
    on_decision: Callable[[ScaleDecision], None] = lambda decision: None,
    alongside: Sequence[Coroutine[Any, Any, None]] = (),
) -> StatsSnapshot:
    """The autoscale benchmarks' run (CPU and GPU): `engine` (connected) keeps each
    (concurrency, seconds) of `steps` outstanding in turn while the timeline is recorded into
    `samples` and, with a `controller`, autoscale drives `stack`; the coroutines in `alongside`
    run until the ramp ends. Stops the load and returns the run's statistics."""
    percentile = controller.policy.percentile if controller is not None else 90
    tasks = [
        asyncio.ensure_future(
            record_autoscale_timeline(stack, statistics, engine, started, samples)
        ),
        *(asyncio.ensure_future(work) for work in alongside),
    ]
    if controller is not None:
        tasks.append(
            asyncio.ensure_future(
                drive_autoscale(
                    stack,
                    controller,
                    lambda: statistics.recent_latency(percentile, AUTOSCALE_WINDOW_S),
                    on_decision,
                )
            )
        )
    load = asyncio.ensure_future(engine.run_automatic(steps[0][0]))
    try:
        for concurrency, seconds in steps:
            engine.set_concurrency(concurrency)
            on_step(time.monotonic() - started, concurrency)
            await asyncio.sleep(seconds)
    finally:
        engine.stop()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(asyncio.CancelledError):
            await load
    return statistics.snapshot()


async def _run(options: RunOptions, out: TextIO, err: TextIO, stack_settings: Any) -> int:
    try:
        image_set = load_images(options.images_dir, labels=options.class_names())
    except NoImagesError as error:
        print(f"flowerdemo: {error}", file=err)
        return 2
    report_skipped(image_set.problems, err, "flowerdemo")
    images = image_set.images

    with serving_target(options, err, stack_settings) as target:
        if target is None:
            return 2
        url = target.url
        engine = InferenceEngine(options.engine_settings(url), [image.image for image in images])
        run = _Run(options, target, out)
        statistics = run.statistics
        engine.add_sink(statistics.record)
        try:
            with stop_on_signals(run.request_stop):
                try:
                    spec = await engine.connect()
                except ConnectError as error:
                    print(f"flowerdemo: {error}", file=err)
                    return EXIT_NOT_RUN
                calls = f", {options.grpc_calls} calls" if options.protocol == "grpc" else ""
                print(
                    f"Connected to {url} ({options.protocol}{calls}): {spec.describe()}; wire "
                    f"{spec.wire}, {engine.mean_request_bytes():,.0f} bytes a request",
                    file=out,
                )
                statistics.reset()
                run.start_background()
                try:
                    if run.stop_requested:
                        pass
                    elif options.mode == "auto":
                        await _run_automatic(engine, run, len(images))
                    else:
                        await _classify_each(engine, images, run)
                finally:
                    await run.stop_background()
        finally:
            await engine.close()
        snapshot = statistics.snapshot(in_flight=engine.in_flight, delayed=run.delayed)
        if run.stop_requested:
            print("Stopped early: the summary covers what was sent until then.", file=out)
        _print_summary(snapshot, options, out)
        if run.controller is not None:
            _print_decisions(run.controller, statistics.started_at, target, out)
        if options.admin is not None:
            _print_admin(options.admin, out)
        if options.report is not None:
            try:
                _write_report(options, snapshot, run)
            except OSError as error:
                print(
                    f"flowerdemo: the report {display_path(options.report)} could not be "
                    f"written ({error.strerror or error}); the summary above is the run's result.",
                    file=err,
                )
                return EXIT_NOT_RUN
            print(f"Report written to {options.report}", file=out)
        return EXIT_OK if snapshot.failed == 0 and snapshot.answered > 0 else EXIT_FAILED_REQUESTS


async def _run_automatic(engine: InferenceEngine, run: _Run, image_count: int) -> None:
    options, out = run.options, run.out
    if options.request_rate is not None:
        run.open_loop = OpenLoopLoad(
            engine, options.request_rate, image_count, poisson=options.poisson
        )
        open_loop = run.open_loop
        stop = open_loop.stop
        load = open_loop.run(duration_s=options.duration_s)
    else:
        stop = engine.stop
        load = engine.run_automatic(options.concurrency, duration_s=options.duration_s)
    run.stop_load = stop
    reporter = asyncio.ensure_future(_report_status(engine, run))
    try:
        await load
    finally:
        reporter.cancel()
        run.stop_load = None
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        if out.isatty():
            print(file=out)


async def _report_status(engine: InferenceEngine, run: _Run) -> None:
    out = run.out
    interactive = out.isatty()
    ticks = 0
    while True:
        await asyncio.sleep(STATUS_INTERVAL_S)
        ticks += 1
        line = status_line(run.statistics.snapshot(in_flight=engine.in_flight, delayed=run.delayed))
        if interactive:
            print(f"\r{line}\x1b[K", end="", file=out, flush=True)
        elif ticks % 4 == 0:  # a log file gets one line every two seconds
            print(line, file=out, flush=True)


def _clear_line(out: TextIO) -> str:
    return "\r\x1b[K" if out.isatty() else ""


async def _classify_each(
    engine: InferenceEngine, images: tuple[FlowerImage, ...], run: _Run
) -> None:
    """Interactive mode without a window: one request per photo, in order, one line each."""
    for index, image in enumerate(images):
        if run.stop_requested:
            return
        event = await engine.classify([index])
        print(describe_event(event, image), file=run.out)


def describe_event(event: InferenceEvent, image: FlowerImage) -> str:
    if not event.ok:
        return f"{image.name}: FAILED ({event.error})"
    labels = ", ".join(f"{c.label} {c.score:.2f}" for c in event.topk[0])
    mark = ""
    if image.truth is not None and event.topk[0]:
        mark = " [correct]" if event.topk[0][0].index == image.truth else " [wrong]"
    return f"{image.name}: {labels} ({format_ms(event.latency_s)}){mark}"


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
    server = snapshot.run_server
    if server is not None:
        print(
            f"Server side ({server.servers} instance(s), {server.requests} requests): "
            f"queue {_ms(server.queue_s).strip()}, compute input {_ms(server.compute_input_s).strip()}, "
            f"infer {_ms(server.compute_infer_s).strip()}, output {_ms(server.compute_output_s).strip()}",
            file=out,
        )
    if options.request_rate is not None:
        shape = "Poisson" if options.poisson else "constant"
        print(
            f"Open loop: {options.request_rate:g} requests/s ({shape}); "
            f"{snapshot.delayed} sent later than scheduled",
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


def _print_decisions(
    controller: AutoscaleController, started_at: float, target: ServerTarget, out: TextIO
) -> None:
    decisions = controller.decisions
    ready = "?"
    if target.stack is not None:
        ready = str(sum(1 for s in target.stack.states() if s.state == "ready"))
    print(
        f"Autoscale {controller.policy.minimum}:{controller.policy.maximum}: "
        f"{len(decisions)} decision(s), {ready} instance(s) ready at the end",
        file=out,
    )
    for decision in decisions:
        print(
            f"  {decision.at - started_at:7.1f} s  {decision.before} -> {decision.target}  "
            f"{decision.reason}",
            file=out,
        )


def _print_admin(admin: str, out: TextIO) -> None:
    """Each upstream host as Envoy's admin interface sees it (a stack this run may not own)."""
    try:
        from flowerdemo.serving.admin import AdminError, read_upstream_hosts
    except ImportError as error:
        print(f"Envoy admin at {admin}: cannot be read here ({error})", file=out)
        return
    try:
        hosts = read_upstream_hosts(admin, 2.0)
    except (AdminError, OSError, ValueError) as error:  # optional: say why and go on
        print(
            f"Envoy admin at {admin}: no instance list ({clean_server_text(str(error))})", file=out
        )
        return
    print(f"Envoy admin at {admin}: {len(hosts)} upstream host(s)", file=out)
    for host in hosts:
        health = "healthy" if host.healthy else "UNHEALTHY " + ",".join(host.health_flags)
        print(
            f"  {clean_server_text(host.cluster):<14} {clean_server_text(host.address):<22} "
            f"{clean_server_text(host.instance):<12} {clean_server_text(health):<24} "
            f"{clean_server_text(host.eds_status):<10} calls {host.rq_total} "
            f"(errors {host.rq_error})",
            file=out,
        )


def _write_report(options: RunOptions, snapshot: StatsSnapshot, run: _Run) -> None:
    assert options.report is not None
    options.report.parent.mkdir(parents=True, exist_ok=True)
    if options.report.suffix.lower() == ".csv":
        write_perf_analyzer_csv(
            options.report,
            [
                perf_analyzer_row(
                    0 if options.request_rate is not None else options.concurrency,
                    snapshot,
                    request_rate=options.request_rate,
                )
            ],
        )
    else:
        settings = {
            "url": options.url or "local stack",
            "protocol": options.protocol,
            "grpc_calls": options.grpc_calls if options.protocol == "grpc" else None,
            "model": options.model,
            "mode": options.mode,
            "concurrency": options.concurrency,
            "batch_size": options.batch_size,
            "topk": options.topk,
            "request_rate": options.request_rate,
            "poisson": options.poisson,
            "budget_ms": options.budget_ms,
            "percentile": options.percentile,
            "autoscale": options.autoscale_limits(),
        }
        extra: dict[str, Any] = {}
        if run.controller is not None:
            extra["autoscale_decisions"] = [
                {**asdict(d), "at": d.at - run.statistics.started_at}
                for d in run.controller.decisions
            ]
        write_json_report(options.report, snapshot, settings, extra=extra)


def _ms(seconds: float) -> str:
    """A latency in a fixed-width summary column."""
    return format_ms(seconds, width=9)
