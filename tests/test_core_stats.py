"""Statistics: percentiles against numpy, the sliding window, error counts and the exports."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from flowerdemo.core.events import ErrorKind, InferenceEvent, RequestError
from flowerdemo.core.stats import (
    PERF_ANALYZER_COLUMNS,
    LatencyHistogram,
    RunStatistics,
    perf_analyzer_row,
    write_json_report,
    write_perf_analyzer_csv,
)


class FakeClock:
    """A clock the test moves by hand, so windows are exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answered(request_id: int, done_at: float, latency: float, batch: int = 1) -> InferenceEvent:
    return InferenceEvent(request_id, tuple(range(batch)), done_at - latency, done_at)


def failed(request_id: int, done_at: float, kind: ErrorKind) -> InferenceEvent:
    return InferenceEvent(
        request_id, (0,), done_at - 0.5, done_at, error=RequestError(kind, f"{kind.value} happened")
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_histogram_percentiles_match_numpy_within_half_a_bucket(seed):
    rng = np.random.default_rng(seed)
    latencies = rng.lognormal(mean=np.log(0.012), sigma=0.6, size=20_000)
    histogram = LatencyHistogram()
    for value in latencies:
        histogram.add(float(value))
    for q in (50, 90, 95, 99):
        exact = np.percentile(latencies, q, method="inverted_cdf")
        assert histogram.percentile(q) == pytest.approx(exact, rel=0.006), q
    assert histogram.mean() == pytest.approx(latencies.mean(), rel=1e-9)


def test_run_and_window_statistics():
    clock = FakeClock()
    stats = RunStatistics(window_s=5.0, clock=clock)
    rng = np.random.default_rng(7)
    early = rng.uniform(0.001, 0.010, size=400)
    late = rng.uniform(0.050, 0.060, size=100)
    for i, latency in enumerate(early):
        clock.now += 0.01
        stats.record(answered(i, clock.now, float(latency)))
    clock.now += 10.0  # the early answers leave the 5 s window
    for i, latency in enumerate(late):
        clock.now += 0.02
        stats.record(answered(1000 + i, clock.now, float(latency), batch=2))
    stats.record(failed(2000, clock.now, ErrorKind.UNAVAILABLE))
    stats.record(failed(2001, clock.now, ErrorKind.UNAVAILABLE))
    stats.record(failed(2002, clock.now, ErrorKind.DEADLINE))

    snapshot = stats.snapshot(in_flight=3)

    assert (snapshot.answered, snapshot.failed, snapshot.in_flight, snapshot.sent) == (
        500,
        3,
        3,
        506,
    )
    assert snapshot.images_answered == 400 + 200
    assert snapshot.errors_by_kind == {"unavailable": 2, "deadline": 1}
    assert snapshot.last_error == "deadline happened"
    all_latencies = np.concatenate([early, late])
    assert snapshot.run.p50 == pytest.approx(
        np.percentile(all_latencies, 50, method="inverted_cdf"), rel=0.006
    )
    assert snapshot.run.mean == pytest.approx(all_latencies.mean())
    # The window holds only the late answers: exact percentiles of those.
    assert snapshot.window.count == 100
    assert snapshot.window.p90 == pytest.approx(np.percentile(late, 90, method="inverted_cdf"))
    assert snapshot.window_requests_per_s == pytest.approx(100 / 5.0)
    assert snapshot.window_images_per_s == pytest.approx(200 / 5.0)


def test_empty_statistics_have_no_numbers_rather_than_zeros():
    snapshot = RunStatistics().snapshot()
    assert snapshot.answered == 0
    assert np.isnan(snapshot.run.p50) and np.isnan(snapshot.window.p99)


def test_exports_in_perf_analyzer_layout_and_json(tmp_path):
    clock = FakeClock()
    stats = RunStatistics(clock=clock)
    for i in range(10):
        clock.now += 0.1
        stats.record(answered(i, clock.now, 0.004 + i * 0.001))
    snapshot = stats.snapshot()
    row = perf_analyzer_row(4, snapshot)
    csv_path = tmp_path / "run.csv"
    write_perf_analyzer_csv(csv_path, [row])
    with csv_path.open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == PERF_ANALYZER_COLUMNS
        (written,) = list(reader)
    assert written["Concurrency"] == "4"
    assert float(written["Inferences/Second"]) == pytest.approx(10 / 1.0, rel=0.01)
    assert int(written["p50 latency"]) == pytest.approx(8000, rel=0.006)
    assert int(written["Network+Server Send/Recv"]) == pytest.approx(8500, rel=0.001)

    json_path = tmp_path / "run.json"
    write_json_report(json_path, snapshot, {"concurrency": 4})
    report = json.loads(json_path.read_text())
    assert report["settings"] == {"concurrency": 4}
    assert report["statistics"]["answered"] == 10
    assert report["statistics"]["run"]["p99"] == pytest.approx(0.013, rel=0.006)
