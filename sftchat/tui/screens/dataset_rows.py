"""One page of the dataset screen: reading it from the store and the cells of its rows.

Kept apart from the screen (`dataset.py`) so that what is read, and how an example is shown,
can be read without the screen's workers and messages. `read_page` runs in the
screen's page worker, never on the event loop.
"""

from __future__ import annotations

from rich.text import Text

from ...conversation import conversation_marks
from ...dataset.store import Example, ExampleStore
from ...text import one_line, strip_control

PAGE_SIZE = 200
# Cell widths in characters: with the table's padding and scrollbar, under 120 columns, so
# a common terminal shows every column without scrolling sideways.
INSTRUCTION_WIDTH = 32
RESPONSE_WIDTH = 46
SOURCE_WIDTH = 16


def _cell(text: str, width: int) -> Text:
    """One table cell of untrusted text: no control characters, one line, never markup."""
    return Text(one_line(strip_control(text), width))


def is_edited(example: Example) -> bool:
    """The example came from a chat answer that the user changed before saving (or later)."""
    return example.original_response is not None and example.original_response != example.response


def conversation_mark(example: Example) -> str:
    """"" for a single-turn example; "[3 turns] ", "[system] ", "[2 turns, system] "."""
    parts = conversation_marks(example)
    return f"[{', '.join(parts)}] " if parts else ""


def row_cells(example: Example) -> tuple[Text, ...]:
    return (
        Text(str(example.id), justify="right"),
        _cell(conversation_mark(example) + example.instruction, INSTRUCTION_WIDTH),
        _cell(example.response, RESPONSE_WIDTH),
        _cell(example.source, SOURCE_WIDTH),
        Text("yes" if is_edited(example) else ""),
    )


def read_page(store: ExampleStore, search: str, offset: int,
              cursor_row: int) -> tuple[list[Example], int, int]:
    """The page at `offset` (PAGE_SIZE + 1 rows: the extra one only tells whether a next page
    exists), with the offset and cursor row it ends up at: a page that emptied (its last rows
    deleted, here or by another process) steps back to the last page that has rows."""
    query = search if search.strip() else None
    rows = list(store.iter_examples(query, PAGE_SIZE + 1, offset))
    while not rows and offset > 0:
        offset = max(0, offset - PAGE_SIZE)
        cursor_row = PAGE_SIZE - 1
        rows = list(store.iter_examples(query, PAGE_SIZE + 1, offset))
    return rows, offset, cursor_row
