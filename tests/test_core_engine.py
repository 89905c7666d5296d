"""The engine against a real Triton on 127.0.0.1.

One server serves a repository of small Python-backend models written here: one that is a valid
classifier (and reports, as its scores, the batch size it executed, so the test can see how many
requests were really at the server at once), and several that the client must refuse.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time

import pytest

from flowerdemo.core.engine import ConnectError, EngineSettings, InferenceEngine
from flowerdemo.core.events import ErrorKind, InferenceEvent
from flowerdemo.core.images import load_images
from flowerdemo.core.stats import RunStatistics
from flowerdemo.resources import sample_images_dir
from flowerdemo.serving.stack import LocalStack, StackSettings

# Scores = the executed batch size in every class, after a pause long enough that the requests of
# one round meet at the server.
BATCH_REPORTING_MODEL = textwrap.dedent(
    """
    import json, time
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def initialize(self, args):
            config = json.loads(args["model_config"])
            self.output = config["output"][0]["name"]
            self.classes = int(config["output"][0]["dims"][0])
            self.input = config["input"][0]["name"]
            self.pause = float(config["parameters"]["pause_s"]["string_value"])

        def execute(self, requests):
            time.sleep(self.pause)
            batch = sum(pb_utils.get_input_tensor_by_name(r, self.input).as_numpy().shape[0] for r in requests)
            responses = []
            for request in requests:
                n = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy().shape[0]
                scores = np.full((n, self.classes), float(batch), dtype=np.float32)
                scores[:, 1] += 1.0  # class 1 always wins
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output, scores)]))
            return responses
    """
)


def _config(name: str, inputs: str, outputs: str, max_batch: int = 16, extra: str = "") -> str:
    return textwrap.dedent(
        f"""
        name: "{name}"
        backend: "python"
        max_batch_size: {max_batch}
        {inputs}
        {outputs}
        instance_group [{{ kind: KIND_CPU, count: 1 }}]
        parameters {{ key: "pause_s" value {{ string_value: "0.15" }} }}
        {extra}
        """
    )


IMAGE_INPUT = 'input [{ name: "image" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [3, 32, 32] }]'
SCORES_OUTPUT = 'output [{ name: "scores" data_type: TYPE_FP32 dims: [5] }]'
MODELS = {
    # A valid classifier without served labels: the client's fallback labels are used.
    "batch_reporter": _config(
        "batch_reporter",
        IMAGE_INPUT,
        SCORES_OUTPUT,
        extra="dynamic_batching { preferred_batch_size: [8] max_queue_delay_microseconds: 100000 }",
    ),
    "two_inputs": _config(
        "two_inputs",
        'input [{ name: "image" data_type: TYPE_FP32 dims: [3, 32, 32] }, '
        '{ name: "mask" data_type: TYPE_FP32 dims: [1] }]',
        SCORES_OUTPUT,
    ),
    "flat_input": _config(
        "flat_input", 'input [{ name: "image" data_type: TYPE_FP32 dims: [3072] }]', SCORES_OUTPUT
    ),
    "text_output": _config(
        "text_output", IMAGE_INPUT, 'output [{ name: "scores" data_type: TYPE_STRING dims: [5] }]'
    ),
}
LABELS = ("zero", "one", "two", "three", "four")


@pytest.fixture(scope="module")
def validation_server(tmp_path_factory, free_port_block):
    repository = tmp_path_factory.mktemp("validation-repository")
    for name, config in MODELS.items():
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "config.pbtxt").write_text(config)
        (repository / name / "1" / "model.py").write_text(BATCH_REPORTING_MODEL)
    settings = StackSettings(
        instances=1,
        with_envoy=False,
        repository=repository,
        model_name="batch_reporter",
        base_port=free_port_block(3),
    )
    with LocalStack(settings) as stack:  # started on entry, stopped on exit
        yield stack


@pytest.fixture(scope="module")
def photos():
    return [image.image for image in load_images(sample_images_dir()).images[:12]]


def _engine(url: str, photos, **overrides) -> InferenceEngine:
    settings = EngineSettings(
        url=url, model_name="batch_reporter", fallback_labels=LABELS, **overrides
    )
    return InferenceEngine(settings, photos)


async def test_connect_reads_and_validates_the_model(validation_server, photos):
    engine = _engine(validation_server.instance_grpc_url(0), photos)
    spec = await engine.connect()
    try:
        assert (spec.name, spec.input_name, spec.output_name) == (
            "batch_reporter",
            "image",
            "scores",
        )
        assert (spec.layout, spec.channels, spec.height, spec.width) == ("NCHW", 3, 32, 32)
        assert (spec.max_batch_size, spec.num_classes, spec.has_labels) == (16, 5, False)
    finally:
        await engine.close()


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("two_inputs", r"expected exactly 1 input \(an image\), found 2 \(image, mask\)"),
        ("flat_input", r"input 'image': expected 4 dimensions .*found shape \[-1, 3072\]"),
        ("text_output", r"output 'scores': expected datatype FP32 or FP16 .*found BYTES"),
        ("no_such_model", r"has no ready model 'no_such_model'.*Models there: batch_reporter"),
    ],
)
async def test_unusable_models_are_refused_with_the_reason(
    validation_server, photos, model, message
):
    settings = EngineSettings(url=validation_server.instance_grpc_url(0), model_name=model)
    engine = InferenceEngine(settings, photos)
    with pytest.raises(ConnectError, match=message):
        await engine.connect()
    await engine.close()


async def test_http_protocol_gives_the_same_spec(validation_server, photos):
    url = validation_server.instance_http_url(0)
    engine = _engine(url, photos, protocol="http")
    spec = await engine.connect()
    try:
        assert (spec.input_name, spec.num_classes, spec.max_batch_size) == ("image", 5, 16)
        event = await engine.classify([0])
        assert event.ok, event.error
        assert event.topk[0][0].label == "one"
    finally:
        await engine.close()


async def test_interactive_request_falls_back_to_client_labels(validation_server, photos):
    engine = _engine(validation_server.instance_grpc_url(0), photos, topk=2)
    await engine.connect()
    seen: list[InferenceEvent] = []
    engine.add_sink(seen.append)
    try:
        event = await engine.classify([3])
    finally:
        await engine.close()
    assert seen == [event]
    assert event.ok and event.image_indices == (3,)
    best, second = event.topk[0]
    assert (best.index, best.label) == (1, "one")
    assert second.label in {"zero", "two", "three", "four"}
    assert best.score == second.score + 1.0
    assert 0.1 < event.latency_s < 5.0


async def test_automatic_mode_keeps_exactly_n_requests_at_the_server(validation_server, photos):
    engine = _engine(validation_server.instance_grpc_url(0), photos)
    await engine.connect()
    statistics = RunStatistics()
    events: list[InferenceEvent] = []
    engine.add_sink(statistics.record)
    engine.add_sink(events.append)
    in_flight_samples: list[int] = []

    async def sample() -> None:
        while True:
            await asyncio.sleep(0.05)
            in_flight_samples.append(engine.in_flight)

    sampler = asyncio.ensure_future(sample())
    try:
        await engine.run_automatic(8, duration_s=2.5)
    finally:
        sampler.cancel()
        await engine.close()

    snapshot = statistics.snapshot(engine.in_flight)
    assert snapshot.failed == 0 and snapshot.answered == engine.sent == len(events)
    assert engine.in_flight == 0
    # The server saw batches of exactly 8: the eight outstanding requests were really there at once.
    executed_batches = [int(event.topk[0][1].score) for event in events]
    assert max(executed_batches) == 8
    assert executed_batches.count(8) >= len(executed_batches) // 2
    assert max(in_flight_samples) == 8
    # Photos are cycled in order.
    assert sorted({event.image_indices[0] for event in events}) == list(range(len(photos)))


async def test_batched_requests(validation_server, photos):
    engine = _engine(validation_server.instance_grpc_url(0), photos, batch_size=4)
    await engine.connect()
    try:
        event = await engine.classify([0, 1, 2, 3])
        assert event.ok and len(event.topk) == 4 and event.batch_size == 4
        assert all(topk[0].label == "one" for topk in event.topk)
    finally:
        await engine.close()


async def test_unreachable_server_fails_fast_with_a_clear_message(free_port_block, photos):
    port = free_port_block(1)
    engine = InferenceEngine(EngineSettings(url=f"127.0.0.1:{port}", connect_timeout_s=2.0), photos)
    started = time.monotonic()
    with pytest.raises(ConnectError, match=r"Cannot reach the grpc server at 127\.0\.0\.1:\d+"):
        await engine.connect()
    assert time.monotonic() - started < 5.0
    await engine.close()


def test_bad_url_is_explained():
    engine = InferenceEngine(EngineSettings(url="http//nowhere"), [])
    with pytest.raises(ConnectError, match="not a server address: write it as HOST:PORT"):
        asyncio.run(engine.connect())


@pytest.mark.stack
async def test_server_killed_mid_run_every_request_is_accounted_for(
    tmp_path, free_port_block, photos
):
    repository = tmp_path / "repository"
    (repository / "batch_reporter" / "1").mkdir(parents=True)
    (repository / "batch_reporter" / "config.pbtxt").write_text(MODELS["batch_reporter"])
    (repository / "batch_reporter" / "1" / "model.py").write_text(BATCH_REPORTING_MODEL)
    settings = StackSettings(
        instances=1,
        with_envoy=False,
        repository=repository,
        model_name="batch_reporter",
        base_port=free_port_block(3),
    )
    with LocalStack(settings) as stack:
        engine = _engine(stack.instance_grpc_url(0), photos, request_timeout_s=3.0)
        await engine.connect()
        statistics = RunStatistics()
        engine.add_sink(statistics.record)
        run = asyncio.ensure_future(engine.run_automatic(4))
        await asyncio.sleep(1.0)
        answered_before_kill = statistics.snapshot().answered
        await asyncio.to_thread(stack.stop_instance, 0, kill=True)
        await asyncio.sleep(1.5)
        engine.stop()
        await asyncio.wait_for(
            run, timeout=10.0
        )  # no hang: outstanding requests end at their deadline
        await engine.close()

    snapshot = statistics.snapshot(engine.in_flight)
    assert answered_before_kill > 0
    assert engine.in_flight == 0
    assert snapshot.answered + snapshot.failed == engine.sent
    assert snapshot.failed > 0
    assert set(snapshot.errors_by_kind) <= {"unavailable", "deadline"}
    assert snapshot.errors_by_kind.get("unavailable", 0) > 0
    # A dead server is not hammered: failed requests back off instead of spinning.
    assert snapshot.failed < 200


def test_headless_cli_against_an_unreachable_server_explains_and_exits(free_port_block):
    port = free_port_block(1)
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowerdemo",
            "--headless",
            "--url",
            f"127.0.0.1:{port}",
            "--mode",
            "auto",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"Cannot reach the grpc server at 127.0.0.1:{port}" in result.stderr
    assert time.monotonic() - started < 20


async def test_close_cancels_outstanding_requests_and_counts_them(validation_server, photos):
    engine = _engine(validation_server.instance_grpc_url(0), photos)
    await engine.connect()
    events: list[InferenceEvent] = []
    engine.add_sink(events.append)
    run = asyncio.ensure_future(engine.run_automatic(6))
    await asyncio.sleep(0.5)
    await engine.close()
    await asyncio.wait_for(run, timeout=5.0)
    assert engine.in_flight == 0
    assert len(events) == engine.sent
    cancelled = [e for e in events if e.error is not None]
    assert cancelled and all(e.error.kind is ErrorKind.CANCELLED for e in cancelled)
