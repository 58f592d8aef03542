"""Messages the app's workers and subprocess readers post: past tense, data only.

Workers never touch widgets; they post one of these and the screen that handles it updates
itself on the event loop (Textual: attributes down, messages up). A worker that fails posts
nothing: it raises, and the screen's one `Worker.StateChanged` handler says what failed.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class ModelLoaded(Message):
    """The model-load worker finished; the handler makes `engine` the app's."""

    engine: object


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
class StoreWritten(Message):
    """A write to the store (a pin, a bad answer, a compared answer) is committed."""

    text: str


@dataclass
class TrainingProgressed(Message):
    event: dict


@dataclass
class ReviewProgressed(Message):
    """How far the review's replay is (shown in the status line)."""

    text: str


@dataclass
class ResumeOffered(Message):
    """The workspace holds an interrupted training run; `text` says which and how."""

    text: str


@dataclass
class TrainingEnded(Message):
    """The trainer's last event: `finished`, `cancelled` or `failed`."""

    event: dict


@dataclass
class AdapterSwapped(Message):
    name: str | None          # answering now (None: the base model)
    seconds: float
    automatic: bool
    before: str | None = None  # what answered until now


@dataclass
class ReviewReady(Message):
    """A new adapter was replayed against the one answering (a `review.Comparison`)."""

    comparison: object


@dataclass
class ExampleSaved(Message):
    """A curated answer is committed as example `example_id`; the dataset has `count`."""

    instruction: str          # the turn as the model answered it (to find it in the context)
    response: str
    saved_instruction: str    # the turn as the user saved it
    saved_response: str
    example_id: int
    count: int
    # Earlier turns corrected in the same save: (as the chat had it, as saved) pairs.
    earlier: tuple = ()


@dataclass
class ExportProgressed(Message):
    """The exporter said how far it is: `text` (its own words: untrusted, shown as text)."""

    text: str


@dataclass
class ExportEnded(Message):
    """The exporter's last event: `finished`, `failed` or `cancelled` (`export_process`)."""

    event: dict
