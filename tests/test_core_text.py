"""Server text reaching a terminal or the window: no escapes, no controls, bounded length."""

from __future__ import annotations

from flowerdemo.core.text import MAX_SERVER_TEXT, clean_server_text


def test_escape_sequences_and_controls_are_removed():
    hostile = "\x1b[2J\x1b[Hok\x07 \x1b]0;title\x07done\r\nsent: 999 answered: 999\x00\x7f"
    cleaned = clean_server_text(hostile)
    assert "\x1b" not in cleaned and "\x07" not in cleaned and "\x00" not in cleaned
    assert "\x7f" not in cleaned and "\r" not in cleaned and "\n" not in cleaned
    assert cleaned == "ok done sent: 999 answered: 999"


def test_bidirectional_overrides_are_dropped():
    assert clean_server_text("rose\u202egnissim") == "rosegnissim"


def test_long_text_is_shortened_with_an_ellipsis():
    cleaned = clean_server_text("x" * 100_000)
    assert len(cleaned) == MAX_SERVER_TEXT and cleaned.endswith("…")


def test_bytes_that_are_not_utf8_are_readable():
    assert clean_server_text(b"daisy \xff") == "daisy \ufffd"


def test_multiline_keeps_newlines_only_when_asked():
    assert clean_server_text("a\nb", one_line=False) == "a\nb"
    assert clean_server_text("a\nb") == "a b"
