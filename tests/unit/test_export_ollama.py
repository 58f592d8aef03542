"""The Ollama export's Modelfile: its TEMPLATE, run by real Go text/template (as Ollama runs
it), renders exactly the prompt sftchat trains on and chats with — for Alpaca, ChatML,
Llama-3- and Mistral-style chat templates on the built-in tokenizer, and SmolLM2's real one.

The Go renderer is tests/go/ollama_template (standard library only, built once per run);
without a Go toolchain the tests that need it skip, saying so.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sftchat import prompts
from sftchat.conversation import Turn
from sftchat.errors import SftchatError
from sftchat.export.ollama import (
    PromptSegments, TemplateExportError, go_template, modelfile, ollama_create_command,
    prompt_segments, stop_texts)


GO_SOURCE = Path(__file__).resolve().parents[1] / "go" / "ollama_template"
NO_GO = ("the Go toolchain is not installed (apt-get install golang-go); it renders Ollama's "
         "template as Ollama does")

LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
# Mistral's instruction format; the system prompt opens the first instruction.
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% if message['role'] == 'user' %}"
    "[INST] {% if loop.first %}{{ system }}{% endif %}{{ message['content'] }} [/INST]"
    "{% else %}{{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
# Gemma-style: no system role at all.
NO_SYSTEM_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{{ bos_token }}{% for message in messages %}<turn>{{ message['role'] }}\n"
    "{{ message['content'] }}<end>\n{% endfor %}{% if add_generation_prompt %}<turn>assistant\n"
    "{% endif %}"
)
# The text before a user message depends on its index: no Ollama template can say that.
NUMBERED_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER{{ loop.index }}: "
    "{{ message['content'] }}\n{% else %}BOT: {{ message['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}BOT: {% endif %}"
)
CHAT_TEMPLATES = {"llama3": LLAMA3_CHAT_TEMPLATE, "mistral": MISTRAL_CHAT_TEMPLATE,
                  "no-system": NO_SYSTEM_CHAT_TEMPLATE, "numbered": NUMBERED_CHAT_TEMPLATE}

FIRST = Turn('My cat is called "Tom" {{ .System }}.', "Nice name!")
LAST = "What is my cat called?"
SYSTEM = "You answer in one short sentence."


@pytest.fixture(scope="session")
def go_render(tmp_path_factory):
    """render(template, system, messages) -> text, by tests/go/ollama_template."""
    go = shutil.which("go")
    if go is None:
        pytest.skip(NO_GO)
    root = tmp_path_factory.mktemp("go")
    env = {**os.environ, "GOCACHE": str(root / "cache"), "GOPATH": str(root / "path"),
           "GOENV": "off", "GOFLAGS": "", "GOPROXY": "off", "GOTOOLCHAIN": "local",
           "CGO_ENABLED": "0"}
    binary = root / "ollama-template"
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=GO_SOURCE, env=env, check=True,
                   capture_output=True, timeout=300)

    def render(template: str, system: str, messages: list[dict]) -> str:
        done = subprocess.run([str(binary)], input=json.dumps(
            {"template": template, "system": system, "messages": messages}),
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    return render


@pytest.fixture(scope="module")
def tokenizers(builtin_cache):
    """tokenizers(name): the built-in tokenizer, a fresh one per chat template (prompts caches
    per tokenizer object what its chat template ends an answer with)."""
    from transformers import AutoTokenizer

    from sftchat.models.builtin import ensure_builtin_model

    made = {}

    def get(name: str = "builtin"):
        if name not in made:
            made[name] = AutoTokenizer.from_pretrained(ensure_builtin_model())
            if name != "builtin":
                made[name].chat_template = CHAT_TEMPLATES[name]
        return made[name]

    return get


def _sftchat_text(tokenizer, template: str, segments: PromptSegments, system: str,
                  history=(FIRST,), last: str = LAST) -> str:
    """The decoded ids sftchat trains on and chats with, BOS left to llama.cpp."""
    ids = prompts.encode_prompt(tokenizer, template, last, history=history, system=system).ids
    if segments.bos:
        assert ids[0] == tokenizer.bos_token_id
        ids = ids[1:]
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _messages(system: str, system_in_messages: bool, history=(FIRST,), last: str = LAST):
    messages = [{"role": "system", "content": system}] if system and system_in_messages else []
    for turn in history:
        messages += [{"role": "user", "content": turn.instruction},
                     {"role": "assistant", "content": turn.response}]
    return messages + [{"role": "user", "content": last}]


CASES = [("builtin", "alpaca"), ("builtin", "chatml"), ("llama3", "tokenizer"),
         ("mistral", "tokenizer"), ("no-system", "tokenizer"), ("smollm2", "tokenizer")]
# Ollama puts the system prompt in .System, and (depending on the version) in .Messages too.
SYSTEMS = [("", False), (SYSTEM, False), (SYSTEM, True)]


@pytest.mark.parametrize("system,system_in_messages", SYSTEMS,
                         ids=["no-system", "system", "system-also-in-messages"])
@pytest.mark.parametrize("tokenizer_name,template", CASES, ids=[f"{t}-{n}" for n, t in CASES])
def test_ollama_renders_the_prompt_sftchat_trains_on(go_render, tokenizers, request,
                                                     tokenizer_name, template, system,
                                                     system_in_messages):
    tokenizer = (request.getfixturevalue("smollm2_tokenizer") if tokenizer_name == "smollm2"
                 else tokenizers(tokenizer_name))
    segments = prompt_segments(template, tokenizer)
    if segments.system_before is None:  # the template has no system prompt: neither has Ollama's
        expected = _sftchat_text(tokenizer, template, segments, "")
    else:
        expected = _sftchat_text(tokenizer, template, segments, system)
    rendered = go_render(go_template(segments), system, _messages(system, system_in_messages))
    assert rendered == expected
    assert FIRST.instruction in rendered and (system in rendered or segments.system_before is None)


def test_alpaca_segments(tokenizers):
    segments = prompt_segments("alpaca", tokenizers())
    assert segments == PromptSegments(
        header=prompts.ALPACA_HEADER + "### Instruction:\n", system_before="",
        system_after="\n\n### Instruction:\n", user_after="\n\n### Response:\n",
        assistant_after="</s>\n\n### Instruction:\n", bos="<s>", trims=False)


def test_smollm2_keeps_its_own_default_system_prompt(smollm2_tokenizer):
    segments = prompt_segments("tokenizer", smollm2_tokenizer)
    # <|im_start|> is SmolLM2's BOS, but its tokenizer never adds it: it stays template text.
    assert segments.bos == ""
    assert segments.header.startswith("<|im_start|>system\nYou are a helpful AI assistant named")
    assert (segments.system_before, segments.user_after) == (
        "<|im_start|>system\n", "<|im_end|>\n<|im_start|>assistant\n")
    assert segments.assistant_after == "<|im_end|>\n<|im_start|>user\n"


def test_trimming_templates_are_reported(tokenizers):
    assert prompt_segments("tokenizer", tokenizers("llama3")).trims
    assert not prompt_segments("chatml", tokenizers()).trims


def test_a_template_without_a_system_role_ignores_ollamas_system(tokenizers):
    segments = prompt_segments("tokenizer", tokenizers("no-system"))
    assert segments.system_before is None
    assert ".System" not in go_template(segments)


def test_a_structure_that_changes_from_turn_to_turn_is_refused(tokenizers):
    with pytest.raises(TemplateExportError, match="differently from turn to turn"):
        prompt_segments("tokenizer", tokenizers("numbered"))
    assert issubclass(TemplateExportError, SftchatError)


def test_a_final_answer_gets_no_text_after_it(go_render, tokenizers):
    segments = prompt_segments("chatml", tokenizers())
    messages = _messages("", False)[:2]
    rendered = go_render(go_template(segments), "", messages)
    assert rendered == segments.header + FIRST.instruction + segments.user_after + FIRST.response


def test_literal_text_survives_go_and_the_modelfile(go_render):
    nasty = 'a {{ .System }} }} """quoted""" \\ tab\t nbsp\u00a0 bell\x07 é 🙂 {'
    segments = PromptSegments(header=nasty + "H", system_before="{", system_after="}",
                              user_after="\n" + nasty, assistant_after='"' + nasty)
    template = go_template(segments)
    assert '"""' not in template and "\u00a0" not in template and "\x07" not in template
    messages = _messages(SYSTEM, False, history=(Turn("u1", "a1"),), last="u2")
    assert go_render(template, "", messages) == (
        nasty + "Hu1" + "\n" + nasty + "a1" + '"' + nasty + "u2" + "\n" + nasty)
    assert go_render(template, SYSTEM, messages).startswith("{" + SYSTEM + "}u1\n")
    assert f'TEMPLATE """{template}"""' in modelfile("base.gguf", None, template, [])


