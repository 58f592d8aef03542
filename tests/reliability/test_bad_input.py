"""Bad input through the real command line (issue 6, item 3).

Every mistake a user can make is one line on stderr that names the problem and the fix, a
non-zero exit code, no traceback — and nothing in the workspace changes (the dataset, the
adapters folder, sftchat.toml are compared before and after). Oversized input is the
exception that is *accepted*: the prompt side is cut to the model's context, with a notice.

Commands that load the model (`ask`, `train`) take seconds each, so they are kept few.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, ok, sftchat

from sftchat.dataset.store import DB_NAME, ExampleStore

RECORDS = [
    {"instruction": "Name a colour", "input": "", "output": "Blue"},
    {"instruction": "Translate", "input": "Hello", "output": "Bonjour"},
    {"instruction": "Capital of France?", "input": "", "output": "Paris"},
]


def _tree(folder: Path) -> dict[str, str]:
    """Every entry under `folder` (hidden ones included): file -> sha256, folder -> 'dir'."""
    if not folder.is_dir():
        return {}
    entries = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        entries[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


def state(workspace: Path) -> dict:
    """What a failed command must leave as it was."""
    db = workspace / "data" / DB_NAME
    examples = None
    if db.exists():
        with ExampleStore(workspace / "data") as store:
            examples = [example.to_dict() for example in store.iter_examples()]
    config = workspace / "sftchat.toml"
    return {
        "examples": examples,
        "adapters": _tree(workspace / "adapters"),
        "config": config.read_bytes() if config.exists() else None,
    }


@pytest.fixture
def filled(ws) -> Path:
    for record in RECORDS:
        ok(sftchat(ws, "data", "add", "--instruction", record["instruction"],
               "--response", record["output"], "--input", record["input"], in_process=True))
    return ws


def fails_cleanly(workspace: Path, result: subprocess.CompletedProcess, before: dict,
                  *fragments: str) -> str:
    line = assert_one_line_error(result, *fragments)
    assert state(workspace) == before, "a failed command changed the workspace"
    return line


# --------------------------------------------------------------------------- import files


def test_truncated_json_import_file(filled, tmp_path):
    path = tmp_path / "cut.json"
    text = json.dumps(RECORDS, indent=2)
    path.write_text(text[: len(text) * 2 // 3], encoding="utf-8")
    before = state(filled)
    fails_cleanly(filled, sftchat(filled, "data", "import", str(path), in_process=True), before,
                  "cut.json", "truncated")


def test_malformed_jsonl_import_file(filled, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps(RECORDS[1]) + "\n"
                    + '{"instruction": "x", "output": "y",\n' + json.dumps(RECORDS[2]) + "\n",
                    encoding="utf-8")
    before = state(filled)
    fails_cleanly(filled, sftchat(filled, "data", "import", str(path), in_process=True), before,
                  "bad.jsonl", "line 3", "JSON")


SHAREGPT = [{"conversations": [{"from": "human", "value": "Hi"},
                               {"from": "gpt", "value": "Hello!"}]}]


@pytest.mark.parametrize("name, content, extra", [
    # Records of a schema that is no instruction dataset at all.
    ("qa.json", json.dumps([{"question": "Why?", "answer": "Because."}]), []),
    ("pc.jsonl", json.dumps({"prompt": "Hi", "completion": "Hello"}) + "\n", []),
    # A ShareGPT file read as Alpaca: the records have other keys.
    ("sharegpt.json", json.dumps(SHAREGPT), ["--format", "alpaca"]),
])
def test_import_of_an_unknown_schema(filled, tmp_path, name, content, extra):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    before = state(filled)
    line = fails_cleanly(filled, sftchat(filled, "data", "import", str(path), *extra, in_process=True), before,
                         name, "instruction", "output")
    # The error names the keys it did find, so the user sees what is wrong with the file.
    found = next(iter(json.loads(content.splitlines()[0]) if name.endswith(".jsonl")
                      else json.loads(content)[0]))
    assert found in line


def test_import_of_records_that_are_not_objects(filled, tmp_path):
    path = tmp_path / "strings.json"
    path.write_text(json.dumps(["just", "strings"]), encoding="utf-8")
    before = state(filled)
    fails_cleanly(filled, sftchat(filled, "data", "import", str(path), in_process=True), before,
                  "strings.json", "record 1", "not a JSON object")


def test_import_of_a_missing_file(filled, tmp_path):
    before = state(filled)
    fails_cleanly(filled, sftchat(filled, "data", "import", str(tmp_path / "nowhere.json"), in_process=True),
                  before, "nowhere.json", "no such file")


# --------------------------------------------------------------------------- examples


@pytest.mark.parametrize("instruction, response, stdin, field", [
    ("", "An answer", None, "instruction"),
    ("A question", "", None, "response"),
    ("   \t ", "An answer", None, "instruction"),
    ("A question", " \n\n  ", None, "response"),
    ("-", "An answer", "\n\n\n", "instruction"),   # whitespace from stdin
])
def test_data_add_with_an_empty_field(filled, instruction, response, stdin, field):
    before = state(filled)
    result = sftchat(filled, "data", "add", "--instruction", instruction, "--response", response,
                 stdin=stdin, in_process=True)
    line = fails_cleanly(filled, result, before, field, "empty")
    assert result.stdout == "", "no id may be printed for a refused example"
    assert "give the example" in line  # the fix


def test_train_with_no_examples(ws):
    ExampleStore(ws / "data").close()  # an empty dataset
    before = state(ws)
    fails_cleanly(ws, sftchat(ws, "train", "--max-steps", "1", in_process=True), before,
                  "empty", "sftchat data add")


# --------------------------------------------------------------------------- oversized input


def test_a_prompt_of_hundreds_of_kilobytes_to_ask_is_cut_with_a_notice(ws):
    # One command-line argument is limited to 128 KiB (Linux MAX_ARG_STRLEN), so the prompt
    # and its input each carry ~125 KB: 250 KB of prompt in all.
    prompt = "Summarise this: " + "lorem ipsum dolor " * 7_000
    context = "sit amet consectetur " * 6_000
    assert len(prompt.encode()) + len(context.encode()) > 240_000
    before = state(ws)
    result = sftchat(ws, "ask", prompt, "--input", context, "--max-new-tokens", "5",
                 "--temperature", "0", in_process=True)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.endswith("\n")
    notices = [line for line in result.stderr.splitlines() if line.startswith("sftchat:")]
    assert len(notices) == 1, result.stderr
    assert re.search(r"too long|truncat|cut", notices[0], re.IGNORECASE), notices[0]
    assert "error" not in notices[0].lower()
    assert state(ws) == before



def test_a_prompt_over_the_command_line_limit_is_read_from_stdin_with_dash(ws):
    """`ask -` takes the prompt from stdin: 600 KB, more than one argument can carry."""
    prompt = "Summarise this: " + "lorem ipsum dolor " * 33_000
    assert len(prompt.encode()) > 128 * 1024 * 4
    before = state(ws)
    result = sftchat(ws, "ask", "-", "--max-new-tokens", "5", "--temperature", "0", stdin=prompt, in_process=True)
    assert result.returncode == 0, result.stderr
    notices = [line for line in result.stderr.splitlines() if line.startswith("sftchat:")]
    assert len(notices) == 1 and re.search(r"cut \d+ tokens", notices[0]), result.stderr
    assert result.stdout.strip()
    assert state(ws) == before


@pytest.mark.parametrize("argv, stdin, fragment", [
    (["ask", "   "], None, "the prompt is empty"),
    (["ask", "-"], "\n\n", "the prompt is empty"),
    (["ask", "-", "--input", "-"], "both?", "only one of the prompt and --input"),
], ids=["blank-argument", "blank-stdin", "two-stdins"])
def test_an_empty_prompt_to_ask(ws, argv, stdin, fragment):
    before = state(ws)
    fails_cleanly(ws, sftchat(ws, *argv, stdin=stdin, in_process=True), before, fragment)


HUGE_INSTRUCTION = "Please read this carefully. " + "The quick brown fox jumps. " * 20_000


@pytest.fixture(scope="module")
def huge_example_training(tmp_path_factory):
    """A workspace where an example of ~540 KB was added with `data add` (from stdin) and
    trained with `train --max-steps 1`; the adapter doubles as the one other tests break."""
    workspace = tmp_path_factory.mktemp("huge")
    added = sftchat(workspace, "data", "add", "--instruction", "-", "--response", "Short answer.",
                stdin=HUGE_INSTRUCTION, in_process=True)
    trained = sftchat(workspace, "train", "--max-steps", "1", "--name", "first", in_process=True)
    return workspace, added, trained


def test_an_example_of_hundreds_of_kilobytes_is_kept_and_trains_with_its_prompt_cut(
        huge_example_training):
    workspace, added, trained = huge_example_training
    assert len(HUGE_INSTRUCTION.encode()) > 500_000
    ok(added)
    example_id = int(added.stdout)
    with ExampleStore(workspace / "data") as store:
        assert store.get(example_id).instruction == HUGE_INSTRUCTION  # stored whole

    ok(trained)
    adapter = workspace / "adapters" / "first"
    assert (adapter / "adapter_model.safetensors").is_file()
    meta = json.loads((adapter / "sftchat.json").read_text(encoding="utf-8"))
    assert meta["dataset"]["example_ids"] == [example_id]
    assert meta["dataset"]["truncated_prompts"] == 1
    # The response is learned whole: its tokens and the end token.
    assert meta["dataset"]["learned_tokens"] >= 2
    assert [name for name in os.listdir(workspace / "adapters")] == ["first"]


def test_training_on_an_example_whose_prompt_was_cut_says_so(huge_example_training):
    """Issue 6: the prompt side is truncated to the model's context *with a notice*."""
    _, _, trained = huge_example_training
    ok(trained)
    assert re.search(r"truncat|too long|\bcut\b", trained.stderr, re.IGNORECASE), (
        f"no notice that an example's prompt was cut; stderr was:\n{trained.stderr}")


