"""What the client needs to know about an image classifier, validated from the server's own description.

The checks follow Triton's image client: one image input (three dimensions plus the batch
dimension when the model batches), NCHW or NHWC, one classification output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import prod
from typing import Any, Literal

Layout = Literal["NCHW", "NHWC"]
InputDtype = Literal["FP32", "FP16", "UINT8"]

SUPPORTED_INPUT_DTYPES: tuple[InputDtype, ...] = ("FP32", "FP16", "UINT8")
SUPPORTED_OUTPUT_DTYPES = ("FP32", "FP16")


class ModelSpecError(ValueError):
    """The model cannot be used as an image classifier; the message says which tensor and why."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    platform: str
    input_name: str
    output_name: str
    layout: Layout
    input_dtype: InputDtype
    channels: int
    height: int
    width: int
    max_batch_size: int
    """0 means the model does not batch: every request carries exactly one image."""
    num_classes: int
    has_labels: bool
    """True when the server attaches class names (the output has a label_filename)."""

    @property
    def batches(self) -> bool:
        return self.max_batch_size > 0

    def input_shape(self, batch_size: int) -> list[int]:
        image = (
            [self.channels, self.height, self.width]
            if self.layout == "NCHW"
            else [self.height, self.width, self.channels]
        )
        return [batch_size, *image] if self.batches else image

    def describe(self) -> str:
        batching = f"max batch {self.max_batch_size}" if self.batches else "no batching"
        return (
            f"{self.name} (version {self.version or 'latest'}, {self.platform or 'unknown platform'}): "
            f"{self.input_name} {self.input_dtype} {self.layout} "
            f"{self.channels}x{self.height}x{self.width}, {self.num_classes} classes, {batching}"
            f"{', labels served' if self.has_labels else ''}"
        )


def parse_model_spec(metadata: Mapping[str, Any], config: Mapping[str, Any]) -> ModelSpec:
    """Validate a model's metadata and config (as gRPC or HTTP JSON) into a ModelSpec.

    Accepts both shapes the Triton clients return: gRPC's protobuf JSON (int64 as strings, the
    config wrapped in {"config": ...}, defaults omitted) and HTTP's plain JSON.
    """
    if "config" in config and isinstance(config["config"], Mapping):
        config = config["config"]
    name = str(metadata.get("name") or config.get("name") or "?")
    where = f"model '{name}'"

    inputs: Sequence[Mapping[str, Any]] = metadata.get("inputs") or []
    outputs: Sequence[Mapping[str, Any]] = metadata.get("outputs") or []
    if len(inputs) != 1:
        raise ModelSpecError(
            f"{where}: expected exactly 1 input (an image), found {len(inputs)}"
            f" ({', '.join(str(i.get('name')) for i in inputs) or 'none'})"
        )
    if len(outputs) != 1:
        raise ModelSpecError(
            f"{where}: expected exactly 1 output (class scores), found {len(outputs)}"
            f" ({', '.join(str(o.get('name')) for o in outputs) or 'none'})"
        )
    input_meta, output_meta = inputs[0], outputs[0]
    input_name, output_name = str(input_meta["name"]), str(output_meta["name"])
    input_config = _find_tensor(config.get("input") or [], input_name)
    output_config = _find_tensor(config.get("output") or [], output_name)
    max_batch_size = int(config.get("max_batch_size") or 0)

    output_dtype = str(output_meta.get("datatype", ""))
    if output_dtype not in SUPPORTED_OUTPUT_DTYPES:
        raise ModelSpecError(
            f"{where}, output '{output_name}': expected datatype FP32 or FP16 (class scores), "
            f"found {output_dtype or 'none'}"
        )
    output_dims = _dims(output_meta.get("shape") or [])
    if max_batch_size > 0:
        output_dims = output_dims[1:]
    if sum(1 for d in output_dims if d != 1) != 1 or any(d < 1 for d in output_dims):
        raise ModelSpecError(
            f"{where}, output '{output_name}': expected one dimension of class scores "
            f"(e.g. [N, 102]), found shape {_shape_text(output_meta.get('shape'))}"
        )
    num_classes = prod(output_dims)

    input_dtype = str(input_meta.get("datatype", ""))
    if input_dtype not in SUPPORTED_INPUT_DTYPES:
        raise ModelSpecError(
            f"{where}, input '{input_name}': expected datatype FP32, FP16 or UINT8, "
            f"found {input_dtype or 'none'}"
        )
    input_dims = _dims(input_meta.get("shape") or [])
    expected_rank = 4 if max_batch_size > 0 else 3
    if len(input_dims) != expected_rank:
        batch_note = "batch + 3 image dimensions" if max_batch_size > 0 else "3 image dimensions"
        raise ModelSpecError(
            f"{where}, input '{input_name}': expected {expected_rank} dimensions ({batch_note}), "
            f"found shape {_shape_text(input_meta.get('shape'))}"
        )
    image_dims = input_dims[1:] if max_batch_size > 0 else input_dims
    layout = _layout(str(input_config.get("format", "FORMAT_NONE")), image_dims, where, input_name)
    if layout == "NCHW":
        channels, height, width = image_dims
    else:
        height, width, channels = image_dims
    if channels not in (1, 3):
        raise ModelSpecError(
            f"{where}, input '{input_name}': expected 1 or 3 colour channels in {layout} layout, "
            f"found {channels} (shape {_shape_text(input_meta.get('shape'))})"
        )
    if height < 1 or width < 1:
        raise ModelSpecError(
            f"{where}, input '{input_name}': the image size must be fixed, found shape "
            f"{_shape_text(input_meta.get('shape'))}"
        )
    versions = metadata.get("versions") or []
    return ModelSpec(
        name=name,
        version=str(versions[-1]) if versions else "",
        platform=str(
            metadata.get("platform") or config.get("platform") or config.get("backend") or ""
        ),
        input_name=input_name,
        output_name=output_name,
        layout=layout,
        input_dtype=_input_dtype(input_dtype),
        channels=channels,
        height=height,
        width=width,
        max_batch_size=max_batch_size,
        num_classes=num_classes,
        has_labels=bool(output_config.get("label_filename")),
    )


def _input_dtype(name: str) -> InputDtype:
    for supported in SUPPORTED_INPUT_DTYPES:
        if name == supported:
            return supported
    raise ModelSpecError(f"unsupported input datatype {name}")


def _find_tensor(tensors: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any]:
    for tensor in tensors:
        if tensor.get("name") == name:
            return tensor
    return {}


def _dims(shape: Sequence[Any]) -> list[int]:
    return [int(d) for d in shape]


def _shape_text(shape: Any) -> str:
    return "[" + ", ".join(str(d) for d in (shape or [])) + "]"


def _layout(fmt: str, image_dims: list[int], where: str, input_name: str) -> Layout:
    if fmt in ("FORMAT_NCHW", "NCHW"):
        return "NCHW"
    if fmt in ("FORMAT_NHWC", "NHWC"):
        return "NHWC"
    # No format in the config (ONNX models rarely declare one): decide from where the channels are.
    first_is_channels = image_dims[0] in (1, 3)
    last_is_channels = image_dims[-1] in (1, 3)
    if first_is_channels and not last_is_channels:
        return "NCHW"
    if last_is_channels and not first_is_channels:
        return "NHWC"
    raise ModelSpecError(
        f"{where}, input '{input_name}': cannot tell NCHW from NHWC: the config gives no format "
        f"and the shape {_shape_text(image_dims)} is ambiguous"
    )
