"""`sftchat train --nproc N` against one process, same work, same run (issue 13).

Same model (a local Llama-shaped model built by bench_model.py unless --model is given), same
Alpaca examples and recipe; each run is its own `sftchat train` process tree (the launcher,
torchrun's agent in it and the ranks). Reported per run: wall time, training-phase tokens per
second, peak RSS of the whole tree; and how far the N-process adapter is from the
one-process one (loss curve, LoRA weights).

    python benchmarks/data_parallel.py --data ../shared/data/alpaca_5000.json --nproc 2

On a CPU the ranks share the cores (each gets cores / N threads), so no speed-up is expected
there: this measures the cost of the launch and of the gradient all-reduce. On GPUs each
rank has its own device.
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

from bench_model import add_model_arguments, build, dims_from_args, load_alpaca  # noqa: E402
from measure import json_lines, machine, run_measured  # noqa: E402


def workspace_with(records: list[dict], folder: Path) -> Path:
    from sftchat.dataset.store import ExampleStore

    with ExampleStore(folder / "data") as store:
        store.add_many((r["instruction"], r.get("input", ""), r["output"], None, "bench")
                       for r in records)
    return folder


def train(workspace: Path, model: Path, nproc: int, recipe: list[str], device: str) -> dict:
    name = f"nproc{nproc}"
    run = run_measured([sys.executable, "-m", "sftchat.cli", "--workspace", str(workspace),
                        "--model", str(model), "--device", device, "train", "--json",
                        "--name", name, "--nproc", str(nproc), *recipe],
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if run.returncode:
        sys.exit(f"sftchat train --nproc {nproc} failed:\n{run.stderr[-3000:]}")
    adapter = workspace / "adapters" / name
    metrics = json.loads((adapter / "sftchat.json").read_text())["metrics"]
    steps = [event for event in json_lines(run.stdout) if event.get("event") == "step"]
    return {"wall_s": round(run.seconds, 2), "peak_rss_mb": round(run.peak_rss_mb),
            "train_seconds": metrics["train_seconds"], "tokens": metrics["tokens"],
            "train_tokens_per_s": metrics["tokens_per_s"], "steps": len(steps),
            "loss_curve": metrics["loss_curve"], "adapter": str(adapter)}


def weight_difference(one: str, other: str) -> dict:
    """How far apart two adapters' LoRA weights are, tensor by tensor: the difference's norm
    over the tensor's norm, and its largest element over the tensor's largest (worst
    tensors)."""
    from safetensors.torch import load_file

    a = load_file(str(Path(one) / "adapter_model.safetensors"))
    b = load_file(str(Path(other) / "adapter_model.safetensors"))
    norm = max(float((a[k] - b[k]).norm() / a[k].norm().clamp(min=1e-12)) for k in a)
    element = max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp(min=1e-12))
                  for k in a)
    return {"norm": norm, "element": element}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="Alpaca JSON file")
    parser.add_argument("--model", help="model folder (default: build one from --data)")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, help="write the JSON record here")
    add_model_arguments(parser)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="sftchat-ddp-"))
    try:
        model = Path(args.model) if args.model else build(args.data, root / "model",
                                                         dims_from_args(args))
        workspace = workspace_with(load_alpaca(args.data, args.examples), root / "ws")
        recipe = ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                  "--grad-accum", str(args.grad_accum), "--max-length", str(args.max_length),
                  "--no-early-stop", "--regularize", "off", "--dropout", "0"]
        one = train(workspace, model, 1, recipe, args.device)
        many = train(workspace, model, args.nproc, recipe, args.device)
        result = {
            "date": dt.date.today().isoformat(), "machine": machine(),
            "command": " ".join(["python", "benchmarks/data_parallel.py", *sys.argv[1:]]),
            "examples": args.examples, "nproc": args.nproc, "one": one, "many": many,
            "loss_curve_max_relative_difference": max(
                abs(a - b) / abs(a) for a, b in zip(one["loss_curve"], many["loss_curve"])),
            "lora_max_relative_difference": weight_difference(one["adapter"], many["adapter"]),
        }
        for label, row in (("1 process", one), (f"{args.nproc} processes", many)):
            print(f"{label:12} wall {row['wall_s']:7.1f} s  training {row['train_seconds']:7.1f}"
                  f" s  {row['train_tokens_per_s']:8.1f} tok/s  peak RSS {row['peak_rss_mb']} "
                  f"MB  loss {row['loss_curve'][0]:.4f} -> {row['loss_curve'][-1]:.4f}")
        lora = result["lora_max_relative_difference"]
        print(f"same adapter? loss curves differ by at most "
              f"{result['loss_curve_max_relative_difference']:.2e} (relative); LoRA tensors by "
              f"{lora['norm']:.2e} of their norm, {lora['element']:.2e} of their largest "
              "weight element-wise")
        if args.out:
            args.out.write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
