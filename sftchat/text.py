"""Helpers for showing untrusted text (model output, imported data) safely.

Model output must never act on the terminal: escape sequences could move the cursor,
rewrite the title or fake other output. `strip_control` removes ANSI/OSC escape sequences
and C0/C1 control characters, keeping newlines and tabs.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)?|"
                      r"\x1b[^\[\]]|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def strip_control(text: str) -> str:
    return _CONTROL.sub("", text)


def one_line(text: str, width: int) -> str:
    """Collapse whitespace and cut to `width` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


_COMPLETE_SEQUENCE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|"
                                r"\x1b[^\[\]]")
# An escape sequence longer than this is not waited for: it is stripped as it stands.
_MAX_SEQUENCE = 256


class StreamSanitizer:
    """`strip_control` for text that arrives in pieces.

    An escape sequence can be split between two pieces; stripping each piece alone would
    remove the ESC but leave the rest (`[31m`, an OSC's payload) on screen. The tail from an
    unfinished sequence's ESC is held back until the sequence completes.
    """

    def __init__(self) -> None:
        self.pending = ""

    def feed(self, piece: str) -> str:
        text = self.pending + piece
        self.pending = ""
        escape = text.rfind("\x1b")
        if escape != -1 and len(text) - escape < _MAX_SEQUENCE \
                and not _COMPLETE_SEQUENCE.match(text, escape):
            text, self.pending = text[:escape], text[escape:]
        return strip_control(text)

    def flush(self) -> str:
        text, self.pending = self.pending, ""
        return strip_control(text)
