"""The transports against a real Triton (and Envoy): the pre-serialised paths answer exactly as
tritonclient's own calls do, and what a hostile server says is cleaned before an event has it."""

from __future__ import annotations

import asyncio
import collections

import numpy as np
import pytest

from flowerdemo.core.engine import EngineSettings, InferenceEngine
from flowerdemo.core.events import ErrorKind
from flowerdemo.core.images import load_images
from flowerdemo.core.model_spec import parse_model_spec
from flowerdemo.core.preprocess import PreprocessOptions, TensorCache
from flowerdemo.core.transport import GrpcTransport, HttpTransport, InferRequest, TransportError
from flowerdemo.resources import sample_images_dir
from flowerdemo.serving.repository import write_repository
from flowerdemo.serving.stack import LocalStack, StackSettings

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def samples():
    return [image.image for image in load_images(sample_images_dir()).images[:4]]


async def _batch_for(transport, samples) -> tuple[np.ndarray, object]:
    metadata = await transport.model_metadata("flowers", "", 10.0)
    config = await transport.model_config("flowers", "", 10.0)
    spec = parse_model_spec(metadata, config)
    cache = TensorCache(samples, spec, PreprocessOptions())
    return cache.batch(range(len(samples))), spec


@pytest.mark.parametrize("calls", ["stream", "unary"])
async def test_grpc_preserialised_answers_are_byte_identical_to_tritonclient(
    local_stack, samples, calls
):
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as grpcaio

    url = local_stack.instance_grpc_url(0)
    transport = GrpcTransport(url, calls=calls)
    reference = grpcaio.InferenceServerClient(url)
    try:
        batch, spec = await _batch_for(transport, samples)
        for class_count in (0, 3):
            request = InferRequest(
                "flowers", "", spec.input_name, "FP32", batch, spec.output_name, class_count
            )
            prepared = transport.prepare(request)
            # The same prepared bytes, sent twice: reuse must not change the answer.
            ours = [await transport.infer(prepared, 10.0) for _ in range(2)]
            tensor = grpcclient.InferInput(spec.input_name, list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch)
            output = grpcclient.InferRequestedOutput(spec.output_name, class_count=class_count)
            theirs = (await reference.infer("flowers", [tensor], outputs=[output])).as_numpy(
                spec.output_name
            )
            for answer in ours:
                assert answer.output.shape == theirs.shape
                if class_count:
                    assert answer.output.tolist() == theirs.tolist()
                else:
                    assert answer.output.tobytes() == theirs.tobytes()
    finally:
        await transport.close()
        await reference.close()


async def test_http_prebuilt_body_answers_are_identical_to_tritonclient(local_stack, samples):
    import tritonclient.http as httpclient
    import tritonclient.http.aio as httpaio

    url = local_stack.instance_http_url(0)
    transport = HttpTransport(url)
    reference = httpaio.InferenceServerClient(url)
    try:
        batch, spec = await _batch_for(transport, samples)
        for class_count in (0, 2):
            request = InferRequest(
                "flowers", "", spec.input_name, "FP32", batch, spec.output_name, class_count
            )
            ours = await transport.infer(transport.prepare(request), 10.0)
            tensor = httpclient.InferInput(spec.input_name, list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch, binary_data=True)
            output = httpclient.InferRequestedOutput(
                spec.output_name, binary_data=True, class_count=class_count
            )
            theirs = (await reference.infer("flowers", [tensor], outputs=[output])).as_numpy(
                spec.output_name
            )
            assert ours.output.shape == theirs.shape
            if class_count:
                assert ours.output.tolist() == theirs.tolist()
            else:
                assert ours.output.tobytes() == theirs.tobytes()
    finally:
        await transport.close()
        await reference.close()


