"""Latency and throughput statistics of a run: over the whole run and over a sliding window.

The whole run goes into a log-bucketed histogram (memory stays constant through a day at a
booth; percentiles are exact to within half a bucket, 0.5%). The sliding window keeps exact
samples, since it only ever holds a few seconds of them.

The same figures are kept per instance (the `instance` each answer names), for at most
`MAX_TRACKED_INSTANCES` names: a server that invents a new name per answer cannot grow memory,
the names past the cap are counted together as `OTHER_INSTANCES`.

One verdict percentile (`RunStatistics.percentile`, 90 unless set) and one latency budget
(`RunStatistics.budget_s`) judge the run: the snapshot carries the latency at that percentile and
the goodput, the share of answers within the budget, over the window and over the run.

Server-side figures (Triton's statistics: queue, compute input, infer, output) come from outside:
whoever polls the servers hands cumulative counters to `RunStatistics.record_server`; the
snapshot carries their per-request averages over the window and over the run.
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from flowerdemo.core.events import InferenceEvent

PERCENTILES = (50, 90, 95, 99)
DEFAULT_PERCENTILE = 90
"""The verdict percentile unless the user picks another (`--percentile`), as in the seed's figures."""
MAX_TRACKED_INSTANCES = 32
"""Distinct instance names kept apart; answers naming any further instance count as OTHER_INSTANCES."""
OTHER_INSTANCES = "other"

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
EXTRA_COLUMNS = ("Request Rate", "Delayed Requests", "Budget", "Goodput")
"""After perf_analyzer's columns: the open-loop rate asked for and the requests sent late (empty
for closed-loop load), the latency budget (us) and the share of answers within it."""
CSV_COLUMNS = PERF_ANALYZER_COLUMNS + EXTRA_COLUMNS


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

    def fraction_at_most(self, limit_s: float) -> float:
        """The share of samples at or below `limit_s` (to within the bucket that holds it)."""
        if not self._total or math.isnan(limit_s):
            return math.nan
        if limit_s < self.LOWEST_S:
            return 0.0
        return float(self._counts[: self._bucket(limit_s) + 1].sum()) / self._total

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
    def of_samples(cls, samples: Sequence[float] | npt.NDArray[np.float64]) -> LatencySummary:
        if len(samples) == 0:
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
class InstanceStats:
    """One instance's part of the run, by the name its answers carried (see events.INSTANCE_HEADER)."""

    name: str
    answered: int
    failed: int
    window_answered: int
    window_share: float
    """The share of the window's answers this instance gave, 0 to 1 (NaN while the window is empty)."""
    window_images_per_s: float
    window: LatencySummary
    run: LatencySummary


@dataclass(frozen=True)
class ServerCounters:
    """Triton's cumulative inference statistics of one model on one server (nanoseconds)."""

    success_count: int
    queue_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int

    def since(self, earlier: ServerCounters) -> ServerCounters:
        """What was added after `earlier`. A server that restarted counts from zero again: then
        everything it has counted is new."""
        if self.success_count < earlier.success_count:
            return self
        return ServerCounters(
            self.success_count - earlier.success_count,
            self.queue_ns - earlier.queue_ns,
            self.compute_input_ns - earlier.compute_input_ns,
            self.compute_infer_ns - earlier.compute_infer_ns,
            self.compute_output_ns - earlier.compute_output_ns,
        )


ServerTotals = Mapping[str, ServerCounters]
"""Cumulative counters per server (keyed by its address), read at one moment."""


