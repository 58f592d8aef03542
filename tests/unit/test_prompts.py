"""The template owner: rendering, masking token by token, prefix identity, truncation."""

from __future__ import annotations

import pytest

from sftchat import prompts
from sftchat.prompts import IGNORE_INDEX, ExampleTooLongError, Turn


# A ChatML chat template, as instruct models ship (the built-in model is a base model and
# has none): the "tokenizer" template's tests use the built-in tokenizer with it attached.
CHATML_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(builtin_cache):
    from transformers import AutoTokenizer

    from sftchat.models.builtin import ensure_builtin_model

    tokenizer = AutoTokenizer.from_pretrained(ensure_builtin_model())
    tokenizer.chat_template = CHATML_CHAT_TEMPLATE
    return tokenizer


EXAMPLE = {"instruction": "Name a colour.", "input": "", "response": "Blue — or 青."}
WITH_INPUT = {"instruction": "Summarise.", "input": "Cats sleep a lot.", "output": "Cats nap."}


def test_alpaca_render_is_the_published_template():
    assert prompts.render("alpaca", EXAMPLE) == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nName a colour.\n\n### Response:\n"
        "Blue — or 青."
    )


def test_alpaca_input_variant():
    assert prompts.render("alpaca", WITH_INPUT) == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSummarise.\n\n### Input:\nCats sleep a lot.\n\n### Response:\n"
        "Cats nap."
    )


@pytest.mark.parametrize("template", ["alpaca", "chatml", "tokenizer"])
@pytest.mark.parametrize("example", [EXAMPLE, WITH_INPUT])
def test_inference_prompt_is_byte_identical_prefix_of_training_text(tokenizer, template,
                                                                    example):
    prompt = prompts.render_prompt(template, example["instruction"], example["input"],
                                   tokenizer=tokenizer)
    full = prompts.render(template, example, tokenizer=tokenizer)
    assert full.encode().startswith(prompt.encode())
    assert full[len(prompt):] == prompts.example_field(example, "response")


@pytest.mark.parametrize("template", ["alpaca", "chatml", "tokenizer"])
def test_mask_token_by_token(tokenizer, template):
    encoded = prompts.encode_example(tokenizer, template, EXAMPLE)
    prompt_ids = prompts.encode_prompt(tokenizer, template, EXAMPLE["instruction"]).ids
    n_prompt = len(prompt_ids)
    # The inference prompt's tokens are exactly the first tokens of the training sequence.
    assert encoded.input_ids[:n_prompt] == prompt_ids
    assert len(encoded.labels) == len(encoded.input_ids)
    for position, (token, label) in enumerate(zip(encoded.input_ids, encoded.labels)):
        if position < n_prompt:
            assert label == IGNORE_INDEX, f"prompt token {position} is learned"
        else:
            assert label == token, f"response token {position} is not learned"
    # The learned part is the response followed by the end token, nothing else.
    learned = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != -100]
    assert learned[-1] == prompts.end_token_id(template, tokenizer)
    assert tokenizer.decode(learned[:-1]) == EXAMPLE["response"]
    assert encoded.num_learned == len(learned)


def test_eos_ends_alpaca_and_im_end_ends_chatml(tokenizer):
    assert prompts.end_token_id("alpaca", tokenizer) == tokenizer.eos_token_id
    assert prompts.end_token_id("chatml", tokenizer) == tokenizer.convert_tokens_to_ids(
        "<|im_end|>")
    assert prompts.end_token_id("chatml", tokenizer) != tokenizer.eos_token_id


def test_bos_starts_the_prompt(tokenizer):
    ids = prompts.encode_prompt(tokenizer, "alpaca", "Hi").ids
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1


def test_long_prompt_is_cut_in_the_middle_never_the_response(tokenizer):
    long_example = {"instruction": "word " * 3000 + "THE QUESTION?", "input": "",
                    "response": "The answer."}
    encoded = prompts.encode_example(tokenizer, "alpaca", long_example, max_length=256)
    assert len(encoded.input_ids) <= 256
    assert encoded.prompt.truncated and encoded.prompt.truncated_tokens > 0
    learned = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != -100]
    assert tokenizer.decode(learned[:-1]) == "The answer."
    assert learned[-1] == tokenizer.eos_token_id
    prompt_text = tokenizer.decode(encoded.prompt.ids)
    # The start (template header) and the end (question and response marker) survive.
    assert prompt_text.startswith("<s>Below is an instruction")
    assert prompt_text.endswith("THE QUESTION?\n\n### Response:\n")
    assert prompts.TRUNCATION_MARKER in prompt_text
    assert "cut" in encoded.prompt.notice()


