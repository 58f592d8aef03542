"""Record schemas of instruction datasets: Alpaca, ShareGPT and chat "messages".

The store holds conversations (`sftchat.conversation`): an optional system prompt, earlier
turns, and the last user message with its answer; the single-turn example (instruction,
input, response) is their one-line case. This module maps one JSON record of each schema to
and from that shape and says exactly what is wrong with a record it cannot map; how records
are laid out in a file (one JSON list or JSONL) is `formats`' business.

- `alpaca`:   {"instruction", "input", "output"}; `response` is accepted for `output`, and a
              missing or null `input` reads as "". Single-turn only.
- `sharegpt`: {"conversations": [{"from": "human"|"gpt"|"system", "value": TEXT}, ...]}.
- `messages`: {"messages": [{"role": "user"|"assistant"|"system", "content": TEXT}, ...]}, the
              OpenAI / Hugging Face chat format.

Both chat schemas are read the same way, because datasets mix their spellings freely: a message
may use `from`/`value` or `role`/`content`, and `human`/`user`, `gpt`/`assistant` mean the same.
A conversation is an optional leading system message, then user and assistant messages in
turn, from a user message to the assistant's answer. Decisions, and why:

- The last user message becomes the instruction (input ""), the last assistant message the
  response, the leading system message the example's system prompt, and every exchange
  before them an earlier turn (`context`). A system message anywhere else is refused: a
  template has one place for it.
- Which earlier answers are learned: every one, as TRL and axolotl train every assistant
  turn of a dataset, unless the message says otherwise with axolotl's per-message
  `"weight": 0` (not learned) or `1` (learned). The last answer is what the example teaches,
  so it is always learned: `"weight": 0` on it is refused, as is a weight other than 0 or 1,
  and a weight of 1 on a user or system message (only answers are learned).
- On export a conversation is written whole: the system message first when there is one,
  then every turn; an earlier answer that is not learned carries `"weight": 0`, nothing else
  carries a weight. Importing a file and exporting it again therefore gives back the same
  records, field for field.
- A non-empty input is folded into its user message (instruction + "\\n\\n" + input): chat
  formats have no separate input field. Importing such a file back gives the combined text
  as the instruction; with an empty input the round trip is exact.
- Alpaca records hold one instruction and its answer: exporting a conversation (earlier
  turns or a system prompt) as Alpaca is refused, naming the example, unless the user asks
  to flatten it (`--flatten`): the instruction stays the last user message's instruction,
  the input becomes the conversation before it as a transcript — "System: …", "User: …",
  "Assistant: …", one message a paragraph (a blank line between them) — followed by the
  last message's own input, if any, as the last paragraph; the output is the last answer.
  Flattening is one-way: the earlier answers' learn flags are not kept.

`parse_messages` reads a list of messages on its own (`sftchat ask --messages FILE`, whose
last message is the user's, still to be answered) with the same checks and error wording.
"""

from __future__ import annotations

from dataclasses import dataclass

from sftchat.conversation import Turn, example_context
from sftchat.errors import SftchatError

SCHEMAS = ("alpaca", "sharegpt", "messages")

# schema -> (the record's list field, the role and text fields it writes, role names it writes)
_CHAT = {
    "sharegpt": ("conversations", ("from", "value"),
                 {"system": "system", "user": "human", "assistant": "gpt"}),
    "messages": ("messages", ("role", "content"),
                 {"system": "system", "user": "user", "assistant": "assistant"}),
}
_KEY_PAIRS = (("from", "value"), ("role", "content"))
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "system": "system"}
_SHAPES = ("alpaca {instruction, input, output}, sharegpt {conversations: [{from, value}]}, "
           "messages {messages: [{role, content}]}")
WEIGHT = "weight"   # axolotl's per-message flag: 0 = not learned, 1 = learned


class FormatError(SftchatError, ValueError):
    """The file cannot be read as an instruction dataset (the message says where and why)."""


@dataclass(frozen=True)
class Conversation:
    """A list of chat messages, read: the system prompt ("" for none), the earlier turns,
    the last user message and its answer (None when it is still to be given)."""

    system: str
    context: tuple[Turn, ...]
    instruction: str
    response: str | None

    def to_record(self) -> dict:
        """{instruction, input, response}, plus `system` and `context` (Turn dicts) only
        when there are any: the shape of a single-turn record stays what it was."""
        record = {"instruction": self.instruction, "input": "", "response": self.response}
        if self.system:
            record["system"] = self.system
        if self.context:
            record["context"] = [turn.to_dict() for turn in self.context]
        return record


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


def parse_record(at: str, raw: object, schema: str, detected: bool) -> dict:
    """{instruction, input, response[, system][, context]} of one record (see
    `Conversation.to_record`).

    `at` says where the record is ("FILE: line 3"); `detected` is whether the schema came from
    the file's first record rather than from the user, which changes the advice on a mismatch.
    """
    if not isinstance(raw, dict):
        raise FormatError(f"{at} is not a JSON object")
    if schema != "alpaca":
        list_key, (role_key, text_key), _ = _CHAT[schema]
        if list_key not in raw:
            raise FormatError(
                f"{at} has no '{list_key}' field (it has: {_keys(raw)}); expected {schema} "
                f"records {{{list_key}: [{{{role_key}, {text_key}}}, ...]}}"
                f"{_mismatch_advice(raw, schema, detected)}")
        return parse_messages(at, raw[list_key], role_key, text_key, list_key).to_record()
    example = _parse_alpaca(at, raw, detected)
    if not example["instruction"].strip() or not example["response"].strip():
        raise FormatError(f"{at} has an empty instruction or output; fix or remove that record")
    return example


