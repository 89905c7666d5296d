"""How requests reach a Triton server: one `Transport` per protocol, behind one interface.

The engine speaks only to a `Transport` (as httpx's clients speak to their `_transports/`):

- `GrpcTransport` connects and checks the model through tritonclient's aio client, and infers
  with requests serialised once, when the (photo set, batch) was prepared, sent straight over
  `grpc.aio`: as one unary `ModelInfer` call each (the default, as perf_analyzer's), or as
  messages on short-lived `ModelStreamInfer` streams (`GrpcStreams`, one request at a time on
  each: lighter per request, but Envoy then balances and times streams, not requests). Both
  read the initial metadata, where our Envoy names the instance that served it
  (`INSTANCE_HEADER`); tritonclient drops it.
- `HttpTransport` checks through tritonclient's aio HTTP client and infers by posting a
  pre-built binary body with aiohttp, so the response headers (the instance) can be read.
- `FakeTransport` answers in memory, with chosen answers, delays, failures and instance names:
  engine tests use it where no real server is needed.

Every failure of `infer` is raised as a `TransportError` whose `kind` says what a user can do
about it; everything the server said is passed through `clean_server_text` first.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote

import numpy as np
import numpy.typing as npt

from flowerdemo.core.events import INSTANCE_HEADER, UNKNOWN_INSTANCE, ErrorKind, RequestError
from flowerdemo.core.text import clean_server_text

# gRPC's core logs to stderr on its own (e.g. an info line for every failed TLS handshake): a
# terminal user gets our one-paragraph message instead. An explicit setting still wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

TransportName = Literal["grpc", "http"]
PROTOCOLS: tuple[TransportName, ...] = ("grpc", "http")
GrpcCalls = Literal["stream", "unary"]
GRPC_CALLS: tuple[GrpcCalls, ...] = ("stream", "unary")

MODEL_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
STREAM_LIFETIME_S = 1.0
"""How long one inference stream takes new requests. Envoy balances streams, not the messages
on them: closing each after this long lets a new instance get its share of the load, and a
draining one empty, within about this time."""
MAX_INSTANCE_NAME = 64
"""Characters kept of an instance name from a response header (server text)."""

_NUMPY_DTYPES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "int8",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


class TransportError(Exception):
    """A request that did not produce an answer; `kind` says why, `message` is cleaned text."""

    def __init__(self, kind: ErrorKind, message: str, instance: str = UNKNOWN_INSTANCE) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.instance = instance

    def as_request_error(self) -> RequestError:
        return RequestError(self.kind, self.message)


@dataclass(frozen=True)
class TlsOptions:
    """TLS for the connection to the server (paths as Triton's client examples take them)."""

    root_certificates: Path | None = None
    """PEM file of the CA(s) to trust; None trusts the system's CAs."""
    private_key: Path | None = None
    """PEM private key of a client certificate (mutual TLS), with `certificate_chain`."""
    certificate_chain: Path | None = None
    """PEM client certificate chain (mutual TLS), with `private_key`."""

    def read(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """The three files' contents; a TlsError naming the file that cannot be read."""
        if (self.private_key is None) != (self.certificate_chain is None):
            raise TlsError("a client certificate needs both --private-key and --certificate-chain")
        return (
            _read_pem(self.root_certificates, "root certificates"),
            _read_pem(self.private_key, "private key"),
            _read_pem(self.certificate_chain, "certificate chain"),
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A client SSLContext that verifies the server (HTTP over TLS)."""
        self.read()  # the same checks and messages as gRPC
        try:
            context = ssl.create_default_context(
                cafile=str(self.root_certificates) if self.root_certificates else None
            )
            if self.certificate_chain is not None and self.private_key is not None:
                context.load_cert_chain(str(self.certificate_chain), str(self.private_key))
        except (ssl.SSLError, ValueError) as error:
            raise TlsError(f"the TLS files cannot be used: {error}") from error
        return context


class TlsError(ValueError):
    """A TLS file is missing, unreadable or not PEM; the message names it."""


def _read_pem(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise TlsError(f"cannot read the {what} file {path}: {error.strerror or error}") from error
    if b"-----BEGIN" not in data:
        raise TlsError(f"the {what} file {path} is not PEM (no '-----BEGIN' line)")
    return data


@dataclass(frozen=True)
class InferRequest:
    """One inference request as the engine describes it, before any protocol encodes it."""

    model: str
    version: str
    input_name: str
    datatype: str
    """Triton datatype of the input: FP32, FP16, UINT8, ... or BYTES."""
    data: npt.NDArray[Any]
    """The input tensor; for BYTES a numpy object array of `bytes` (one element per image)."""
    output_name: str
    class_count: int = 0
    """> 0: ask for Triton's classification extension (top-k "score:index[:label]" strings)."""


@dataclass(frozen=True)
class PreparedRequest:
    """A request encoded once by one transport, sent as often as wanted."""

    request: InferRequest
    payload: bytes = b""
    header_length: int = 0
    """HTTP only: the length of the JSON header at the start of `payload`."""


@dataclass(frozen=True)
class InferAnswer:
    output: npt.NDArray[Any]
    """The requested output, shaped as the server said; BYTES outputs as an object array."""
    instance: str = UNKNOWN_INSTANCE
    """The instance that answered (cleaned INSTANCE_HEADER), or UNKNOWN_INSTANCE."""


class Transport(Protocol):
    """What the engine needs from a connection to a Triton server.

    The checks return plain JSON-like dicts (gRPC's protobuf JSON or HTTP's JSON, which
    `parse_model_spec` accepts alike). `infer` raises TransportError for every failure except
    cancellation, and ends within `timeout_s`.
    """

    protocol: TransportName

    async def is_server_live(self, timeout_s: float) -> bool: ...
    async def is_model_ready(self, model: str, version: str, timeout_s: float) -> bool: ...
    async def model_metadata(
        self, model: str, version: str, timeout_s: float
    ) -> dict[str, Any]: ...
    async def model_config(self, model: str, version: str, timeout_s: float) -> dict[str, Any]: ...
    async def model_names(self, timeout_s: float) -> list[str]: ...
    def prepare(self, request: InferRequest) -> PreparedRequest: ...
    async def infer(self, prepared: PreparedRequest, timeout_s: float) -> InferAnswer: ...
    async def close(self) -> None: ...


# -- encoding ---------------------------------------------------------------------------------
def tensor_bytes(data: npt.NDArray[Any], datatype: str) -> bytes:
    """The tensor in Triton's raw layout: little-endian, row-major; BYTES elements each after a
    4-byte little-endian length."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for element in np.asarray(data, dtype=object).reshape(-1):
            value = element if isinstance(element, bytes) else str(element).encode("utf-8")
            parts.append(struct.pack("<I", len(value)))
            parts.append(value)
        return b"".join(parts)
    dtype = _NUMPY_DTYPES.get(datatype)
    if dtype is None:
        raise ValueError(f"unsupported input datatype {datatype}")
    return np.ascontiguousarray(data, dtype=np.dtype(dtype)).tobytes()


def bytes_elements(raw: bytes | memoryview) -> list[bytes]:
    """Split Triton's raw BYTES layout (length-prefixed elements) back into its elements."""
    elements: list[bytes] = []
    view = memoryview(raw)
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise ValueError("a BYTES output ends inside an element's length")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise ValueError("a BYTES output element is longer than the answer")
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    return elements


def decode_output(raw: bytes | memoryview, datatype: str, shape: Sequence[int]) -> npt.NDArray[Any]:
    """An output's raw bytes as a numpy array of the shape the server gave."""
    dims = [int(d) for d in shape]
    if datatype == "BYTES":
        array: npt.NDArray[Any] = np.empty(len(elements := bytes_elements(raw)), dtype=object)
        array[:] = elements
    else:
        dtype = _NUMPY_DTYPES.get(datatype)
        if dtype is None:
            raise ValueError(f"the answer's output has datatype {clean_server_text(datatype)}")
        array = np.frombuffer(raw, dtype=np.dtype(dtype))
    return array.reshape(dims)


def _instance_name(value: object) -> str:
    if value is None:
        return UNKNOWN_INSTANCE
    name = clean_server_text(value, MAX_INSTANCE_NAME)
    return name or UNKNOWN_INSTANCE


# -- gRPC -------------------------------------------------------------------------------------
# Our own channel arguments replace all of tritonclient's defaults, so the message limits are
# restated. Short reconnect backoff: a restarted server is used again within a second, and a call
# to a dead one fails at its deadline instead of waiting out a 20 s backoff.
GRPC_CHANNEL_ARGS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
)

_GRPC_KINDS = {
    "UNAVAILABLE": ErrorKind.UNAVAILABLE,
    "DEADLINE_EXCEEDED": ErrorKind.DEADLINE,
    "CANCELLED": ErrorKind.CANCELLED,
}


class GrpcTransport:
    """Triton over gRPC: tritonclient for the checks, a pre-serialised `ModelInfer` to infer."""

    protocol: TransportName = "grpc"

    def __init__(
        self,
        url: str,
        *,
        tls: TlsOptions | None = None,
        headers: Sequence[tuple[str, str]] = (),
        calls: GrpcCalls = "unary",
    ) -> None:
        import grpc
        import tritonclient.grpc.aio as grpcaio
        from tritonclient.grpc import service_pb2

        self._pb = service_pb2
        self._rpc_error: type[Exception] = grpc.aio.AioRpcError
        # gRPC metadata keys are lower case (HTTP/2); gRPC refuses any other.
        self._headers = {name.lower(): value for name, value in headers}
        self._metadata: tuple[tuple[str, str], ...] | None = (
            tuple((name.lower(), value) for name, value in headers) or None
        )
        options = list(GRPC_CHANNEL_ARGS)
        credentials = None
        if tls is not None:
            root, key, chain = tls.read()
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root, private_key=key, certificate_chain=chain
            )
        self._client = grpcaio.InferenceServerClient(url, creds=credentials, channel_args=options)
        self._channel = (
            grpc.aio.secure_channel(url, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(url, options=options)
        )
        # request_serializer=None: the request goes out as the bytes we hand over, serialised
        # once per prepared (photo set, batch) instead of once per call.
        self._model_infer = self._channel.unary_unary(
            MODEL_INFER_METHOD,
            request_serializer=None,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        self._streams = (
            GrpcStreams(
                self._channel.stream_stream(
                    MODEL_STREAM_INFER_METHOD,
                    request_serializer=None,
                    response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
                ),
                self._metadata,
                self._rpc_error,
                grpc.aio.EOF,
            )
            if calls == "stream"
            else None
        )

    def _call_headers(self) -> dict[str, str] | None:
        return self._headers or None

    async def is_server_live(self, timeout_s: float) -> bool:
        return bool(
            await self._client.is_server_live(
                headers=self._call_headers(), client_timeout=timeout_s
            )
        )

    async def is_model_ready(self, model: str, version: str, timeout_s: float) -> bool:
        return bool(
            await self._client.is_model_ready(
                model, version, headers=self._call_headers(), client_timeout=timeout_s
            )
        )

    async def model_metadata(self, model: str, version: str, timeout_s: float) -> dict[str, Any]:
        result = await self._client.get_model_metadata(
            model, version, headers=self._call_headers(), as_json=True, client_timeout=timeout_s
        )
        return dict(result)

    async def model_config(self, model: str, version: str, timeout_s: float) -> dict[str, Any]:
        result = await self._client.get_model_config(
            model, version, headers=self._call_headers(), as_json=True, client_timeout=timeout_s
        )
        return dict(result)

    async def model_names(self, timeout_s: float) -> list[str]:
        index = await self._client.get_model_repository_index(
            headers=self._call_headers(), as_json=True, client_timeout=timeout_s
        )
        return sorted({clean_server_text(m["name"]) for m in index.get("models", [])})

    def prepare(self, request: InferRequest) -> PreparedRequest:
        pb = self._pb
        message = pb.ModelInferRequest(model_name=request.model, model_version=request.version)
        tensor = message.inputs.add()
        tensor.name = request.input_name
        tensor.datatype = request.datatype
        tensor.shape.extend(int(d) for d in request.data.shape)
        output = message.outputs.add()
        output.name = request.output_name
        if request.class_count > 0:
            output.parameters["classification"].int64_param = request.class_count
        message.raw_input_contents.append(tensor_bytes(request.data, request.datatype))
        return PreparedRequest(request, message.SerializeToString())

    async def infer(self, prepared: PreparedRequest, timeout_s: float) -> InferAnswer:
        if self._streams is not None:
            response, instance = await self._streams.infer(prepared.payload, timeout_s)
            return _grpc_output(response, prepared.request.output_name, instance)
        call = self._model_infer(prepared.payload, timeout=timeout_s, metadata=self._metadata)
        try:
            response = await call
            metadata = await call.initial_metadata()
        except self._rpc_error as error:
            raise _grpc_error(error) from None
        instance = _instance_name(metadata.get(INSTANCE_HEADER) if metadata else None)
        return _grpc_output(response, prepared.request.output_name, instance)

    async def close(self) -> None:
        try:
            if self._streams is not None:
                self._streams.close()
            await self._channel.close()
        finally:
            await self._client.close()


def _grpc_output(response: Any, name: str, instance: str) -> InferAnswer:
    """The output `name` of a ModelInferResponse, decoded."""
    for index, output in enumerate(response.outputs):
        if output.name != name:
            continue
        try:
            if index < len(response.raw_output_contents):
                raw = response.raw_output_contents[index]
                array = decode_output(raw, output.datatype, output.shape)
            elif output.contents.bytes_contents:
                array = np.array(list(output.contents.bytes_contents), dtype=object)
                array = array.reshape([int(d) for d in output.shape])
            else:
                raise ValueError("the output carries no data")
        except ValueError as error:
            raise TransportError(
                ErrorKind.RESPONSE, clean_server_text(f"output '{name}': {error}"), instance
            ) from None
        return InferAnswer(array, instance)
    raise TransportError(
        ErrorKind.RESPONSE, clean_server_text(f"the answer has no output '{name}'"), instance
    )


class _BrokenStream(TransportError):
    """A stream that had carried answers lost its instance or connection: worth one retry."""


_BROKEN_STREAM_CODES = frozenset({"UNAVAILABLE", "INTERNAL"})
"""How a stream whose instance went away ends: INTERNAL when Envoy resets it ("Received
RST_STREAM"), UNAVAILABLE when the connection goes. Triton reports a request's own failure
inside the stream (`error_message`), never as the stream's status."""


class _Stream:
    """One open `ModelStreamInfer` call, carrying one request at a time."""

    __slots__ = ("call", "instance", "opened_at")

    def __init__(self, call: Any, opened_at: float) -> None:
        self.call = call
        self.opened_at = opened_at
        self.instance: str | None = None
        """Named once, from the headers Envoy sends with the stream's first answer."""


class GrpcStreams:
    """Inference as messages on `ModelStreamInfer` streams: a message on an open stream costs
    the client, Envoy and Triton less than a new unary call (measured in
    benchmarks/client_vs_perf_analyzer.py).

    Each request takes an idle stream (or opens one), writes its pre-serialised request, reads
    the one answer and gives the stream back, so answers never need matching to requests. A
    stream takes new requests for STREAM_LIFETIME_S, then is closed, so Envoy rebalances
    within about that time. The instance is the one Envoy named in the stream's headers.

    Deadline: each stream is opened with a deadline of STREAM_LIFETIME_S + the request
    timeout, so every request on it has at least its timeout. A stream that failed or was
    interrupted is dropped, never reused. A request on a stream that broke (its instance or
    connection went away: _BROKEN_STREAM_CODES) is retried once on a new stream, which Envoy
    sends to a live instance, as it retries a unary call itself: the request had no answer,
    and inference is idempotent."""

    def __init__(
        self, method: Any, metadata: Any, rpc_error: type[Exception], end_of_stream: object
    ) -> None:
        self._method = method
        self._metadata = metadata
        self._rpc_error = rpc_error
        self._end_of_stream = end_of_stream
        self._idle: list[_Stream] = []
        self._reaper: asyncio.TimerHandle | None = None

    async def infer(self, payload: bytes, timeout_s: float) -> tuple[Any, str]:
        """(the ModelInferResponse, the instance) for one serialised ModelInferRequest."""
        try:
            return await self._infer_once(payload, timeout_s)
        except _BrokenStream:
            pass
        return await self._infer_once(payload, timeout_s)

    async def _infer_once(self, payload: bytes, timeout_s: float) -> tuple[Any, str]:
        stream = self._take()
        fresh = stream is None
        if stream is None:
            stream = _Stream(
                self._method(timeout=STREAM_LIFETIME_S + timeout_s, metadata=self._metadata),
                time.monotonic(),
            )
        call = stream.call
        try:
            await call.write(payload)
            answer = await call.read()
            if stream.instance is None:
                metadata = await call.initial_metadata()
                stream.instance = _instance_name(
                    metadata.get(INSTANCE_HEADER) if metadata else None
                )
        except self._rpc_error as error:
            call.cancel()
            # (A new stream that could not reach anyone would fail the same way again.)
            broken = not fresh and _code_name(error) in _BROKEN_STREAM_CODES
            raise _grpc_error(error, _BrokenStream if broken else TransportError) from None
        except BaseException:
            call.cancel()
            raise
        instance = stream.instance
        if answer is self._end_of_stream:
            call.cancel()
            raise TransportError(
                ErrorKind.UNAVAILABLE, "the server ended the inference stream", instance
            )
        if answer.error_message:
            # Triton's answer to a request it refused still carries an (empty) infer_response.
            self._give_back(stream)
            raise TransportError(
                ErrorKind.SERVER, clean_server_text(answer.error_message), instance
            )
        self._give_back(stream)
        return answer.infer_response, instance

    def _take(self) -> _Stream | None:
        now = time.monotonic()
        while self._idle:
            stream = self._idle.pop()
            if now - stream.opened_at < STREAM_LIFETIME_S:
                return stream
            self._end(stream)
        return None

    def _give_back(self, stream: _Stream) -> None:
        if time.monotonic() - stream.opened_at >= STREAM_LIFETIME_S:
            self._end(stream)
            return
        self._idle.append(stream)
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().call_later(STREAM_LIFETIME_S, self._reap)

    def _reap(self) -> None:
        """Ends the idle streams past their lifetime (when the load stops, nothing else would)."""
        self._reaper = None
        now = time.monotonic()
        expired = [s for s in self._idle if now - s.opened_at >= STREAM_LIFETIME_S]
        for stream in expired:
            self._idle.remove(stream)
            self._end(stream)
        if self._idle:
            self._reaper = asyncio.get_running_loop().call_later(STREAM_LIFETIME_S, self._reap)

    @staticmethod
    def _end(stream: _Stream) -> None:
        # Cancelling ends the stream at once on both sides; nothing is outstanding on it.
        stream.call.cancel()

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for stream in self._idle:
            self._end(stream)
        self._idle.clear()


def _code_name(error: Any) -> str:
    """The gRPC status name of a failed call ("UNAVAILABLE", ...), "" if it has none."""
    return str(getattr(error.code(), "name", ""))


def _grpc_error(error: Any, as_type: type[TransportError] = TransportError) -> TransportError:
    code = _code_name(error)
    kind = _GRPC_KINDS.get(code, ErrorKind.SERVER)
    details = clean_server_text(error.details() or code or "no details")
    # AioRpcError keeps the headers of a failed call; Envoy names the instance there too.
    metadata = error.initial_metadata()
    instance = _instance_name(metadata.get(INSTANCE_HEADER) if metadata else None)
    return as_type(kind, details, instance)


# -- HTTP -------------------------------------------------------------------------------------
class HttpTransport:
    """Triton over HTTP/REST: tritonclient for the checks, a pre-built binary body to infer."""

    protocol: TransportName = "http"

    def __init__(
        self,
        url: str,
        *,
        tls: TlsOptions | None = None,
        headers: Sequence[tuple[str, str]] = (),
        connection_limit: int = 512,
    ) -> None:
        import aiohttp
        import tritonclient.http.aio as httpaio

        context = tls.ssl_context() if tls is not None else None
        self._headers = {name: value for name, value in headers}
        self._client = httpaio.InferenceServerClient(
            url, conn_limit=8, ssl=tls is not None, ssl_context=context
        )
        self._base = f"{'https' if tls is not None else 'http'}://{url}"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=connection_limit, ssl=context if context is not None else False
            ),
            auto_decompress=False,
        )

    def _call_headers(self) -> dict[str, str] | None:
        return dict(self._headers) or None

    async def is_server_live(self, timeout_s: float) -> bool:
        call = self._client.is_server_live(headers=self._call_headers())
        return bool(await asyncio.wait_for(call, timeout_s))

    async def is_model_ready(self, model: str, version: str, timeout_s: float) -> bool:
        call = self._client.is_model_ready(model, version, headers=self._call_headers())
        return bool(await asyncio.wait_for(call, timeout_s))

    async def model_metadata(self, model: str, version: str, timeout_s: float) -> dict[str, Any]:
        call = self._client.get_model_metadata(model, version, headers=self._call_headers())
        return dict(await asyncio.wait_for(call, timeout_s))

    async def model_config(self, model: str, version: str, timeout_s: float) -> dict[str, Any]:
        call = self._client.get_model_config(model, version, headers=self._call_headers())
        return dict(await asyncio.wait_for(call, timeout_s))

    async def model_names(self, timeout_s: float) -> list[str]:
        call = self._client.get_model_repository_index(headers=self._call_headers())
        index = await asyncio.wait_for(call, timeout_s)
        return sorted({clean_server_text(m["name"]) for m in index})

    def prepare(self, request: InferRequest) -> PreparedRequest:
        raw = tensor_bytes(request.data, request.datatype)
        output: dict[str, Any] = {"name": request.output_name, "parameters": {"binary_data": True}}
        if request.class_count > 0:
            output["parameters"]["classification"] = request.class_count
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": request.input_name,
                        "shape": [int(d) for d in request.data.shape],
                        "datatype": request.datatype,
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "outputs": [output],
            },
            separators=(",", ":"),
        ).encode("utf-8")
        return PreparedRequest(request, header + raw, len(header))

    def _infer_url(self, request: InferRequest) -> str:
        model = quote(request.model, safe="")
        if request.version:
            return (
                f"{self._base}/v2/models/{model}/versions/{quote(request.version, safe='')}/infer"
            )
        return f"{self._base}/v2/models/{model}/infer"

    async def infer(self, prepared: PreparedRequest, timeout_s: float) -> InferAnswer:
        import aiohttp

        headers = {
            **self._headers,
            "Inference-Header-Content-Length": str(prepared.header_length),
            "Content-Type": "application/octet-stream",
            # aiohttp offers gzip by default and Triton then compresses: costly and pointless here.
            "Accept-Encoding": "identity",
        }
        try:
            status, header_length, instance, body = await asyncio.wait_for(
                self._post(self._infer_url(prepared.request), prepared.payload, headers),
                timeout_s,
            )
        except (asyncio.TimeoutError, TimeoutError):
            raise TransportError(
                ErrorKind.DEADLINE, "no answer within the request deadline"
            ) from None
        except aiohttp.ClientError as error:
            raise TransportError(
                ErrorKind.UNAVAILABLE,
                clean_server_text(
                    f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                ),
            ) from None
        if status != 200:
            raise TransportError(_http_kind(status), _http_error_text(status, body), instance)
        try:
            array = _http_output(body, header_length, prepared.request.output_name)
        except (ValueError, KeyError, TypeError) as error:
            raise TransportError(
                ErrorKind.RESPONSE, clean_server_text(f"unreadable answer: {error}"), instance
            ) from None
        return InferAnswer(array, instance)

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, str | None, str, bytes]:
        async with self._session.post(url, data=body, headers=headers) as response:
            answer = await response.read()
            return (
                response.status,
                response.headers.get("Inference-Header-Content-Length"),
                _instance_name(response.headers.get(INSTANCE_HEADER)),
                answer,
            )

    async def close(self) -> None:
        try:
            await self._session.close()
        finally:
            await self._client.close()