def test_response_too_long_is_refused_not_cut(tokenizer):
    example = {"instruction": "Write a lot.", "input": "", "response": "long answer " * 200}
    with pytest.raises(ExampleTooLongError, match="raise --max-length"):
        prompts.encode_example(tokenizer, "alpaca", example, max_length=128)


def test_short_example_is_not_truncated(tokenizer):
    encoded = prompts.encode_example(tokenizer, "alpaca", EXAMPLE, max_length=512)
    assert not encoded.prompt.truncated
    assert encoded.prompt.notice() is None


def test_history_drops_oldest_turns_first(tokenizer):
    history = [Turn(f"question {i} " + "padding " * 40, f"answer {i}") for i in range(6)]
    full = prompts.encode_prompt(tokenizer, "alpaca", "last?", history=history)
    fitted = prompts.encode_prompt(tokenizer, "alpaca", "last?", history=history,
                                   max_tokens=len(full.ids) // 2)
    assert len(fitted.ids) <= len(full.ids) // 2
    assert fitted.dropped_turns > 0 and fitted.truncated_tokens == 0
    text = tokenizer.decode(fitted.ids)
    assert "question 5" in text and "question 0" not in text
    assert text.endswith("### Instruction:\nlast?\n\n### Response:\n")
    assert "oldest turn" in fitted.notice()


def test_multi_turn_alpaca_repeats_blocks_under_one_header():
    text = prompts.render_prompt("alpaca", "And Spain?", history=[Turn("Capital of France?",
                                                                       "Paris.")])
    assert text.count("Below is an instruction") == 1
    assert ("### Instruction:\nCapital of France?\n\n### Response:\nParis.\n\n"
            "### Instruction:\nAnd Spain?\n\n### Response:\n") in text


def test_supervision_view_brackets_only_the_response(tokenizer):
    encoded = prompts.encode_example(tokenizer, "alpaca", EXAMPLE)
    view = prompts.supervision_view(tokenizer, encoded.input_ids, encoded.labels)
    assert "⟦" not in view.split("### Response:")[0]
    assert view.endswith("### Response:\n⟦" + EXAMPLE["response"] + "</s>⟧")
    assert view.count("⟦") == 1


def test_unknown_template_is_a_clear_error():
    with pytest.raises(prompts.TemplateError, match="choose one of: alpaca, chatml, tokenizer"):
        prompts.render_prompt("vicuna", "hi")


def test_tokenizer_template_needs_a_chat_template():
    class NoTemplate:
        chat_template = None

    with pytest.raises(prompts.TemplateError, match="has none"):
        prompts.render_prompt("tokenizer", "hi", tokenizer=NoTemplate())


def test_auto_is_the_chat_template_when_there_is_one_else_alpaca(tokenizer):
    assert prompts.resolve_template("auto", tokenizer) == "tokenizer"

    class Base:
        chat_template = None

    assert prompts.resolve_template("auto", Base()) == "alpaca"
    assert prompts.resolve_template("chatml", tokenizer) == "chatml"
    # A tokenizer without ChatML's tokens is refused it (issue 31).
    with pytest.raises(prompts.TemplateError, match="use --template alpaca or auto"):
        prompts.resolve_template("chatml", Base())
    with pytest.raises(prompts.TemplateError):
        prompts.resolve_template("vicuna", Base())


def test_the_chat_templates_own_end_token_ends_a_response(tokenizer):
    # ChatML ends an assistant turn with <|im_end|>, not with the tokenizer's EOS (</s>).
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end != tokenizer.eos_token_id
    assert prompts.end_token_id("tokenizer", tokenizer) == im_end
    encoded = prompts.encode_example(tokenizer, "tokenizer", EXAMPLE, 256)
    assert encoded.labels[-1] == im_end
    assert prompts.supervision_view(tokenizer, encoded.input_ids, encoded.labels).endswith(
        "<|im_start|>assistant\n⟦Blue — or 青.<|im_end|>⟧")
    assert im_end in prompts.stop_token_ids("tokenizer", tokenizer)
