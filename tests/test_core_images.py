"""Loading photos: every format and colour mode we promise, and every kind of bad file reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowerdemo.core.images import NoImagesError, load_images, read_labels
from flowerdemo.resources import labels_file, sample_images_dir

LABELS = ("pink primrose", "hard-leaved pocket orchid", "canterbury bells")


def _gradient(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    y = np.linspace(0, 255, height, dtype=np.uint8)
    rgb = np.stack(
        np.broadcast_arrays(x[None, :], y[:, None], 128 * np.ones((height, width), np.uint8)), -1
    )
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def test_bundled_samples_all_load_with_truth_from_their_names():
    image_set = load_images(sample_images_dir(), labels=read_labels(labels_file()))
    assert len(image_set.images) == 102
    assert image_set.problems == ()
    assert [image.truth for image in image_set.images] == list(range(102))
    assert all(image.rgb.mode == "RGB" for image in image_set.images)


def test_every_supported_format_and_mode_becomes_rgb(tmp_path: Path):
    picture = _gradient()
    picture.save(tmp_path / "plain.jpg")
    picture.save(tmp_path / "plain.png")
    picture.save(tmp_path / "plain.webp")
    picture.save(tmp_path / "plain.bmp")
    picture.convert("RGBA").save(tmp_path / "alpha.png")
    picture.convert("L").save(tmp_path / "gray.png")
    picture.convert("CMYK").save(tmp_path / "cmyk.jpg")
    sixteen = Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16))
    sixteen.save(tmp_path / "sixteen.png")

    image_set = load_images(tmp_path)

    assert image_set.problems == ()
    names = sorted(image.name for image in image_set.images)
    assert names == sorted(p.name for p in tmp_path.iterdir())
    for image in image_set.images:
        assert image.rgb.mode == "RGB", image.name
        assert image.rgb.size == (64, 48), image.name
    sixteen_rgb = next(i for i in image_set.images if i.name == "sixteen.png").rgb
    # 16-bit values are scaled into 0..255 (v / 65535 * 255), not clipped to white.
    values = np.asarray(sixteen_rgb)
    assert values.min() == 0
    assert values.max() == round((64 * 48 - 1) * 20 / 65535 * 255)


def test_transparent_pixels_become_white(tmp_path: Path):
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    (image,) = load_images(tmp_path).images
    assert np.asarray(image.rgb)[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(tmp_path: Path):
    picture = _gradient(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    picture.save(tmp_path / "rotated.jpg", exif=exif)
    (image,) = load_images(tmp_path).images
    assert image.rgb.size == (48, 64)


def test_bad_files_are_reported_by_name_and_the_rest_still_load(tmp_path: Path):
    _gradient().save(tmp_path / "good.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("this is not a picture")
    (tmp_path / "notes.txt").write_text("a note")
    whole = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(whole[: len(whole) // 3])

    image_set = load_images(tmp_path)

    assert [image.name for image in image_set.images] == ["good.jpg"]
    reasons = {problem.path.name: problem.reason for problem in image_set.problems}
    assert reasons.keys() == {"empty.jpg", "text.png", "notes.txt", "truncated.jpg"}
    assert "empty" in reasons["empty.jpg"]
    assert "not a readable image" in reasons["text.png"]
    assert "not an image file" in reasons["notes.txt"]
    assert "truncated" in reasons["truncated.jpg"]
    assert all(str(tmp_path) in str(problem) for problem in image_set.problems)


def test_too_large_images_are_refused(tmp_path: Path):
    _gradient(100, 100).save(tmp_path / "big.png")
    _gradient(10, 10).save(tmp_path / "small.png")
    image_set = load_images(tmp_path, max_pixels=5_000)
    assert [image.name for image in image_set.images] == ["small.png"]
    assert "too large" in image_set.problems[0].reason


def test_decompression_bomb_is_refused(tmp_path: Path):
    # 9,500 x 9,500 one-bit pixels: a small file that claims more pixels than Pillow's guard allows.
    Image.new("1", (9_500, 9_500)).save(tmp_path / "bomb.png")
    _gradient().save(tmp_path / "fine.png")
    image_set = load_images(tmp_path)
    assert [image.name for image in image_set.images] == ["fine.png"]
    assert "too large" in image_set.problems[0].reason


def test_ground_truth_from_folder_number_folder_name_and_file_name(tmp_path: Path):
    (tmp_path / "2").mkdir()
    (tmp_path / "Hard-Leaved Pocket Orchid").mkdir()
    _gradient().save(tmp_path / "2" / "a.jpg")
    _gradient().save(tmp_path / "Hard-Leaved Pocket Orchid" / "b.jpg")
    _gradient().save(tmp_path / "pink_primrose.jpg")
    _gradient().save(tmp_path / "unknown.jpg")
    truths = {i.name: i.truth for i in load_images(tmp_path, labels=LABELS).images}
    assert truths == {"a.jpg": 2, "b.jpg": 1, "pink_primrose.jpg": 0, "unknown.jpg": None}


def test_folder_without_images_says_why(tmp_path: Path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(NoImagesError, match=r"no readable image.*broken\.jpg"):
        load_images(tmp_path)
    with pytest.raises(NoImagesError, match="does not exist"):
        load_images(tmp_path / "missing")
