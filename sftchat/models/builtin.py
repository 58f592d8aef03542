"""The built-in tiny model: a real Hugging Face model folder that sftchat generates itself.

`ensure_builtin_model()` returns the path of a folder holding `config.json`,
`model.safetensors`, `generation_config.json`, `tokenizer.json` and
`tokenizer_config.json` — the same files a hub checkpoint has — so the built-in model goes
through exactly the same loading code as any other model, 4-bit included.

Everything is generated offline and deterministically, byte for byte the same on every
machine: the weights come from a counter-based integer hash (not torch's RNG, whose streams
may change between releases), every JSON file is written by hand with sorted keys, and the
tokenizer is a byte-level BPE whose merges are fixed in this file. The model is a small
Llama-style decoder whose linear layers all have output sizes that are multiples of 64,
which bitsandbytes' CPU 4-bit path requires (GUIDE §9).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Bump when anything below changes what is written: the cache folder is keyed by it.
BUILTIN_VERSION = 2
BUILTIN_NAME = "builtin"

HIDDEN_SIZE = 256
INTERMEDIATE_SIZE = 512
NUM_LAYERS = 4
NUM_HEADS = 4
NUM_KV_HEADS = 4
MAX_POSITIONS = 4096

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, *CHATML_TOKENS)
# 256 byte symbols + merges + specials, padded up to a multiple of 64.
VOCAB_SIZE = 576

# Frequent pieces of the prompt templates and of short English answers. Each becomes one token
# through a chain of merges, which shortens sequences several-fold and so speeds up CPU
# training; the byte alphabet still encodes any text, unicode included.
_MERGE_WORDS = (
    "Below", "Ġis", "Ġan", "Ġinstruction", "Ġthat", "Ġdescribes", "Ġa", "Ġtask", ".",
    "ĠWrite", "Ġresponse", "Ġappropriately", "Ġcompletes", "Ġthe", "Ġrequest", "ĊĊ",
    "###", "ĠInstruction", "ĠResponse", "ĠInput", ":", "Ċ", "Ġpaired", "Ġwith", "Ġinput",
    "Ġprovides", "Ġfurther", "Ġcontext", "ĠWhat", "ĠHow", "Ġyou", "Ġto", "Ġof", "Ġand",
    "Ġin", "Ġit", "Ġfor", "Ġare", "Ġthis", "Ġdo", "Ġcan", "Ġme", "Ġmy", "Ġyour", "The",
    "What", "How", "Ġis", "Ġwas", "Ġon", "Ġbe", "Ġnot", "Ġhave", "Ġas", "Ġwhat", "Ġhow",
    "Ġname", "Ġcolor", "Ġcapital", "Ġwhich", "Ġone", "Ġtwo", "Ġthree", "system", "user",
    "assistant", "Ġtell", "Ġsay", "Ġhello", "Hello", "Ġworld", "Ġplease", "Ġthank",
    "ing", "ed", "er", "es", "en", "on", "re", "st", "th", "an", "ou", "ar", "or", "al",
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (the ByteLevel alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _vocab_and_merges() -> tuple[dict[str, int], list[list[str]]]:
    alphabet = sorted(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    for symbol in alphabet:
        vocab[symbol] = len(vocab)
    merges: list[list[str]] = []
    for word in _MERGE_WORDS:
        # Merge left to right: ((a b) c) d ... so every word becomes a single token.
        current = word[0]
        for char in word[1:]:
            merged = current + char
            if merged not in vocab:
                merges.append([current, char])
                vocab[merged] = len(vocab)
            current = merged
    if len(vocab) > VOCAB_SIZE:
        raise AssertionError(f"built-in vocabulary too large: {len(vocab)} > {VOCAB_SIZE}")
    return vocab, merges


def _tokenizer_json() -> dict:
    vocab, merges = _vocab_and_merges()
    added = [
        {"id": vocab[token], "content": token, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": True}
        for token in SPECIAL_TOKENS
    ]
    bos_id = vocab[BOS_TOKEN]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": BOS_TOKEN, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": BOS_TOKEN, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {BOS_TOKEN: {"id": BOS_TOKEN, "ids": [bos_id],
                                           "tokens": [BOS_TOKEN]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


@dataclass(frozen=True)
class LlamaDims:
    """The shape of a Llama-style decoder. The defaults are the built-in model's;
    benchmarks build larger ones through the same code."""

    vocab_size: int = VOCAB_SIZE
    hidden_size: int = HIDDEN_SIZE
    intermediate_size: int = INTERMEDIATE_SIZE
    num_layers: int = NUM_LAYERS
    num_heads: int = NUM_HEADS
    num_kv_heads: int = NUM_KV_HEADS
    max_positions: int = MAX_POSITIONS

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def llama_config(dims: LlamaDims, bos_id: int, eos_id: int, pad_id: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": dims.vocab_size,
        "hidden_size": dims.hidden_size,
        "intermediate_size": dims.intermediate_size,
        "num_hidden_layers": dims.num_layers,
        "num_attention_heads": dims.num_heads,
        "num_key_value_heads": dims.num_kv_heads,
        "head_dim": dims.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": dims.max_positions,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": "float32",
    }


def _config_json() -> dict:
    vocab, _ = _vocab_and_merges()
    return llama_config(LlamaDims(), vocab[BOS_TOKEN], vocab[EOS_TOKEN], vocab[PAD_TOKEN])


def _parameter_shapes(dims: LlamaDims) -> dict[str, tuple[int, ...]]:
    hidden, head_dim = dims.hidden_size, dims.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (dims.vocab_size, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (dims.vocab_size, hidden),
    }
    for layer in range(dims.num_layers):
        prefix = f"model.layers.{layer}"
        shapes[f"{prefix}.input_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}.post_attention_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}.self_attn.q_proj.weight"] = (dims.num_heads * head_dim, hidden)
        shapes[f"{prefix}.self_attn.k_proj.weight"] = (dims.num_kv_heads * head_dim, hidden)
        shapes[f"{prefix}.self_attn.v_proj.weight"] = (dims.num_kv_heads * head_dim, hidden)
        shapes[f"{prefix}.self_attn.o_proj.weight"] = (hidden, dims.num_heads * head_dim)
        shapes[f"{prefix}.mlp.gate_proj.weight"] = (dims.intermediate_size, hidden)
        shapes[f"{prefix}.mlp.up_proj.weight"] = (dims.intermediate_size, hidden)
        shapes[f"{prefix}.mlp.down_proj.weight"] = (hidden, dims.intermediate_size)
    return shapes


def _uniform_from_hash(name: str, numel: int):
    """`numel` floats in [-1, 1), from a splitmix64-style hash of (name, index).

    Pure integer arithmetic on int64 tensors (wrapping multiply, xor, shifts), so the result
    does not depend on any random-number generator's implementation.
    """
    import torch

    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:7], "little")
    x = torch.arange(numel, dtype=torch.int64) * 0x9E3779B97F4A7C1 + seed
    # Multipliers below 2**62 keep the products inside int64's wrapping arithmetic everywhere.
    x = (x ^ (x >> 31)) * 0x3F58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x14D049BB133111EB
    x = x ^ (x >> 31)
    mantissa = (x >> 11) & ((1 << 24) - 1)  # 24 uniformly distributed bits
    return mantissa.to(torch.float64) / float(1 << 23) - 1.0


def llama_weights(dims: LlamaDims) -> dict:
    """Deterministic random weights for a Llama of shape `dims`."""
    import torch

    tensors = {}
    for name, shape in _parameter_shapes(dims).items():
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(shape, dtype=torch.float32)
            continue
        fan_in = shape[-1]
        # Uniform in [-b, b) has std b/sqrt(3); aim for std 1/sqrt(fan_in) (0.02 for embeddings).
        std = 0.02 if "embed_tokens" in name else fan_in ** -0.5
        values = _uniform_from_hash(name, int(torch.Size(shape).numel())) * (std * 3 ** 0.5)
        tensors[name] = values.to(torch.float32).reshape(shape).contiguous()
    return tensors


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                    encoding="utf-8")


def build_builtin_model(target: Path) -> None:
    """Write the built-in model's files into the (new or empty) folder `target`."""
    from safetensors.torch import save_file

    target.mkdir(parents=True, exist_ok=True)
    vocab, _ = _vocab_and_merges()
    config = _config_json()
    _write_json(target / "config.json", config)
    _write_json(target / "generation_config.json", {
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
        "do_sample": False,
    })
    _write_json(target / "tokenizer.json", _tokenizer_json())
    _write_json(target / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "add_bos_token": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
        # No chat template: it is a base model, so template "auto" gives it Alpaca.
    })
    save_file(llama_weights(LlamaDims()), str(target / "model.safetensors"),
              metadata={"format": "pt"})


def default_cache_dir() -> Path:
    """Where generated models live: $SFTCHAT_CACHE, else $XDG_CACHE_HOME/sftchat, else ~/.cache."""
    if os.environ.get("SFTCHAT_CACHE"):
        return Path(os.environ["SFTCHAT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sftchat"


def ensure_builtin_model(cache_dir: Path | None = None) -> Path:
    """Return the built-in model's folder, building it first if the cache lacks it.

    The build writes into a temporary sibling folder and renames it into place, so a crash or
    a concurrent build never leaves a half-written model behind.
    """
    root = (cache_dir or default_cache_dir()) / "models"
    target = root / f"{BUILTIN_NAME}-v{BUILTIN_VERSION}"
    if (target / "model.safetensors").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        build_builtin_model(staging)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process finished first; its copy is identical.
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def builtin_files_digest(folder: Path) -> str:
    """sha256 over the folder's files (names and bytes): the built-in model's identity."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
