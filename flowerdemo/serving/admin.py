"""Reading Envoy's admin interface: which upstream hosts it has, their health, their requests,
and the upstream request-time percentile over a recent window.

Works for a stack this app did not start (`--admin host:port`), so everything read is treated as
untrusted: only the JSON forms are parsed, numbers are checked, and names pass through
`clean_server_text` before anyone shows them. Never raises for what a server sends: a broken
answer is an `AdminError` with one readable sentence.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from flowerdemo.core.text import clean_server_text

# Envoy's per-host health flags in /clusters?format=json, and the short names the text form uses.
HEALTH_FLAGS = {
    "failed_active_health_check": "failed_active_hc",
    "failed_outlier_check": "failed_outlier_check",
    "failed_active_degraded_check": "degraded_active_hc",
    "pending_dynamic_removal": "pending_dynamic_removal",
    "pending_active_hc": "pending_active_hc",
    "excluded_via_immediate_hc_fail": "excluded_via_immediate_hc_fail",
    "active_hc_timeout": "active_hc_timeout",
}
_MAX_BODY = 8 * 1024 * 1024


class AdminError(RuntimeError):
    """Envoy's admin interface did not answer, or answered something that is not its JSON."""


@dataclass(frozen=True)
class UpstreamHost:
    """One host of one cluster as Envoy sees it."""

    cluster: str
    address: str
    """host:port"""
    instance: str
    """The endpoint's hostname (our stacks set it to the instance name), else the address."""
    healthy: bool
    """Envoy routes new requests to it: no failure flag and EDS status HEALTHY (or none)."""
    health_flags: tuple[str, ...]
    eds_status: str
    """HEALTHY, DRAINING, UNHEALTHY, ... as the endpoint file said."""
    rq_total: int = 0
    rq_success: int = 0
    rq_error: int = 0
    rq_timeout: int = 0
    rq_active: int = 0
    cx_active: int = 0

    @property
    def ejected(self) -> bool:
        """Failing Envoy's health checks or its outlier detection."""
        return any(
            flag in self.health_flags
            for flag in ("failed_active_hc", "failed_outlier_check", "active_hc_timeout")
        )

    @property
    def draining(self) -> bool:
        return self.eds_status == "DRAINING"


