"""Build a small local Llama-shaped model for benchmarks: a BPE tokenizer trained on the
benchmark data, and deterministic random weights (the built-in model's generator, larger).

    python benchmarks/bench_model.py --data ../shared/data/alpaca_5000.json --out /tmp/m

Random weights do not matter for speed and memory; the tokenizer is real (trained on the
data), so sequence lengths are those a real model would see.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import save_file

from sftchat.models.builtin import LlamaDims, llama_config, llama_weights

SPECIALS = ["<s>", "</s>", "<pad>"]


def load_alpaca(path: Path, limit: int | None = None, offset: int = 0) -> list[dict]:
    records = json.loads(Path(path).read_text(encoding="utf-8"))
    records = records[offset:]
    return records[:limit] if limit else records


def build(data: Path, out: Path, dims: LlamaDims) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    texts = [f"{r['instruction']}\n{r.get('input', '')}\n{r['output']}" for r in load_alpaca(data)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=dims.vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 0)])
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "pad_token": "<pad>", "model_max_length": dims.max_positions}))
    config = llama_config(dims, bos_id=0, eos_id=1, pad_id=2)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2}))
    save_file(llama_weights(dims), str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def dims_from_args(args) -> LlamaDims:
    return LlamaDims(vocab_size=args.vocab, hidden_size=args.hidden,
                     intermediate_size=args.intermediate, num_layers=args.layers,
                     num_heads=args.heads, num_kv_heads=args.kv_heads, max_positions=2048)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--kv-heads", type=int, default=6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="Alpaca JSON file")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    add_model_arguments(parser)
    args = parser.parse_args()
    print(build(args.data, args.out, dims_from_args(args)))


if __name__ == "__main__":
    main()
