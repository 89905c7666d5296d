"""Turning a decoded photo into exactly the tensor a model expects, once per image.

The preprocessing follows the model. A float input gets the scaling the model's config states
(`flowerdemo_scaling`), or `inception` (the bundled model's) when it states none. A UINT8 input
takes raw pixels and an encoded input takes JPEG bytes: the server scales them, so the client
sends pixels unscaled without being told. An explicit `--scaling` still wins for a float input;
asking to scale pixels for a UINT8 or encoded input is a PreprocessError that says so.

Encoded input: the client sends the photo already fitted to the model's size (resize and crop,
exactly as for a tensor), re-encoded as JPEG at quality JPEG_QUALITY. It never sends the original
file: the photos it holds are decoded (and possibly reduced) pictures, and a phone photo's file is
a hundred times larger than the fitted crop. At quality 90 the bundled samples take about 15 kB a
request (FP32: 602 kB, UINT8: 151 kB) and every sample keeps its top-1 label; the server's own
resize is then a no-op, but it still resizes whatever size another client sends.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from flowerdemo.core.model_spec import ModelSpec

log = logging.getLogger(__name__)

Scaling = Literal["none", "inception", "vgg", "imagenet"]
ResizeMode = Literal["crop", "stretch"]

SCALINGS: tuple[Scaling, ...] = ("none", "inception", "vgg", "imagenet")
RESIZE_MODES: tuple[ResizeMode, ...] = ("crop", "stretch")

# Per-channel RGB constants. VGG's are the ImageNet means in 0..255 (Triton's image client);
# "imagenet" is the torchvision convention, means and deviations in 0..1.
VGG_MEAN = (123.0, 117.0, 104.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEFAULT_SCALING: Scaling = "inception"
"""For a float input whose model states no scaling: the bundled model's card."""
JPEG_QUALITY = 90

_NUMPY_DTYPES: dict[str, type[np.generic]] = {
    "FP32": np.float32,
    "FP16": np.float16,
    "UINT8": np.uint8,
}


@dataclass(frozen=True)
class PreprocessOptions:
    """How photos are fitted and scaled. The defaults match the bundled model's card."""

    scaling: Scaling | None = None
    """None: follow the model (see the module docstring); a value is an explicit choice."""
    resize: ResizeMode = "crop"
    """crop: scale so the photo covers the input, then cut the centre; stretch: plain resize."""


class PreprocessError(ValueError):
    """The preprocessing asked for cannot feed this model; the message says what to change."""


def resolve_scaling(spec: ModelSpec, requested: Scaling | None) -> Scaling:
    """The scaling the client applies for `spec`, given the user's explicit choice (or None)."""
    stated = spec.stated_scaling
    if spec.input_dtype in ("UINT8", "BYTES"):
        if requested not in (None, "none"):
            what = (
                "raw 8-bit pixels (UINT8)"
                if spec.input_dtype == "UINT8"
                else "encoded JPEG images (BYTES)"
            )
            server = f" (the server applies '{stated}' itself)" if stated else ""
            raise PreprocessError(
                f"--scaling {requested} contradicts model '{spec.name}': its input "
                f"'{spec.input_name}' takes {what}{server}, which cannot carry scaled values. "
                f"Leave --scaling out (or pass --scaling none), or choose a model with a float "
                f"input (e.g. --wire fp32)."
            )
        return "none"
    if requested is not None:
        if stated and stated != requested:
            log.warning(
                "model '%s' states scaling '%s'; using --scaling %s as asked",
                spec.name,
                stated,
                requested,
            )
        return requested
    if not stated:
        return DEFAULT_SCALING
    for known in SCALINGS:
        if stated == known:
            return known
    raise PreprocessError(
        f"model '{spec.name}' states a scaling '{stated}' this client does not know "
        f"(it knows {', '.join(SCALINGS)}): pass --scaling explicitly."
    )


def fit(image: Image.Image, width: int, height: int, mode: ResizeMode) -> Image.Image:
    """Resize to width x height, either covering and centre-cropping or stretching."""
    if mode == "stretch":
        return image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None)
    scale = max(width / image.width, height / image.height)
    covered_w = max(width, round(image.width * scale))
    covered_h = max(height, round(image.height * scale))
    covered = image.resize((covered_w, covered_h), Image.Resampling.BILINEAR)
    left = (covered_w - width) // 2
    top = (covered_h - height) // 2
    return covered.crop((left, top, left + width, top + height))


