"""Statistics: percentiles against numpy, the sliding window, error counts and the exports."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from flowerdemo.core.events import ErrorKind, InferenceEvent, RequestError
from flowerdemo.core.stats import (
    CSV_COLUMNS,
    MAX_TRACKED_INSTANCES,
    OTHER_INSTANCES,
    PERF_ANALYZER_COLUMNS,
    LatencyHistogram,
    RunStatistics,
    ServerCounters,
    ServerSplit,
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
        # perf_analyzer's columns in its order, ours after them.
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        assert CSV_COLUMNS[: len(PERF_ANALYZER_COLUMNS)] == PERF_ANALYZER_COLUMNS
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


def from_instance(request_id: int, done_at: float, latency: float, instance: str) -> InferenceEvent:
    return InferenceEvent(request_id, (0,), done_at - latency, done_at, instance=instance)


def test_per_instance_statistics_window_shares_and_latencies():
    clock = FakeClock()
    stats = RunStatistics(window_s=5.0, clock=clock)
    # Early answers only from triton-0; they leave the window.
    for i in range(50):
        clock.now += 0.01
        stats.record(from_instance(i, clock.now, 0.020, "triton-0"))
    clock.now += 10.0
    # In the window: triton-0 answers 30 at 10 ms, triton-10 answers 10 at 40 ms, triton-2 fails.
    for i in range(30):
        clock.now += 0.05
        stats.record(from_instance(100 + i, clock.now, 0.010, "triton-0"))
    for i in range(10):
        clock.now += 0.05
        stats.record(from_instance(200 + i, clock.now, 0.040, "triton-10"))
    stats.record(
        InferenceEvent(
            300,
            (0,),
            clock.now - 0.5,
            clock.now,
            error=RequestError(ErrorKind.SERVER, "broken"),
            instance="triton-2",
        )
    )
    snapshot = stats.snapshot()
    by_name = {i.name: i for i in snapshot.instances}
    assert [i.name for i in snapshot.instances] == ["triton-0", "triton-2", "triton-10"]
    zero, two, ten = by_name["triton-0"], by_name["triton-2"], by_name["triton-10"]
    assert (zero.answered, zero.failed, zero.window_answered) == (80, 0, 30)
    assert (two.answered, two.failed, two.window_answered) == (0, 1, 0)
    assert (ten.answered, ten.window_answered) == (10, 10)
    assert zero.window_share == pytest.approx(0.75) and ten.window_share == pytest.approx(0.25)
    assert two.window_share == 0.0 and np.isnan(two.window.p50)
    assert zero.window.p90 == pytest.approx(0.010) and ten.window.p50 == pytest.approx(0.040)
    assert zero.run.p90 == pytest.approx(0.020, rel=0.006)  # the early answers count for the run
    assert zero.window_images_per_s == pytest.approx(30 / 5.0)
    assert sum(i.answered for i in snapshot.instances) == snapshot.answered
    report = snapshot.to_dict()
    assert report["instances"][2]["name"] == "triton-10"
    assert report["instances"][1]["window"]["p90"] is None


def test_a_server_inventing_names_cannot_grow_memory():
    clock = FakeClock()
    stats = RunStatistics(clock=clock)
    for i in range(MAX_TRACKED_INSTANCES + 500):
        clock.now += 0.001
        stats.record(from_instance(i, clock.now, 0.005, f"name-{i}"))
    snapshot = stats.snapshot()
    assert len(snapshot.instances) == MAX_TRACKED_INSTANCES + 1
    other = next(i for i in snapshot.instances if i.name == OTHER_INSTANCES)
    assert other.answered == 500 and other.window_answered == 500
    assert sum(i.answered for i in snapshot.instances) == snapshot.answered


def test_verdict_percentile_and_goodput_follow_the_settings():
    clock = FakeClock()
    stats = RunStatistics(window_s=5.0, clock=clock, percentile=75, budget_s=0.050)
    latencies = [0.010 * k for k in range(1, 11)]  # 10 ms .. 100 ms
    for i, latency in enumerate(latencies):
        clock.now += 0.1
        stats.record(answered(i, clock.now, latency))
    snapshot = stats.snapshot()
    assert snapshot.percentile == 75
    assert snapshot.window_verdict_s == pytest.approx(0.080)  # nearest rank: 8th of 10
    assert snapshot.run_verdict_s == pytest.approx(0.080, rel=0.006)
    assert snapshot.window_goodput == pytest.approx(0.5)
    assert snapshot.run_goodput == pytest.approx(0.5)
    assert snapshot.over_budget is True
    stats.budget_s = 0.085  # the operator moves the budget: both goodputs follow
    stats.percentile = 50
    snapshot = stats.snapshot()
    assert snapshot.window_goodput == pytest.approx(0.8) and snapshot.run_goodput == pytest.approx(
        0.8
    )
    assert snapshot.window_verdict_s == pytest.approx(0.050) and snapshot.over_budget is False
    assert stats.recent_latency(90, 0.25) == pytest.approx(0.100)  # the last two answers
    assert np.isnan(RunStatistics().snapshot().run_goodput)


def counters(count: int, queue_us: float, infer_us: float) -> ServerCounters:
    return ServerCounters(
        count,
        int(count * queue_us * 1000),
        count * 1000,
        int(count * infer_us * 1000),
        count * 2000,
    )


def test_server_split_sums_instances_and_survives_a_restart():
    earlier = {"a": counters(100, 50, 400), "b": counters(100, 50, 400)}
    later = {
        "a": counters(300, 50, 400),  # +200 requests, each 50 us queue, 400 us infer
        "b": counters(40, 1000, 1000),  # restarted: everything it counted is new
        "c": counters(999, 1, 1),  # not in the earlier reading: left out
    }
    split = ServerSplit.between(earlier, later)
    assert split is not None
    assert (split.requests, split.servers) == (240, 2)
    assert split.queue_s == pytest.approx((200 * 50 + 40 * 1000) / 240 * 1e-6)
    assert split.compute_infer_s == pytest.approx((200 * 400 + 40 * 1000) / 240 * 1e-6)
    assert split.compute_input_s == pytest.approx(1e-6)
    assert split.compute_output_s == pytest.approx(2e-6)
    assert ServerSplit.between(earlier, earlier) is None


def test_window_and_run_server_split_and_csv_cells(tmp_path):
    clock = FakeClock()
    stats = RunStatistics(window_s=5.0, clock=clock, budget_s=0.050)
    stats.record_server({"a": counters(0, 0, 0)})
    for i in range(10):
        clock.now += 1.0
        stats.record(answered(i, clock.now, 0.010))
        stats.record_server({"a": counters(10 * (i + 1), 100 * (i + 1), 2000)})
    snapshot = stats.snapshot()
    assert snapshot.run_server is not None and snapshot.window_server is not None
    # The window's baseline is the reading at its start (t=5): requests 60..100 only.
    assert snapshot.window_server.requests == 50
    assert snapshot.run_server.requests == 100
    assert snapshot.run_server.compute_infer_s == pytest.approx(2000e-6)
    row = perf_analyzer_row(1, snapshot)
    assert row["Server Compute Infer"] == 2000
    assert row["Server Queue"] > 0
    # What the client waited beyond the server's own time.
    assert row["Network+Server Send/Recv"] == round((0.010 - snapshot.run_server.server_s) * 1e6)
    assert row["Goodput"] == 1.0 and row["Budget"] == 50000

    unknown = perf_analyzer_row(1, RunStatistics(clock=clock).snapshot())
    path = tmp_path / "unknown.csv"
    write_perf_analyzer_csv(path, [unknown])
    with path.open() as handle:
        (written,) = list(csv.DictReader(handle))
    for column in ("Server Queue", "Server Compute Infer", "p90 latency", "Goodput", "Client Send"):
        assert written[column] == "", column