def _get(url: str, timeout_s: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (http only)
            return bytes(response.read(_MAX_BODY))
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise AdminError(f"Envoy admin at {url.split('/')[2]} did not answer: {error}") from error


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise AdminError(f"Envoy admin: {what} is not JSON ({error})") from error


def _admin_base(admin_address: str) -> str:
    address = admin_address.strip()
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    return f"http://{address}"


def _count(value: Any) -> int:
    # Envoy writes counters as strings or numbers and leaves out zeros.
    try:
        number = int(value)
    except (TypeError, ValueError):
        return 0
    return max(0, number)


def _host(cluster: str, entry: Any) -> UpstreamHost | None:
    if not isinstance(entry, dict):
        return None
    socket = entry.get("address", {})
    socket = socket.get("socket_address", {}) if isinstance(socket, dict) else {}
    if not isinstance(socket, dict):
        return None
    host = clean_server_text(str(socket.get("address", "?")), 100)
    address = f"{host}:{_count(socket.get('port_value'))}"
    stats: dict[str, int] = {}
    for stat in entry.get("stats", ()) if isinstance(entry.get("stats"), list) else ():
        if isinstance(stat, dict) and isinstance(stat.get("name"), str):
            stats[stat["name"]] = _count(stat.get("value", 0))
    health = entry.get("health_status", {})
    health = health if isinstance(health, dict) else {}
    flags = tuple(short for key, short in HEALTH_FLAGS.items() if health.get(key) is True)
    eds_status = clean_server_text(str(health.get("eds_health_status", "HEALTHY")), 40)
    hostname = entry.get("hostname")
    instance = clean_server_text(hostname, 100) if isinstance(hostname, str) and hostname else ""
    return UpstreamHost(
        cluster=cluster,
        address=address,
        instance=instance or address,
        healthy=not flags and eds_status in ("HEALTHY", "UNKNOWN"),
        health_flags=flags,
        eds_status=eds_status,
        rq_total=stats.get("rq_total", 0),
        rq_success=stats.get("rq_success", 0),
        rq_error=stats.get("rq_error", 0),
        rq_timeout=stats.get("rq_timeout", 0),
        rq_active=stats.get("rq_active", 0),
        cx_active=stats.get("cx_active", 0),
    )


def parse_clusters(document: Any) -> list[UpstreamHost]:
    """The hosts of every cluster in a parsed /clusters?format=json answer."""
    if not isinstance(document, dict) or not isinstance(document.get("cluster_statuses"), list):
        raise AdminError("Envoy admin: /clusters answer has no cluster_statuses")
    hosts: list[UpstreamHost] = []
    for cluster in document["cluster_statuses"]:
        if not isinstance(cluster, dict):
            continue
        name = clean_server_text(str(cluster.get("name", "?")), 100)
        entries = cluster.get("host_statuses", [])
        for entry in entries if isinstance(entries, list) else ():
            host = _host(name, entry)
            if host is not None:
                hosts.append(host)
    return hosts


def read_upstream_hosts(
    admin_address: str, timeout_s: float = 1.0, cluster: str | None = None
) -> list[UpstreamHost]:
    """Envoy's upstream hosts from `/clusters?format=json` at `admin_address` (host:port), of
    every cluster or of `cluster` only. AdminError when it does not answer properly."""
    body = _get(f"{_admin_base(admin_address)}/clusters?format=json", timeout_s)
    hosts = parse_clusters(_json(body, "/clusters"))
    return [h for h in hosts if cluster is None or h.cluster == cluster]


# ----- upstream request time -------------------------------------------------------------------

Buckets = dict[tuple[float, float], int]
"""(lower bound ms, width ms) -> count: one histogram in Envoy's detailed bucket form."""


def parse_request_time_buckets(document: Any, histogram: str) -> Buckets:
    """The cumulative buckets of `histogram` from a parsed
    `/stats?format=json&histogram_buckets=detailed` answer (empty when Envoy has none yet)."""
    if not isinstance(document, dict) or not isinstance(document.get("stats"), list):
        raise AdminError("Envoy admin: /stats answer has no stats")
    for entry in document["stats"]:
        histograms = entry.get("histograms") if isinstance(entry, dict) else None
        if not isinstance(histograms, dict):
            continue
        for detail in histograms.get("details", ()):
            if not isinstance(detail, dict) or detail.get("name") != histogram:
                continue
            buckets: Buckets = {}
            for bucket in detail.get("totals", ()):
                if not isinstance(bucket, dict):
                    continue
                try:
                    lower = float(bucket.get("lower_bound", 0.0))
                    width = float(bucket.get("width", 0.0))
                except (TypeError, ValueError):
                    continue
                if math.isfinite(lower) and math.isfinite(width) and width >= 0:
                    buckets[(lower, width)] = _count(bucket.get("count"))
            return buckets
    return {}


def read_request_time_buckets(
    admin_address: str, cluster: str = "triton_grpc", timeout_s: float = 1.0
) -> Buckets:
    """The cumulative upstream request-time histogram of `cluster`. Envoy merges histograms
    when it flushes its stats (our stacks: every second)."""
    histogram = f"cluster.{cluster}.upstream_rq_time"
    url = (
        f"{_admin_base(admin_address)}/stats?format=json&histogram_buckets=detailed"
        f"&filter=^{histogram}$"
    )
    return parse_request_time_buckets(_json(_get(url, timeout_s), "/stats"), histogram)


def bucket_percentile(buckets: Buckets, percentile: float) -> float | None:
    """The `percentile` (0-100) of a bucketed histogram in ms, interpolated within the bucket;
    None when it holds no sample."""
    total = sum(buckets.values())
    if total <= 0:
        return None
    rank = percentile / 100.0 * total
    seen = 0
    for (lower, width), count in sorted(buckets.items()):
        if count <= 0:
            continue
        if seen + count >= rank:
            return lower + width * max(0.0, min(1.0, (rank - seen) / count))
        seen += count
    (lower, width), _ = max(buckets.items())
    return lower + width


class RequestTimeWindow:
    """The upstream request-time percentile over a recent window: each `read()` takes Envoy's
    cumulative histogram and subtracts the one read about `span_s` seconds earlier (or the
    previous reading, when span_s is 0)."""

    def __init__(
        self,
        admin_address: str,
        cluster: str = "triton_grpc",
        percentile: float = 90.0,
        span_s: float = 0.0,
    ) -> None:
        self.admin_address = admin_address
        self.cluster = cluster
        self.percentile = percentile
        self.span_s = span_s
        self._history: list[tuple[float, Buckets]] = []

    def read(self, timeout_s: float = 1.0) -> tuple[float | None, int]:
        """(percentile in seconds or None, requests in the window). AdminError when Envoy does
        not answer."""
        current = read_request_time_buckets(self.admin_address, self.cluster, timeout_s)
        now = time.monotonic()
        base: Buckets = self._history[0][1] if self._history else {}
        window = {
            key: count - base.get(key, 0)
            for key, count in current.items()
            if count > base.get(key, 0)
        }
        if current:
            self._history.append((now, current))
            # Keep the newest reading at least span_s old as the next base.
            while len(self._history) > 1 and now - self._history[1][0] >= self.span_s:
                self._history.pop(0)
        value = bucket_percentile(window, self.percentile)
        return (None if value is None else value / 1000.0), sum(window.values())
