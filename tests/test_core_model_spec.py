"""Model validation from the JSON the Triton clients return (gRPC and HTTP shapes)."""

from __future__ import annotations

import copy

import pytest

from flowerdemo.core.model_spec import ModelSpecError, parse_model_spec

# What tritonclient.grpc returns with as_json=True: int64 as strings, config wrapped, defaults left out.
GRPC_METADATA = {
    "name": "flowers",
    "versions": ["1"],
    "platform": "python",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": ["-1", "3", "224", "224"]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": ["-1", "102"]}],
}
GRPC_CONFIG = {
    "config": {
        "name": "flowers",
        "backend": "python",
        "max_batch_size": 32,
        "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": ["3", "224", "224"]}],
        "output": [
            {
                "name": "probabilities",
                "data_type": "TYPE_FP32",
                "dims": ["102"],
                "label_filename": "labels.txt",
            }
        ],
    }
}
# What tritonclient.http returns: plain JSON, the config not wrapped.
HTTP_METADATA = {
    "name": "resnet",
    "versions": ["3"],
    "platform": "onnxruntime_onnx",
    "inputs": [{"name": "data", "datatype": "UINT8", "shape": [-1, 299, 299, 3]}],
    "outputs": [{"name": "scores", "datatype": "FP16", "shape": [-1, 1, 1000, 1]}],
}
HTTP_CONFIG = {
    "name": "resnet",
    "platform": "onnxruntime_onnx",
    "max_batch_size": 8,
    "input": [
        {"name": "data", "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC", "dims": [299, 299, 3]}
    ],
    "output": [{"name": "scores", "data_type": "TYPE_FP16", "dims": [1, 1000, 1]}],
}


def test_grpc_json_of_the_bundled_model_contract():
    spec = parse_model_spec(GRPC_METADATA, GRPC_CONFIG)
    assert (spec.name, spec.version, spec.input_name, spec.output_name) == (
        "flowers",
        "1",
        "input",
        "probabilities",
    )
    assert (spec.layout, spec.input_dtype, spec.channels, spec.height, spec.width) == (
        "NCHW",
        "FP32",
        3,
        224,
        224,
    )
    assert (spec.max_batch_size, spec.num_classes, spec.has_labels) == (32, 102, True)
    assert spec.input_shape(4) == [4, 3, 224, 224]
    assert "102 classes" in spec.describe()


def test_http_json_nhwc_uint8_without_labels():
    spec = parse_model_spec(HTTP_METADATA, HTTP_CONFIG)
    assert (spec.layout, spec.input_dtype, spec.channels, spec.height, spec.width) == (
        "NHWC",
        "UINT8",
        3,
        299,
        299,
    )
    assert (spec.num_classes, spec.has_labels, spec.max_batch_size) == (1000, False, 8)
    assert spec.input_shape(2) == [2, 299, 299, 3]


def test_model_without_batching():
    metadata = copy.deepcopy(GRPC_METADATA)
    metadata["inputs"][0]["shape"] = ["3", "224", "224"]
    metadata["outputs"][0]["shape"] = ["102"]
    config = copy.deepcopy(GRPC_CONFIG)
    del config["config"]["max_batch_size"]
    spec = parse_model_spec(metadata, config)
    assert not spec.batches
    assert spec.input_shape(1) == [3, 224, 224]


def _broken(change):
    metadata = copy.deepcopy(GRPC_METADATA)
    config = copy.deepcopy(GRPC_CONFIG)
    change(metadata, config["config"])
    return metadata, config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda m, c: m["inputs"].append(
                {"name": "mask", "datatype": "FP32", "shape": ["-1", "1"]}
            ),
            r"model 'flowers': expected exactly 1 input \(an image\), found 2 \(input, mask\)",
        ),
        (lambda m, c: m.update(outputs=[]), r"expected exactly 1 output .* found 0"),
        (
            lambda m, c: m["inputs"][0].update(shape=["-1", "224", "224"]),
            r"input 'input': expected 4 dimensions \(batch \+ 3 image dimensions\), found shape \[-1, 224, 224\]",
        ),
        (
            lambda m, c: m["inputs"][0].update(datatype="INT64"),
            r"input 'input': expected datatype FP32, FP16 or UINT8, found INT64",
        ),
        (
            lambda m, c: m["outputs"][0].update(datatype="BYTES"),
            r"output 'probabilities': expected datatype FP32 or FP16 .*found BYTES",
        ),
        (
            lambda m, c: m["outputs"][0].update(shape=["-1", "10", "10"]),
            r"output 'probabilities': expected one dimension of class scores .*found shape \[-1, 10, 10\]",
        ),
        (
            lambda m, c: m["inputs"][0].update(shape=["-1", "3", "224", "3"]),
            r"cannot tell NCHW from NHWC",
        ),
        (
            lambda m, c: m["inputs"][0].update(shape=["-1", "5", "224", "224"]),
            r"cannot tell NCHW from NHWC|expected 1 or 3 colour channels",
        ),
        (
            lambda m, c: m["inputs"][0].update(shape=["-1", "3", "-1", "-1"]),
            r"the image size must be fixed",
        ),
    ],
    ids=[
        "two-inputs",
        "no-output",
        "rank",
        "input-dtype",
        "output-dtype",
        "output-shape",
        "ambiguous-layout",
        "channels",
        "dynamic-size",
    ],
)
def test_every_mismatch_names_model_tensor_expected_and_found(change, message):
    with pytest.raises(ModelSpecError, match=message):
        parse_model_spec(*_broken(change))


def test_declared_format_wins_over_the_guess():
    def declare_nchw_with_five_channels(m, c):
        m["inputs"][0]["shape"] = ["-1", "5", "224", "224"]
        c["input"][0]["format"] = "FORMAT_NCHW"

    with pytest.raises(
        ModelSpecError, match=r"expected 1 or 3 colour channels in NCHW layout, found 5"
    ):
        parse_model_spec(*_broken(declare_nchw_with_five_channels))
