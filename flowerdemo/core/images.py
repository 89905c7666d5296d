"""Loading flower photos, with every unusable file reported instead of raised.

Memory is bounded by what is shown, not by what is on disk: each photo is decoded near the size
the model needs (JPEG's draft mode decodes at 1/2, 1/4 or 1/8 scale directly), and only a reduced
copy and a tile thumbnail are kept. Decoding runs in a small thread pool (Pillow releases the GIL
while it decodes) and results arrive in completion order, so a window can show tiles as they come.
"""

from __future__ import annotations

import math
import os
import re
import stat
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})

# Pillow's own threshold (about 89 megapixels): far beyond any photo a booth shows. Past it Pillow
# only warns; we turn that warning into a refusal, since such headers are mostly decompression bombs.
DEFAULT_MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485
MAX_ASPECT_RATIO = 12.0
"""Wider than a phone's panorama: beyond it, fitting the short side to the model multiplies
pixels (a 143-byte 65,500 x 1 PNG would ask for a 3.3-gigapixel intermediate)."""
MAX_DECODED_PIXELS = 40_000_000
"""The largest picture actually decoded (after JPEG's reduced decoding): about 120 MB as RGB.
JPEG photos decode far smaller; a bigger PNG or WebP is refused rather than held whole."""

MODEL_SIDE = 224
"""The model input side the reduced copies are sized for (the bundled model's, and most
ImageNet-style classifiers'). A larger model still works, from a softer copy."""
REDUCED_BUDGET_BYTES = 256 * 1024 * 1024
"""What all reduced copies together may take: a few photos keep twice the model's side (a
sharper downscale), a thousand keep a little more than the model's side."""
THUMBNAIL_SIDE = 448
"""Longest side of a tile thumbnail for a few photos: sharp on a 4K screen."""
MIN_THUMBNAIL_SIDE = 128
SCREEN_PIXELS = 3840 * 2160
"""Thumbnails for many photos are sized so all of them together fill a 4K screen (times 1.5)."""
DEFAULT_WORKERS = 4
PENDING_PER_WORKER = 2
"""Decodes queued ahead per worker: enough to keep workers busy, few enough to bound memory."""

_LEADING_INDEX = re.compile(r"^(\d{1,4})[-_ ]")


@dataclass(frozen=True)
class FlowerImage:
    """One photo, reduced to what the model and the tile need."""

    path: Path
    image: Image.Image = field(repr=False, compare=False)
    """8-bit RGB, oriented, the short side near twice the model's (never enlarged)."""
    thumbnail: Image.Image = field(repr=False, compare=False)
    """For the tile; the same object as `image` when that is already small enough."""
    truth: int | None
    """Ground-truth class index, when the file or folder name gives it."""

    @property
    def name(self) -> str:
        return display_path(Path(self.path.name))


@dataclass(frozen=True)
class ImageProblem:
    """A file or folder entry that was skipped, and why."""

    path: Path
    reason: str
    kind: str = "unreadable"
    """A short category, for counting many problems by reason."""

    def __str__(self) -> str:
        return f"{display_path(self.path)}: {self.reason}"


@dataclass(frozen=True)
class ImageSet:
    images: tuple[FlowerImage, ...]
    problems: tuple[ImageProblem, ...]


class NoImagesError(ValueError):
    """The folder held no usable image at all."""


class ImageDecodeError(ValueError):
    def __init__(self, reason: str, kind: str = "unreadable") -> None:
        super().__init__(reason)
        self.kind = kind


