"""How responsive the window stays while it drives the local stack as hard as it can.

Starts a local stack (default 2 Triton instances behind Envoy, free ports), opens the real
window (offscreen unless QT_QPA_PLATFORM says otherwise) and connects it. Then:

1. idle: the connected window with no requests, for a baseline;
2. probe: automatic mode at each concurrency in --probe, through the window's own control, to
   find the rate the stack sustains best;
3. load: automatic mode for --duration seconds at the knee (the smallest probed concurrency
   within 5% of the best rate) and, if different, at the concurrency of the best rate.

In phases 1 and 3 it measures the event loop's lag as timer drift (how much later than its
10 ms interval a Qt PreciseTimer fires), how late a 10 ms asyncio sleep wakes up (stricter: it
also waits behind the asyncio callbacks queued before it, gRPC completions included), and how
often the live panel really refreshed. Target: timer drift p99 under 25 ms under load, chart
refresh at 10 Hz or more.

    python benchmarks/gui_responsiveness.py [--instances 2] [--duration 20]
        [--probe 2,4,8,16,32] [--model-dir DIR] [--servers-nice 10] [--instances-panel closed]

The servers run at the embedded stack's niceness, as in the app, unless --servers-nice says otherwise.
The Instances panel (the stack's instances and per-instance figures) is open, as the window opens
it by default; `--instances-panel closed` measures without it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import qasync
from PySide6.QtCore import QSettings, Qt, QTimer

from flowerdemo.options import RunOptions
from flowerdemo.serving.ports import free_port_block
from flowerdemo.serving.stack import LocalStack, StackSettings
from flowerdemo.ui.app import freeze_startup_objects, make_application, route_qt_messages
from flowerdemo.ui.inference_task import TaskState
from flowerdemo.ui.main_window import EMBEDDED_STACK_NICENESS, MainWindow

TICK_S = 0.010
KNEE_SHARE = 0.95


@dataclass
class Phase:
    name: str
    seconds: float
    sleep_lag_ms: list[float]
    timer_drift_ms: list[float]
    refresh_intervals_ms: list[float]
    refreshes: int
    cpu_s: float
    answered: int = 0
    failed: int = 0
    images_per_s: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    concurrency: int = 0


async def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:g} s")
        await asyncio.sleep(0.05)


async def measure(window: MainWindow, name: str, seconds: float) -> Phase:
    """Event-loop lag, timer drift and refreshes over `seconds` of whatever the window is doing."""
    sleep_lag: list[float] = []
    drift: list[float] = []
    refreshes: list[float] = []
    panel = window.live_panel
    original_show = panel.show_snapshot

    def counting_show(snapshot, now=None):  # type: ignore[no-untyped-def]
        refreshes.append(time.perf_counter())
        original_show(snapshot, now)

    panel.show_snapshot = counting_show  # type: ignore[method-assign]
    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(round(TICK_S * 1000))
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        drift.append((now - last[0] - TICK_S) * 1000.0)
        last[0] = now

    timer.timeout.connect(tick)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    timer.start()
    last[0] = time.perf_counter()
    while time.perf_counter() - start < seconds:
        before = time.perf_counter()
        await asyncio.sleep(TICK_S)
        sleep_lag.append((time.perf_counter() - before - TICK_S) * 1000.0)
    timer.stop()
    elapsed = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    panel.show_snapshot = original_show  # type: ignore[method-assign]
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return Phase(
        name,
        elapsed,
        sleep_lag,
        drift,
        list(np.diff(refreshes) * 1000.0) if len(refreshes) > 1 else [],
        len(refreshes),
        cpu,
    )


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def benchmark(args: argparse.Namespace) -> int:
    base_port = free_port_block(10 * (args.instances - 1) + 3)
    envoy = free_port_block(3)
    settings = StackSettings(
        instances=args.instances,
        base_port=base_port,
        listen=f"127.0.0.1:{envoy}",
        http_listen=f"127.0.0.1:{envoy + 1}",
        admin_listen=f"127.0.0.1:{envoy + 2}",
        model=args.model_dir,
        niceness=args.servers_nice,
    )
    stack = LocalStack(settings)
    print(f"starting {args.instances} Triton instance(s) behind Envoy…", file=sys.stderr)
    await asyncio.to_thread(stack.start)
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory() as scratch:
        window = MainWindow(
            RunOptions(url=stack.grpc_url, concurrency=1),
            QSettings(str(Path(scratch) / "bench.ini"), QSettings.Format.IniFormat),
            watch_stack=stack,
        )
        try:
            window.resize(args.width, args.height)
            window.instances_dock.setVisible(args.instances_panel == "open")
            window.show()
            window.start()
            await wait_for(
                lambda: window.task.state is TaskState.CONNECTED, 60, "connecting the window"
            )
            freeze_startup_objects()  # as the app does once connected
            phases.append(await measure(window, "idle", args.idle))

            # Probe through the window's own concurrency control, as an operator would.
            window.controls.set_mode("auto")
            window.controls.concurrency_spin.setValue(args.probe[0])
            window.controls.run_button.click()
            await wait_for(lambda: window.task.running_auto, 10, "starting automatic mode")
            rates: dict[int, float] = {}
            for concurrency in args.probe:
                window.controls.concurrency_spin.setValue(concurrency)
                await asyncio.sleep(args.probe_s)
                rates[concurrency] = window.task.snapshot().window_images_per_s
                print(
                    f"  probe N={concurrency}: {rates[concurrency]:.0f} images/s", file=sys.stderr
                )
            peak = max(rates, key=lambda n: rates[n])
            # The knee: the fewest outstanding requests that already give (nearly) the top rate.
            knee = min(n for n in rates if rates[n] >= KNEE_SHARE * rates[peak])
            for name, concurrency in (("load, knee", knee), ("load, peak", peak)):
                if name == "load, peak" and peak == knee:
                    break
                window.controls.concurrency_spin.setValue(concurrency)
                await asyncio.sleep(1.0)
                window.task.reset_statistics()
                loaded = await measure(window, f"{name} N={concurrency}", args.duration)
                snapshot = window.task.snapshot()
                loaded.concurrency = concurrency
                loaded.answered = snapshot.answered
                loaded.failed = snapshot.failed
                loaded.images_per_s = snapshot.run_images_per_s
                loaded.p50_ms = snapshot.run.p50 * 1000.0
                loaded.p99_ms = snapshot.run.p99 * 1000.0
                phases.append(loaded)
            if args.screenshot:
                window.grab().save(str(args.screenshot))
        finally:
            window.close()
            await window.wait_closed()
            await asyncio.to_thread(stack.stop)

    print()
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, Qt platform {os.environ['QT_QPA_PLATFORM']}, window "
        f"{args.width}x{args.height}; stack: {args.instances} Triton instance(s) (CPU) behind "
        f"Envoy on this machine, servers at nice {args.servers_nice}; Instances panel "
        f"{args.instances_panel}"
    )
    print("probe (images/s by N): " + ", ".join(f"N={n}: {rate:.0f}" for n, rate in rates.items()))
    for load in phases[1:]:
        print(
            f"{load.name}: {load.answered} answered ({load.failed} failed) in "
            f"{load.seconds:.1f} s = {load.images_per_s:.0f} images/s; request latency p50 "
            f"{load.p50_ms:.1f} ms, p99 {load.p99_ms:.1f} ms"
        )
    print()
    print(
        "| phase | timer drift p50 ms | timer drift p99 ms | asyncio sleep late p50 ms | "
        "asyncio sleep late p99 ms | asyncio late max ms | chart refresh Hz | "
        "refresh interval p99 ms | GUI process CPU % |"
    )
    print("|" + "---|" * 9)
    for phase in phases:
        print(
            f"| {phase.name} | {percentile(phase.timer_drift_ms, 50):.2f} | "
            f"{percentile(phase.timer_drift_ms, 99):.2f} | "
            f"{percentile(phase.sleep_lag_ms, 50):.2f} | "
            f"{percentile(phase.sleep_lag_ms, 99):.2f} | {max(phase.sleep_lag_ms):.2f} | "
            f"{phase.refreshes / phase.seconds:.1f} | "
            f"{percentile(phase.refresh_intervals_ms, 99):.1f} | "
            f"{100.0 * phase.cpu_s / phase.seconds:.0f} |"
        )
    print()
    all_met = True
    for load in phases[1:]:
        drift_p99 = percentile(load.timer_drift_ms, 99)
        refresh_hz = load.refreshes / load.seconds
        met = drift_p99 < 25.0 and refresh_hz >= 10.0
        all_met = all_met and met
        print(
            f"target (timer drift p99 < 25 ms, refresh >= 10 Hz) at {load.name}: "
            f"{'met' if met else 'NOT met'} (drift p99 {drift_p99:.2f} ms, refresh "
            f"{refresh_hz:.1f} Hz; asyncio sleep late p99 "
            f"{percentile(load.sleep_lag_ms, 99):.2f} ms)"
        )
    return 0 if all_met else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds under load")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle baseline")
    parser.add_argument(
        "--probe",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[2, 4, 8, 16, 32],
        help="concurrencies to try, comma-separated",
    )
    parser.add_argument("--probe-s", type=float, default=3.0, help="seconds per probe step")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument(
        "--model-dir", type=Path, help="folder with one .onnx and labels.txt (default: bundled)"
    )
    parser.add_argument("--screenshot", type=Path, help="save the window under load as PNG")
    parser.add_argument(
        "--servers-nice",
        type=int,
        default=EMBEDDED_STACK_NICENESS,
        help="niceness added to the Triton processes (default: the window's embedded stack's, "
        f"{EMBEDDED_STACK_NICENESS}; 0 shows how much lag the servers cause at full priority)",
    )
    parser.add_argument(
        "--instances-panel",
        choices=("open", "closed"),
        default="open",
        help="measure with the Instances panel open (the window's default) or closed",
    )
    args = parser.parse_args()
    route_qt_messages()
    make_application().setQuitOnLastWindowClosed(False)
    result: int = qasync.run(benchmark(args))
    return result


if __name__ == "__main__":
    sys.exit(main())
