"""Latency and throughput statistics of a run: over the whole run and over a sliding window.

The whole run goes into a log-bucketed histogram (memory stays constant through a day at a
booth; percentiles are exact to within half a bucket, 0.5%). The sliding window keeps exact
samples, since it only ever holds a few seconds of them.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flowerdemo.core.events import InferenceEvent

PERCENTILES = (50, 90, 95, 99)

PERF_ANALYZER_COLUMNS = (
    "Concurrency",
    "Inferences/Second",
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
)


class LatencyHistogram:
    """Counts of latencies in geometric buckets from 1 us to 1000 s, each 1% wider than the last."""

    LOWEST_S = 1e-6
    HIGHEST_S = 1e3
    GROWTH = 1.01

    def __init__(self) -> None:
        self._log_growth = math.log(self.GROWTH)
        size = math.ceil(math.log(self.HIGHEST_S / self.LOWEST_S) / self._log_growth) + 1
        self._counts = np.zeros(size, dtype=np.int64)
        self._total = 0
        self._sum = 0.0
        self._max = 0.0

    @property
    def count(self) -> int:
        return self._total

    def add(self, latency_s: float) -> None:
        self._counts[self._bucket(latency_s)] += 1
        self._total += 1
        self._sum += latency_s
        self._max = max(self._max, latency_s)

    def mean(self) -> float:
        return self._sum / self._total if self._total else math.nan

    def maximum(self) -> float:
        return self._max if self._total else math.nan

    def percentile(self, q: float) -> float:
        """The latency below which q percent of the samples fall (nearest rank)."""
        if not self._total:
            return math.nan
        rank = max(1, math.ceil(q / 100.0 * self._total))
        bucket = int(np.searchsorted(np.cumsum(self._counts), rank))
        # The geometric middle of the bucket: at most half a bucket (0.5%) from any sample in it.
        return float(min(self.LOWEST_S * self.GROWTH ** (bucket + 0.5), self._max))

    def _bucket(self, latency_s: float) -> int:
        if latency_s <= self.LOWEST_S:
            return 0
        index = int(math.log(latency_s / self.LOWEST_S) / self._log_growth)
        return min(index, len(self._counts) - 1)


@dataclass(frozen=True)
class LatencySummary:
    """Latencies in seconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float

    @classmethod
    def empty(cls) -> LatencySummary:
        return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)

    @classmethod
    def of_samples(cls, samples: Sequence[float]) -> LatencySummary:
        if not samples:
            return cls.empty()
        values = np.asarray(samples, dtype=np.float64)
        p50, p90, p95, p99 = np.percentile(values, PERCENTILES, method="inverted_cdf")
        return cls(
            len(values), float(values.mean()), float(p50), float(p90), float(p95), float(p99)
        )

    @classmethod
    def of_histogram(cls, histogram: LatencyHistogram) -> LatencySummary:
        if not histogram.count:
            return cls.empty()
        p50, p90, p95, p99 = (histogram.percentile(q) for q in PERCENTILES)
        return cls(histogram.count, histogram.mean(), p50, p90, p95, p99)


@dataclass(frozen=True)
class StatsSnapshot:
    """Everything a status line, a chart or a report shows, at one moment."""

    elapsed_s: float
    sent: int
    answered: int
    failed: int
    in_flight: int
    images_answered: int
    errors_by_kind: dict[str, int]
    run: LatencySummary
    window: LatencySummary
    window_s: float
    window_requests_per_s: float
    window_images_per_s: float
    run_images_per_s: float
    last_error: str = ""

    def to_dict(self) -> dict[str, Any]:
        safe: dict[str, Any] = _json_safe(asdict(self))
        return safe


@dataclass
class _WindowSample:
    done_at: float
    latency_s: float
    images: int


@dataclass
class RunStatistics:
    """Consumes InferenceEvents; answers snapshots. Not thread-safe: feed it from one thread or loop."""

    window_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    started_at: float = field(default=math.nan)

    def __post_init__(self) -> None:
        self._histogram = LatencyHistogram()
        self._window: deque[_WindowSample] = deque()
        self._errors: Counter[str] = Counter()
        self._answered = 0
        self._failed = 0
        self._images = 0
        self._last_error = ""
        if math.isnan(self.started_at):
            self.started_at = self.clock()

    def reset(self) -> None:
        self.started_at = self.clock()
        self.__post_init__()

    def record(self, event: InferenceEvent) -> None:
        if event.ok:
            self._answered += 1
            self._images += event.batch_size
            self._histogram.add(event.latency_s)
            self._window.append(_WindowSample(event.done_at, event.latency_s, event.batch_size))
        else:
            self._failed += 1
            kind = event.error.kind.value if event.error else "unknown"
            self._errors[kind] += 1
            self._last_error = event.error.message if event.error else ""

    def snapshot(self, in_flight: int = 0) -> StatsSnapshot:
        now = self.clock()
        horizon = now - self.window_s
        while self._window and self._window[0].done_at < horizon:
            self._window.popleft()
        elapsed = max(now - self.started_at, 1e-9)
        window_len = min(self.window_s, elapsed)
        window_images = sum(s.images for s in self._window)
        return StatsSnapshot(
            elapsed_s=elapsed,
            sent=self._answered + self._failed + in_flight,
            answered=self._answered,
            failed=self._failed,
            in_flight=in_flight,
            images_answered=self._images,
            errors_by_kind=dict(self._errors),
            run=LatencySummary.of_histogram(self._histogram),
            window=LatencySummary.of_samples([s.latency_s for s in self._window]),
            window_s=window_len,
            window_requests_per_s=len(self._window) / window_len,
            window_images_per_s=window_images / window_len,
            run_images_per_s=self._images / elapsed,
            last_error=self._last_error,
        )


def perf_analyzer_row(concurrency: int, snapshot: StatsSnapshot) -> dict[str, float | int]:
    """One row in perf_analyzer's CSV layout (microseconds). Only client-side columns are known:
    the whole round trip goes into Network+Server Send/Recv, the server columns stay 0."""
    run = snapshot.run
    return {
        "Concurrency": concurrency,
        "Inferences/Second": round(snapshot.run_images_per_s, 2),
        "Client Send": 0,
        "Network+Server Send/Recv": _us(run.mean),
        "Server Queue": 0,
        "Server Compute Input": 0,
        "Server Compute Infer": 0,
        "Server Compute Output": 0,
        "Client Recv": 0,
        "p50 latency": _us(run.p50),
        "p90 latency": _us(run.p90),
        "p95 latency": _us(run.p95),
        "p99 latency": _us(run.p99),
    }


def write_perf_analyzer_csv(path: Path, rows: Iterable[dict[str, float | int]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=PERF_ANALYZER_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def write_json_report(path: Path, snapshot: StatsSnapshot, settings: dict[str, Any]) -> None:
    report = {"settings": _json_safe(settings), "statistics": snapshot.to_dict()}
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _us(seconds: float) -> int:
    return 0 if math.isnan(seconds) else round(seconds * 1e6)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
