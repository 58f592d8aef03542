"""ExampleStore: the real SQLite store in a temporary folder, no mocks."""

from __future__ import annotations

import sqlite3
import time

import pytest

from sftchat.dataset.store import (
    DB_NAME,
    SCHEMA_VERSION,
    Example,
    ExampleNotFound,
    ExampleStore,
    StoreError,
    snapshot_hash,
)


@pytest.fixture
def store(tmp_path):
    with ExampleStore(tmp_path / "data") as opened:
        yield opened


def _add_three(store: ExampleStore) -> list[int]:
    return [
        store.add("Name a colour", "Blue"),
        store.add("Translate", "Bonjour", input="Hello"),
        store.add("Capital of France?", "Paris", original_response="Lyon", source="chat"),
    ]


# --------------------------------------------------------------------------- schema / pragmas


def test_creates_database_in_wal_mode_with_current_schema_version(tmp_path):
    data_dir = tmp_path / "nested" / "data"
    with ExampleStore(data_dir) as store:
        assert store.path == data_dir / DB_NAME
        assert store.schema_version == SCHEMA_VERSION
    assert (data_dir / DB_NAME).is_file()
    raw = sqlite3.connect(data_dir / DB_NAME)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert SCHEMA_VERSION >= 1
    finally:
        raw.close()


def test_reopening_keeps_data_and_does_not_migrate_again(tmp_path):
    with ExampleStore(tmp_path) as store:
        example_id = store.add("keep me", "kept")
    with ExampleStore(tmp_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.get(example_id).instruction == "keep me"
        assert store.count() == 1


def test_newer_schema_version_is_refused_with_store_error(tmp_path):
    with ExampleStore(tmp_path) as store:
        store.add("a", "b")
    raw = sqlite3.connect(tmp_path / DB_NAME)
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="newer") as info:
        ExampleStore(tmp_path)
    assert "upgrade" in str(info.value)
    # The refused database is left exactly as it was.
    raw = sqlite3.connect(tmp_path / DB_NAME)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert raw.execute("SELECT COUNT(*) FROM examples").fetchone()[0] == 1
    finally:
        raw.close()


def test_a_file_that_is_not_a_database_gives_store_error(tmp_path):
    (tmp_path / DB_NAME).write_bytes(b"this is not an sqlite database, just text" * 100)
    with pytest.raises(StoreError, match="cannot open the dataset"):
        ExampleStore(tmp_path)


# --------------------------------------------------------------------------- add / get


def test_add_returns_increasing_ids_and_get_returns_every_field(store):
    before = time.time()
    first = store.add("Say hi", "Hi!")
    second = store.add("Add", "4", input="2 + 2", original_response="5", source="chat")
    after = time.time()
    assert isinstance(first, int) and isinstance(second, int)
    assert second > first

    example = store.get(second)
    assert isinstance(example, Example)
    assert example.id == second
    assert example.instruction == "Add"
    assert example.input == "2 + 2"
    assert example.response == "4"
    assert example.original_response == "5"
    assert example.source == "chat"
    assert before <= example.created_at <= after
    assert example.updated_at == example.created_at

    plain = store.get(first)
    assert plain.input == ""
    assert plain.original_response is None
    assert plain.source == "cli"


def test_to_record_uses_alpaca_field_names(store):
    example_id = store.add("Instr", "Resp", input="In")
    assert store.get(example_id).to_record() == {
        "id": example_id, "instruction": "Instr", "input": "In", "output": "Resp"}


def test_get_unknown_id_raises_example_not_found(store):
    store.add("a", "b")
    with pytest.raises(ExampleNotFound, match="no example with id 999"):
        store.get(999)
    assert issubclass(ExampleNotFound, StoreError)


@pytest.mark.parametrize("instruction, response", [
    ("", "a response"),
    ("   \n\t", "a response"),
    ("an instruction", ""),
    ("an instruction", "  \n "),
])
def test_empty_instruction_or_response_is_rejected_and_nothing_is_stored(
        store, instruction, response):
    store.add("existing", "row")
    with pytest.raises(StoreError, match="empty"):
        store.add(instruction, response)
    assert store.count() == 1
    assert [e.instruction for e in store.iter_examples()] == ["existing"]


def test_original_response_is_kept_after_editing_the_response(store):
    example_id = store.add("Capital of Australia?", "Sydney", original_response="Sydney",
                           source="chat")
    store.update(example_id, response="Canberra")
    example = store.get(example_id)
    assert example.response == "Canberra"
    assert example.original_response == "Sydney"
    assert example.source == "chat"