# --------------------------------------------------------------------------- adapters


@pytest.fixture
def adapter_ws(tmp_path, huge_example_training) -> Path:
    """A workspace holding a copy of a real trained adapter, `first`."""
    source, _, trained = huge_example_training
    ok(trained)
    workspace = tmp_path / "adapter-ws"
    (workspace / "adapters").mkdir(parents=True)
    shutil.copytree(source / "adapters" / "first", workspace / "adapters" / "first")
    ExampleStore(workspace / "data").close()
    return workspace


@pytest.mark.parametrize("argv", [
    ["ask", "hello", "--adapter", "nope", "--max-new-tokens", "5"],
    ["adapters", "show", "nope"],
    ["adapters", "rm", "nope"],
])
def test_unknown_adapter_name(adapter_ws, argv):
    before = state(adapter_ws)
    line = fails_cleanly(adapter_ws, sftchat(adapter_ws, *argv, in_process=True), before, "'nope'")
    assert "first" in line  # the fix: the names that do exist


def test_an_adapter_made_for_another_base_model(adapter_ws):
    meta_path = adapter_ws / "adapters" / "first" / "sftchat.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["base_model"] = {"model": "Qwen/Qwen2.5-0.5B", "revision": "0" * 40,
                          "fingerprint": "f" * 64}
    meta_path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    before = state(adapter_ws)
    result = sftchat(adapter_ws, "ask", "hello", "--adapter", "first", "--max-new-tokens", "5", in_process=True)
    fails_cleanly(adapter_ws, result, before, "'first'", "Qwen/Qwen2.5-0.5B",
                  "--model Qwen/Qwen2.5-0.5B")
    assert result.stdout == ""


