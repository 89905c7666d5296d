"""Bytes per request and images/s for each wire format, through Envoy and through a slow link.

The same Triton instances (CPU, the bundled model and its flowers_uint8 / flowers_jpeg variants)
sit behind two Envoys started by this script from the same configuration: one plain (loopback:
the network costs nothing, so the rate is bound by compute, the client's and the servers'), one
with Envoy's bandwidth-limit filter pacing everything through it to a simulated link
(`--link-mbit`, default 1000 = 1 Gbit/s). For each wire format our engine keeps `--concurrency`
requests outstanding for `--seconds` after a warm-up.

`--model fast` serves a model of about 1 ms of server time with the bundled model's contract
(benchmarks/client_vs_perf_analyzer.py builds it) instead of the bundled one: the compute-bound
rate is then far above what 1 Gbit/s carries in FP32, as with a GPU behind the link, and the
variants' own server cost (scaling, JPEG decoding) shows.

Bytes per request are measured twice: the client's input payload (what the wire format costs)
and what Envoy received per request on its listener (`downstream_cx_rx_bytes_total` over
`downstream_rq_total`: HTTP/2 framing and headers included). The link cap is the link's bytes
per second over the bytes per request on the wire.

    PYTHONPATH=. python benchmarks/wire.py [--instances 2] [--concurrency 8] [--seconds 8]
        [--link-mbit 1000,100] [--wires fp32,uint8,jpeg] [--batch-size 1] [--model fast]

CPU per image is measured from /proc over each cell (utime + stime): the Triton process trees
(server and Python-backend stubs: scaling and JPEG decoding included), Envoy, and this client.
Unlike the rates, these figures hardly move with the machine's load, so they compare the wire
formats' costs fairly on a busy machine.

Say the machine's load (`uptime`) with the figures: the client shares the cores with Triton.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from flowerdemo.core.engine import ConnectError, EngineSettings, InferenceEngine
from flowerdemo.core.events import InferenceEvent
from flowerdemo.core.images import load_images
from flowerdemo.core.model_spec import WireChoice
from flowerdemo.resources import bundled_model_dir, sample_images_dir
from flowerdemo.serving import envoy as envoy_config
from flowerdemo.serving.ports import free_port_block
from flowerdemo.serving.stack import LocalStack, StackSettings

WIRES: tuple[WireChoice, ...] = ("fp32", "uint8", "jpeg")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(roots: list[int]) -> float:
    """utime + stime of these processes and all their live descendants, in seconds."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    wanted = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in wanted and pid not in wanted:
                wanted.add(pid)
                grew = True
    return sum(times.get(pid, 0.0) for pid in wanted)


def client_cpu_s() -> float:
    own = os.times()
    return own.user + own.system