HOSTILE_LABELS = {
    0: "\x1b[2J\x1b[Hclear screen",
    1: "\x1b]0;pwned\x07title",
    2: "\u202eright to left",
}


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory, standin_model_dir, free_port_block):
    """A real Triton whose labels file carries terminal escape sequences (written past the
    repository writer's checks, as a hostile server's operator would)."""
    root = tmp_path_factory.mktemp("hostile-repository")
    written = write_repository(
        standin_model_dir / "flowers.onnx", standin_model_dir / "labels.txt", root
    )
    labels_path = written.model_dir / "labels.txt"
    labels = labels_path.read_text(encoding="utf-8").splitlines()
    for index, text in HOSTILE_LABELS.items():
        labels[index] = text
    # Every class gets one, so whichever wins, its label is hostile.
    labels = [
        labels[k] if k in HOSTILE_LABELS else f"\x1b[31m{k}\x1b[0m" for k in range(len(labels))
    ]
    labels_path.write_text("\n".join(labels) + "\n", encoding="utf-8")
    settings = StackSettings(
        instances=1, with_envoy=False, repository=root, base_port=free_port_block(3)
    )
    with LocalStack(settings) as stack:
        yield stack


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_labels_with_escape_sequences_from_a_real_triton_are_cleaned(
    hostile_server, samples, protocol
):
    url = (
        hostile_server.instance_grpc_url(0)
        if protocol == "grpc"
        else hostile_server.instance_http_url(0)
    )
    engine = InferenceEngine(EngineSettings(url=url, protocol=protocol, topk=5), samples)
    spec = await engine.connect()
    try:
        assert spec.has_labels
        event = await engine.classify([0])
    finally:
        await engine.close()
    assert event.ok, event.error
    labels = [c.label for c in event.topk[0]]
    assert len(labels) == 5
    for label in labels:
        assert label.isprintable() and "\x1b" not in label, repr(label)
        assert "\u202e" not in label
    expected = {0: "clear screen", 1: "title", 2: "right to left"}
    for classification in event.topk[0]:
        want = expected.get(classification.index, str(classification.index))
        assert classification.label == want, repr(classification.label)


@pytest.mark.parametrize(
    ("protocol", "calls"), [("grpc", "unary"), ("grpc", "stream"), ("http", "unary")]
)
async def test_engine_events_name_the_instance_behind_envoy(local_stack, samples, protocol, calls):
    url = local_stack.grpc_url if protocol == "grpc" else local_stack.http_url
    engine = InferenceEngine(EngineSettings(url=url, protocol=protocol, grpc_calls=calls), samples)
    await engine.connect()
    events = []
    engine.add_sink(events.append)
    try:
        await engine.run_automatic(2, max_requests=12)
    finally:
        await engine.close()
    assert len(events) == 12 and all(event.ok for event in events)
    served = sorted(event.instance for event in events)
    if calls == "unary":
        # Round robin over the stack's two instances, each answer named by Envoy.
        assert served == ["triton-0"] * 6 + ["triton-1"] * 6
    else:
        # Envoy balances the two streams (one an instance); the requests on each follow it.
        assert set(served) == {"triton-0", "triton-1"}


async def test_one_request_at_a_time_on_streams_still_reaches_every_instance(local_stack, samples):
    """One stream would pin a lone client to one instance; streams live STREAM_LIFETIME_S, so
    a longer run at concurrency 1 is spread over both, and every stream is closed at the end
    (Envoy sees nothing in flight)."""
    from flowerdemo.core.transport import STREAM_LIFETIME_S
    from flowerdemo.serving.admin import read_upstream_hosts

    engine = InferenceEngine(EngineSettings(url=local_stack.grpc_url, grpc_calls="stream"), samples)
    await engine.connect()
    events = []
    engine.add_sink(events.append)
    try:
        run = asyncio.ensure_future(engine.run_automatic(1))
        await asyncio.sleep(4 * STREAM_LIFETIME_S)
        engine.stop()
        await run
        # Idle streams past their lifetime are closed even though no request comes.
        await asyncio.sleep(2.5 * STREAM_LIFETIME_S)
        hosts = read_upstream_hosts(local_stack.settings.admin_listen, 2.0)
    finally:
        await engine.close()
    answered = collections.Counter(event.instance for event in events if event.ok)
    assert len(events) == engine.sent and sum(answered.values()) == engine.sent
    assert set(answered) == {"triton-0", "triton-1"}, answered
    assert all(host.rq_active == 0 for host in hosts), hosts


@pytest.mark.parametrize("calls", ["stream", "unary"])
async def test_a_request_the_server_refuses_is_one_clear_failure_and_the_next_is_answered(
    local_stack, samples, calls
):
    """Triton says what is wrong inside the stream (not as the stream's status): the request
    fails as the server's error, cleaned, and the transport goes on with a fresh stream."""
    transport = GrpcTransport(local_stack.instance_grpc_url(0), calls=calls)
    try:
        batch, spec = await _batch_for(transport, samples)
        wrong = np.zeros((1, 3, 7, 7), dtype=np.float32)  # not the model's 224 x 224
        bad = transport.prepare(
            InferRequest("flowers", "", spec.input_name, "FP32", wrong, spec.output_name, 3)
        )
        good = transport.prepare(
            InferRequest("flowers", "", spec.input_name, "FP32", batch[:1], spec.output_name, 3)
        )
        assert (await transport.infer(good, 10.0)).output.shape == (1, 3)
        with pytest.raises(TransportError) as raised:
            await transport.infer(bad, 10.0)
        assert raised.value.kind is ErrorKind.SERVER
        assert "shape" in raised.value.message and raised.value.message.isprintable()
        assert (await transport.infer(good, 10.0)).output.shape == (1, 3)
    finally:
        await transport.close()