def parse_messages(at: str, messages: object, role_key: str = "role",
                   text_key: str = "content", list_key: str = "messages",
                   answered: bool = True) -> Conversation:
    """Read a list of chat messages: an optional leading system message, then user and
    assistant messages in turn, ending with the assistant's answer (`answered`) or with the
    user message still to be answered. Errors name `at` and the message's number."""
    fix = "fix or remove that record" if answered else "fix the file"
    if not isinstance(messages, list):
        raise FormatError(f"{at}: '{list_key}' must be a list of messages, "
                          f"not {type(messages).__name__}")
    read = [_message(f"{at}, message {number}", message, role_key, text_key)
            for number, message in enumerate(messages, start=1)]
    for number, (role, _, weight) in enumerate(read, start=1):
        if weight == 1 and role != "assistant":
            raise FormatError(f"{at}, message {number} is a {role} message with weight 1; "
                              "only assistant answers are learned: remove its weight")
    start = 1 if read and read[0][0] == "system" else 0
    rest = read[start:]
    for index, (role, text, _) in enumerate(rest):
        where = f"{at}, message {index + start + 1}"
        expected = "user" if index % 2 == 0 else "assistant"
        if role == "system":
            raise FormatError(f"{where} is a system message after the conversation started; "
                              "only a leading system message is understood: move or remove it")
        if role != expected:
            raise FormatError(f"{where} is from the {role} where the {expected} was expected; "
                              "a conversation alternates user and assistant messages, "
                              "starting with the user's")
        if not text.strip():
            raise FormatError(f"{where} is empty; every user and assistant message needs "
                              f"text: {fix}")
    if not rest:
        raise FormatError(f"{at} has no user and assistant messages; expected user and "
                          "assistant messages in turn" if answered else
                          f"{at} has no user message; give the user message to answer")
    if answered and len(rest) % 2:
        raise FormatError(f"{at} ends with a user message; the last message must be the "
                          "assistant's answer: add it or remove that record")
    if not answered and not len(rest) % 2:
        raise FormatError(f"{at} ends with an assistant message; the last message must be "
                          "the user message to answer: remove the answer or add a question")
    if answered and rest[-1][2] == 0:
        raise FormatError(f"{at}, message {len(read)} (the last answer) has weight 0; an "
                          "example always learns its last answer: remove that weight or "
                          "remove the record")
    earlier = rest[:-2] if answered else rest[:-1]
    context = tuple(Turn(user[1], answer[1], learn=answer[2] != 0)
                    for user, answer in zip(earlier[0::2], earlier[1::2]))
    system = read[0][1] if start and read[0][1].strip() else ""
    last_user = rest[-2] if answered else rest[-1]
    return Conversation(system, context, last_user[1], rest[-1][1] if answered else None)


def render_record(record: dict, schema: str, flatten: bool = False) -> dict:
    """One export record from the store's {id, instruction, input, output[, system][,
    context]} view (`Example.to_record`). A conversation as Alpaca is refused unless
    `flatten` (see the module docstring)."""
    context, system = example_context(record), record.get("system") or ""
    if schema == "alpaca":
        if context or system:
            if not flatten:
                what = " and ".join(
                    ([f"{len(context) + 1} turns"] if context else [])
                    + (["a system prompt"] if system else []))
                name = f"example {record['id']}" if "id" in record else "a record"
                raise FormatError(
                    f"{name} is a conversation ({what}) and an Alpaca record holds one "
                    "instruction and its answer: export with --format sharegpt or messages, "
                    "or add --flatten to write the conversation before it into the input")
            return flatten_record(record, system, context)
        return {"instruction": record["instruction"], "input": record["input"],
                "output": record["output"]}
    list_key, (role_key, text_key), names = _CHAT[schema]

    def message(role: str, text: str) -> dict:
        return {role_key: names[role], text_key: text}

    messages = [message("system", system)] if system else []
    for turn in context:
        answer = message("assistant", turn.response)
        if not turn.learn:
            answer[WEIGHT] = 0
        messages += [message("user", turn.user_text), answer]
    last = Turn(record["instruction"], record["output"], record["input"])
    messages += [message("user", last.user_text), message("assistant", last.response)]
    return {list_key: messages}


def flatten_record(record: dict, system: str, context) -> dict:
    """A conversation as one Alpaca record (the module docstring says how)."""
    parts = [f"System: {system}"] if system else []
    for turn in context:
        parts += [f"User: {turn.user_text}", f"Assistant: {turn.response}"]
    if record["input"]:
        parts.append(record["input"])
    return {"instruction": record["instruction"], "input": "\n\n".join(parts),
            "output": record["output"]}


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


def _message(at: str, message: object, role_key: str,
             text_key: str) -> tuple[str, str, int | None]:
    """(user|assistant|system, text, weight or None) of one message, in either spelling of
    its fields."""
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
    weight = message.get(WEIGHT)
    if weight is not None and (isinstance(weight, bool) or weight not in (0, 1)):
        raise FormatError(f"{at} has {WEIGHT} {weight!r}; understood: 0 (an answer not "
                          "learned) or 1 (learned)")
    return _ROLES[role], text, None if weight is None else int(weight)
