"""Random models shaped like the real ones users bring (weights random, architecture real),
saved as model folders that `--model` loads like a hub checkpoint.

`qwen2_shaped(folder, ...)`: Qwen2's architecture — grouped-query attention, q/k/v biases,
tied embeddings, a vocabulary larger than the tokenizer (Qwen2.5 pads 151,665 tokens to
151,936) — with the built-in model's real byte-level BPE tokenizer. The defaults are small
enough for CI; `benchmarks/` builds the 0.5B shape (`QWEN25_05B`) from the same function.
No download: nothing here reaches a hub.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# Qwen2.5-0.5B's shape (config.json of Qwen/Qwen2.5-0.5B-Instruct).
QWEN25_05B = dict(vocab_size=151_936, hidden_size=896, intermediate_size=4864,
                  num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  max_position_embeddings=32768, rope_theta=1_000_000.0)
# Llama 3.2 1B's (for the GPU check).
LLAMA32_1B = dict(vocab_size=128_256, hidden_size=2048, intermediate_size=8192,
                  num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                  max_position_embeddings=131072, rope_theta=500_000.0)
# Small enough for a test, every feature of the real shape.
SMALL = dict(vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)


def qwen2_shaped(folder: Path, shape: dict | None = None, seed: int = 0,
                 architecture: str = "Qwen2Config") -> Path:
    """Write a random model of `shape` (default `SMALL`) into `folder` (once: an existing
    one is kept) with the built-in model's tokenizer; return the folder."""
    import torch
    import transformers

    from sftchat.models.builtin import ensure_builtin_model

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    tokenizer_source = ensure_builtin_model()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_source)
    shape = {**SMALL, **(shape or {})}
    assert shape["vocab_size"] >= len(tokenizer)
    config = getattr(transformers, architecture)(
        **shape, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    for name in ("generation_config.json",):
        if (Path(tokenizer_source) / name).is_file() and not (folder / name).is_file():
            shutil.copy(Path(tokenizer_source) / name, folder / name)
    return folder
