"""Loading photos: every format and colour mode we promise, and every kind of bad file reported."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowerdemo.core.images import (
    MIN_THUMBNAIL_SIDE,
    MODEL_SIDE,
    REDUCED_BUDGET_BYTES,
    THUMBNAIL_SIDE,
    FlowerImage,
    ImageProblem,
    NoImagesError,
    iter_loaded,
    load_images,
    read_labels,
    reduced_short_side,
    scan_image_paths,
    summarise_problems,
    thumbnail_side,
)
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
    assert all(image.image.mode == "RGB" for image in image_set.images)


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
        assert image.image.mode == "RGB", image.name
        assert image.image.size == (64, 48), image.name
    sixteen_rgb = next(i for i in image_set.images if i.name == "sixteen.png").image
    # 16-bit values are scaled into 0..255 (v / 65535 * 255), not clipped to white.
    values = np.asarray(sixteen_rgb)
    assert values.min() == 0
    assert values.max() == round((64 * 48 - 1) * 20 / 65535 * 255)


def test_transparent_pixels_become_white(tmp_path: Path):
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    (image,) = load_images(tmp_path).images
    assert np.asarray(image.image)[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(tmp_path: Path):
    picture = _gradient(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    picture.save(tmp_path / "rotated.jpg", exif=exif)
    (image,) = load_images(tmp_path).images
    assert image.image.size == (48, 64)


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


def test_odd_entries_are_named_as_skipped_and_folders_named_like_images_are_searched(
    tmp_path: Path,
):
    _gradient().save(tmp_path / "good.jpg")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "album.jpg").mkdir()
    _gradient().save(tmp_path / "album.jpg" / "inside.png")
    (tmp_path / "loop").symlink_to(tmp_path)  # a link back up must not be walked forever
    (tmp_path / ".hidden.jpg").write_bytes(b"ignored")

    paths, problems = scan_image_paths(tmp_path)

    assert [p.name for p in paths] == ["inside.png", "good.jpg"]
    kinds = {problem.path.name: problem.kind for problem in problems}
    assert kinds == {
        "album.jpg": "folder",
        "gone.jpg": "broken link",
        "loop": "folder link",
        "pipe.jpg": "not a regular file",
    }
    reasons = {problem.path.name: problem.reason for problem in problems}
    assert "FIFO" in reasons["pipe.jpg"]
    image_set = load_images(tmp_path)
    assert sorted(image.name for image in image_set.images) == ["good.jpg", "inside.png"]
    assert len(image_set.problems) == 4


def test_an_extreme_aspect_ratio_is_refused_before_decoding(tmp_path: Path):
    # The 143-byte 65,500 x 1 PNG: resizing its short side to the model's would ask for a
    # 3.3-gigapixel intermediate.
    Image.new("L", (65_500, 1)).save(tmp_path / "line.png", optimize=True)
    _gradient().save(tmp_path / "fine.png")
    assert (tmp_path / "line.png").stat().st_size < 1_000
    image_set = load_images(tmp_path)
    assert [image.name for image in image_set.images] == ["fine.png"]
    (problem,) = image_set.problems
    assert problem.path.name == "line.png"
    assert problem.kind == "extreme aspect ratio"
    assert "65500x1" in problem.reason


def test_a_large_photo_keeps_only_a_reduced_copy_and_a_thumbnail(tmp_path: Path):
    big = _gradient(4000, 3000)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the reduced copy is portrait
    big.save(tmp_path / "phone.jpg", quality=90, exif=exif)

    (image,) = load_images(tmp_path).images

    short = reduced_short_side(1)
    assert short == 2 * MODEL_SIDE
    assert image.image.size == (short, round(4000 * short / 3000))
    assert image.image.mode == "RGB"
    assert max(image.thumbnail.size) <= thumbnail_side(1)
    assert image.thumbnail.height > image.thumbnail.width


def test_sizes_shrink_with_the_number_of_photos_but_never_below_the_model():
    assert reduced_short_side(10) == 2 * MODEL_SIDE
    assert MODEL_SIDE <= reduced_short_side(1000) < 2 * MODEL_SIDE
    assert reduced_short_side(100_000) == MODEL_SIDE
    assert reduced_short_side(100_000, model_side=300) == 300
    assert thumbnail_side(10) == THUMBNAIL_SIDE
    assert MIN_THUMBNAIL_SIDE <= thumbnail_side(1000) < THUMBNAIL_SIDE
    # The reduced copies of a thousand 4:3 photos stay within their budget.
    side = reduced_short_side(1000)
    assert 1000 * side * (side * 4 // 3) * 3 <= REDUCED_BUDGET_BYTES * 1.01


def test_iter_loaded_yields_every_photo_and_problem_once(tmp_path: Path):
    for k in range(12):
        _gradient(80 + k, 60).save(tmp_path / f"{k:03d}-photo.png")
    (tmp_path / "bad.png").write_text("not a picture")
    paths, problems = scan_image_paths(tmp_path)
    assert problems == []

    results = list(iter_loaded(paths, workers=3))

    photos = [r for r in results if isinstance(r, FlowerImage)]
    failed = [r for r in results if isinstance(r, ImageProblem)]
    assert sorted(p.truth for p in photos) == list(range(12))
    assert [f.path.name for f in failed] == ["bad.png"]
    assert failed[0].kind == "corrupt"


def test_closing_iter_loaded_early_stops_the_decoding(tmp_path: Path):
    for k in range(40):
        _gradient().save(tmp_path / f"p{k:02d}.png")
    paths, _ = scan_image_paths(tmp_path)
    loaded = iter_loaded(paths, workers=2)
    first = next(loaded)
    assert isinstance(first, FlowerImage)
    loaded.close()  # returns once the few decodes already running have finished
    assert threading.active_count() < 10


def test_problems_are_summarised_by_kind_with_the_first_few_named(tmp_path: Path):
    problems = [
        ImageProblem(tmp_path / f"n{k}.txt", "not an image file (.txt)", "not an image file")
        for k in range(30)
    ]
    problems.append(ImageProblem(tmp_path / "gone.jpg", "broken symbolic link", "broken link"))
    lines = summarise_problems(problems, named=3)
    assert lines[0] == "skipped 31 file(s): 30 not an image file, 1 broken link"
    assert len(lines) == 5
    assert lines[-1].endswith("and 28 more")


def test_undecodable_file_names_are_printable(tmp_path: Path):
    # Python keeps the undecodable byte 0xE9 as the surrogate U+DCE9.
    _gradient().save(tmp_path / os.fsdecode(b"caf\xe9.jpg"), format="JPEG")
    (image,) = load_images(tmp_path).images
    assert image.name == "caf\ufffd.jpg"
    image.name.encode("utf-8")