class BenchEnvoy:
    """One Envoy of ours in front of the stack's instances (gRPC listener and admin only)."""

    def __init__(self, stack: LocalStack, workdir: Path, label: str, kib_s: int | None) -> None:
        first = free_port_block(2)
        self.url = f"127.0.0.1:{first}"
        self.admin = f"127.0.0.1:{first + 1}"
        settings = envoy_config.EnvoySettings(
            grpc_upstreams=tuple(stack.instance_grpc_url(i) for i in range(stack.instance_count)),
            listen=self.url,
            http_listen=None,
            admin_listen=self.admin,
            bandwidth_limit_kib_s=kib_s,
        )
        config = envoy_config.write_config(settings, workdir / f"envoy-{label}.yaml")
        self._log = (workdir / f"envoy-{label}.log").open("w")
        self.process = subprocess.Popen(
            envoy_config.envoy_command(config),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"http://{self.admin}/ready", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"envoy on {self.url} not ready after {timeout_s:g} s")

    def counters(self) -> dict[str, int]:
        """The gRPC listener's downstream byte and request counters."""
        url = f"http://{self.admin}/stats?filter=^http\\.grpc\\.downstream_(cx_rx_bytes_total|rq_total)$"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        values = {}
        for line in text.splitlines():
            name, _, value = line.partition(":")
            values[name.strip().rsplit(".", 1)[-1]] = int(value.strip())
        return values

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@dataclass(frozen=True)
class Measured:
    wire: str
    link: str
    model: str
    payload_bytes: float
    wire_bytes: float
    images_per_s: float
    p50_ms: float
    p90_ms: float
    failed: int
    server_cpu_ms: float
    """Per image: the Triton processes and their stubs."""
    envoy_cpu_ms: float
    client_cpu_ms: float


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def measure(
    envoy: BenchEnvoy,
    link: str,
    wire: WireChoice,
    photos,
    args: argparse.Namespace,
    triton_pids: list[int],
) -> Measured:
    engine = InferenceEngine(
        EngineSettings(url=envoy.url, wire=wire, batch_size=args.batch_size, topk=1), photos
    )
    for attempt in range(50):  # Envoy's first health checks may still be on their way
        try:
            spec = await engine.connect()
            break
        except ConnectError:
            if attempt == 49:
                raise
            await asyncio.sleep(0.2)
    events: list[InferenceEvent] = []
    try:
        await engine.run_automatic(args.concurrency, duration_s=args.warmup)
        before = envoy.counters()
        cpu_before = (tree_cpu_s(triton_pids), tree_cpu_s([envoy.process.pid]), client_cpu_s())
        engine.add_sink(events.append)
        started = time.monotonic()
        await engine.run_automatic(args.concurrency, duration_s=args.seconds)
        elapsed = time.monotonic() - started
        cpu_after = (tree_cpu_s(triton_pids), tree_cpu_s([envoy.process.pid]), client_cpu_s())
        after = envoy.counters()
        payload = engine.mean_request_bytes()
    finally:
        await engine.close()
    answered = [e for e in events if e.ok]
    requests = after["downstream_rq_total"] - before["downstream_rq_total"]
    rx_bytes = after["downstream_cx_rx_bytes_total"] - before["downstream_cx_rx_bytes_total"]
    latencies = [(e.done_at - e.sent_at) * 1000 for e in answered]
    images = sum(len(e.image_indices) for e in answered)
    per_image_ms = [
        (after_s - before_s) * 1000 / images if images else float("nan")
        for before_s, after_s in zip(cpu_before, cpu_after, strict=True)
    ]
    return Measured(
        wire=wire,
        link=link,
        model=spec.name,
        payload_bytes=payload,
        wire_bytes=rx_bytes / requests if requests else float("nan"),
        images_per_s=images / elapsed,
        p50_ms=_percentile(latencies, 50),
        p90_ms=_percentile(latencies, 90),
        failed=len(events) - len(answered),
        server_cpu_ms=per_image_ms[0],
        envoy_cpu_ms=per_image_ms[1],
        client_cpu_ms=per_image_ms[2],
    )


