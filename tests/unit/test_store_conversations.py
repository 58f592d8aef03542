"""Issue 19, item 1: an example is a conversation (a system prompt, earlier turns, which
earlier answers are learned), on the real SQLite store; a version-2 store migrates losslessly.
"""

from __future__ import annotations

import sqlite3

import pytest

from sftchat.conversation import Turn
from sftchat.dataset.pins import Pin, Pins
from sftchat.dataset.store import (
    DB_NAME,
    MIGRATIONS,
    Example,
    ExampleStore,
    Rejected,
    StoreError,
    snapshot_hash,
)

CONTEXT = (Turn("Capital of France?", "Paris.", learn=True),
           Turn("Translate", "Bonjour", input="Hello"))


@pytest.fixture
def store(tmp_path):
    with ExampleStore(tmp_path / "data") as opened:
        yield opened


def test_a_version_2_store_opens_as_version_3_with_everything_kept(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    raw = sqlite3.connect(data / DB_NAME)
    for migration in MIGRATIONS[:2]:
        raw.executescript(migration)
    raw.execute("PRAGMA user_version=2")
    raw.execute("INSERT INTO examples (instruction, input, response, original_response, source, "
                "created_at, updated_at) VALUES ('Q?', 'in', 'Fixed.', 'Broken.', 'chat', 1.5, "
                "2.5), ('R?', '', 'Plain.', NULL, 'cli', 3.0, 3.0)")
    raw.execute("INSERT INTO rejected (example_id, instruction, input, response, source, "
                "created_at) VALUES (1, 'Q?', 'in', 'Broken.', 'edit', 1.5), "
                "(NULL, 'Joke?', '', 'No.', 'bad', 4.0)")
    raw.execute("INSERT INTO pins (instruction, input, response, adapter, created_at) "
                "VALUES ('2+2?', '', '4', 'first', 5.0)")
    raw.commit()
    raw.close()
    v2_records = [{"id": 1, "instruction": "Q?", "input": "in", "output": "Fixed."},
                  {"id": 2, "instruction": "R?", "input": "", "output": "Plain."}]

    with ExampleStore(data) as store:
        assert store.schema_version == len(MIGRATIONS) == 3
        assert store.snapshot() == [
            Example(1, "Q?", "in", "Fixed.", "Broken.", "chat", 1.5, 2.5, "", ()),
            Example(2, "R?", "", "Plain.", None, "cli", 3.0, 3.0, "", ())]
        assert list(store.iter_rejected()) == [
            Rejected(1, 1, "Q?", "in", "Broken.", "edit", 1.5, "", ()),
            Rejected(2, None, "Joke?", "", "No.", "bad", 4.0, "", ())]
        assert Pins(store).all() == [Pin(1, "2+2?", "", "4", "first", 5.0, "", ())]
        # A migrated example trains exactly as before: same records, same snapshot hash.
        records = [example.to_record() for example in store.snapshot()]
        assert records == v2_records
        assert snapshot_hash(records) == snapshot_hash(v2_records)
        assert list(store.preference_records("dpo")) == [
            {"prompt": "Q?\n\nin", "chosen": "Fixed.", "rejected": "Broken."}]
        # And the migrated store takes conversations.
        new = store.add("Its population?", "2.1M", system="Be terse.", context=CONTEXT[:1])
        assert store.get(new).context == CONTEXT[:1]
    with ExampleStore(data) as store:   # reopened: migrated once, not again
        assert store.schema_version == 3 and store.count() == 3


def test_add_and_get_a_conversation(store):
    plain = store.add("Say hi", "Hi!")
    example_id = store.add("Its population?", "About 2.1 million.", system="Be terse.",
                           context=CONTEXT, original_response="Dunno.", source="chat")
    example = store.get(example_id)
    assert (example.system, example.context) == ("Be terse.", CONTEXT)
    assert example.is_conversation and not store.get(plain).is_conversation
    assert example.to_record() == {
        "id": example_id, "instruction": "Its population?", "input": "",
        "output": "About 2.1 million.", "system": "Be terse.",
        "context": [{"instruction": "Capital of France?", "response": "Paris.", "learn": True},
                    {"instruction": "Translate", "response": "Bonjour", "input": "Hello"}]}
    assert store.get(plain).to_record() == {"id": plain, "instruction": "Say hi", "input": "",
                                            "output": "Hi!"}
    # The edited answer's original is rejected in the same conversation.
    (rejected,) = store.rejected_for(example_id)
    assert (rejected.response, rejected.system, rejected.context) == \
        ("Dunno.", "Be terse.", CONTEXT)


def test_turns_given_as_dicts_are_stored_as_turns(store):
    ids = store.add_many([
        ("q", "", "a", None, "import:x", "Sys", [{"instruction": "q0", "response": "a0",
                                                  "learn": True}]),
        ("r", "", "b", None, "import:x")])
    assert store.get(ids[0]).context == (Turn("q0", "a0", learn=True),)
    assert (store.get(ids[1]).system, store.get(ids[1]).context) == ("", ())


@pytest.mark.parametrize("turn, fragment", [
    (Turn("", "a0"), "an earlier turn's instruction is empty"),
    (Turn("q0", "  "), "an earlier turn's response is empty"),
])
def test_an_empty_earlier_turn_is_refused_and_nothing_is_stored(store, turn, fragment):
    with pytest.raises(StoreError, match=fragment):
        store.add_many([("ok", "", "fine", None, "cli"),
                        ("q", "", "a", None, "cli", "", [turn])])
    assert store.count() == 0


def test_update_system_and_context(store):
    example_id = store.add("Its population?", "2.1M", context=CONTEXT)
    updated = store.update(example_id, system="Be terse.")
    assert (updated.system, updated.context) == ("Be terse.", CONTEXT)
    updated = store.update(example_id, context=CONTEXT[1:])
    assert (updated.system, updated.context) == ("Be terse.", CONTEXT[1:])
    updated = store.update(example_id, system="", context=())
    assert not updated.is_conversation
    assert updated.to_record() == {"id": example_id, "instruction": "Its population?",
                                   "input": "", "output": "2.1M"}


def test_search_finds_text_of_earlier_turns_and_the_system_prompt(store):
    conversation = store.add("Its population?", "2.1M", system="You are a GEOGRAPHER.",
                             context=CONTEXT)
    store.add("Unrelated", "Text")
    assert [e.id for e in store.iter_examples(search="capital of france")] == [conversation]
    assert [e.id for e in store.iter_examples(search="geographer")] == [conversation]
    assert [e.id for e in store.iter_examples(search="bonjour")] == [conversation]


def test_rejected_answers_and_pins_keep_their_conversation(store):
    example_id = store.add("Its population?", "2.1M", context=CONTEXT[:1],
                           rejected=[("Tokyo has 14M.", "compare")])
    bad = store.add_rejected("Its size?", "Blue.", system="Be terse.", context=CONTEXT[:1])
    assert [(r.response, r.context) for r in store.rejected_for(example_id)] == \
        [("Tokyo has 14M.", CONTEXT[:1])]
    assert [(r.id, r.system, r.context) for r in store.iter_rejected()][-1] == \
        (bad, "Be terse.", CONTEXT[:1])
    first = Pins(store).add("Its population?", "2.1M", context=CONTEXT[:1], system="S")
    alone = Pins(store).add("Its population?", "?")        # another conversation: another pin
    again = Pins(store).add("Its population?", "2.2M", context=CONTEXT[:1], system="S")
    assert again == first != alone
    pin = Pins(store).get(first)
    assert (pin.response, pin.system, pin.context) == ("2.2M", "S", CONTEXT[:1])


def test_stats_count_conversations(store):
    store.add("q", "a")
    store.add("q", "a", system="S")
    store.add("q", "a", context=CONTEXT)
    store.add("q", "a", system="S", context=CONTEXT[:1])
    stats = store.stats()
    assert (stats["examples"], stats["conversations"], stats["multi_turn"],
            stats["with_system"]) == (4, 3, 2, 2)
    store.update(2, system="")
    assert store.stats()["conversations"] == 2
