"""Training throughput, side by side: `sftchat train` against TRL's SFTTrainer, same work.

Same model (a local Llama-shaped model built by bench_model.py unless --model is given),
same examples, template (Alpaca), LoRA (rank, alpha, all-linear targets, dropout), epochs,
batch size, max length and 4-bit NF4 config. Each runs as its own process; reported: the
whole command's wall time, real (non-padding) tokens per second, peak RSS, and both loss
curves. Prints the ratio and writes a JSON record (--out) for RESULTS.md.

    python benchmarks/train_vs_trl.py --data ../shared/data/alpaca_5000.json \\
        --examples 300 --epochs 2

With `--device cuda` (benchmarks/gpu_check.sh runs it so, on a ~1B Llama shape) each side
also reports its training-phase tokens per second, its peak GPU memory (the caching
allocator's peak reserved bytes, model load included) and an MFU estimate (6 × parameters ×
tokens/s over the GPU's dense bf16 peak: the usual convention; QLoRA does less work per token
than full training, so this understates the hardware's use a little for both alike).

`--shape qwen2.5-0.5b` (or `llama3.2-1b`) trains a random model of that real shape instead
(tests/shaped_models.py: the full 151,936-token vocabulary, GQA, tied embeddings; the
built-in model's tokenizer), and `--recipe defaults` runs sftchat with its real-model default
recipe (distillation and the quiet penalty on anchors: more work than TRL's side does) instead
of TRL's. Then the record also holds the step time of each (training seconds per optimizer
step) and sftchat's own memory estimate, made before its first step, beside what its
training took (metrics `memory_estimate_mb`, `memory_used_mb`).

    python benchmarks/train_vs_trl.py --data ../shared/data/alpaca_5000.json \
        --shape qwen2.5-0.5b --recipe defaults --examples 16 --epochs 1 --batch-size 4 \
        --max-length 256

Needs `pip install trl datasets` (not project dependencies).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_model import add_model_arguments, build, dims_from_args, load_alpaca  # noqa: E402
from measure import json_lines, machine, run_measured  # noqa: E402


SHAPES = {"qwen2.5-0.5b": ("QWEN25_05B", "Qwen2Config"),
          "llama3.2-1b": ("LLAMA32_1B", "LlamaConfig")}


def prepare(args, root: Path):
    if args.shape:
        import shaped_models

        shape, architecture = SHAPES[args.shape]
        model = shaped_models.qwen2_shaped(root / "model", getattr(shaped_models, shape),
                                           architecture=architecture)
    elif args.model:
        model = Path(args.model)
    else:
        model = build(args.data, root / "model", dims_from_args(args))
    records = fitting(load_alpaca(args.data, None, offset=args.offset), model,
                      args.max_length, args.examples)
    workspace = root / "workspace"
    workspace.mkdir()
    (root / "data.json").write_text(json.dumps(records))
    from sftchat.dataset.formats import read_records
    from sftchat.dataset.store import ExampleStore
    from sftchat.prompts import render_prompt

    with ExampleStore(workspace / "data") as store:
        store.add_many((r["instruction"], r["input"], r["response"], None, "bench")
                       for r in read_records(root / "data.json"))
    with open(root / "trl.jsonl", "w") as out:
        for record in records:
            out.write(json.dumps({
                "prompt": render_prompt("alpaca", record["instruction"], record.get("input", "")),
                "completion": record["output"]}) + "\n")
    return model, workspace


def fitting(records: list[dict], model: Path, max_length: int, limit: int) -> list[dict]:
    """The first `limit` records whose prompt and response fit whole in `max_length` under
    the model's tokenizer: both trainers then see the same examples (neither cuts one)."""
    from transformers import AutoTokenizer

    from sftchat.prompts import ExampleTooLongError, encode_example

    tokenizer = AutoTokenizer.from_pretrained(model)
    kept = []
    for record in records:
        try:
            encoded = encode_example(tokenizer, "alpaca", record, max_length)
        except ExampleTooLongError:
            continue
        if not encoded.prompt.truncated:
            kept.append(record)
        if len(kept) == limit:
            break
    return kept


