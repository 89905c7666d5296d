"""What the client needs to know about an image classifier, validated from the server's own description.

The checks follow Triton's image client: one image input (three dimensions plus the batch
dimension when the model batches), NCHW or NHWC, one classification output. The input is either
a pixel tensor (FP32/FP16, or UINT8 raw pixels that the server scales) or one encoded image per
request row (BYTES of shape [1], decoded and resized on the server, as in Triton's image ensemble
example).

Our repository writer also states in the config's `parameters` how the model wants its pixels:
`flowerdemo_scaling` (the scaling the network was trained with: applied by the client to a
float input, by the server to a UINT8 or encoded input) and, for an encoded-image input,
`flowerdemo_image_height` / `flowerdemo_image_width` (the size the server resizes to, so the
client can send the photo already reduced to it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import prod
from typing import Any, Literal

Layout = Literal["NCHW", "NHWC", "ENCODED"]
"""ENCODED: the input is one encoded image (JPEG, PNG) per row, a BYTES tensor of shape [1]."""
InputDtype = Literal["FP32", "FP16", "UINT8", "BYTES"]
Wire = Literal["fp32", "fp16", "uint8", "jpeg"]
"""What one image travels as: a float tensor, raw 8-bit pixels, or encoded image bytes."""
WireChoice = Literal["fp32", "uint8", "jpeg", "auto"]

SUPPORTED_INPUT_DTYPES: tuple[InputDtype, ...] = ("FP32", "FP16", "UINT8", "BYTES")
SUPPORTED_OUTPUT_DTYPES = ("FP32", "FP16")
WIRE_CHOICES: tuple[WireChoice, ...] = ("fp32", "uint8", "jpeg", "auto")
# The served repository's variants of model M are named M_uint8 and M_jpeg (see
# flowerdemo.serving.repository); `auto` prefers the smallest on the wire.
VARIANT_WIRES_SMALLEST_FIRST: tuple[Wire, ...] = ("jpeg", "uint8")
SCALING_PARAMETER = "flowerdemo_scaling"
IMAGE_HEIGHT_PARAMETER = "flowerdemo_image_height"
IMAGE_WIDTH_PARAMETER = "flowerdemo_image_width"
# An encoded-image model that does not state its size gets photos reduced to this (the
# bundled model's input); the server resizes whatever it receives anyway.
DEFAULT_ENCODED_SIZE = 224


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
    stated_scaling: str = ""
    """The scaling the model's config states (`flowerdemo_scaling`); "" when it states none."""

    @property
    def batches(self) -> bool:
        return self.max_batch_size > 0

    @property
    def wire(self) -> Wire:
        """What each image travels as for this model's input."""
        if self.input_dtype == "BYTES":
            return "jpeg"
        if self.input_dtype == "UINT8":
            return "uint8"
        return "fp16" if self.input_dtype == "FP16" else "fp32"

    def input_shape(self, batch_size: int) -> list[int]:
        if self.layout == "ENCODED":
            image = [1]
        elif self.layout == "NCHW":
            image = [self.channels, self.height, self.width]
        else:
            image = [self.height, self.width, self.channels]
        return [batch_size, *image] if self.batches else image

    def describe(self) -> str:
        batching = f"max batch {self.max_batch_size}" if self.batches else "no batching"
        if self.layout == "ENCODED":
            image = f"encoded image, resized on the server to {self.height}x{self.width}"
        else:
            image = f"{self.layout} {self.channels}x{self.height}x{self.width}"
        return (
            f"{self.name} (version {self.version or 'latest'}, {self.platform or 'unknown platform'}): "
            f"{self.input_name} {self.input_dtype} {image}, {self.num_classes} classes, {batching}"
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
            f"{where}, input '{input_name}': expected datatype FP32, FP16, UINT8 or BYTES, "
            f"found {input_dtype or 'none'}"
        )
    input_dims = _dims(input_meta.get("shape") or [])
    parameters = _parameters(config)
    versions = metadata.get("versions") or []
    common: dict[str, Any] = {
        "name": name,
        "version": str(versions[-1]) if versions else "",
        "platform": str(
            metadata.get("platform") or config.get("platform") or config.get("backend") or ""
        ),
        "input_name": input_name,
        "output_name": output_name,
        "input_dtype": _input_dtype(input_dtype),
        "max_batch_size": max_batch_size,
        "num_classes": num_classes,
        "has_labels": bool(output_config.get("label_filename")),
        "stated_scaling": parameters.get(SCALING_PARAMETER, ""),
    }
    if input_dtype == "BYTES":
        image_dims = input_dims[1:] if max_batch_size > 0 else input_dims
        if image_dims != [1]:
            raise ModelSpecError(
                f"{where}, input '{input_name}': a BYTES input must hold one encoded image per "
                f"row (shape [1], or [N, 1] when batching), found shape "
                f"{_shape_text(input_meta.get('shape'))}"
            )
        height = _positive_int(parameters.get(IMAGE_HEIGHT_PARAMETER), DEFAULT_ENCODED_SIZE)
        width = _positive_int(parameters.get(IMAGE_WIDTH_PARAMETER), DEFAULT_ENCODED_SIZE)
        _check_input_size(height, width, where, input_name)
        return ModelSpec(layout="ENCODED", channels=3, height=height, width=width, **common)
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
    _check_input_size(height, width, where, input_name)
    return ModelSpec(layout=layout, channels=channels, height=height, width=width, **common)


