"""Untrusted text as plain text: the one owner of how a message, an answer or a dataset
field becomes token ids next to a template's markers.

Whatever a user typed, a dataset file holds or the model answered is text. A tokenizer
matches its *added* tokens anywhere in what it is given — special ones (`<|im_end|>`, `</s>`)
and non-special ones (Qwen's `<tool_call>`, `<|fim_prefix|>`, any `tokenizer.add_tokens`
entry) alike — so text that spells one would become that single control token: the model
would not see what the user wrote, and a training example could close its turn and open
another (a template injection). Only the template's own markers are tokens:

- `as_text(tokenizer, content)` swaps, in content, every spelling of an added token (and
  the private-use character the swap uses, should a user type it) for a placeholder, before
  the template renders;
- `tokenize(tokenizer, text, special)` tokenizes rendered text: without a placeholder,
  exactly as the tokenizer does (nothing in it came from content); with one, it splits at
  the added tokens the tokenizer finds — the template's, since content's are placeholders —
  and encodes the text between them, placeholders restored, as plain text: by the same
  tokenizer with no added tokens at all, so a spelled token is tokenized together with the
  text around it, as it would be if it were no token;
- `encode_text(tokenizer, content)` is both, for content on its own (an answer).

Caveat: text between markers is encoded as a piece of its own, as the tokenizer itself does
with what lies between added tokens; for a Metaspace tokenizer that prepends "▁" to the
first piece only, a piece after a marker that holds a spelled token gets that "▁" (byte-level
BPE — Qwen, Llama 3, SmolLM2, the built-in model — is unaffected).

Nothing heavy is imported here (`tokenizers` only once a spelled token is met).
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Callable

# A placeholder: private-use characters around an index into `_spellings(...)`; index 0 is
# the opening character itself, so a user's own private-use character comes back unchanged.
_OPEN, _CLOSE = "\ue000", "\ue001"
_PLACEHOLDER = re.compile(f"{_OPEN}(\\d+){_CLOSE}")


def added_token_texts(tokenizer: Any) -> frozenset[str]:
    """The text of every added token of `tokenizer`, special or not (every special one)."""
    return _added(tokenizer)[0]


def _added(tokenizer: Any) -> tuple[frozenset[str], frozenset[int], tuple[str, ...], Any]:
    # Keyed by the tokenizer's size too: `add_tokens` on a tokenizer already seen adds some.
    try:
        size = len(tokenizer)
    except TypeError:
        size = None
    return _added_for(tokenizer, size)


@functools.lru_cache(maxsize=8)
def _added_for(tokenizer: Any, size: int | None):
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    texts = {str(token) for token in decoder.values()}
    texts |= set(getattr(tokenizer, "all_special_tokens", ()) or ())
    texts.discard("")
    ids = frozenset(decoder) | frozenset(getattr(tokenizer, "all_special_ids", ()) or ())
    # Longest first, so that a longer spelling is found whole.
    spellings = (_OPEN, *sorted(texts, key=len, reverse=True))
    pattern = re.compile("|".join(re.escape(text) for text in spellings))
    return frozenset(texts), ids, spellings, pattern


def as_text(tokenizer: Any, content: str) -> str:
    """`content` with every spelling of an added token swapped for a placeholder that
    `tokenize` turns back into that spelling, tokenized as plain text."""
    _, _, spellings, pattern = _added(tokenizer)
    if not content or not pattern.search(content):
        return content
    index = {text: k for k, text in enumerate(spellings)}
    return pattern.sub(lambda match: f"{_OPEN}{index[match.group(0)]}{_CLOSE}", content)


def _restore(tokenizer: Any, text: str) -> str:
    spellings = _added(tokenizer)[2]
    return _PLACEHOLDER.sub(lambda match: spellings[int(match.group(1))], text)


def tokenize(tokenizer: Any, text: str, special: bool) -> list[int]:
    """Token ids of rendered `text` (`special`: with what the tokenizer adds around a text,
    its BOS), content's placeholders as plain text (see the module docstring)."""
    if _OPEN not in text:
        return list(tokenizer(text, add_special_tokens=special)["input_ids"])
    plain = _plain_encoder(tokenizer)
    if plain is None:
        return _tokenize_slow(tokenizer, text, special)
    added_ids = _added(tokenizer)[1]
    found = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = []
    position = 0
    for token_id, (start, end) in zip(found["input_ids"], found["offset_mapping"]):
        if token_id in added_ids and end > start:  # a template's marker (with the
            ids += plain(_restore(tokenizer, text[position:start]))  # spaces it strips)
            ids.append(token_id)
            position = end
    ids += plain(_restore(tokenizer, text[position:]))
    if special:
        prefix, suffix = _wrapping(tokenizer)
        ids = prefix + ids + suffix
    return ids


def encode_text(tokenizer: Any, content: str) -> list[int]:
    """Token ids of `content` (an answer, a message) as plain text: no added token in it."""
    return tokenize(tokenizer, as_text(tokenizer, content), special=False)


@functools.lru_cache(maxsize=8)
def _plain_encoder(tokenizer: Any) -> Callable[[str], list[int]] | None:
    """The tokenizer's own pipeline (normalizer, pre-tokenizer, model) with no added tokens:
    None for a tokenizer without a `tokenizers` backend."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    data = json.loads(backend.to_str())
    data["added_tokens"] = []
    plain = Tokenizer.from_str(json.dumps(data))
    plain.no_padding()
    plain.no_truncation()
    return lambda text: plain.encode(text, add_special_tokens=False).ids if text else []


@functools.lru_cache(maxsize=8)
def _wrapping(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text (a BOS, rarely an EOS)."""
    bare = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[:start], full[start + len(bare):]
    return [], []


def _tokenize_slow(tokenizer: Any, text: str, special: bool) -> list[int]:
    """For a tokenizer with no `tokenizers` backend: each spelling on its own, with its
    special tokens switched off (a non-special added token it cannot switch off)."""
    ids: list[int] = []
    position = 0
    for match in _PLACEHOLDER.finditer(text):
        before = text[position:match.start()]
        if before or (special and position == 0):
            ids += tokenizer(before, add_special_tokens=special and position == 0)["input_ids"]
        ids += tokenizer(_restore(tokenizer, match.group(0)), add_special_tokens=False,
                         split_special_tokens=True)["input_ids"]
        position = match.end()
    if position < len(text):
        ids += tokenizer(text[position:], add_special_tokens=False)["input_ids"]
    return ids
