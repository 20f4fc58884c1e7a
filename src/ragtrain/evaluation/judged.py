"""Metrics over judged answers, and errors split by cause.

Each evaluated example carries a label of its answer (correct / incorrect / refuse, by
the evaluation's label judge) and whether its documents hold what the question needs
(by its relevance judge). With the `rules` judges (the default) both come from string
rules, so every evaluation has these numbers; a model judge gives its own beside them.
"""

from __future__ import annotations

from collections.abc import Sequence

from ragtrain.judges.rules import CORRECT, INCORRECT, REFUSE

# The 2x2 of an answerable question: do the documents hold a gold answer, is the answer
# right. A right answer without the documents' help is a retrieval miss the generator
# recovered from (parametric knowledge); a wrong one with them, the generator's miss.
ERROR_CELLS = {
    (True, True): "neither",
    (True, False): "generation_miss",
    (False, True): "retrieval_miss",
    (False, False): "both",
}


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def judged_metrics(rows: Sequence[dict]) -> dict:
    """Precision, recall and their F1 over answerable questions, refusals, false
    refusals and the error table.

    Each row: `answerable` (bool), `label` (correct / incorrect / refuse, or None where
    the judge gave no verdict) and `relevant` (bool, or None likewise). Precision =
    correct / (correct + incorrect); recall = correct / answerable questions; a false
    refusal is a refusal where the documents hold the answer.
    """
    answerable = [r for r in rows if r["answerable"]]
    correct = sum(r["label"] == CORRECT for r in answerable)
    incorrect = sum(r["label"] == INCORRECT for r in answerable)
    precision = _share(correct, correct + incorrect)
    recall = _share(correct, len(answerable))
    if precision is None or recall is None:
        pr_f1 = None
    else:
        pr_f1 = round(2 * precision * recall / (precision + recall), 4) if correct else 0.0
    labelled = [r for r in rows if r["label"] is not None]
    relevant = [r for r in rows if r["relevant"] and r["label"] is not None]
    errors = dict.fromkeys(ERROR_CELLS.values(), 0)
    for r in answerable:
        if r["label"] is not None and r["relevant"] is not None:
            errors[ERROR_CELLS[(r["relevant"], r["label"] == CORRECT)]] += 1
    return {
        "precision": precision,
        "recall": recall,
        "pr_f1": pr_f1,
        "refusal_rate": _share(sum(r["label"] == REFUSE for r in labelled), len(labelled)),
        "false_refusal": _share(sum(r["label"] == REFUSE for r in relevant), len(relevant)),
        "n_relevant": len(relevant),
        "n_unjudged": len(rows) - len(labelled),
        "errors": errors,
    }
