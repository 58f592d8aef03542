"""The adapter's LoRA, read once, and the base with it merged in float.

Merging into a 4-bit base rounds every merged weight back to 4 bits and loses most of what
the adapter learned (transformers #31293). So the base is loaded exactly as the adapter was
trained on it (4-bit NF4 when it was), each 4-bit weight is dequantized to float32 —
the very values the training forward saw — and `W + scale·B·A` is added in float32. The
merged model then computes what the chat computes with the adapter, up to summation order.

The 4-bit layers are loaded in bitsandbytes' plain layout (`for_training`): its CPU-packed
layout, taken on CPUs with AVX512-BF16, is not something `dequantize` reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sftchat.export.architectures import ExportError

Progress = Callable[[str], None]
PEFT_PREFIX = "base_model.model."


@dataclass
class LoraWeights:
    """An adapter's LoRA matrices by the Hugging Face module they modify."""
    rank: int
    alpha: float
    scale: float          # what B·A is multiplied by (alpha / rank; alpha / sqrt(rank) rsLoRA)
    pairs: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # module -> (A, B)


def read_lora(folder: Path) -> LoraWeights:
    """The LoRA saved in an adapter folder (PEFT format), as float32 tensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config_path = folder / "adapter_config.json"
    try:
        import json

        config = json.loads(config_path.read_text(encoding="utf-8"))
        tensors = load_file(str(folder / "adapter_model.safetensors"))
    except (OSError, ValueError, SafetensorError) as exc:  # a truncated file: SafetensorError
        raise ExportError(f"adapter {folder.name!r} cannot be read ({exc}); retrain it or "
                          f"remove it with `sftchat adapters rm {folder.name}`") from exc
    if config.get("use_dora") or config.get("modules_to_save"):
        raise ExportError(f"adapter {folder.name!r} uses DoRA or saved full modules, which "
                          "sftchat does not export")
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    lora = LoraWeights(rank=rank, alpha=alpha, scale=scale)
    halves: dict[str, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(PEFT_PREFIX)
        for half in ("A", "B"):
            marker = f".lora_{half}."
            if marker in name:
                halves.setdefault(name.split(marker)[0], {})[half] = tensor.float()
    for module, pair in sorted(halves.items()):
        if set(pair) != {"A", "B"}:
            raise ExportError(f"adapter {folder.name!r} is damaged: {module} lacks a LoRA half")
        lora.pairs[module] = (pair["A"], pair["B"])
    if not lora.pairs:
        raise ExportError(f"adapter {folder.name!r} holds no LoRA weights")
    return lora


def dequantized_model(loaded, progress: Progress) -> Any:
    """The loaded base as float32, in place: a 4-bit one dequantized (the base as trained)."""
    model = loaded.model
    if loaded.quantized:
        progress("dequantizing the 4-bit base to float32")
        model.dequantize()
    return model.float()


def merge_lora(model, lora: LoraWeights, progress: Progress) -> Any:
    """`model` (float32) with the LoRA added into its weights, in place."""
    import torch

    progress(f"merging {len(lora.pairs)} LoRA matrices in float32")
    with torch.no_grad():
        for module_name, (a, b) in lora.pairs.items():
            try:
                weight = model.get_submodule(module_name).weight
            except AttributeError as exc:
                raise ExportError(f"the base has no layer {module_name!r} the adapter "
                                  "modifies; was it trained on another model?") from exc
            weight += (lora.scale * (b @ a)).to(weight.device, weight.dtype)
    return model


def float_dtype(name: str, folder: Path):
    """The dtype to save in: `auto` is the base checkpoint's own float dtype, as its
    config.json says (the loaded config says the dtype it was loaded in)."""
    import json

    import torch

    if name == "auto":
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    dtype = getattr(torch, name, None)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ExportError(f"cannot save in {name!r}: use float32, bfloat16 or float16")
    return dtype


def save_hf_folder(model, tokenizer, to: Path, dtype, chat_template: str,
                   stop_ids: list[int]) -> None:
    """A plain Hugging Face folder transformers loads alone: safetensors, config without a
    quantization config, the tokenizer with the chat template the adapter was trained with,
    and a generation config that stops at the template's end token."""
    model.to(dtype)
    model.config.dtype = dtype
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.generation_config.eos_token_id = stop_ids if len(stop_ids) > 1 else stop_ids[0]
    model.save_pretrained(str(to), safe_serialization=True)
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(str(to))
