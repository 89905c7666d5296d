"""How figures are written for people, the same way on the terminal, in the window and in logs."""

from __future__ import annotations

import math


def format_ms(seconds: float, *, unit: bool = True, width: int = 0) -> str:
    """A duration given in seconds, written in milliseconds with three significant figures:
    "0.93 ms", "12.4 ms", "187 ms"; from one second on, "1.5 s" (with `unit` only: without it
    the number stays in milliseconds, for a column or a label that names the unit). "-" when
    the figure is unknown (NaN or infinite). `width` right-aligns the text, for tables."""
    if not math.isfinite(seconds):
        return "-".rjust(width)
    milliseconds = seconds * 1000.0
    if unit and round(milliseconds) >= 1000:
        return f"{seconds:.1f} s".rjust(width)
    digits = 2 if milliseconds < 10 else 1 if milliseconds < 100 else 0
    text = f"{milliseconds:.{digits}f}"
    return (f"{text} ms" if unit else text).rjust(width)
