"""Messages the app's workers and subprocess readers post: past tense, data only.

Workers never touch widgets; they post one of these and the screen that handles it updates
itself on the event loop (Textual: attributes down, messages up).
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class ModelLoaded(Message):
    description: str


@dataclass
class ModelLoadFailed(Message):
    error: str


@dataclass
class ResponseChunkReceived(Message):
    turn_id: int
    text: str


@dataclass
class ResponseCompleted(Message):
    turn_id: int
    text: str
    finish_reason: str
    adapter: str | None
    tokens: int
    seconds: float
    notice: str | None


@dataclass
class ResponseFailed(Message):
    turn_id: int
    error: str


@dataclass
class TrainingProgressed(Message):
    event: dict


@dataclass
class TrainingEnded(Message):
    """The trainer's last event: `finished`, `cancelled` or `failed`."""

    event: dict


@dataclass
class AdapterSwapped(Message):
    name: str | None
    seconds: float
    automatic: bool


@dataclass
class AdapterSwapFailed(Message):
    error: str
