"""Training throughput: LoRA against full fine-tuning (SFT), and DPO against SFT.

Runs TRL's trainers in one process on the demo's base model and the demo's own
training data (the `sft_data` and `pairs` products: RAG prompts of ~230 tokens),
and prints examples/s and tokens/s of each run and their ratios. The first steps
are a warm-up and are not timed. Build the inputs first (`make demo`, or
`snakemake -c all results/demo/products/{sft_data,pairs}/stats.json`).

    python bench/training.py [--steps 6] [--batch-size 4] [--dtype float32]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "results" / "demo"


class Timer:
    """A TrainerCallback that times steps after the warm-up and counts their tokens."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer.began = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step > warmup:
                    timer.seconds += time.perf_counter() - timer.began
                    timer.steps += 1

        self.callback = Callback()
        self.warmup = warmup
        self.began = 0.0
        self.seconds = 0.0
        self.steps = 0


def run(kind: str, finetune: str, args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from ragtrain.core.records import read_jsonl

    fields = ("prompt", "completion") if kind == "sft" else ("prompt", "chosen", "rejected")
    product = "sft_data" if kind == "sft" else "pairs"
    records = read_jsonl(DEMO / "products" / product / "train.jsonl")
    needed = (args.steps + args.warmup) * args.batch_size
    records = (records * (needed // len(records) + 1))[:needed]
    data = Dataset.from_list([{f: r[f] for f in fields} for r in records])
    dtype = getattr(torch, args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(DEMO / "models" / "base")
    model = AutoModelForCausalLM.from_pretrained(DEMO / "models" / "base", dtype=dtype)
    lora = (
        LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        if finetune == "lora"
        else None
    )
    timer = Timer(args.warmup)
    with tempfile.TemporaryDirectory() as out:
        common = dict(
            output_dir=out,
            max_steps=args.steps + args.warmup,
            per_device_train_batch_size=args.batch_size,
            learning_rate=1e-5,
            logging_steps=1000,
            save_strategy="no",
            report_to="none",
            bf16=dtype == torch.bfloat16,
            max_length=512,
            dataloader_pin_memory=torch.cuda.is_available(),
            disable_tqdm=True,
        )
        if kind == "sft":
            config = SFTConfig(**common, completion_only_loss=True)
            trainer = SFTTrainer(
                model=model,
                args=config,
                train_dataset=data,
                processing_class=tokenizer,
                peft_config=lora,
                callbacks=[timer.callback],
            )
            tokens = sum(len(x) for x in trainer.train_dataset["input_ids"]) / len(data)
        else:
            config = DPOConfig(**common, beta=0.1)
            trainer = DPOTrainer(
                model=model,
                args=config,
                train_dataset=data,
                processing_class=tokenizer,
                peft_config=lora,
                callbacks=[timer.callback],
            )
            d = trainer.train_dataset
            # Chosen and rejected each carry the prompt.
            tokens = sum(
                2 * len(p) + len(c) + len(r)
                for p, c, r in zip(d["prompt_ids"], d["chosen_ids"], d["rejected_ids"], strict=True)
            ) / len(data)
        trainer.train()
    examples = timer.steps * args.batch_size
    result = {
        "run": f"{kind.upper()} {finetune}",
        "examples_per_s": examples / timer.seconds,
        "tokens_per_s": examples * tokens / timer.seconds,
        "tokens_per_example": tokens,
        "s_per_example": timer.seconds / examples,
    }
    del trainer, model
    gc.collect()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = [run("sft", "full", args), run("sft", "lora", args), run("dpo", "lora", args)]
    print(f"\n{args.steps} timed steps of batch {args.batch_size}, {args.dtype}")
    print(f"{'run':<10} {'s/example':>10} {'examples/s':>11} {'tokens/s':>9} {'tokens/ex':>10}")
    for r in results:
        print(
            f"{r['run']:<10} {r['s_per_example']:>10.2f} {r['examples_per_s']:>11.3f}"
            f" {r['tokens_per_s']:>9.0f} {r['tokens_per_example']:>10.0f}"
        )
    full, lora, dpo = results
    print(f"LoRA / full SFT speed: {lora['examples_per_s'] / full['examples_per_s']:.2f}x")
    print(
        f"DPO pair / SFT example time (LoRA): {dpo['s_per_example'] / lora['s_per_example']:.2f}x"
    )


if __name__ == "__main__":
    main()
