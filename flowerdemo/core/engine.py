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
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from flowerdemo.core.events import (
    UNKNOWN_INSTANCE,
    Classification,
    ErrorKind,
    InferenceEvent,
    RequestError,
)
from flowerdemo.core.model_spec import (
    ModelSpec,
    ModelSpecError,
    WireChoice,
    check_wire,
    parse_model_spec,
    wire_model_name,
)
from flowerdemo.core.preprocess import PreprocessError, PreprocessOptions, TensorCache
from flowerdemo.core.text import clean_server_text
from flowerdemo.core.transport import (
    PROTOCOLS,
    GrpcCalls,
    InferAnswer,
    InferRequest,
    PreparedRequest,
    TlsError,
    TlsOptions,
    Transport,
    TransportError,
    TransportFactory,
    TransportName,
    make_transport,
)

log = logging.getLogger(__name__)

__all__ = [
    "PROTOCOLS",
    "ConnectError",
    "EngineSettings",
    "InferenceEngine",
    "TlsOptions",
    "TransportName",
    "check_url",
    "classify_error",
]

DEFAULT_URL = "127.0.0.1:50050"
DEFAULT_HTTP_URL = "127.0.0.1:50051"

EventSink = Callable[[InferenceEvent], None]

MAX_PREPARED_BYTES = 256 * 1024 * 1024
"""Encoded requests kept for reuse (about 440 FP32 224x224 photos)."""

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
    labels_from_user: bool = False
    """The names came from the user's labels file: a count that differs from the model's
    classes is an error even when the server has its own labels (the file also gives ground
    truth from folder names, which would then be wrong)."""
    tls: TlsOptions | None = None
    """TLS to the server (None: plain, unless the URL says https://)."""
    headers: tuple[tuple[str, str], ...] = ()
    """Sent with every call (e.g. ("Authorization", "Bearer ...")): gRPC metadata or HTTP headers."""
    grpc_calls: GrpcCalls = "unary"
    """gRPC only: one unary call per request, or requests as messages on short-lived streams
    (lighter per request; Envoy then balances and times streams, not requests)."""
    wire: WireChoice = "fp32"
    """How images travel: fp32 is the model as named; uint8 / jpeg its variants
    `<model>_uint8` / `<model>_jpeg`; auto the smallest variant the server lists."""


class ConnectError(RuntimeError):
    """The server, the model or the settings cannot be used; the message says what to do."""


def check_url(url: str) -> str:
    """`host:port` as the Triton clients want it; a clear error for anything else."""
    stripped = url.strip()
    for scheme in ("grpc://", "grpcs://", "http://", "https://"):
        if stripped.startswith(scheme):
            stripped = stripped[len(scheme) :]
    stripped = stripped.rstrip("/")
    match = _HOST_PORT.match(stripped)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ConnectError(
            f"'{url}' is not a server address: write it as HOST:PORT, e.g. {DEFAULT_URL}"
        )
    return stripped


def connection_security(url: str, tls: TlsOptions | None) -> TlsOptions | None:
    """The TLS to use for `url`: https:// (or grpcs://) means TLS, whatever else is set; a plain
    scheme with TLS options is a contradiction, never a silent downgrade or upgrade."""
    scheme = url.strip().split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("https", "grpcs"):
        return tls if tls is not None else TlsOptions()
    if scheme in ("http", "grpc") and tls is not None:
        raise ConnectError(
            f"'{url}' asks for a plain connection but TLS options (--ssl, certificates) were "
            f"given: write https://{check_url(url)} for TLS, or drop the TLS options"
        )
    return tls


def classify_error(error: BaseException) -> RequestError:
    """Map whatever a client call raised to the ErrorKind a user can act on (message cleaned)."""
    problem = _classify_error(error)
    return RequestError(problem.kind, clean_server_text(problem.message))


