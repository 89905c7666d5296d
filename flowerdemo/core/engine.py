"""The async client engine: one request per click, or N requests kept outstanding.

Every request ends as exactly one InferenceEvent, handed to each sink: answered, or failed with
an ErrorKind (including requests cancelled at shutdown). The engine creates its Triton client in
`connect()`, inside the running event loop, because the aio clients are bound to their loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

from flowerdemo.core.events import (
    Classification,
    ErrorKind,
    InferenceEvent,
    RequestError,
)
from flowerdemo.core.model_spec import ModelSpec, ModelSpecError, parse_model_spec
from flowerdemo.core.preprocess import PreprocessOptions, TensorCache

log = logging.getLogger(__name__)

TransportName = Literal["grpc", "http"]
PROTOCOLS: tuple[TransportName, ...] = ("grpc", "http")
DEFAULT_URL = "127.0.0.1:50050"
DEFAULT_HTTP_URL = "127.0.0.1:50051"

EventSink = Callable[[InferenceEvent], None]

FAILURE_BACKOFF_S = 0.05
MAX_FAILURE_BACKOFF_S = 1.0
SendSink = Callable[[int, tuple[int, ...]], None]
"""Told (request id, image indices) as each request goes out: a display marks those photos busy."""

_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")


@dataclass(frozen=True)
class EngineSettings:
    url: str = DEFAULT_URL
    protocol: TransportName = "grpc"
    model_name: str = "flowers"
    model_version: str = ""
    topk: int = 3
    batch_size: int = 1
    request_timeout_s: float = 10.0
    """The deadline of every inference request."""
    connect_timeout_s: float = 5.0
    """The deadline of every call made while connecting (liveness, metadata, config)."""
    preprocess: PreprocessOptions = field(default_factory=PreprocessOptions)
    fallback_labels: tuple[str, ...] = ()
    """Class names to use when the server does not attach labels to its answers."""


class ConnectError(RuntimeError):
    """The server, the model or the settings cannot be used; the message says what to do."""


def check_url(url: str) -> str:
    """`host:port` as the Triton clients want it; a clear error for anything else."""
    stripped = url.strip()
    for scheme in ("grpc://", "http://", "https://"):
        if stripped.startswith(scheme):
            stripped = stripped[len(scheme) :]
    stripped = stripped.rstrip("/")
    match = _HOST_PORT.match(stripped)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ConnectError(
            f"'{url}' is not a server address: write it as HOST:PORT, e.g. {DEFAULT_URL}"
        )
    return stripped


class _Transport(Protocol):
    async def is_server_live(self, timeout_s: float) -> bool: ...
    async def is_model_ready(self, model: str, version: str, timeout_s: float) -> bool: ...
    async def model_metadata(
        self, model: str, version: str, timeout_s: float
    ) -> dict[str, Any]: ...
    async def model_config(self, model: str, version: str, timeout_s: float) -> dict[str, Any]: ...
    async def model_names(self, timeout_s: float) -> list[str]: ...
    def make_input(self, name: str, array: npt.NDArray[np.generic], datatype: str) -> Any: ...
    def make_output(self, name: str, class_count: int) -> Any: ...
    async def infer(
        self,
        model: str,
        version: str,
        inputs: list[Any],
        outputs: list[Any],
        request_id: str,
        timeout_s: float,
    ) -> Any: ...
    async def close(self) -> None: ...


class _GrpcTransport:
    def __init__(self, url: str) -> None:
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as grpcaio

        self._types = grpcclient
        # Our own channel arguments replace all of the client's defaults, so the message limits are
        # restated. Short reconnect backoff: a restarted server is used again within a second, and
        # a call to a dead one fails at its deadline instead of waiting out a 20 s backoff.
        channel_args = [
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.max_receive_message_length", 2**31 - 1),
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.enable_retries", 0),
        ]
        self._client = grpcaio.InferenceServerClient(url, channel_args=channel_args)

    async def is_server_live(self, timeout_s: float) -> bool:
        return bool(await self._client.is_server_live(client_timeout=timeout_s))

    async def is_model_ready(self, model: str, version: str, timeout_s: float) -> bool:
        return bool(await self._client.is_model_ready(model, version, client_timeout=timeout_s))

    async def model_metadata(self, model: str, version: str, timeout_s: float) -> dict[str, Any]:
        result = await self._client.get_model_metadata(
            model, version, as_json=True, client_timeout=timeout_s
        )
        return dict(result)

    async def model_config(self, model: str, version: str, timeout_s: float) -> dict[str, Any]:
        result = await self._client.get_model_config(
            model, version, as_json=True, client_timeout=timeout_s
        )
        return dict(result)

    async def model_names(self, timeout_s: float) -> list[str]:
        index = await self._client.get_model_repository_index(
            as_json=True, client_timeout=timeout_s
        )
        return sorted({str(m["name"]) for m in index.get("models", [])})

    def make_input(self, name: str, array: npt.NDArray[np.generic], datatype: str) -> Any:
        tensor = self._types.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        return tensor

    def make_output(self, name: str, class_count: int) -> Any:
        return self._types.InferRequestedOutput(name, class_count=class_count)

    async def infer(
        self,
        model: str,
        version: str,
        inputs: list[Any],
        outputs: list[Any],
        request_id: str,
        timeout_s: float,
    ) -> Any:
        return await self._client.infer(
            model,
            inputs,
            model_version=version,
            outputs=outputs,
            request_id=request_id,
            client_timeout=timeout_s,
        )

    async def close(self) -> None:
        await self._client.close()


class _HttpTransport:
    def __init__(self, url: str) -> None:
        import tritonclient.http as httpclient
        import tritonclient.http.aio as httpaio

        self._types = httpclient
        self._client = httpaio.InferenceServerClient(url, conn_limit=512)

    async def is_server_live(self, timeout_s: float) -> bool:
        return bool(await asyncio.wait_for(self._client.is_server_live(), timeout_s))

    async def is_model_ready(self, model: str, version: str, timeout_s: float) -> bool:
        return bool(await asyncio.wait_for(self._client.is_model_ready(model, version), timeout_s))

    async def model_metadata(self, model: str, version: str, timeout_s: float) -> dict[str, Any]:
        return dict(
            await asyncio.wait_for(self._client.get_model_metadata(model, version), timeout_s)
        )

    async def model_config(self, model: str, version: str, timeout_s: float) -> dict[str, Any]:
        return dict(
            await asyncio.wait_for(self._client.get_model_config(model, version), timeout_s)
        )

    async def model_names(self, timeout_s: float) -> list[str]:
        index = await asyncio.wait_for(self._client.get_model_repository_index(), timeout_s)
        return sorted({str(m["name"]) for m in index})

    def make_input(self, name: str, array: npt.NDArray[np.generic], datatype: str) -> Any:
        tensor = self._types.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        return tensor

    def make_output(self, name: str, class_count: int) -> Any:
        return self._types.InferRequestedOutput(name, binary_data=True, class_count=class_count)

    async def infer(
        self,
        model: str,
        version: str,
        inputs: list[Any],
        outputs: list[Any],
        request_id: str,
        timeout_s: float,
    ) -> Any:
        return await asyncio.wait_for(
            self._client.infer(
                model, inputs, model_version=version, outputs=outputs, request_id=request_id
            ),
            timeout_s,
        )

    async def close(self) -> None:
        await self._client.close()


def _make_transport(protocol: TransportName, url: str) -> _Transport:
    if protocol == "grpc":
        return _GrpcTransport(url)
    if protocol == "http":
        return _HttpTransport(url)
    raise ConnectError(f"unknown protocol '{protocol}' (choose grpc or http)")


def classify_error(error: BaseException) -> RequestError:
    """Map whatever a client call raised to the ErrorKind a user can act on."""
    if isinstance(error, asyncio.TimeoutError | TimeoutError):
        return RequestError(ErrorKind.DEADLINE, "no answer within the request deadline")
    if isinstance(error, asyncio.CancelledError):
        return RequestError(ErrorKind.CANCELLED, "cancelled before the answer came")
    status = ""
    message = str(error)
    status_of = getattr(error, "status", None)
    if callable(status_of):
        status = str(status_of() or "")
        message = str(getattr(error, "message", lambda: message)() or message)
    if "DEADLINE_EXCEEDED" in status:
        return RequestError(ErrorKind.DEADLINE, message)
    if "UNAVAILABLE" in status or _is_connection_error(error):
        return RequestError(ErrorKind.UNAVAILABLE, message or "server unreachable")
    if "CANCELLED" in status:
        return RequestError(ErrorKind.CANCELLED, message)
    if status or type(error).__name__ == "InferenceServerException":
        return RequestError(ErrorKind.SERVER, message)
    return RequestError(ErrorKind.RESPONSE, f"{type(error).__name__}: {message}")


def _is_connection_error(error: BaseException) -> bool:
    if isinstance(error, ConnectionError | OSError):
        return True
    # aiohttp's connection errors, without importing aiohttp for the gRPC path.
    return any(cls.__name__.startswith("ClientConnect") for cls in type(error).__mro__)


class InferenceEngine:
    """Sends classification requests for a fixed list of photos and reports every outcome."""

    def __init__(self, settings: EngineSettings, images: Sequence[Image.Image]) -> None:
        self.settings = settings
        self._images = images
        self._sinks: list[EventSink] = []
        self._send_sinks: list[SendSink] = []
        self._transport: _Transport | None = None
        self._spec: ModelSpec | None = None
        self._cache: TensorCache | None = None
        self._inputs: dict[tuple[int, ...], Any] = {}
        self._request_ids = itertools.count(1)
        self._requests: set[asyncio.Task[InferenceEvent]] = set()
        self._in_flight = 0
        self._sent = 0
        self._auto_stop: asyncio.Event | None = None
        self._target_concurrency = 0
        self._workers: dict[int, asyncio.Task[None]] = {}
        self._auto_batches: Iterator[tuple[int, ...]] = iter(())
        self._auto_budget: Iterator[int] = iter(())

    # -- state -----------------------------------------------------------------------------
    def add_sink(self, sink: EventSink) -> None:
        self._sinks.append(sink)

    def add_send_sink(self, sink: SendSink) -> None:
        """Also report each request as it is sent; its InferenceEvent follows later."""
        self._send_sinks.append(sink)

    @property
    def spec(self) -> ModelSpec:
        if self._spec is None:
            raise RuntimeError("not connected: await connect() first")
        return self._spec

    @property
    def connected(self) -> bool:
        return self._spec is not None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def sent(self) -> int:
        return self._sent

    @property
    def running_automatic(self) -> bool:
        return self._auto_stop is not None

    @property
    def concurrency(self) -> int:
        return self._target_concurrency

    # -- connecting ------------------------------------------------------------------------
    async def connect(self) -> ModelSpec:
        """Reach the server, validate the model, preprocess every photo. Raises ConnectError."""
        settings = self.settings
        url = check_url(settings.url)
        if settings.topk < 1:
            raise ConnectError(f"top-k must be at least 1, not {settings.topk}")
        if settings.batch_size < 1:
            raise ConnectError(f"batch size must be at least 1, not {settings.batch_size}")
        if not self._images:
            raise ConnectError("there are no images to classify")
        await self._close_transport()
        transport = _make_transport(settings.protocol, url)
        self._transport = transport
        deadline = settings.connect_timeout_s
        where = f"{settings.protocol} server at {url}"
        try:
            try:
                await transport.is_server_live(deadline)
            except BaseException as error:
                if isinstance(error, asyncio.CancelledError):
                    raise
                problem = classify_error(error)
                raise ConnectError(
                    f"Cannot reach the {where} ({problem.kind.value}: {_first_line(problem.message)}). "
                    f"Check that the server is running and that the address and the protocol "
                    f"(--protocol grpc|http) are right; the default local stack listens on "
                    f"{DEFAULT_URL} (gRPC) and {DEFAULT_HTTP_URL} (HTTP)."
                ) from error
            model = settings.model_name
            try:
                ready = await transport.is_model_ready(model, settings.model_version, deadline)
            except Exception as error:
                ready = False
                log.debug("readiness of %s: %s", model, error)
            if not ready:
                available = await self._model_names_or_none(deadline)
                hint = (
                    f" Models there: {', '.join(available)}."
                    if available
                    else " The server did not list its models."
                )
                raise ConnectError(
                    f"The {where} has no ready model '{model}'"
                    f"{' version ' + settings.model_version if settings.model_version else ''}."
                    f"{hint} Choose one with --model NAME."
                )
            try:
                metadata = await transport.model_metadata(model, settings.model_version, deadline)
                config = await transport.model_config(model, settings.model_version, deadline)
            except Exception as error:
                raise ConnectError(
                    f"The {where} did not describe model '{model}': "
                    f"{_first_line(classify_error(error).message)}"
                ) from error
            try:
                spec = parse_model_spec(metadata, config)
            except ModelSpecError as error:
                raise ConnectError(
                    f"Model '{model}' on the {where} is not an image classifier this demo can "
                    f"drive: {error}"
                ) from error
            self._check_settings_against(spec)
        except BaseException:
            await self._close_transport()
            raise
        cache = TensorCache(self._images, spec, settings.preprocess)
        await asyncio.to_thread(cache.prepare_all)
        self._spec, self._cache, self._inputs = spec, cache, {}
        return spec

    def _check_settings_against(self, spec: ModelSpec) -> None:
        settings = self.settings
        if spec.batches and settings.batch_size > spec.max_batch_size:
            raise ConnectError(
                f"batch size {settings.batch_size} is larger than model '{spec.name}' accepts "
                f"(max_batch_size {spec.max_batch_size})"
            )
        if not spec.batches and settings.batch_size != 1:
            raise ConnectError(f"model '{spec.name}' does not batch: use batch size 1")
        if settings.topk > spec.num_classes:
            raise ConnectError(
                f"top-k {settings.topk} is more than model '{spec.name}' has classes ({spec.num_classes})"
            )
        labels = settings.fallback_labels
        if not spec.has_labels and labels and len(labels) != spec.num_classes:
            raise ConnectError(
                f"the labels file has {len(labels)} names but model '{spec.name}' has "
                f"{spec.num_classes} classes"
            )

    async def model_names(self) -> list[str]:
        """The server's model repository, for a model chooser (empty when unknown)."""
        return await self._model_names_or_none(self.settings.connect_timeout_s) or []

    async def _model_names_or_none(self, deadline: float) -> list[str] | None:
        if self._transport is None:
            return None
        try:
            return await self._transport.model_names(deadline)
        except Exception as error:
            log.debug("model index: %s", error)
            return None

    # -- requests --------------------------------------------------------------------------
    async def classify(self, indices: Sequence[int]) -> InferenceEvent:
        """One request for these photos (interactive mode). Never raises for a failed request."""
        task = asyncio.ensure_future(self._request(tuple(indices)))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)
        return await asyncio.shield(task)

    async def _request(self, indices: tuple[int, ...]) -> InferenceEvent:
        transport, spec, cache = self._transport, self._spec, self._cache
        if transport is None or spec is None or cache is None:
            raise RuntimeError("not connected: await connect() first")
        request_id = next(self._request_ids)
        self._sent += 1
        self._in_flight += 1
        self._emit_sent(request_id, indices)
        sent_at = time.monotonic()
        try:
            inputs = [self._input_for(indices, cache, transport)]
            class_count = self.settings.topk if spec.has_labels else 0
            outputs = [transport.make_output(spec.output_name, class_count)]
            result = await transport.infer(
                spec.name,
                self.settings.model_version,
                inputs,
                outputs,
                str(request_id),
                self.settings.request_timeout_s,
            )
            done_at = time.monotonic()
            event = InferenceEvent(
                request_id, indices, sent_at, done_at, self._topk(result, indices)
            )
        except asyncio.CancelledError:
            event = InferenceEvent(
                request_id,
                indices,
                sent_at,
                time.monotonic(),
                error=classify_error(asyncio.CancelledError()),
            )
            self._in_flight -= 1
            self._emit(event)
            raise
        except Exception as error:
            event = InferenceEvent(
                request_id, indices, sent_at, time.monotonic(), error=classify_error(error)
            )
        self._in_flight -= 1
        self._emit(event)
        return event

    def _input_for(
        self, indices: tuple[int, ...], cache: TensorCache, transport: _Transport
    ) -> Any:
        # The serialised input is built once per distinct batch: re-encoding 600 KB per request
        # would be the client's largest cost at high rates.
        tensor = self._inputs.get(indices)
        if tensor is None:
            spec = cache.spec
            tensor = transport.make_input(spec.input_name, cache.batch(indices), spec.input_dtype)
            if len(self._inputs) < 1024:
                self._inputs[indices] = tensor
        return tensor

    def _topk(
        self, result: Any, indices: tuple[int, ...]
    ) -> tuple[tuple[Classification, ...], ...]:
        spec = self.spec
        output = result.as_numpy(spec.output_name)
        if output is None:
            raise ValueError(f"the answer has no output '{spec.output_name}'")
        if not spec.batches:
            output = output[np.newaxis, ...]
        if len(output) != len(indices):
            raise ValueError(f"asked for {len(indices)} images, the answer has {len(output)}")
        if spec.has_labels:
            return tuple(tuple(_parse_classification(entry) for entry in row) for row in output)
        return tuple(self._topk_of_scores(row) for row in output)

    def _topk_of_scores(self, scores: npt.NDArray[Any]) -> tuple[Classification, ...]:
        flat = np.asarray(scores, dtype=np.float64).reshape(-1)
        k = min(self.settings.topk, flat.size)
        best = np.argpartition(-flat, k - 1)[:k]
        best = best[np.argsort(-flat[best], kind="stable")]
        labels = self.settings.fallback_labels
        return tuple(
            Classification(float(flat[i]), int(i), labels[i] if i < len(labels) else f"class {i}")
            for i in best
        )

    def _emit_sent(self, request_id: int, indices: tuple[int, ...]) -> None:
        for sink in self._send_sinks:
            try:
                sink(request_id, indices)
            except Exception:
                log.exception("send sink %r failed", sink)

    def _emit(self, event: InferenceEvent) -> None:
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:
                # A broken display must not take the engine down with it, nor lose the count.
                log.exception("event sink %r failed", sink)

    # -- automatic mode --------------------------------------------------------------------
    async def run_automatic(
        self,
        concurrency: int,
        *,
        duration_s: float | None = None,
        max_requests: int | None = None,
    ) -> None:
        """Keep `concurrency` requests outstanding until stop(), the duration or the request budget.

        Each answer starts the next request; the photos are cycled in order. On the way out no new
        request is sent and every outstanding one is awaited (each ends within its deadline).
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if self._auto_stop is not None:
            raise RuntimeError("automatic mode is already running")
        spec = self.spec
        stop = asyncio.Event()
        self._auto_stop = stop
        batches = self._batches(len(self._images), self.settings.batch_size if spec.batches else 1)
        budget = itertools.count() if max_requests is None else iter(range(max_requests))
        self._auto_batches, self._auto_budget = batches, budget
        self._target_concurrency = 0
        try:
            self.set_concurrency(concurrency)
            if duration_s is None:
                await stop.wait()
            else:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), duration_s)
        finally:
            stop.set()
            workers = list(self._workers.values())
            if workers:
                await asyncio.gather(*workers, return_exceptions=True)
            self._workers.clear()
            self._auto_stop = None
            self._target_concurrency = 0

    def set_concurrency(self, concurrency: int) -> None:
        """Change how many requests automatic mode keeps outstanding, while it runs."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self._target_concurrency = concurrency
        stop = self._auto_stop
        if stop is None:
            return
        for slot in range(concurrency):
            if slot not in self._workers or self._workers[slot].done():
                self._workers[slot] = asyncio.ensure_future(self._worker(slot, stop))

    async def _worker(self, slot: int, stop: asyncio.Event) -> None:
        failures_in_a_row = 0
        # A slot above the target concurrency retires after its current request.
        while not stop.is_set() and slot < self._target_concurrency:
            if next(self._auto_budget, None) is None:
                stop.set()
                break
            task = asyncio.ensure_future(self._request(next(self._auto_batches)))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)
            event = await asyncio.shield(task)
            failures_in_a_row = 0 if event.ok else failures_in_a_row + 1
            if failures_in_a_row:
                # A dead server answers "unavailable" at once: without a pause every slot would
                # spin, flooding the counters and the log. Each failure is still counted.
                pause = min(FAILURE_BACKOFF_S * 2 ** (failures_in_a_row - 1), MAX_FAILURE_BACKOFF_S)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)

    def stop(self) -> None:
        """Ask automatic mode to finish: nothing new is sent, outstanding requests still count."""
        if self._auto_stop is not None:
            self._auto_stop.set()

    @staticmethod
    def _batches(count: int, batch_size: int) -> Iterator[tuple[int, ...]]:
        cycle = itertools.cycle(range(count))
        while True:
            yield tuple(next(cycle) for _ in range(batch_size))

    # -- teardown --------------------------------------------------------------------------
    async def close(self) -> None:
        """Cancel whatever is outstanding (each counted as cancelled) and close the client."""
        self.stop()
        pending = [t for t in self._requests if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        workers = list(self._workers.values())
        for worker in workers:
            worker.cancel()
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)
        await self._close_transport()
        self._spec = None

    async def _close_transport(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            try:
                await transport.close()
            except Exception as error:
                log.debug("closing the client: %s", error)


def _parse_classification(entry: Any) -> Classification:
    text = entry.decode("utf-8") if isinstance(entry, bytes | bytearray) else str(entry)
    parts = text.split(":", 2)
    if len(parts) < 2:
        raise ValueError(f"unexpected classification entry '{text}'")
    label = parts[2] if len(parts) == 3 else f"class {parts[1]}"
    return Classification(float(parts[0]), int(parts[1]), label)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no details"
