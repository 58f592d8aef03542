"""Record schemas of instruction datasets: Alpaca, ShareGPT and chat "messages".

The store holds single-turn examples (instruction, input, response). This module maps one JSON
record of each schema to and from that shape and says exactly what is wrong with a record it
cannot map; how records are laid out in a file (one JSON list or JSONL) is `formats`' business.

- `alpaca`:   {"instruction", "input", "output"}; `response` is accepted for `output`, and a
              missing or null `input` reads as "".
- `sharegpt`: {"conversations": [{"from": "human"|"gpt"|"system", "value": TEXT}, ...]}.
- `messages`: {"messages": [{"role": "user"|"assistant"|"system", "content": TEXT}, ...]}, the
              OpenAI / Hugging Face chat format.

Both chat schemas are read the same way, because datasets mix their spellings freely: a message
may use `from`/`value` or `role`/`content`, and `human`/`user`, `gpt`/`assistant` mean the same.
A conversation must be one user message, then one assistant message, optionally after one
leading system message. Decisions, and why:

- The user text becomes the instruction (input ""), the assistant text the response.
- A leading system message is dropped and counted so the caller can report it. Training
  renders examples into a template without a system prompt, so a stored system text would be
  unused; most chat datasets carry one generic line ("You are a helpful assistant") that
  refusing over would make them unimportable. A system message anywhere else is refused.
- Multi-turn conversations are refused, not split: cutting them into single turns would
  separate each answer from the context it depends on, and folding earlier turns into `input`
  would invent a prompt format. Neither is lossless, so the user decides.
- On export a non-empty input is folded into the user turn (instruction + "\\n\\n" + input):
  chat formats have no separate input field. Importing such a file back therefore gives the
  combined text as the instruction; with an empty input the round trip is exact.
"""

from __future__ import annotations

from sftchat.errors import SftchatError

SCHEMAS = ("alpaca", "sharegpt", "messages")

# schema -> (the record's list field, the role and text fields it writes, role names it writes)
_CHAT = {
    "sharegpt": ("conversations", ("from", "value"), {"user": "human", "assistant": "gpt"}),
    "messages": ("messages", ("role", "content"), {"user": "user", "assistant": "assistant"}),
}
_KEY_PAIRS = (("from", "value"), ("role", "content"))
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "system": "system"}
_SHAPES = ("alpaca {instruction, input, output}, sharegpt {conversations: [{from, value}]}, "
           "messages {messages: [{role, content}]}")


class FormatError(SftchatError, ValueError):
    """The file cannot be read as an instruction dataset (the message says where and why)."""


def detect_schema(record: object) -> str | None:
    """The schema a record's keys name, or None when they name none."""
    if not isinstance(record, dict):
        return None
    if "conversations" in record:
        return "sharegpt"
    if "messages" in record:
        return "messages"
    # Any Alpaca field will do: a record lacking the others then gets Alpaca's own error.
    if any(key in record for key in ("instruction", "output", "response")):
        return "alpaca"
    return None


def unknown_schema(at: str, record: dict) -> FormatError:
    return FormatError(f"{at} is not a record of a known format (it has: {_keys(record)}); "
                       f"understood: {_SHAPES}")


def parse_record(at: str, raw: object, schema: str, detected: bool) -> tuple[dict, int]:
    """({instruction, input, response}, number of system messages dropped) for one record.

    `at` says where the record is ("FILE: line 3"); `detected` is whether the schema came from
    the file's first record rather than from the user, which changes the advice on a mismatch.
    """
    if not isinstance(raw, dict):
        raise FormatError(f"{at} is not a JSON object")
    if schema == "alpaca":
        example, dropped = _parse_alpaca(at, raw, detected), 0
    else:
        example, dropped = _parse_chat(at, raw, schema, detected)
    if not example["instruction"].strip() or not example["response"].strip():
        raise FormatError(f"{at} has an empty instruction or output; fix or remove that record")
    return example, dropped


def render_record(record: dict, schema: str) -> dict:
    """One export record from the store's {instruction, input, output} view."""
    if schema == "alpaca":
        return {"instruction": record["instruction"], "input": record["input"],
                "output": record["output"]}
    list_key, (role_key, text_key), names = _CHAT[schema]
    user = record["instruction"] + ("\n\n" + record["input"] if record["input"] else "")
    return {list_key: [{role_key: names["user"], text_key: user},
                       {role_key: names["assistant"], text_key: record["output"]}]}