UNICODE_TEXTS = [
    "naïve café — déjà vu",
    "日本語のテキスト",
    "emoji 🤖🚀 and ZWJ 👩‍💻",
    "עברית ומילים",
    "quotes ' \" and backslash \\ and NUL-free control \t tab",
    "multi\nline\r\nwith\u2028separator",
]


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_unicode_round_trips_exactly(store, text):
    example_id = store.add(text, text + "!", input=text + "?", original_response=text)
    example = store.get(example_id)
    assert example.instruction == text
    assert example.response == text + "!"
    assert example.input == text + "?"
    assert example.original_response == text


# --------------------------------------------------------------------------- add_many


def test_add_many_inserts_all_rows_in_order(store):
    ids = store.add_many([
        ("one", "", "1", None, "import:x"),
        ("two", "ctx", "2", None, "import:x"),
        ("three", "", "3", "drei", "import:x"),
    ])
    assert len(ids) == 3 and ids == sorted(ids)
    assert [store.get(i).instruction for i in ids] == ["one", "two", "three"]
    assert store.get(ids[1]).input == "ctx"
    assert store.get(ids[2]).original_response == "drei"
    assert {store.get(i).source for i in ids} == {"import:x"}


def test_add_many_is_all_or_nothing(store):
    store.add("existing", "row")
    rows = [
        ("good one", "", "fine", None, "import:f"),
        ("good two", "", "fine", None, "import:f"),
        ("bad", "", "   ", None, "import:f"),   # empty response: invalid
        ("never reached", "", "x", None, "import:f"),
    ]
    with pytest.raises(StoreError):
        store.add_many(rows)
    assert store.count() == 1
    assert [e.instruction for e in store.iter_examples()] == ["existing"]
    # The store is still usable afterwards (the transaction was closed).
    new_id = store.add("after", "ok")
    assert store.get(new_id).instruction == "after"


def test_add_many_rolls_back_when_the_row_source_itself_fails(store):
    def rows():
        yield ("first", "", "1", None, "cli")
        raise RuntimeError("reader broke")

    with pytest.raises(RuntimeError):
        store.add_many(rows())
    assert store.count() == 0


# --------------------------------------------------------------------------- update / delete


def test_update_changes_only_given_fields_and_bumps_updated_at(store):
    example_id = store.add("old instruction", "old response", input="old input")
    created = store.get(example_id)
    time.sleep(0.01)
    updated = store.update(example_id, response="new response")
    assert updated.response == "new response"
    assert updated.instruction == "old instruction"
    assert updated.input == "old input"
    assert updated.created_at == created.created_at
    assert updated.updated_at > created.updated_at
    assert store.get(example_id) == updated

    cleared = store.update(example_id, input="", instruction="new instruction")
    assert cleared.input == ""
    assert cleared.instruction == "new instruction"
    assert cleared.response == "new response"


def test_update_with_empty_field_is_rejected_and_changes_nothing(store):
    example_id = store.add("instruction", "response")
    before = store.get(example_id)
    with pytest.raises(StoreError, match="empty"):
        store.update(example_id, response="")
    with pytest.raises(StoreError, match="empty"):
        store.update(example_id, instruction=" ", response="other")
    assert store.get(example_id) == before


def test_update_unknown_id_raises_example_not_found(store):
    with pytest.raises(ExampleNotFound):
        store.update(42, response="x")
    assert store.count() == 0


def test_delete_removes_the_example_and_unknown_id_raises(store):
    ids = _add_three(store)
    store.delete(ids[1])
    assert store.count() == 2
    with pytest.raises(ExampleNotFound):
        store.get(ids[1])
    with pytest.raises(ExampleNotFound):
        store.delete(ids[1])
    assert [e.id for e in store.iter_examples()] == [ids[0], ids[2]]


def test_ids_are_not_reused_after_delete(store):
    first = store.add("a", "b")
    second = store.add("c", "d")
    store.delete(second)
    third = store.add("e", "f")
    assert third > second > first


# --------------------------------------------------------------------------- reads


def test_count_and_iter_examples_in_id_order(store):
    assert store.count() == 0
    assert list(store.iter_examples()) == []
    ids = _add_three(store)
    assert store.count() == 3
    assert [e.id for e in store.iter_examples()] == ids


def test_iter_examples_search_matches_any_field_case_insensitively(store):
    ids = _add_three(store)
    assert [e.id for e in store.iter_examples(search="colour")] == [ids[0]]
    assert [e.id for e in store.iter_examples(search="HELLO")] == [ids[1]]   # input field
    assert [e.id for e in store.iter_examples(search="paris")] == [ids[2]]   # response field
    assert [e.id for e in store.iter_examples(search="n")] == ids
    assert list(store.iter_examples(search="nothing matches this")) == []
    # Search text is literal, not a LIKE pattern.
    assert list(store.iter_examples(search="%")) == []
    assert list(store.iter_examples(search="_")) == []


