"""Loading flower photos from a folder, with every unusable file reported instead of raised."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})

# Pillow's own threshold (about 89 megapixels): far beyond any photo a booth shows. Past it Pillow
# only warns; we turn that warning into a refusal, since such headers are mostly decompression bombs.
DEFAULT_MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485

_LEADING_INDEX = re.compile(r"^(\d{1,4})[-_ ]")


@dataclass(frozen=True)
class FlowerImage:
    """One decoded photo, ready to be preprocessed."""

    path: Path
    rgb: Image.Image = field(repr=False, compare=False)
    truth: int | None
    """Ground-truth class index, when the file or folder name gives it."""

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class ImageProblem:
    """A file that was skipped, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class ImageSet:
    images: tuple[FlowerImage, ...]
    problems: tuple[ImageProblem, ...]


class NoImagesError(ValueError):
    """The folder held no usable image at all."""


def load_images(
    folder: Path,
    *,
    labels: Sequence[str] = (),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    recursive: bool = True,
) -> ImageSet:
    """Decode every image under `folder` into RGB; list each file that could not be used.

    `labels` (class names in index order) lets a folder or file called after a class name give
    the ground truth. Raises NoImagesError only when nothing at all is usable, with the reasons.
    """
    if not folder.exists():
        raise NoImagesError(f"image folder {folder} does not exist")
    if not folder.is_dir():
        raise NoImagesError(f"{folder} is not a folder")
    pattern = "**/*" if recursive else "*"
    candidates = sorted(
        p for p in folder.glob(pattern) if p.is_file() and not _is_hidden(p, folder)
    )
    label_index = {_normalise(name): k for k, name in enumerate(labels)}
    images: list[FlowerImage] = []
    problems: list[ImageProblem] = []
    for path in candidates:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            problems.append(
                ImageProblem(path, f"not an image file ({path.suffix or 'no extension'})")
            )
            continue
        try:
            rgb = decode_rgb(path, max_pixels=max_pixels)
        except ImageDecodeError as error:
            problems.append(ImageProblem(path, str(error)))
            continue
        images.append(FlowerImage(path, rgb, ground_truth(path, folder, label_index)))
    if not images:
        details = "; ".join(str(p) for p in problems[:5]) or "the folder is empty"
        raise NoImagesError(f"no readable image in {folder} ({details})")
    return ImageSet(tuple(images), tuple(problems))


class ImageDecodeError(ValueError):
    pass


def decode_rgb(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, check, orient and convert one image to 8-bit RGB, fully loaded into memory."""
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ImageDecodeError(f"cannot read file: {error.strerror}") from error
    if size == 0:
        raise ImageDecodeError("empty file")
    try:
        with warnings.catch_warnings():
            # Pillow warns, rather than fails, between max_pixels and twice that; we want a failure.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > max_pixels:
                    raise ImageDecodeError(
                        f"image too large ({width}x{height} pixels, limit {max_pixels:,})"
                    )
                opened.load()
                oriented = ImageOps.exif_transpose(opened)
                return _to_rgb8(oriented)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(f"image too large (decompression bomb guard): {error}") from error
    except UnidentifiedImageError as error:
        raise ImageDecodeError("not a readable image (unknown or corrupt format)") from error
    except OSError as error:
        # Pillow reports truncated and otherwise broken data as OSError.
        raise ImageDecodeError(f"corrupt or truncated image data: {error}") from error
    except (ValueError, SyntaxError) as error:
        raise ImageDecodeError(f"corrupt image: {error}") from error


def _to_rgb8(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent regions become white, as a viewer would show them, not black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale: scale to 8 bits rather than clipping everything above 255.
        import numpy as np

        data = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if data.max() > 255 else 255.0
        gray = np.clip(data / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    return image.convert("RGB")


def ground_truth(path: Path, root: Path, label_index: dict[str, int]) -> int | None:
    """The class index a file's name or folder gives, if any.

    Accepted: a leading number in the file name (`017-peruvian-lily.jpg`, the bundled samples),
    a parent folder that is a class number (`17/photo.jpg`) or a class name
    (`peruvian lily/photo.jpg`), or a file name that is a class name (`peruvian_lily.png`).
    """
    match = _LEADING_INDEX.match(path.name)
    if match:
        return int(match.group(1))
    relative_parents = path.relative_to(root).parents
    for parent in list(relative_parents)[:-1]:  # skip "." itself
        folder = parent.name
        if folder.isdigit():
            return int(folder)
        if _normalise(folder) in label_index:
            return label_index[_normalise(folder)]
    return label_index.get(_normalise(path.stem))


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name).strip().lower()


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def read_labels(path: Path) -> tuple[str, ...]:
    """Class names, one a line, in index order."""
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return tuple(name for name in names if name)
