"""Turning a decoded photo into exactly the tensor a model expects, once per image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from flowerdemo.core.model_spec import ModelSpec

Scaling = Literal["none", "inception", "vgg", "imagenet"]
ResizeMode = Literal["crop", "stretch"]

SCALINGS: tuple[Scaling, ...] = ("none", "inception", "vgg", "imagenet")
RESIZE_MODES: tuple[ResizeMode, ...] = ("crop", "stretch")

# Per-channel RGB constants. VGG's are the ImageNet means in 0..255 (Triton's image client);
# "imagenet" is the torchvision convention, means and deviations in 0..1.
VGG_MEAN = (123.0, 117.0, 104.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_NUMPY_DTYPES: dict[str, type[np.generic]] = {
    "FP32": np.float32,
    "FP16": np.float16,
    "UINT8": np.uint8,
}


@dataclass(frozen=True)
class PreprocessOptions:
    """How photos are fitted and scaled. The defaults match the bundled model's card."""

    scaling: Scaling = "inception"
    resize: ResizeMode = "crop"
    """crop: scale so the photo covers the input, then cut the centre; stretch: plain resize."""


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
    """One photo as the model's input tensor, without the batch dimension."""
    if spec.input_dtype == "UINT8" and options.scaling != "none":
        raise ValueError(
            f"model '{spec.name}' takes UINT8 pixels: use scaling 'none', not '{options.scaling}'"
        )
    converted = image.convert("L" if spec.channels == 1 else "RGB")
    fitted = fit(converted, spec.width, spec.height, options.resize)
    pixels = np.asarray(fitted, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    scaled = scale_pixels(pixels, options.scaling)
    if spec.layout == "NCHW":
        scaled = np.transpose(scaled, (2, 0, 1))
    return np.ascontiguousarray(scaled, dtype=_NUMPY_DTYPES[spec.input_dtype])


class TensorCache:
    """Each image preprocessed once for the connected model; batches are stacks of cached tensors."""

    def __init__(self, images: Sequence[Image.Image], spec: ModelSpec, options: PreprocessOptions):
        self._images = images
        self._spec = spec
        self._options = options
        self._tensors: dict[int, npt.NDArray[np.generic]] = {}

    def __len__(self) -> int:
        return len(self._images)

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def tensor(self, index: int) -> npt.NDArray[np.generic]:
        cached = self._tensors.get(index)
        if cached is None:
            cached = preprocess(self._images[index], self._spec, self._options)
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