def display_path(path: Path) -> str:
    """A path that can be printed under any locale: undecodable bytes in a file name (kept by
    Python as surrogates) are shown as U+FFFD instead of failing the print."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text


# -- finding the photos -------------------------------------------------------------------------
def scan_image_paths(
    sources: Path | Iterable[Path], *, recursive: bool = True
) -> tuple[list[Path], list[ImageProblem]]:
    """Image files in `sources` (files or folders, walked in name order), and every entry skipped.

    Skipped and named: files without an image suffix, broken symbolic links, FIFOs, sockets and
    devices, folders named like images (their contents are still searched), unreadable folders.
    Hidden entries (a leading dot) are ignored silently. Symbolic links to folders are not
    followed, so a tree with a link loop ends.
    """
    roots = [sources] if isinstance(sources, Path) else list(sources)
    paths: list[Path] = []
    problems: list[ImageProblem] = []
    for root in roots:
        _scan_entry(root, paths, problems, recursive=recursive, top=True)
    return paths, problems


def _scan_entry(
    path: Path,
    paths: list[Path],
    problems: list[ImageProblem],
    *,
    recursive: bool,
    top: bool = False,
) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        problems.append(ImageProblem(path, "does not exist", "missing"))
        return
    except OSError as error:
        problems.append(ImageProblem(path, f"cannot read: {error.strerror}", "unreadable"))
        return
    if stat.S_ISLNK(mode):
        try:
            mode = path.stat().st_mode
        except OSError:
            problems.append(ImageProblem(path, "broken symbolic link", "broken link"))
            return
        if stat.S_ISDIR(mode) and not top:
            problems.append(
                ImageProblem(path, "symbolic link to a folder, not followed", "folder link")
            )
            return
    if stat.S_ISDIR(mode):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            problems.append(ImageProblem(path, "a folder, not an image file", "folder"))
        if recursive or top:
            _scan_folder(path, paths, problems, recursive=recursive)
        return
    if not stat.S_ISREG(mode):
        problems.append(
            ImageProblem(path, f"not a regular file ({_file_kind(mode)})", "not a regular file")
        )
        return
    _add_file(path, paths, problems)


def _scan_folder(
    folder: Path, paths: list[Path], problems: list[ImageProblem], *, recursive: bool
) -> None:
    try:
        children = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as error:
        problems.append(ImageProblem(folder, f"cannot list folder: {error.strerror}", "unreadable"))
        return
    for child in children:
        if child.name.startswith("."):
            continue
        path = Path(child.path)
        try:
            # The folder listing already says what most entries are: no system call for them.
            plain_file = child.is_file(follow_symlinks=False)
            plain_folder = not plain_file and child.is_dir(follow_symlinks=False)
        except OSError:
            plain_file = plain_folder = False
        if plain_file:
            _add_file(path, paths, problems)
        elif plain_folder and path.suffix.lower() not in IMAGE_SUFFIXES:
            if recursive:
                _scan_folder(path, paths, problems, recursive=recursive)
        else:  # links, special files, folders named like images: look closer
            _scan_entry(path, paths, problems, recursive=recursive)


def _add_file(path: Path, paths: list[Path], problems: list[ImageProblem]) -> None:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        paths.append(path)
    else:
        reason = f"not an image file ({path.suffix or 'no extension'})"
        problems.append(ImageProblem(path, reason, "not an image file"))


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "special file"


# -- decoding ----------------------------------------------------------------------------------
def reduced_short_side(count: int, model_side: int = MODEL_SIDE) -> int:
    """Short side of each reduced copy when `count` photos are loaded (4:3 photos assumed)."""
    per_photo = REDUCED_BUDGET_BYTES / max(1, count)
    side = int(math.sqrt(per_photo / 4))  # 4:3 RGB: (4/3) s * s * 3 bytes = 4 s^2
    return max(model_side, min(2 * model_side, side))


def thumbnail_side(count: int) -> int:
    """Longest side of each tile thumbnail when `count` photos are shown."""
    side = int(1.5 * math.sqrt(SCREEN_PIXELS / max(1, count)))
    return max(MIN_THUMBNAIL_SIDE, min(THUMBNAIL_SIDE, side))


def iter_loaded(
    paths: Sequence[Path],
    workers: int | None = None,
    *,
    labels: Sequence[str] = (),
    root: Path | None = None,
    model_side: int = MODEL_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[FlowerImage | ImageProblem]:
    """Decode `paths` in a worker pool; yield each photo or problem as it completes.

    Sizes follow the number of photos (`reduced_short_side`, `thumbnail_side`), so the memory
    held stays bounded. `root`: where folder names start to count as ground truth (default:
    only a photo's own folder counts). Closing the iterator early cancels the decodes not yet started.
    """
    if not paths:
        return
    short_side = reduced_short_side(len(paths), model_side)
    thumb_side = thumbnail_side(len(paths))
    label_index = {_normalise(name): k for k, name in enumerate(labels)}
    pool_size = max(
        1, workers if workers is not None else min(DEFAULT_WORKERS, os.cpu_count() or 1)
    )

    def load(path: Path) -> FlowerImage | ImageProblem:
        try:
            image = decode_reduced(path, short_side, max_pixels=max_pixels)
        except ImageDecodeError as error:
            return ImageProblem(path, str(error), error.kind)
        except MemoryError:
            return ImageProblem(path, "not enough memory to decode it", "too large")
        thumbnail = image
        if max(image.size) > thumb_side:
            thumbnail = image.copy()
            thumbnail.thumbnail((thumb_side, thumb_side), Image.Resampling.BILINEAR)
        truth = ground_truth(path, root or path.parent.parent, label_index)
        return FlowerImage(path, image, thumbnail, truth)

    pending: set[Future[FlowerImage | ImageProblem]] = set()
    queue = iter(paths)
    executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="photo-decode")
    try:
        while True:
            while len(pending) < pool_size * PENDING_PER_WORKER:
                path = next(queue, None)
                if path is None:
                    break
                pending.add(executor.submit(load, path))
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    finally:
        for future in pending:
            future.cancel()
        executor.shutdown(wait=True, cancel_futures=True)


def load_images(
    folder: Path,
    *,
    labels: Sequence[str] = (),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    recursive: bool = True,
    workers: int | None = None,
) -> ImageSet:
    """Every usable photo under `folder` (in path order), and every entry that was skipped.

    `labels` (class names in index order) lets a folder or file called after a class name give
    the ground truth. Raises NoImagesError only when nothing at all is usable, with the reasons.
    """
    if not folder.exists():
        raise NoImagesError(f"image folder {display_path(folder)} does not exist")
    if not folder.is_dir():
        raise NoImagesError(f"{display_path(folder)} is not a folder")
    paths, problems = scan_image_paths(folder, recursive=recursive)
    images: list[FlowerImage] = []
    for item in iter_loaded(paths, workers, labels=labels, root=folder, max_pixels=max_pixels):
        if isinstance(item, FlowerImage):
            images.append(item)
        else:
            problems.append(item)
    if not images:
        details = "; ".join(str(p) for p in problems[:5]) or "the folder is empty"
        raise NoImagesError(f"no readable image in {display_path(folder)} ({details})")
    images.sort(key=lambda image: image.path)
    problems.sort(key=lambda problem: problem.path)
    return ImageSet(tuple(images), tuple(problems))


def decode_reduced(
    path: Path, short_side: int = 2 * MODEL_SIDE, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Open, check, orient and convert one image to 8-bit RGB with its short side reduced to
    `short_side` (never enlarged). JPEGs are decoded at the smallest scale that still covers it."""
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ImageDecodeError(f"cannot read file: {error.strerror}") from error
    if size == 0:
        raise ImageDecodeError("empty file", "empty")
    try:
        with warnings.catch_warnings():
            # Pillow warns, rather than fails, between max_pixels and twice that; we want a failure.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                _check_size(width, height, max_pixels)
                scale = min(1.0, short_side / min(width, height))
                if scale < 1.0:
                    wanted = (math.ceil(width * scale), math.ceil(height * scale))
                    opened.draft(None, wanted)  # JPEG only: decode at 1/2, 1/4 or 1/8 scale
                decoded_w, decoded_h = opened.size
                if decoded_w * decoded_h > MAX_DECODED_PIXELS:
                    raise ImageDecodeError(
                        f"image too large to decode ({width}x{height} pixels; "
                        f"limit {MAX_DECODED_PIXELS:,} for formats without reduced decoding)",
                        "too large",
                    )
                opened.load()
                oriented = ImageOps.exif_transpose(opened)
                reduced = _reduce(oriented, short_side)
                return _to_rgb8(reduced)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(
            f"image too large (decompression bomb guard): {error}", "too large"
        ) from error
    except UnidentifiedImageError as error:
        raise ImageDecodeError(
            "not a readable image (unknown or corrupt format)", "corrupt"
        ) from error
    except OSError as error:
        # Pillow reports truncated and otherwise broken data as OSError.
        raise ImageDecodeError(f"corrupt or truncated image data: {error}", "corrupt") from error
    except (ValueError, SyntaxError, EOFError) as error:
        raise ImageDecodeError(f"corrupt image: {error}", "corrupt") from error


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})", "corrupt")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image too large ({width}x{height} pixels, limit {max_pixels:,})", "too large"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageDecodeError(
            f"extreme aspect ratio ({width}x{height}, more than {MAX_ASPECT_RATIO:g}:1)",
            "extreme aspect ratio",
        )


