"""One stable colour per instance name, the same on tiles, in the Instances panel and on charts.

The palette is Okabe and Ito's, chosen to stay distinguishable under the common colour-vision
deficiencies; it reads on the dark charts and over photos. Our stack names its instances
`triton-<index>`, so instance k always gets palette colour k (mod the palette's size) whatever
order answers arrive in; any other name (a remote stack's upstream address) gets a colour from a
checksum of the name, which is the same in every run. An answer without a name ("unknown") is a
neutral grey.
"""

from __future__ import annotations

import re
import zlib
from functools import lru_cache

from PySide6.QtGui import QColor

from flowerdemo.core.events import UNKNOWN_INSTANCE

PALETTE = (
    "#56b4e9",  # sky blue
    "#e69f00",  # orange
    "#009e73",  # bluish green
    "#cc79a7",  # reddish purple
    "#f0e442",  # yellow
    "#d55e00",  # vermillion
    "#0072b2",  # blue
)
UNKNOWN_COLOR = "#9e9e9e"

_INDEXED_NAME = re.compile(r"^triton-(\d+)$")


def color_name(instance: str) -> str:
    """The `#rrggbb` colour of `instance`: stable for a name, grey for the unknown instance."""
    if not instance or instance == UNKNOWN_INSTANCE:
        return UNKNOWN_COLOR
    match = _INDEXED_NAME.match(instance)
    slot = int(match.group(1)) if match else zlib.crc32(instance.encode("utf-8"))
    return PALETTE[slot % len(PALETTE)]


@lru_cache(maxsize=256)
def instance_color(instance: str) -> QColor:
    """`color_name(instance)` as a QColor (cached: tiles ask for it on every repaint)."""
    return QColor(color_name(instance))
