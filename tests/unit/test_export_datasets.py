"""GUIDE §4: exports must load with `datasets.load_dataset("json", data_files=...)`.

Each schema is exported in both encodings by the real `sftchat data export` (in-process, on a
real store) and loaded by the real `datasets` library, offline, into a per-test cache.
"""

from __future__ import annotations

import pytest

from sftchat.cli import main
from sftchat.dataset.store import ExampleStore

EXAMPLES = [  # (instruction, input, response): unicode, an empty input and a non-empty one
    ("Say hello in Japanese.", "", "こんにちは！🙂"),
    ("Translate", "naïve café", "Naïf café"),
    ("Multi-line\nquestion", "", "line one\nline two \"quoted\""),
    # Text that spells special tokens is exported as the text it is (issue 20, item 6).
    ("Write <|im_end|> then <|im_start|>system", "", "<|im_end|>\n<|im_start|>system\nOK</s>"),
]


def _expected(schema: str) -> list[dict]:
    rows = []
    for instruction, input_text, response in EXAMPLES:
        user = instruction + ("\n\n" + input_text if input_text else "")
        rows.append({
            "alpaca": {"instruction": instruction, "input": input_text, "output": response},
            "sharegpt": {"conversations": [{"from": "human", "value": user},
                                           {"from": "gpt", "value": response}]},
            "messages": {"messages": [{"role": "user", "content": user},
                                      {"role": "assistant", "content": response}]},
        }[schema])
    return rows


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
@pytest.mark.parametrize("schema", ["alpaca", "sharegpt", "messages"])
def test_exports_load_with_datasets(ws, tmp_path, schema, suffix):
    import datasets

    with ExampleStore(ws / "data") as store:
        store.add_many((instruction, input_text, response, None, "test")
                       for instruction, input_text, response in EXAMPLES)
    path = tmp_path / f"export-{schema}{suffix}"
    assert main(["--workspace", str(ws), "data", "export", str(path),
                 "--format", schema]) == 0

    loaded = datasets.load_dataset("json", data_files=str(path), split="train",
                                   cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == len(EXAMPLES)
    assert [dict(row) for row in loaded] == _expected(schema)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
@pytest.mark.parametrize("schema", ["sharegpt", "messages", "alpaca"])
def test_conversation_exports_load_with_datasets(ws, tmp_path, schema, suffix):
    """Conversations (a system prompt, earlier turns, an answer not learned: `weight` on
    some messages only) beside single-turn examples; Alpaca flattened (`--flatten`)."""
    import datasets

    from sftchat.conversation import Turn

    with ExampleStore(ws / "data") as store:
        store.add_many((instruction, input_text, response, None, "test")
                       for instruction, input_text, response in EXAMPLES)
        store.add("Its population?", "About 2.1 million.", system="Be terse.",
                  context=[Turn("Capital of France?", "Paris."),
                           Turn("And of Japan?", "Tokyo.", learn=True)])
    path = tmp_path / f"export-{schema}{suffix}"
    flatten = ["--flatten"] if schema == "alpaca" else []
    assert main(["--workspace", str(ws), "data", "export", str(path), "--format", schema,
                 *flatten]) == 0

    loaded = datasets.load_dataset("json", data_files=str(path), split="train",
                                   cache_dir=str(tmp_path / "hf")).to_list()
    # Read back exactly: a weight only where one was written.
    singles = len(EXAMPLES)
    assert loaded[:singles] == _expected(schema)
    if schema == "alpaca":
        assert loaded[singles] == {
            "instruction": "Its population?", "output": "About 2.1 million.",
            "input": "System: Be terse.\n\nUser: Capital of France?\n\nAssistant: Paris.\n\n"
                     "User: And of Japan?\n\nAssistant: Tokyo."}
        return
    role, text, key = (("from", "value", "conversations") if schema == "sharegpt"
                       else ("role", "content", "messages"))
    names = {"sharegpt": ("system", "human", "gpt")}.get(schema, ("system", "user",
                                                                  "assistant"))
    system, user, assistant = names
    assert loaded[singles] == {key: [
        {role: system, text: "Be terse."},
        {role: user, text: "Capital of France?"},
        {role: assistant, text: "Paris.", "weight": 0},        # not learned
        {role: user, text: "And of Japan?"},
        {role: assistant, text: "Tokyo."},
        {role: user, text: "Its population?"},
        {role: assistant, text: "About 2.1 million."}]}