def test_a_corrupted_adapter_file(adapter_ws):
    weights = adapter_ws / "adapters" / "first" / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk or a bad copy
    before = state(adapter_ws)
    result = sftchat(adapter_ws, "ask", "hello", "--adapter", "first", "--max-new-tokens", "5", in_process=True)
    fails_cleanly(adapter_ws, result, before, "'first'", "corrupted",
                  "sftchat adapters rm first")
    assert result.stdout == ""


def test_an_adapter_folder_without_its_weights_file(adapter_ws):
    (adapter_ws / "adapters" / "first" / "adapter_model.safetensors").unlink()
    before = state(adapter_ws)
    result = sftchat(adapter_ws, "ask", "hello", "--adapter", "first", "--max-new-tokens", "5",
                     in_process=True)
    fails_cleanly(adapter_ws, result, before, "'first'", "adapter_model.safetensors is missing",
                  "sftchat adapters rm first")
    assert result.stdout == ""


def test_a_chat_template_the_model_does_not_have(filled):
    # The built-in model is a base model: it has no chat template.
    before = state(filled)
    result = sftchat(filled, "--template", "tokenizer", "ask", "hello", "--max-new-tokens", "5",
                     in_process=True)
    fails_cleanly(filled, result, before, "needs a tokenizer with a chat template",
                  "--template alpaca or chatml")


