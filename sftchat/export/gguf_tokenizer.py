"""The tokenizer as llama.cpp reads it: the `tokenizer.*` keys of an exported GGUF.

Two sources, best first:

- the base was a GGUF file (`--model file.gguf`): its own `tokenizer.*` keys are copied as
  they are. llama.cpp already runs that file, so its vocabulary, merges, special tokens and
  pre-tokenizer name are right by construction.
- the base was a Hugging Face folder: the vocabulary, token types and merges are read from
  the tokenizer itself (the `gguf` package's `SpecialVocab` adds merges and special ids), and
  the pre-tokenizer — the regex llama.cpp splits text with before BPE — is named from the
  tokenizer.json's pre-tokenizer. Only the ones sftchat can tell apart for sure are named;
  another is refused rather than guessed, since a wrong one tokenizes differently and quietly.

The chat template written is the one the adapter was trained with (`chat_template_for`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftchat.export.architectures import ExportError

# Pre-tokenizer regexes of tokenizer.json `Split` steps, and llama.cpp's name for each.
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?"
                 r"[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?"
                r"[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_REGEXES = {_LLAMA3_REGEX: "llama-bpe", _QWEN2_REGEX: "qwen2"}


def copy_gguf_tokenizer(writer, source: Path, chat_template: str | None) -> None:
    """Copy every `tokenizer.*` key of the GGUF file `source` (the chat template replaced
    by `chat_template` when given)."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(source))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.") or (key == "tokenizer.chat_template"
                                                and chat_template is not None):
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), kind, sub_type=sub_type)
    if chat_template is not None:
        writer.add_chat_template(chat_template)


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer; ExportError when unknown."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") \
            and steps[1].get("use_regex", True):
        return "smollm"
    if kinds and kinds[0] == "Split" and kinds[-1] == "ByteLevel":
        regex = (steps[0].get("pattern") or {}).get("Regex")
        if regex in _SPLIT_REGEXES:
            return _SPLIT_REGEXES[regex]
    raise ExportError(
        f"the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds)) or 'none'}) is not one "
        "sftchat can name for llama.cpp (it knows GPT-2's, SmolLM's, Llama 3's and Qwen2's); "
        "export from the model's GGUF file (--model file.gguf), or use `--format merged` and "
        "llama.cpp's convert_hf_to_gguf.py")


def add_hf_tokenizer(writer, folder: Path, tokenizer: Any, vocab_size: int,
                     chat_template: str | None) -> None:
    """The `tokenizer.*` keys of a byte-level BPE tokenizer saved in `folder`."""
    import gguf

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ExportError(
            "the base model has no tokenizer.json (a SentencePiece-only tokenizer); export from "
            "the model's GGUF file (--model file.gguf), or use `--format merged` and llama.cpp's "
            "convert_hf_to_gguf.py")
    tokenizer_json = json.loads(path.read_text(encoding="utf-8"))
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ExportError(
            "the base model's tokenizer is not byte-level BPE (a SentencePiece-style one, as "
            "Llama 2's and Mistral's are); export from the model's GGUF file (--model "
            "file.gguf), or use `--format merged` and llama.cpp's convert_hf_to_gguf.py")
    pre = pre_tokenizer_name(tokenizer_json)
    by_id = {token_id: token for token, token_id in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for token_id in range(vocab_size):
        if token_id not in by_id:
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
        elif token_id in added:
            tokens.append(added[token_id].content)
            types.append(gguf.TokenType.CONTROL if added[token_id].special
                         else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[token_id])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    special.chat_template = None  # ours, below
    # Whether llama.cpp puts a BOS first: what this tokenizer does when it encodes text.
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    special.add_special_token["bos"] = bool(
        ids and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id)
    special.add_to_gguf(writer, quiet=True)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
