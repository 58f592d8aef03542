"""The adapters screen: the published adapters with their metadata; pick one to chat with.

A modal over the chat. Newest first, the active adapter marked with "●", each with its
lineage (`sftchat.adapters.lineage`): what changed in its data since the adapter before it (+added
~edited -removed examples), its parent when trained `--from` one, its replay and the decision on it.
Enter or `u` dismisses with the highlighted adapter's name, `b` with "none" (the base model),
`p` with "previous" (roll back to what answered before), Escape with None (change nothing).
Switching is the caller's job: this screen only chooses. `e` opens the export dialog for the
highlighted adapter (`screens.export`) over this screen.

Listing reads every adapter's metadata and compares each `train.jsonl` snapshot with the one
before it (tens of thousands of records each), so it runs in a thread worker: the dialog opens
at once with "Loading adapters…" and the table fills when the worker posts `AdaptersListed`.
A folder that cannot be read (permissions, a corrupted or undecodable snapshot, a folder
removed meanwhile) is said in the dialog; Escape and `b` keep working.

Adapter names and metadata come from files on disk, so every cell is `rich.text.Text`
without control characters, never markup.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Label
from textual.worker import Worker, WorkerState

from ...adapters.lineage import describe_all
from ...adapters.registry import AdapterInfo, list_adapters
from ...text import one_line, strip_control

ACTIVE_MARK = "● "
BASE_MODEL_WIDTH = 40
EMPTY_TEXT = "No adapters yet — train one with ctrl+t or /train"
LOADING_TEXT = "Loading adapters…"
COLUMNS = ("name", "created", "examples", "data", "from", "replay", "final loss", "decision",
           "base model")


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


@dataclass
class AdaptersListed(Message):
    """The listing worker read the folder: `adapters` oldest first, `rows` their lineage."""

    adapters: list[AdapterInfo]
    rows: list[dict]


class AdaptersScreen(ModalScreen[str | None]):
    """Lists `adapters_dir`; `active` is the adapter in use now (None: the base model)."""

    CSS_PATH = "adapters.tcss"
    AUTO_FOCUS = "#adapters-table"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("u", "use", "Use"),
        Binding("b", "use_base", "Base model"),
        Binding("p", "previous", "Previous"),
        Binding("e", "export", "Export"),
        Binding("escape", "close", "Close"),
    ]

    def __init__(self, adapters_dir: Path, active: str | None) -> None:
        super().__init__()
        self.adapters_dir = Path(adapters_dir)
        self.active = None if active in (None, "none") else active
        # Newest first, filled by the listing worker; empty while it reads.
        self.adapters: list[AdapterInfo] = []
        self.rows: list[dict] = []
        self.error: str | None = None
        self.loading = True

    def compose(self):
        with Vertical(id="adapters-dialog"):
            yield Label(Text("Adapters"), id="adapters-title")
            active = (f"Active: {self.active}" if self.active
                      else "Active: the base model (no adapter)")
            yield Label(_plain(active), id="adapters-active")
            # Says "loading", then why there is nothing to list; hidden once rows show.
            yield Label(Text(LOADING_TEXT), id="adapters-status")
            yield DataTable(id="adapters-table", cursor_type="row", zebra_stripes=True)
            yield Label(Text("Enter/u use · b base model · p previous (roll back) · e export · "
                             "Esc close"),
                        id="adapters-hint")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#adapters-table", DataTable)
        for label in COLUMNS:
            table.add_column(label, key=label)
        self._list_adapters()

    @work(thread=True, exclusive=True, group="adapters-list", exit_on_error=False)
    def _list_adapters(self) -> None:
        """Read the folder off the event loop; a failure reaches `on_worker_state_changed`."""
        found = list_adapters(self.adapters_dir)
        self.post_message(AdaptersListed(found, describe_all(found)))

    def on_adapters_listed(self, message: AdaptersListed) -> None:
        self.loading = False
        self.adapters = list(reversed(message.adapters))  # newest first
        self.rows = list(reversed(message.rows))
        if not self.adapters:
            self._show_status(EMPTY_TEXT)
            return
        table = self.query_one("#adapters-table", DataTable)
        for info, row in zip(self.adapters, self.rows):
            table.add_row(*row_cells(info, row, self.active), key=info.name)
        names = [info.name for info in self.adapters]
        if self.active in names:
            table.move_cursor(row=names.index(self.active), animate=False)
        self.query_one("#adapters-status", Label).display = False

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state is WorkerState.ERROR and event.worker.group == "adapters-list":
            # Anything reading the folder raised (AdapterError, OSError, a snapshot that is
            # not UTF-8): the dialog says so instead of a traceback; b and Escape still work.
            self.loading = False
            self.error = f"Cannot list the adapters in {self.adapters_dir}: {event.worker.error}"
            self._show_status(self.error)

    def _show_status(self, text: str) -> None:
        """Nothing to choose from: the status line says why, and the empty table goes."""
        # Error text quotes file names and file contents: no control characters, no markup.
        self.query_one("#adapters-status", Label).update(Text(strip_control(text)))
        self.query_one("#adapters-table", DataTable).remove()

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

    def action_export(self) -> None:
        from sftchat.tui.screens.export import ExportScreen

        name = self._highlighted()
        if name is None:
            self.notify("No adapter to export.", markup=False)
            return
        self.app.push_screen(ExportScreen(name, self.app.settings.workspace))