def _keys(record: dict) -> str:
    return ", ".join(sorted(map(str, record))) or "nothing"


def _mismatch_advice(raw: dict, schema: str, detected: bool) -> str:
    """The fix when a record lacks its schema's fields because it is of another schema."""
    other = detect_schema(raw)
    if other is None or other == schema:
        return ""
    if detected:
        return (f"; that is the {other} format, but the first record is {schema}: every "
                "record of a file must have the same format")
    return f"; that is the {other} format: import with --format {other} (or auto)"


def _parse_alpaca(at: str, raw: dict, detected: bool) -> dict:
    response = raw.get("output", raw.get("response"))
    instruction = raw.get("instruction")
    if instruction is None or response is None:
        raise FormatError(
            f"{at} has no 'instruction' and 'output' fields (it has: {_keys(raw)}); expected "
            f"Alpaca records {{instruction, input, output}}"
            f"{_mismatch_advice(raw, 'alpaca', detected)}")
    input_text = raw.get("input")
    if input_text is None:
        input_text = ""
    for name, value in (("instruction", instruction), ("output", response),
                        ("input", input_text)):
        if not isinstance(value, str):
            raise FormatError(f"{at}: '{name}' must be a string")
    return {"instruction": instruction, "input": input_text, "response": response}


def _parse_chat(at: str, raw: dict, schema: str, detected: bool) -> tuple[dict, int]:
    list_key, (role_key, text_key), _ = _CHAT[schema]
    if list_key not in raw:
        raise FormatError(
            f"{at} has no '{list_key}' field (it has: {_keys(raw)}); expected {schema} records "
            f"{{{list_key}: [{{{role_key}, {text_key}}}, ...]}}"
            f"{_mismatch_advice(raw, schema, detected)}")
    messages = raw[list_key]
    if not isinstance(messages, list):
        raise FormatError(f"{at}: '{list_key}' must be a list of messages, "
                          f"not {type(messages).__name__}")
    turns = [_message(f"{at}, message {number}", message, role_key, text_key)
             for number, message in enumerate(messages, start=1)]
    dropped = 1 if turns and turns[0][0] == "system" else 0
    rest = turns[dropped:]
    for index, (role, _) in enumerate(rest):
        number = index + dropped + 1
        expected = "user" if index % 2 == 0 else "assistant"
        if role == "system":
            raise FormatError(f"{at}, message {number} is a system message after the "
                              "conversation started; only a leading system message is "
                              "understood: move or remove it")
        if role != expected:
            raise FormatError(f"{at}, message {number} is from the {role} where the "
                              f"{expected} was expected; a conversation must be one user "
                              "message, then one assistant message")
    if not rest:
        raise FormatError(f"{at} has no user and assistant messages; expected one user "
                          "message, then one assistant message")
    if len(rest) % 2:
        raise FormatError(f"{at} ends with a user message; the last message must be the "
                          "assistant's answer: add it or remove that record")
    if len(rest) > 2:
        raise FormatError(
            f"{at} is a multi-turn conversation ({len(rest) // 2} user/assistant exchanges); "
            "only single-turn conversations can be imported, as the dataset holds "
            "single-turn examples: split it into separate records or remove it")
    return {"instruction": rest[0][1], "input": "", "response": rest[1][1]}, dropped


def _message(at: str, message: object, role_key: str, text_key: str) -> tuple[str, str]:
    """(user|assistant|system, text) of one message, in either spelling of its fields."""
    if not isinstance(message, dict):
        raise FormatError(f"{at} is not a JSON object")
    # The schema's own spelling first, so the errors below name the fields the user expects.
    for keys in ((role_key, text_key), *_KEY_PAIRS):
        if keys[0] in message:
            role_key, text_key = keys
            break
    else:
        raise FormatError(f"{at} has no '{role_key}' field (it has: {_keys(message)}); each "
                          f"message needs '{role_key}' and '{text_key}'")
    role = message[role_key]
    if not isinstance(role, str) or role not in _ROLES:
        raise FormatError(f"{at} has {role_key} {role!r}; understood: "
                          f"{', '.join(_ROLES)}")
    if text_key not in message:
        raise FormatError(f"{at} has no '{text_key}' field (it has: {_keys(message)}); each "
                          f"message needs '{role_key}' and '{text_key}'")
    text = message[text_key]
    if not isinstance(text, str):
        raise FormatError(f"{at}: '{text_key}' must be a string, "
                          f"not {type(text).__name__}")
    return _ROLES[role], text
