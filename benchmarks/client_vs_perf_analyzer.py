"""Our engine against perf_analyzer, same server, same run: throughput, p50 and client CPU.

For each model, one local Triton instance (no Envoy) serves it: the bundled model (about 10 ms
of server time on a CPU core) and a small model built here with about 1 ms of server time, where
any client overhead shows. At each concurrency our engine (in a child process, so its CPU is its
own; its gRPC requests on short-lived streams, `--grpc-calls stream`, then as one unary call
each, its default) and
perf_analyzer (unary calls, its default; then with --streaming) each measure throughput and p50/p90 with the same window and stability
rule, one after the other. While each client runs, its CPU time (utime + stime from
/proc/<pid>/stat) and the server's count of answered requests (Triton's statistics) are sampled;
CPU per request is their ratio over the time the load ran, so start-up (imports, photo
preprocessing, perf_analyzer's own set-up) is left out of both.

At each step our engine (streams) and perf_analyzer (unary) take turns `--repeats` times and
the tables give each figure's median; our engine's unary calls and perf_analyzer's --streaming
are measured once each, for reference.

Targets (issue 12): throughput >= 0.95x perf_analyzer at each concurrency on both models, p50 at
concurrency 1 within 0.1 ms of perf_analyzer's, client CPU per request <= 1.5x.

`--baseline DIR` (another checkout of this repository, e.g. a worktree of an older commit) also
measures that checkout's engine at every step, right before this one, against the same server:
"before" and "after" under the same machine load.

    python benchmarks/client_vs_perf_analyzer.py [--models bundled,1ms] [--concurrency 1,4,16]
        [--window 2] [--stability-percentage 10] [--baseline DIR]

perf_analyzer comes from benchmarks/setup_perf_analyzer.sh. The machine's load average is
printed with each model: on a shared machine, compare only figures from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from perf_analyzer_runner import (
    perf_analyzer_command,
    perf_analyzer_version,
    read_perf_analyzer_rows,
)

SAMPLE_INTERVAL_S = 0.2
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
FAST_MODEL_CLASSES = 102


@dataclass(frozen=True)
class ClientRun:
    images_per_s: float
    p50_ms: float
    p90_ms: float
    cpu_ms_per_request: float
    requests_sampled: int
    server_batch: float = math.nan
    """Requests per model execution at the server while this client ran (dynamic batching)."""
    runs: tuple[float, ...] = ()
    """A median of repeated runs: each run's images/s."""


def write_fast_model(folder: Path) -> Path:
    """A small ONNX classifier with the bundled model's contract (input [N,3,224,224] FP32,
    102 class scores): per-channel means through a linear map and a softmax. Served by our
    repository writer it takes about 1 ms of server time per request on one CPU core."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.normal(size=(3, FAST_MODEL_CLASSES)).astype(np.float32)
    bias = rng.normal(size=(FAST_MODEL_CLASSES,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["means"], axis=1),
            helper.make_node("Gemm", ["means", "weights", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "fast_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [
            helper.make_tensor_value_info(
                "probabilities", TensorProto.FLOAT, ["N", FAST_MODEL_CLASSES]
            )
        ],
        [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "fast.onnx"))
    labels = [f"class {k}" for k in range(FAST_MODEL_CLASSES)]
    (folder / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    return folder


def process_cpu_s(pid: int) -> float | None:
    """utime + stime of a live process, in seconds (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def server_counts(http_url: str, model: str) -> tuple[int, int, int]:
    """(answered requests, total compute-infer ns, model executions) of `model` from Triton's
    statistics."""
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=2) as reply:
        model_stats = json.loads(reply.read())["model_stats"][0]
    stats = model_stats["inference_stats"]
    return (
        int(stats["success"]["count"]),
        int(stats["compute_infer"]["ns"]),
        int(model_stats.get("execution_count", 0)),
    )


