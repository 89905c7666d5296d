"""Sweep charts: throughput and p90 latency against concurrency, several configurations per chart."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SweepPoint:
    concurrency: int
    images_per_s: float
    p90_ms: float


def read_perf_analyzer_csv(path: Path) -> list[SweepPoint]:
    """Rows of a CSV in perf_analyzer's layout (ours or perf_analyzer's own), sorted by concurrency."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "Concurrency" not in rows[0] or "p90 latency" not in rows[0]:
        raise ValueError(
            f"{path} is not a CSV in perf_analyzer's layout (Concurrency, ..., p90 latency)"
        )
    points = [
        SweepPoint(
            int(row["Concurrency"]),
            float(row["Inferences/Second"]),
            float(row["p90 latency"]) / 1000,
        )
        for row in rows
    ]
    return sorted(points, key=lambda p: p.concurrency)


def plot_sweeps(
    series: Mapping[str, Sequence[SweepPoint]],
    out_dir: Path,
    *,
    budget_ms: float,
    title: str,
    prefix: str = "",
    log_x: bool = False,
) -> tuple[Path, Path]:
    """Write throughput.png and latency_p90.png (with the budget as a dashed line).

    `log_x` puts concurrency on a log2 axis, for sweeps over powers of two (1 to 256)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    throughput_path = out_dir / f"{prefix}throughput.png"
    latency_path = out_dir / f"{prefix}latency_p90.png"
    charts = (
        (throughput_path, "throughput (images/s)", "Throughput", attrgetter("images_per_s"), None),
        (latency_path, "p90 latency (ms)", "p90 latency", attrgetter("p90_ms"), budget_ms),
    )
    for path, y_label, what, value, budget in charts:
        figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
        for label, points in series.items():
            axes.plot(
                [p.concurrency for p in points],
                [value(p) for p in points],
                marker="o",
                ms=3,
                label=label,
            )
        if budget is not None:
            axes.axhline(
                budget,
                color="crimson",
                linestyle="--",
                linewidth=1.2,
                label=f"budget {budget:g} ms",
            )
        _concurrency_axis(axes, log_x)
        axes.set_ylabel(y_label)
        axes.set_title(f"{what} against concurrency\n{title}", fontsize=10)
        axes.grid(alpha=0.3)
        axes.set_ylim(bottom=0)
        axes.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(path)
        plt.close(figure)
    return throughput_path, latency_path


def _concurrency_axis(axes: Any, log_x: bool) -> None:
    axes.set_xlabel("concurrency (requests outstanding)")
    if log_x:
        from matplotlib.ticker import FuncFormatter

        axes.set_xscale("log", base=2)
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def best_within_budget(points: Sequence[SweepPoint], budget_ms: float) -> SweepPoint | None:
    """The highest-throughput point whose p90 stays within the budget."""
    within = [p for p in points if p.p90_ms <= budget_ms]
    return max(within, key=attrgetter("images_per_s")) if within else None
