"""DPA-RAG's query augmentation: the model rewrites each training question five ways,
and an NLI filter drops rewrites that no longer ask the original question.

Strategies (each a template `resources/prompts/augment_<name>.jinja` over `question`):
rephrase, complexity (a harder wording), decompose (sub-questions), constraint (an added
condition) and sparql (a SPARQL-style rewrite). A rewrite keeps its original's answers.

The filter (the paper's rule, on the first three strategies by default, `nli_checked`):
a rewrite is kept when the NLI judge finds that one of the two questions entails the other
(P >= the judge's threshold) either way round; otherwise it contradicts or drifts from the
original and is dropped. Empty rewrites and copies of the original are dropped before.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from ragtrain.metrics.qa import normalize_answer

AUGMENT_STRATEGIES = ("rephrase", "complexity", "decompose", "constraint", "sparql")
QUERY_AUGMENT_DEFAULTS = {
    "augment": list(AUGMENT_STRATEGIES),
    "nli_checked": ["rephrase", "complexity", "decompose"],
    "shard_size": 64,
}
# "Rewritten question:", "New question -", "1." ... before the question itself.
_LEAD = re.compile(r"^\s*(?:[-*\d.)]+\s*)?(?:[A-Za-z -]{0,30}(?:question|query)\s*[:\-]\s*)?")


def template_name(strategy: str) -> str:
    return f"augment_{strategy}"


def clean_rewrite(text: str, strategy: str) -> str:
    """The rewrite in a model's reply: its first line (the first three, joined, for a
    decomposition), without a leading label or quotes."""
    lines = [line for line in (text or "").splitlines() if line.strip()]
    lines = lines[:3] if strategy == "decompose" else lines[:1]
    parts = [_LEAD.sub("", line, count=1).strip().strip("\"'") for line in lines]
    return " ".join(p for p in parts if p)


def check_strategies(strategies: list[str], checked: list[str]) -> tuple[str, str] | None:
    """(key, problem) for unknown strategies, or checked ones that are not generated."""
    for key, names in (("augment", strategies), ("nli_checked", checked)):
        for name in names:
            if name not in AUGMENT_STRATEGIES:
                return key, f"unknown strategy {name!r} (known: {', '.join(AUGMENT_STRATEGIES)})"
    missing = [name for name in checked if name not in strategies]
    if missing:
        return "nli_checked", f"{missing[0]!r} is not among `augment`"
    if not strategies:
        return "augment", "give at least one strategy"
    return None


def rewrite_all(
    examples: list[dict], load_generator, templates: dict[str, Path], params: dict, work: Path
) -> tuple[dict[str, dict[str, str]], dict]:
    """Each strategy's raw rewrite of every question ({strategy: {id: reply}}), each
    strategy's shards resumable under `work/<strategy>`."""
    from ragtrain.generation.selfdemo import answer_sets

    params = {**QUERY_AUGMENT_DEFAULTS, **params}
    questions = [{"id": ex["id"], "question": ex["question"]} for ex in examples]
    calls = [(s, questions, templates[template_name(s)]) for s in params["augment"]]
    return answer_sets(calls, load_generator, params, work)


def nli_keeps(entailment, original: str, rewrite: str) -> tuple[bool, float]:
    """The filter's rule: kept iff either question entails the other; (kept, the larger
    probability)."""
    p = max(entailment.probability(original, rewrite), entailment.probability(rewrite, original))
    return p >= entailment.threshold, round(p, 4)


def filter_rewrites(
    examples: list[dict], rewrites: dict[str, dict[str, str]], params: dict, entailment
) -> tuple[list[dict], list[dict], dict]:
    """(augmented examples kept, every rewrite with its verdict, stats per strategy).
    `rewrites[strategy][question id]` is the model's raw reply."""
    params = {**QUERY_AUGMENT_DEFAULTS, **params}
    checked = set(params["nli_checked"])
    candidates = []
    for strategy in params["augment"]:
        for ex in examples:
            text = clean_rewrite(rewrites[strategy][ex["id"]], strategy)
            unchanged = not text or normalize_answer(text) == normalize_answer(ex["question"])
            candidates.append((strategy, ex, text, unchanged))
    if entailment is not None:
        entailment.prefetch(
            pair
            for strategy, ex, text, unchanged in candidates
            if strategy in checked and not unchanged
            for pair in ((ex["question"], text), (text, ex["question"]))
        )
    kept, verdicts, counts = [], [], Counter()
    for strategy, ex, text, unchanged in candidates:
        verdict = {"id": f"{ex['id']}~{strategy}", "original": ex["question"],
                   "strategy": strategy, "query": text}  # fmt: skip
        if unchanged:
            verdict.update(kept=False, reason="empty or unchanged")
            counts[strategy, "unchanged"] += 1
        elif strategy in checked and entailment is not None:
            ok, p = nli_keeps(entailment, ex["question"], text)
            verdict.update(kept=ok, entailment=p, **({} if ok else {"reason": "nli"}))
            counts[strategy, "kept" if ok else "nli"] += 1
        else:
            verdict.update(kept=True)
            counts[strategy, "kept"] += 1
        verdicts.append(verdict)
        if verdict["kept"]:
            meta = {**(ex.get("meta") or {}), "augmented_from": ex["id"], "strategy": strategy}
            kept.append({"id": verdict["id"], "question": text, "answers": ex["answers"],
                         "meta": meta})  # fmt: skip
    stats = {
        "n_questions": len(examples),
        "n_kept": len(kept),
        "by_strategy": {
            s: {
                "generated": len(examples),
                "kept": counts[s, "kept"],
                "dropped_nli": counts[s, "nli"],
                "dropped_unchanged": counts[s, "unchanged"],
                "nli_checked": s in checked and entailment is not None,
            }
            for s in params["augment"]
        },
    }
    if entailment is not None:
        stats.update(entailment.stats())
    return kept, verdicts, stats
