"""Rejection sampling into SFT data: the best response by reward, whole or a sentence at a time.

- `best_of_n`: of each question's self-demonstrations (n sampled responses), the one
  with the highest total reward (ties: fewest tokens, then the first sampled); questions
  whose best is below `min_reward` are dropped.
- `segment_beam`: the fine-grained variant. An answer grows a segment (a sentence, cut
  by stop strings) at a time: every partial answer in the beam is continued
  `samples_per_beam` times, each candidate is scored on its partial text (the sum of the
  sources' values: with fine-grained sources, the reward accumulated so far) and the
  best `beam` go on. A candidate whose continuation ended the answer (EOS, or nothing
  more to say) is set aside as finished; after `max_segments` the best finished answer,
  else the best partial one, is the demonstration.

Both write SFT records in TRL's conversational format, `{id, prompt, completion, reward,
split}`. The split is the question's own where the input has one (judged samples), else
chosen as the judge stage chooses it (`dev_ids`, same fraction and seed: the same
questions are held out). Both work in shards of examples and, given a work folder,
write each shard there and resume from it (see ragtrain.generation.selfdemo).
"""

from __future__ import annotations

import logging
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ragtrain.core.records import RecordError, read_jsonl, write_jsonl
from ragtrain.core.seeds import stable_seed
from ragtrain.data.citations import alce_kind
from ragtrain.data.prompts import PromptTemplate
from ragtrain.generation.engine import Completion, Generator, Sampling, Throughput
from ragtrain.generation.judge import JUDGE_DEFAULTS, dev_ids
from ragtrain.training.rewards import Rewards

log = logging.getLogger(__name__)

_SPLIT_DEFAULTS = {"dev_fraction": JUDGE_DEFAULTS["dev_fraction"], "seed": JUDGE_DEFAULTS["seed"]}

BEST_OF_N_DEFAULTS = {
    # Questions whose best response scores below this are dropped (None: keep all).
    "min_reward": None,
    # Questions scored per shard (the reward call's batch, the unit of resumption).
    "shard_size": 256,
    **_SPLIT_DEFAULTS,
}

SEGMENT_BEAM_DEFAULTS = {
    "beam": 8,  # partial answers kept after each segment
    "samples_per_beam": 2,  # continuations sampled from each
    "max_segments": 5,
    # A segment ends with one of these (kept in the text): a sentence or a line.
    "segment_stop": [". ", "? ", "! ", "\n"],
    # Per ALCE dataset shape (asqa, qampari, eli5: ragtrain.data.citations.alce_kind),
    # its own `segment_stop` / `max_segments`: a QAMPARI answer grows an item at a time.
    "per_dataset": {},
    "max_new_tokens": 32,  # per segment
    "temperature": 0.7,
    "top_p": 1.0,
    "top_k": 20,
    # Examples searched together: each step of a shard is one generation call.
    "shard_size": 16,
    # Sampling seeds (per example, step and beam entry) and the dev split.
    **_SPLIT_DEFAULTS,
}

_TIE = 9  # rewards equal to this many decimals tie


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _mean(values) -> float | None:
    values = list(values)
    return round(statistics.fmean(values), 4) if values else None


def _score(rewards: Rewards, examples: list[dict], texts: list[str]):
    """(total per text, {source: weighted total per text}), scoring each source once."""
    if not texts:
        return [], {name: [] for name in rewards.names}
    per = rewards.by_source(examples, texts)
    if len(per) == len(rewards.names):
        totals = [float(sum(values[i] for values in per.values())) for i in range(len(texts))]
    else:  # two sources of one kind share a name in by_source
        totals = rewards.totals(examples, texts)
    return totals, per


def _in_shards(
    items: list[dict],
    shard_size: int,
    work: Path | None,
    run: Callable[[list[dict]], list[dict]],
    desc: str,
) -> tuple[list[dict], int]:
    """`run` over shards of `items` (one result with the item's `id` per item). With a
    work folder each shard's results are written there, and read back on a rerun."""
    results: list[dict] = []
    resumed = 0
    bar = tqdm(total=len(items), unit="example", desc=desc, file=sys.stderr, mininterval=10)
    for index, start in enumerate(range(0, len(items), shard_size)):
        batch = items[start : start + shard_size]
        path = work / f"shard-{index:05d}.jsonl" if work is not None else None
        if path is not None and path.exists():
            done = read_jsonl(path)
            if [r["id"] for r in done] != [ex["id"] for ex in batch]:
                raise RecordError(path, None, "shard does not match the examples; delete it")
            resumed += 1
        else:
            done = run(batch)
            if path is not None:
                write_jsonl(path, done)
        results.extend(done)
        bar.update(len(batch))
    bar.close()
    return results, resumed


