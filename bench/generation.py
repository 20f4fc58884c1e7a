"""Generation throughput: vLLM (`LLM.chat`) against HF `generate` on the same prompts.

Runs both backends in one process on the demo's base model and the demo's RAG
prompts (test split, BM25 top-3), greedy, and prints generated tokens/s of each
and their ratio. Build the demo's inputs first (`make demo`, or
`snakemake -c all results/demo/retrieval/bm25/test/examples.jsonl results/demo/models/base`).

    python bench/generation.py [--n 64] [--max-new-tokens 32] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

from ragtrain.core.records import read_jsonl
from ragtrain.data.prompts import PromptTemplate
from ragtrain.generation.engine import Sampling, load_generator
from ragtrain.graph.kinds import GENERATION_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]


def run(backend: str, model: str, conversations, sampling: Sampling, params: dict) -> dict:
    began = time.perf_counter()
    generator = load_generator(model, {**params, "backend": backend})
    load_s = time.perf_counter() - began
    generator.chat(conversations[:2], sampling)  # warm-up, not timed
    generator.throughput.tokens, generator.throughput.seconds = 0, 0.0
    generator.chat(conversations, sampling)
    result = {
        "backend": backend,
        "load_s": load_s,
        "tokens": generator.throughput.tokens,
        "seconds": generator.throughput.seconds,
        "tokens_per_s": generator.throughput.tokens_per_second,
    }
    del generator
    gc.collect()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "results/demo/models/base"))
    parser.add_argument(
        "--examples", default=str(ROOT / "results/demo/retrieval/bm25/test/examples.jsonl")
    )
    parser.add_argument("--n", type=int, default=64, help="prompts")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16, help="HF generate batch size")
    parser.add_argument(
        "--closed-book", action="store_true", help="the closed-book prompt (short, decode-bound)"
    )
    parser.add_argument("--dtype", default="auto", help="auto: float32 on CPU, bfloat16 on GPU")
    parser.add_argument(
        "--memory", type=float, default=None, help="vLLM gpu_memory_utilization (CPU: of host RAM)"
    )
    args = parser.parse_args()

    from transformers import AutoTokenizer

    prompt = "closed_book" if args.closed_book else "rag"
    template = PromptTemplate(ROOT / f"resources/prompts/{prompt}.jinja")
    examples = read_jsonl(args.examples)[: args.n]
    conversations = [template.conversation(ex) for ex in examples]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompt_tokens = [
        len(
            tokenizer(
                tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
                add_special_tokens=False,
            ).input_ids
        )
        for c in conversations
    ]
    # Full length for every answer, so both backends generate the same number of tokens.
    sampling = Sampling(max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens)
    params = {
        **GENERATION_DEFAULTS,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "gpu_memory_utilization": args.memory,
    }

    results = [run(b, args.model, conversations, sampling, params) for b in ("hf", "vllm")]
    mean_prompt = sum(prompt_tokens) / len(prompt_tokens)
    print(
        f"{len(conversations)} {prompt} prompts of {mean_prompt:.0f} tokens on average,"
        f" {args.max_new_tokens} new tokens each (end of sequence suppressed), greedy"
    )
    print(f"{'backend':8} {'load s':>7} {'tokens':>7} {'gen s':>7} {'tok/s':>8}")
    for r in results:
        print(
            f"{r['backend']:8} {r['load_s']:7.1f} {r['tokens']:7d} {r['seconds']:7.1f}"
            f" {r['tokens_per_s']:8.1f}"
        )
    hf, vllm = results
    print(f"vLLM / HF generate: {vllm['tokens_per_s'] / hf['tokens_per_s']:.2f}x tokens/s")


# vLLM's engine spawns processes that re-import this module.
if __name__ == "__main__":
    main()
