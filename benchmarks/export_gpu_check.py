"""An adapter trained on a GPU, exported (issue 22): does `--base as-trained` hold there too?

On CUDA, QLoRA trains on bitsandbytes' CUDA NF4 quantization with bfloat16 compute; the
exporter always dequantizes on the CPU. This checks, on the built-in model:

1. the NF4 weights bitsandbytes makes on CUDA, dequantized, against those it makes on the
   CPU: equal, or how far apart (the exporter quantizes where the adapter trained, when it
   can: the as-trained base GGUF against the CUDA weights is the second figure);
2. an adapter trained with `sftchat train --device cuda`, exported as a merged folder, a merged
   GGUF and a LoRA GGUF with its as-trained base; the merged folder's greedy answers in plain
   transformers (CPU, float32) against the curated ones, and the chat's own answers on CUDA.

    python benchmarks/export_gpu_check.py WORKSPACE ADAPTER OUT_DIR

WORKSPACE holds the curated examples and ADAPTER, trained on CUDA (gpu_export_check.sh does
all of it on the device machine). Prints one JSON record.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from export_runners import transformers_answers  # noqa: E402


def nf4_cuda_vs_cpu() -> dict:
    import bitsandbytes.functional as bnb
    import torch

    from sftchat.models.loader import load_model

    cuda = load_model("builtin", "cuda", quantize=True).model
    cpu = load_model("builtin", "cpu", quantize=True, for_training=True).model
    cpu_layers = dict(cpu.named_modules())
    worst, equal, layers = 0.0, 0, 0
    for name, module in cuda.named_modules():
        if getattr(getattr(module, "weight", None), "quant_state", None) is None:
            continue
        other = cpu_layers[name]
        on_cuda = bnb.dequantize_4bit(module.weight.data, module.weight.quant_state).float().cpu()
        on_cpu = bnb.dequantize_4bit(other.weight.data, other.weight.quant_state).float()
        difference = (on_cuda - on_cpu).abs().max().item()
        worst = max(worst, difference)
        equal += bool(torch.equal(on_cuda, on_cpu))
        layers += 1
    return {"layers": layers, "bitwise_equal": equal, "max_abs_difference": worst}


def as_trained_vs_cuda(path: Path) -> float:
    """Largest difference between the as-trained base GGUF's attn_v of block 1 and the
    CUDA NF4 weight, dequantized."""
    import bitsandbytes.functional as bnb
    import numpy as np
    from gguf import GGUFReader

    from sftchat.models.loader import load_model

    layer = load_model("builtin", "cuda", quantize=True).model.model.layers[1].self_attn.v_proj
    want = bnb.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float().cpu().numpy()
    tensor = next(t for t in GGUFReader(str(path)).tensors if t.name == "blk.1.attn_v.weight")
    got = np.asarray(tensor.data, dtype=np.float32).reshape(want.shape)
    return float(np.abs(got - want).max())


def main() -> None:
    workspace, adapter, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    from sftchat.config import GenerationSettings, load_settings
    from sftchat.dataset.store import ExampleStore
    from sftchat.engine import ChatEngine
    from sftchat.export.exporter import export_adapter

    record = {"nf4_cuda_vs_cpu": nf4_cuda_vs_cpu()}
    with ExampleStore(workspace / "data") as store:
        curated = [(example.instruction, example.response) for example in store.snapshot()]
    settings = load_settings(workspace=str(workspace), device="cuda")
    for fmt in ("merged", "gguf", "gguf-lora"):
        export_adapter(settings, adapter, out / fmt, fmt)
    answers = transformers_answers(out / "merged", [q for q, _ in curated])
    record["merged_folder_exact"] = sum(a == want for a, (_, want) in zip(answers, curated))
    record["merged_folder_misses"] = [(q, a) for a, (q, want) in zip(answers, curated)
                                      if a != want]
    engine = ChatEngine.from_settings(settings)
    engine.use_adapter(adapter)
    chat = [engine.generate(q, settings=GenerationSettings(max_new_tokens=40, temperature=0))
            .collect() for q, _ in curated]
    record["chat_on_cuda_exact"] = sum(a == want for a, (_, want) in zip(chat, curated))
    record["curated"] = len(curated)
    record["dequantized_on"] = json.loads((out / "merged" / "sftchat-export.json")
                                          .read_text())["dequantized_on"]
    record["as_trained_vs_cuda_nf4"] = as_trained_vs_cuda(out / "gguf-lora"
                                                          / "base-as-trained-f16.gguf")
    record["files"] = {fmt: sorted(p.name for p in (out / fmt).iterdir())
                       for fmt in ("gguf", "gguf-lora")}
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
