"""The one base class of every error whose message is meant for the user.

Each layer raises its own subclass (`ConfigError`, `StoreError`, `AdapterError`,
`ModelLoadError`, `TrainingError`, ...) with one sentence: what went wrong, why, and what
to do. The command line prints any `SftchatError` as that one line (a traceback only with
`--debug`); anything else is a bug and says so. Imports nothing.
"""

from __future__ import annotations


class SftchatError(Exception):
    """A failure the user can cause and fix; `str(error)` is the whole message."""


def error_line(error: BaseException) -> str:
    """One line for the user: our own errors are written for them; others get their type."""
    if isinstance(error, SftchatError):
        return str(error)
    return f"{type(error).__name__}: {error}"
