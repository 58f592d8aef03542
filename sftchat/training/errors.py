"""The training errors, apart from the trainer so that every training module (the launch
plan, the loop, the trainer) can raise them without importing each other. Imports nothing
heavy."""

from __future__ import annotations

from sftchat.errors import SftchatError


class TrainingError(SftchatError, RuntimeError):
    """Training cannot start or failed; the message is one user-facing sentence."""


class TrainingCancelled(TrainingError):
    """Stopped on request (SIGINT/SIGTERM); nothing was published."""