@pytest.mark.parametrize("argv", [
    ["data", "add", "--instruction", "-", "--response", "-"],
    ["data", "add", "--instruction", "Q", "--response", "-", "--system", "-"],
    ["data", "edit", "1", "--response", "-", "--input", "-"],
    ["pins", "add", "--instruction", "-", "--response", "-"],
])
def test_stdin_is_read_for_one_option_only(filled, argv):
    # Before, the second '-' read what the first left: nothing, then "empty" or a wrong save.
    before = state(filled)
    result = sftchat(filled, *argv, stdin="some text\n", in_process=True)
    fails_cleanly(filled, result, before, "can be read from stdin ('-')", "give the others")


# --------------------------------------------------------------------------- models


def test_a_missing_model(filled, tmp_path):
    before = state(filled)
    result = sftchat(filled, "ask", "hello", "--model", "./nope", "--max-new-tokens", "5",
                 cwd=tmp_path)
    fails_cleanly(filled, result, before, "./nope", "does not exist")
    result = sftchat(filled, "train", "--max-steps", "1", "--model", "./nope", cwd=tmp_path)
    fails_cleanly(filled, result, before, "./nope", "does not exist")


def test_an_unsupported_model(filled, tmp_path):
    from sftchat.models.builtin import ensure_builtin_model

    builtin = ensure_builtin_model()
    folder = tmp_path / "t5-small"
    folder.mkdir()
    for name in os.listdir(builtin):
        if name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(builtin / name, folder / name)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "d_model": 64,
        "d_ff": 128, "num_layers": 2, "num_heads": 2, "d_kv": 32, "vocab_size": 576,
        "is_encoder_decoder": True, "decoder_start_token_id": 2,
    }), encoding="utf-8")
    before = state(filled)
    result = sftchat(filled, "ask", "hello", "--model", str(folder), "--max-new-tokens", "5", in_process=True)
    line = fails_cleanly(filled, result, before, "'t5'", "causal")
    assert str(folder) in line or "t5-small" in line


# --------------------------------------------------------------------------- sftchat.toml


BAD_CONFIGS = {
    "bad TOML": ('model = "builtin\n', ["not valid TOML"]),
    "unknown key": ('modle = "builtin"\n', ["unknown setting", "'modle'", "model"]),
    "wrong type": ('[training]\nlr = "fast"\n', ["lr", "float", "'fast'"]),
    "negative lr": ("[training]\nlr = -0.001\n", ["lr", "positive", "-0.001"]),
}


@pytest.mark.parametrize("argv", [["data", "list"],
                                  ["ask", "hello", "--max-new-tokens", "5"]],
                         ids=["data-list", "ask"])
@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_invalid_values_in_sftchat_toml(filled, case, argv):
    text, fragments = BAD_CONFIGS[case]
    (filled / "sftchat.toml").write_text(text, encoding="utf-8")
    before = state(filled)
    result = sftchat(filled, *argv, in_process=True)
    # The file is named, so the user knows where to fix it.
    fails_cleanly(filled, result, before, "sftchat.toml", *fragments)
    assert result.stdout == ""
