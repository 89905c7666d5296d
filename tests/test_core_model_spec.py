"""Model validation from the JSON the Triton clients return (gRPC and HTTP shapes)."""

from __future__ import annotations

import copy

import pytest

from flowerdemo.core.model_spec import ModelSpecError, check_wire, parse_model_spec, wire_model_name

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
            r"input 'input': expected datatype FP32, FP16, UINT8 or BYTES, found INT64",
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
        (
            lambda m, c: m["inputs"][0].update(shape=["-1", "3", "100000", "100000"]),
            r"an image input of 100000x100000 is larger than this client prepares \(at most 4096x4096\)",
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
        "huge-size",
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


# ---- wire variants: UINT8 and encoded-image (BYTES) inputs ---------------------------------------
def _variant(name, datatype, shape, config_input, parameters):
    metadata = copy.deepcopy(GRPC_METADATA)
    metadata["name"] = name
    metadata["inputs"][0].update(datatype=datatype, shape=shape)
    config = copy.deepcopy(GRPC_CONFIG)
    config["config"]["name"] = name
    config["config"]["input"][0].update(config_input)
    config["config"]["parameters"] = {k: {"string_value": v} for k, v in parameters.items()}
    return metadata, config


def test_the_uint8_variant_states_raw_pixels_and_the_network_scaling():
    spec = parse_model_spec(
        *_variant(
            "flowers_uint8",
            "UINT8",
            ["-1", "224", "224", "3"],
            {"data_type": "TYPE_UINT8", "format": "FORMAT_NHWC", "dims": ["224", "224", "3"]},
            {"flowerdemo_scaling": "inception", "flowerdemo_input": "uint8"},
        )
    )
    assert (spec.layout, spec.input_dtype, spec.wire) == ("NHWC", "UINT8", "uint8")
    assert spec.stated_scaling == "inception"
    assert spec.input_shape(2) == [2, 224, 224, 3]


def test_the_jpeg_variant_is_one_encoded_image_per_row():
    spec = parse_model_spec(
        *_variant(
            "flowers_jpeg",
            "BYTES",
            ["-1", "1"],
            {"data_type": "TYPE_STRING", "dims": ["1"]},
            {"flowerdemo_image_height": "200", "flowerdemo_image_width": "180"},
        )
    )
    assert (spec.layout, spec.input_dtype, spec.wire) == ("ENCODED", "BYTES", "jpeg")
    assert (spec.height, spec.width, spec.channels) == (200, 180, 3)
    assert spec.input_shape(4) == [4, 1]
    assert "encoded image" in spec.describe()
    # A model that does not state its size (Triton's own ensemble example): the bundled size.
    plain = parse_model_spec(
        *_variant("other", "BYTES", ["-1", "1"], {"data_type": "TYPE_STRING", "dims": ["1"]}, {})
    )
    assert (plain.height, plain.width, plain.stated_scaling) == (224, 224, "")


def test_a_bytes_input_that_is_not_one_image_per_row_is_refused():
    with pytest.raises(ModelSpecError, match=r"one encoded image per row.*\[-1, 3\]"):
        parse_model_spec(
            *_variant("bad", "BYTES", ["-1", "3"], {"data_type": "TYPE_STRING", "dims": ["3"]}, {})
        )


def test_the_wire_picks_the_variant_by_name():
    both = ["flowers", "flowers_jpeg", "flowers_uint8", "other"]
    assert wire_model_name("flowers", "fp32", both) == "flowers"
    assert wire_model_name("flowers", "uint8", both) == "flowers_uint8"
    assert wire_model_name("flowers", "jpeg", both) == "flowers_jpeg"
    assert wire_model_name("flowers", "auto", both) == "flowers_jpeg"
    assert wire_model_name("flowers", "auto", ["flowers", "flowers_uint8"]) == "flowers_uint8"
    assert wire_model_name("flowers", "auto", ["flowers"]) == "flowers"
    # Asked to scale pixels: only the float input can carry that, so auto keeps it.
    assert wire_model_name("flowers", "auto", both, client_scales=True) == "flowers"
    with pytest.raises(ModelSpecError, match=r"no jpeg variant of model 'flowers'.*flowers_uint8"):
        wire_model_name("flowers", "jpeg", ["flowers", "flowers_uint8"])


def test_a_variant_whose_input_does_not_match_its_wire_is_refused():
    fp32 = parse_model_spec(GRPC_METADATA, GRPC_CONFIG)
    check_wire(fp32, "fp32")
    check_wire(fp32, "auto")
    with pytest.raises(ModelSpecError, match=r"chosen for the uint8 wire.*takes FP32"):
        check_wire(fp32, "uint8")
