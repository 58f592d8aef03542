"""`sftchat ask --messages FILE [--system TEXT]` (issue 19, item 6): answer the last user
message of an OpenAI messages file after the turns before it, with the built-in model.

The built-in model answers gibberish, so the tests check behaviour: the command line gives
exactly the greedy answer the engine gives in-process for the same conversation, earlier
turns and system prompt change the prompt (its token count) and the answer, and every
malformed file or conflicting option is one line before the model loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, ok, sftchat

from sftchat.config import GenerationSettings
from sftchat.conversation import Turn
from sftchat.engine import ChatEngine

QUESTION = "What is its population?"
FRANCE = [{"role": "user", "content": "What is the capital of France?"},
          {"role": "assistant", "content": "Paris."}]
JAPAN = [{"role": "user", "content": "What is the capital of Japan?"},
         {"role": "assistant", "content": "Tokyo."}]
SYSTEM = "Be terse."
GREEDY = ("--temperature", "0", "--max-new-tokens", "8")


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def answer_of(result) -> str:
    ok(result)
    assert result.stdout.endswith("\n")
    return result.stdout[:-1]


def test_ask_answers_the_last_user_message_after_the_earlier_turns(ws, tmp_path,
                                                                  builtin_model):
    france = write(tmp_path / "france.json", [*FRANCE, {"role": "user", "content": QUESTION}])
    japan = write(tmp_path / "japan.json", {"messages": [
        {"role": "system", "content": SYSTEM}, *JAPAN, {"role": "user", "content": QUESTION}]})
    got = {
        # A real process once; in-process (one model load each, no interpreter) elsewhere.
        "france": answer_of(sftchat(ws, "ask", "--messages", str(france), *GREEDY)),
        "japan": answer_of(sftchat(ws, "ask", "--messages", str(japan), *GREEDY,
                                   in_process=True)),
        "plain": answer_of(sftchat(ws, "ask", QUESTION, "--system", SYSTEM, *GREEDY,
                                   in_process=True)),
    }
    # The workspace's `system` setting is the default system prompt; '-' reads stdin.
    configured = tmp_path / "configured"
    configured.mkdir()
    (configured / "sftchat.toml").write_text(f'system = "{SYSTEM}"\n', encoding="utf-8")
    without_system = json.dumps([*JAPAN, {"role": "user", "content": QUESTION}])
    got["japan, system from sftchat.toml"] = answer_of(sftchat(
        configured, "ask", "--messages", "-", *GREEDY, stdin=without_system, in_process=True))

    engine = ChatEngine(builtin_model, "auto")
    greedy = GenerationSettings(max_new_tokens=8, temperature=0)
    turns = {"france": (Turn(FRANCE[0]["content"], "Paris."),),
             "japan": (Turn(JAPAN[0]["content"], "Tokyo."),), "plain": ()}
    runs = {}
    for name, history, system in (("france", turns["france"], ""),
                                  ("japan", turns["japan"], SYSTEM),
                                  ("plain", (), SYSTEM),
                                  ("japan, no system", turns["japan"], ""),
                                  ("no history, no system", (), "")):
        runs[name] = engine.generate(QUESTION, history=history, system=system,
                                     settings=greedy)
        runs[name].collect()
    for name in ("france", "japan", "plain"):
        assert got[name] == runs[name].text, name
    assert got["japan, system from sftchat.toml"] == got["japan"]
    # The earlier turns and the system prompt are in the prompt, and change the answer.
    assert runs["france"].prompt_tokens > runs["no history, no system"].prompt_tokens
    assert runs["japan"].prompt_tokens != runs["japan, no system"].prompt_tokens
    assert runs["plain"].prompt_tokens != runs["no history, no system"].prompt_tokens
    assert len({run.text for run in runs.values()}) > 1


@pytest.mark.parametrize("content, extra, fragments", [
    ([*FRANCE], [], ["chat.json ends with an assistant message",
                     "the last message must be the user message to answer"]),
    ([FRANCE[1], FRANCE[0]], [], ["chat.json, message 1 is from the assistant where the "
                                  "user was expected"]),
    ([{"role": "user", "content": "q"}, {"role": "user", "content": "q2"}], [],
     ["message 2 is from the user where the assistant was expected"]),
    ('[{"role": "user", "content": "q"}', [], ["chat.json: not valid JSON at line 1"]),
    ({"prompt": "q"}, [], ["chat.json: expected a JSON list of messages", "got dict"]),
    ([{"role": "user", "content": ["q"]}], [], ["message 1: 'content' must be a string"]),
    ([{"role": "tool", "content": "x"}], [], ["message 1 has role 'tool'"]),
    ([], [], ["chat.json has no user message"]),
    ([{"role": "system", "content": "S"}, {"role": "user", "content": "q"}],
     ["--system", "T"], ["chat.json has a system message and --system was given too"]),
    ([{"role": "user", "content": "q"}], ["a prompt"], ["give no PROMPT or --input"]),
    ([{"role": "user", "content": "q"}], ["--input", "x"], ["give no PROMPT or --input"]),
])
def test_bad_messages_files_are_one_line_before_the_model_loads(ws, tmp_path, content, extra,
                                                                 fragments):
    path = tmp_path / "chat.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content),
                    encoding="utf-8")
    # The same words the import uses for the same mistakes (one parser for both).
    result = sftchat(ws, "ask", "--messages", str(path), *extra, in_process=True)
    assert_one_line_error(result, *fragments)
    assert result.stdout == ""


def test_ask_needs_a_prompt_or_a_messages_file(ws, tmp_path):
    assert_one_line_error(sftchat(ws, "ask", in_process=True), "nothing to ask",
                          "--messages FILE")
    assert_one_line_error(sftchat(ws, "ask", "--messages", str(tmp_path / "none.json"),
                                  in_process=True), "none.json: no such file")
    help_text = ok(sftchat(None, "ask", "--help", in_process=True)).stdout
    assert "--messages FILE" in help_text and "--system TEXT" in help_text
