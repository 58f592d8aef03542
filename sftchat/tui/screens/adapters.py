"""The adapters screen: the published adapters with their metadata; pick one to chat with.

A modal over the chat. Newest first, the active adapter marked with "●", each with its
lineage (`sftchat.adapters.lineage`): what changed in its data since the adapter before it (+added
~edited -removed examples), its parent when trained `--from` one, its replay and the decision on it.
Enter or `u` dismisses with the highlighted adapter's name, `b` with "none" (the base model),
`p` with "previous" (roll back to what answered before), Escape with None (change nothing).
Switching is the caller's job: this screen only chooses.

Adapter names and metadata come from files on disk, so every cell is `rich.text.Text`
without control characters, never markup.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Label

from ...adapters import AdapterError, AdapterInfo, list_adapters
from ...lineage import describe_all
from ...text import one_line, strip_control

ACTIVE_MARK = "● "
BASE_MODEL_WIDTH = 40
EMPTY_TEXT = "No adapters yet — train one with ctrl+t or /train"


def _plain(text: object, width: int = 64) -> Text:
    return Text(one_line(strip_control(str(text)), width))


def format_created(value: str) -> str:
    """An ISO timestamp as local "YYYY-MM-DD HH:MM"; anything unparsable as it is."""
    if not value:
        return "—"
    try:
        stamp = dt.datetime.fromisoformat(value)
    except ValueError:
        return value
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone()  # the trainer writes UTC; people read local time
    return stamp.strftime("%Y-%m-%d %H:%M")


def format_loss(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "—"


def row_cells(info: AdapterInfo, row: dict, active: str | None) -> tuple[Text, ...]:
    """One adapter's cells; `row` is its `lineage.describe_all` row."""
    mark = ACTIVE_MARK if info.name == active else "  "
    if info.meta.get("corrupted"):
        base = f"(unreadable {info.path.name}/sftchat.json)"
    else:
        base = row["base_model"] or "?"
    change = row["dataset_change"]
    replay = row["replay"] or {}
    return (
        Text(mark + one_line(strip_control(info.name), 64)),
        _plain(format_created(row["created"])),
        Text(str(row["examples"]), justify="right"),
        Text(f"+{len(change['added'])} ~{len(change['edited'])} -{len(change['removed'])}"),
        _plain(row["parent"] or "—", 24),
        Text(f"{replay['reproduced']}/{replay['examples']}" if replay.get("examples")
             else "—", justify="right"),
        Text(format_loss(row["final_loss"]), justify="right"),
        Text(row["decision"] or "—"),
        _plain(base, BASE_MODEL_WIDTH),
    )


class AdaptersScreen(ModalScreen[str | None]):
    """Lists `adapters_dir`; `active` is the adapter in use now (None: the base model)."""

    CSS_PATH = "adapters.tcss"
    AUTO_FOCUS = "#adapters-table"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("u", "use", "Use"),
        Binding("b", "use_base", "Base model"),
        Binding("p", "previous", "Previous"),
        Binding("escape", "close", "Close"),
    ]

    def __init__(self, adapters_dir: Path, active: str | None) -> None:
        super().__init__()
        self.adapters_dir = Path(adapters_dir)
        self.active = None if active in (None, "none") else active
        self.adapters: list[AdapterInfo] = []
        self.rows: list[dict] = []
        self.error: str | None = None

    def compose(self):
        try:
            found = list_adapters(self.adapters_dir)
            self.rows = list(reversed(describe_all(found)))  # newest first
            self.adapters = list(reversed(found))
        except (AdapterError, OSError) as exc:
            self.error = f"Cannot list the adapters in {self.adapters_dir}: {exc}"
        with Vertical(id="adapters-dialog"):
            yield Label(Text("Adapters"), id="adapters-title")
            active = (f"Active: {self.active}" if self.active
                      else "Active: the base model (no adapter)")
            yield Label(_plain(active), id="adapters-active")
            if self.error:
                yield Label(Text(self.error), id="adapters-empty")
            elif not self.adapters:
                yield Label(Text(EMPTY_TEXT), id="adapters-empty")
            else:
                yield DataTable(id="adapters-table", cursor_type="row", zebra_stripes=True)
            yield Label(Text("Enter/u use · b base model · p previous (roll back) · Esc close"),
                        id="adapters-hint")
        yield Footer()

    def on_mount(self) -> None:
        if not self.adapters:
            return
        table = self.query_one("#adapters-table", DataTable)
        for label in ("name", "created", "examples", "data", "from", "replay", "final loss",
                      "decision", "base model"):
            table.add_column(label, key=label)
        for info, row in zip(self.adapters, self.rows):
            table.add_row(*row_cells(info, row, self.active), key=info.name)
        names = [info.name for info in self.adapters]
        if self.active in names:
            table.move_cursor(row=names.index(self.active), animate=False)

    def _highlighted(self) -> str | None:
        if not self.adapters:
            return None
        table = self.query_one("#adapters-table", DataTable)
        return self.adapters[min(max(table.cursor_row, 0), len(self.adapters) - 1)].name

    @on(DataTable.RowSelected, "#adapters-table")
    def _row_selected(self) -> None:
        self.action_use()

    def action_use(self) -> None:
        name = self._highlighted()
        if name is not None:
            self.dismiss(name)

    def action_use_base(self) -> None:
        self.dismiss("none")

    def action_previous(self) -> None:
        self.dismiss("previous")

    def action_close(self) -> None:
        self.dismiss(None)