def test_modelfile_text():
    text = modelfile("base.gguf", "adapter.gguf", "{{ .Prompt }}", ["</s>", 'say "hi" \\'],
                     system="Be brief.\nVery.", parameters={"num_ctx": 2048, "mirostat": False})
    assert text == (
        "FROM ./base.gguf\n"
        "ADAPTER ./adapter.gguf\n"
        'TEMPLATE """{{ .Prompt }}"""\n'
        'PARAMETER stop "</s>"\n'
        # Ollama's parser strips the outer quotes and unescapes nothing: the text goes verbatim.
        'PARAMETER stop "say "hi" \\"\n'
        "PARAMETER num_ctx 2048\n"
        "PARAMETER mirostat false\n"
        'SYSTEM """Be brief.\nVery."""\n')
    bare = modelfile("/models/base.gguf", None, "T", [])
    assert bare == 'FROM /models/base.gguf\nTEMPLATE """T"""\n'


@pytest.mark.parametrize("kwargs,message", [
    ({"template_text": 'say """hi"""'}, "template contains"),
    ({"system": 'a """b'}, "system prompt contains"),
    ({"system": "zero\u200bwidth"}, "invisible characters"),
    ({"stops": ["two\nlines"]}, "one-line"),
    ({"stops": [""]}, "one-line"),
    ({"parameters": {"num ctx": 1}}, "parameter name"),
])
def test_modelfile_refuses_what_ollama_cannot_read_back(kwargs, message):
    arguments = {"base": "b.gguf", "adapter": None, "template_text": "T", "stops": [], **kwargs}
    with pytest.raises(TemplateExportError, match=message):
        modelfile(**arguments)


def test_stop_texts(tokenizers):
    tokenizer = tokenizers()
    assert stop_texts("chatml", tokenizer) == ["</s>", "<|im_end|>", "<|im_start|>"]
    assert stop_texts("alpaca", tokenizer) == [
        "</s>", "### Instruction:", "### Response:", "### Input:"]


def test_ollama_create_command(tmp_path):
    folder = tmp_path / "my export"
    words = shlex.split(ollama_create_command("cat-bot:latest", folder))
    assert words == ["ollama", "create", "cat-bot:latest", "-f", str(folder / "Modelfile")]


def test_importing_the_module_does_not_import_torch():
    code = "import sys, sftchat.export.ollama; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"
