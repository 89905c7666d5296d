"""Our engine against perf_analyzer, same server, same run.

One local Triton instance (no Envoy) serves the bundled model; at each concurrency our engine
and perf_analyzer each measure throughput and p50/p90 latency with the same window and stability
rule; the table gives ours / perf_analyzer's. Target: throughput ratio >= 0.95 everywhere.

    python benchmarks/client_vs_perf_analyzer.py [--concurrency 1,4,16] [--window 2]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
from pathlib import Path

from perf_analyzer_runner import perf_analyzer_version, run_perf_analyzer
from PIL import Image

from flowerdemo.core.engine import EngineSettings
from flowerdemo.core.images import load_images
from flowerdemo.core.sweep import SweepSettings, SweepStep, parse_concurrency_range, sweep_server
from flowerdemo.resources import sample_images_dir
from flowerdemo.serving.stack import LocalStack, StackSettings


def photos() -> list[Image.Image]:
    return [image.image for image in load_images(sample_images_dir()).images]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--window", type=float, default=2.0, help="seconds per measurement window")
    parser.add_argument(
        "--model-dir", type=Path, help="folder with one .onnx and labels.txt (default: bundled)"
    )
    parser.add_argument("--base-port", type=int, default=18000)
    args = parser.parse_args()
    concurrencies = parse_concurrency_range(args.concurrency)

    settings = StackSettings(
        instances=1, with_envoy=False, model=args.model_dir, base_port=args.base_port
    )
    print(
        f"machine: {platform.node()} {platform.machine()}, Python {platform.python_version()}; reference: {perf_analyzer_version()}"
    )
    with LocalStack(settings) as stack:
        url = stack.instance_grpc_url(0)
        print(
            f"server: one Triton instance at {url}, model {settings.model_name}, dynamic batching up to {settings.max_batch_size}"
        )
        ours: dict[int, SweepStep] = {}
        theirs = {}
        for concurrency in concurrencies:
            # Alternate the two clients step by step, so both see the same machine state.
            (step,) = asyncio.run(
                sweep_server(
                    EngineSettings(url=url, model_name=settings.model_name),
                    photos(),
                    SweepSettings((concurrency,), window_s=args.window),
                )
            )
            ours[concurrency] = step
            rows, commands = run_perf_analyzer(
                url, settings.model_name, [concurrency], window_ms=int(args.window * 1000)
            )
            theirs[concurrency] = rows[0]
            print(f"  measured c={concurrency}: {commands[0]}", file=sys.stderr)

    print()
    header = "| conc | ours img/s | perf_analyzer img/s | ratio | ours p50 ms | PA p50 ms | ours p90 ms | PA p90 ms |"
    print(header)
    print("|" + "---|" * 8)
    worst = float("inf")
    for concurrency in concurrencies:
        step, row = ours[concurrency], theirs[concurrency]
        ratio = step.images_per_s / row.images_per_s if row.images_per_s else float("nan")
        worst = min(worst, ratio)
        print(
            f"| {concurrency} | {step.images_per_s:.1f} | {row.images_per_s:.1f} | {ratio:.3f} | "
            f"{step.latency.p50 * 1000:.2f} | {row.p50_ms:.2f} | {step.latency.p90 * 1000:.2f} | {row.p90_ms:.2f} |"
        )
    print(f"\nlowest throughput ratio: {worst:.3f} (target >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
