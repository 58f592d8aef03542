"""Model loading: a Hugging Face id, a local folder or `builtin`, in 4-bit NF4 or unquantized.

`load_model(spec, device, quantize)` returns a `LoadedModel` with the model, its tokenizer and
its identity (what an adapter records as its base and is checked against before it loads: a
content hash of its files, `models.identity`).
The built-in model is only a local folder to this code: it loads exactly like a hub model,
and so does a GGUF file once `sftchat.models.gguf` has converted it into a cached folder.

4-bit loading follows QLoRA: NF4 weights, double quantization, bfloat16 compute on CUDA
(float32 compute on CPU, where bitsandbytes' CPU backend runs NF4 forward and backward).
Weights load from safetensors only, and `trust_remote_code` stays off unless the caller
turns it on.
Every failure a user can cause becomes one `ModelLoadError` sentence.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sftchat.config import BUILTIN_MODEL
from sftchat.errors import SftchatError
from sftchat.models.identity import model_identity  # noqa: F401 - the loader's identities


# QLoRA's 4-bit settings (the compute dtype depends on the device: see load_model).
NF4 = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}


class ModelLoadError(SftchatError, RuntimeError):
    """The model cannot be loaded; the message says which model, why, and what to do."""


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    spec: str              # what the user asked for: "builtin", a hub id, a folder, a .gguf
    path: str              # the folder or hub id transformers loaded from
    identity: dict         # {"model", "revision", "fingerprint", ...}: see model_identity()
    device: str            # "cpu" or "cuda"
    quantized: bool
    compute_dtype: str     # "bfloat16", "float32", ...

    @property
    def context_length(self) -> int:
        config = self.model.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return 2048

    @property
    def quantization(self) -> dict | None:
        """How the base is quantized (what an adapter records), None when it is not."""
        if not self.quantized:
            return None
        return {"load_in_4bit": True, "quant_type": NF4["bnb_4bit_quant_type"],
                "double_quant": NF4["bnb_4bit_use_double_quant"],
                "compute_dtype": self.compute_dtype}

    def describe(self) -> str:
        quant = "4-bit NF4" if self.quantized else self.compute_dtype
        return f"{self.spec} ({quant}, {self.device})"


def quiet_libraries() -> None:
    """Silence progress bars and notices that would garble a CLI's output or a TUI.

    bitsandbytes warns on import that an optional hub-downloaded CPU kernel is missing; the
    built-in kernel it falls back to is fine, and the hub is not reachable anyway.
    """
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # Deprecation notices from inside transformers/peft are for their developers, not ours.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(transformers|peft)\.")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# Forces the CPU's compute dtype (`float32` or `bfloat16`) over the detection: to compare the
# two on one machine, or to take float32 on a CPU whose bfloat16 is native.
CPU_DTYPE_ENV = "SFTCHAT_CPU_DTYPE"
COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype_for(device: str) -> str:
    """THE compute dtype of a model on `device`, for training and answering alike (the trainer
    keeps the base as loaded: `trainer._wrap_with_lora`; the chat engine, reviews and `eval`
    load it the same way): bfloat16 on a GPU (QLoRA) and on a CPU that does bfloat16
    natively (AVX512-BF16: matrix products measured 4-7x faster than float32 there, a
    SmolLM2 training step 1.8x; its 4-bit chat kernel computes in bfloat16 anyway); float32
    on other CPUs, where bfloat16 arithmetic is emulated and slower (RESULTS.md §8, §18).
    `SFTCHAT_CPU_DTYPE` overrides the CPU's choice. LoRA weights stay float32 everywhere (the
    optimizer's updates are too small for bfloat16's 8 bits of mantissa)."""
    if device == "cuda":
        return "bfloat16"
    forced = os.environ.get(CPU_DTYPE_ENV, "").strip()
    if forced:
        if forced not in COMPUTE_DTYPES:
            raise ModelLoadError(f"{CPU_DTYPE_ENV}={forced!r}: use one of "
                                 f"{', '.join(COMPUTE_DTYPES)} (or unset it to detect)")
        return forced
    from sftchat.models.cpu_4bit import packed_layout_supported

    # The CPUs where bitsandbytes packs its 4-bit weights are those with AVX512-BF16.
    return "bfloat16" if packed_layout_supported() else "float32"


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            "--device cuda was asked for but no CUDA GPU is available to PyTorch; "
            "use --device cpu (or auto)"
        )
    return device


def resolve_model_path(spec: str, trust_remote_code: bool = False,
                       progress: Callable[[str], None] | None = None):
    """(the folder or hub id to load, the `ConvertedGGUF` when `spec` is a GGUF file).

    Builds the built-in model, or converts a GGUF file, on first use (both are cached)."""
    if spec == BUILTIN_MODEL:
        from sftchat.models.builtin import ensure_builtin_model

        return str(ensure_builtin_model()), None
    from sftchat.models.gguf import GGUFError, ensure_converted, find_gguf

    try:
        gguf_file = find_gguf(spec)
        if gguf_file is not None:
            converted = ensure_converted(spec, gguf_file, trust_remote_code=trust_remote_code,
                                         progress=progress)
            return str(converted.folder), converted
    except GGUFError as exc:
        raise ModelLoadError(str(exc)) from exc
    path = Path(spec).expanduser()
    looks_like_path = spec.startswith((".", "/", "~")) or path.exists() or spec.count("/") > 1
    if looks_like_path:
        if not path.is_dir():
            raise ModelLoadError(f"model folder {spec!r} does not exist; check the path")
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{spec!r} is not a model folder (no config.json); point --model at a folder "
                "saved with save_pretrained, at a .gguf file, or at a Hugging Face id"
            )
        return str(path.resolve()), None
    return spec, None


def _explain(spec: str, exc: Exception) -> ModelLoadError:
    text = str(exc)
    if isinstance(exc, ImportError) and "bitsandbytes" in text:
        return ModelLoadError(
            f"cannot load {spec!r} in 4-bit: bitsandbytes is not usable here ({text}); "
            "install bitsandbytes or pass --no-quantize"
        )
    if "Unrecognized configuration class" in text or "does not recognize this architecture" \
            in text or isinstance(exc, KeyError):
        return ModelLoadError(
            f"model {spec!r} has an architecture this transformers cannot load as a causal "
            "language model; pick a causal LM (Llama, Qwen, Mistral, Gemma, Phi, ...) or "
            "upgrade transformers"
        )
    if "safetensors" in text.lower() or "use_safetensors" in text:
        return ModelLoadError(
            f"model {spec!r} has no safetensors weights; sftchat loads only safetensors "
            "(pickle files can run code): convert the checkpoint with save_pretrained"
        )
    if isinstance(exc, OSError):
        return ModelLoadError(
            f"cannot find model {spec!r}: it is not a local folder, not in the Hugging Face "
            "cache, and could not be downloaded (no network?); check the name, or download "
            "it first with `hf download` where there is network"
        )
    return ModelLoadError(f"cannot load model {spec!r}: {text.splitlines()[0] if text else exc}")


def _check_architecture(spec: str, path: str, trust_remote_code: bool) -> None:
    """Refuse a non-causal-LM architecture up front, from its config alone: cheap, and
    transformers' own failure for it imports every model module first (a minute on CPU)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if getattr(config, "auto_map", None) and trust_remote_code:
        return  # custom code decides
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(
            f"model {spec!r} has architecture {config.model_type!r}, which is not a causal "
            "language model that transformers can load; pick a causal LM (Llama, Qwen, "
            "Mistral, Gemma, Phi, ...)"
        )


