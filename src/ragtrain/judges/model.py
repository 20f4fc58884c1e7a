"""Model judges: a language model asked a question whose answer a regex parses.

A judge node names a model, a prompt template (resources/prompts/judge_<kind>.jinja by
default), a regex whose first group is the verdict, how many fresh samples to try when
the regex does not match (`retries`), and what an item whose every try fails becomes
(`unparsed`: `drop`, or a verdict of the kind). Four kinds:

- `score`: a 1-5 score of a `response` to a `question`;
- `pick`: the best of k (at most 9) numbered `candidates` for a `question`, 1-based;
- `label`: `correct` / `incorrect` / `refuse` of a `response` against gold `answers`;
- `relevance`: whether `docs` hold what a `question` needs: `present` / `absent`.

The first try follows the judge's generation settings (greedy by default); each retry
samples at `retry_temperature` with a seed of its own (judge seed, item id, try), so a
rerun asks the same questions and gets the same answers. Every raw output is kept next
to its verdict, and the raw outputs are cached on disk by everything that determines
them (model weights, conversation, sampling, seed): a changed regex or fallback is
re-applied to them without asking the model again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta

from ragtrain.core.seeds import DEFAULT_SEED, stable_seed
from ragtrain.judges.rules import ABSENT, LABELS, PRESENT

DROP = "drop"
MAX_CANDIDATES = 9
# Items per model call (see ModelJudge._ask).
CHUNK = 64
MODEL_JUDGE_DEFAULTS: dict[str, Any] = {
    "retries": 5,
    "unparsed": DROP,
    "retry_temperature": 0.7,
    "max_new_tokens": 16,
    # The start of every reply, given to the model to continue (e.g. "Score: "): a small
    # model then only has to say the verdict. The regex reads the prefix and its reply.
    "reply_prefix": None,
    "seed": DEFAULT_SEED,
}


def _in(allowed: tuple[str, ...]) -> Callable[[str, dict], str | None]:
    def parse(group: str, item: dict) -> str | None:
        value = group.strip().lower()
        return value if value in allowed else None

    return parse


def _digit(low: int, high: Callable[[dict], int]) -> Callable[[str, dict], int | None]:
    def parse(group: str, item: dict) -> int | None:
        try:
            value = int(group.strip())
        except ValueError:
            return None
        return value if low <= value <= high(item) else None

    return parse


@dataclass(frozen=True)
class JudgeKind:
    """What a kind of judge reads (the template's fields), its default regex, and how
    the regex's first group becomes a verdict (None: not a verdict of this kind)."""

    fields: frozenset[str]
    pattern: str
    parse: Callable[[str, dict], Any]
    verdicts: str  # for messages: what a verdict may be


JUDGE_KINDS: dict[str, JudgeKind] = {
    "score": JudgeKind(
        frozenset({"question", "response"}), r"Score: (\d)", _digit(1, lambda _: 5), "1 to 5"
    ),
    "pick": JudgeKind(
        frozenset({"question", "candidates"}),
        r"Best: Prediction (\d)",
        _digit(1, lambda item: len(item["candidates"])),
        f"a candidate's number, 1 to k (k <= {MAX_CANDIDATES})",
    ),
    "label": JudgeKind(
        frozenset({"question", "response", "answers"}),
        r"(?i)label: *(correct|incorrect|refuse)",
        _in(LABELS),
        " / ".join(LABELS),
    ),
    "relevance": JudgeKind(
        frozenset({"question", "docs"}),
        r"(?i)verdict: *(present|absent)",
        _in((PRESENT, ABSENT)),
        f"{PRESENT} / {ABSENT}",
    ),
}


def template_fields(path: str | Path) -> set[str]:
    """The variables a Jinja template reads (loop variables aside)."""
    env = jinja2.Environment()
    return set(jinja2.meta.find_undeclared_variables(env.parse(Path(path).read_text())))


def check_judge(kind: str, node: dict, prompt: str | Path) -> str | None:
    """What is wrong with a model judge node, in one line naming the key (None: fine)."""
    spec = JUDGE_KINDS[kind]
    if not Path(prompt).is_file():
        return f"prompt: no template {prompt}"
    missing = spec.fields - template_fields(prompt)
    if missing:
        return (
            f"prompt: {prompt} does not read {', '.join(sorted(missing))}, which a {kind}"
            f" judge needs (its fields: {', '.join(sorted(spec.fields))})"
        )
    pattern = node.get("pattern", spec.pattern)
    try:
        groups = re.compile(pattern).groups
    except re.error as e:
        return f"pattern: {pattern!r} is not a regex ({e})"
    if groups < 1:
        return f"pattern: {pattern!r} has no group: its first group (...) is the verdict"
    unparsed = node.get("unparsed", DROP)
    if unparsed != DROP and fallback_verdict(kind, unparsed) is None:
        return f"unparsed: expected {DROP!r} or a verdict ({spec.verdicts}), got {unparsed!r}"
    return None


def fallback_verdict(kind: str, unparsed: Any) -> Any:
    """The verdict an unparsed item becomes (None: not a verdict of the kind)."""
    probe = {"candidates": [""] * MAX_CANDIDATES}
    return JUDGE_KINDS[kind].parse(str(unparsed), probe)


def model_fingerprint(model_dir: str | Path) -> str:
    """What identifies a model's weights: its config and each weight file's size and
    modification time (a model retrained in place gets new ones)."""
    model_dir = Path(model_dir)
    parts = [
        (model_dir / "config.json").read_text() if (model_dir / "config.json").exists() else ""
    ]
    for f in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin")):
        stat = f.stat()
        parts.append(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class RawCache:
    """Raw judge outputs on disk, keyed by what determines them; appended under a lock,
    so the jobs of one judge can share it."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.entries: dict[str, str] = {}
        if self.path and self.path.exists():
            with self.path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut short by a killed job: asked again
                    self.entries[entry["key"]] = entry["text"]

    @staticmethod
    def key(*parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def put(self, new: dict[str, str]) -> None:
        self.entries.update(new)
        if not self.path or not new:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write("".join(json.dumps({"key": k, "text": t}) + "\n" for k, t in new.items()))
            fcntl.flock(f, fcntl.LOCK_UN)


class ModelJudge:
    """Verdicts of one judge node over items (dicts with `id` and the kind's fields)."""

    def __init__(
        self, kind: str, node: dict, generator, template, sampling, fingerprint: str, cache=None
    ):
        """`generator`: an engine (ragtrain.generation.engine), or a function that loads
        one, called only when a reply is not in the cache; `template`: a
        PromptTemplate; `sampling`: the first try's Sampling (retries change only its
        temperature); `fingerprint`: the model's (`model_fingerprint`)."""
        self.kind = JUDGE_KINDS[kind]
        self.name = kind
        self.node = {**MODEL_JUDGE_DEFAULTS, **node}
        self.pattern = re.compile(self.node.get("pattern") or self.kind.pattern)
        self.generator = generator
        self.template = template
        self.sampling = sampling
        self.fingerprint = fingerprint
        self.cache = cache or RawCache(None)
        self.asked = 0  # raw outputs generated (not from the cache)

    def parse(self, text: str, item: dict) -> Any:
        match = self.pattern.search(text)
        return (
            None
            if match is None or match.group(1) is None
            else self.kind.parse(match.group(1), item)
        )

    def judge(self, items: list[dict]) -> list[dict]:
        """One result per item: `{id, verdict, raw, tries, parsed}`; `verdict` is the
        fallback (or None where unparsed items are dropped) when no try parsed."""
        for item in items:
            if self.name == "pick" and not 1 <= len(item["candidates"]) <= MAX_CANDIDATES:
                raise ValueError(
                    f"item {item['id']!r}: a pick judge takes 1 to {MAX_CANDIDATES}"
                    f" candidates, got {len(item['candidates'])}"
                )
        conversations = [self.template.conversation(item) for item in items]
        first = self.sampling
        results = [
            {"id": item["id"], "verdict": None, "raw": [], "tries": 0, "parsed": False}
            for item in items
        ]
        pending = list(range(len(items)))
        for attempt in range(1 + self.node["retries"]):
            if not pending:
                break
            sampling = (
                first
                if attempt == 0
                else replace(first, temperature=self.node["retry_temperature"])
            )
            seeds = [stable_seed(self.node["seed"], items[i]["id"], attempt) for i in pending]
            texts = self._ask([conversations[i] for i in pending], sampling, seeds)
            still = []
            for i, text in zip(pending, texts, strict=True):
                result = results[i]
                result["raw"].append(text)
                result["tries"] += 1
                verdict = self.parse(text, items[i])
                if verdict is None:
                    still.append(i)
                else:
                    result["verdict"], result["parsed"] = verdict, True
            pending = still
        fallback = self.node["unparsed"]
        for i in pending:
            if fallback != DROP:
                results[i]["verdict"] = fallback_verdict(self.name, fallback)
        return results

    def _ask(self, conversations: list, sampling, seeds: list[int]) -> list[str]:
        prefix = self.node["reply_prefix"]
        # A prefix is part of the request (without one, the keys are those of before).
        extra = (prefix,) if prefix else ()
        keys = [
            RawCache.key(
                self.fingerprint,
                conv,
                asdict(sampling),
                seed if sampling.temperature else None,
                *extra,
            )
            for conv, seed in zip(conversations, seeds, strict=True)
        ]
        missing = [j for j, key in enumerate(keys) if key not in self.cache.entries]
        # In chunks, each cached as it comes: a killed job asks again only for the rest.
        for start in range(0, len(missing), CHUNK):
            part = missing[start : start + CHUNK]
            if not hasattr(self.generator, "chat"):
                self.generator = self.generator()  # loaded on the first reply not cached
            completions = self.generator.chat(
                [conversations[j] for j in part],
                sampling,
                seeds=[seeds[j] for j in part],
                **({"prefixes": [prefix] * len(part)} if prefix else {}),
            )
            # With a prefix the completion is its raw continuation: the reply is both.
            replies = [(prefix or "") + c[0].text for c in completions]
            self.cache.put({keys[j]: r for j, r in zip(part, replies, strict=True)})
            self.asked += len(part)
        return [self.cache.entries[key] for key in keys]


def verdict_stats(results: list[dict]) -> dict:
    """How the judge fared: parsed on the first try, after retries, not at all."""
    n = len(results)
    first = sum(1 for r in results if r["parsed"] and r["tries"] == 1)
    parsed = sum(1 for r in results if r["parsed"])
    return {
        "n": n,
        "parsed_first_try": first,
        "parsed_after_retry": parsed - first,
        "unparsed": n - parsed,
        "mean_tries": round(sum(r["tries"] for r in results) / n, 3) if n else None,
    }
