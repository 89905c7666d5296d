"""Envoy configuration: every generated variant is checked by the real envoy binary
(`envoy --mode validate`), and the settings that make a dying instance cost no request are there.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from pathlib import Path

import pytest

from flowerdemo.serving.envoy import (
    GRPC_RETRY_ON,
    Endpoint,
    EndpointWriter,
    EnvoyConfigError,
    EnvoySettings,
    build_config,
    envoy_command,
    find_envoy,
    link_kib_s,
    render_config,
    validate_command,
    write_config,
)


def _settings(count: int, **overrides) -> EnvoySettings:
    values = {
        "grpc_upstreams": tuple(f"127.0.0.1:{8001 + 10 * k}" for k in range(count)),
        "http_upstreams": tuple(f"127.0.0.1:{8000 + 10 * k}" for k in range(count)),
    }
    values.update(overrides)
    return EnvoySettings(**values)


VARIANTS = {
    "one-instance": _settings(1),
    "three-round-robin": _settings(3),
    "seven-least-request": _settings(7, lb_policy="least_request"),
    "grpc-only": _settings(2, http_listen=None, http_upstreams=()),
    "other-listeners": _settings(
        2,
        listen="127.0.0.1:60050",
        http_listen="127.0.0.1:60051",
        admin_listen="127.0.0.1:60052",
        num_retries=5,
        access_log=True,
    ),
}


@pytest.mark.parametrize("name", [*sorted(VARIANTS), "endpoints-from-files"])
def test_envoy_accepts_every_generated_config(name, tmp_path):
    if name == "endpoints-from-files":
        folder = tmp_path / "endpoints"
        EndpointWriter(folder).write(
            (Endpoint("triton-0", "127.0.0.1:8001", "127.0.0.1:8000", draining=True),)
        )
        settings = _settings(1, endpoints_dir=folder)
    else:
        settings = VARIANTS[name]
    path = write_config(settings, tmp_path / f"{name}.yaml")
    result = subprocess.run(
        validate_command(path), capture_output=True, text=True, timeout=60, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"configuration '{path}' OK" in output


def test_envoy_rejects_a_broken_config(tmp_path):
    # The validation is real: a misspelt field fails it.
    text = render_config(_settings(2)).replace("no_traffic_interval", "no_trafic_interval")
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    result = subprocess.run(
        validate_command(path), capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "no_trafic_interval" in result.stdout + result.stderr


def test_the_no_request_lost_settings_are_present():
    config = build_config(_settings(3))
    grpc_listener, http_listener = config["static_resources"]["listeners"]
    grpc_cluster, http_cluster = config["static_resources"]["clusters"]
    manager = grpc_listener["filter_chains"][0]["filters"][0]["typed_config"]
    route = manager["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    retry = route["retry_policy"]
    assert retry["retry_on"] == "connect-failure,refused-stream,unavailable,reset"
    assert retry["num_retries"] >= 2
    assert retry["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    assert grpc_cluster["lb_policy"] == "ROUND_ROBIN"
    # Host-set changes apply at once: Envoy's default 1 s merge window kept a new instance idle.
    assert grpc_cluster["common_lb_config"]["update_merge_window"] == "0s"
    thresholds = grpc_cluster["circuit_breakers"]["thresholds"][0]
    assert min(thresholds[key] for key in ("max_requests", "max_retries")) >= 10_000
    outlier = grpc_cluster["outlier_detection"]
    assert outlier["split_external_local_origin_errors"] is True
    assert outlier["consecutive_local_origin_failure"] == 1
    (health,) = grpc_cluster["health_checks"]
    assert "grpc_health_check" in health
    assert health["no_traffic_interval"] == "0.5s"
    # Two failed checks 0.5 s apart: a dead instance is marked within ~1-2 s.
    assert health["unhealthy_threshold"] * 0.5 <= 2
    protocol = grpc_cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in protocol["explicit_http_config"]
    assert http_cluster["health_checks"][0]["http_health_check"]["path"] == "/v2/health/ready"
    assert "typed_extension_protocol_options" not in http_cluster
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    # Every answer names its instance, from the endpoint's metadata.
    (header,) = manager["route_config"]["virtual_hosts"][0]["routes"][0]["response_headers_to_add"]
    assert header["header"] == {
        "key": "x-flowerdemo-instance",
        "value": "%UPSTREAM_METADATA(flowerdemo:instance)%",
    }
    endpoints = grpc_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    names = [e["metadata"]["filter_metadata"]["flowerdemo"]["instance"] for e in endpoints]
    assert names == ["triton-0", "triton-1", "triton-2"]
    assert http_listener["address"]["socket_address"]["port_value"] == 50051


def test_yaml_quotes_the_retry_list():
    text = render_config(_settings(2))
    assert f'retry_on: "{GRPC_RETRY_ON}"' in text
    assert '"@type": "type.googleapis.com/' in text


def test_envoy_command_line():
    command = envoy_command(Path("e.yaml"))
    assert command[0] == str(find_envoy())
    assert command[1:] == [
        "-c",
        "e.yaml",
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "--log-level",
        "warn",
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"grpc_upstreams": ()}, "at least one gRPC upstream"),
        ({"lb_policy": "random"}, "load-balancing policy 'random'"),
        ({"listen": "localhost"}, "listen: 'localhost' is not HOST:PORT"),
        ({"admin_listen": "127.0.0.1:70000"}, "admin: '127.0.0.1:70000' is not HOST:PORT"),
        ({"http_listen": "127.0.0.1:50050"}, "both use 127.0.0.1:50050"),
        ({"grpc_upstreams": ("127.0.0.1:8001", "host")}, "gRPC upstream of instance 1"),
    ],
)
def test_bad_settings_name_what_is_wrong(overrides, message):
    with pytest.raises(EnvoyConfigError, match=re.escape(message)):
        build_config(_settings(2, **overrides))


def test_a_simulated_link_paces_every_listener_and_envoy_accepts_it(tmp_path):
    settings = _settings(2, bandwidth_limit_kib_s=link_kib_s(1000))
    assert settings.bandwidth_limit_kib_s == 122_070  # 1 Gbit/s = 125,000,000 B/s
    for listener in build_config(settings)["static_resources"]["listeners"]:
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        names = [f["name"] for f in manager["http_filters"]]
        assert names == ["envoy.filters.http.bandwidth_limit", "envoy.filters.http.router"]
        limit = manager["http_filters"][0]["typed_config"]
        assert (limit["limit_kbps"], limit["enable_mode"]) == (122_070, "REQUEST_AND_RESPONSE")
    unlimited = build_config(_settings(2))["static_resources"]["listeners"][0]
    assert "bandwidth_limit" not in json.dumps(unlimited)
    path = write_config(settings, tmp_path / "link.yaml")
    result = subprocess.run(
        validate_command(path), capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with pytest.raises(EnvoyConfigError, match="bandwidth limit 0 KiB/s"):
        build_config(_settings(2, bandwidth_limit_kib_s=0))


def test_endpoint_files_are_replaced_atomically(tmp_path):
    """A reader polling the file while it is rewritten 300 times sees only whole documents, each
    one of the sets written; no temporary file is left behind."""
    writer = EndpointWriter(tmp_path)
    sets = [
        tuple(
            Endpoint(f"triton-{k}", f"127.0.0.1:{8001 + 10 * k}", f"127.0.0.1:{8000 + 10 * k}")
            for k in range(count)
        )
        for count in (1, 2, 3, 40)
    ]
    writer.write(sets[0])
    seen: set[int] = set()
    problems: list[str] = []
    done = threading.Event()

    def read() -> None:
        path = writer.path("triton_grpc")
        while not done.is_set():
            text = path.read_text()
            try:
                document = json.loads(text)
            except json.JSONDecodeError as error:
                problems.append(f"{error}: {len(text)} bytes")
                continue
            endpoints = document["resources"][0]["endpoints"][0]["lb_endpoints"]
            seen.add(len(endpoints))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for round_ in range(300):
            writer.write(sets[round_ % len(sets)])
    finally:
        done.set()
        reader.join()
    assert not problems, problems[:3]
    assert seen <= {1, 2, 3, 40} and len(seen) > 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["triton_grpc.json", "triton_http.json"]
    document = json.loads(writer.path("triton_http").read_text())
    assert document["version_info"] == str(writer.version) == "301"
    (assignment,) = document["resources"]
    assert assignment["cluster_name"] == "triton_http"
    first = assignment["endpoints"][0]["lb_endpoints"][0]
    assert first["endpoint"]["address"]["socket_address"]["port_value"] == 8000
    assert first["endpoint"]["hostname"] == "triton-0"
    assert first["metadata"]["filter_metadata"]["flowerdemo"]["instance"] == "triton-0"


def test_a_draining_endpoint_is_marked_so(tmp_path):
    writer = EndpointWriter(tmp_path)
    writer.write(
        (
            Endpoint("triton-0", "127.0.0.1:8001", "127.0.0.1:8000"),
            Endpoint("triton-1", "127.0.0.1:8011", "127.0.0.1:8010", draining=True),
        )
    )
    document = json.loads(writer.path("triton_grpc").read_text())
    endpoints = document["resources"][0]["endpoints"][0]["lb_endpoints"]
    assert [e.get("health_status") for e in endpoints] == [None, "DRAINING"]
