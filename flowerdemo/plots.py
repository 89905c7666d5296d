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


@dataclass(frozen=True)
class AutoscaleSample:
    """One moment of an autoscale run (seconds since its start)."""

    t_s: float
    concurrency: int
    p90_ms: float
    """The verdict-percentile latency the controller saw (NaN: nothing answered)."""
    ready: int
    target: int
    images_per_s: float


def plot_autoscale(
    samples: Sequence[AutoscaleSample],
    decisions: Sequence[tuple[float, int, int]],
    path: Path,
    *,
    budget_ms: float,
    title: str,
    percentile: int = 90,
) -> Path:
    """One PNG, time along x: the latency with the budget, the instance count with the load,
    and the throughput; each decision (t, before, target) as a vertical line on all three."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    t = [s.t_s for s in samples]
    figure, (latency_axes, count_axes, rate_axes) = plt.subplots(
        3, 1, figsize=(10, 8), dpi=110, sharex=True, height_ratios=(3, 2, 2)
    )
    latency_axes.plot(t, [s.p90_ms for s in samples], color="tab:blue", label=f"p{percentile}")
    latency_axes.axhline(
        budget_ms, color="crimson", linestyle="--", linewidth=1.2, label=f"budget {budget_ms:g} ms"
    )
    latency_axes.set_ylabel(f"p{percentile} latency (ms)")
    latency_axes.set_yscale("log")
    latency_axes.set_title(title, fontsize=10)

    count_axes.step(t, [s.ready for s in samples], where="post", color="tab:green", label="ready")
    count_axes.step(
        t,
        [s.target for s in samples],
        where="post",
        color="tab:olive",
        linestyle=":",
        label="target",
    )
    count_axes.set_ylabel("instances")
    count_axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    count_axes.set_ylim(0, max([s.target for s in samples] + [s.ready for s in samples] + [1]) + 1)
    load_axes = count_axes.twinx()
    load_axes.step(
        t,
        [s.concurrency for s in samples],
        where="post",
        color="tab:purple",
        alpha=0.6,
        label="load N (outstanding)",
    )
    load_axes.set_ylabel("load N")
    load_axes.set_yscale("log", base=2)

    rate_axes.plot(t, [s.images_per_s for s in samples], color="tab:orange", label="images/s")
    rate_axes.set_ylabel("throughput (images/s)")
    rate_axes.set_xlabel("time (s)")
    rate_axes.set_ylim(bottom=0)

    for at, before, target in decisions:
        colour = "tab:green" if target > before else "tab:red"
        for axes in (latency_axes, count_axes, rate_axes):
            axes.axvline(at, color=colour, alpha=0.5, linewidth=1)
    for axes in (latency_axes, count_axes, rate_axes):
        axes.grid(alpha=0.3)
    latency_axes.legend(fontsize=8, loc="upper left")
    handles = count_axes.get_legend_handles_labels()
    load_handles = load_axes.get_legend_handles_labels()
    count_axes.legend(
        handles[0] + load_handles[0], handles[1] + load_handles[1], fontsize=8, loc="upper left"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
