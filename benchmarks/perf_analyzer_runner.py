"""Running the real perf_analyzer from the benchmarks, and reading its CSV."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-perf"


@dataclass(frozen=True)
class PerfAnalyzerRow:
    concurrency: int
    images_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float


def find_perf_analyzer() -> tuple[Path, dict[str, str]]:
    binary = VENV / "bin" / "perf_analyzer"
    if not binary.is_file():
        raise SystemExit(
            "perf_analyzer is not installed: run benchmarks/setup_perf_analyzer.sh first"
        )
    runtime_libs = sorted(VENV.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [*(str(p) for p in runtime_libs), env.get("LD_LIBRARY_PATH", "")]
    )
    return binary, env


def perf_analyzer_version() -> str:
    return "perf_analyzer from tritonclient 2.51.0"


def run_perf_analyzer(
    url: str,
    model: str,
    concurrencies: list[int],
    *,
    protocol: str = "grpc",
    batch_size: int = 1,
    window_ms: int = 2000,
    stability_percent: int = 10,
    max_trials: int = 10,
) -> tuple[list[PerfAnalyzerRow], list[str]]:
    """One perf_analyzer run over `concurrencies`; its rows and the exact command."""
    rows: list[PerfAnalyzerRow] = []
    commands: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        for concurrency in concurrencies:
            # perf_analyzer refuses to report a point whose windows never agree; as its own
            # message advises, that point is measured once more with windows twice as long.
            for interval in (window_ms, 2 * window_ms):
                report = Path(scratch) / f"c{concurrency}-{interval}.csv"
                command, env = perf_analyzer_command(
                    url, model, concurrency, report,
                    protocol=protocol, batch_size=batch_size, window_ms=interval,
                    stability_percent=stability_percent, max_trials=max_trials,
                )  # fmt: skip
                commands.append(" ".join(["perf_analyzer", *command[1:-2]]))
                result = subprocess.run(
                    command, env=env, capture_output=True, text=True, timeout=600
                )
                if result.returncode == 0 and report.is_file():
                    rows.extend(read_perf_analyzer_rows(report))
                    break
            else:
                # Reported as a gap (NaN), not as a number perf_analyzer did not stand behind.
                print(
                    f"perf_analyzer: no stable measurement at concurrency {concurrency}, "
                    "even with windows twice as long; the point is left empty",
                    file=sys.stderr,
                )
                rows.append(PerfAnalyzerRow(concurrency, math.nan, math.nan, math.nan, math.nan))
    return rows, commands


def perf_analyzer_command(
    url: str,
    model: str,
    concurrency: int,
    report: Path,
    *,
    protocol: str = "grpc",
    batch_size: int = 1,
    window_ms: int = 2000,
    stability_percent: int = 10,
    max_trials: int = 10,
) -> tuple[list[str], dict[str, str]]:
    """The command (its last two items: `-f REPORT`) and environment of one perf_analyzer run."""
    binary, env = find_perf_analyzer()
    command = [
        str(binary), "-m", model, "-u", url, "-i", protocol, "-b", str(batch_size),
        "--concurrency-range", f"{concurrency}:{concurrency}",
        "--measurement-interval", str(window_ms),
        "--stability-percentage", str(stability_percent),
        "--max-trials", str(max_trials),
        "--percentile", "90",
        "-f", str(report),
    ]  # fmt: skip
    return command, env


def read_perf_analyzer_rows(path: Path) -> list[PerfAnalyzerRow]:
    with path.open(newline="") as handle:
        return [
            PerfAnalyzerRow(
                int(row["Concurrency"]),
                float(row["Inferences/Second"]),
                float(row["p50 latency"]) / 1000,
                float(row["p90 latency"]) / 1000,
                float(row["p99 latency"]) / 1000,
            )
            for row in csv.DictReader(handle)
        ]