def _splits(items: list[dict], params: dict) -> dict[str, str]:
    """Each id's split: its own `split`, else as the judge stage would choose it."""
    held = dev_ids([r["id"] for r in items], params["dev_fraction"], params["seed"])
    return {r["id"]: r.get("split") or ("dev" if r["id"] in held else "train") for r in items}


def split_records(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(train, dev) SFT records by their `split`."""
    return [r for r in records if r["split"] != "dev"], [r for r in records if r["split"] == "dev"]


# -- best of n --------------------------------------------------------------------------


def _score_samples(records: list[dict], rewards: Rewards) -> list[dict]:
    """Per record: every sample's total reward and per-source rewards (one reward call)."""
    examples = [r for r in records for _ in r["samples"]]
    texts = [s["text"].strip() for r in records for s in r["samples"]]
    totals, per = _score(rewards, examples, texts)
    out, at = [], 0
    for r in records:
        n = len(r["samples"])
        out.append(
            {
                "id": r["id"],
                "rewards": totals[at : at + n],
                "by_source": {name: values[at : at + n] for name, values in per.items()},
            }
        )
        at += n
    return out


def best_of_n(
    records: list[dict], rewards: Rewards, params: dict, work: Path | None = None
) -> tuple[list[dict], dict]:
    """The highest-reward sample of each sample record (self-demos, judged or not) as an
    SFT record; (records, stats). With `work`, scores are kept there per shard."""
    params = {**BEST_OF_N_DEFAULTS, **params}
    for i, r in enumerate(records, start=1):
        for key in ("id", "prompt", "samples"):
            if key not in r:
                raise ValueError(f"record {i}: no field {key!r} (expected sample records)")
    scored, resumed = _in_shards(
        records,
        params["shard_size"],
        work,
        lambda batch: _score_samples(batch, rewards),
        "best-of-n",
    )
    splits = _splits(records, params)
    min_reward = params["min_reward"]
    out: list[dict] = []
    best_rewards: list[float] = []
    all_rewards: list[float] = []
    sources: dict[str, dict[str, list[float]]] = {}
    no_sample = below = 0
    for r, s in zip(records, scored, strict=True):
        all_rewards.extend(s["rewards"])
        for name, values in s["by_source"].items():
            sources.setdefault(name, {"best": [], "all": []})["all"].extend(values)
        candidates = [
            (-round(reward, _TIE), sample.get("num_tokens", 0), i)
            for i, (sample, reward) in enumerate(zip(r["samples"], s["rewards"], strict=True))
            if sample["text"].strip()
        ]
        if not candidates:
            no_sample += 1
            continue
        best = min(candidates)[2]
        reward = s["rewards"][best]
        best_rewards.append(reward)
        for name, values in s["by_source"].items():
            sources[name]["best"].append(values[best])
        if min_reward is not None and reward < min_reward:
            below += 1
            continue
        out.append(
            {
                "id": r["id"],
                "prompt": r["prompt"],
                "completion": _assistant(r["samples"][best]["text"].strip()),
                "reward": round(reward, 6),
                "split": splits[r["id"]],
                "sample": best,
            }
        )
    stats = {
        "n_examples": len(records),
        "n_kept": len(out),
        "n_below_min_reward": below,
        "n_without_sample": no_sample,
        "n_samples": len(all_rewards),
        "min_reward": min_reward,
        # The selection's gain: the chosen samples' reward against all samples'.
        "mean_best_reward": _mean(best_rewards),
        "mean_sample_reward": _mean(all_rewards),
        "mean_kept_reward": _mean(r["reward"] for r in out),
        "by_source": {
            name: {"best": _mean(v["best"]), "all": _mean(v["all"])} for name, v in sources.items()
        },
        "n_dev": sum(r["split"] == "dev" for r in out),
        "shards": -(-len(records) // params["shard_size"]) if records else 0,
        "resumed_shards": resumed,
    }
    return out, stats


# -- segment beam -----------------------------------------------------------------------


@dataclass
class _Candidate:
    text: str  # the partial answer, as generated (leading whitespace dropped)
    tokens: int = 0  # its generated tokens
    segments: int = 0
    reward: float = 0.0
    by_source: dict[str, float] = field(default_factory=dict)
    order: int = 0  # creation order within its example: the last tie-break

    def key(self) -> tuple:
        return (-round(self.reward, _TIE), self.tokens, self.order)


@dataclass
class _Search:
    example: dict  # with `prompt`: its conversation (what reward models score)
    seed: int
    beam: list[_Candidate]
    sampling: Sampling  # its segment stops
    max_segments: int
    finished: list[_Candidate] = field(default_factory=list)
    generated: int = 0  # tokens generated for this example, pruned candidates included
    made: int = 0


def _prompt_prefix(text: str) -> str:
    """The partial answer as the prompt continues it: without trailing spaces, so that
    the next word comes as the model writes it, with its leading space (" The"), not
    after a lone space token."""
    return text.rstrip(" ")


def _ends_answer(completion: Completion, stop: tuple[str, ...]) -> bool:
    """The continuation ended the answer: EOS, or nothing but whitespace. (A generator
    that gives no finish reason: it ended without a stop string, length included.)"""
    if not completion.text.strip():
        return True
    if completion.finish_reason is not None:
        return completion.finish_reason == "eos"
    return not any(completion.text.endswith(s) for s in stop)


def _segment_sampling(params: dict, stop) -> Sampling:
    return Sampling(
        max_new_tokens=params["max_new_tokens"],
        temperature=params["temperature"],
        top_p=params["top_p"],
        top_k=params["top_k"],
        n=params["samples_per_beam"],
        stop=tuple(stop),
    )


def _shape_settings(example: dict, params: dict) -> tuple[list[str], int]:
    """(segment stops, most segments) for an example: its ALCE shape's, else the node's."""
    over = (params.get("per_dataset") or {}).get(alce_kind(example) or "", {})
    return (
        over.get("segment_stop", params["segment_stop"]),
        over.get("max_segments", params["max_segments"]),
    )


def _beam_search(
    examples: list[dict],
    generator: Generator,
    template: PromptTemplate,
    rewards: Rewards,
    params: dict,
) -> list[dict]:
    """One result per example: its chosen answer (`text`, empty if none) and its search."""
    searches = []
    for ex in examples:
        stop, max_segments = _shape_settings(ex, params)
        searches.append(
            _Search(
                {**ex, "prompt": template.conversation(ex)},
                stable_seed(params["seed"], ex["id"]),
                [_Candidate("")],
                _segment_sampling(params, stop),
                max_segments,
            )
        )
    for step in range(max((s.max_segments for s in searches), default=0)):
        # (search, beam entry, its seed: the example's, the step's and the entry's)
        active = [
            (s, c, stable_seed(s.seed, step, k))
            for s in searches
            if step < s.max_segments
            for k, c in enumerate(s.beam)
        ]
        if not active:
            break
        prefixes = [_prompt_prefix(c.text) for _, c, _ in active]
        # One generation call per set of segment stops (one unless shapes differ).
        completions: list = [None] * len(active)
        for sampling in dict.fromkeys(s.sampling for s, _, _ in active):
            at = [i for i, (s, _, _) in enumerate(active) if s.sampling == sampling]
            outs = generator.chat(
                [active[i][0].example["prompt"] for i in at],
                sampling,
                [active[i][2] for i in at],
                [prefixes[i] for i in at],
            )
            for i, out in zip(at, outs, strict=True):
                completions[i] = out
        # Every continuation of every example, scored in one reward call.
        new: list[tuple[_Search, _Candidate, bool]] = []
        for (search, parent, _), prefix, outs in zip(active, prefixes, completions, strict=True):
            seen = set()
            for c in outs:
                search.generated += c.num_tokens
                text = prefix + c.text if prefix else c.text.lstrip()
                if not text.strip() or text.strip() in seen:
                    continue  # nothing said, or a duplicate of a sibling
                seen.add(text.strip())
                candidate = _Candidate(
                    text, parent.tokens + c.num_tokens, parent.segments + 1, order=search.made
                )
                search.made += 1
                new.append((search, candidate, _ends_answer(c, search.sampling.stop)))
        totals, per = _score(
            rewards, [s.example for s, _, _ in new], [c.text.strip() for _, c, _ in new]
        )
        for i, (_, candidate, _) in enumerate(new):
            candidate.reward = totals[i]
            candidate.by_source = {name: values[i] for name, values in per.items()}
        for search in searches:
            if step < search.max_segments:
                search.beam = []
        for search, candidate, done in new:
            (search.finished if done else search.beam).append(candidate)
        for search in searches:
            # Partial answers reached by two paths (same text) are kept once.
            unique = {}
            for c in sorted(search.beam, key=_Candidate.key):
                unique.setdefault(c.text.strip(), c)
            search.beam = list(unique.values())[: params["beam"]]
    results = []
    for search in searches:
        pool = search.finished or search.beam
        best = min(pool, key=_Candidate.key) if pool else None
        results.append(
            {
                "id": search.example["id"],
                "prompt": search.example["prompt"],
                "text": best.text.strip() if best else "",
                "reward": round(best.reward, 6) if best else None,
                "by_source": best.by_source if best else {},
                "segments": best.segments if best else 0,
                "answer_tokens": best.tokens if best else 0,
                "finished": bool(search.finished),
                "generated_tokens": search.generated,
            }
        )
    return results


def _segment_beam(
    examples: list[dict],
    get_generator: Callable[[], Generator],
    template: PromptTemplate,
    get_rewards: Callable[[], Rewards],
    params: dict,
    work: Path | None,
    desc: str,
) -> tuple[list[dict], dict]:
    params = {**SEGMENT_BEAM_DEFAULTS, **params}
    if params["beam"] < 1 or params["samples_per_beam"] < 1 or params["max_segments"] < 1:
        raise ValueError("beam, samples_per_beam and max_segments: expected at least 1")
    throughput = Throughput()
    loaded: dict = {}

    def run(batch: list[dict]) -> list[dict]:
        if not loaded:
            loaded["generator"], loaded["rewards"] = get_generator(), get_rewards()
        generator = loaded["generator"]
        before = (generator.throughput.tokens, generator.throughput.seconds)
        out = _beam_search(batch, generator, template, loaded["rewards"], params)
        throughput.add(
            generator.throughput.tokens - before[0], generator.throughput.seconds - before[1]
        )
        return out

    results, resumed = _in_shards(examples, params["shard_size"], work, run, desc)
    splits = _splits(examples, params)
    records = [
        {
            "id": r["id"],
            "prompt": r["prompt"],
            "completion": _assistant(r["text"]),
            "reward": r["reward"],
            "split": splits[r["id"]],
            "segments": r["segments"],
            "finished": r["finished"],
        }
        for r in results
        if r["text"]
    ]
    chosen = [r for r in results if r["text"]]
    names = sorted({name for r in chosen for name in r["by_source"]})
    stats = {
        "n_examples": len(examples),
        "n_kept": len(records),
        "n_without_answer": len(results) - len(records),
        # Answers the model ended (the others stopped at max_segments).
        "n_finished": sum(r["finished"] for r in chosen),
        "mean_segments": _mean(r["segments"] for r in chosen),
        "mean_reward": _mean(r["reward"] for r in chosen),
        "by_source": {
            n: _mean(r["by_source"][n] for r in chosen if n in r["by_source"]) for n in names
        },
        "mean_answer_tokens": _mean(r["answer_tokens"] for r in chosen),
        # All candidates' tokens, pruned ones included: the search's cost.
        "generated_tokens": sum(r["generated_tokens"] for r in results),
        # This run's generation only (resumed shards are not timed again).
        "tokens_per_second": round(throughput.tokens_per_second, 1),
        "n_dev": sum(r["split"] == "dev" for r in records),
        "shards": -(-len(examples) // params["shard_size"]) if examples else 0,
        "resumed_shards": resumed,
    }
    return records, stats


def segment_beam(
    examples: list[dict],
    generator: Generator,
    template: PromptTemplate,
    rewards: Rewards,
    params: dict,
    work: Path | None = None,
) -> tuple[list[dict], dict]:
    """Segment-level beam search for each example (questions with their documents, as
    self-demos takes them); (SFT records, stats). Each step of a shard of examples is one
    generation call: every beam entry of every example, `samples_per_beam` samples each.
    Seeds come from `seed`, the example's id, the step and the beam entry."""
    return _segment_beam(
        examples, lambda: generator, template, lambda: rewards, params, work, "segment-beam"
    )


def segment_beam_demos(
    examples: list[dict],
    load_generator: Callable[[], Generator],
    template: PromptTemplate,
    params: dict,
    work: Path,
    *,
    load_rewards: Callable[[], Rewards],
    desc: str = "segment-beam",
) -> tuple[list[dict], dict]:
    """`segment_beam` as a sharded, resumable stage (the signature of
    selfdemo.sample_demos, rewards bound by keyword): the generator and the rewards are
    loaded only if a shard is missing from `work`."""
    return _segment_beam(examples, load_generator, template, load_rewards, params, work, desc)