def _http_kind(status: int) -> ErrorKind:
    if status in (502, 503):
        return ErrorKind.UNAVAILABLE
    if status == 504:
        return ErrorKind.DEADLINE
    return ErrorKind.SERVER


def _http_error_text(status: int, body: bytes) -> str:
    text = body.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text)
        if isinstance(parsed, dict) and "error" in parsed:
            text = str(parsed["error"])
    except ValueError:
        pass
    return clean_server_text(f"HTTP {status}: {text.strip() or 'no details'}")


def _http_output(body: bytes, header_length: str | None, name: str) -> npt.NDArray[Any]:
    length = int(header_length) if header_length else len(body)
    header = json.loads(body[:length].decode("utf-8"))
    offset = length
    view = memoryview(body)
    for output in header.get("outputs", []):
        parameters = output.get("parameters") or {}
        size = int(parameters.get("binary_data_size", -1))
        if output.get("name") == name:
            shape = [int(d) for d in output.get("shape", [])]
            datatype = str(output.get("datatype", ""))
            if size >= 0:
                return decode_output(view[offset : offset + size], datatype, shape)
            data = output.get("data", [])
            if datatype == "BYTES":
                array: npt.NDArray[Any] = np.empty(len(data), dtype=object)
                array[:] = [str(x).encode("utf-8") for x in data]
                return array.reshape(shape)
            return np.asarray(data, dtype=_NUMPY_DTYPES.get(datatype, "f8")).reshape(shape)
        if size >= 0:
            offset += size
    raise ValueError(f"the answer has no output '{name}'")


