"""GGUF files llama.cpp (and Ollama, LM Studio) run: a whole model, or a LoRA adapter.

Both are written with the `gguf` package's `GGUFWriter` and quantizers, names from its
`TensorNameMap` and the architecture's hyperparameters and row order from `architectures`.

- `write_model_gguf`: a model's float weights (the merged model, or the plain base) in f32,
  f16 or q8_0. One-dimensional tensors (norms, biases) stay f32 as llama.cpp's own converter
  keeps them; a tied output matrix is not written (llama.cpp reuses the embedding).
- `write_lora_gguf`: `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`,
  and for each modified projection its `.lora_a` (rank × in) and `.lora_b` (out × rank) in
  f32 — llama.cpp computes `W·x + scale·B·(A·x)` with scale = alpha / rank, so rsLoRA's
  alpha / sqrt(rank) is written as the alpha that gives the same scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from sftchat.export import OUTTYPES
from sftchat.export.architectures import (
    Architecture,
    ExportError,
    add_hyperparameters,
    extra_tensors,
    tensor_name,
    to_llama_cpp_rows,
)

Progress = Callable[[str], None]


def _file_type(outtype: str):
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]


def _encode(array, outtype: str):
    """(data, raw_dtype) of a float32 numpy array in `outtype`."""
    import gguf
    import numpy as np

    if array.ndim < 2 or outtype == "f32":
        return array.astype(np.float32), None
    if outtype == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[
            gguf.GGMLQuantizationType.Q8_0][0] == 0:
        quantized = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
        return quantized, gguf.GGMLQuantizationType.Q8_0
    return array.astype(np.float16), None  # f16, and q8_0's fallback for odd row lengths


def _writer(path: Path, architecture: Architecture, kind: str, name: str):
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture.gguf_arch)
    writer.add_type(kind)
    writer.add_name(name)
    return writer


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_model_gguf(path: Path, state_dict: dict, config: Any, architecture: Architecture,
                     name: str, outtype: str, add_tokenizer: Callable[[Any], None],
                     progress: Progress) -> None:
    """A whole model as one GGUF file; `add_tokenizer(writer)` adds the tokenizer keys."""
    import gguf

    if outtype not in OUTTYPES:
        raise ExportError(f"unknown GGUF type {outtype!r}: use one of {', '.join(OUTTYPES)}")
    writer = _writer(path, architecture, gguf.GGUFType.MODEL, name)
    add_hyperparameters(writer, config)
    writer.add_file_type(_file_type(outtype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(writer)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    names = [hf for hf in state_dict if not (tied and hf == "lm_head.weight")
             and "rotary_emb" not in hf]
    for done, hf_name in enumerate(names, 1):
        array = state_dict[hf_name].detach().float().cpu().numpy()
        array = to_llama_cpp_rows(architecture, hf_name, array, config)
        data, raw_dtype = _encode(array, outtype)
        writer.add_tensor(tensor_name(architecture, hf_name, config), data, raw_dtype=raw_dtype)
        if done % 50 == 0 or done == len(names):
            progress(f"writing {outtype} tensors {done}/{len(names)}")
    for extra_name, array in extra_tensors(config).items():
        writer.add_tensor(extra_name, array)
    _finish(writer)


def write_lora_gguf(path: Path, lora, config: Any, architecture: Architecture,
                    name: str) -> None:
    """The LoRA as a llama.cpp adapter GGUF for the base it was trained on."""
    import gguf

    writer = _writer(path, architecture, gguf.GGUFType.ADAPTER, name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    # llama.cpp scales by alpha / rank; this alpha gives the adapter's own scale.
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(lora.scale * lora.rank))
    for module, (a, b) in lora.pairs.items():
        base_name = tensor_name(architecture, module + ".weight", config)
        b_rows = to_llama_cpp_rows(architecture, module, b.numpy(), config)
        writer.add_tensor(base_name + ".lora_a", a.numpy().astype("float32"))
        writer.add_tensor(base_name + ".lora_b", b_rows.astype("float32"))
    _finish(writer)
