"""Where the bundled assets are: package data when installed, the source tree's `assets/` otherwise."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def assets_dir() -> Path:
    """The folder of bundled sample photos, labels and model."""
    packaged = resources.files("flowerdemo") / "assets"
    if packaged.is_dir():
        # A wheel install puts assets/ inside the package (force-include in pyproject.toml).
        return Path(str(packaged))
    # An editable install or a plain checkout: assets/ sits beside the package.
    return Path(__file__).resolve().parent.parent / "assets"


def sample_images_dir() -> Path:
    return assets_dir() / "samples"


def labels_file() -> Path:
    return assets_dir() / "labels.txt"


def bundled_model_dir() -> Path:
    return assets_dir() / "model"
