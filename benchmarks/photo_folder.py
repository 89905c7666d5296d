"""Client memory and time to first tile for a folder of 1,000 twelve-megapixel phone photos.

Generates the photos once into a cache folder outside the repository (a few distinct 4000x3000
JPEGs with different content, quality and EXIF orientation, hard-linked under 1,000 names: each
name is a real 12 MP JPEG that is decoded in full every time), then measures, each in a fresh
child process:

  streamed   the window's path: scan_image_paths + iter_loaded, a tile QImage made per photo as
             it arrives (peak RSS, time to the first tile, time to the last)
  load_images
             load_images(folder) then a tile QImage per photo: what the window did before photos
             streamed (run it against an older checkout with --code to measure "before")
  reference  every photo fully decoded to RGB and kept, as the client did before it reduced them:
             measured on the first --reference-count photos and projected to the whole folder

A child is killed when its resident memory passes --rss-cap-mb (so "before" cannot exhaust the
machine); the figure is then reported as "over the cap". Usage:

    python benchmarks/photo_folder.py                      # 1,000 photos, streamed + reference
    python benchmarks/photo_folder.py --modes load_images --code /path/to/older/checkout
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_PEAK_MB = 600
WIDTH, HEIGHT = 4000, 3000


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flowerdemo-bench" / "photos-12mp"


# -- the photos -----------------------------------------------------------------------------------
def generate(folder: Path, count: int, variants: int) -> Path:
    """`count` 12 MP JPEGs in `folder/<count>` (made once; later runs reuse them)."""
    import numpy as np
    from PIL import Image

    originals = folder / "originals"
    originals.mkdir(parents=True, exist_ok=True)
    sources = []
    for k in range(variants):
        path = originals / f"variant-{k}.jpg"
        if not path.exists():
            rng = np.random.default_rng(k)
            coarse = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
            smooth = Image.fromarray(coarse, "RGB").resize(
                (WIDTH, HEIGHT), Image.Resampling.BICUBIC
            )
            grain = rng.normal(0, 6, size=(HEIGHT, WIDTH, 3))
            pixels = np.clip(np.asarray(smooth, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
            exif = Image.Exif()
            exif[0x0110] = f"bench camera {k}"  # model
            if k % 3 == 1:
                exif[0x0112] = 6  # portrait photo stored landscape, as phones do
            partial = path.with_suffix(".tmp")
            Image.fromarray(pixels, "RGB").save(partial, "JPEG", quality=80 + 2 * k, exif=exif)
            partial.rename(path)
        sources.append(path)
    photos = folder / str(count)
    photos.mkdir(exist_ok=True)
    for index in range(count):
        name = photos / f"photo-{index:04d}.jpg"
        if not name.exists():
            os.link(sources[index % len(sources)], name)
    return photos


# -- one measurement, in a child process ----------------------------------------------------------
def _rss_mb(field: str = "VmRSS", pid: str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(mode: str, folder: Path, reference_count: int) -> dict[str, float]:
    from PIL import Image, ImageOps

    from flowerdemo.ui.tiles import thumbnail_of

    baseline = _rss_mb()
    started = time.perf_counter()
    first_tile = float("nan")
    tiles = []
    photos = 0
    if mode == "streamed":
        from flowerdemo.core.images import FlowerImage, iter_loaded, scan_image_paths

        paths, _ = scan_image_paths(folder)
        kept = []
        for item in iter_loaded(paths):
            if isinstance(item, FlowerImage):
                kept.append(item)
                tiles.append(thumbnail_of(item.thumbnail))
                if math.isnan(first_tile):
                    first_tile = time.perf_counter() - started
        photos = len(kept)
    elif mode == "load_images":
        from flowerdemo.core import images as images_module

        image_set = images_module.load_images(folder)
        for image in image_set.images:
            picture = getattr(image, "thumbnail", None) or getattr(image, "rgb", None)
            tiles.append(thumbnail_of(picture))
            if math.isnan(first_tile):
                first_tile = time.perf_counter() - started
        photos = len(image_set.images)
    elif mode == "reference":
        kept_full = []
        for path in sorted(folder.iterdir())[:reference_count]:
            with Image.open(path) as opened:
                opened.load()
                kept_full.append(ImageOps.exif_transpose(opened).convert("RGB"))
            tiles.append(thumbnail_of(kept_full[-1]))
            if math.isnan(first_tile):
                first_tile = time.perf_counter() - started
        photos = len(kept_full)
    else:
        raise SystemExit(f"unknown mode {mode}")
    return {
        "photos": photos,
        "baseline_mb": baseline,
        "peak_mb": _rss_mb("VmHWM"),
        "held_mb": _rss_mb(),
        "first_tile_s": first_tile,
        "total_s": time.perf_counter() - started,
    }


def measure(
    mode: str, folder: Path, code: Path, cap_mb: float, reference_count: int
) -> dict[str, float | str]:
    environment = dict(os.environ, PYTHONPATH=str(code), QT_QPA_PLATFORM="offscreen")
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        mode,
        "--folder",
        str(folder),
        "--reference-count",
        str(reference_count),
    ]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, text=True)
    peak = 0.0
    while process.poll() is None:
        with contextlib.suppress(OSError, ValueError):  # the child may just have ended
            peak = max(peak, _rss_mb("VmRSS", str(process.pid)))
        if peak > cap_mb:
            process.kill()
            process.wait()
            return {
                "mode": mode,
                "over_cap": f"over {cap_mb:.0f} MB after {time.perf_counter() - started:.1f} s",
            }
        time.sleep(0.05)
    output = process.stdout.read() if process.stdout else ""
    if process.returncode != 0:
        return {"mode": mode, "failed": f"exit {process.returncode}"}
    result: dict[str, float | str] = json.loads(output.strip().splitlines()[-1])
    result["mode"] = mode
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--variants", type=int, default=8, help="distinct photos generated")
    parser.add_argument("--cache", type=Path, default=default_cache())
    parser.add_argument("--modes", default="streamed,reference")
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose flowerdemo to run")
    parser.add_argument("--rss-cap-mb", type=float, default=4000)
    parser.add_argument("--reference-count", type=int, default=20)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.folder, args.reference_count)))
        return 0

    started = time.perf_counter()
    folder = generate(args.cache, args.count, args.variants)
    print(
        f"{args.count} photos of {WIDTH}x{HEIGHT} in {folder} ({time.perf_counter() - started:.1f} s)"
    )
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, {os.cpu_count()} cores")
    results = [
        measure(mode, folder, args.code, args.rss_cap_mb, args.reference_count)
        for mode in args.modes.split(",")
    ]
    print(
        f"{'mode':<12} {'photos':>6} {'peak RSS MB':>12} {'held MB':>8} {'first tile s':>13} {'all s':>7}"
    )
    streamed_peak = None
    for result in results:
        if "over_cap" in result or "failed" in result:
            print(f"{result['mode']:<12} {result.get('over_cap') or result.get('failed')}")
            continue
        print(
            f"{result['mode']:<12} {result['photos']:>6.0f} {result['peak_mb']:>12.0f} "
            f"{result['held_mb']:>8.0f} {result['first_tile_s']:>13.2f} {result['total_s']:>7.1f}"
        )
        if result["mode"] == "streamed":
            streamed_peak = float(result["peak_mb"])
            verdict = "within" if streamed_peak < TARGET_PEAK_MB else "OVER"
            print(f"  peak RSS {verdict} the {TARGET_PEAK_MB} MB target")
        if result["mode"] == "reference":
            per_photo = (float(result["held_mb"]) - float(result["baseline_mb"])) / max(
                1.0, float(result["photos"])
            )
            projected = float(result["baseline_mb"]) + per_photo * args.count
            print(
                f"  full decode keeps {per_photo:.1f} MB a photo: about {projected:,.0f} MB for "
                f"{args.count} photos"
            )
            if streamed_peak:
                print(f"  streamed peak / projected full decode: {streamed_peak / projected:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
