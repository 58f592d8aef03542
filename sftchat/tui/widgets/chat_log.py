"""The conversation on screen: user messages as plain text, answers as streamed Markdown.

Model output is untrusted: control characters are stripped before it reaches a widget, user
text goes into `rich.text.Text` (never parsed as markup), and answers go through Textual's
Markdown, which renders Markdown syntax but never Rich markup such as `[bold]`.
"""

from __future__ import annotations

from rich.text import Text
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Markdown, Static

from sftchat.text import StreamSanitizer, strip_control


class UserMessage(Static):
    """What the user asked, shown literally."""

    def __init__(self, text: str) -> None:
        super().__init__(Text(strip_control(text)), classes="user-message")
        self.text = text


class AssistantMessage(Vertical):
    """One answer: Markdown that grows as pieces arrive, then a line of details."""

    def __init__(self, turn_id: int) -> None:
        super().__init__(classes="assistant-message")
        self.turn_id = turn_id
        self.text = ""
        self._markdown = Markdown("", classes="answer")
        self._stream = None
        self._meta = Static("", classes="answer-meta")
        self._sanitizer = StreamSanitizer()

    def compose(self):
        yield self._markdown
        yield self._meta

    async def append(self, piece: str) -> None:
        piece = self._sanitizer.feed(piece)
        self.text += piece
        if self._stream is None:
            self._stream = Markdown.get_stream(self._markdown)
        await self._stream.write(piece)

    async def finish(self, text: str, meta: str) -> None:
        """Show the final text (authoritative: the stream may have held back a tail)."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        text = strip_control(text)
        if text != self.text:
            self.text = text
            await self._markdown.update(text)
        self._meta.update(Text(meta))
        self.add_class("done")


class ChatLog(VerticalScroll):
    """The scrolling list of messages; follows the bottom while answers stream in."""

    def add_user(self, text: str) -> UserMessage:
        message = UserMessage(text)
        self.mount(message)
        self.scroll_end(animate=False)
        return message

    def add_assistant(self, turn_id: int) -> AssistantMessage:
        message = AssistantMessage(turn_id)
        self.mount(message)
        self.scroll_end(animate=False)
        return message

    def add_notice(self, text: str) -> None:
        self.mount(Static(Text(text), classes="notice"))
        self.scroll_end(animate=False)

    def last_assistant(self) -> AssistantMessage | None:
        answers = self.query(AssistantMessage)
        return answers.last() if answers else None