@dataclass(frozen=True)
class ServerSplit:
    """Where the servers spent an answer's time: per-request averages in seconds over a span,
    summed over every server read (the instances behind the balancer)."""

    requests: int
    servers: int
    queue_s: float
    compute_input_s: float
    compute_infer_s: float
    compute_output_s: float

    @property
    def compute_s(self) -> float:
        return self.compute_input_s + self.compute_infer_s + self.compute_output_s

    @property
    def server_s(self) -> float:
        return self.queue_s + self.compute_s

    @classmethod
    def combine(cls, splits: Sequence[ServerSplit]) -> ServerSplit | None:
        """Several spans as one: averages weighted by each span's requests."""
        requests = sum(s.requests for s in splits)
        if requests <= 0:
            return None

        def mean(part: Callable[[ServerSplit], float]) -> float:
            return sum(part(s) * s.requests for s in splits) / requests

        return cls(
            requests=requests,
            servers=max(s.servers for s in splits),
            queue_s=mean(lambda s: s.queue_s),
            compute_input_s=mean(lambda s: s.compute_input_s),
            compute_infer_s=mean(lambda s: s.compute_infer_s),
            compute_output_s=mean(lambda s: s.compute_output_s),
        )

    @classmethod
    def between(cls, earlier: ServerTotals, later: ServerTotals) -> ServerSplit | None:
        """The averages over the requests the servers finished between two readings; None when
        none finished. A server missing from the earlier reading is left out (its counters may
        hold requests from before the span): averages stay right, the count is a lower bound."""
        deltas = [
            counters.since(earlier[server])
            for server, counters in later.items()
            if server in earlier
        ]
        requests = sum(d.success_count for d in deltas)
        if requests <= 0:
            return None
        per_request = 1e-9 / requests
        return cls(
            requests=requests,
            servers=len(deltas),
            queue_s=sum(d.queue_ns for d in deltas) * per_request,
            compute_input_s=sum(d.compute_input_ns for d in deltas) * per_request,
            compute_infer_s=sum(d.compute_infer_ns for d in deltas) * per_request,
            compute_output_s=sum(d.compute_output_ns for d in deltas) * per_request,
        )


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
    instances: tuple[InstanceStats, ...] = ()
    """Per instance that answered or failed, in name order (see MAX_TRACKED_INSTANCES)."""
    percentile: int = DEFAULT_PERCENTILE
    """The verdict percentile: the one latency the badge, the summary and the sweep judge by."""
    budget_s: float = math.nan
    window_verdict_s: float = math.nan
    """The window's latency at `percentile`."""
    run_verdict_s: float = math.nan
    window_goodput: float = math.nan
    """The share of the window's answers within the budget, 0 to 1 (NaN: no budget or no answer)."""
    run_goodput: float = math.nan
    window_server: ServerSplit | None = None
    """The servers' own split of the window's requests (None: not read, or nothing finished)."""
    run_server: ServerSplit | None = None
    delayed: int = 0
    """Open-loop requests that went out later than their schedule said."""

    @property
    def over_budget(self) -> bool | None:
        """The window's verdict: None when there is no budget or no answer to judge."""
        if math.isnan(self.budget_s) or math.isnan(self.window_verdict_s):
            return None
        return self.window_verdict_s > self.budget_s

    def to_dict(self) -> dict[str, Any]:
        safe: dict[str, Any] = _json_safe(asdict(self))
        return safe


class _Window:
    """The answers of the last few seconds, as parallel deques of plain numbers: a snapshot turns
    them into arrays at C speed, ten times a second, instead of walking objects in Python."""

    def __init__(self) -> None:
        self.done_at: deque[float] = deque()
        self.latency_s: deque[float] = deque()
        self.images: deque[int] = deque()
        self.image_total = 0

    def __len__(self) -> int:
        return len(self.done_at)

    def add(self, done_at: float, latency_s: float, images: int) -> None:
        self.done_at.append(done_at)
        self.latency_s.append(latency_s)
        self.images.append(images)
        self.image_total += images

    def prune(self, horizon: float) -> None:
        done_at = self.done_at
        while done_at and done_at[0] < horizon:
            done_at.popleft()
            self.latency_s.popleft()
            self.image_total -= self.images.popleft()

    def latencies(self) -> npt.NDArray[np.float64]:
        return np.fromiter(self.latency_s, np.float64, len(self.latency_s))

    def latencies_since(self, since: float) -> npt.NDArray[np.float64]:
        done_at = np.fromiter(self.done_at, np.float64, len(self.done_at))
        return self.latencies()[done_at >= since]


@dataclass
class _InstanceTally:
    answered: int = 0
    failed: int = 0
    histogram: LatencyHistogram = field(default_factory=LatencyHistogram)
    window: _Window = field(default_factory=_Window)


