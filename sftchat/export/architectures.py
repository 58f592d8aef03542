"""Which model architectures sftchat can write as GGUF, and what llama.cpp expects of each.

An architecture here is what llama.cpp calls it (`general.architecture`) plus the two things
that differ between the Hugging Face layout and llama.cpp's:

- tensor names: the `gguf` package's own `TensorNameMap` ("model.layers.0.self_attn.q_proj"
  -> "blk.0.attn_q"), so sftchat keeps no name table of its own;
- the query/key rows of Llama-family models: Hugging Face stores each head's rotary halves
  one after the other, llama.cpp interleaves them (`permute_rows`). A LoRA's `B` matrix is an
  output-row matrix, so it is permuted the same way; its `A` is not. Qwen2 keeps the Hugging
  Face order (llama.cpp runs it with NeoX-style rotary), so nothing is permuted there.

Everything else (Gemma, Phi, MoE models, ...) is refused with the list below: a wrong
permutation or a missing hyperparameter gives a GGUF that loads and answers nonsense.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sftchat.errors import SftchatError


class ExportError(SftchatError, RuntimeError):
    """An adapter cannot be exported; the message says what, why and what to do."""


@dataclass(frozen=True)
class Architecture:
    model_type: str    # the Hugging Face config's model_type
    gguf_arch: str     # llama.cpp's name
    permute_qk: bool   # llama.cpp interleaves the rotary halves of q/k rows


ARCHITECTURES = {
    "llama": Architecture("llama", "llama", permute_qk=True),     # Llama 2/3, SmolLM2
    "mistral": Architecture("mistral", "llama", permute_qk=True),
    "qwen2": Architecture("qwen2", "qwen2", permute_qk=False),
}


def supported_list() -> str:
    return ", ".join(f"{name} (Llama 2/3, SmolLM, ...)" if name == "llama" else name
                     for name in ARCHITECTURES)


def architecture_for(config: Any) -> Architecture:
    model_type = getattr(config, "model_type", None)
    architecture = ARCHITECTURES.get(model_type)
    if architecture is None:
        raise ExportError(
            f"sftchat cannot write a {model_type!r} model as GGUF yet (it writes: "
            f"{supported_list()}); `--format merged` works for any model, and llama.cpp's "
            "convert_hf_to_gguf.py converts that folder")
    rope = rope_parameters(config)
    if rope.get("rope_type", "default") not in ("default", "linear", "llama3"):
        raise ExportError(
            f"this model uses {rope['rope_type']!r} rotary scaling, which sftchat's GGUF writer "
            "does not describe yet; use `--format merged` and llama.cpp's convert_hf_to_gguf.py")
    return architecture


def rope_parameters(config: Any) -> dict:
    """Rotary settings, from transformers 5's `rope_parameters` or the older fields."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    scaling = getattr(config, "rope_scaling", None)
    if isinstance(scaling, dict):
        params = {**scaling, **params}
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params["type"]
    params.setdefault("rope_type", "default")
    theta = params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0
    params["rope_theta"] = float(theta)
    return params


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def permute_rows(weights, n_head: int, n_head_kv: int | None = None):
    """Reorder the rows of a q/k projection (or a LoRA B for one) from Hugging Face's rotary
    layout to llama.cpp's. `weights` is a numpy array or torch tensor of shape (out, ...)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    shape = weights.shape
    return (weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:])
            .swapaxes(1, 2).reshape(shape))


def to_llama_cpp_rows(architecture: Architecture, hf_name: str, weights, config: Any):
    """`weights` in llama.cpp's row order, for the projection `hf_name` names."""
    if not architecture.permute_qk:
        return weights
    if ".q_proj." in hf_name or hf_name.endswith(".q_proj"):
        return permute_rows(weights, config.num_attention_heads, config.num_attention_heads)
    if ".k_proj." in hf_name or hf_name.endswith(".k_proj"):
        return permute_rows(weights, config.num_attention_heads, config.num_key_value_heads)
    return weights


def tensor_name(architecture: Architecture, hf_name: str, config: Any) -> str:
    """llama.cpp's name for a Hugging Face tensor name (weight or bias)."""
    import gguf

    arch = _gguf_arch(architecture)
    name_map = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    mapped = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if mapped is None:
        raise ExportError(f"the model has a tensor {hf_name!r} llama.cpp has no name for; "
                          "use `--format merged`")
    return mapped


def _gguf_arch(architecture: Architecture):
    import gguf

    return next(arch for arch, name in gguf.MODEL_ARCH_NAMES.items()
                if name == architecture.gguf_arch)


def add_hyperparameters(writer, config: Any) -> None:
    """The `<arch>.*` keys llama.cpp reads for a Llama-family model."""
    import gguf

    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    dim = head_dim(config)
    writer.add_rope_dimension_count(dim)
    if dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(dim)
        writer.add_value_length(dim)
    rope = rope_parameters(config)
    writer.add_rope_freq_base(rope["rope_theta"])
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))


def extra_tensors(config: Any) -> dict:
    """Tensors llama.cpp needs that a Hugging Face checkpoint computes instead: Llama 3.1's
    rotary frequency factors (the formula of Meta's reference implementation)."""
    import numpy as np

    rope = rope_parameters(config)
    if rope["rope_type"] != "llama3":
        return {}
    dim = head_dim(config)
    freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_context = float(rope.get("original_max_position_embeddings", 8192))
    factors = []
    for freq in freqs:
        wavelength = 2 * math.pi / freq
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return {"rope_freqs.weight": np.asarray(factors, dtype=np.float32)}
