"""Scaling the local stack live under load: nothing lost, and how soon Envoy uses the new set.

One stack (CPU Triton instances behind Envoy, the bundled model, endpoints from files Envoy
watches) serves the engine in automatic mode with N requests outstanding (16 by default) while it
goes 1 -> 2 -> 3 instances, then 3 -> 1, then 1 -> 2, one of the two is SIGKILLed and then
restarted. For each phase: requests sent, answered and failed, throughput and p90; for each
change, how long until Envoy used the new set: the first answer attributed to an added (or
restarted) instance (the x-flowerdemo-instance header Envoy adds), or the last answer from a
removed or killed one. With 3 instances under round robin, each instance's share of the answers,
from the header and from Envoy's admin counters. Automatic restart is off here, so the kill phase
lasts as long as asked; the supervisor's own restart is measured by tests/test_serving_scale.py.

    python benchmarks/instances.py [--concurrency 16] [--phase-s 6]

Prints a table; the machine's load (uptime) is printed with it, since other work on a small
machine changes every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import os
import time
from dataclasses import dataclass, field

from flowerdemo.core.engine import EngineSettings, InferenceEngine
from flowerdemo.core.events import InferenceEvent
from flowerdemo.core.images import load_images
from flowerdemo.resources import sample_images_dir
from flowerdemo.serving.admin import read_upstream_hosts
from flowerdemo.serving.ports import free_port_block
from flowerdemo.serving.stack import LocalStack, StackSettings


@dataclass
class Phase:
    name: str
    begin: float
    end: float = math.nan


@dataclass
class Change:
    what: str
    at: float
    watch: str
    """The instance whose traffic shows Envoy took the change."""
    appears: bool
    """True: wait for its first answer; False: its last answer."""
    ready_at: float = math.nan
    """When the stack reported the change done (instance ready and healthy in Envoy, or
    stopped)."""
    note: str = ""


@dataclass
class Run:
    events: list[InferenceEvent] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    admin_shares: dict[str, int] = field(default_factory=dict)


def p90_ms(latencies: list[float]) -> float:
    if not latencies:
        return math.nan
    ordered = sorted(latencies)
    return 1000 * ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]


def _seconds(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}s"


def _wait_ejected(stack: LocalStack, name: str, timeout: float) -> float:
    """When Envoy's admin first shows `name` out of the gRPC cluster's rotation (NaN if not)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hosts = read_upstream_hosts(stack.settings.admin_listen, 1.0, cluster="triton_grpc")
        if any(h.instance == name and not h.healthy for h in hosts):
            return time.monotonic()
        time.sleep(0.01)
    return math.nan


def _admin_counts(stack: LocalStack) -> dict[str, int]:
    hosts = read_upstream_hosts(stack.settings.admin_listen, 2.0, cluster="triton_grpc")
    return {h.instance: h.rq_total for h in hosts}


async def _settled(stack: LocalStack) -> float:
    assert await asyncio.to_thread(stack.wait_settled, 60), [s.state for s in stack.states()]
    return time.monotonic()


async def measure(stack: LocalStack, concurrency: int, phase_s: float) -> tuple[Run, int]:
    photos = [image.image for image in load_images(sample_images_dir()).images]
    engine = InferenceEngine(EngineSettings(url=stack.grpc_url, request_timeout_s=30), photos)
    run = Run()
    engine.add_sink(run.events.append)
    await engine.connect()

    def phase(name: str) -> None:
        now = time.monotonic()
        if run.phases:
            run.phases[-1].end = now
        run.phases.append(Phase(name, now))

    task = asyncio.ensure_future(engine.run_automatic(concurrency))
    try:
        phase("1 instance")
        await asyncio.sleep(phase_s)
        for count in (2, 3):
            phase(f"{count - 1} -> {count} (starting)")
            change = Change(f"add ({count - 1} -> {count})", time.monotonic(), "", True)
            change.watch = await asyncio.to_thread(stack.add_instance)
            change.ready_at = await _settled(stack)
            run.changes.append(change)
            phase(f"{count} instances")
            before = await asyncio.to_thread(_admin_counts, stack)
            await asyncio.sleep(phase_s)
        after = await asyncio.to_thread(_admin_counts, stack)
        run.admin_shares = {name: after[name] - before.get(name, 0) for name in after}

        phase("3 -> 1 (draining)")
        at = time.monotonic()
        await asyncio.to_thread(stack.scale_to, 1)
        stopped_at = await _settled(stack)
        for name in ("triton-1", "triton-2"):
            run.changes.append(Change(f"remove {name} (3 -> 1)", at, name, False, stopped_at))
        phase("1 instance again")
        await asyncio.sleep(phase_s)

        phase("1 -> 2 (starting)")
        change = Change("add (1 -> 2)", time.monotonic(), "", True)
        change.watch = await asyncio.to_thread(stack.add_instance)
        change.ready_at = await _settled(stack)
        run.changes.append(change)
        phase("2 instances again")
        await asyncio.sleep(phase_s)

        victim = change.watch
        phase(f"{victim} killed")
        killed = Change(f"kill {victim} (SIGKILL)", time.monotonic(), victim, False)
        await asyncio.to_thread(stack.kill_instance, victim)
        run.changes.append(killed)
        # Envoy takes it out (outlier detection on the refused connections, or the health check).
        ejected = await asyncio.to_thread(_wait_ejected, stack, victim, phase_s)
        killed.ready_at = ejected
        killed.note = "done: Envoy's admin shows it ejected"
        await asyncio.sleep(max(0.0, phase_s - (time.monotonic() - killed.at)))

        phase(f"{victim} restarting")
        restart = Change(f"restart {victim}", time.monotonic(), victim, True)
        await asyncio.to_thread(stack.restart_instance, victim)
        restart.ready_at = await _settled(stack)
        run.changes.append(restart)
        phase("2 instances after restart")
        await asyncio.sleep(phase_s)
        run.phases[-1].end = time.monotonic()
    finally:
        engine.stop()
        await asyncio.wait_for(task, timeout=60)
        await engine.close()
    return run, engine.sent


