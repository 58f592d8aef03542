"""The data a training run trains on: its snapshot of the curated dataset, read in one
transaction (with the rejected answers a preference objective may learn from), and its
examples tokenized through the one template (`sftchat.prompts`). A resumed run's snapshot is
its checkpoint's, whatever the dataset holds now."""

from __future__ import annotations

import json
from pathlib import Path

from sftchat.adapters import registry as adapter_registry
from sftchat.config import Settings
from sftchat.dataset.store import ExampleStore
from sftchat.prompts import ExampleTooLongError, encode_example
from sftchat.training.checkpoint import Resumable
from sftchat.training.errors import TrainingError
from sftchat.training.events import plural


def read_snapshot(settings: Settings, staging: Path,
              resumed: Resumable | None) -> tuple[list[dict], list[dict]]:
    """(the records the run trains on, the rejected answers it may learn from), read in one
    transaction (a resumed run: its own, whatever the dataset holds now); the records are
    written to the staging folder as `train.jsonl`."""
    if resumed is not None:
        records, rejected = resumed.records, resumed.rejected
    else:
        with ExampleStore(settings.data_dir) as store:
            examples, answers = store.training_snapshot()
        records = [example.to_record() for example in examples]
        rejected = [answer.to_record() for answer in answers]
    if not records:
        raise TrainingError(
            "the dataset is empty: add examples first (`sftchat data add` or "
            "`sftchat data import FILE`), then train" if not rejected else
            f"the dataset holds {plural(len(rejected), 'rejected answer')} but no curated "
            "one: training "
            "needs answers to give as well as answers to avoid; save a good answer (ctrl+s, "
            "or `sftchat data add --instruction … --response …`), then train")
    write_lines(staging / adapter_registry.SNAPSHOT_FILE, records)
    return records, rejected


def write_lines(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def encode_all(records: list[dict], tokenizer, template: str, max_length: int,
                strict: bool = False):
    """(records kept, their encodings, ids of examples skipped as too long).

    An example whose response alone does not fit in `max_length` is skipped, as axolotl
    drops long samples, so one long answer does not refuse the whole run; with `strict`, or
    when nothing is left, the run is refused instead, naming the example."""
    kept, encoded, skipped = [], [], []
    reason = None
    for record in records:
        try:
            encoded.append(encode_example(tokenizer, template, record, max_length))
            kept.append(record)
        except ExampleTooLongError as exc:
            if strict:
                raise TrainingError(f"example {record['id']}: {exc} (or drop --strict to "
                                    "skip it)") from exc
            skipped.append(record["id"])
            reason = exc
    if not kept:
        ids = ", ".join(str(i) for i in skipped[:10]) + (", …" if len(skipped) > 10 else "")
        raise TrainingError(f"no example fits in max length {max_length} (ids {ids}): "
                            f"{reason}")
    return kept, encoded, skipped
