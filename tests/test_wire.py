"""The three wire formats against the real stack (Triton behind Envoy): FP32 tensors, UINT8 raw
pixels scaled on the server, and JPEG bytes decoded and resized on the server. Same answers,
fewer bytes; the preprocessing follows the model, and a contradiction is a clear error."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from flowerdemo.core.engine import ConnectError, EngineSettings, InferenceEngine
from flowerdemo.core.events import InferenceEvent
from flowerdemo.core.images import load_images
from flowerdemo.core.preprocess import PreprocessOptions
from flowerdemo.options import RunOptions
from flowerdemo.resources import sample_images_dir

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def samples():
    return load_images(sample_images_dir()).images


async def _top1(url: str, photos, wire: str, protocol: str = "grpc"):
    engine = InferenceEngine(
        EngineSettings(url=url, protocol=protocol, wire=wire, topk=1, batch_size=4), photos
    )
    spec = await engine.connect()
    events: list[InferenceEvent] = []
    engine.add_sink(events.append)
    try:
        await engine.run_automatic(4, max_requests=(len(photos) + 3) // 4)
        request_bytes = engine.mean_request_bytes()
    finally:
        await engine.close()
    assert all(event.ok for event in events), [e.error for e in events if not e.ok][:3]
    best: dict[int, int] = {}
    for event in events:
        for index, answer in zip(event.image_indices, event.topk, strict=True):
            best.setdefault(index, answer[0].index)
    return spec, request_bytes, best


async def test_the_samples_get_the_same_top1_through_all_three_inputs(local_stack, samples):
    photos = [s.image for s in samples]
    fp32_spec, fp32_bytes, fp32 = await _top1(local_stack.grpc_url, photos, "fp32")
    uint8_spec, uint8_bytes, uint8 = await _top1(local_stack.grpc_url, photos, "uint8")
    jpeg_spec, jpeg_bytes, jpeg = await _top1(local_stack.http_url, photos, "jpeg", "http")

    assert (fp32_spec.name, fp32_spec.wire) == ("flowers", "fp32")
    assert (uint8_spec.name, uint8_spec.wire, uint8_spec.layout) == (
        "flowers_uint8",
        "uint8",
        "NHWC",
    )
    assert (jpeg_spec.name, jpeg_spec.wire) == ("flowers_jpeg", "jpeg")
    assert sorted(fp32) == list(range(len(samples)))
    assert fp32 == uint8, [k for k in fp32 if fp32[k] != uint8[k]]
    assert fp32 == jpeg, [k for k in fp32 if fp32[k] != jpeg[k]]
    # The samples are named after their class: the answers are right, not only equal.
    assert sum(fp32[k] == s.truth for k, s in enumerate(samples)) / len(samples) >= 0.9

    # Four images a request: 4 x 602,112 bytes of FP32, 4 x 150,528 of UINT8, JPEG far less.
    assert fp32_bytes == 4 * 3 * 224 * 224 * 4
    assert uint8_bytes == fp32_bytes / 4
    assert jpeg_bytes < uint8_bytes / 4


async def test_auto_picks_the_smallest_the_server_offers(local_stack, samples):
    engine = InferenceEngine(
        EngineSettings(url=local_stack.grpc_url, wire="auto"), [samples[0].image]
    )
    try:
        spec = await engine.connect()
    finally:
        await engine.close()
    assert (spec.name, spec.wire, spec.stated_scaling) == ("flowers_jpeg", "jpeg", "inception")


async def test_scaling_pixels_for_the_uint8_input_is_refused_in_one_paragraph(local_stack, samples):
    settings = EngineSettings(
        url=local_stack.grpc_url,
        wire="uint8",
        preprocess=PreprocessOptions(scaling="inception"),
    )
    engine = InferenceEngine(settings, [samples[0].image])
    with pytest.raises(ConnectError) as caught:
        await engine.connect()
    message = str(caught.value)
    assert "--scaling inception contradicts model 'flowers_uint8'" in message
    assert "the server applies 'inception' itself" in message
    assert not engine.connected


def test_headless_cli_explains_the_contradiction_without_a_traceback(local_stack):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowerdemo",
            "--headless",
            "--url",
            local_stack.grpc_url,
            "--wire",
            "jpeg",
            "--scaling",
            "vgg",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "--scaling vgg contradicts model 'flowers_jpeg'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_an_undecodable_photo_fails_only_its_own_request(local_stack, samples):
    # Bytes no client of ours sends (it always encodes a real picture), so sent by hand.
    import io

    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(local_stack.grpc_url)
    good = io.BytesIO()
    samples[0].image.save(good, format="JPEG")

    def ask(payload: bytes):
        tensor = grpcclient.InferInput("input", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[payload]], dtype=np.object_))
        return client.infer("flowers_jpeg", [tensor], client_timeout=10)

    # A 65,500 x 1 PNG is a few hundred bytes, but covering 224 x 224 would take gigabytes.
    strip = io.BytesIO()
    Image.new("RGB", (65_500, 1)).save(strip, format="PNG")
    try:
        with pytest.raises(Exception, match="cannot read the input image"):
            ask(b"not a picture at all")
        with pytest.raises(Exception, match="aspect ratio too extreme"):
            ask(strip.getvalue())
        answer = ask(good.getvalue()).as_numpy("probabilities")
    finally:
        client.close()
    assert answer.shape == (1, 102)
    assert int(np.argmax(answer[0])) == samples[0].truth


@pytest.mark.gui
def test_the_window_shows_the_wire_and_the_bytes_per_request(qtbot, open_window, local_stack):
    from flowerdemo.ui.inference_task import TaskState

    window = open_window(RunOptions(url=local_stack.grpc_url, wire="uint8"))
    qtbot.waitUntil(lambda: window.task.state is TaskState.CONNECTED, timeout=20_000)
    text = window.live_panel.server_label.text()
    assert "model flowers_uint8" in text
    assert "wire uint8: 151 kB a request" in text


async def test_the_container_flavours_serve_the_variants_as_ensembles(
    tmp_path, stack_settings, served_model_dir, samples
):
    # NVIDIA's containers run the network natively (onnxruntime_onnx, tensorrt_plan); the bundled
    # tritonserver has neither backend, so the network step here is the same network as a
    # Python-backend model. The preprocessing models and the ensembles are the onnx flavour's own.
    import shutil

    from flowerdemo.serving.repository import RepositoryOptions, write_repository
    from flowerdemo.serving.stack import LocalStack

    root = tmp_path / "repository"
    onnx_path, labels_path = served_model_dir / "flowers.onnx", served_model_dir / "labels.txt"
    written = write_repository(onnx_path, labels_path, root, flavour="onnx")
    assert written.model_names == (
        "flowers",
        "flowers_uint8",
        "flowers_uint8_preprocess",
        "flowers_jpeg",
        "flowers_jpeg_preprocess",
    )
    assert 'platform: "ensemble"' in (root / "flowers_jpeg" / "config.pbtxt").read_text()
    shutil.rmtree(root / "flowers")
    network = tmp_path / "network"
    write_repository(onnx_path, labels_path, network, RepositoryOptions(wires=("fp32",)))
    shutil.copytree(network / "flowers", root / "flowers")

    stack = LocalStack(stack_settings(1, repository=root))
    stack.start()
    try:
        photos = [s.image for s in samples[:24]]
        _, _, fp32 = await _top1(stack.grpc_url, photos, "fp32")
        uint8_spec, _, uint8 = await _top1(stack.grpc_url, photos, "uint8")
        jpeg_spec, _, jpeg = await _top1(stack.http_url, photos, "jpeg", "http")
    finally:
        stack.stop()
    assert (uint8_spec.platform, jpeg_spec.platform) == ("ensemble", "ensemble")
    assert (jpeg_spec.height, jpeg_spec.stated_scaling) == (224, "inception")
    assert fp32 == uint8 == jpeg
    assert sum(fp32[k] == s.truth for k, s in enumerate(samples[:24])) >= 21


def test_headless_auto_wire_says_what_travels(local_stack):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowerdemo",
            "--headless",
            "--url",
            local_stack.grpc_url,
            "--wire",
            "auto",
            "--mode",
            "auto",
            "--duration",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    connected = next(line for line in result.stdout.splitlines() if line.startswith("Connected"))
    assert "flowers_jpeg" in connected and "wire jpeg" in connected
    size = int(connected.rsplit("wire jpeg, ", 1)[1].split(" bytes")[0].replace(",", ""))
    assert 4_000 < size < 40_000


async def test_auto_with_an_explicit_scaling_keeps_the_float_input(local_stack, samples):
    settings = EngineSettings(
        url=local_stack.grpc_url, wire="auto", preprocess=PreprocessOptions(scaling="inception")
    )
    engine = InferenceEngine(settings, [samples[0].image])
    try:
        spec = await engine.connect()
    finally:
        await engine.close()
    assert (spec.name, spec.wire) == ("flowers", "fp32")
