"""Reranked retrieval: a first-stage index's top `n`, reordered by a cross-encoder
reranker (ragtrain.retrieval.reranker), of which the top `k` are kept.

Its stats put the reranked list beside the first stage's own top `k` on the same
questions: answer recall@k of each, and their paired difference with a bootstrap
interval (the same questions, so the interval is over questions).
"""

from __future__ import annotations

from typing import Any

from ragtrain.core.seeds import DEFAULT_SEED
from ragtrain.metrics.paired import paired_bootstrap
from ragtrain.metrics.qa import answer_recall
from ragtrain.retrieval.index import Index, passage_text

# A reranker model's settings (ragtrain.retrieval.reranker trains it; torch-free here, so
# that the kind registry reads them when Snakemake parses the workflow).
RERANKER_DEFAULTS: dict[str, Any] = {
    "encoder": "all-MiniLM-L6-v2",
    "losses": ["classification", "ranking", "contrastive"],
    # "mgda": min-norm weights per step; "fixed": `weights` (default equal)
    "weighting": "mgda",
    # {loss: weight} for fixed weighting, relative (normalised over a step's losses)
    "weights": None,
    "epochs": 2,
    "batch_size": 8,
    "learning_rate": 2e-5,
    "warmup_ratio": 0.1,
    "max_length": 256,
    "temperature": 0.07,
    # positives and negatives per record in the contrastive loss (each side)
    "contrastive_per_side": 2,
    "seed": 0,
    # run the encoder's own code (a hub model with custom code): only when turned on
    "trust_remote_code": False,
}
LOSSES = ("classification", "ranking", "contrastive")
WEIGHTINGS = ("mgda", "fixed")

RERANK_DEFAULTS = {
    "n": 20,
    "k": 3,
    "encoder": "all-MiniLM-L6-v2",
    "batch_size": 32,
    "max_length": 256,
    "seed": DEFAULT_SEED,
    "trust_remote_code": False,
}


def _recall(docs: list[dict], answers: list[str]) -> float:
    return answer_recall([passage_text(d) for d in docs], answers)


def rerank_examples(
    examples: list[dict], index: Index, score, params: dict
) -> tuple[list[dict], dict]:
    """Each example with its top-`k` reranked documents (`score(question, docs)` gives a
    score per document, higher first) and the recall stats beside the first stage's."""
    params = {**RERANK_DEFAULTS, **params}
    n, k = params["n"], params["k"]
    if n < k:
        raise ValueError(f"rerank: n ({n}) must be at least k ({k})")
    hits = index.search([ex["question"] for ex in examples], n) if examples else []
    out, first, reranked, pool = [], [], [], []
    for ex, ranked in zip(examples, hits, strict=True):
        docs = [{**index.corpus[i], "first_stage_score": round(s, 4)} for i, s in ranked]
        scores = score(ex["question"], docs)
        order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))
        kept = [
            {**docs[i], "score": round(float(scores[i]), 4), "first_stage_rank": i + 1}
            for i in order[:k]
        ]
        out.append({**ex, "docs": kept})
        if ex["answers"]:
            first.append(_recall(docs[:k], ex["answers"]))
            reranked.append(_recall(kept, ex["answers"]))
            pool.append(_recall(docs, ex["answers"]))
    stats = {
        "kind": "rerank",
        "first_stage": index.params["kind"],
        "n": len(examples),
        "candidates": n,
        "k": k,
        f"answer_recall@{k}": _mean(reranked),
        f"first_stage_answer_recall@{k}": _mean(first),
        f"answer_recall@{n}": _mean(pool),
        "n_answerable": len(reranked),
    }
    if reranked:
        stats["reranked_minus_first_stage"] = paired_bootstrap(reranked, first, seed=params["seed"])
    return out, stats


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None
