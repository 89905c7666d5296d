"""Reading the Flowers-102 training pack (flowerdemo.training.data: numpy and Pillow only).

The shards here are written the way the pack's README describes (np.savez of concatenated
JPEG files, offsets, labels, image ids), from the bundled sample photos cut to 144x144.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowerdemo.resources import sample_images_dir
from flowerdemo.training.data import (
    PackError,
    client_input,
    read_labels,
    read_split,
    read_splits,
    shard_path,
    topk_accuracy,
)


def pack_jpeg(path: Path, side: int = 144) -> bytes:
    with Image.open(path) as picture:
        rgb = picture.convert("RGB")
    short = min(rgb.size)
    left, top = (rgb.width - short) // 2, (rgb.height - short) // 2
    square = rgb.crop((left, top, left + short, top + short)).resize((side, side), Image.LANCZOS)
    buffer = io.BytesIO()
    square.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def write_shard(path: Path, files: list[bytes], labels: list[int], **overrides: np.ndarray) -> None:
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in files])]).astype(np.int64)
    arrays = {
        "jpeg": np.frombuffer(b"".join(files), dtype=np.uint8),
        "offsets": offsets,
        "labels": np.array(labels, dtype=np.int16),
        "image_ids": np.arange(1, len(files) + 1, dtype=np.int32),
    }
    arrays.update(overrides)
    np.savez(path, **arrays)


@pytest.fixture(scope="module")
def sample_files() -> tuple[list[bytes], list[int]]:
    paths = sorted(sample_images_dir().glob("*.jpg"))[:6]
    return [pack_jpeg(p) for p in paths], [int(p.name[:3]) for p in paths]


@pytest.fixture
def pack(tmp_path, sample_files) -> Path:
    files, labels = sample_files
    write_shard(shard_path(tmp_path, "train"), files[:4], labels[:4])
    write_shard(shard_path(tmp_path, "val"), files[4:], labels[4:])
    return tmp_path


def test_a_split_decodes_to_rgb_images_with_their_labels(pack, sample_files):
    split = read_split(pack, "train")
    assert len(split) == 4
    assert split.images.shape == (4, 144, 144, 3) and split.images.dtype == np.uint8
    assert split.labels.tolist() == sample_files[1][:4]
    assert split.image_ids.tolist() == [1, 2, 3, 4]
    # The decoded pixels are the JPEG's, not a blank array.
    with Image.open(io.BytesIO(sample_files[0][2])) as picture:
        assert np.array_equal(split.images[2], np.asarray(picture.convert("RGB")))


def test_splits_join_in_the_order_named(pack, sample_files):
    joined = read_splits(pack, ["train", "val"])
    assert joined.name == "train+val"
    assert joined.labels.tolist() == sample_files[1]
    assert joined.images.shape[0] == 6


def test_a_missing_shard_is_named(tmp_path):
    with pytest.raises(PackError, match=r"flowers102_144px_q85_test\.npz: shard of split 'test'"):
        read_split(tmp_path, "test")


def test_an_unknown_split_is_refused(tmp_path):
    with pytest.raises(PackError, match="unknown split 'holdout'"):
        read_split(tmp_path, "holdout")


def test_a_shard_without_an_array_says_which(tmp_path, sample_files):
    path = shard_path(tmp_path, "train")
    np.savez(path, jpeg=np.zeros(3, np.uint8), offsets=np.array([0, 3]))
    with pytest.raises(PackError, match=r"missing array.*labels, image_ids"):
        read_split(tmp_path, "train")


def test_offsets_that_do_not_cut_the_bytes_are_refused(tmp_path, sample_files):
    files, labels = sample_files
    path = shard_path(tmp_path, "train")
    write_shard(path, files[:2], labels[:2], offsets=np.array([0, 10, 5], dtype=np.int64))
    with pytest.raises(PackError, match="offsets do not cut"):
        read_split(tmp_path, "train")


def test_labels_out_of_range_are_refused(tmp_path, sample_files):
    files, _ = sample_files
    write_shard(shard_path(tmp_path, "train"), files[:2], [3, 102])
    with pytest.raises(PackError, match=r"labels outside 0\.\.101"):
        read_split(tmp_path, "train")


def test_bytes_that_are_no_jpeg_name_the_image(tmp_path, sample_files):
    files, labels = sample_files
    write_shard(shard_path(tmp_path, "train"), [files[0], b"not a jpeg at all"], labels[:2])
    with pytest.raises(PackError, match="image 1: not a decodable JPEG"):
        read_split(tmp_path, "train")


def test_images_of_different_sizes_are_refused(tmp_path):
    paths = sorted(sample_images_dir().glob("*.jpg"))[:2]
    files = [pack_jpeg(paths[0], 144), pack_jpeg(paths[1], 128)]
    write_shard(shard_path(tmp_path, "train"), files, [0, 1])
    with pytest.raises(PackError, match="several sizes"):
        read_split(tmp_path, "train")


def test_label_file_needs_102_names(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("rose\ntulip\n", encoding="utf-8")
    with pytest.raises(PackError, match="2 class names, expected 102"):
        read_labels(path)


def test_client_input_is_the_served_tensor(pack):
    image = read_split(pack, "train").images[0]
    tensor = client_input(image)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == np.float32
    assert tensor.min() >= -1.0 and tensor.max() <= 1.0
    # A square 144 px pack image is simply resized to 224 x 224, then scaled.
    upscaled = np.asarray(Image.fromarray(image).resize((224, 224), Image.BILINEAR), np.float32)
    np.testing.assert_allclose(tensor.transpose(1, 2, 0), upscaled / 127.5 - 1.0, atol=1e-6)


def test_topk_accuracy_counts_rows_whose_class_is_among_the_k_best():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    labels = np.array([1, 2, 1])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="3 score rows for 2 labels"):
        topk_accuracy(scores, labels[:2], 1)
