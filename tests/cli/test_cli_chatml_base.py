"""ChatML on a tokenizer without ChatML's tokens (issue 31): a base model whose vocabulary has
no `<|im_start|>` / `<|im_end|>` would get the template's markers as plain text (a user
could type them) and no end token of the turn, so the model would never learn to stop.
sftchat refuses the template for it with one sentence, at model load: before a training run
starts (`sftchat train` exits non-zero, no adapter) and before the chat answers.

The model is the built-in one with its two ChatML tokens renamed in tokenizer.json (weights
and every other token as they are): the built-in tokenizer itself has them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, ok, sftchat

from sftchat import prompts
from sftchat.engine import ChatEngine

REFUSAL = "template 'chatml' needs the tokens <|im_start|> and <|im_end|>"
RENAMED = {"<|im_start|>": "<|reserved_0|>", "<|im_end|>": "<|reserved_1|>"}


@pytest.fixture(scope="module")
def base_without_chatml(tmp_path_factory, builtin_cache) -> Path:
    from sftchat.models.builtin import ensure_builtin_model

    folder = tmp_path_factory.mktemp("no-chatml") / "model"
    shutil.copytree(ensure_builtin_model(), folder)
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    for token in data["added_tokens"]:
        token["content"] = RENAMED.get(token["content"], token["content"])
    vocab = data["model"]["vocab"]
    for old, new in RENAMED.items():
        vocab[new] = vocab.pop(old)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return folder


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_chatml_is_refused_for_a_tokenizer_without_its_tokens(base_without_chatml):
    tokenizer = _tokenizer(base_without_chatml)
    assert "<|im_end|>" not in tokenizer.get_added_vocab()
    with pytest.raises(prompts.TemplateError, match=r"use --template alpaca or auto") as error:
        prompts.resolve_template("chatml", tokenizer)
    assert REFUSAL in str(error.value)
    # What it would have been: the markers as plain text, nothing of ChatML's own ending it.
    assert prompts.resolve_template("alpaca", tokenizer) == "alpaca"
    assert prompts.resolve_template("auto", tokenizer) == "alpaca"


def test_a_missing_chat_template_is_refused_at_load_without_suggesting_chatml(
        base_without_chatml):
    tokenizer = _tokenizer(base_without_chatml)
    with pytest.raises(prompts.TemplateError, match="has none, use --template alpaca$"):
        prompts.resolve_template("tokenizer", tokenizer)


def test_chatml_is_kept_for_a_tokenizer_with_its_tokens(builtin_cache):
    from sftchat.models.builtin import ensure_builtin_model

    tokenizer = _tokenizer(ensure_builtin_model())
    assert prompts.resolve_template("chatml", tokenizer) == "chatml"
    assert prompts.end_token_id("chatml", tokenizer) == tokenizer.convert_tokens_to_ids(
        "<|im_end|>")


def test_sftchat_train_refuses_chatml_before_the_run(base_without_chatml, ws):
    model = ("--model", str(base_without_chatml), "--device", "cpu")
    ok(sftchat(ws, *model, "data", "add", "--instruction", "Hi?", "--response", "Hello."))
    result = sftchat(ws, *model, "--template", "chatml", "train", "--name", "chat",
                     "--max-steps", "1")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert REFUSAL in last and "alpaca" in last, result.stderr
    assert not (ws / "adapters" / "chat").exists()


def test_the_chat_refuses_chatml_at_model_load(base_without_chatml, ws):
    from sftchat.models.loader import load_model

    loaded = load_model(str(base_without_chatml), "cpu", quantize=True)
    with pytest.raises(prompts.TemplateError, match="use --template alpaca or auto"):
        ChatEngine(loaded, "chatml")
    assert ChatEngine(loaded, "auto").template == "alpaca"
    # `sftchat ask` (the chat app's load goes through the same engine) says it in one line.
    model = ("--model", str(base_without_chatml), "--device", "cpu")
    assert_one_line_error(sftchat(ws, *model, "--template", "chatml", "ask", "Hi?",
                                  "--max-new-tokens", "2", in_process=True), REFUSAL)
