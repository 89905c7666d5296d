"""Text that came from a server, made safe to show.

A server's error messages, model names and labels are untrusted: a hostile or broken server could
send terminal escape sequences (clear the screen, fake a summary line) or megabytes of text.
Everything a server said passes through `clean_server_text` before it reaches a terminal, a log
line the user reads, or the window.
"""

from __future__ import annotations

import re
import unicodedata

MAX_SERVER_TEXT = 500
"""Characters kept of one piece of server text; the rest is replaced by an ellipsis."""

# C0 and C1 controls and DEL, except the ones handled below; ANSI escapes start with ESC (C0) or
# CSI (C1), so removing the controls removes the introducer and leaves only harmless printables.
_ESCAPE_SEQUENCE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)?|\x1b.")


def clean_server_text(text: object, limit: int = MAX_SERVER_TEXT, *, one_line: bool = True) -> str:
    """`text` without escape sequences or control characters, at most `limit` characters.

    Line breaks and tabs become spaces when `one_line` (the default); otherwise newlines stay.
    Bidirectional overrides and other invisible format characters (Unicode category Cf) are
    dropped as well, so a label cannot reorder what is printed after it.
    """
    if isinstance(text, bytes | bytearray):
        value = bytes(text).decode("utf-8", errors="replace")
    else:
        value = str(text)
    value = _ESCAPE_SEQUENCE.sub("", value)
    kept: list[str] = []
    for char in value:
        if char in "\n\r\t":
            kept.append(" " if one_line or char == "\t" else "\n")
            continue
        category = unicodedata.category(char)
        if category in ("Cc", "Cf", "Cs", "Co", "Cn"):
            continue
        kept.append(char)
    cleaned = "".join(kept)
    if one_line:
        cleaned = " ".join(cleaned.split())
    if limit > 0 and len(cleaned) > limit:
        cleaned = cleaned[: max(limit - 1, 0)] + "…"
    return cleaned