def run_sampled(
    command: list[str], env: dict[str, str], http_url: str, model: str
) -> tuple[str, float, int, float]:
    """Run `command`, sampling its CPU and the server's counts; its stdout, the CPU seconds per
    answered request over the time the load ran, the requests in that time, and the requests per
    model execution (how well the server could batch what this client sent)."""
    samples: list[tuple[float, int, int]] = []
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.PIPE, text=True)
        while process.poll() is None:
            cpu = process_cpu_s(process.pid)
            count, _, executions = server_counts(http_url, model)
            if cpu is not None:
                samples.append((cpu, count, executions))
            time.sleep(SAMPLE_INTERVAL_S)
        stderr = process.stderr.read() if process.stderr else ""
        out.seek(0)
        stdout = out.read()
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({process.returncode}): {stderr[-2000:]}")
    start_count = samples[0][1]
    loaded = [k for k in range(1, len(samples)) if samples[k][1] > samples[k - 1][1]]
    if len(loaded) < 2 or samples[loaded[-1]][1] <= start_count:
        return stdout, math.nan, 0, math.nan
    first, last = loaded[0], loaded[-1]
    requests = samples[last][1] - samples[first][1]
    cpu = samples[last][0] - samples[first][0]
    executions = samples[last][2] - samples[first][2]
    return (
        stdout,
        cpu / requests if requests else math.nan,
        requests,
        requests / executions if executions else math.nan,
    )


def median_run(runs: list[ClientRun]) -> ClientRun:
    """Each figure's median over repeated runs of one client (NaN runs left out)."""

    def median(values: list[float]) -> float:
        kept = [v for v in values if not math.isnan(v)]
        return statistics.median(kept) if kept else math.nan

    return ClientRun(
        median([r.images_per_s for r in runs]),
        median([r.p50_ms for r in runs]),
        median([r.p90_ms for r in runs]),
        median([r.cpu_ms_per_request for r in runs]),
        sum(r.requests_sampled for r in runs),
        median([r.server_batch for r in runs]),
        runs=tuple(r.images_per_s for r in runs),
    )


def measure_ours(
    url: str,
    http_url: str,
    model: str,
    concurrency: int,
    args: argparse.Namespace,
    checkout: Path | None = None,
    calls: str = "stream",
) -> ClientRun:
    """Our engine in a child process, its gRPC requests as `calls` (stream or unary);
    `checkout`: import flowerdemo from there instead."""
    command = [
        sys.executable, __file__, "--child", url, model, str(concurrency), str(args.window),
        str(args.stability_percentage), str(args.photos), calls,
    ]  # fmt: skip
    env = dict(os.environ)
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout)
    stdout, cpu, requests, batch = run_sampled(command, env, http_url, model)
    step = json.loads(stdout.strip().splitlines()[-1])
    return ClientRun(
        step["images_per_s"], step["p50_ms"], step["p90_ms"], cpu * 1000, requests, batch
    )


def measure_perf_analyzer(
    url: str,
    http_url: str,
    model: str,
    concurrency: int,
    args: argparse.Namespace,
    streaming: bool = False,
) -> ClientRun:
    """perf_analyzer at one concurrency; `streaming`: its --streaming (requests on one gRPC
    stream per concurrency slot, as ours by default) instead of a unary call each."""
    window_s = args.window
    # perf_analyzer refuses to report a point whose windows never agree; as its own message
    # advises, that point is measured once more with windows twice as long, else left empty.
    for window_ms in (int(window_s * 1000), int(window_s * 2000)):
        with tempfile.TemporaryDirectory() as scratch:
            report = Path(scratch) / "report.csv"
            command, env = perf_analyzer_command(
                url,
                model,
                concurrency,
                report,
                window_ms=window_ms,
                stability_percent=int(args.stability_percentage),
            )
            if streaming:
                command[1:1] = ["--streaming"]
            try:
                _, cpu, requests, batch = run_sampled(command, env, http_url, model)
            except RuntimeError as error:
                print(f"  {error}".rstrip(), file=sys.stderr)
                continue
            (row,) = read_perf_analyzer_rows(report)
        return ClientRun(row.images_per_s, row.p50_ms, row.p90_ms, cpu * 1000, requests, batch)
    return ClientRun(math.nan, math.nan, math.nan, math.nan, 0)


