"""The preference baseline: TRL's DPOTrainer, set up as its documentation says for QLoRA
(a bitsandbytes 4-bit NF4 model + a peft LoraConfig, `ref_model=None`: with a PEFT model the
reference is the base with the adapter disabled, no second copy in memory).

Trains on a JSONL of {prompt, chosen, rejected} records (TRL's conversational format: the
prompt a list of messages, each answer [{role: assistant, content}]) and saves the adapter to
`--output`. `--loss-type sigmoid,sft` (the default) is DPO plus the SFT loss on the chosen
answers with equal weights — what `sftchat train --objective dpo` optimises (RPO's recipe);
`--loss-type sigmoid` is plain DPO.

Run by dpo_vs_trl.py in its own process; prints one JSON line of metrics at the end (train
seconds, steps, the last logged reward accuracy and margin, the losses).
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
    parser.add_argument("--model", required=True, help="Hugging Face model folder")
    parser.add_argument("--data", required=True, help="JSONL of {prompt, chosen, rejected}")
    parser.add_argument("--output", required=True, help="where the adapter is saved")
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per optimizer step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--loss-type", default="sigmoid,sft",
                        help="comma-separated TRL loss types, equal weights")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--warmup-ratio", type=float, default=0.03)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--compute-dtype", choices=("auto", "bfloat16", "float32"),
                        default="auto",
                        help="the 4-bit layers' compute dtype (auto: bfloat16 on CUDA as "
                             "QLoRA says, float32 on the CPU as sftchat, where bfloat16 is "
                             "emulated on most chips)")
    args = parser.parse_args()

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import DPOConfig, DPOTrainer

    dataset = load_dataset("json", data_files=args.data, split="train")
    gpu = args.device == "cuda"
    dtype = {"auto": torch.bfloat16 if gpu else torch.float32, "bfloat16": torch.bfloat16,
             "float32": torch.float32}[args.compute_dtype]
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(args.model, quantization_config=quantization,
                                                 dtype=dtype,
                                                 device_map={"": 0} if gpu else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    peft_config = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout,
                             target_modules="all-linear", task_type="CAUSAL_LM")
    loss_types = [name.strip() for name in args.loss_type.split(",") if name.strip()]
    config = DPOConfig(
        output_dir=args.output, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=args.warmup_ratio,
        max_grad_norm=args.max_grad_norm, weight_decay=0.0, beta=args.beta,
        loss_type=loss_types, loss_weights=[1.0] * len(loss_types),
        max_length=args.max_length, logging_steps=1, save_strategy="no", report_to="none",
        seed=args.seed, use_cpu=not gpu, dataloader_num_workers=0,
        # On a GPU, the QLoRA recipe of TRL's documentation: bf16, gradient checkpointing.
        bf16=gpu, gradient_checkpointing=gpu,
    )
    trainer = DPOTrainer(model=model, ref_model=None, args=config, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=peft_config)
    train_start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_start
    trainer.model.save_pretrained(args.output)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    last = logs[-1] if logs else {}
    peak = round(torch.cuda.max_memory_reserved() / 2**20) if gpu else None
    print(json.dumps({
        "train_seconds": train_seconds, "steps": trainer.state.global_step,
        "reward_accuracy": last.get("rewards/accuracies"),
        "reward_margin": last.get("rewards/margins"),
        "losses": [entry["loss"] for entry in logs], "peak_gpu_memory_mb": peak,
        "loss_type": loss_types, "seconds_to_train_end": time.perf_counter() - START}))


if __name__ == "__main__":
    main()