def real_tokens(model: Path, data: Path, max_length: int) -> int:
    """Non-padding tokens per epoch under the shared template (prompt + response + EOS)."""
    from transformers import AutoTokenizer

    from sftchat.prompts import encode_example

    tokenizer = AutoTokenizer.from_pretrained(model)
    records = json.loads(data.read_text())
    return sum(len(encode_example(tokenizer, "alpaca", r, max_length).input_ids)
               for r in records)


# Dense bf16 peak of the GPUs this is run on (vendor figures, no sparsity).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


def parameter_count(model: Path) -> int:
    """Parameters of a Llama-shaped model, from its config."""
    config = json.loads((model / "config.json").read_text())
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads")
    kv = kv or heads
    attention = 2 * hidden * hidden + 2 * hidden * (hidden // heads * kv)
    layer = attention + 3 * hidden * inter + 2 * hidden
    embeddings = config["vocab_size"] * hidden * (1 if config.get("tie_word_embeddings")
                                                  else 2)
    return config["num_hidden_layers"] * layer + embeddings + hidden


def gpu_figures(row: dict, tokens: int, train_seconds: float, peak_mb, model: Path) -> None:
    """Training-phase tokens/s, peak GPU memory and MFU, into `row`."""
    import torch

    name = torch.cuda.get_device_name(0)
    peak_flops = next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
    row["train_seconds"] = round(train_seconds, 2)
    row["train_tokens_per_s"] = round(tokens / train_seconds, 1)
    row["peak_gpu_memory_mb"] = peak_mb
    if peak_flops:
        row["mfu"] = round(6 * parameter_count(model) * tokens / train_seconds / peak_flops, 4)


def sftchat_metrics(workspace: Path) -> dict:
    (adapter,) = [p for p in (workspace / "adapters").iterdir() if not p.name.startswith(".")]
    return json.loads((adapter / "sftchat.json").read_text())["metrics"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="Alpaca JSON file")
    parser.add_argument("--model", help="model folder (default: build one from --data)")
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--offset", type=int, default=0, help="skip this many records first")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--out", type=Path, help="write the JSON record here")
    parser.add_argument("--skip-trl", action="store_true", help="only run sftchat")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES),
                        help="a random model of this real shape (instead of --model)")
    parser.add_argument("--recipe", choices=("same", "defaults"), default="same",
                        help="sftchat with TRL's recipe (same) or its own default recipe")
    add_model_arguments(parser)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="sftchat-bench-"))
    try:
        model, workspace = prepare(args, root)
        common = ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                  "--rank", str(args.rank), "--alpha", str(args.alpha),
                  "--dropout", str(args.dropout), "--lr", str(args.lr),
                  "--max-length", str(args.max_length)]
        # The same recipe as the TRL side: every planned step, no rehearsal, its clipping.
        same_recipe = ["--no-early-stop", "--regularize", "off", "--max-grad-norm", "0.3"]
        if args.recipe == "defaults":   # its own recipe, every planned step
            same_recipe = ["--no-early-stop", "--max-drift", "0"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        sft = run_measured([sys.executable, "-m", "sftchat.cli", "--workspace", str(workspace),
                            "--model", str(model), "--template", "alpaca", "--device",
                            args.device, "train", "--json",
                            "--grad-accum", "1", *same_recipe,
                            *common], env=env)
        if sft.returncode:
            sys.exit(f"sftchat train failed:\n{sft.stderr}")
        events = json_lines(sft.stdout)
        sft_losses = [e["loss"] for e in events if e.get("event") == "step"]
        tokens = real_tokens(model, root / "data.json", args.max_length) * args.epochs
        result = {
            "date": dt.date.today().isoformat(), "machine": machine(),
            "command": " ".join(["python", "benchmarks/train_vs_trl.py", *sys.argv[1:]]),
            "examples": args.examples, "epochs": args.epochs, "batch_size": args.batch_size,
            "real_tokens": tokens,
            "sftchat": {"wall_s": round(sft.seconds, 2), "peak_rss_mb": round(sft.peak_rss_mb),
                        "tokens_per_s": round(tokens / sft.seconds, 1), "losses": sft_losses},
            "device": args.device,
        }
        metrics = sftchat_metrics(workspace)
        result["sftchat"].update(
            steps=metrics["steps"], train_seconds=metrics["train_seconds"],
            step_s=round(metrics["train_seconds"] / metrics["steps"], 2),
            memory_estimate_mb=metrics.get("memory_estimate_mb"),
            memory_used_mb=metrics.get("memory_used_mb"))
        result["recipe"], result["shape"] = args.recipe, args.shape or args.model or "bench"
        if args.device == "cuda":
            gpu_figures(result["sftchat"], tokens, metrics["train_seconds"],
                        metrics["peak_gpu_memory_mb"], model)
        if not args.skip_trl:
            trl = run_measured([sys.executable, str(HERE / "trl_baseline.py"), "--model",
                                str(model), "--data", str(root / "trl.jsonl"),
                                "--output", str(root / "trl-out"), "--device", args.device,
                                *common], env=env)
            if trl.returncode:
                sys.exit(f"TRL failed:\n{trl.stderr[-3000:]}")
            trl_metrics = json_lines(trl.stdout)[-1]
            result["trl"] = {"wall_s": round(trl.seconds, 2),
                             "peak_rss_mb": round(trl.peak_rss_mb),
                             "tokens_per_s": round(tokens / trl.seconds, 1),
                             "losses": trl_metrics["losses"],
                             "steps": trl_metrics["steps"],
                             "train_seconds": round(trl_metrics["train_seconds"], 2),
                             "step_s": round(trl_metrics["train_seconds"]
                                             / max(1, trl_metrics["steps"]), 2)}
            result["speedup_wall"] = round(trl.seconds / sft.seconds, 2)
            result["speedup_step"] = round(result["trl"]["step_s"]
                                           / max(result["sftchat"]["step_s"], 1e-9), 2)
            result["memory_ratio"] = round(sft.peak_rss_mb / trl.peak_rss_mb, 2)
            if args.device == "cuda":
                gpu_figures(result["trl"], tokens, trl_metrics["train_seconds"],
                            trl_metrics["peak_gpu_memory_mb"], model)
                ours, theirs = result["sftchat"], result["trl"]
                result["speedup_train"] = round(ours["train_tokens_per_s"]
                                                / theirs["train_tokens_per_s"], 2)
                result["gpu_memory_ratio"] = round(ours["peak_gpu_memory_mb"]
                                                   / theirs["peak_gpu_memory_mb"], 2)
        print(json.dumps({k: v for k, v in result.items()
                          if k not in ("sftchat", "trl")}, indent=1))
        for name in ("sftchat", "trl"):
            if name in result:
                row = result[name]
                print(f"{name:8} wall {row['wall_s']:7.1f} s  {row['tokens_per_s']:8.1f} tok/s  "
                      f"peak RSS {row['peak_rss_mb']:6} MB  loss {row['losses'][0]:.3f} -> "
                      f"{row['losses'][-1]:.3f} ({len(row['losses'])} steps)")
        if "speedup_wall" in result:
            print(f"sftchat train is {result['speedup_wall']}x faster than TRL SFTTrainer "
                  f"(wall time), {result['speedup_step']}x per optimizer step, with "
                  f"{result['memory_ratio']}x its peak memory")
        ours = result["sftchat"]
        print(f"sftchat's estimate before the run: {ours['memory_estimate_mb']} MiB; its "
              f"training took {ours['memory_used_mb']} MiB beyond the loaded model")
        if "speedup_train" in result:
            for name in ("sftchat", "trl"):
                row = result[name]
                print(f"{name:8} GPU: {row['train_tokens_per_s']:9.1f} tok/s while training, "
                      f"peak {row['peak_gpu_memory_mb']} MiB, MFU {row.get('mfu')}")
            print(f"on the GPU: {result['speedup_train']}x TRL's training tokens/s (goal >= 2), "
                  f"{result['gpu_memory_ratio']}x its peak memory (goal <= 0.6)")
        if args.out:
            args.out.write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