@dataclass
class RunStatistics:
    """Consumes InferenceEvents; answers snapshots. Not thread-safe: feed it from one thread or loop.

    `percentile` and `budget_s` may be changed at any time (the window's budget spin box): the
    run's goodput is counted from the histogram, so it always judges the whole run by the
    current budget."""

    window_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    started_at: float = field(default=math.nan)
    percentile: int = DEFAULT_PERCENTILE
    budget_s: float = math.nan

    def __post_init__(self) -> None:
        if not 0 < self.percentile < 100:
            raise ValueError(
                f"the verdict percentile must be between 1 and 99, not {self.percentile}"
            )
        self._histogram = LatencyHistogram()
        self._window = _Window()
        self._errors: Counter[str] = Counter()
        self._instances: dict[str, _InstanceTally] = {}
        self._server_first: ServerTotals | None = None
        self._server_samples: deque[tuple[float, ServerTotals]] = deque()
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
        tally = self._tally(event.instance)
        if event.ok:
            self._answered += 1
            self._images += event.batch_size
            self._histogram.add(event.latency_s)
            tally.answered += 1
            tally.histogram.add(event.latency_s)
            self._window.add(event.done_at, event.latency_s, event.batch_size)
            tally.window.add(event.done_at, event.latency_s, event.batch_size)
        else:
            self._failed += 1
            tally.failed += 1
            kind = event.error.kind.value if event.error else "unknown"
            self._errors[kind] += 1
            self._last_error = event.error.message if event.error else ""

    def record_server(self, totals: ServerTotals, at: float | None = None) -> None:
        """Cumulative server counters read at `at` (this statistics' clock; now by default)."""
        if not totals:
            return
        if self._server_first is None:
            self._server_first = dict(totals)
        self._server_samples.append((self.clock() if at is None else at, dict(totals)))

    def recent_latency(self, q: float, span_s: float) -> float:
        """The latency at percentile `q` of the answers of the last `span_s` seconds (at most the
        window): what an autoscaler reacts to, sooner than the whole window. NaN when none."""
        return _percentile_of(self._window.latencies_since(self.clock() - span_s), q)

    def _tally(self, instance: str) -> _InstanceTally:
        tally = self._instances.get(instance)
        if tally is None:
            if len(self._instances) >= MAX_TRACKED_INSTANCES:
                instance = OTHER_INSTANCES
                tally = self._instances.get(instance)
            if tally is None:
                tally = self._instances[instance] = _InstanceTally()
        return tally

    def snapshot(self, in_flight: int = 0, delayed: int = 0) -> StatsSnapshot:
        now = self.clock()
        horizon = now - self.window_s
        self._window.prune(horizon)
        for tally in self._instances.values():
            tally.window.prune(horizon)
        # Keep the newest server reading at or before the horizon: the window's baseline.
        samples = self._server_samples
        while len(samples) > 1 and samples[1][0] <= horizon:
            samples.popleft()
        elapsed = max(now - self.started_at, 1e-9)
        window_len = min(self.window_s, elapsed)
        window_images = self._window.image_total
        latencies = self._window.latencies()
        budget = self.budget_s
        return StatsSnapshot(
            elapsed_s=elapsed,
            sent=self._answered + self._failed + in_flight,
            answered=self._answered,
            failed=self._failed,
            in_flight=in_flight,
            images_answered=self._images,
            errors_by_kind=dict(self._errors),
            run=LatencySummary.of_histogram(self._histogram),
            window=LatencySummary.of_samples(latencies),
            window_s=window_len,
            window_requests_per_s=len(self._window) / window_len,
            window_images_per_s=window_images / window_len,
            run_images_per_s=self._images / elapsed,
            last_error=self._last_error,
            instances=self._instance_stats(window_len),
            percentile=self.percentile,
            budget_s=budget,
            window_verdict_s=_percentile_of(latencies, self.percentile),
            run_verdict_s=self._histogram.percentile(self.percentile),
            window_goodput=(
                float(np.count_nonzero(latencies <= budget)) / latencies.size
                if latencies.size and not math.isnan(budget)
                else math.nan
            ),
            run_goodput=self._histogram.fraction_at_most(budget),
            window_server=(
                ServerSplit.between(samples[0][1], samples[-1][1]) if len(samples) > 1 else None
            ),
            run_server=(
                ServerSplit.between(self._server_first, samples[-1][1])
                if self._server_first is not None and samples
                else None
            ),
            delayed=delayed,
        )

    def _instance_stats(self, window_len: float) -> tuple[InstanceStats, ...]:
        window_total = len(self._window)
        result = []
        for name in sorted(self._instances, key=_natural_key):
            tally = self._instances[name]
            answers = len(tally.window)
            result.append(
                InstanceStats(
                    name=name,
                    answered=tally.answered,
                    failed=tally.failed,
                    window_answered=answers,
                    window_share=answers / window_total if window_total else math.nan,
                    window_images_per_s=tally.window.image_total / window_len,
                    window=LatencySummary.of_samples(tally.window.latencies()),
                    run=LatencySummary.of_histogram(tally.histogram),
                )
            )
        return tuple(result)


