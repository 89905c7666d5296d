"""Reading the Flowers-102 training pack: .npz shards of concatenated JPEG files.

Needs only numpy and Pillow, so the evaluation of an exported model runs without torch.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from flowerdemo.core.preprocess import fit, scale_pixels

SPLITS = ("train", "val", "test")
SHARD_PATTERN = "flowers102_144px_q85_{split}.npz"
NUM_CLASSES = 102
_SHARD_KEYS = ("jpeg", "offsets", "labels", "image_ids")


class PackError(ValueError):
    """A pack file is missing or does not hold what the pack's README describes."""


@dataclass(frozen=True)
class PackSplit:
    """The decoded images of one or more splits: uint8 N x H x W x 3 (RGB), labels 0..101."""

    name: str
    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    image_ids: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def shard_path(pack_dir: Path, split: str) -> Path:
    if split not in SPLITS:
        raise PackError(f"unknown split '{split}' (choose from {', '.join(SPLITS)})")
    return pack_dir / SHARD_PATTERN.format(split=split)


def _decode_jpeg(data: bytes, where: str) -> npt.NDArray[np.uint8]:
    try:
        with Image.open(io.BytesIO(data)) as picture:
            return np.asarray(picture.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as error:
        raise PackError(f"{where}: not a decodable JPEG ({error})") from error


def read_split(pack_dir: Path, split: str) -> PackSplit:
    """Decode every image of one split; every image of the pack has the same size."""
    path = shard_path(pack_dir, split)
    if not path.is_file():
        raise PackError(f"{path}: shard of split '{split}' not found")
    with np.load(path, allow_pickle=False) as shard:
        missing = [key for key in _SHARD_KEYS if key not in shard.files]
        if missing:
            raise PackError(f"{path}: missing array(s) {', '.join(missing)}")
        jpeg = shard["jpeg"]
        offsets = shard["offsets"].astype(np.int64)
        labels = shard["labels"].astype(np.int64)
        image_ids = shard["image_ids"].astype(np.int64)
    count = labels.shape[0]
    if offsets.shape != (count + 1,) or image_ids.shape != (count,):
        raise PackError(
            f"{path}: {count} labels but {offsets.shape[0]} offsets and {image_ids.shape[0]} ids "
            "(expected n+1 offsets and n ids)"
        )
    if np.any(np.diff(offsets) <= 0) or offsets[0] != 0 or offsets[-1] != jpeg.shape[0]:
        raise PackError(f"{path}: offsets do not cut 'jpeg' into {count} non-empty files")
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= NUM_CLASSES:
        raise PackError(f"{path}: labels outside 0..{NUM_CLASSES - 1}")
    decoded = [
        _decode_jpeg(jpeg[offsets[k] : offsets[k + 1]].tobytes(), f"{path} image {k}")
        for k in range(count)
    ]
    shapes = {picture.shape for picture in decoded}
    if len(shapes) != 1:
        raise PackError(f"{path}: images of several sizes {sorted(shapes)}; the pack has one size")
    return PackSplit(split, np.stack(decoded), labels, image_ids)


def read_splits(pack_dir: Path, splits: Sequence[str]) -> PackSplit:
    """Several splits joined into one set (for example train and val for a final training)."""
    if not splits:
        raise PackError("no split named")
    parts = [read_split(pack_dir, split) for split in splits]
    if len(parts) == 1:
        return parts[0]
    return PackSplit(
        "+".join(splits),
        np.concatenate([part.images for part in parts]),
        np.concatenate([part.labels for part in parts]),
        np.concatenate([part.image_ids for part in parts]),
    )


def read_labels(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != NUM_CLASSES:
        raise PackError(f"{path}: {len(names)} class names, expected {NUM_CLASSES}")
    return names


def client_input(picture: npt.NDArray[np.uint8], size: int = 224) -> npt.NDArray[np.float32]:
    """One H x W x 3 uint8 image as the served model's input (3 x size x size).

    Uses the client's own default preprocessing (resize so the shorter side is `size`, centre
    crop, scaling `inception`), so evaluated accuracy is what the app will see.
    """
    fitted = fit(Image.fromarray(picture), size, size, "crop")
    scaled = scale_pixels(np.asarray(fitted, dtype=np.uint8), "inception")
    return np.ascontiguousarray(scaled.transpose(2, 0, 1), dtype=np.float32)


def topk_accuracy(
    probabilities: npt.NDArray[np.floating[Any]], labels: npt.NDArray[np.integer[Any]], k: int
) -> float:
    """Share of rows whose true class is among the k highest scores."""
    if probabilities.shape[0] != labels.shape[0]:
        raise ValueError(f"{probabilities.shape[0]} score rows for {labels.shape[0]} labels")
    top = np.argsort(-probabilities, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))