_RESIZABLE_MODES = frozenset({"RGB", "RGBA", "L", "LA", "I", "I;16", "F"})


def _reduce(image: Image.Image, short_side: int) -> Image.Image:
    """Shrink so the short side is `short_side`; never enlarge."""
    width, height = image.size
    scale = short_side / min(width, height)
    if scale >= 1.0:
        return image
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    elif image.mode not in _RESIZABLE_MODES:
        image = image.convert("RGB")
    return image.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)


def _to_rgb8(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
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


# -- reporting many problems --------------------------------------------------------------------
def summarise_problems(problems: Sequence[ImageProblem], named: int = 5) -> list[str]:
    """A few lines for a terminal: a count per kind of problem, then the first `named` ones."""
    if not problems:
        return []
    counts = Counter(problem.kind for problem in problems)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    by_kind = ", ".join(f"{count:,} {kind}" for kind, count in ordered)
    lines = [f"skipped {len(problems):,} file(s): {by_kind}"]
    lines += [f"  skipped {problem}" for problem in problems[:named]]
    if len(problems) > named:
        lines.append(f"  ... and {len(problems) - named:,} more")
    return lines


# -- ground truth and labels --------------------------------------------------------------------
def ground_truth(path: Path, root: Path, label_index: dict[str, int]) -> int | None:
    """The class index a file's name or folder gives, if any.

    Accepted: a leading number in the file name (`017-peruvian-lily.jpg`, the bundled samples),
    a parent folder below `root` that is a class number (`17/photo.jpg`) or a class name
    (`peruvian lily/photo.jpg`), or a file name that is a class name (`peruvian_lily.png`).
    """
    match = _LEADING_INDEX.match(path.name)
    if match:
        return int(match.group(1))
    try:
        relative_parents = list(path.relative_to(root).parents)[:-1]  # skip "." itself
    except ValueError:
        relative_parents = []
    for parent in relative_parents:
        folder = parent.name
        if folder.isdigit():
            return int(folder)
        if _normalise(folder) in label_index:
            return label_index[_normalise(folder)]
    return label_index.get(_normalise(path.stem))


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name).strip().lower()


def read_labels(path: Path) -> tuple[str, ...]:
    """Class names, one a line, in index order."""
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return tuple(name for name in names if name)
