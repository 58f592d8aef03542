"""Rejected answers, preference exports and pins (issue 12, items 2 and 4), on the real store
and through the real command line (in-process: `sftchat.cli.main`).

A rejected answer is a model answer that was not chosen: an edited answer's original, the
losing answers of a comparison, a "bad answer" with no replacement, or `data add --rejected`.
`data export --format dpo|kto` writes them as the records TRL's DPO and KTO trainers load;
here they are loaded with `datasets`, as those trainers do.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from sftchat.cli import main
from sftchat.dataset.pins import PinNotFound, Pins
from sftchat.conversation import Turn
from sftchat.dataset.store import DB_NAME, MIGRATIONS, ExampleStore, StoreError


def _cli(ws, *args: str) -> int:
    return main(["--workspace", str(ws), *args])


def test_an_edited_answer_keeps_the_models_original_as_rejected(ws):
    with ExampleStore(ws / "data") as store:
        edited = store.add("Best editor?", "The one you know.", original_response="Emacs.",
                           source="chat")
        kept = store.add("Hi?", "Hello.", original_response="Hello.", source="chat")
        compared = store.add("Capital of France?", "Paris.", source="chat",
                             rejected=[("Lyon.", "compare"), ("", "compare")])
        assert [(r.response, r.source) for r in store.rejected_for(edited)] == \
            [("Emacs.", "edit")]
        assert store.rejected_for(kept) == []  # saved unchanged: nothing was rejected
        assert [(r.response, r.source) for r in store.rejected_for(compared)] == \
            [("Lyon.", "compare")]  # an empty answer is not an answer
        bad = store.add_rejected("Tell a joke.", "No.")
        assert [r.id for r in store.iter_rejected()][-1] == bad
        store.delete(compared)
        assert store.rejected_for(compared) == []
        assert store.stats()["rejected_answers"] == 2


def test_export_dpo_and_kto_load_with_datasets(ws, tmp_path, capsys):
    import datasets

    assert _cli(ws, "data", "add", "--instruction", "Best editor?", "--response", "Vim.",
                "--rejected", "Emacs.", "--rejected", "Notepad.") == 0
    assert _cli(ws, "data", "add", "--instruction", "Translate", "--input", "café",
                "--response", "coffee") == 0
    with ExampleStore(ws / "data") as store:
        store.add("Say hi.", "Hi!", original_response="Greetings, human.", source="chat")
        store.add_rejected("Tell a joke.", "No.")   # flagged bad, no better answer yet

    dpo_file, kto_file = tmp_path / "prefs.jsonl", tmp_path / "kto.json"
    assert _cli(ws, "data", "export", str(dpo_file), "--format", "dpo") == 0
    assert _cli(ws, "data", "export", str(kto_file), "--format", "kto") == 0
    assert "exported 3 preference records" in capsys.readouterr().err
    cache = str(tmp_path / "hf-cache")
    dpo = datasets.load_dataset("json", data_files=str(dpo_file), split="train",
                                cache_dir=cache).to_list()
    assert dpo == [
        {"prompt": "Best editor?", "chosen": "Vim.", "rejected": "Emacs."},
        {"prompt": "Best editor?", "chosen": "Vim.", "rejected": "Notepad."},
        {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Greetings, human."},
    ]
    kto = datasets.load_dataset("json", data_files=str(kto_file), split="train",
                                cache_dir=cache).to_list()
    assert kto == [
        {"prompt": "Best editor?", "completion": "Vim.", "label": True},
        {"prompt": "Translate\n\ncafé", "completion": "coffee", "label": True},
        {"prompt": "Say hi.", "completion": "Hi!", "label": True},
        {"prompt": "Best editor?", "completion": "Emacs.", "label": False},
        {"prompt": "Best editor?", "completion": "Notepad.", "label": False},
        {"prompt": "Say hi.", "completion": "Greetings, human.", "label": False},
        {"prompt": "Tell a joke.", "completion": "No.", "label": False},
    ]


def test_trl_reads_the_preference_exports_where_it_is_installed(ws, tmp_path):
    """TRL is not a dependency of sftchat (nor of its tests): where it is installed, its own
    data utilities must take the exported records as they are."""
    data_utils = pytest.importorskip("trl.data_utils", reason="TRL is not installed")
    with ExampleStore(ws / "data") as store:
        store.add("Best editor?", "Vim.", rejected=[("Emacs.", "cli")])
        dpo = list(store.preference_records("dpo"))
        kto = list(store.preference_records("kto"))
    assert data_utils.is_conversational(dpo[0]) is False  # the standard (text) format
    assert data_utils.is_conversational(kto[0]) is False
    assert set(dpo[0]) == {"prompt", "chosen", "rejected"}
    with ExampleStore(ws / "data") as store:
        store.add("Why?", "Because.", system="Be terse.", rejected=[("Dunno.", "cli")])
        dpo = list(store.preference_records("dpo"))
        kto = list(store.preference_records("kto"))
    assert all(data_utils.is_conversational(record) for record in dpo + kto)


def test_conversations_export_in_trls_conversational_format(ws, tmp_path):
    """Once one record is a conversation the whole file is conversational (a column holds one
    type); the prompt is every message before the answer, the system message first."""
    import datasets

    earlier = (Turn("Capital of France?", "Paris.", learn=True),)
    with ExampleStore(ws / "data") as store:
        store.add("Best editor?", "Vim.", rejected=[("Emacs.", "cli")])
        store.add("Its population?", "2.1M.", system="Be terse.", context=earlier,
                  rejected=[("14M.", "compare")])
        store.add_rejected("Its size?", "Blue.", context=earlier)
    user = {"role": "user", "content": "Best editor?"}
    conversation = [{"role": "system", "content": "Be terse."},
                    {"role": "user", "content": "Capital of France?"},
                    {"role": "assistant", "content": "Paris."},
                    {"role": "user", "content": "Its population?"}]

    def answer(text):
        return [{"role": "assistant", "content": text}]

    dpo_file, kto_file = tmp_path / "dpo.jsonl", tmp_path / "kto.json"
    assert _cli(ws, "data", "export", str(dpo_file), "--format", "dpo") == 0
    assert _cli(ws, "data", "export", str(kto_file), "--format", "kto") == 0
    cache = str(tmp_path / "hf-cache")
    dpo = datasets.load_dataset("json", data_files=str(dpo_file), split="train",
                                cache_dir=cache).to_list()
    assert dpo == [
        {"prompt": [user], "chosen": answer("Vim."), "rejected": answer("Emacs.")},
        {"prompt": conversation, "chosen": answer("2.1M."), "rejected": answer("14M.")}]
    kto = datasets.load_dataset("json", data_files=str(kto_file), split="train",
                                cache_dir=cache).to_list()
    assert kto == [
        {"prompt": [user], "completion": answer("Vim."), "label": True},
        {"prompt": conversation, "completion": answer("2.1M."), "label": True},
        {"prompt": [user], "completion": answer("Emacs."), "label": False},
        {"prompt": conversation, "completion": answer("14M."), "label": False},
        {"prompt": conversation[1:3] + [{"role": "user", "content": "Its size?"}],
         "completion": answer("Blue."), "label": False}]


def test_dpo_stays_standard_when_no_pair_is_a_conversation(ws):
    with ExampleStore(ws / "data") as store:
        store.add("Best editor?", "Vim.", rejected=[("Emacs.", "cli")])
        store.add("Its population?", "2.1M.", system="Be terse.")   # no rejected answer
        assert list(store.preference_records("dpo")) == [
            {"prompt": "Best editor?", "chosen": "Vim.", "rejected": "Emacs."}]
        assert isinstance(next(store.preference_records("kto"))["prompt"], list)
        with pytest.raises(StoreError, match="unknown preference format 'orpo'"):
            list(store.preference_records("orpo"))


def test_a_version_1_store_moves_edited_originals_into_rejected(ws):
    """Stores made before rejected answers existed keep their edits as preference data."""
    data = ws / "data"
    data.mkdir()
    raw = sqlite3.connect(data / DB_NAME)
    raw.executescript(MIGRATIONS[0])
    raw.execute("INSERT INTO examples (instruction, input, response, original_response, "
                "source, created_at, updated_at) VALUES ('Q?', '', 'Fixed.', 'Broken.', "
                "'chat', 1, 1), ('R?', '', 'Same.', 'Same.', 'chat', 2, 2)")
    raw.execute("PRAGMA user_version=1")
    raw.commit()
    raw.close()
    with ExampleStore(data) as store:
        assert store.schema_version == len(MIGRATIONS)
        assert [(r.example_id, r.response, r.source) for r in store.iter_rejected()] == \
            [(1, "Broken.", "edit")]
        assert list(store.preference_records("dpo")) == \
            [{"prompt": "Q?", "chosen": "Fixed.", "rejected": "Broken."}]


def test_pins_add_replace_list_and_remove(ws, capsys):
    assert _cli(ws, "pins", "add", "--instruction", "2+2?", "--response", "4") == 0
    assert _cli(ws, "pins", "add", "--instruction", "2+2?", "--response", "Four.") == 0
    assert capsys.readouterr().out.split() == ["1", "1"]  # one pin per prompt
    assert _cli(ws, "pins", "list", "--json") == 0
    (pin,) = json.loads(capsys.readouterr().out)
    assert (pin["instruction"], pin["response"]) == ("2+2?", "Four.")
    with ExampleStore(ws / "data") as store:
        assert store.count() == 0  # a pin is not an example: it is never trained on
        with pytest.raises(PinNotFound, match="no pin with id 7"):
            Pins(store).remove(7)
    assert _cli(ws, "pins", "rm", "7") != 0
    assert capsys.readouterr().err.strip() == \
        "sftchat: error: no pin with id 7; `sftchat pins list` shows them"
    assert _cli(ws, "pins", "rm", "1") == 0
    assert _cli(ws, "pins", "list") == 0
    assert "no pins yet" in capsys.readouterr().err
