"""The engine over the in-memory FakeTransport, and the transports' encoding helpers.

These tests need no server: the fake stands in for behaviours that are either tedious to make a
real server produce on cue (a failure of one chosen kind on one chosen call, an answer that
misses its deadline, instance names on every answer) or impossible (an exact count of requests
in flight at the server). The same behaviours against the real stack are in
test_core_engine.py and test_transport_stack.py.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import numpy as np
import pytest
from PIL import Image

from flowerdemo.core.engine import ConnectError, EngineSettings, InferenceEngine
from flowerdemo.core.events import UNKNOWN_INSTANCE, ErrorKind, InferenceEvent
from flowerdemo.core.stats import RunStatistics
from flowerdemo.core.transport import (
    FakeTransport,
    InferRequest,
    TlsOptions,
    bytes_elements,
    decode_output,
    fake_classifier,
    tensor_bytes,
)

LABELS = ("zero", "one", "two", "three", "four")


@pytest.fixture
def photos() -> list[Image.Image]:
    return [Image.new("RGB", (48, 40), (40 * k, 100, 200 - 10 * k)) for k in range(6)]


def _engine(fake: FakeTransport, photos: list[Image.Image], **overrides: Any) -> InferenceEngine:
    settings = EngineSettings(
        url="127.0.0.1:1", model_name="fake", fallback_labels=LABELS, **overrides
    )
    return InferenceEngine(settings, photos, transport_factory=lambda *_: fake)


async def test_an_answer_becomes_an_event_with_the_instance_that_served_it(photos):
    fake = FakeTransport(instances=("triton-0", "triton-1"))
    engine = _engine(fake, photos, topk=2)
    await engine.connect()
    seen: list[InferenceEvent] = []
    engine.add_sink(seen.append)
    try:
        first = await engine.classify([2])
        second = await engine.classify([3])
    finally:
        await engine.close()
    assert seen == [first, second]
    assert first.ok and [(c.index, c.label) for c in first.topk[0]] == [(4, "four"), (3, "three")]
    assert (first.instance, second.instance) == ("triton-0", "triton-1")
    request = fake.calls[0].request
    assert (request.model, request.input_name, request.datatype) == ("fake", "image", "FP32")
    assert request.data.shape == (1, 3, 32, 32) and request.class_count == 0
    assert fake.closed


async def test_without_the_header_the_instance_is_unknown(photos):
    engine = _engine(FakeTransport(), photos)
    await engine.connect()
    try:
        event = await engine.classify([0])
    finally:
        await engine.close()
    assert event.ok and event.instance == UNKNOWN_INSTANCE


async def test_automatic_mode_keeps_exactly_n_outstanding(photos):
    fake = FakeTransport(delay_s=0.02, instances=("a", "b", "c"))
    engine = _engine(fake, photos)
    await engine.connect()
    statistics = RunStatistics()
    events: list[InferenceEvent] = []
    engine.add_sink(statistics.record)
    engine.add_sink(events.append)
    try:
        await engine.run_automatic(5, max_requests=60)
    finally:
        await engine.close()
    assert fake.max_outstanding == 5
    assert len(events) == engine.sent == len(fake.calls) == 60
    assert engine.in_flight == 0
    assert {e.instance for e in events} == {"a", "b", "c"}
    assert statistics.snapshot().answered == 60
    # The photos are cycled in order.
    assert sorted({e.image_indices[0] for e in events}) == list(range(len(photos)))


async def test_every_failure_kind_is_counted_once(photos):
    failures = {
        1: ErrorKind.UNAVAILABLE,
        3: ErrorKind.SERVER,
        4: ErrorKind.RESPONSE,
        6: ErrorKind.DEADLINE,
    }
    fake = FakeTransport(failures=failures, instances=("triton-0",))
    engine = _engine(fake, photos)
    await engine.connect()
    events: list[InferenceEvent] = []
    engine.add_sink(events.append)
    try:
        for k in range(8):
            await engine.classify([k % len(photos)])
    finally:
        await engine.close()
    kinds = {e.request_id - 1: e.error.kind for e in events if e.error is not None}
    assert kinds == failures
    assert len(events) == engine.sent == 8
    # A failure still names the instance that answered with it.
    assert all(e.instance == "triton-0" for e in events)


async def test_an_answer_that_misses_the_deadline_fails_as_deadline(photos):
    fake = FakeTransport(delay_s=5.0)
    engine = _engine(fake, photos, request_timeout_s=0.05)
    await engine.connect()
    try:
        event = await asyncio.wait_for(engine.classify([0]), 2.0)
    finally:
        await engine.close()
    assert event.error is not None and event.error.kind is ErrorKind.DEADLINE


async def test_close_cancels_outstanding_requests_and_counts_them(photos):
    fake = FakeTransport(delay_s=30.0)
    engine = _engine(fake, photos, request_timeout_s=60.0)
    await engine.connect()
    events: list[InferenceEvent] = []
    engine.add_sink(events.append)
    run = asyncio.ensure_future(engine.run_automatic(4))
    await asyncio.sleep(0.05)
    assert engine.in_flight == 4
    await engine.close()
    await asyncio.wait_for(run, timeout=2.0)
    assert engine.in_flight == 0
    assert len(events) == engine.sent == 4
    assert all(e.error is not None and e.error.kind is ErrorKind.CANCELLED for e in events)


async def test_hostile_labels_and_errors_are_cleaned(photos):
    """Escape sequences from a server never reach an event (see also the real-Triton test)."""
    metadata, config = fake_classifier(labels=True)

    def hostile(request: InferRequest, call: int) -> np.ndarray:
        label = b"\x1b[2J\x1b[Hrose\x07\r\nanswered 999 failed 0" + b"x" * 500
        array = np.empty((1, 1), dtype=object)
        array[0, 0] = b"0.9:4:" + label
        return array

    fake = FakeTransport(metadata, config, answer=hostile)
    engine = _engine(fake, photos, topk=1)
    await engine.connect()
    try:
        event = await engine.classify([0])
    finally:
        await engine.close()
    assert event.ok and fake.calls[0].request.class_count == 1
    label = event.topk[0][0].label
    assert label.startswith("rose answered 999 failed 0")
    assert "\x1b" not in label and "\n" not in label and "\x07" not in label
    assert len(label) <= 100


async def test_a_missing_model_is_refused_with_the_servers_list_cleaned(photos):
    metadata, config = fake_classifier(name="\x1b[2J\x1b[Hevil\x07")
    fake = FakeTransport(metadata, config)
    settings = EngineSettings(url="127.0.0.1:1", model_name="\x1b[31mnope")
    engine = InferenceEngine(settings, photos, transport_factory=lambda *_: fake)
    with pytest.raises(ConnectError, match=r"no ready model 'nope'\. Models there: evil\.") as e:
        await engine.connect()
    assert "\x1b" not in str(e.value) and "\x07" not in str(e.value)


@pytest.mark.parametrize(
    ("url", "tls", "expected"),
    [
        ("https://example.org:8001", None, TlsOptions()),
        ("grpcs://example.org:8001", TlsOptions(), TlsOptions()),
        ("example.org:8001", None, None),
        ("example.org:8001", TlsOptions(), TlsOptions()),
    ],
)
async def test_the_url_scheme_decides_tls(photos, url, tls, expected):
    seen: list[Any] = []

    def factory(protocol, address, tls_options, headers, grpc_calls):
        seen.append((address, tls_options, headers))
        return FakeTransport()

    settings = EngineSettings(url=url, model_name="fake", tls=tls, headers=(("x-a", "b"),))
    engine = InferenceEngine(settings, photos, transport_factory=factory)
    await engine.connect()
    await engine.close()
    assert seen == [("example.org:8001", expected, (("x-a", "b"),))]


async def test_plain_url_with_tls_options_is_a_contradiction(photos):
    settings = EngineSettings(url="http://example.org:8000", tls=TlsOptions())
    engine = InferenceEngine(settings, photos, transport_factory=lambda *_: FakeTransport())
    with pytest.raises(ConnectError, match="asks for a plain connection but TLS options"):
        await engine.connect()


def test_bytes_tensors_are_length_prefixed_as_triton_expects():
    jpegs = np.empty((2, 1), dtype=object)
    jpegs[0, 0], jpegs[1, 0] = b"\xff\xd8abc", b""
    raw = tensor_bytes(jpegs, "BYTES")
    assert raw == struct.pack("<I", 5) + b"\xff\xd8abc" + struct.pack("<I", 0)
    assert bytes_elements(raw) == [b"\xff\xd8abc", b""]
    decoded = decode_output(raw, "BYTES", [2, 1])
    assert decoded.shape == (2, 1) and decoded[0, 0] == b"\xff\xd8abc"
    with pytest.raises(ValueError, match="longer than the answer"):
        bytes_elements(raw[:6])


def test_numeric_tensors_are_little_endian_row_major():
    data = np.arange(6, dtype=np.float16).reshape(1, 2, 3)
    raw = tensor_bytes(data, "FP16")
    assert raw == data.astype("<f2").tobytes()
    assert np.array_equal(decode_output(raw, "FP16", [1, 2, 3]), data)
    assert tensor_bytes(np.array([[1, 2]], dtype=np.uint8), "UINT8") == b"\x01\x02"


async def test_encoded_requests_are_reused_up_to_a_memory_bound(photos, monkeypatch):
    import flowerdemo.core.engine as engine_module

    prepared: list[tuple[int, ...]] = []

    class CountingFake(FakeTransport):
        def prepare(self, request):
            prepared.append(request.data.shape)
            return super().prepare(request)

    fake = CountingFake()
    one_request = 3 * 32 * 32 * 4  # FP32 bytes of one photo in the fake model
    monkeypatch.setattr(engine_module, "MAX_PREPARED_BYTES", 2 * one_request)
    engine = _engine(fake, photos)
    await engine.connect()
    try:
        await engine.run_automatic(1, max_requests=2 * len(photos))
    finally:
        await engine.close()
    # The first two photos are kept; the other four are encoded again on the second round.
    assert len(prepared) == len(photos) + (len(photos) - 2)
