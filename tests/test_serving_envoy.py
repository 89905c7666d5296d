"""Envoy configuration: every generated variant is checked by the real envoy binary
(`envoy --mode validate`), and the settings that make a dying instance cost no request are there.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from flowerdemo.serving.envoy import (
    GRPC_RETRY_ON,
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


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_envoy_accepts_every_generated_config(name, tmp_path):
    path = write_config(VARIANTS[name], tmp_path / f"{name}.yaml")
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
