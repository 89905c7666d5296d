"""The bundled classifier (assets/model) honours its contract, run by ONNX Runtime on the CPU.

Contract (docs/ARCHITECTURE.md): input `input` float32 [N, 3, 224, 224] with N dynamic, output
`probabilities` float32 [N, 102] (softmax), labels.txt with the 102 class names, a model card,
under 20 MB; the client's default preprocessing is the one it was trained for.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from flowerdemo.core.preprocess import fit, scale_pixels
from flowerdemo.resources import bundled_model_dir, labels_file, sample_images_dir

MODEL = bundled_model_dir() / "flowers.onnx"
LABELS = bundled_model_dir() / "labels.txt"
CARD = bundled_model_dir() / "MODEL_CARD.md"
NUM_CLASSES = 102


@cache
def session() -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])


@cache
def samples() -> tuple[np.ndarray, np.ndarray]:
    """The 102 bundled photos with the client's default preprocessing, and their classes."""
    paths = sorted(sample_images_dir().glob("[0-9][0-9][0-9]-*.jpg"))
    tensors = []
    for path in paths:
        with Image.open(path) as picture:
            fitted = fit(picture.convert("RGB"), 224, 224, "crop")
        tensors.append(scale_pixels(np.asarray(fitted), "inception").transpose(2, 0, 1))
    classes = np.array([int(path.name[:3]) for path in paths])
    return np.ascontiguousarray(np.stack(tensors), dtype=np.float32), classes


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, position


def opset_imports(path: Path) -> dict[str, int]:
    """The opset_import entries of an ONNX file (ModelProto field 8), read from the protobuf
    wire format directly: the suite runs with onnxruntime alone, without the onnx package."""
    data = path.read_bytes()
    found: dict[str, int] = {}
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, position = _varint(data, position)
        elif wire_type == 2:
            length, position = _varint(data, position)
            payload = data[position : position + length]
            position += length
            if field == 8:  # OperatorSetIdProto: domain = 1 (string), version = 2 (int64)
                domain, version, inner = "", 0, 0
                while inner < len(payload):
                    inner_key, inner = _varint(payload, inner)
                    if inner_key & 7 == 2:
                        size, inner = _varint(payload, inner)
                        domain = payload[inner : inner + size].decode()
                        inner += size
                    else:
                        version, inner = _varint(payload, inner)
                found[domain] = version
        else:
            raise ValueError(f"{path}: unexpected wire type {wire_type} at top level")
    return found


def run(batch: np.ndarray) -> np.ndarray:
    return session().run(["probabilities"], {"input": batch})[0]


def test_files_are_there_and_small_enough_to_bundle():
    assert MODEL.is_file(), f"{MODEL} missing"
    assert MODEL.stat().st_size < 20_000_000, f"{MODEL} is {MODEL.stat().st_size} bytes"
    assert CARD.is_file(), f"{CARD} missing"


def test_labels_are_the_102_class_names_of_the_app():
    names = LABELS.read_text(encoding="utf-8").splitlines()
    assert len(names) == NUM_CLASSES
    assert names == labels_file().read_text(encoding="utf-8").splitlines()
    assert names[0] == "pink primrose" and names[101] == "blackberry lily"


def test_graph_declares_the_contracted_input_and_output():
    opsets = opset_imports(MODEL)
    assert opsets.get("", opsets.get("ai.onnx", 0)) >= 17, f"opset imports {opsets}"

    inputs = session().get_inputs()
    outputs = session().get_outputs()
    assert [i.name for i in inputs] == ["input"]
    assert [o.name for o in outputs] == ["probabilities"]
    assert inputs[0].type == "tensor(float)" and outputs[0].type == "tensor(float)"
    # The batch dimension is symbolic (dynamic); the others are fixed.
    assert isinstance(inputs[0].shape[0], str)
    assert inputs[0].shape[1:] == [3, 224, 224]
    assert isinstance(outputs[0].shape[0], str)
    assert outputs[0].shape[1:] == [NUM_CLASSES]


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_any_batch_size_gives_one_probability_row_per_image(batch_size):
    pictures, _ = samples()
    probabilities = run(pictures[:batch_size])
    assert probabilities.shape == (batch_size, NUM_CLASSES)
    assert probabilities.dtype == np.float32
    assert np.all(probabilities >= 0.0) and np.all(probabilities <= 1.0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_an_image_scores_the_same_alone_and_within_a_batch():
    pictures, _ = samples()
    batched = run(pictures[:8])
    for index in range(8):
        alone = run(pictures[index : index + 1])[0]
        np.testing.assert_allclose(alone, batched[index], atol=1e-5)


def test_classifies_the_bundled_sample_photos():
    pictures, classes = samples()
    assert len(classes) == NUM_CLASSES
    probabilities = np.concatenate([run(pictures[i : i + 17]) for i in range(0, len(classes), 17)])
    predicted = probabilities.argmax(axis=1)
    wrong = [(int(c), int(p)) for c, p in zip(classes, predicted, strict=True) if c != p]
    top1 = 1.0 - len(wrong) / len(classes)
    assert top1 >= 0.90, f"top-1 {top1:.3f} on the samples; (class, predicted): {wrong}"


def test_model_card_states_the_preprocessing_and_accuracy_it_was_built_with():
    card = CARD.read_text(encoding="utf-8")
    for required in ("x / 127.5 - 1", "shorter side", "224", "Apache-2.0", "Nilsback", "trtexec"):
        assert required in card, f"MODEL_CARD.md does not mention '{required}'"
    # The test-split accuracy is stated as a percentage with its image count.
    assert re.search(r"test[^\n]*5639", card), "MODEL_CARD.md gives no test accuracy on 5639 images"
