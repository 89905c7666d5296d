"""Measuring what perf_analyzer measures, against the real stack: the servers' own split read
from each Triton's statistics API, and open-loop pacing."""

from __future__ import annotations

import asyncio
import csv

import pytest

from flowerdemo.bench import step_snapshot
from flowerdemo.core.engine import EngineSettings, InferenceEngine
from flowerdemo.core.images import load_images
from flowerdemo.core.load import OpenLoopLoad
from flowerdemo.core.server_stats import ServerStatsReader
from flowerdemo.core.stats import RunStatistics, perf_analyzer_row, write_perf_analyzer_csv
from flowerdemo.core.sweep import SweepSettings, run_sweep
from flowerdemo.resources import sample_images_dir


@pytest.fixture(scope="module")
def photos():
    return [image.image for image in load_images(sample_images_dir()).images]


def instance_urls(stack) -> list[str]:
    return [f"127.0.0.1:{s.grpc_port}" for s in stack.states() if s.state == "ready"]


@pytest.mark.stack
def test_server_columns_are_real_values_summed_over_the_instances(local_stack, photos, tmp_path):
    async def measure():
        engine = InferenceEngine(EngineSettings(url=local_stack.grpc_url), photos)
        await engine.connect()
        reader = ServerStatsReader(instance_urls(local_stack), "flowers")
        try:
            settings = SweepSettings((2,), window_s=1.0, max_windows=2, budget_s=10.0)
            return await run_sweep(engine, settings, server_reader=reader)
        finally:
            await reader.close()
            await engine.close()

    (step,) = asyncio.run(measure())
    assert step.server is not None
    assert step.server.servers == 2, "both instances behind Envoy were read"
    assert step.server.requests >= step.latency.count * 0.8
    row = perf_analyzer_row(2, step_snapshot(step, budget_s=10.0))
    path = tmp_path / "sweep.csv"
    write_perf_analyzer_csv(path, [row])
    with path.open() as handle:
        (written,) = list(csv.DictReader(handle))
    for column in ("Server Queue", "Server Compute Input", "Server Compute Infer"):
        assert int(written[column]) > 0, column
    # The model's own time is most of the round trip on a CPU model this size.
    assert int(written["Server Compute Infer"]) < int(written["p50 latency"])
    assert float(written["Goodput"]) == 1.0


@pytest.mark.stack
def test_a_server_that_cannot_be_read_is_left_out(local_stack, free_port):
    async def read():
        urls = [*instance_urls(local_stack), f"127.0.0.1:{free_port()}"]
        reader = ServerStatsReader(urls, "flowers", timeout_s=0.5)
        try:
            return await reader.read()
        finally:
            await reader.close()

    totals = asyncio.run(read())
    assert sorted(totals) == sorted(instance_urls(local_stack))


@pytest.mark.stack
def test_open_loop_sends_at_the_rate_asked_for(local_stack, photos):
    """A count, not a timing assertion: 2 s at 40 requests/s is 80 requests, within 5 %."""
    rate, duration = 40.0, 2.0

    async def run():
        engine = InferenceEngine(EngineSettings(url=local_stack.grpc_url), photos)
        await engine.connect()
        statistics = RunStatistics()
        engine.add_sink(statistics.record)
        load = OpenLoopLoad(engine, rate, len(photos))
        try:
            await load.run(duration_s=duration)
        finally:
            await engine.close()
        return load, statistics.snapshot()

    load, snapshot = asyncio.run(run())
    assert abs(load.sent - rate * duration) <= 0.05 * rate * duration, load.sent
    # Every request sent is answered or counted as failed; delays are counted, not dropped.
    assert snapshot.answered + snapshot.failed == load.sent
    assert 0 <= load.delayed <= load.sent


def test_poisson_gaps_average_the_rate():
    # Only the schedule is under test here: no engine is needed to draw it.
    load = OpenLoopLoad(None, 50.0, 1, poisson=True, seed=1)  # type: ignore[arg-type]
    gaps = [load._gap() for _ in range(20_000)]
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 50.0, rel=0.03)
    assert min(gaps) < 0.002 < 0.1 < max(gaps)  # exponential, not constant
