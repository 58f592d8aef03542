"""Loading a LoRA adapter into a live model, fast.

PEFT's own loading (`PeftModel.from_pretrained`, `load_adapter`) builds the *whole* model's
state dict to map the adapter's keys; with a bitsandbytes 4-bit base on CPU that un-packs
every quantized weight, so a swap cost 1.6 s on a 0.5B-shaped model — a quarter of reloading
everything (benchmarks/RESULTS.md). Here PEFT only injects the (empty) LoRA layers, and the
weights are copied straight from the safetensors file into those parameters: the cost is
that of the adapter, not of the base.

Any key that does not map onto a LoRA parameter of the new adapter, or a shape that does
not match, is an error: the adapter was made for another model or is damaged.
"""

from __future__ import annotations

import re
from pathlib import Path

# PEFT saves "…q_proj.lora_A.weight" for the adapter it names "default"; in the live model
# the parameter is "…q_proj.lora_A.<adapter name>.weight".
_LORA_KEY = re.compile(r"\.(lora_[A-Za-z_]+)(\.(?:weight|bias))?$")


def _live_name(saved: str, adapter: str) -> str | None:
    match = _LORA_KEY.search(saved)
    if match is None:
        return None
    return saved[:match.start()] + f".{match.group(1)}.{adapter}{match.group(2) or ''}"


def lora_config(rank: int, alpha: int, dropout: float = 0.0):
    """THE LoRA configuration sftchat trains and prepares swap slots with: all linear
    layers, no bias. The trainer and the engine's slot both call this, so they match."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules="all-linear", bias="none", task_type="CAUSAL_LM")


def config_signature(config) -> tuple:
    """What must match for an adapter to fill layers injected for another config."""
    targets = config.target_modules
    targets = tuple(sorted(targets)) if isinstance(targets, (set, list, tuple)) else targets
    return (config.peft_type, config.r, config.lora_alpha, targets,
            getattr(config, "use_rslora", False), getattr(config, "use_dora", False),
            config.bias, tuple(config.modules_to_save or ()))


def inject_empty_adapter(peft_model, base_model, config, adapter: str):
    """Inject LoRA layers for `config` under `adapter`, parameters on the meta device (no
    random initialisation: they are only ever overwritten). Returns the PeftModel."""
    from peft import PeftModel

    config.inference_mode = True
    if peft_model is None:
        return PeftModel(base_model, config, adapter_name=adapter, low_cpu_mem_usage=True)
    peft_model.add_adapter(adapter, config, low_cpu_mem_usage=True)
    return peft_model


def read_adapter_config(folder: Path):
    from peft import PeftConfig

    return PeftConfig.from_pretrained(str(folder))


def add_lora_adapter(peft_model, base_model, folder: Path, adapter: str, device,
                     injected: bool = False):
    """Add the adapter saved in `folder` under the name `adapter`; return the PeftModel
    (created around `base_model` when `peft_model` is None). With `injected`, the layers for
    `adapter` already exist (see `inject_empty_adapter`) and only the weights are filled in.
    Raises ValueError on a mismatch or a damaged file."""
    import torch
    from safetensors.torch import load_file

    # Reading every tensor also validates the file before the model is touched.
    weights = load_file(str(folder / "adapter_model.safetensors"))
    if not injected:
        peft_model = inject_empty_adapter(peft_model, base_model, read_adapter_config(folder),
                                          adapter)
    parameters = dict(peft_model.named_parameters())
    expected = {name for name in parameters if f".{adapter}." in name or
                name.endswith(f".{adapter}")}
    loaded = set()
    for saved, tensor in weights.items():
        name = _live_name(saved, adapter)
        if name is None or name not in parameters:
            raise ValueError(f"the file has a weight {saved!r} this model has no place for")
        target = parameters[name]
        if target.shape != tensor.shape:
            raise ValueError(f"{saved!r} has shape {tuple(tensor.shape)}, the model "
                             f"expects {tuple(target.shape)}")
        module_name, _, leaf = name.rpartition(".")
        module = peft_model.get_submodule(module_name)
        module._parameters[leaf] = torch.nn.Parameter(tensor.to(device), requires_grad=False)
        loaded.add(name)
    if expected - loaded:
        missing = sorted(expected - loaded)[0]
        raise ValueError(f"the file lacks weights the adapter config asks for ({missing})")
    peft_model.eval()
    return peft_model
