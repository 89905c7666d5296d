"""Triton Python-backend model: runs an ONNX classifier with ONNX Runtime, from any wire format.

This file is not imported by flowerdemo: the repository writer copies it into a model repository
as `<model>/<version>/model.py`, and Triton's Python-backend stub runs it. It needs numpy (< 2
for the bundled 2.51 stub) and onnxruntime in the stub's environment, and Pillow for the
encoded-image input. The config's `parameters` name the ONNX file, the thread count and what the
input carries, so one template serves every variant of any ONNX classifier:

- `flowerdemo_input: tensor` (default): the input is the network's own tensor, passed as is.
- `flowerdemo_input: uint8`: raw 8-bit RGB pixels, NHWC [H, W, 3] after the client's resize and
  crop; scaled here by `flowerdemo_scaling` and laid out as the network wants
  (`flowerdemo_onnx_layout`).
- `flowerdemo_input: jpeg`: one encoded image (JPEG, PNG, ...) per row, BYTES [1]; decoded,
  resized so it covers the network's input and centre-cropped (as the client's default `crop`
  preprocessing does), then scaled like a uint8 input.

Each variant is its own model with its own ONNX Runtime session (see repository.py for why).
With `flowerdemo_role: preprocess` the model only converts its input and returns the network's
tensor (its config's one output): the first step of an ensemble whose second step is a network
that Triton runs natively (ONNX Runtime or TensorRT backends).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# A request's photo must not be able to exhaust the server: refuse what no camera makes.
MAX_ENCODED_PIXELS = 50_000_000
MAX_ASPECT_RATIO = 20.0

# Per-channel RGB constants, as the client's flowerdemo.core.preprocess defines them.
VGG_MEAN = np.asarray((123.0, 117.0, 104.0), dtype=np.float32)
IMAGENET_MEAN = np.asarray((0.485, 0.456, 0.406), dtype=np.float32)
IMAGENET_STD = np.asarray((0.229, 0.224, 0.225), dtype=np.float32)


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    entry = config.get("parameters", {}).get(key)
    if not entry:
        return default
    return str(entry.get("string_value", default))


def scale_pixels(pixels: Any, scaling: str) -> Any:
    """N x H x W x 3 uint8 -> float32 with the network's scaling (the client's rules)."""
    values = pixels.astype(np.float32)
    if scaling == "inception":
        return values / np.float32(127.5) - np.float32(1.0)
    if scaling == "vgg":
        return values - VGG_MEAN
    if scaling == "imagenet":
        return (values / np.float32(255.0) - IMAGENET_MEAN) / IMAGENET_STD
    return values


def fit_encoded(data: bytes, width: int, height: int) -> Any:
    """Decode an image, resize it to cover width x height, cut the centre: H x W x 3 uint8."""
    try:
        from PIL import Image
    except ImportError as error:  # NVIDIA's Triton image has numpy but not Pillow
        raise ValueError(
            "the encoded-image input needs Pillow in the Python backend's environment "
            "(pip install pillow in the Triton image)"
        ) from error

    with Image.open(io.BytesIO(data)) as opened:
        if opened.width * opened.height > MAX_ENCODED_PIXELS:
            raise ValueError(f"image of {opened.width}x{opened.height} pixels is too large")
        ratio = max(opened.width, opened.height) / max(1, min(opened.width, opened.height))
        if ratio > MAX_ASPECT_RATIO:
            raise ValueError(f"image of {opened.width}x{opened.height}: aspect ratio too extreme")
        # JPEG decodes at a reduced scale when that still covers the target: much faster.
        opened.draft("RGB", (width, height))
        image = opened.convert("RGB")
    if image.size != (width, height):
        scale = max(width / image.width, height / image.height)
        covered_w = max(width, round(image.width * scale))
        covered_h = max(height, round(image.height * scale))
        image = image.resize((covered_w, covered_h), Image.Resampling.BILINEAR)
        left, top = (covered_w - width) // 2, (covered_h - height) // 2
        image = image.crop((left, top, left + width, top + height))
    return np.asarray(image, dtype=np.uint8)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.input_kind = _parameter(config, "flowerdemo_input", "tensor")
        self.scaling = _parameter(config, "flowerdemo_scaling", "none")
        self.onnx_layout = _parameter(config, "flowerdemo_onnx_layout", "NCHW")
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.output_dtype = pb_utils.triton_string_to_numpy(config["output"][0]["data_type"])
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.session: Any = None
        if _parameter(config, "flowerdemo_role", "classify") == "preprocess":
            # The output is the network's input tensor: its dims give the image size.
            dims = [int(d) for d in config["output"][0]["dims"]]
            self.onnx_input_dtype = self.output_dtype
            self._set_size(dims)
            return
        version_dir = Path(args["model_repository"]) / args["model_version"]
        onnx_path = version_dir / _parameter(config, "onnx_file", "model.onnx")

        options = ort.SessionOptions()
        # Several instances share a few cores: one ONNX Runtime thread pool per instance sized
        # to the machine would oversubscribe it. The stack decides the count.
        options.intra_op_num_threads = int(_parameter(config, "intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        providers: list[Any] = ["CPUExecutionProvider"]
        if (
            args.get("model_instance_kind") == "GPU"
            and "CUDAExecutionProvider" in ort.get_available_providers()
        ):
            device_id = int(args.get("model_instance_device_id", "0"))
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        onnx_input = self.session.get_inputs()[0]
        self.onnx_input_name = onnx_input.name
        self.onnx_input_dtype = np.float16 if "float16" in onnx_input.type else np.float32
        self._set_size([int(d) for d in onnx_input.shape[-3:]])

    def _set_size(self, image_dims: list[int]) -> None:
        if self.onnx_layout == "NCHW":
            self.height, self.width = image_dims[1], image_dims[2]
        else:
            self.height, self.width = image_dims[0], image_dims[1]

    def _network_input(self, array: Any) -> Any:
        """One request's input as the network's tensor (with a batch dimension when batching)."""
        if self.input_kind == "tensor":
            return array
        if self.input_kind == "jpeg":
            rows = array.reshape(-1) if self.batched else array.reshape(1)
            pixels = np.stack([fit_encoded(bytes(row), self.width, self.height) for row in rows])
        else:
            pixels = array if self.batched else array[np.newaxis, ...]
        scaled = scale_pixels(pixels, self.scaling)
        if self.onnx_layout == "NCHW":
            scaled = np.transpose(scaled, (0, 3, 1, 2))
        tensor = np.ascontiguousarray(scaled, dtype=self.onnx_input_dtype)
        return tensor if self.batched else tensor[0]

    def _run(self, batch: Any) -> Any:
        if self.session is None:  # preprocessing step of an ensemble: the tensor is the answer
            return batch
        (result,) = self.session.run([self.output_name], {self.onnx_input_name: batch})
        return np.ascontiguousarray(result, dtype=self.output_dtype)

    def execute(self, requests: list[Any]) -> list[Any]:
        # Each request's input is converted on its own, so one undecodable photo fails only its
        # own request; dynamic batching's requests then run as one ONNX batch.
        responses: list[Any] = [None] * len(requests)
        arrays: list[Any] = []
        good: list[int] = []
        for position, request in enumerate(requests):
            raw = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            try:
                arrays.append(self._network_input(raw))
                good.append(position)
            except Exception as error:
                responses[position] = _error_response(f"cannot read the input image: {error}")
        try:
            if not arrays:
                results = []
            elif self.batched:
                batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
                results = np.split(self._run(batch), np.cumsum([a.shape[0] for a in arrays])[:-1])
            else:
                results = [self._run(array) for array in arrays]
        except Exception as error:  # every request must get an answer, even on failure
            message = f"ONNX Runtime failed on a batch of {len(arrays)} requests: {error}"
            for position in good:
                responses[position] = _error_response(message)
            return responses
        for position, result in zip(good, results, strict=True):
            responses[position] = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(self.output_name, np.ascontiguousarray(result))]
            )
        return responses

    def finalize(self) -> None:
        self.session = None


def _error_response(message: str) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
