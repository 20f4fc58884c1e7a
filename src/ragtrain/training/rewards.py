"""Reward sources behind one interface, and their placement on tokens.

A source scores each sampled response to an example and returns, per response, a list of
(character offset, value) pairs. A sequence-level source puts one value at the end of
the response; a fine-grained one (per sentence, per citation) puts several inside it.
PPO places each value on the token that holds the character just before its offset;
sequence-level trainers (GRPO, RLOO, best-of-n) use the sum.

Sources are configured as a list, e.g.

    rewards:
      - {kind: correctness}                       # 1 for the right response, else 0
      - {kind: length, max_words: 12, per_word: 0.05}
      - {kind: reward_model, model: rm, weight: 0.5}

and combined by weight. A later source kind only has to implement `score`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from ragtrain.core.records import RecordError
from ragtrain.generation.judge import is_right
from ragtrain.judges.rules import label

Placed = list[tuple[int, float]]


class RewardSource(Protocol):
    name: str

    def score(self, examples: Sequence[dict], responses: Sequence[str]) -> list[Placed]:
        """(character offset, value) pairs for each response; `examples[i]` is the record
        `responses[i]` answers (question, answers, docs, and `prompt`: its conversation)."""
        ...


class Correctness:
    """The judge's verdict: `right` for the answer the question calls for (a gold answer,
    or a refusal where there is none), `wrong` otherwise."""

    name = "correctness"
    settings = ("right", "wrong")

    def __init__(self, right: float = 1.0, wrong: float = 0.0):
        self.right, self.wrong = right, wrong

    def score(self, examples, responses):
        out = []
        for example, text in zip(examples, responses, strict=True):
            ok = is_right(label(text, example["answers"]), example["answers"])
            out.append([(len(text), self.right if ok else self.wrong)])
        return out


class LengthPenalty:
    """-per_word for each word past `max_words` (long answers ramble past the fact)."""

    name = "length"
    settings = ("max_words", "per_word")

    def __init__(self, max_words: int = 20, per_word: float = 0.05):
        self.max_words, self.per_word = max_words, per_word

    def score(self, examples, responses):
        return [
            [(len(text), -self.per_word * max(0, len(text.split()) - self.max_words))]
            for text in responses
        ]


class FormatPenalty:
    """-penalty unless the whole response matches `pattern` (a Python regex)."""

    name = "format"
    settings = ("pattern", "penalty")

    def __init__(self, pattern: str, penalty: float = 1.0):
        try:
            self.pattern = re.compile(pattern, re.DOTALL)
        except re.error as e:
            raise ValueError(f"format reward: bad pattern {pattern!r}: {e}") from None
        self.penalty = penalty

    def score(self, examples, responses):
        return [
            [(len(text), 0.0 if self.pattern.fullmatch(text.strip()) else -self.penalty)]
            for text in responses
        ]


class RewardModelScore:
    """A trained reward model's score of (prompt, response), at the end of the response."""

    name = "reward_model"
    # `model` names a reward_model node; the stage passes its folder as model_dir.
    settings = ("model", "batch_size")

    def __init__(self, model_dir: str, batch_size: int = 8):
        from ragtrain.training.reward_model import RewardModelScorer

        self.scorer = RewardModelScorer(model_dir, batch_size=batch_size)

    def score(self, examples, responses):
        values = self.scorer.score([e["prompt"] for e in examples], list(responses))
        return [[(len(text), v)] for text, v in zip(responses, values, strict=True)]


# The reward sources a `rewards` list can name, by kind: a new source is a class above
# (a `name`, its `settings`, a `score`) added here.
SOURCES = {s.name: s for s in (Correctness, LengthPenalty, FormatPenalty, RewardModelScore)}
# kind -> (settings it takes, besides `kind` and `weight`)
SOURCE_SETTINGS = {name: source.settings for name, source in SOURCES.items()}


def check_specs(specs, key: str) -> None:
    """Raise ValueError naming `key[i].<setting>` for a malformed source list."""
    if not isinstance(specs, list) or not specs:
        raise ValueError(f"{key}: expected a non-empty list of reward sources")
    for i, spec in enumerate(specs):
        where = f"{key}[{i}]"
        if not isinstance(spec, dict) or spec.get("kind") not in SOURCE_SETTINGS:
            kind = spec.get("kind") if isinstance(spec, dict) else spec
            raise ValueError(
                f"{where}.kind: expected one of {sorted(SOURCE_SETTINGS)}, got {kind!r}"
            )
        allowed = {"kind", "weight", *SOURCE_SETTINGS[spec["kind"]]}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ValueError(f"{where}: unknown setting {unknown[0]!r} (takes {sorted(allowed)})")
        if spec["kind"] == "reward_model" and not spec.get("model"):
            raise ValueError(f"{where}.model: a reward_model source names a trained reward model")
        if spec["kind"] == "format" and not spec.get("pattern"):
            raise ValueError(f"{where}.pattern: a format source needs a pattern")
        if not isinstance(spec.get("weight", 1.0), int | float):
            raise ValueError(f"{where}.weight: expected a number, got {spec['weight']!r}")


def reward_models(specs: list[dict]) -> list[str]:
    """The reward model names the sources use (rule inputs)."""
    return [s["model"] for s in specs if s["kind"] == "reward_model"]