def load_model(spec: str, device: str = "auto", quantize: bool = True,
               trust_remote_code: bool = False,
               progress: Callable[[str], None] | None = None,
               for_training: bool = False) -> LoadedModel:
    """Load tokenizer and causal LM; raises `ModelLoadError` with a user-facing message.

    `progress` hears about slow first-time work (converting a GGUF file). `for_training`
    keeps 4-bit weights out of bitsandbytes' CPU-packed layout, which answers fast but has no
    backward (`cpu_4bit`); a model that only answers leaves bitsandbytes to pack it."""
    quiet_libraries()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    path, gguf = resolve_model_path(spec, trust_remote_code, progress)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "use_safetensors": True}
    compute_dtype = getattr(torch, compute_dtype_for(device))
    if quantize:
        try:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                **NF4, bnb_4bit_compute_dtype=compute_dtype)
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise _explain(spec, exc) from exc
    kwargs["dtype"] = compute_dtype
    # One GPU, never "auto": under torchrun each rank has set its own (`torch.cuda.set_device`).
    kwargs["device_map"] = {"": torch.cuda.current_device()} if device == "cuda" else "cpu"
    try:
        _check_architecture(spec, path, trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear sentence
        raise _explain(spec, exc) from exc
    model.eval()
    if quantize and for_training:
        from sftchat.models.cpu_4bit import keep_trainable

        keep_trainable(model)
    if tokenizer.pad_token_id is None:
        # Padding is only ever masked out, so any existing token will do.
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        model=model, tokenizer=tokenizer, spec=spec, path=path,
        identity=model_identity(spec, path, model.config, gguf), device=device,
        quantized=quantize, compute_dtype=str(compute_dtype).removeprefix("torch."),
    )
