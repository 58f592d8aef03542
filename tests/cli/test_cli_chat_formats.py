"""`sftchat data import/export --format alpaca|sharegpt|messages` as a real subprocess.

Real files, a real store: what is imported is read back from the database, what is exported
is parsed back from disk, and a refused import leaves the store exactly as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, ok, sftchat

from sftchat.dataset.store import ExampleStore

# (instruction, input, response); inputs empty, so chat round trips are exact.
ROWS = [("Name a colour", "", "Blue"), ("Unicode ✓", "", "日本語 🤖\nsecond line")]


def store_rows(workspace: Path) -> list[tuple]:
    with ExampleStore(workspace / "data") as store:
        return [(e.instruction, e.input, e.response) for e in store.iter_examples()]


def fill(workspace: Path, rows=ROWS) -> Path:
    for instruction, input_text, response in rows:
        ok(sftchat(workspace, "data", "add", "--instruction", instruction,
                   "--response", response, "--input", input_text, in_process=True))
    return workspace


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8")
    return path


def turns(schema: str, *pairs: tuple[str, str]) -> dict:
    role, text, key = {"sharegpt": ("from", "value", "conversations"),
                       "messages": ("role", "content", "messages")}[schema]
    return {key: [{role: r, text: t} for r, t in pairs]}


def test_help_documents_the_record_formats():
    import_help = ok(sftchat(None, "data", "import", "--help", in_process=True)).stdout
    assert "{auto,alpaca,sharegpt,messages}" in import_help
    export_help = ok(sftchat(None, "data", "export", "--help", in_process=True)).stdout
    assert "{alpaca,sharegpt,messages,dpo,kto}" in export_help  # preference data: export only
    assert "multi-turn" in import_help and '"weight": 0' in import_help
    assert "--flatten" in export_help and "conversational" in export_help


def test_import_sharegpt_json_with_a_system_message(ws, tmp_path):
    path = tmp_path / "chats.json"
    path.write_text(json.dumps({"train": [
        turns("sharegpt", ("system", "You are helpful."), ("human", "Q1"), ("gpt", "A1")),
        turns("sharegpt", ("user", "Q2 ✓"), ("assistant", "A2")),
    ]}, ensure_ascii=False), encoding="utf-8")
    result = ok(sftchat(ws, "data", "import", str(path), in_process=True))
    assert result.stderr == "imported 2 examples (ids 1–2, sharegpt; 1 with a system prompt)\n"
    assert store_rows(ws) == [("Q1", "", "A1"), ("Q2 ✓", "", "A2")]
    with ExampleStore(ws / "data") as store:
        assert [e.system for e in store.iter_examples()] == ["You are helpful.", ""]


def test_import_messages_jsonl_with_an_explicit_format(ws, tmp_path):
    path = write_jsonl(tmp_path / "chats.data", [
        turns("messages", ("user", "Q1"), ("assistant", "A1")),
        turns("messages", ("user", "Q2"), ("assistant", "A2"))])
    result = ok(sftchat(ws, "data", "import", str(path), "--format", "messages", in_process=True))
    assert "imported 2 examples" in result.stderr
    assert "system" not in result.stderr
    assert store_rows(ws) == [("Q1", "", "A1"), ("Q2", "", "A2")]


@pytest.mark.parametrize("schema", ["sharegpt", "messages"])
def test_export_chat_formats_in_both_encodings(ws, tmp_path, schema):
    fill(ws, [*ROWS, ("Translate", "Hello", "Bonjour")])
    as_list = tmp_path / f"{schema}.json"
    as_lines = tmp_path / f"{schema}.jsonl"
    result = ok(sftchat(ws, "data", "export", str(as_list), "--format", schema, in_process=True))
    assert f"exported 3 examples to {as_list} ({schema}, JSON list)" in result.stderr
    result = ok(sftchat(ws, "data", "export", str(as_lines), "--format", schema, in_process=True))
    assert f"({schema}, JSONL)" in result.stderr
    user, assistant = ("human", "gpt") if schema == "sharegpt" else ("user", "assistant")
    expected = [turns(schema, (user, "Name a colour"), (assistant, "Blue")),
                turns(schema, (user, "Unicode ✓"), (assistant, "日本語 🤖\nsecond line")),
                turns(schema, (user, "Translate\n\nHello"), (assistant, "Bonjour"))]
    assert json.loads(as_list.read_text(encoding="utf-8")) == expected
    lines = as_lines.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == expected


@pytest.mark.parametrize("schema", ["alpaca", "sharegpt", "messages"])
@pytest.mark.parametrize("name", ["round.json", "round.jsonl"])
def test_export_then_import_elsewhere_gives_the_same_examples(ws, tmp_path, schema, name):
    fill(ws)
    path = tmp_path / name
    ok(sftchat(ws, "data", "export", str(path), "--format", schema, in_process=True))
    other = tmp_path / "other"
    ok(sftchat(other, "data", "import", str(path), in_process=True))
    assert store_rows(other) == store_rows(ws) == ROWS


UNLEARNED_LAST = {"conversations": [{"from": "human", "value": "Q"},
                                    {"from": "gpt", "value": "A", "weight": 0}]}


@pytest.mark.parametrize("name, records, extra, fragments", [
    ("weight.jsonl", [turns("sharegpt", ("human", "Q"), ("gpt", "A")), UNLEARNED_LAST], [],
     ["line 2, message 2 (the last answer) has weight 0"]),
    ("late-system.jsonl", [turns("messages", ("user", "Q"), ("assistant", "A"),
                                 ("system", "S"), ("user", "Q2"), ("assistant", "A2"))], [],
     ["line 1, message 3 is a system message", "move or remove it"]),
    ("qa.json", [{"question": "Q", "answer": "A"}], [],
     ["record 1", "answer, question", "sharegpt", "messages"]),
    ("role.json", [turns("messages", ("user", "Q"), ("tool", "A"))], [],
     ["record 1, message 2", "'tool'"]),
    ("order.json", [turns("messages", ("assistant", "A"), ("user", "Q"))], [],
     ["record 1, message 1", "assistant where the user"]),
    ("nocontent.jsonl", [{"messages": [{"role": "user"}, {"role": "assistant",
                                                          "content": "A"}]}], [],
     ["line 1, message 1", "'content'"]),
    ("notstring.jsonl", [turns("messages", ("user", ["Q"]), ("assistant", "A"))], [],
     ["'content' must be a string"]),
    ("empty.json", [turns("sharegpt", ("human", "Q"), ("gpt", ""))], [],
     ["record 1, message 2 is empty"]),
    ("alpaca.json", [{"instruction": "Q", "output": "A"}], ["--format", "sharegpt"],
     ["'conversations'", "--format alpaca"]),
])
def test_bad_chat_import_is_one_line_and_changes_nothing(ws, tmp_path, name, records, extra,
                                                        fragments):
    fill(ws)
    before = store_rows(ws)
    path = tmp_path / name
    if name.endswith(".jsonl"):
        write_jsonl(path, records)
    else:
        path.write_text(json.dumps(records), encoding="utf-8")
    result = sftchat(ws, "data", "import", str(path), *extra, in_process=True)
    assert_one_line_error(result, name, *fragments)
    assert store_rows(ws) == before


def test_bad_export_is_one_line_and_writes_nothing(ws, tmp_path):
    fill(ws)
    result = sftchat(ws, "data", "export", str(tmp_path / "x.json"), "--format", "csv", in_process=True)
    assert result.returncode == 2
    assert_one_line_error(result, "csv", "sharegpt")
    assert not (tmp_path / "x.json").exists()
    assert_one_line_error(sftchat(ws, "data", "export", str(tmp_path), "--format", "messages", in_process=True),
                          "is a folder")
    assert [p.name for p in tmp_path.iterdir()] == ["ws"]


# --------------------------------------------------------------------------- conversations

def conversations(schema: str) -> list[dict]:
    """Multi-turn records with system prompts, in the form sftchat writes: the system message
    first, `"weight": 0` only on earlier answers that are not learned."""
    user, assistant = ("human", "gpt") if schema == "sharegpt" else ("user", "assistant")
    records = [
        turns(schema, ("system", "You are terse."), (user, "Capital of France?"),
              (assistant, "Paris."), (user, "Its population?"), (assistant, "2.1 million.")),
        turns(schema, (user, "Name a colour"), (assistant, "Blue")),
        turns(schema, ("system", "Réponds en français."), (user, "Hello"), (assistant, "Salut"),
              (user, "Thanks"), (assistant, "De rien"), (user, "Bye ✓"),
              (assistant, "Au revoir 🙂")),
    ]
    key = "conversations" if schema == "sharegpt" else "messages"
    records[2][key][2]["weight"] = 0        # "Salut" is context only; "De rien" is learned
    return records


@pytest.mark.parametrize("schema", ["sharegpt", "messages"])
def test_import_then_export_gives_back_the_same_records_byte_for_byte(ws, tmp_path, schema):
    """Issue 19: a ShareGPT (messages) file with multi-turn records and system prompts
    imports and exports back unchanged. The sharegpt path runs as a real process."""
    records = conversations(schema)
    source = write_jsonl(tmp_path / "in.jsonl", records)
    in_process = schema == "messages"
    result = ok(sftchat(ws, "data", "import", str(source), in_process=in_process))
    assert result.stderr == (f"imported 3 examples (ids 1–3, {schema}; 2 with earlier turns, "
                             "2 with a system prompt)\n")
    with ExampleStore(ws / "data") as store:
        third = store.get(3)
    assert third.system == "Réponds en français."
    assert [(turn.instruction, turn.learn) for turn in third.context] == \
        [("Hello", False), ("Thanks", True)]
    lines, listed = tmp_path / "out.jsonl", tmp_path / "out.json"
    ok(sftchat(ws, "data", "export", str(lines), "--format", schema, in_process=in_process))
    assert lines.read_bytes() == source.read_bytes()
    ok(sftchat(ws, "data", "export", str(listed), "--format", schema, in_process=True))
    assert [json.dumps(r, ensure_ascii=False)
            for r in json.loads(listed.read_text(encoding="utf-8"))] == \
        source.read_text(encoding="utf-8").splitlines()


def test_alpaca_export_of_a_conversation_is_refused_unless_flattened(ws, tmp_path):
    ok(sftchat(ws, "data", "import", str(write_jsonl(tmp_path / "in.jsonl",
                                                     conversations("sharegpt"))),
               in_process=True))
    target = tmp_path / "alpaca.json"
    result = sftchat(ws, "data", "export", str(target), in_process=True)
    assert_one_line_error(result, "example 1 is a conversation (2 turns and a system prompt)",
                          "--flatten", "--format sharegpt or messages")
    assert not target.exists() and result.stdout == ""
    result = ok(sftchat(ws, "data", "export", str(target), "--flatten", in_process=True))
    assert "exported 3 examples" in result.stderr
    assert json.loads(target.read_text(encoding="utf-8")) == [
        {"instruction": "Its population?", "output": "2.1 million.",
         "input": "System: You are terse.\n\nUser: Capital of France?\n\nAssistant: Paris."},
        {"instruction": "Name a colour", "input": "", "output": "Blue"},
        {"instruction": "Bye ✓", "output": "Au revoir 🙂",
         "input": "System: Réponds en français.\n\nUser: Hello\n\nAssistant: Salut\n\n"
                  "User: Thanks\n\nAssistant: De rien"}]
    assert_one_line_error(sftchat(ws, "data", "export", str(tmp_path / "s.json"), "--format",
                                  "sharegpt", "--flatten", in_process=True),
                          "--flatten only applies to Alpaca exports")
    assert not (tmp_path / "s.json").exists()
