"""The Ollama folder's Modelfile: a Go TEMPLATE that renders sftchat's own prompt.

The TEMPLATE is not written by hand per template name: it is learned from the prompt ids
sftchat itself trains on and chats with (`sftchat.prompts.encode_prompt`). A conversation of
sentinel words is encoded, decoded, and split on the sentinels; the text between them is the
template's structure (the header with and without a system prompt, the text after a user
message, the text after an answer: its end token and the next turn's opening). There is one
owner of the prompt, so Ollama sees the text training saw, for Alpaca, ChatML and any chat
template alike; a template whose structure is not the same from turn to turn is refused.

- `prompt_segments(template, tokenizer)` -> `PromptSegments`, the structure.
- `go_template(segments)` -> the TEMPLATE text (Go text/template, as Ollama runs it).
- `modelfile(base, adapter, template_text, stops, system, parameters)` -> the Modelfile.
- `stop_texts(template, tokenizer)` -> the `PARAMETER stop` strings.
- `ollama_create_command(name, folder)` -> the `ollama create` line to run.

Known limits: a leading BOS is left to llama.cpp (the GGUF says whether to add it) and
reported in `segments.bos`; Go's text/template cannot trim, so a template that trims messages
(Llama 3's) gets them untrimmed (`segments.trims`); Ollama messages have no Alpaca `input`.
Imports neither torch nor transformers: the tokenizer is passed in.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftchat.conversation import Turn
from sftchat.errors import SftchatError
from sftchat.prompts import encode_prompt, stop_strings, stop_token_ids


class TemplateExportError(SftchatError, ValueError):
    """A prompt template (or text for the Modelfile) that Ollama cannot be given as is."""


@dataclass(frozen=True)
class PromptSegments:
    """The literal text around the messages of a conversation, as sftchat renders it."""

    header: str              # before the first user message, no system prompt given
    system_before: str | None  # before the system prompt (None: the template has none)
    system_after: str        # between the system prompt and the first user message
    user_after: str          # after a user message: the generation prompt
    assistant_after: str     # after an answer (end token included), up to the next message
    bos: str = ""            # the BOS text left to llama.cpp / Ollama to add
    trims: bool = False      # the template strips whitespace around messages


# Sentinels: plain words every tokenizer round-trips, none a part of another.
_SYSTEM = "SFTCHATSYSTEMPROMPT"
_USERS = ("SFTCHATUSERONE", "SFTCHATUSERTWO", "SFTCHATUSERTHREE")
_ANSWERS = ("SFTCHATANSWERONE", "SFTCHATANSWERTWO")
_SENTINELS = re.compile(f"({'|'.join((_SYSTEM, *_USERS, *_ANSWERS))})")


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer itself puts a BOS in front of text (llama.cpp does the same)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = list(tokenizer("a")["input_ids"]) if bos is not None else []
    return bool(ids) and ids[0] == bos


def _encoded(template: str, tokenizer: Any, system: str, turns: int = 2,
             user: str = _USERS[2]) -> tuple[str, str]:
    """(the BOS text, the rest) of sftchat's prompt for a conversation of sentinels."""
    history = [Turn(question, answer) for question, answer in zip(_USERS, _ANSWERS)][:turns]
    ids = encode_prompt(tokenizer, template, user, history=history, system=system).ids
    if ids and ids[0] == tokenizer.bos_token_id and _adds_bos(tokenizer):
        return _decode(tokenizer, ids[:1]), _decode(tokenizer, ids[1:])
    return "", _decode(tokenizer, ids)


def _pieces(template: str, tokenizer: Any, system: str) -> tuple[str, list[str]]:
    bos, text = _encoded(template, tokenizer, system)
    parts = _SENTINELS.split(text)
    expected = [_SYSTEM] * bool(system) + [_USERS[0], _ANSWERS[0], _USERS[1], _ANSWERS[1],
                                             _USERS[2]]
    if parts[1::2] != expected:
        raise TemplateExportError(
            f"the {template} template does not show every message once and verbatim, so "
            "Ollama cannot be given a template that renders it; export as gguf instead")
    return bos, parts[0::2]


def prompt_segments(template: str, tokenizer: Any) -> PromptSegments:
    """The structure of `template` (a concrete one: alpaca, chatml, tokenizer), learned from
    sftchat's own prompt ids for a three-turn conversation, with and without a system prompt."""
    bos, plain = _pieces(template, tokenizer, "")
    header, user_after, assistant_after = plain[0], plain[1], plain[2]
    # plain: header U1 user_after A1 assistant_after U2 user_after A2 assistant_after U3 user_after
    consistent = plain[1:] == [user_after, assistant_after] * 2 + [user_after]
    try:
        system_bos, with_system = _pieces(template, tokenizer, _SYSTEM)
    except SftchatError:
        raise
    except Exception:  # noqa: BLE001 - a template that refuses a system role (Gemma's) has none
        system_before, system_after = None, ""
    else:
        system_before, system_after = with_system[0], with_system[1]
        consistent = consistent and system_bos == bos and with_system[2:] == plain[1:]
    if not consistent:
        raise TemplateExportError(
            f"the {template} template renders the text between messages differently from "
            "turn to turn, which an Ollama template cannot express; export as gguf instead")
    padded = _encoded(template, tokenizer, "", turns=0, user=f" {_USERS[0]} ")[1]
    return PromptSegments(header, system_before, system_after, user_after, assistant_after,
                          bos=bos, trims=f" {_USERS[0]} " not in padded)