# -- in memory --------------------------------------------------------------------------------
AnswerFunction = Callable[[InferRequest, int], npt.NDArray[Any]]
"""Given the request and the call's number (0, 1, ...), the output the fake server returns."""


def fake_classifier(
    num_classes: int = 5,
    *,
    name: str = "fake",
    size: int = 32,
    max_batch_size: int = 16,
    labels: bool = False,
    input_datatype: str = "FP32",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Model metadata and config (HTTP JSON shapes) of an NCHW image classifier."""
    batch = [-1] if max_batch_size > 0 else []
    metadata = {
        "name": name,
        "versions": ["1"],
        "platform": "fake",
        "inputs": [{"name": "image", "datatype": input_datatype, "shape": [*batch, 3, size, size]}],
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [*batch, num_classes]}],
    }
    output: dict[str, Any] = {"name": "scores", "data_type": "TYPE_FP32", "dims": [num_classes]}
    if labels:
        output["label_filename"] = "labels.txt"
    config = {
        "name": name,
        "max_batch_size": max_batch_size,
        "input": [{"name": "image", "format": "FORMAT_NCHW", "dims": [3, size, size]}],
        "output": [output],
    }
    return metadata, config


def rising_scores(request: InferRequest, call: int, num_classes: int) -> npt.NDArray[Any]:
    """Default fake answer: for each image, scores 0, 1, ..., so the last class wins; as
    "score:index:class k" strings when the classification extension is asked for."""
    del call
    rows = request.data.shape[0] if request.data.ndim == 4 else 1
    if request.class_count > 0:
        best = range(num_classes - 1, num_classes - 1 - min(request.class_count, num_classes), -1)
        entries = [f"{float(k)}:{k}:class {k}".encode() for k in best]
        array: npt.NDArray[Any] = np.empty((rows, len(entries)), dtype=object)
        for row in range(rows):
            array[row, :] = entries
        return array
    return np.tile(np.arange(num_classes, dtype=np.float32), (rows, 1))


@dataclass
class FakeCall:
    request: InferRequest
    started_at: float
    timeout_s: float


@dataclass
class FakeTransport:
    """A server in memory, for engine tests that need no real one (the test says so).

    `answer(request, call_number)` gives the output (default: `rising_scores`); `delay_s` holds
    every call that long (a call whose delay passes its deadline fails as DEADLINE, as a real
    one would); `failures` maps a call's number to the ErrorKind it fails with (RESPONSE
    returns a malformed answer); answers are attributed to `instances` in turn (none:
    UNKNOWN_INSTANCE). `calls`, `outstanding` and `max_outstanding` record what was sent.
    """

    metadata: dict[str, Any] = field(default_factory=lambda: fake_classifier()[0])
    config: dict[str, Any] = field(default_factory=lambda: fake_classifier()[1])
    answer: AnswerFunction | None = None
    """None: `rising_scores` for the model's class count."""
    delay_s: float = 0.0
    failures: Mapping[int, ErrorKind] = field(default_factory=dict)
    instances: Sequence[str] = ()
    live: bool = True
    protocol: TransportName = "grpc"
    calls: list[FakeCall] = field(default_factory=list)
    outstanding: int = 0
    max_outstanding: int = 0
    closed: bool = False

    async def is_server_live(self, timeout_s: float) -> bool:
        if not self.live:
            raise TransportError(ErrorKind.UNAVAILABLE, "fake server is down")
        return True

    async def is_model_ready(self, model: str, version: str, timeout_s: float) -> bool:
        return model == self.metadata.get("name")

    async def model_metadata(self, model: str, version: str, timeout_s: float) -> dict[str, Any]:
        return dict(self.metadata)

    async def model_config(self, model: str, version: str, timeout_s: float) -> dict[str, Any]:
        return dict(self.config)

    async def model_names(self, timeout_s: float) -> list[str]:
        return [clean_server_text(self.metadata.get("name", ""))]

    def prepare(self, request: InferRequest) -> PreparedRequest:
        return PreparedRequest(request, tensor_bytes(request.data, request.datatype))

    async def infer(self, prepared: PreparedRequest, timeout_s: float) -> InferAnswer:
        number = len(self.calls)
        loop = asyncio.get_running_loop()
        self.calls.append(FakeCall(prepared.request, loop.time(), timeout_s))
        instance = self.instances[number % len(self.instances)] if self.instances else None
        self.outstanding += 1
        self.max_outstanding = max(self.max_outstanding, self.outstanding)
        try:
            if self.delay_s > timeout_s:
                await asyncio.sleep(timeout_s)
                raise TransportError(ErrorKind.DEADLINE, "no answer within the request deadline")
            if self.delay_s > 0:
                await asyncio.sleep(self.delay_s)
        finally:
            self.outstanding -= 1
        kind = self.failures.get(number)
        if kind is ErrorKind.RESPONSE:
            return InferAnswer(np.zeros((0,), dtype=np.float32), _instance_name(instance))
        if kind is not None:
            raise TransportError(kind, f"fake failure ({kind.value})", _instance_name(instance))
        if self.answer is not None:
            output = self.answer(prepared.request, number)
        else:
            classes = int(self.metadata["outputs"][0]["shape"][-1])
            output = rising_scores(prepared.request, number, classes)
        return InferAnswer(output, _instance_name(instance))

    async def close(self) -> None:
        self.closed = True


TransportFactory = Callable[
    [TransportName, str, "TlsOptions | None", Sequence[tuple[str, str]], GrpcCalls], Transport
]
"""(protocol, HOST:PORT, TLS, headers, gRPC calls) -> a Transport: how the engine connects."""


def make_transport(
    protocol: TransportName,
    url: str,
    tls: TlsOptions | None = None,
    headers: Sequence[tuple[str, str]] = (),
    grpc_calls: GrpcCalls = "unary",
) -> Transport:
    """The transport for `protocol` to `url` (HOST:PORT, checked by the caller)."""
    if protocol == "grpc":
        return GrpcTransport(url, tls=tls, headers=headers, calls=grpc_calls)
    if protocol == "http":
        return HttpTransport(url, tls=tls, headers=headers)
    raise ValueError(f"unknown protocol '{protocol}' (choose grpc or http)")