MAX_INPUT_SIDE = 4096
"""The largest input side this client prepares photos for: every photo becomes a tensor of the
model's size, so a model (or a server) claiming 100000 x 100000 would ask for 120 GB a photo."""


def _check_input_size(height: int, width: int, where: str, input_name: str) -> None:
    if height > MAX_INPUT_SIDE or width > MAX_INPUT_SIDE:
        raise ModelSpecError(
            f"{where}, input '{input_name}': an image input of {height}x{width} is larger than "
            f"this client prepares (at most {MAX_INPUT_SIDE}x{MAX_INPUT_SIDE})"
        )


def wire_model_name(
    model: str, wire: WireChoice, available: Sequence[str], *, client_scales: bool = False
) -> str:
    """The model to ask for so that images travel as `wire`; raises ModelSpecError if none.

    `fp32` is the model as named. `uint8` and `jpeg` are the repository's variants `<model>_uint8`
    and `<model>_jpeg`. `auto` is the smallest variant the server lists, else the model itself;
    but the model itself when `client_scales` (the user asked for a pixel scaling, which only a
    float input can carry). The caller checks the chosen model's input (ModelSpec.wire) once it
    has its config.
    """
    if wire == "fp32" or (wire == "auto" and client_scales):
        return model
    names = set(available)
    if wire == "auto":
        for candidate in VARIANT_WIRES_SMALLEST_FIRST:
            if f"{model}_{candidate}" in names:
                return f"{model}_{candidate}"
        return model
    variant = f"{model}_{wire}"
    if variant in names:
        return variant
    listed = f"models there: {', '.join(sorted(names))}" if names else "it listed no models"
    raise ModelSpecError(
        f"the server offers no {wire} variant of model '{model}' (expected a model named "
        f"'{variant}'; {listed}). Use --wire fp32 or --wire auto, or serve the variant."
    )


def check_wire(spec: ModelSpec, wire: WireChoice) -> None:
    """A clear error when the model chosen for `wire` does not take images that way."""
    if wire in ("fp32", "auto") or spec.wire == wire:
        # fp32 (the default) means "the model as named", whatever its input takes.
        return
    raise ModelSpecError(
        f"model '{spec.name}' was chosen for the {wire} wire but its input '{spec.input_name}' "
        f"takes {spec.input_dtype} ({spec.wire})"
    )


def _parameters(config: Mapping[str, Any]) -> dict[str, str]:
    """The config's string parameters (both JSON shapes: {"key": {"string_value": "v"}})."""
    result: dict[str, str] = {}
    raw = config.get("parameters") or {}
    if not isinstance(raw, Mapping):
        return result
    for key, value in raw.items():
        if isinstance(value, Mapping) and "string_value" in value:
            result[str(key)] = str(value["string_value"]).strip()
    return result


def _positive_int(text: str | None, default: int) -> int:
    try:
        value = int(text) if text else default
    except ValueError:
        return default
    return value if value > 0 else default


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
