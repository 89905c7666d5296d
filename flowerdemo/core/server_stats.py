"""Triton's own timing of our requests, read from its statistics API on every server we can see.

Through a load balancer a statistics call lands on one backend at a time, so it says nothing
about the whole (perf_analyzer's server columns are meaningless there). This reader asks each
instance directly (the local stack knows their ports; a remote one is named by `--server-url`)
and returns the cumulative counters per server; `stats.ServerSplit.between` turns two readings
into per-request averages, summed over the instances.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from flowerdemo.core.stats import RunStatistics, ServerCounters

log = logging.getLogger(__name__)

StatsProtocol = Literal["grpc", "http"]


class ServerStatsReader:
    """Reads one model's cumulative inference statistics from a set of servers (`host:port`).

    Servers that do not answer within `timeout_s` are left out of that reading (an instance
    starting or stopping); the set may change between readings (`set_urls`). Create and use it
    inside one running event loop: the clients are bound to it."""

    def __init__(
        self,
        urls: Sequence[str],
        model: str,
        *,
        protocol: StatsProtocol = "grpc",
        timeout_s: float = 1.0,
    ) -> None:
        self.model = model
        self.protocol = protocol
        self.timeout_s = timeout_s
        self._urls: tuple[str, ...] = ()
        self._clients: dict[str, Any] = {}
        self._retired: list[Any] = []
        self.set_urls(urls)

    @property
    def urls(self) -> tuple[str, ...]:
        return self._urls

    def set_urls(self, urls: Sequence[str]) -> None:
        self._urls = tuple(dict.fromkeys(urls))
        for url in [u for u in self._clients if u not in self._urls]:
            # Closing is a coroutine: the client is closed with the others in close().
            self._retired.append(self._clients.pop(url))

    async def read(self) -> dict[str, ServerCounters]:
        """The counters of every server that answered, keyed by its address."""
        urls = self._urls
        results = await asyncio.gather(*(self._read_one(url) for url in urls))
        return {url: counters for url, counters in zip(urls, results, strict=True) if counters}

    async def _read_one(self, url: str) -> ServerCounters | None:
        try:
            client = self._client(url)
            if self.protocol == "grpc":
                response = await client.get_inference_statistics(
                    self.model, client_timeout=self.timeout_s
                )
                return _counters_of_proto(response)
            result = await asyncio.wait_for(
                client.get_inference_statistics(self.model), self.timeout_s
            )
            return _counters_of_json(result)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.debug("statistics of %s at %s: %s", self.model, url, error)
            return None

    def _client(self, url: str) -> Any:
        client = self._clients.get(url)
        if client is None:
            if self.protocol == "grpc":
                import tritonclient.grpc.aio as grpcaio

                client = grpcaio.InferenceServerClient(url)
            else:
                import tritonclient.http.aio as httpaio

                client = httpaio.InferenceServerClient(url)
            self._clients[url] = client
        return client

    async def close(self) -> None:
        clients = [*self._clients.values(), *self._retired]
        self._clients, self._retired = {}, []
        for client in clients:
            await _close_quietly(client)


async def _close_quietly(client: Any) -> None:
    try:
        await client.close()
    except Exception as error:
        log.debug("closing a statistics client: %s", error)


def _counters_of_proto(response: Any) -> ServerCounters | None:
    """Summed over the model's versions (a response lists each loaded version)."""
    parts = [stats.inference_stats for stats in response.model_stats]
    if not parts:
        return None
    return ServerCounters(
        success_count=sum(int(p.success.count) for p in parts),
        queue_ns=sum(int(p.queue.ns) for p in parts),
        compute_input_ns=sum(int(p.compute_input.ns) for p in parts),
        compute_infer_ns=sum(int(p.compute_infer.ns) for p in parts),
        compute_output_ns=sum(int(p.compute_output.ns) for p in parts),
    )


def _counters_of_json(result: Any) -> ServerCounters | None:
    parts = [stats.get("inference_stats", {}) for stats in result.get("model_stats", [])]
    if not parts:
        return None

    def total(kind: str, key: str) -> int:
        return sum(int(p.get(kind, {}).get(key, 0)) for p in parts)

    return ServerCounters(
        success_count=total("success", "count"),
        queue_ns=total("queue", "ns"),
        compute_input_ns=total("compute_input", "ns"),
        compute_infer_ns=total("compute_infer", "ns"),
        compute_output_ns=total("compute_output", "ns"),
    )


async def poll_server_statistics(
    reader: ServerStatsReader,
    statistics: RunStatistics,
    *,
    interval_s: float = 1.0,
    urls: Callable[[], Awaitable[Sequence[str]]] | None = None,
) -> None:
    """Hand a reading to `statistics` every `interval_s` until cancelled. `urls`, when given,
    is awaited for the current set of servers before each reading (instances come and go)."""
    while True:
        try:
            if urls is not None:
                reader.set_urls(await urls())
            statistics.record_server(await reader.read())
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # The split is an extra: a stack shutting down must not end the run's measuring.
            log.debug("server statistics: %s", error)
        await asyncio.sleep(interval_s)