def table(results: list[Measured], links: list[float], args: argparse.Namespace) -> str:
    by = {(r.wire, r.link): r for r in results}
    head = [
        "wire",
        "model",
        "payload B/request",
        "on the wire B/request",
        "compute-bound img/s (loopback, Envoy)",
        "p50 / p90 ms",
        "CPU ms/img: Triton / Envoy / client",
    ]
    for mbit in links:
        name = _link_name(mbit)
        head += [f"{name} cap img/s", f"{name} img/s", f"{name} p50 / p90 ms", f"{name} / compute"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for wire in args.wires:
        base = by.get((wire, "loopback"))
        if base is None:
            continue
        row = [
            wire,
            f"`{base.model}`",
            f"{base.payload_bytes:,.0f}",
            f"{base.wire_bytes:,.0f}",
            f"{base.images_per_s:,.1f}",
            f"{base.p50_ms:.1f} / {base.p90_ms:.1f}",
            f"{base.server_cpu_ms:.2f} / {base.envoy_cpu_ms:.2f} / {base.client_cpu_ms:.2f}",
        ]
        for mbit in links:
            limited = by.get((wire, _link_name(mbit)))
            cap = mbit * 1e6 / 8 / base.wire_bytes * args.batch_size
            if limited is None:
                row += [f"{cap:,.0f}", "-", "-", "-"]
                continue
            row += [
                f"{cap:,.0f}",
                f"{limited.images_per_s:,.1f}",
                f"{limited.p50_ms:.1f} / {limited.p90_ms:.1f}",
                f"{limited.images_per_s / base.images_per_s:.2f}x",
            ]
        lines.append("| " + " | ".join(row) + " |")
    failed = sum(r.failed for r in results)
    lines.append("")
    lines.append(f"failed requests over all runs: {failed}")
    return "\n".join(lines)


def _link_name(mbit: float) -> str:
    return f"{mbit / 1000:g} Gbit/s" if mbit >= 1000 else f"{mbit:g} Mbit/s"


async def run(args: argparse.Namespace) -> int:
    load_before = os.getloadavg()
    photos = [image.image for image in load_images(sample_images_dir()).images]
    links = [float(x) for x in args.link_mbit.split(",") if x.strip()]
    with tempfile.TemporaryDirectory(prefix="flowerdemo-wire-") as folder:
        workdir = Path(folder)
        base = free_port_block(10 * (args.instances - 1) + 3)
        if args.model == "fast":
            from client_vs_perf_analyzer import write_fast_model

            model_dir = write_fast_model(workdir / "fast-model")
        else:
            model_dir = bundled_model_dir()
        stack = LocalStack(
            StackSettings(
                instances=args.instances,
                base_port=base,
                with_envoy=False,
                model=model_dir,
                max_batch_size=32,
            )
        )
        print(f"starting {args.instances} Triton instance(s)...", file=sys.stderr)
        stack.start()
        envoys: list[tuple[str, BenchEnvoy]] = []
        try:
            envoys.append(("loopback", BenchEnvoy(stack, workdir, "loopback", None)))
            for mbit in links:
                kib = envoy_config.link_kib_s(mbit)
                envoys.append((_link_name(mbit), BenchEnvoy(stack, workdir, f"{mbit:g}", kib)))
            for _, envoy in envoys:
                envoy.wait_ready()
            triton_pids = [state.pid for state in stack.states() if state.pid is not None]
            results = []
            for wire in args.wires:
                for link, envoy in envoys:
                    result = await measure(envoy, link, wire, photos, args, triton_pids)
                    print(
                        f"{wire:5} {link:>12}: {result.images_per_s:8.1f} img/s, "
                        f"{result.wire_bytes:10,.0f} B/request on the wire, "
                        f"p50 {result.p50_ms:.1f} ms, failed {result.failed}",
                        file=sys.stderr,
                    )
                    results.append(result)
        finally:
            for _, envoy in envoys:
                envoy.stop()
            stack.stop()
    load = os.getloadavg()
    report = (
        f"Wire formats, {args.model} model, {args.instances} Triton instance(s) (CPU) behind "
        f"Envoy, our engine at "
        f"concurrency {args.concurrency}, batch {args.batch_size}, {args.seconds:g} s per cell "
        f"after {args.warmup:g} s warm-up; {os.cpu_count()} cores, {platform.machine()}; "
        f"load average (1, 5, 15 min) before the run {load_before[0]:.2f}, {load_before[1]:.2f}, "
        f"{load_before[2]:.2f}, after {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}\n\n"
        + table(results, links, args)
        + "\n"
    )
    print()
    print(report, end="")
    if args.output is not None:
        args.output.write_text(report, encoding="utf-8")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("-b", "--batch-size", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--link-mbit", default="1000", help="simulated links, Mbit/s, comma-separated"
    )
    parser.add_argument("--wires", default=",".join(WIRES))
    parser.add_argument(
        "--model",
        choices=("bundled", "fast"),
        default="bundled",
        help="the bundled flower model, or a ~1 ms model (compute far above the link)",
    )
    parser.add_argument("--output", type=Path, help="also write the table here (Markdown)")
    args = parser.parse_args()
    args.wires = [w.strip() for w in args.wires.split(",")]
    unknown = [w for w in args.wires if w not in WIRES]
    if unknown:
        parser.error(f"--wires: unknown {unknown}; choose from {', '.join(WIRES)}")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
