"""Reading Envoy's admin interface: the hosts of the shared stack's real Envoy, the upstream
request-time percentile over a window, and what a hostile or broken admin answer becomes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from flowerdemo.serving.admin import (
    AdminError,
    RequestTimeWindow,
    bucket_percentile,
    parse_clusters,
    parse_request_time_buckets,
    read_upstream_hosts,
)
from flowerdemo.serving.stack import wait_until


def _infer(url: str, count: int) -> None:
    client = grpcclient.InferenceServerClient(url)
    try:
        tensor = grpcclient.InferInput("input", [1, 3, 224, 224], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 3, 224, 224), dtype=np.float32))
        for _ in range(count):
            client.infer("flowers", [tensor], client_timeout=10)
    finally:
        client.close()


@pytest.mark.stack
def test_the_hosts_of_a_real_envoy(local_stack):
    admin = local_stack.settings.admin_listen
    before = read_upstream_hosts(admin, 2.0, cluster="triton_grpc")
    _infer(local_stack.grpc_url, 4)
    hosts = read_upstream_hosts(admin, 2.0)
    assert sorted((h.cluster, h.instance) for h in hosts) == [
        ("triton_grpc", "triton-0"),
        ("triton_grpc", "triton-1"),
        ("triton_http", "triton-0"),
        ("triton_http", "triton-1"),
    ]
    states = {s.name: s for s in local_stack.states()}
    for host in hosts:
        assert host.healthy and not host.ejected and not host.draining, host
        port = int(host.address.rsplit(":", 1)[1])
        expected = states[host.instance].grpc_port if host.cluster == "triton_grpc" else None
        if expected is not None:
            assert port == expected
    grew = {
        h.instance: h.rq_total - b.rq_total
        for h in hosts
        if h.cluster == "triton_grpc"
        for b in before
        if b.instance == h.instance
    }
    # Round robin: two of the four inferences each (health checks do not count as requests).
    assert grew == {"triton-0": 2, "triton-1": 2}

    # Each of the four answered requests counts as a success on the host that served it (other
    # tests' cancelled requests count in rq_total only, so only the growth is checked). Envoy
    # bumps a host's counters at different moments of a request's life: read until settled.
    succeeded: dict[str, int] = {}

    def counted() -> bool:
        succeeded.clear()
        for h in read_upstream_hosts(admin, 2.0, cluster="triton_grpc"):
            for b in before:
                if b.instance == h.instance:
                    succeeded[h.instance] = h.rq_success - b.rq_success
        return succeeded == {"triton-0": 2, "triton-1": 2}

    assert wait_until(counted, timeout=5.0, interval=0.2), succeeded


@pytest.mark.stack
def test_the_request_time_percentile_over_a_window(local_stack):
    window = RequestTimeWindow(local_stack.settings.admin_listen)
    window.read()  # the baseline
    _infer(local_stack.grpc_url, 20)
    readings: list[tuple[float | None, int]] = []

    def counted() -> bool:
        # Envoy merges histograms once a second.
        readings.append(window.read())
        return sum(count for _, count in readings) >= 20

    assert wait_until(counted, timeout=5.0, interval=0.5)
    p90 = next(value for value, count in readings if count)
    assert p90 is not None and 0.0005 < p90 < 5.0
    # Once Envoy has flushed what is left (earlier tests' requests too), a window without
    # requests has no percentile.
    assert wait_until(lambda: window.read() == (None, 0), timeout=5.0, interval=1.1)


def test_a_hostile_admin_answer_is_cleaned_or_refused():
    document = {
        "cluster_statuses": [
            {
                "name": "triton_grpc",
                "host_statuses": [
                    {
                        "address": {"socket_address": {"address": "10.0.0.1", "port_value": 8001}},
                        "hostname": "evil\x1b[2J\x07name",
                        "stats": [{"name": "rq_total", "value": "12"}, {"name": "rq_active"}],
                        "health_status": {
                            "failed_outlier_check": True,
                            "eds_health_status": "HEALTHY",
                        },
                    },
                    "not a host",
                    {"address": "nonsense", "stats": "nope"},
                ],
            },
            7,
        ]
    }
    hosts = parse_clusters(json.loads(json.dumps(document)))
    first = hosts[0]
    assert "\x1b" not in first.instance and "\x07" not in first.instance
    assert first.rq_total == 12 and first.rq_active == 0
    assert first.ejected and not first.healthy
    assert first.health_flags == ("failed_outlier_check",)
    for bad in ({}, [], "text", {"cluster_statuses": "x"}):
        with pytest.raises(AdminError):
            parse_clusters(bad)
    with pytest.raises(AdminError, match="did not answer"):
        read_upstream_hosts("127.0.0.1:1", 0.5)


def test_bucket_percentiles():
    buckets = {(0.0, 10.0): 80, (10.0, 10.0): 10, (20.0, 20.0): 10}
    assert bucket_percentile(buckets, 50) == pytest.approx(6.25)
    assert bucket_percentile(buckets, 90) == pytest.approx(20.0)
    assert bucket_percentile(buckets, 100) == pytest.approx(40.0)
    assert bucket_percentile({}, 90) is None
    stats = {
        "stats": [
            {"name": "x", "value": 1},
            {
                "histograms": {
                    "details": [
                        {
                            "name": "cluster.triton_grpc.upstream_rq_time",
                            "totals": [
                                {"lower_bound": 4, "width": 0.1, "count": 3},
                                {"lower_bound": "bad", "width": 1, "count": 1},
                            ],
                        }
                    ]
                }
            },
        ]
    }
    parsed = parse_request_time_buckets(stats, "cluster.triton_grpc.upstream_rq_time")
    assert parsed == {(4.0, 0.1): 3}
