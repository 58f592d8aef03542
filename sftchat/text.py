"""Helpers for showing untrusted text (model output, imported data) safely.

Model output must never act on the terminal: escape sequences could move the cursor,
rewrite the title or fake other output. `strip_control` removes ANSI/OSC escape sequences
and C0/C1 control characters, keeping newlines and tabs.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)?|"
                      r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def strip_control(text: str) -> str:
    return _CONTROL.sub("", text)


def one_line(text: str, width: int) -> str:
    """Collapse whitespace and cut to `width` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