def report(run: Run, sent_total: int, concurrency: int, load: str) -> str:
    events = run.events
    lines = [
        f"Instances under load: automatic mode, N={concurrency}, CPU, bundled model, through "
        f"Envoy (round robin, endpoints from files, never restarted)",
        f"machine: {os.cpu_count()} cores; load average before/after: {load}",
        "",
        f"{'phase':<28}{'s':>5}{'sent':>7}{'answered':>10}{'failed':>8}{'img/s':>8}{'p90 ms':>8}"
        "  answered by",
    ]
    for phase in run.phases:
        sent = sum(1 for e in events if phase.begin <= e.sent_at < phase.end)
        done = [e for e in events if phase.begin <= e.done_at < phase.end]
        answered = [e for e in done if e.ok]
        failed = len(done) - len(answered)
        span = phase.end - phase.begin
        by = collections.Counter(e.instance for e in answered)
        lines.append(
            f"{phase.name:<28}{span:5.1f}{sent:7d}{len(answered):10d}{failed:8d}"
            f"{len(answered) / span:8.1f}{p90_ms([e.latency_s for e in answered]):8.1f}  "
            + ", ".join(f"{name} {count}" for name, count in sorted(by.items()))
        )
    answered_total = sum(1 for e in events if e.ok)
    failed_total = sum(1 for e in events if not e.ok)
    lines.append(
        f"{'whole run':<28}{'':>5}{sent_total:7d}{answered_total:10d}{failed_total:8d}"
        f"   (sent == answered + failed: {sent_total == answered_total + failed_total})"
    )
    lines += [
        "",
        f"{'change':<28}{'done':>8}{'routed':>9}{'answered':>10}  (seconds after the change; "
        "routed: first/last request Envoy sent it, by send time)",
    ]
    ordered = sorted(run.changes, key=lambda c: c.at)
    for change in ordered:
        # Names are reused (a slot freed by a removal is taken by the next add): look only up to
        # the next change.
        later = [c.at for c in ordered if c.at > change.at]
        until = min(later) if later else math.inf
        mine = [
            e
            for e in events
            if e.ok and e.instance == change.watch and change.at - 60 <= e.sent_at < until
        ]
        if change.appears:
            mine = [e for e in mine if e.sent_at >= change.at]
            routed = min((e.sent_at for e in mine), default=math.nan) - change.at
            answered = min((e.done_at for e in mine), default=math.nan) - change.at
            what = f"first, {change.watch}"
        else:
            routed = max((e.sent_at for e in mine), default=math.nan) - change.at
            answered = max((e.done_at for e in mine), default=math.nan) - change.at
            what = f"last, {change.watch}"
        done = change.ready_at - change.at
        note = f"; {change.note}" if change.note else ""
        lines.append(
            f"{_seconds(done):>8}{_seconds(routed):>9}{_seconds(answered):>10}  ({what}{note})"
        )
        lines[-1] = f"{change.what:<28}" + lines[-1]
    three = next(p for p in run.phases if p.name == "3 instances")
    answered = [e for e in events if e.ok and three.begin <= e.done_at < three.end]
    by = collections.Counter(e.instance for e in answered)
    total = sum(by.values())
    admin_total = sum(run.admin_shares.values()) or 1
    lines += ["", "Attribution with 3 instances, round robin (share of answers in that phase):"]
    for name in sorted(set(by) | set(run.admin_shares)):
        lines.append(
            f"  {name:<10} header {by.get(name, 0):6d} = {100 * by.get(name, 0) / total:5.1f} %"
            f"   Envoy admin rq_total {run.admin_shares.get(name, 0):6d} = "
            f"{100 * run.admin_shares.get(name, 0) / admin_total:5.1f} %"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--phase-s", type=float, default=6.0)
    args = parser.parse_args()
    base = free_port_block(33)  # room for instances 0-3
    envoy = free_port_block(3)
    settings = StackSettings(
        instances=1,
        base_port=base,
        listen=f"127.0.0.1:{envoy}",
        http_listen=f"127.0.0.1:{envoy + 1}",
        admin_listen=f"127.0.0.1:{envoy + 2}",
        restart=False,
    )
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    with LocalStack(settings) as stack:
        envoy_pid = stack.envoy_pid()
        run, sent = asyncio.run(measure(stack, args.concurrency, args.phase_s))
        assert stack.envoy_pid() == envoy_pid, "Envoy was restarted"
    load_after = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(report(run, sent, args.concurrency, f"{load_before} / {load_after}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