def test_iter_examples_limit_and_offset(store):
    ids = store.add_many([(f"instr {n}", "", f"resp {n}", None, "cli") for n in range(10)])
    assert [e.id for e in store.iter_examples(limit=3)] == ids[:3]
    assert [e.id for e in store.iter_examples(limit=3, offset=4)] == ids[4:7]
    assert [e.id for e in store.iter_examples(offset=8)] == ids[8:]
    assert list(store.iter_examples(limit=0)) == []
    assert list(store.iter_examples(offset=10)) == []
    assert [e.id for e in store.iter_examples(search="instr", limit=2, offset=1)] == ids[1:3]


def test_snapshot_returns_every_example(store):
    ids = _add_three(store)
    snapshot = store.snapshot()
    assert [e.id for e in snapshot] == ids
    assert snapshot == list(store.iter_examples())
    # The snapshot's transaction is closed: writes still work afterwards.
    store.add("after snapshot", "fine")
    assert store.count() == 4


def test_stats_on_empty_and_filled_store(store):
    empty = store.stats()
    assert empty["examples"] == 0
    assert empty["with_input"] == 0
    assert empty["edited_from_chat"] == 0
    assert empty["avg_instruction_chars"] == 0
    assert empty["sources"] == {}
    assert (empty["conversations"], empty["multi_turn"], empty["with_system"]) == (0, 0, 0)
    assert empty["schema_version"] == SCHEMA_VERSION

    store.add("abcd", "12", input="ctx")                                  # 4 / 2 chars
    store.add("ab", "1234", original_response="1234", source="chat")     # unchanged answer
    store.add("abcdef", "123456", original_response="wrong", source="chat")  # edited
    stats = store.stats()
    assert stats["examples"] == 3
    assert stats["with_input"] == 1
    assert stats["edited_from_chat"] == 1
    assert stats["avg_instruction_chars"] == 4.0
    assert stats["avg_response_chars"] == 4.0
    assert stats["sources"] == {"chat": 2, "cli": 1}
    assert stats["first_created"] <= stats["last_updated"]
    assert stats["schema_version"] == SCHEMA_VERSION


# --------------------------------------------------------------------------- concurrency


def test_two_stores_on_the_same_folder_see_each_others_writes(tmp_path):
    with ExampleStore(tmp_path) as first, ExampleStore(tmp_path) as second:
        a = first.add("from first", "1")
        assert second.count() == 1
        assert second.get(a).instruction == "from first"

        b = second.add("from second", "2")
        assert first.count() == 2
        assert first.get(b).instruction == "from second"

        second.update(a, response="changed by second")
        assert first.get(a).response == "changed by second"

        first.delete(b)
        with pytest.raises(ExampleNotFound):
            second.get(b)
        assert [e.id for e in second.snapshot()] == [a]


def test_committed_example_is_visible_to_a_fresh_connection_without_close(tmp_path):
    store = ExampleStore(tmp_path)
    try:
        example_id = store.add("durable", "yes")
        raw = sqlite3.connect(tmp_path / DB_NAME)
        try:
            row = raw.execute("SELECT instruction, response FROM examples WHERE id=?",
                              (example_id,)).fetchone()
        finally:
            raw.close()
        assert row == ("durable", "yes")
    finally:
        store.close()


# --------------------------------------------------------------------------- snapshot_hash


RECORDS = [
    {"instruction": "a", "input": "", "output": "1"},
    {"instruction": "b", "input": "x", "output": "2"},
]


def test_snapshot_hash_is_stable_hex_sha256():
    digest = snapshot_hash(RECORDS)
    assert len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    assert snapshot_hash(RECORDS) == digest
    assert snapshot_hash(iter([dict(r) for r in RECORDS])) == digest
    # Key order inside a record does not matter.
    reordered_keys = [dict(reversed(list(r.items()))) for r in RECORDS]
    assert snapshot_hash(reordered_keys) == digest


def test_snapshot_hash_is_order_and_content_sensitive():
    digest = snapshot_hash(RECORDS)
    assert snapshot_hash(list(reversed(RECORDS))) != digest
    changed = [RECORDS[0], {**RECORDS[1], "output": "3"}]
    assert snapshot_hash(changed) != digest
    assert snapshot_hash(RECORDS[:1]) != digest
    assert snapshot_hash([]) != digest
    # Record boundaries matter: the same text split differently is a different snapshot.
    assert snapshot_hash([{"a": "bc"}]) != snapshot_hash([{"a": "b"}, {"a": "c"}])
