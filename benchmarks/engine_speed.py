"""Hot-swap and generation speed of the chat engine, each against its baseline, same run.

- Hot-swap: from an adapter being published to the first token it generates, in the running
  engine (`use_adapter` + first streamed piece), against reloading: the base model and the
  adapter loaded afresh in the same process, then the first token (strict), and a whole new
  `sftchat ask --adapter` process (what a restart costs).
- Generation: streamed tokens per second and time to first token of `ChatEngine.generate`
  against plain `model.generate` (no streamer) on the same prompt, greedy, same tokens.

    python benchmarks/engine_speed.py [--model builtin] [--tokens 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from measure import machine  # noqa: E402

EXAMPLES = [("What is the capital of France?", "Paris."),
            ("Say hello in Japanese.", "こんにちは！"), ("Name a colour.", "Blue.")]


def train_adapter(workspace: Path, model: str) -> None:
    from sftchat.config import load_settings
    from sftchat.dataset.store import ExampleStore
    from sftchat.training.trainer import run_training

    with ExampleStore(workspace / "data") as store:
        for instruction, response in EXAMPLES:
            store.add(instruction, response)
    from dataclasses import replace

    settings = load_settings(workspace=str(workspace), model=model)
    # The adapter's quality does not matter here, only its size: a couple of steps will do.
    training = replace(settings.training, max_steps=2, rank=16, alpha=32)
    run_training(settings, training, emit=lambda event: None, name="bench")


def hotswap(workspace: Path, model: str, repeats: int) -> dict:
    from peft import PeftModel

    from sftchat.config import GenerationSettings, load_settings
    from sftchat.engine import ChatEngine
    from sftchat.models.loader import load_model

    settings = load_settings(workspace=str(workspace), model=model)
    one_token = GenerationSettings(max_new_tokens=1, temperature=0)
    engine = ChatEngine.from_settings(settings)
    engine.generate(EXAMPLES[0][0], settings=one_token).collect()  # warm the base
    swaps, swap_only, cached, slot_swaps, slot_only = [], [], [], [], []
    for _ in range(repeats):
        engine.use_adapter("none")
        engine.unload_adapter("bench")  # force a real load from disk each time
        started = time.perf_counter()
        swap_only.append(engine.use_adapter("bench").seconds)
        next(iter(engine.generate(EXAMPLES[0][0], settings=one_token)), None)
        swaps.append(time.perf_counter() - started)
        engine.use_adapter("none")
        cached.append(engine.use_adapter("bench").seconds)  # already in memory: a switch
        # As in the app: the adapter's empty layers were injected while the trainer ran.
        engine.use_adapter("none")
        engine.unload_adapter("bench")
        engine.prepare_slot(16, 32)
        started = time.perf_counter()
        slot_only.append(engine.use_adapter("bench").seconds)
        next(iter(engine.generate(EXAMPLES[0][0], settings=one_token)), None)
        slot_swaps.append(time.perf_counter() - started)
    reloads = []
    for _ in range(max(2, repeats // 2)):
        started = time.perf_counter()
        loaded = load_model(model, "auto", settings.quantize)
        loaded.model = PeftModel.from_pretrained(loaded.model, str(workspace / "adapters/bench"))
        fresh = ChatEngine(loaded, settings.template)
        next(iter(fresh.generate(EXAMPLES[0][0], settings=one_token)), None)
        reloads.append(time.perf_counter() - started)
    restarts = []
    for _ in range(2):
        # What a user without hot-swap does: start sftchat again with the adapter.
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sftchat.cli", "--workspace", str(workspace),
                        "--model", model, "ask", EXAMPLES[0][0], "--adapter", "bench",
                        "--max-new-tokens", "1", "--temperature", "0"],
                       check=True, capture_output=True)
        restarts.append(time.perf_counter() - started)
    swap, reload = statistics.median(swaps), statistics.median(reloads)
    restart = statistics.median(restarts)
    return {"swap_to_first_token_s": round(swap, 4), "reload_to_first_token_s": round(reload, 3),
            "swap_share_of_reload": round(swap / reload, 4),
            "restart_process_to_first_token_s": round(restart, 3),
            "swap_share_of_restart": round(swap / restart, 4),
            "swap_only_s": round(statistics.median(swap_only), 4),
            "prepared_swap_to_first_token_s": round(statistics.median(slot_swaps), 4),
            "prepared_swap_only_s": round(statistics.median(slot_only), 4),
            "prepared_share_of_reload": round(statistics.median(slot_swaps) / reload, 4),
            "switch_to_loaded_adapter_s": round(statistics.median(cached), 5)}


def generation(model: str, tokens: int, repeats: int) -> dict:
    import torch

    from sftchat.config import GenerationSettings
    from sftchat.engine import ChatEngine
    from sftchat.models.loader import load_model
    from sftchat.prompts import encode_prompt, stop_token_ids

    loaded = load_model(model, "auto", True)
    engine = ChatEngine(loaded, "alpaca")
    prompt = "Write a long story about a robot who learns to paint."
    ids = encode_prompt(loaded.tokenizer, "alpaca", prompt).ids
    settings = GenerationSettings(max_new_tokens=tokens, temperature=0)
    streamed, plain, ttft_streamed, ttft_plain = [], [], [], []
    inputs = torch.tensor([ids], device=loaded.model.device)
    kwargs = dict(attention_mask=torch.ones_like(inputs), do_sample=False, top_p=None,
                  top_k=None, temperature=None, pad_token_id=loaded.tokenizer.pad_token_id,
                  eos_token_id=stop_token_ids(engine.template, loaded.tokenizer))

    def run_streamed() -> int:
        answer = engine.generate(prompt, settings=settings)
        answer.collect()
        streamed.append(answer.new_tokens / answer.seconds)
        ttft_streamed.append(answer.first_token_seconds)
        return answer.new_tokens

    def run_plain(count: int) -> None:
        with torch.no_grad():
            started = time.perf_counter()
            out = loaded.model.generate(inputs, max_new_tokens=count, **kwargs)
            plain.append((out.shape[1] - len(ids)) / (time.perf_counter() - started))
            started = time.perf_counter()
            loaded.model.generate(inputs, max_new_tokens=1, **kwargs)
            ttft_plain.append(time.perf_counter() - started)

    count = run_streamed()
    streamed.clear(), ttft_streamed.clear()
    for repeat in range(repeats):
        # Alternate which goes first, so drift (heat, other load) does not favour either.
        if repeat % 2:
            run_plain(count)
            run_streamed()
        else:
            run_streamed()
            run_plain(count)
    result = {
        "new_tokens": count,
        "streamed_tokens_per_s": round(statistics.median(streamed), 1),
        "plain_tokens_per_s": round(statistics.median(plain), 1),
        "streamed_ttft_s": round(statistics.median(ttft_streamed), 4),
        "plain_ttft_s": round(statistics.median(ttft_plain), 4),
    }
    result["throughput_ratio"] = round(result["streamed_tokens_per_s"]
                                       / result["plain_tokens_per_s"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=("hotswap", "generation"),
                        help="run one of the two measurements")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from sftchat.models.loader import quiet_libraries

    quiet_libraries()
    result = {"command": " ".join(["python", "benchmarks/engine_speed.py", *sys.argv[1:]]),
              "machine": machine(), "model": args.model}
    if args.only != "generation":
        with tempfile.TemporaryDirectory() as folder:
            workspace = Path(folder)
            train_adapter(workspace, args.model)
            result["hotswap"] = hotswap(workspace, args.model, args.repeats)
    if args.only != "hotswap":
        result["generation"] = generation(args.model, args.tokens, args.repeats)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
