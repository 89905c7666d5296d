"""The headless run's summary and reports: per-instance figures, verdict and goodput."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest

from flowerdemo.core.events import InferenceEvent
from flowerdemo.core.stats import RunStatistics
from flowerdemo.headless import _print_admin, instance_lines, run_headless
from flowerdemo.options import RunOptions, validate_options


def test_instance_lines_name_each_instance_with_its_share_and_latencies():
    stats = RunStatistics()
    now = stats.clock()
    for k in range(30):
        name = "triton-0" if k % 3 else "triton-1"
        stats.record(InferenceEvent(k, (0,), now - 0.010 * (1 + k % 3), now, instance=name))
    lines = instance_lines(stats.snapshot())
    assert lines[0] == "Instances (2):"
    assert lines[1].split()[:4] == ["triton-0", "20", "answered", "(66.7%)"]
    assert lines[2].split()[:4] == ["triton-1", "10", "answered", "(33.3%)"]
    assert "p90" in lines[1] and "30.0 ms" in lines[1]
    # Answers that named no instance (a server not behind our Envoy): nothing to list.
    bare = RunStatistics()
    bare.record(InferenceEvent(1, (0,), now - 0.01, now))
    assert instance_lines(bare.snapshot()) == []


@pytest.mark.stack
def test_json_report_of_a_real_run_carries_instances_and_goodput(local_stack, tmp_path):
    report = tmp_path / "run.json"
    options = RunOptions(
        url=local_stack.grpc_url,
        mode="auto",
        concurrency=2,
        duration_s=1.5,
        report=report,
        budget_ms=10_000.0,
        admin=local_stack.settings.admin_listen,
    )
    out = io.StringIO()
    assert run_headless(options, out=out, err=io.StringIO()) == 0, out.getvalue()
    text = out.getvalue()
    statistics = json.loads(report.read_text())["statistics"]
    assert statistics["answered"] > 0
    # Our Envoy names the instance of every answer: both of the stack's appear, and add up.
    names = {i["name"] for i in statistics["instances"]}
    assert names == {"triton-0", "triton-1"}, names
    assert sum(i["answered"] for i in statistics["instances"]) == statistics["answered"]
    assert statistics["percentile"] == 90
    assert statistics["run_goodput"] == 1.0  # a 10 s budget holds every answer
    assert "Goodput" in text and "Instances (2):" in text
    # Envoy's own view of the same instances, from its admin interface.
    assert "upstream host(s)" in text and "triton-1" in text.split("Envoy admin at")[1]


def test_an_unreachable_admin_interface_is_one_line_not_a_traceback(free_port):
    out = io.StringIO()
    _print_admin(f"127.0.0.1:{free_port()}", out)
    assert out.getvalue().count("\n") == 1 and "no instance list" in out.getvalue()


@pytest.mark.stack
def test_open_loop_run_on_the_embedded_stack_reports_the_servers_split(stack_settings, tmp_path):
    report = tmp_path / "run.csv"
    options = RunOptions(
        url=None,
        mode="auto",
        request_rate=30.0,
        duration_s=2.5,
        report=report,
        budget_ms=10_000.0,
    )
    out = io.StringIO()
    code = run_headless(options, out=out, err=io.StringIO(), stack_settings=stack_settings(2))
    assert code == 0, out.getvalue()
    with report.open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert float(row["Request Rate"]) == 30.0 and row["Concurrency"] == "0"
    assert int(row["Delayed Requests"]) >= 0
    # Read from both instances of the stack this run started, never 0 where it is known.
    for column in ("Server Queue", "Server Compute Input", "Server Compute Infer"):
        assert int(row[column]) > 0, column
    assert row["Client Send"] == ""


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"url": "127.0.0.1:1", "autoscale": "1:4"}, "leave out --url"),
        ({"autoscale": "4:1"}, "MAX not below MIN"),
        ({"autoscale": "many"}, "--autoscale takes MIN:MAX"),
        ({"poisson": True}, "give a rate too"),
        ({"request_rate": 0.0}, "--request-rate must be above 0"),
        (
            {"request_rate": 10.0, "mode": "interactive", "headless": True},
            "add --headless --mode auto",
        ),
        ({"request_rate": 10.0, "mode": "auto"}, "add --headless --mode auto"),
        ({"server_urls": ("nohost",)}, "--server-url"),
    ],
)
def test_bad_measurement_options_are_explained(changes, message):
    options = RunOptions(**{"url": None, **changes})
    problems = validate_options(options)
    assert any(message in problem for problem in problems), problems


def test_autoscale_maximum_defaults_to_the_cores():
    assert RunOptions(url=None, autoscale="1:").autoscale_limits() == (1, os.cpu_count() or 1)
    assert RunOptions(url=None, autoscale="2:3").autoscale_limits() == (2, 3)


@pytest.mark.stack
def test_autoscale_adds_an_instance_when_the_budget_cannot_hold(stack_settings, tmp_path):
    """A 1 ms budget no CPU model meets: after 3 s over it the controller adds an instance,
    the stack is told, and no request is lost on the way."""
    report = tmp_path / "run.json"
    options = RunOptions(
        url=None,
        mode="auto",
        concurrency=4,
        duration_s=6.0,
        report=report,
        budget_ms=1.0,
        instances=1,
        autoscale="1:2",
    )
    out = io.StringIO()
    code = run_headless(options, out=out, err=io.StringIO(), stack_settings=stack_settings(1))
    text = out.getvalue()
    assert code == 0, text
    decisions = json.loads(report.read_text())["autoscale_decisions"]
    assert [(d["before"], d["target"]) for d in decisions] == [(1, 2)], text
    assert decisions[0]["at"] >= 3.0  # over for 3 s first
    assert "over the 1 ms budget" in decisions[0]["reason"]
    assert "Autoscale 1:2: 1 decision(s)" in text
    assert "no change this time" not in text  # the stack took the new target
