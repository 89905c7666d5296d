"""Model repository writer: config.pbtxt contents and the errors for bad models and labels.

That Triton itself accepts the written Python-backend repository is shown by the stack tests,
which serve it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flowerdemo.serving.repository import (
    RepositoryError,
    RepositoryOptions,
    inspect_onnx,
    read_labels,
    render_config,
    write_repository,
)


@pytest.fixture(scope="module")
def model_dir(standin_model_dir) -> Path:
    return standin_model_dir


def test_inspect_reads_the_contract(model_dir):
    info = inspect_onnx(model_dir / "flowers.onnx")
    assert (info.input.name, info.input.data_type, info.input.dims) == (
        "input",
        "TYPE_FP32",
        (3, 224, 224),
    )
    assert (info.output.name, info.output.dims, info.batched) == ("probabilities", (102,), True)


def test_python_flavour_writes_a_complete_model(model_dir, tmp_path):
    written = write_repository(
        model_dir / "flowers.onnx", model_dir / "labels.txt", tmp_path / "repo"
    )
    model = tmp_path / "repo" / "flowers"
    assert written.model_dir == model
    assert sorted(p.relative_to(model).as_posix() for p in model.rglob("*")) == [
        "1",
        "1/model.onnx",
        "1/model.py",
        "config.pbtxt",
        "labels.txt",
    ]
    assert "class TritonPythonModel" in (model / "1" / "model.py").read_text()
    labels = (model / "labels.txt").read_text().splitlines()
    assert labels == (model_dir / "labels.txt").read_text().splitlines()
    config = (model / "config.pbtxt").read_text()
    for expected in (
        'name: "flowers"',
        'backend: "python"',
        "max_batch_size: 32",
        'name: "input"',
        "data_type: TYPE_FP32",
        "format: FORMAT_NCHW",
        "dims: [ 3, 224, 224 ]",
        'name: "probabilities"',
        "dims: [ 102 ]",
        'label_filename: "labels.txt"',
        "dynamic_batching {",
        "max_queue_delay_microseconds: 500",
        "kind: KIND_CPU",
        "latest: { num_versions: 1 }",
        'key: "intra_op_threads" value: { string_value: "1" }',
    ):
        assert expected in config, expected


def test_gpu_instances_and_batching_options(model_dir):
    info = inspect_onnx(model_dir / "flowers.onnx")
    options = RepositoryOptions(
        model_name="lilies",
        max_batch_size=16,
        preferred_batch_sizes=(4, 8),
        max_queue_delay_us=2000,
        instance_kind="gpu",
        instance_count=2,
        gpus=(0, 1),
        num_versions=2,
    )
    config = render_config(info, options, flavour="python")
    assert 'name: "lilies"' in config
    assert "max_batch_size: 16" in config
    assert "preferred_batch_size: [ 4, 8 ]" in config
    assert "max_queue_delay_microseconds: 2000" in config
    assert re.search(r"count: 2\s+kind: KIND_GPU\s+gpus: \[ 0, 1 \]", config)
    assert "latest: { num_versions: 2 }" in config

    unbatched = render_config(info, RepositoryOptions(dynamic_batching=False), flavour="python")
    assert "dynamic_batching" not in unbatched


def test_container_flavours(model_dir, tmp_path):
    onnx = write_repository(
        model_dir / "flowers.onnx",
        model_dir / "labels.txt",
        tmp_path / "onnx",
        RepositoryOptions(instance_kind="gpu"),
        flavour="onnx",
    )
    onnx_config = (onnx.model_dir / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in onnx_config
    assert "backend:" not in onnx_config
    assert "kind: KIND_GPU" in onnx_config
    assert (onnx.model_dir / "1" / "model.onnx").is_file()
    assert not (onnx.model_dir / "1" / "model.py").exists()

    trt = write_repository(
        model_dir / "flowers.onnx",
        model_dir / "labels.txt",
        tmp_path / "trt",
        RepositoryOptions(instance_kind="gpu", max_batch_size=32),
        flavour="tensorrt",
    )
    trt_config = (trt.model_dir / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in trt_config
    assert 'default_model_filename: "model.plan"' in trt_config
    onnx_file = trt.model_dir / "model.onnx"
    assert trt.build_command == (
        "trtexec",
        f"--onnx={onnx_file}",
        "--fp16",
        f"--saveEngine={trt.model_dir / '1' / 'model.plan'}",
        "--minShapes=input:1x3x224x224",
        "--optShapes=input:16x3x224x224",
        "--maxShapes=input:32x3x224x224",
    )
    assert "trtexec --onnx=" in (trt.model_dir / "BUILD_ENGINE.txt").read_text()


def test_labels_not_matching_the_output_name_both_files(model_dir, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("rose\ntulip\ndaisy\n")
    with pytest.raises(RepositoryError) as caught:
        write_repository(model_dir / "flowers.onnx", labels, tmp_path / "repo")
    message = str(caught.value)
    assert str(labels) in message
    assert "3 labels" in message
    assert "'probabilities' has 102 classes" in message
    assert not (tmp_path / "repo").exists()


def test_missing_and_broken_model_files(model_dir, tmp_path):
    missing = tmp_path / "nowhere.onnx"
    with pytest.raises(RepositoryError, match=f"model file {re.escape(str(missing))}: not found"):
        write_repository(missing, model_dir / "labels.txt", tmp_path / "repo")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf")
    with pytest.raises(RepositoryError, match="ONNX Runtime cannot load it"):
        inspect_onnx(garbage)


def test_labels_file_problems(tmp_path):
    with pytest.raises(RepositoryError, match=r"labels file .*: not found"):
        read_labels(tmp_path / "absent.txt")
    gappy = tmp_path / "gappy.txt"
    gappy.write_text("rose\n\ntulip\n\n\n")
    with pytest.raises(RepositoryError, match=r"blank label on line\(s\) \[2\]"):
        read_labels(gappy)


def test_options_out_of_range(model_dir):
    info = inspect_onnx(model_dir / "flowers.onnx")
    with pytest.raises(RepositoryError, match=r"preferred batch sizes \[64\]"):
        render_config(info, RepositoryOptions(preferred_batch_sizes=(64,)), flavour="python")
    with pytest.raises(RepositoryError, match="instance kind 'tpu'"):
        render_config(info, RepositoryOptions(instance_kind="tpu"), flavour="python")
    with pytest.raises(RepositoryError, match="repository flavour 'pytorch'"):
        render_config(info, RepositoryOptions(), flavour="pytorch")


def test_python_flavour_writes_the_uint8_and_jpeg_variants(model_dir, tmp_path):
    written = write_repository(
        model_dir / "flowers.onnx", model_dir / "labels.txt", tmp_path / "repo"
    )
    assert written.model_names == ("flowers", "flowers_uint8", "flowers_jpeg")
    network = (tmp_path / "repo" / "flowers" / "config.pbtxt").read_text()
    assert 'key: "flowerdemo_scaling" value: { string_value: "inception" }' in network
    assert "flowerdemo_input" not in network
    for name in ("flowers_uint8", "flowers_jpeg"):
        variant = tmp_path / "repo" / name
        assert sorted(p.relative_to(variant).as_posix() for p in variant.rglob("*")) == [
            "1",
            "1/model.onnx",
            "1/model.py",
            "config.pbtxt",
            "labels.txt",
        ]
        assert (variant / "1" / "model.onnx").read_bytes() == (
            model_dir / "flowers.onnx"
        ).read_bytes()
    uint8 = (tmp_path / "repo" / "flowers_uint8" / "config.pbtxt").read_text()
    for expected in (
        'name: "flowers_uint8"',
        "data_type: TYPE_UINT8",
        "format: FORMAT_NHWC",
        "dims: [ 224, 224, 3 ]",
        'label_filename: "labels.txt"',
        'key: "flowerdemo_input" value: { string_value: "uint8" }',
        'key: "flowerdemo_onnx_layout" value: { string_value: "NCHW" }',
        'key: "flowerdemo_scaling" value: { string_value: "inception" }',
    ):
        assert expected in uint8, expected
    jpeg = (tmp_path / "repo" / "flowers_jpeg" / "config.pbtxt").read_text()
    for expected in (
        'name: "flowers_jpeg"',
        "data_type: TYPE_STRING",
        "dims: [ 1 ]",
        'key: "flowerdemo_input" value: { string_value: "jpeg" }',
        'key: "flowerdemo_image_height" value: { string_value: "224" }',
        'key: "flowerdemo_image_width" value: { string_value: "224" }',
    ):
        assert expected in jpeg, expected

    only_fp32 = write_repository(
        model_dir / "flowers.onnx",
        model_dir / "labels.txt",
        tmp_path / "plain",
        RepositoryOptions(wires=("fp32",), scaling="vgg"),
    )
    assert only_fp32.model_names == ("flowers",)
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["flowers"]
    assert 'string_value: "vgg"' in (only_fp32.model_dir / "config.pbtxt").read_text()


def test_wire_options_out_of_range(model_dir):
    info = inspect_onnx(model_dir / "flowers.onnx")
    with pytest.raises(RepositoryError, match="scaling 'sepia'"):
        RepositoryOptions(scaling="sepia").check()
    with pytest.raises(RepositoryError, match="must include 'fp32'"):
        RepositoryOptions(wires=("jpeg",)).check()
    with pytest.raises(RepositoryError, match="serves its variants as ensembles"):
        render_config(info, RepositoryOptions(), flavour="onnx", wire="uint8")


def test_the_container_deployments_load_the_wire_variants(tmp_path):
    from flowerdemo.__main__ import main

    dest = tmp_path / "deploy"
    assert main(["serve", "--print-config", str(dest), "--target", "compose", "-n", "1"]) == 0
    compose = (dest / "compose.yaml").read_text()
    for model in ("flowers", "flowers_uint8", "flowers_jpeg"):
        assert f"--load-model={model}" in compose, model
    # Explicit loading of an ensemble brings its preprocessing step: the repository holds it.
    assert (dest / "repository-onnx" / "flowers_jpeg_preprocess" / "1" / "model.py").is_file()
