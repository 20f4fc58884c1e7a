"""Self-demonstrations: `n` sampled responses per training question, with the RAG prompt,
or the samples of several strategies (ragtrain.generation.strategies: system prompts,
with or without documents, follow-up turns), each marked with its strategy's name.

Generation is written in shards to the node's work folder and resumes where it
stopped. Every example has its own seed (from the node's seed and the example id), which
seeds its request on both backends (see ragtrain.generation.engine): its samples depend
neither on the other examples of its shard nor on the process that draws them. So a rerun,
a resumed run or a run with other shard or batch sizes draws the same samples.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from ragtrain.core.records import RecordError, read_jsonl, write_jsonl
from ragtrain.core.seeds import stable_seed
from ragtrain.data.prompts import PromptTemplate
from ragtrain.generation.engine import Generator, Sampling, Throughput
from ragtrain.generation.strategies import Strategy, parse_follow_up

log = logging.getLogger(__name__)


def _shard_path(work: Path, index: int) -> Path:
    return work / f"shard-{index:05d}.jsonl"


def sample_demos(
    examples: list[dict],
    load_generator: Callable[[], Generator],
    template: PromptTemplate,
    params: dict,
    work: Path,
    desc: str = "self-demos",
    strategies: list[Strategy] | None = None,
    prefixed: bool = False,
) -> tuple[list[dict], dict]:
    """Return (sample records, stats). The generator is loaded only if a shard is missing.
    `examples` are any records with an `id` that the template renders (questions with
    their documents, or passages). With `strategies`, each question's samples are those
    of every strategy (ragtrain.generation.strategies), each marked with its name; the
    template still gives the record's `prompt`, the one trained on. With `prefixed`, each
    example's `prefix` starts the assistant's answer and its samples continue it."""
    shard_size = params["shard_size"]
    n = sum(s.n for s in strategies) if strategies else params["n"]
    generation = params["generation"]
    sampling = Sampling.from_params(generation, n=n)
    if sampling.temperature == 0 and n > 1 and not strategies:
        log.warning("temperature 0: the %d samples per question will all be the same", n)
    starts = range(0, len(examples), shard_size)
    generator: Generator | None = None
    throughput = Throughput()
    records: list[dict] = []
    resumed = 0
    bar = tqdm(total=len(examples) * n, unit="sample", desc=desc, file=sys.stderr, mininterval=10)
    for index, start in enumerate(starts):
        batch = examples[start : start + shard_size]
        path = _shard_path(work, index)
        if path.exists():
            done = read_jsonl(path)
            if [r["id"] for r in done] != [ex["id"] for ex in batch]:
                raise RecordError(path, None, "shard does not match the examples; delete it")
            records.extend(done)
            resumed += 1
            bar.update(len(batch) * n)
            continue
        if generator is None:
            generator = load_generator()
        conversations = [template.conversation(ex) for ex in batch]
        before = (generator.throughput.tokens, generator.throughput.seconds)
        if strategies:
            samples = _strategy_samples(batch, generator, strategies, generation)
        else:
            seeds = [stable_seed(generation["seed"], ex["id"]) for ex in batch]
            prefixes = {"prefixes": [ex["prefix"] for ex in batch]} if prefixed else {}
            samples = [
                [{"text": c.text, "num_tokens": c.num_tokens} for c in outs]
                for outs in generator.chat(conversations, sampling, seeds, **prefixes)
            ]
        throughput.add(
            generator.throughput.tokens - before[0], generator.throughput.seconds - before[1]
        )
        shard = [
            {**ex, "prompt": conversation, "samples": drawn}
            for ex, conversation, drawn in zip(batch, conversations, samples, strict=True)
        ]
        write_jsonl(path, shard)
        records.extend(shard)
        bar.update(len(batch) * n)
        bar.set_postfix_str(f"{throughput.tokens_per_second:.1f} tok/s")
    bar.close()
    tokens = sum(s["num_tokens"] for r in records for s in r["samples"])
    stats = {
        "n_examples": len(records),
        "n_samples": len(records) * n,
        "samples_per_example": n,
        "generated_tokens": tokens,
        "mean_tokens_per_sample": round(tokens / (len(records) * n), 2) if records else None,
        # This run's generation only (resumed shards are not timed again).
        "tokens_per_second": round(throughput.tokens_per_second, 1),
        "shards": len(starts),
        "resumed_shards": resumed,
    }
    if strategies:
        stats["strategies"] = {s.name: s.n for s in strategies}
        stats["empty_samples"] = sum(not x["text"].strip() for r in records for x in r["samples"])
    return records, stats


def _strategy_samples(
    batch: list[dict], generator: Generator, strategies: list[Strategy], generation: dict
) -> list[list[dict]]:
    """Each example's samples from every strategy, in the strategies' order. Each
    request is seeded by (seed, example, strategy), each follow-up by its sample too."""
    drawn: list[list[dict]] = [[] for _ in batch]
    for strategy in strategies:
        sampling = replace(
            Sampling.from_params(generation, n=strategy.n), temperature=strategy.temperature
        )
        first = [strategy.conversation(ex) for ex in batch]
        seeds = [stable_seed(generation["seed"], ex["id"], strategy.name) for ex in batch]
        completions = generator.chat(first, sampling, seeds)
        if strategy.follow_up is None:
            for i, outs in enumerate(completions):
                drawn[i] += [
                    {"text": c.text, "num_tokens": c.num_tokens, "strategy": strategy.name}
                    for c in outs
                ]
            continue
        # The follow-up turn after each sample; its answer is the sample kept.
        asks, origin = [], []
        for i, (ex, outs) in enumerate(zip(batch, completions, strict=True)):
            for k, c in enumerate(outs):
                turn = strategy.follow_up.render({**ex, "response": c.text})
                asks.append(
                    [*first[i], {"role": "assistant", "content": c.text},
                     {"role": "user", "content": turn}]
                )  # fmt: skip
                origin.append((i, k, c.text))
        follow_seeds = [
            stable_seed(generation["seed"], batch[i]["id"], strategy.name, k, "follow_up")
            for i, k, _ in origin
        ]
        replies = generator.chat(asks, replace(sampling, n=1), follow_seeds)
        for (i, _, text), reply in zip(origin, replies, strict=True):
            drawn[i].append(
                {
                    "text": parse_follow_up(reply[0].text),
                    "num_tokens": reply[0].num_tokens,
                    "strategy": strategy.name,
                    "first_turn": text,
                }
            )
    return drawn


def answer_sets(
    calls: list[tuple[str, list[dict], str | Path]],
    load_generator: Callable[[], Generator],
    params: dict,
    work: Path,
) -> tuple[dict[str, dict[str, str]], dict]:
    """One answer per item for several sets of items, each `(name, items, template)`,
    with one engine (loaded only if a shard is missing) and each set's shards under
    `work/<name>`; ({name: {item id: answer}}, {name: stats})."""
    generator: Generator | None = None

    def load_once() -> Generator:
        nonlocal generator
        generator = generator or load_generator()
        return generator

    answers, stats = {}, {}
    for name, items, template in calls:
        (work / name).mkdir(parents=True, exist_ok=True)
        records, call_stats = sample_demos(
            items, load_once, PromptTemplate(template), {**params, "n": 1}, work / name, desc=name
        )
        answers[name] = {r["id"]: r["samples"][0]["text"] for r in records}
        kept = ("n_examples", "tokens_per_second", "resumed_shards")
        stats[name] = {k: call_stats[k] for k in kept}
    return answers, stats
