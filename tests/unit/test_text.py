"""Untrusted text: control characters and escape sequences never reach a terminal."""

from __future__ import annotations

import pytest

from sftchat.text import StreamSanitizer, strip_control

HOSTILE = "a\x1b[31mred\x1b[0m b\x1b]0;title\x07c\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ d\x07\x00e"


def test_strip_control_removes_sequences_whole():
    assert strip_control(HOSTILE) == "ared bclink de"
    assert strip_control("tabs\tand\nnewlines") == "tabs\tand\nnewlines"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_split_sequences_are_removed_whole(size):
    sanitizer = StreamSanitizer()
    pieces = [HOSTILE[i:i + size] for i in range(0, len(HOSTILE), size)]
    shown = "".join(sanitizer.feed(piece) for piece in pieces) + sanitizer.flush()
    assert shown == strip_control(HOSTILE) == "ared bclink de"


def test_an_unfinished_sequence_is_not_held_forever():
    sanitizer = StreamSanitizer()
    shown = sanitizer.feed("x\x1b]0;" + "y" * 300)
    assert shown.startswith("x") and "\x1b" not in shown and sanitizer.pending == ""