def _percentile_of(values: npt.NDArray[np.float64], q: float) -> float:
    if not values.size:
        return math.nan
    return float(np.percentile(values, q, method="inverted_cdf"))


def _natural_key(name: str) -> list[tuple[int, int | str]]:
    """triton-2 before triton-10."""
    return [(1, int(part)) if part.isdigit() else (0, part) for part in re.split(r"(\d+)", name)]


CsvRow = dict[str, float | int | str]


def perf_analyzer_row(
    concurrency: int, snapshot: StatsSnapshot, *, request_rate: float | None = None
) -> CsvRow:
    """One row in perf_analyzer's CSV layout (microseconds), then EXTRA_COLUMNS.

    With the servers' split known (`snapshot.run_server`), the server columns carry it and
    Network+Server Send/Recv is what the client waited beyond it, as perf_analyzer reports it.
    Without it those columns are empty, never 0, and the whole round trip is in Network+Server
    Send/Recv. Client Send and Client Recv are not measured separately: empty."""
    run = snapshot.run
    server = snapshot.run_server
    row: CsvRow = {
        "Concurrency": concurrency,
        "Inferences/Second": round(snapshot.run_images_per_s, 2),
        "Client Send": "",
        "Network+Server Send/Recv": _us(run.mean),
        "Server Queue": "",
        "Server Compute Input": "",
        "Server Compute Infer": "",
        "Server Compute Output": "",
        "Client Recv": "",
        "p50 latency": _us(run.p50),
        "p90 latency": _us(run.p90),
        "p95 latency": _us(run.p95),
        "p99 latency": _us(run.p99),
        "Request Rate": "" if request_rate is None else request_rate,
        "Delayed Requests": "" if request_rate is None else snapshot.delayed,
        "Budget": _us(snapshot.budget_s),
        "Goodput": "" if math.isnan(snapshot.run_goodput) else round(snapshot.run_goodput, 4),
    }
    if server is not None and not math.isnan(run.mean):
        row["Network+Server Send/Recv"] = max(0, round((run.mean - server.server_s) * 1e6))
        row["Server Queue"] = round(server.queue_s * 1e6)
        row["Server Compute Input"] = round(server.compute_input_s * 1e6)
        row["Server Compute Infer"] = round(server.compute_infer_s * 1e6)
        row["Server Compute Output"] = round(server.compute_output_s * 1e6)
    return row


def write_perf_analyzer_csv(path: Path, rows: Iterable[CsvRow]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def write_json_report(
    path: Path,
    snapshot: StatsSnapshot,
    settings: dict[str, Any],
    *,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """The run's settings and statistics, and any `extra` sections (e.g. autoscale decisions)."""
    report = {"settings": _json_safe(settings), "statistics": snapshot.to_dict()}
    report.update({key: _json_safe(value) for key, value in (extra or {}).items()})
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _us(seconds: float) -> int | str:
    """Microseconds, or an empty cell for a figure that is not known."""
    return "" if math.isnan(seconds) else round(seconds * 1e6)


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
