"""Render the hicolor PNG icons from the one SVG source, with Qt's own SVG renderer.

Run after editing the SVG:  python packaging/linux/render_icons.py
It rewrites icons/hicolor/<N>x<N>/apps/<id>.png for every size the desktop uses, and the copy of
the SVG in assets/icons/ that the application uses as its window icon.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

APP_ID = "org.flowerdemo.FlowerDemo"
SIZES = (16, 22, 24, 32, 48, 64, 128, 256, 512)

HERE = Path(__file__).resolve().parent
HICOLOR = HERE / "icons" / "hicolor"
SOURCE_SVG = HICOLOR / "scalable" / "apps" / f"{APP_ID}.svg"
APP_ICON_COPY = HERE.parent.parent / "assets" / "icons" / "flowerdemo.svg"


def render(source: Path, hicolor: Path, sizes: tuple[int, ...]) -> list[Path]:
    # A QGuiApplication must exist before QPainter; offscreen needs no display.
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    renderer = QSvgRenderer(str(source))
    if not renderer.isValid():
        raise SystemExit(f"{source}: not a valid SVG for Qt's renderer")
    written = []
    for size in sizes:
        image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        renderer.render(painter)
        painter.end()
        target = hicolor / f"{size}x{size}" / "apps" / f"{APP_ID}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not image.save(str(target)):
            raise SystemExit(f"{target}: Qt could not write the PNG")
        written.append(target)
    del app
    return written


def main() -> int:
    for path in render(SOURCE_SVG, HICOLOR, SIZES):
        print(path.relative_to(HERE))
    APP_ICON_COPY.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SOURCE_SVG, APP_ICON_COPY)
    print(APP_ICON_COPY.relative_to(HERE.parent.parent))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
