"""`sftchat eval` (issue 12, item 6) and adapter lineage (item 5) on the built-in model.

`eval` runs once through a real process (its exit code is what a script sees); the rest
in-process. The workspace starts as a copy of the session's trained one (adapter `first`
trained on CURATED).
"""

from __future__ import annotations

import json
import shutil

from cli_helpers import assert_one_line_error, sftchat
from conftest import CURATED

from sftchat.dataset.store import ExampleStore


def _copy(trained_workspace, tmp_path):
    workspace = tmp_path / "ws"
    shutil.copytree(trained_workspace, workspace)
    return workspace


def test_eval_fails_on_regression_when_a_pinned_answer_changes(trained_workspace, tmp_path):
    workspace = _copy(trained_workspace, tmp_path)
    question = CURATED[0][0]
    base = sftchat(workspace, "ask", question, "--adapter", "none", "--temperature", "0",
                   "--max-new-tokens", "16", check=True, in_process=True).stdout[:-1]
    # Pinned: the base model's answer. `first` answers "Paris." instead: a changed pin.
    sftchat(workspace, "pins", "add", "--instruction", question, "--response", base,
            check=True, in_process=True)
    result = sftchat(workspace, "eval", "--fail-on", "regression")
    assert result.returncode == 1, result.stderr
    assert "pin 1 changed" in result.stdout and "candidate: Paris." in result.stdout
    assert result.stderr.splitlines()[-1].startswith("sftchat: regression: first: "
                                                     f"reproduces {len(CURATED)}/")
    # Without --fail-on the same comparison exits 0.
    again = sftchat(workspace, "eval", "--json", in_process=True)
    assert again.returncode == 0
    report = json.loads(again.stdout)
    assert report["broken_pins"] == [1] and report["regression"] is True
    assert report["current"]["name"] is None and report["candidate"]["name"] == "first"


def test_eval_answers_extra_prompts_side_by_side(trained_workspace, tmp_path):
    workspace = _copy(trained_workspace, tmp_path)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"Say hello in Japanese."\n{"prompt": "Give me a smiley."}\n\n',
                       encoding="utf-8")
    report = json.loads(sftchat(workspace, "eval", "--prompts", str(prompts), "--json",
                                check=True, in_process=True).stdout)
    assert report["prompts"] == ["Say hello in Japanese.", "Give me a smiley."]
    assert report["candidate"]["prompt_answers"] == ["こんにちは！", "🙂😀"]
    assert len(report["current"]["prompt_answers"]) == 2
    assert report["regression"] is False   # no pins, and more curated answers than the base
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt here"}\n', encoding="utf-8")
    assert_one_line_error(sftchat(workspace, "eval", "--prompts", str(bad), in_process=True),
                          "line 1: no prompt")
    assert_one_line_error(sftchat(workspace, "eval", "--adapter", "a", "--adapter", "b",
                                  "--adapter", "c", in_process=True), "at most two")


def test_lineage_diff_and_list(trained_workspace, tmp_path):
    workspace = _copy(trained_workspace, tmp_path)
    with ExampleStore(workspace / "data") as store:
        added = store.add("Count to three.", "1, 2, 3.")
        store.update(2, response="やあ！")
        store.delete(5)
    sftchat(workspace, "train", "--name", "second", "--from", "first", "--max-steps", "1",
            check=True, in_process=True)
    diff = sftchat(workspace, "adapters", "diff", "first", "second", check=True,
                   in_process=True)
    assert [line.split()[:2] for line in diff.stdout.splitlines()] == \
        [["+", str(added)], ["~", "2"], ["-", "5"]]
    assert "first -> second: 1 added, 1 edited, 1 removed" in diff.stderr
    assert json.loads(sftchat(workspace, "adapters", "diff", "first", "second", "--json",
                              check=True, in_process=True).stdout) == \
        {"added": [added], "removed": [5], "edited": [2]}
    rows = json.loads(sftchat(workspace, "adapters", "list", "--json", check=True,
                              in_process=True).stdout)
    assert [(r["name"], r["parent"], r["compared_with"], r["decision"]) for r in rows] == \
        [("first", None, None, None), ("second", "first", "first", None)]
    assert rows[1]["dataset_change"] == {"added": [added], "removed": [5], "edited": [2]}
    text = sftchat(workspace, "adapters", "list", check=True, in_process=True).stdout
    assert "+1 ~1 -1" in text and "from first" in text and "undecided" in text
    assert_one_line_error(sftchat(workspace, "adapters", "diff", "first", "none",
                                  in_process=True), "has no dataset")