def child(
    url: str,
    model: str,
    concurrency: int,
    window_s: float,
    stability: float,
    photo_count: int,
    calls: str,
) -> int:
    """Our engine's side: one sweep step at `concurrency`, printed as one JSON line."""
    from flowerdemo.core.engine import EngineSettings
    from flowerdemo.core.images import load_images
    from flowerdemo.core.sweep import SweepSettings, sweep_server
    from flowerdemo.resources import sample_images_dir

    # The reduced copy where the package has one (FlowerImage.image), the full photo before.
    photos = [getattr(f, "image", None) or f.rgb for f in load_images(sample_images_dir()).images]
    photos = photos[:photo_count] if photo_count > 0 else photos
    (step,) = asyncio.run(
        sweep_server(
            # An older checkout (--baseline) may predate the choice: it has one way only.
            EngineSettings(url=url, model_name=model, grpc_calls=calls)
            if "grpc_calls" in EngineSettings.__dataclass_fields__
            else EngineSettings(url=url, model_name=model),
            photos,
            SweepSettings((concurrency,), window_s=window_s, tolerance=stability / 100),
        )
    )
    print(
        json.dumps(
            {
                "images_per_s": step.images_per_s,
                "p50_ms": step.latency.p50 * 1000,
                "p90_ms": step.latency.p90 * 1000,
                "stable": step.stable,
            }
        )
    )
    return 0


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def measure_model(label: str, model_dir: Path | None, args: argparse.Namespace) -> list[str]:
    # Imported here, not at the top: the child process (perhaps an older checkout, see
    # --baseline) needs only the engine.
    from flowerdemo.serving.ports import free_port_block
    from flowerdemo.serving.stack import LocalStack, StackSettings

    settings = StackSettings(
        instances=1, with_envoy=False, model=model_dir, base_port=free_port_block(3)
    )
    lines = [f"### {label}", ""]
    print(f"{label}: starting ({load_text()})", file=sys.stderr)
    with LocalStack(settings) as stack:
        url, http_url, model = stack.instance_grpc_url(0), stack.instance_http_url(0), "flowers"
        rows = []
        for concurrency in args.concurrency:
            # One client after the other, step by step, so all see the same machine state.
            row: dict[str, ClientRun | int] = {"c": concurrency}
            if args.baseline is not None:
                row["before"] = measure_ours(
                    url, http_url, model, concurrency, args, args.baseline, calls="unary"
                )
            # The two clients the targets compare take turns, `--repeats` times each: this
            # machine's speed drifts by several percent from one minute to the next.
            ours_runs, theirs_runs = [], []
            for _ in range(args.repeats):
                ours_runs.append(
                    measure_ours(url, http_url, model, concurrency, args, calls="stream")
                )
                theirs_runs.append(measure_perf_analyzer(url, http_url, model, concurrency, args))
            row["stream"], row["pa"] = median_run(ours_runs), median_run(theirs_runs)
            row["unary"] = measure_ours(url, http_url, model, concurrency, args, calls="unary")
            row["pa_stream"] = measure_perf_analyzer(
                url, http_url, model, concurrency, args, streaming=True
            )
            rows.append(row)
            print(f"  c={concurrency}: {row} ({load_text()})", file=sys.stderr)
        count, infer_ns, _ = server_counts(http_url, model)
    lines.append(
        f"server compute per request (Triton statistics, whole run): "
        f"{infer_ns / max(count, 1) / 1e6:.2f} ms; {load_text()} at the end"
    )
    lines.append("")
    variants = [
        ("ours: requests on short-lived gRPC streams (--grpc-calls stream)", "stream"),
        ("ours: one unary gRPC call per request (the default)", "unary"),
    ]
    if args.baseline is not None:
        variants.append(("before (--baseline)", "before"))
    for title, key in variants:
        lines += [
            f"{title}, against perf_analyzer (unary calls, its default; and --streaming):",
            "",
            "| conc | ours img/s | PA img/s | ratio | ours p50 ms | PA p50 ms | p50 diff ms "
            "| ours CPU ms/req | PA CPU ms/req | CPU ratio | server batch ours / PA "
            "| PA --streaming img/s | ratio to it | its p50 ms | its CPU ms/req "
            "| runs img/s ours / PA |",
            "|" + "---|" * 16,
        ]
        for row in rows:
            ours, theirs, streamed = row[key], row["pa"], row["pa_stream"]
            assert isinstance(ours, ClientRun) and isinstance(theirs, ClientRun)
            assert isinstance(streamed, ClientRun)
            lines.append(
                f"| {row['c']} | {ours.images_per_s:.1f} | {theirs.images_per_s:.1f} "
                f"| {ours.images_per_s / theirs.images_per_s:.3f} | {ours.p50_ms:.3f} "
                f"| {theirs.p50_ms:.3f} | {ours.p50_ms - theirs.p50_ms:+.3f} "
                f"| {ours.cpu_ms_per_request:.3f} | {theirs.cpu_ms_per_request:.3f} "
                f"| {ours.cpu_ms_per_request / theirs.cpu_ms_per_request:.2f} "
                f"| {ours.server_batch:.2f} / {theirs.server_batch:.2f} "
                f"| {streamed.images_per_s:.1f} | {ours.images_per_s / streamed.images_per_s:.3f} "
                f"| {streamed.p50_ms:.3f} | {streamed.cpu_ms_per_request:.3f} "
                f"| {_runs(ours)} / {_runs(theirs)} |"
            )
        lines.append("")
    lines.append("")
    return lines