def scale_pixels(pixels: npt.NDArray[np.uint8], scaling: Scaling) -> npt.NDArray[np.float64]:
    """Apply a scaling to an H x W x C array of 0..255 values (channels in RGB order)."""
    values = pixels.astype(np.float64)
    channels = values.shape[-1]
    if scaling == "none":
        return values
    if scaling == "inception":
        return values / 127.5 - 1.0
    if scaling == "vgg":
        shifted: npt.NDArray[np.float64] = values - np.asarray(VGG_MEAN[:channels])
        return shifted
    if scaling == "imagenet":
        mean = np.asarray(IMAGENET_MEAN if channels == 3 else IMAGENET_MEAN[:1])
        std = np.asarray(IMAGENET_STD if channels == 3 else IMAGENET_STD[:1])
        normalised: npt.NDArray[np.float64] = (values / 255.0 - mean) / std
        return normalised
    raise ValueError(f"unknown scaling '{scaling}' (choose from {', '.join(SCALINGS)})")


def preprocess(
    image: Image.Image, spec: ModelSpec, options: PreprocessOptions
) -> npt.NDArray[np.generic]:
    """One photo as the model's input tensor, without the batch dimension.

    Raises PreprocessError when the options contradict the model (see resolve_scaling).
    """
    return _to_tensor(image, spec, resolve_scaling(spec, options.scaling), options.resize)


def _to_tensor(
    image: Image.Image, spec: ModelSpec, scaling: Scaling, resize: ResizeMode
) -> npt.NDArray[np.generic]:
    converted = image.convert("L" if spec.channels == 1 else "RGB")
    fitted = fit(converted, spec.width, spec.height, resize)
    if spec.layout == "ENCODED":
        return encode_jpeg(fitted)
    pixels = np.asarray(fitted, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    if spec.input_dtype == "UINT8":
        raw: npt.NDArray[np.generic] = pixels
        if spec.layout == "NCHW":
            raw = np.transpose(pixels, (2, 0, 1))
        return np.ascontiguousarray(raw)
    scaled = scale_pixels(pixels, scaling)
    if spec.layout == "NCHW":
        scaled = np.transpose(scaled, (2, 0, 1))
    return np.ascontiguousarray(scaled, dtype=_NUMPY_DTYPES[spec.input_dtype])


def encode_jpeg(image: Image.Image) -> npt.NDArray[np.object_]:
    """A BYTES tensor of shape [1]: the picture as JPEG (quality JPEG_QUALITY)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    encoded = np.empty(1, dtype=np.object_)
    encoded[0] = buffer.getvalue()
    return encoded


def payload_bytes(tensor: npt.NDArray[np.generic]) -> int:
    """Bytes the tensor takes in a request: raw data, or length-prefixed elements for BYTES."""
    if tensor.dtype == np.object_:
        return sum(4 + len(element) for element in tensor.reshape(-1))
    return int(tensor.nbytes)


class TensorCache:
    """Each image preprocessed once for the connected model; batches are stacks of cached tensors."""

    def __init__(self, images: Sequence[Image.Image], spec: ModelSpec, options: PreprocessOptions):
        """Raises PreprocessError at once when the options contradict the model."""
        self._images = images
        self._spec = spec
        self._scaling = resolve_scaling(spec, options.scaling)
        self._resize = options.resize
        self._tensors: dict[int, npt.NDArray[np.generic]] = {}

    def __len__(self) -> int:
        return len(self._images)

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def scaling(self) -> Scaling:
        """The scaling applied on this side (after following the model and the user's choice)."""
        return self._scaling

    def request_bytes(self, indices: Sequence[int]) -> int:
        """The input payload of a request for these images (the wire's main cost)."""
        return sum(payload_bytes(self.tensor(i)) for i in indices)

    def mean_request_bytes(self, batch_size: int = 1) -> float:
        """Average input payload of a request of `batch_size` images over the whole set."""
        if not self._images:
            return 0.0
        total = sum(payload_bytes(self.tensor(i)) for i in range(len(self._images)))
        return total / len(self._images) * batch_size

    def tensor(self, index: int) -> npt.NDArray[np.generic]:
        cached = self._tensors.get(index)
        if cached is None:
            cached = _to_tensor(self._images[index], self._spec, self._scaling, self._resize)
            self._tensors[index] = cached
        return cached

    def prepare_all(self) -> None:
        """Preprocess every image now (call from a worker thread: it takes a while for many)."""
        for index in range(len(self._images)):
            self.tensor(index)

    def batch(self, indices: Sequence[int]) -> npt.NDArray[np.generic]:
        """The model input for these images: stacked when the model batches, the single tensor otherwise."""
        if not self._spec.batches:
            if len(indices) != 1:
                raise ValueError(
                    f"model '{self._spec.name}' does not batch: send one image a request, "
                    f"not {len(indices)}"
                )
            return self.tensor(indices[0])
        return np.stack([self.tensor(i) for i in indices])