class Rewards:
    """Weighted sources as one: `score` concatenates their placed values, weighted."""

    def __init__(self, specs: list[dict], model_dirs: dict[str, str] | None = None):
        check_specs(specs, "rewards")
        self.sources: list[tuple[RewardSource, float]] = []
        for spec in specs:
            settings = {k: v for k, v in spec.items() if k not in ("kind", "weight")}
            kind = spec["kind"]
            if kind == "reward_model":
                model = settings.pop("model")
                if not model_dirs or model not in model_dirs:
                    raise ValueError(f"rewards: no folder given for reward model {model!r}")
                source = RewardModelScore(model_dirs[model], **settings)
            else:
                source = SOURCES[kind](**settings)
            self.sources.append((source, float(spec.get("weight", 1.0))))

    @classmethod
    def from_sources(cls, sources: list[tuple[RewardSource, float]]) -> Rewards:
        """Sources built elsewhere (a custom source, a test's), with their weights."""
        rewards = cls.__new__(cls)
        rewards.sources = list(sources)
        return rewards

    @property
    def names(self) -> list[str]:
        """The sources' names, a repeated kind numbered (length, length_2)."""
        names, seen = [], {}
        for source, _ in self.sources:
            seen[source.name] = seen.get(source.name, 0) + 1
            count = seen[source.name]
            names.append(source.name if count == 1 else f"{source.name}_{count}")
        return names

    def per_source(self, examples, responses) -> dict[str, list[Placed]]:
        """Each source's weighted values per response."""
        return {
            name: [
                [(offset, weight * value) for offset, value in placed]
                for placed in source.score(examples, responses)
            ]
            for name, (source, weight) in zip(self.names, self.sources, strict=True)
        }

    def score(self, examples, responses) -> list[Placed]:
        """All sources' weighted values per response, in offset order."""
        return combine(self.per_source(examples, responses), len(responses))

    def totals(self, examples, responses) -> list[float]:
        return [total(p) for p in self.score(examples, responses)]

    def by_source(self, examples, responses) -> dict[str, list[float]]:
        """Each source's weighted total per response (for logs and stats)."""
        return {
            name: [total(p) for p in placed]
            for name, placed in self.per_source(examples, responses).items()
        }


def combine(per_source: dict[str, list[Placed]], n: int) -> list[Placed]:
    out: list[Placed] = [[] for _ in range(n)]
    for placed_lists in per_source.values():
        for placed, more in zip(out, placed_lists, strict=True):
            placed.extend(more)
    return [sorted(p, key=lambda pair: pair[0]) for p in out]


def total(placed: Placed) -> float:
    return float(sum(value for _, value in placed))


def token_char_ends(tokenizer, token_ids: Sequence[int]) -> list[int]:
    """The end offset, in the decoded response text, of each generated token.

    Generated ids are not a tokenization of their text (the tokenizer may split it
    differently), so the offsets come from decoding growing prefixes: token i ends where
    the text of ids[:i+1] ends. Special tokens (EOS) add no text and end where the text
    does.
    """
    ends, previous = [], 0
    for i in range(len(token_ids)):
        length = len(tokenizer.decode(token_ids[: i + 1], skip_special_tokens=True))
        # A byte-level token that completes a character can shorten a replacement char:
        # offsets never go back.
        previous = max(previous, length)
        ends.append(previous)
    return ends


def place_rewards(placed: Placed, char_ends: Sequence[int]) -> list[float]:
    """Per-token rewards: each value lands on the first token whose text reaches its
    offset, i.e. the token holding the character just before it (an offset inside a
    multi-character token lands on that token). Offsets past the text, or at 0, land on
    the last token or the first."""
    rewards = [0.0] * len(char_ends)
    if not char_ends:
        return rewards
    for offset, value in placed:
        position = next((i for i, end in enumerate(char_ends) if end >= offset), len(char_ends) - 1)
        rewards[position] += value
    return rewards


class ResponseScorer(Protocol):
    """A trained reward model's scores (ragtrain.training.reward_model.RewardModelScorer)."""

    def score(
        self, conversations: Sequence[list[dict]], responses: Sequence[str]
    ) -> list[float]: ...


def score_samples(
    records: list[dict], scorer: ResponseScorer, source: str | Path, model: str | None = None
) -> dict:
    """Score every sample of `records` (read from `source`) with a reward model, in place
    (`reward_model` on each sample), in one batch of calls; returns the stats: the mean
    score, and the mean of each question's best one (what best-of-n would reach)."""
    for i, record in enumerate(records, start=1):
        for field in ("prompt", "samples"):
            if field not in record:
                raise RecordError(source, i, f"no field {field!r} (expected sample records)")
    flat = [(r, s) for r in records for s in r["samples"]]
    scores = scorer.score([r["prompt"] for r, _ in flat], [s["text"] for _, s in flat])
    for (_, sample), score in zip(flat, scores, strict=True):
        sample["reward_model"] = round(score, 6)
    best = [max(s["reward_model"] for s in r["samples"]) for r in records if r["samples"]]
    return {
        "n_examples": len(records),
        "n_samples": len(flat),
        "reward_model": model,
        "mean_reward": round(sum(scores) / len(scores), 4) if scores else None,
        "mean_best_reward": round(sum(best) / len(best), 4) if best else None,
    }
