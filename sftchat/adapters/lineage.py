"""Where an adapter comes from and what became of it: the dataset it was trained on compared
with the adapter before it, its parent (`--from`), and the user's decision on it after the
app's review (accepted or rejected).

Every adapter folder holds `train.jsonl`, the exact snapshot it was trained on, each record
with its example id, so what changed between two adapters' datasets is read from the two
snapshots: ids added, ids removed, and ids whose text changed (edited). The decision is
written after publication, into `decision.json` beside the adapter's own files (the published
`sftchat.json` is never rewritten; older adapters have it as `review.json`). Nothing heavy is
imported: `sftchat adapters list|diff` answer at once.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sftchat.adapters.registry import SNAPSHOT_FILE, AdapterError, AdapterInfo

DECISION_FILE = "decision.json"
OLD_DECISION_FILE = "review.json"   # its name before the three "reviews" got a name each
DECISIONS = ("accepted", "rejected")


@dataclass
class DatasetChange:
    """How adapter B's training data differs from adapter A's (by example id)."""

    added: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    edited: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        parts = [f"+{len(self.added)}", f"~{len(self.edited)}", f"-{len(self.removed)}"]
        return " ".join(parts)


def read_snapshot(info: AdapterInfo) -> dict[int, dict]:
    """The records an adapter was trained on, by example id ({} for adapters without one)."""
    path = info.path / SNAPSHOT_FILE
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    return dict(_read_snapshot(str(path), info.name, stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=32)
def _read_snapshot(path: str, name: str, mtime_ns: int, size: int) -> tuple:
    # A published snapshot never changes: reading one of 50,000 records once per process
    # (keyed by its mtime and size) keeps the adapters list and screen quick to reopen.
    records = {}
    corrupted = AdapterError(f"adapter {name!r} has a corrupted {SNAPSHOT_FILE}; "
                             f"remove it with `sftchat adapters rm {name}`")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise corrupted from None
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            raise corrupted from None
        if isinstance(record, dict) and isinstance(record.get("id"), int):
            records[record["id"]] = record
    return tuple(records.items())


def dataset_change(before: AdapterInfo | None, after: AdapterInfo) -> DatasetChange:
    """What changed in the training data from `before` (None: nothing) to `after`."""
    old = read_snapshot(before) if before is not None else {}
    new = read_snapshot(after)
    return DatasetChange(
        added=sorted(set(new) - set(old)),
        removed=sorted(set(old) - set(new)),
        edited=sorted(i for i in set(new) & set(old) if new[i] != old[i]),
    )


def decision_of(info: AdapterInfo) -> dict | None:
    """{"status": "accepted"|"rejected", "at": ..., "verdict": ...} or None (no decision)."""
    for name in (DECISION_FILE, OLD_DECISION_FILE):
        try:
            decision = json.loads((info.path / name).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            continue
        return decision if isinstance(decision, dict) and decision.get("status") in DECISIONS \
            else None
    return None


def record_decision(info: AdapterInfo, status: str, verdict: str | None = None) -> None:
    """Record the user's decision on an adapter (atomically)."""
    if status not in DECISIONS:
        raise AdapterError(f"unknown decision {status!r}")
    record = {"status": status, "verdict": verdict,
              "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    handle, temporary = tempfile.mkstemp(prefix=".decision-", dir=info.path)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(record, out, ensure_ascii=False)
    os.replace(temporary, Path(info.path) / DECISION_FILE)


def describe_all(infos: list[AdapterInfo]) -> list[dict]:
    """`adapters list` rows: each adapter's summary, its parent, its dataset compared with
    the adapter before it (the one it would replace), and the decision on it."""
    rows = []
    for index, info in enumerate(infos):
        previous = infos[index - 1] if index else None
        decision = decision_of(info)
        rows.append({
            **info.summary(),
            "parent": info.meta.get("from_adapter"),
            "dataset_change": dataset_change(previous, info).to_dict(),
            "compared_with": previous.name if previous else None,
            "decision": decision["status"] if decision else None,
        })
    return rows
