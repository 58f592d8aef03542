"""The baseline: TRL's SFTTrainer, set up as its documentation says for prompt/completion data
with completion-only loss, QLoRA (bitsandbytes 4-bit + a peft LoraConfig).

Run by train_vs_trl.py in its own process; prints one JSON line of metrics at the end.
Not part of the test suite; needs `pip install trl datasets`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

START = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="JSONL of {prompt, completion}")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default="/tmp/trl-out")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    dataset = load_dataset("json", data_files=args.data, split="train")
    gpu = args.device == "cuda"
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(args.model, quantization_config=quantization,
                                                 dtype=torch.bfloat16,
                                                 device_map={"": 0} if gpu else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    peft_config = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout,
                             target_modules="all-linear", task_type="CAUSAL_LM")
    config = SFTConfig(
        output_dir=args.output, num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr,
        lr_scheduler_type="cosine", warmup_steps=0.03, max_grad_norm=0.3,
        max_length=args.max_length, completion_only_loss=True, logging_steps=1,
        save_strategy="no", report_to="none", seed=args.seed, use_cpu=not gpu,
        # On a GPU, the QLoRA recipe of TRL's documentation: bf16, gradient checkpointing.
        bf16=gpu, gradient_checkpointing=gpu, dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=peft_config)
    train_start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_start
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    peak = round(torch.cuda.max_memory_reserved() / 2**20) if gpu else None
    print(json.dumps({"losses": losses, "train_seconds": train_seconds,
                      "steps": trainer.state.global_step, "peak_gpu_memory_mb": peak,
                      "seconds_to_train_end": time.perf_counter() - START}))


if __name__ == "__main__":
    main()
