"""ShareGPT and messages import/export, schema detection and their errors, through real files.

Alpaca-only behaviour (encodings, atomic writes, unicode) is covered in test_formats.py; here
every schema is read and written in both encodings, and every way a chat record can be wrong
is a FormatError naming the file, the record and the message.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftchat.dataset.formats import (
    EXPORT_FORMATS,
    FORMATS,
    FormatError,
    describe_export,
    import_file,
    read_conversation,
    read_records,
    write_records,
)
from sftchat.conversation import Turn
from sftchat.dataset.schemas import Conversation, detect_schema

# The store's export view (what write_records is given); inputs empty so round trips are exact.
STORE_RECORDS = [
    {"id": 1, "instruction": "Name a colour", "input": "", "output": "Blue"},
    {"id": 2, "instruction": "Unicode ✓ naïve", "input": "", "output": "日本語 🤖\nsecond"},
    {"id": 3, "instruction": "Line\u2028separator", "input": "", "output": "a\tb \"q\" \\"},
]
EXPECTED = [{"instruction": r["instruction"], "input": "", "response": r["output"]}
            for r in STORE_RECORDS]


def sharegpt(*turns: tuple[str, str]) -> dict:
    return {"conversations": [{"from": role, "value": text} for role, text in turns]}


def messages(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": role, "content": text} for role, text in turns]}


def write_file(path: Path, records: list, encoding: str | None = None) -> Path:
    """Records as a JSON list, or JSONL when the name (or `encoding`) says so."""
    jsonl = encoding == "jsonl" or (encoding is None and path.suffix == ".jsonl")
    text = ("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) if jsonl
            else json.dumps(records, ensure_ascii=False, indent=2))
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path, fmt: str = "auto") -> str:
    with pytest.raises(FormatError) as info:
        read_records(path, fmt)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


# --------------------------------------------------------------------------- export


def test_the_format_choices():
    assert FORMATS == ("auto", "alpaca", "sharegpt", "messages", "jsonl")
    assert EXPORT_FORMATS == ("alpaca", "sharegpt", "messages", "jsonl", "dpo", "kto")


def test_sharegpt_and_messages_export_records_exactly(tmp_path):
    record = {"id": 9, "instruction": "Translate", "input": "Hello", "output": "Bonjour"}
    write_records(tmp_path / "s.json", [record], "sharegpt")
    write_records(tmp_path / "m.json", [record], "messages")
    # A non-empty input is folded into the user turn after a blank line.
    assert json.loads((tmp_path / "s.json").read_text(encoding="utf-8")) == [
        sharegpt(("human", "Translate\n\nHello"), ("gpt", "Bonjour"))]
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8")) == [
        messages(("user", "Translate\n\nHello"), ("assistant", "Bonjour"))]


@pytest.mark.parametrize("schema", ["alpaca", "sharegpt", "messages"])
def test_export_encoding_follows_the_extension_for_every_schema(tmp_path, schema):
    lines = tmp_path / "out.jsonl"
    listed = tmp_path / "out.txt"
    write_records(lines, STORE_RECORDS, schema)
    write_records(listed, STORE_RECORDS, schema)
    as_lines = [json.loads(line) for line in
                lines.read_text(encoding="utf-8").split("\n") if line]
    assert json.loads(listed.read_text(encoding="utf-8")) == as_lines
    assert len(as_lines) == len(STORE_RECORDS)
    assert {detect_schema(record) for record in as_lines} == {schema}
    assert "日本語" in lines.read_text(encoding="utf-8")   # UTF-8, not \u escapes


@pytest.mark.parametrize("fmt, name, expected", [
    ("alpaca", "x.json", "alpaca, JSON list"),
    ("sharegpt", "x.jsonl", "sharegpt, JSONL"),
    ("messages", "x.NDJSON", "messages, JSONL"),
    ("messages", "x.txt", "messages, JSON list"),
    ("jsonl", "x.json", "alpaca, JSONL"),
])
def test_describe_export(fmt, name, expected):
    assert describe_export(Path(name), fmt) == expected


def test_jsonl_still_means_alpaca_jsonl_whatever_the_extension(tmp_path):
    path = tmp_path / "old.json"
    write_records(path, STORE_RECORDS, "jsonl")
    lines = path.read_text(encoding="utf-8").split("\n")
    assert set(json.loads(lines[0])) == {"instruction", "input", "output"}
    assert read_records(path, "jsonl") == EXPECTED


def test_export_to_a_folder_or_an_unwritable_place_is_a_format_error(tmp_path):
    with pytest.raises(FormatError, match="is a folder"):
        write_records(tmp_path, STORE_RECORDS, "sharegpt")
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    with pytest.raises(FormatError, match="cannot write it"):
        write_records(blocker / "out.json", STORE_RECORDS, "messages")


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("schema", ["alpaca", "sharegpt", "messages"])
@pytest.mark.parametrize("name", ["out.json", "out.jsonl", "out.data"])
def test_every_schema_round_trips_in_both_encodings(tmp_path, schema, name):
    path = tmp_path / name
    assert write_records(path, STORE_RECORDS, schema) == len(STORE_RECORDS)
    imported = import_file(path)                        # auto: schema and encoding detected
    assert imported.records == EXPECTED
    assert imported.schema == schema
    assert imported.encoding == ("jsonl" if name.endswith(".jsonl") else "json")
    assert imported.system_messages == 0
    assert read_records(path, schema) == EXPECTED       # and named explicitly


@pytest.mark.parametrize("schema", ["sharegpt", "messages"])
def test_input_comes_back_folded_into_the_instruction(tmp_path, schema):
    path = tmp_path / "folded.json"
    write_records(path, [{"instruction": "Translate", "input": "Hello", "output": "Hi"}], schema)
    assert read_records(path) == [
        {"instruction": "Translate\n\nHello", "input": "", "response": "Hi"}]


# --------------------------------------------------------------------------- reading


def test_detect_schema():
    assert detect_schema(sharegpt(("human", "q"), ("gpt", "a"))) == "sharegpt"
    assert detect_schema(messages(("user", "q"), ("assistant", "a"))) == "messages"
    assert detect_schema({"instruction": "q", "output": "a"}) == "alpaca"
    assert detect_schema({"instruction": "q", "response": "a"}) == "alpaca"
    assert detect_schema({"prompt": "q", "completion": "a"}) is None
    assert detect_schema(["not", "a", "record"]) is None


def test_sharegpt_accepts_user_and_assistant_and_either_field_spelling(tmp_path):
    records = [sharegpt(("human", "q1"), ("gpt", "a1")),
               sharegpt(("user", "q2"), ("assistant", "a2")),
               {"conversations": [{"role": "user", "content": "q3"},
                                  {"role": "assistant", "content": "a3"}]}]
    path = write_file(tmp_path / "mixed.jsonl", records)
    assert [(r["instruction"], r["response"]) for r in read_records(path, "sharegpt")] == [
        ("q1", "a1"), ("q2", "a2"), ("q3", "a3")]


def test_a_leading_system_message_becomes_the_system_prompt(tmp_path):
    records = [messages(("system", "You are helpful."), ("user", "q1"), ("assistant", "a1")),
               messages(("user", "q2"), ("assistant", "a2")),
               messages(("system", ""), ("user", "q3"), ("assistant", "a3"))]
    imported = import_file(write_file(tmp_path / "sys.json", records))
    assert imported.system_messages == 1       # kept as a system prompt; "" is none
    assert imported.multi_turn == 0
    assert imported.records == [
        {"instruction": "q1", "input": "", "response": "a1", "system": "You are helpful."},
        {"instruction": "q2", "input": "", "response": "a2"},
        {"instruction": "q3", "input": "", "response": "a3"}]


def test_wrapped_lists_and_a_single_record_object_are_read(tmp_path):
    record = sharegpt(("human", "q"), ("gpt", "a"))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"train": [record, record]}), encoding="utf-8")
    single = tmp_path / "single.json"
    single.write_text(json.dumps(messages(("user", "q"), ("assistant", "a"))),
                      encoding="utf-8")
    assert len(read_records(wrapped)) == 2
    assert read_records(single) == [{"instruction": "q", "input": "", "response": "a"}]


# --------------------------------------------------------------------------- errors


def test_unknown_schema_names_the_keys_and_the_understood_formats(tmp_path):
    path = write_file(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}])
    message = error_of(path)
    assert "line 1" in message and "answer, question" in message
    for name in ("alpaca", "sharegpt", "messages", "instruction", "conversations"):
        assert name in message


def test_explicit_schema_mismatch_suggests_the_right_format(tmp_path):
    path = write_file(tmp_path / "alpaca.json", [{"instruction": "q", "output": "a"}])
    message = error_of(path, "sharegpt")
    assert "record 1 has no 'conversations' field" in message
    assert "--format alpaca" in message
    path = write_file(tmp_path / "chat.json", [messages(("user", "q"), ("assistant", "a"))])
    assert "--format messages" in error_of(path, "alpaca")


def test_a_file_mixing_schemas_is_refused_at_the_odd_record(tmp_path):
    path = write_file(tmp_path / "mixed.json", [messages(("user", "q"), ("assistant", "a")),
                                                sharegpt(("human", "q"), ("gpt", "a"))])
    message = error_of(path)
    assert "record 2" in message and "first record is messages" in message


@pytest.mark.parametrize("turns, fragments", [
    ([("human", "q"), ("gpt", "a"), ("human", "q2")], ["ends with a user message"]),
    ([("human", "q")], ["ends with a user message", "assistant's answer"]),
    ([("gpt", "a"), ("human", "q")], ["message 1 is from the assistant where the user"]),
    ([("human", "q"), ("human", "q2"), ("gpt", "a")],
     ["message 2 is from the user where the assistant"]),
    ([("human", "q"), ("system", "s"), ("gpt", "a")],
     ["message 2 is a system message", "leading"]),
    ([("system", "s"), ("system", "t"), ("human", "q"), ("gpt", "a")],
     ["message 2 is a system message"]),
    ([("human", "q1"), ("gpt", "a1"), ("system", "s"), ("human", "q2"), ("gpt", "a2")],
     ["message 3 is a system message"]),
    ([("system", "s")], ["no user and assistant messages"]),
    ([], ["no user and assistant messages"]),
    ([("human", "q"), ("tool", "x")], ["message 2 has from 'tool'", "human, user"]),
    ([("human", "q"), ("gpt", "   ")], ["message 2 is empty", "fix or remove that record"]),
    ([("human", ""), ("gpt", "a")], ["message 1 is empty"]),
    ([("human", "q1"), ("gpt", ""), ("human", "q2"), ("gpt", "a2")], ["message 2 is empty"]),
])
def test_bad_conversations(tmp_path, turns, fragments):
    good = sharegpt(("human", "fine"), ("gpt", "fine"))
    path = write_file(tmp_path / "bad.json", [good, sharegpt(*turns)])
    message = error_of(path)
    assert "record 2" in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("message_record, fragments", [
    ({"role": "user"}, ["message 1 has no 'content' field", "it has: role"]),
    ({"content": "q"}, ["message 1 has no 'role' field", "it has: content"]),
    ({"role": "user", "content": None}, ["'content' must be a string, not NoneType"]),
    ({"role": "user", "content": [{"type": "text", "text": "q"}]},
     ["'content' must be a string, not list"]),
    ({"role": "user", "content": 42}, ["'content' must be a string, not int"]),
    ({"role": 1, "content": "q"}, ["message 1 has role 1"]),
    ("just text", ["message 1 is not a JSON object"]),
])
def test_bad_messages(tmp_path, message_record, fragments):
    record = {"messages": [message_record, {"role": "assistant", "content": "a"}]}
    path = write_file(tmp_path / "bad.jsonl", [record])
    message = error_of(path, "messages")
    assert "line 1, message 1" in message or "line 1: " in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("value, fragment", [
    ("text", "'conversations' must be a list of messages, not str"),
    ({"from": "human"}, "'conversations' must be a list of messages, not dict"),
    (None, "'conversations' must be a list of messages, not NoneType"),
])
def test_conversations_that_are_not_a_list(tmp_path, value, fragment):
    path = write_file(tmp_path / "c.json", [{"conversations": value}])
    assert fragment in error_of(path)


def test_an_error_anywhere_means_nothing_is_returned(tmp_path):
    records = [sharegpt(("human", f"q{n}"), ("gpt", f"a{n}")) for n in range(50)]
    records.append(sharegpt(("human", "q"), ("gpt", "a"), ("human", "again")))
    path = write_file(tmp_path / "late.jsonl", records)
    assert "line 51" in error_of(path)


# --------------------------------------------------------------------------- conversations

CONVERSATION = [("system", "You are terse."), ("human", "Capital of France?"), ("gpt", "Paris."),
                ("human", "Its population?"), ("gpt", "About 2.1 million.")]


def test_a_multi_turn_record_keeps_its_system_prompt_and_earlier_turns(tmp_path):
    path = write_file(tmp_path / "multi.jsonl", [sharegpt(*CONVERSATION),
                                                 sharegpt(("human", "q"), ("gpt", "a"))])
    imported = import_file(path)
    assert (imported.multi_turn, imported.system_messages) == (1, 1)
    assert imported.records[0] == {
        "instruction": "Its population?", "input": "", "response": "About 2.1 million.",
        "system": "You are terse.",
        # Every earlier answer is learned by default, as TRL and axolotl train them.
        "context": [{"instruction": "Capital of France?", "response": "Paris.",
                     "learn": True}]}
    assert imported.records[1] == {"instruction": "q", "input": "", "response": "a"}


def test_weight_says_which_earlier_answers_are_learned(tmp_path):
    record = {"messages": [
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1", "weight": 0},
        {"role": "user", "content": "q2", "weight": 0},
        {"role": "assistant", "content": "a2", "weight": 1},
        {"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3"},
        {"role": "user", "content": "q4"}, {"role": "assistant", "content": "a4", "weight": 1}]}
    (read,) = read_records(write_file(tmp_path / "w.json", [record]))
    assert [(turn["instruction"], turn.get("learn", False)) for turn in read["context"]] == [
        ("q1", False), ("q2", True), ("q3", True)]
    assert (read["instruction"], read["response"]) == ("q4", "a4")


@pytest.mark.parametrize("weights, fragments", [
    ({3: 0}, ["message 4 (the last answer) has weight 0", "always learns its last answer"]),
    ({1: 0.5}, ["message 2 has weight 0.5", "0 (an answer not learned) or 1"]),
    ({1: "no"}, ["message 2 has weight 'no'"]),
    ({1: True}, ["message 2 has weight True"]),
    ({0: 1}, ["message 1 is a user message with weight 1", "only assistant answers"]),
])
def test_bad_weights(tmp_path, weights, fragments):
    turns = [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")]
    record = {"messages": [{"role": role, "content": text, **(
        {"weight": weights[index]} if index in weights else {})}
        for index, (role, text) in enumerate(turns)]}
    message = error_of(write_file(tmp_path / "bad.jsonl", [record]))
    assert "line 1" in message
    for fragment in fragments:
        assert fragment in message


def _store_record(record: dict, example_id: int) -> dict:
    """What `Example.to_record` gives for an imported record."""
    out = {"id": example_id, "instruction": record["instruction"], "input": record["input"],
           "output": record["response"]}
    return {**out, **{key: record[key] for key in ("system", "context") if key in record}}


@pytest.mark.parametrize("schema", ["sharegpt", "messages"])
def test_conversations_export_whole_and_import_back_the_same(tmp_path, schema):
    make = sharegpt if schema == "sharegpt" else messages
    names = {"human": "user", "gpt": "assistant", "system": "system"}
    conversation = [(role if schema == "sharegpt" else names[role], text)
                    for role, text in CONVERSATION]
    records = [make(*conversation), make(*conversation[1:3]), make(*conversation[1:])]
    # An earlier answer that is not learned carries weight 0, and nothing else a weight.
    records[2][f"{'conversations' if schema == 'sharegpt' else 'messages'}"][1]["weight"] = 0
    source = write_file(tmp_path / "in.jsonl", records)
    read = read_records(source)
    assert read[2]["context"] == [{"instruction": "Capital of France?", "response": "Paris."}]
    out = tmp_path / "out.jsonl"
    write_records(out, [_store_record(r, n) for n, r in enumerate(read, 1)], schema)
    assert out.read_bytes() == source.read_bytes()


def test_an_input_folds_into_its_user_message_in_every_turn(tmp_path):
    record = {"id": 4, "instruction": "Translate", "input": "Bye", "output": "Au revoir",
              "context": [{"instruction": "Translate", "input": "Hi", "response": "Salut"}]}
    write_records(tmp_path / "m.json", [record], "messages")
    expected = messages(("user", "Translate\n\nHi"), ("assistant", "Salut"),
                        ("user", "Translate\n\nBye"), ("assistant", "Au revoir"))
    expected["messages"][1]["weight"] = 0      # an earlier answer not learned (the default)
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8")) == [expected]


ALPACA_CONVERSATION = {"id": 7, "instruction": "Its population?", "input": "", "output": "2.1M",
                       "system": "Be terse.",
                       "context": [{"instruction": "Capital of France?", "response": "Paris.",
                                    "learn": True}]}


@pytest.mark.parametrize("record, what", [
    (ALPACA_CONVERSATION, "2 turns and a system prompt"),
    ({**ALPACA_CONVERSATION, "system": ""}, "2 turns"),
    ({key: value for key, value in ALPACA_CONVERSATION.items() if key != "context"},
     "a system prompt"),
])
@pytest.mark.parametrize("fmt", ["alpaca", "jsonl"])
def test_alpaca_export_of_a_conversation_is_refused_and_writes_nothing(tmp_path, record,
                                                                       what, fmt):
    target = tmp_path / "out.json"
    target.write_text("old", encoding="utf-8")
    plain = {"id": 1, "instruction": "q", "input": "", "output": "a"}
    with pytest.raises(FormatError) as info:
        write_records(target, [plain, record], fmt)
    message = str(info.value)
    assert "\n" not in message
    assert f"example 7 is a conversation ({what})" in message
    assert "--flatten" in message and "--format sharegpt or messages" in message
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_flatten_writes_the_conversation_before_the_last_message_into_the_input(tmp_path):
    target = tmp_path / "flat.json"
    records = [ALPACA_CONVERSATION,
               {**ALPACA_CONVERSATION, "id": 8, "input": "in Paris proper", "system": ""},
               {"id": 9, "instruction": "q", "input": "i", "output": "a"}]
    assert write_records(target, records, "alpaca", flatten=True) == 3
    assert json.loads(target.read_text(encoding="utf-8")) == [
        {"instruction": "Its population?", "output": "2.1M",
         "input": "System: Be terse.\n\nUser: Capital of France?\n\nAssistant: Paris."},
        {"instruction": "Its population?", "output": "2.1M",
         "input": "User: Capital of France?\n\nAssistant: Paris.\n\nin Paris proper"},
        {"instruction": "q", "input": "i", "output": "a"}]     # a single turn is unchanged
    with pytest.raises(FormatError, match="--flatten only applies to Alpaca"):
        write_records(tmp_path / "x.json", records, "sharegpt", flatten=True)


# --------------------------------------------------------------------------- ask --messages


def test_read_conversation_answers_the_last_user_message():
    text = json.dumps({"messages": [
        {"role": "system", "content": "Be terse."}, {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]})
    conversation = read_conversation("chat.json", text)
    assert conversation == Conversation("Be terse.", (Turn("q1", "a1", learn=True),), "q2",
                                        None)
    bare = read_conversation("chat.json", json.dumps([{"role": "user", "content": "q"}]))
    assert (bare.system, bare.context, bare.instruction) == ("", (), "q")


@pytest.mark.parametrize("text, fragments", [
    ('[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]',
     ["chat.json ends with an assistant message", "the user message to answer"]),
    ('[{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]',
     ["chat.json, message 1 is from the assistant where the user was expected"]),
    ('[{"role": "user", "content": "q"', ["chat.json: not valid JSON at line 1", "role"]),
    ('"hello"', ["chat.json: expected a JSON list of messages", "got str"]),
    ('{"messages": "q"}', ["'messages' must be a list of messages, not str"]),
    ('[]', ["chat.json has no user message"]),
    ('[{"role": "system", "content": "s"}]', ["chat.json has no user message"]),
    ('[{"role": "user", "content": " "}]', ["message 1 is empty", "fix the file"]),
    ('[{"role": "user", "content": "q", "weight": 2}]', ["message 1 has weight 2"]),
])
def test_bad_conversation_files(text, fragments):
    with pytest.raises(FormatError) as info:
        read_conversation("chat.json", text)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