def _runs(run: ClientRun) -> str:
    return ", ".join(f"{v:.0f}" for v in run.runs) or "1 run"


def main() -> int:
    if len(sys.argv) == 9 and sys.argv[1] == "--child":
        url, model, concurrency, window, stability, photo_count, calls = sys.argv[2:]
        return child(
            url, model, int(concurrency), float(window), float(stability), int(photo_count), calls
        )
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="bundled,1ms", help="bundled, 1ms or both")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--window", type=float, default=2.0, help="seconds per measurement window")
    parser.add_argument(
        "--stability-percentage",
        type=float,
        default=10.0,
        help="perf_analyzer's stability rule, for both clients (default 10; a busy machine "
        "may need more)",
    )
    parser.add_argument(
        "--photos",
        type=int,
        default=0,
        help="how many of the bundled photos our engine cycles through (0: all of them); "
        "perf_analyzer sends one input, so 1 compares the clients' own cost on the same "
        "memory footprint",
    )
    parser.add_argument(
        "--fast-model-dir",
        type=Path,
        help="the 1 ms model, written before by write_fast_model (where onnx is not installed)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of our engine (streams) and of perf_analyzer, taking turns, at each step; "
        "the tables give medians (default 3)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of this repository whose engine is measured beside this one",
    )
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; reference: {perf_analyzer_version()}"
    )
    print(
        f"windows {args.window:g} s, stability {args.stability_percentage:g} %, our engine cycles "
        f"{args.photos or 'all'} photo(s), baseline {args.baseline or 'none'}"
    )
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models.split(","):
            if name == "bundled":
                lines += measure_model("bundled model (about 10 ms)", None, args)
            elif name == "1ms":
                folder = args.fast_model_dir or write_fast_model(Path(scratch) / "fast-model")
                lines += measure_model("small model (about 1 ms)", folder, args)
            else:
                parser.error(f"unknown model '{name}': use bundled or 1ms")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