# Literal text that Go's template parser or Ollama's Modelfile parser would not keep as is:
# action delimiters, quotes (no `\"\"\"` may reach the Modelfile), a `{` that would join the
# next action's `{{`, and characters Ollama's parser drops (it keeps only printable ones).
_UNSAFE = re.compile(r'\{\{|\}\}|\{\Z|"|[^ -~\n\t]')


def _go_string(text: str) -> str:
    out = ""
    for char in text:
        if char in '"\\':
            out += "\\" + char
        elif char.isprintable():
            out += char
        else:
            out += f"\\u{ord(char):04x}" if ord(char) < 0x10000 else f"\\U{ord(char):08x}"
    return '"' + out + '"'


def _literal(text: str) -> str:
    def escape(match: re.Match) -> str:
        piece = match.group()
        if len(piece) == 1 and piece.isprintable() and piece not in '{"':
            return piece  # printable non-ASCII text stays readable
        return "{{" + _go_string(piece) + "}}"

    return _UNSAFE.sub(escape, text)


def go_template(segments: PromptSegments) -> str:
    """Ollama's TEMPLATE for `segments`. `.System` is rendered once at the top and system
    messages inside `.Messages` are skipped (Ollama versions differ on where it puts the
    system prompt); an answer that ends the list (a prefill) gets no text after it."""
    if segments.system_before is None:
        head = _literal(segments.header)
    else:
        head = ("{{if .System}}" + _literal(segments.system_before) + "{{.System}}"
                + _literal(segments.system_after) + "{{else}}" + _literal(segments.header)
                + "{{end}}")
    return (head + "{{range $i, $m := .Messages}}"
            + '{{if eq $m.Role "user"}}{{$m.Content}}' + _literal(segments.user_after)
            + '{{else if eq $m.Role "assistant"}}{{$m.Content}}'
            + "{{if ne (len (slice $.Messages $i)) 1}}" + _literal(segments.assistant_after)
            + "{{end}}{{end}}{{end}}")


def _block(what: str, text: str) -> str:
    """`text` inside a Modelfile's triple quotes: Ollama's parser has no escapes."""
    if '"""' in text:
        raise TemplateExportError(f'the {what} contains """, which ends a Modelfile value '
                                  "early; remove it and export again")
    if any(not char.isprintable() and char not in "\n\t" for char in text):
        raise TemplateExportError(f"the {what} contains control or invisible characters that "
                                  "Ollama's Modelfile parser drops; remove them")
    return text


def _line(what: str, text: str) -> str:
    """A one-line Modelfile value: Ollama strips the outer quotes and unescapes nothing."""
    if not text or "\n" in text or "\r" in text:
        raise TemplateExportError(f"the {what} {text!r} cannot be a one-line Modelfile value")
    return _block(what, text)


def _local(path: str) -> str:
    path = _line("path", path)
    return path if path.startswith(("/", "./", "../", "~")) else "./" + path


def _parameter(key: str, value: Any) -> list[str]:
    if not re.fullmatch(r"[A-Za-z0-9_]+", key):
        raise TemplateExportError(f"{key!r} is not an Ollama parameter name")
    values = value if isinstance(value, (list, tuple)) else [value]
    lines = []
    for item in values:
        if isinstance(item, bool):
            text = "true" if item else "false"
        elif isinstance(item, (int, float)):
            text = str(item)
        else:
            text = '"' + _line(f"parameter {key}", str(item)) + '"'
        lines.append(f"PARAMETER {key} {text}")
    return lines


def modelfile(base: str, adapter: str | None, template_text: str, stops: list[str],
              system: str = "", parameters: dict | None = None) -> str:
    """The Modelfile text: FROM, ADAPTER, TEMPLATE, one `PARAMETER stop` per stop string,
    `parameters` (e.g. {"num_ctx": 2048}), SYSTEM. Paths are relative to the Modelfile's
    folder. Text Ollama's parser cannot carry exactly is refused (`TemplateExportError`)."""
    lines = [f"FROM {_local(base)}"]
    if adapter:
        lines.append(f"ADAPTER {_local(adapter)}")
    lines.append(f'TEMPLATE """{_block("template", template_text)}"""')
    lines += [f'PARAMETER stop "{_line("stop string", stop)}"' for stop in stops]
    for key, value in (parameters or {}).items():
        lines += _parameter(key, value)
    if system:
        lines.append(f'SYSTEM """{_block("system prompt", system)}"""')
    return "\n".join(lines) + "\n"


def stop_texts(template: str, tokenizer: Any) -> list[str]:
    """The text of every token that ends generation, then the template's stop strings."""
    texts = [_decode(tokenizer, [token_id]) for token_id in stop_token_ids(template, tokenizer)]
    return list(dict.fromkeys(text for text in [*texts, *stop_strings(template)] if text))


def ollama_create_command(name: str, folder: Path) -> str:
    """The shell line that makes the exported folder an Ollama model called `name`."""
    modelfile_path = Path(folder).expanduser().absolute() / "Modelfile"
    return f"ollama create {shlex.quote(name)} -f {shlex.quote(str(modelfile_path))}"