def _classify_error(error: BaseException) -> RequestError:
    if isinstance(error, TransportError):
        return error.as_request_error()
    if isinstance(error, asyncio.TimeoutError | TimeoutError):
        return RequestError(ErrorKind.DEADLINE, "no answer within the request deadline")
    if isinstance(error, asyncio.CancelledError):
        return RequestError(ErrorKind.CANCELLED, "cancelled before the answer came")
    status = ""
    message = str(error)
    status_of = getattr(error, "status", None)
    code_of = getattr(error, "code", None)
    if callable(status_of):
        # tritonclient's InferenceServerException: status() is e.g. "StatusCode.UNAVAILABLE".
        status = str(status_of() or "")
        message = str(getattr(error, "message", lambda: message)() or message)
    elif callable(code_of) and callable(getattr(error, "details", None)):
        # A grpc.RpcError raised outside the transport (its code() is a grpc.StatusCode).
        status = str(code_of())
        message = str(error.details() or status)  # type: ignore[attr-defined]
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

    def __init__(
        self,
        settings: EngineSettings,
        images: Sequence[Image.Image],
        *,
        transport_factory: TransportFactory = make_transport,
    ) -> None:
        """`transport_factory` makes the connection in connect(); tests pass a FakeTransport's."""
        self.settings = settings
        self._images = images
        self._transport_factory = transport_factory
        self._sinks: list[EventSink] = []
        self._send_sinks: list[SendSink] = []
        self._transport: Transport | None = None
        self._spec: ModelSpec | None = None
        self._cache: TensorCache | None = None
        self._prepared: dict[tuple[int, ...], PreparedRequest] = {}
        self._prepared_bytes = 0
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
        tls = connection_security(settings.url, settings.tls)
        if settings.topk < 1:
            raise ConnectError(f"top-k must be at least 1, not {settings.topk}")
        if settings.batch_size < 1:
            raise ConnectError(f"batch size must be at least 1, not {settings.batch_size}")
        if not self._images:
            raise ConnectError("there are no images to classify")
        await self._close_transport()
        if settings.protocol not in PROTOCOLS:
            raise ConnectError(f"unknown protocol '{settings.protocol}' (choose grpc or http)")
        try:
            transport = self._transport_factory(
                settings.protocol, url, tls, settings.headers, settings.grpc_calls
            )
        except TlsError as error:
            raise ConnectError(f"TLS cannot be set up: {error}") from error
        self._transport = transport
        deadline = settings.connect_timeout_s
        where = f"{settings.protocol} server at {url}{' (TLS)' if tls is not None else ''}"
        try:
            try:
                await transport.is_server_live(deadline)
            except BaseException as error:
                if isinstance(error, asyncio.CancelledError):
                    raise
                problem = classify_error(error)
                tls_problem = _tls_problem(problem.message, where, tls is not None)
                if tls_problem is not None:
                    raise ConnectError(tls_problem) from error
                raise ConnectError(
                    f"Cannot reach the {where} ({problem.kind.value}: {_first_line(problem.message)}). "
                    f"Check that the server is running and that the address and the protocol "
                    f"(--protocol grpc|http) are right; the default local stack listens on "
                    f"{DEFAULT_URL} (gRPC) and {DEFAULT_HTTP_URL} (HTTP)."
                    + (
                        ""
                        if tls is not None
                        else " If the server expects TLS, write --url https://HOST:PORT."
                    )
                ) from error
            model = await self._model_for_wire(where, deadline)
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
                    clean_server_text(
                        f"The {where} has no ready model '{model}'"
                        f"{' version ' + settings.model_version if settings.model_version else ''}."
                        f"{hint} Choose one with --model NAME.",
                        1000,
                    )
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
                # The spec's complaint quotes tensor names the server chose: server text.
                raise ConnectError(
                    f"Model '{model}' on the {where} is not an image classifier this demo can "
                    f"drive: {clean_server_text(error, 1000)}"
                ) from error
            self._check_settings_against(spec)
            try:
                check_wire(spec, settings.wire)
                cache = TensorCache(self._images, spec, settings.preprocess)
            except (ModelSpecError, PreprocessError) as error:
                # Quotes the model's and its input's names: server text.
                raise ConnectError(clean_server_text(error, 1000)) from error
        except BaseException:
            await self._close_transport()
            raise
        await asyncio.to_thread(cache.prepare_all)
        self._spec, self._cache, self._prepared, self._prepared_bytes = spec, cache, {}, 0
        return spec

    def _check_settings_against(self, spec: ModelSpec) -> None:
        settings = self.settings
        if spec.batches and settings.batch_size > spec.max_batch_size:
            raise ConnectError(
                f"batch size {settings.batch_size} is larger than model '{spec.name}' accepts: "
                f"choose 1 to {spec.max_batch_size} (its max_batch_size)"
            )
        if not spec.batches and settings.batch_size != 1:
            raise ConnectError(
                f"model '{spec.name}' does not batch: batch size must be 1, not {settings.batch_size}"
            )
        if settings.topk > spec.num_classes:
            raise ConnectError(
                f"top-k {settings.topk} is more than model '{spec.name}' has classes: "
                f"choose 1 to {spec.num_classes}"
            )
        labels = settings.fallback_labels
        checked = settings.labels_from_user or not spec.has_labels
        if checked and labels and len(labels) != spec.num_classes:
            own = " (the server has its own labels, but this file is wrong for it)"
            raise ConnectError(
                f"the labels file has {len(labels)} names but model '{spec.name}' has "
                f"{spec.num_classes} classes{own if spec.has_labels else ''}: give a file with "
                f"one name per class, in class order, or leave --labels out"
            )

    async def _model_for_wire(self, where: str, deadline: float) -> str:
        settings = self.settings
        if settings.wire == "fp32":
            return settings.model_name
        available = await self._model_names_or_none(deadline) or []
        try:
            return wire_model_name(
                settings.model_name,
                settings.wire,
                available,
                client_scales=settings.preprocess.scaling not in (None, "none"),
            )
        except ModelSpecError as error:
            raise ConnectError(clean_server_text(f"The {where}: {error}", 1000)) from error

    def mean_request_bytes(self) -> float:
        """The average input payload of one request at the configured batch size (0 if unknown)."""
        cache = self._cache
        if cache is None:
            return 0.0
        return cache.mean_request_bytes(self.settings.batch_size if cache.spec.batches else 1)

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
            prepared = self._prepared_for(indices, spec, cache, transport)
            answer = await transport.infer(prepared, self.settings.request_timeout_s)
            done_at = time.monotonic()
            event = self._answered(request_id, indices, sent_at, done_at, answer)
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
                request_id,
                indices,
                sent_at,
                time.monotonic(),
                error=classify_error(error),
                instance=error.instance if isinstance(error, TransportError) else UNKNOWN_INSTANCE,
            )
        self._in_flight -= 1
        self._emit(event)
        return event

    def _prepared_for(
        self, indices: tuple[int, ...], spec: ModelSpec, cache: TensorCache, transport: Transport
    ) -> PreparedRequest:
        # Encoded once per distinct batch: re-serialising 600 kB per request would be the
        # client's largest cost at high rates.
        prepared = self._prepared.get(indices)
        if prepared is None:
            prepared = transport.prepare(
                InferRequest(
                    model=spec.name,
                    version=self.settings.model_version,
                    input_name=spec.input_name,
                    datatype=spec.input_dtype,
                    data=cache.batch(indices),
                    output_name=spec.output_name,
                    class_count=self.settings.topk if spec.has_labels else 0,
                )
            )
            # Kept up to a memory bound (a folder of 1,000 photos would otherwise hold a second
            # copy of every tensor); past it, each further batch is encoded per request.
            if self._prepared_bytes + len(prepared.payload) <= MAX_PREPARED_BYTES:
                self._prepared[indices] = prepared
                self._prepared_bytes += len(prepared.payload)
        return prepared

    def _answered(
        self,
        request_id: int,
        indices: tuple[int, ...],
        sent_at: float,
        done_at: float,
        answer: InferAnswer,
    ) -> InferenceEvent:
        try:
            topk = self._topk(answer.output, indices)
        except (ValueError, TypeError, IndexError) as error:
            problem = RequestError(ErrorKind.RESPONSE, clean_server_text(error))
            return InferenceEvent(
                request_id, indices, sent_at, done_at, error=problem, instance=answer.instance
            )
        return InferenceEvent(request_id, indices, sent_at, done_at, topk, instance=answer.instance)

    def _topk(
        self, output: npt.NDArray[Any], indices: tuple[int, ...]
    ) -> tuple[tuple[Classification, ...], ...]:
        spec = self.spec
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
            # Awaited in place, not as a task of its own: one task per request fewer on the
            # hot path. close() cancels the worker, and so the request, which counts itself.
            event = await self._request(next(self._auto_batches))
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


MAX_LABEL = 100
"""Characters kept of a label the server sent (server text)."""


_clean_labels: dict[str, str] = {}
"""Raw label -> cleaned label: a model has few labels, and cleaning each answer's anew would be
a noticeable share of the client's work per request."""


def _parse_classification(entry: Any) -> Classification:
    text = (
        entry.decode("utf-8", errors="replace")
        if isinstance(entry, bytes | bytearray)
        else str(entry)
    )
    parts = text.split(":", 2)
    if len(parts) < 2:
        raise ValueError(f"unexpected classification entry '{clean_server_text(text, 80)}'")
    label = ""
    if len(parts) == 3:
        raw = parts[2]
        label = _clean_labels.get(raw, "")
        if not label:
            label = clean_server_text(raw, MAX_LABEL)
            if len(_clean_labels) < 100_000:
                _clean_labels[raw] = label
    return Classification(float(parts[0]), int(parts[1]), label or f"class {parts[1]}")


_VERIFY_DETAIL = re.compile(r"certificate[ _]verify[ _]failed\]?:?\s*([^:()\]\[']*)", re.IGNORECASE)


def _tls_problem(message: str, where: str, tls: bool) -> str | None:
    """One sentence for a TLS failure of the first call, or None when it was something else."""
    lowered = message.lower()
    if tls and ("certificate_verify_failed" in lowered or "certificate verify failed" in lowered):
        match = _VERIFY_DETAIL.search(message)
        detail = match.group(1).strip(" .") if match else ""
        if "hostname" in detail.lower() or "ip address mismatch" in detail.lower():
            return (
                f"The TLS certificate of the {where} is not valid for that address ({detail}): "
                f"connect by a name the certificate lists."
            )
        return (
            f"The TLS certificate of the {where} is not trusted"
            f"{f' ({detail})' if detail else ''}: pass the CA certificate that signed it with "
            f"--root-certificates PEM (a self-signed certificate is its own CA), or check that "
            f"the address is the server you mean."
        )
    if tls and any(
        marker in lowered
        for marker in ("wrong_version_number", "wrong version number", "record layer failure")
    ):
        return (
            f"The {where} does not speak TLS: write its address without https:// and leave "
            f"out --ssl and the certificate options."
        )
    return None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no details"
