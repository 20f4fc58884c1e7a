"""Metrics over judged answers, and errors split by cause.

Each evaluated example carries a label of its answer (correct / incorrect / refuse, by
the evaluation's label judge) and whether its documents hold what the question needs
(by its relevance judge). With the `rules` judges (the default) both come from string
rules, so every evaluation has these numbers; a model judge gives its own beside them.
"""

from __future__ import annotations

from collections.abc import Sequence

from ragtrain.judges.rules import (
    CORRECT,
    INCORRECT,
    PRESENT,
    REFUSE,
    doc_text,
    documents_hold_answer,
)

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


def _agreement(pairs: list[tuple]) -> float | None:
    return round(sum(a == b for a, b in pairs) / len(pairs), 4) if pairs else None


def relevance_items(examples: list[dict]) -> list[dict]:
    """What a relevance judge reads of each evaluated example."""
    return [{"id": ex["id"], "question": ex["question"], "docs": ex["docs"]} for ex in examples]


def rules_relevance(example: dict) -> bool:
    """The rules' relevance: a gold answer occurs in one of the example's documents."""
    docs = example.get("docs", [])
    return documents_hold_answer([doc_text(d) for d in docs], example["answers"])


def judged_rows(
    predictions: list[dict], labels: list[dict] | None, relevance: dict[str, dict] | None
) -> list[dict]:
    """Each prediction with its label and relevance verdicts: a model judge's where given
    (`labels`, one per prediction; `relevance`, by id), else the rules' (kept beside as
    `rules_label` / `rules_relevant` either way)."""
    rows = []
    for i, p in enumerate(predictions):
        row = {
            "id": p["id"],
            "answerable": bool(p["answers"]),
            "label": p["label"],
            "relevant": p["relevant"],
            "rules_label": p["label"],
            "rules_relevant": p["relevant"],
        }
        if labels is not None:
            row["label"], row["label_raw"] = labels[i]["verdict"], labels[i]["raw"]
        if relevance is not None:
            verdict = relevance[p["id"]]
            row["relevant"] = None if verdict["verdict"] is None else verdict["verdict"] == PRESENT
            row["relevance_raw"] = verdict["raw"]
        rows.append(row)
    return rows


def agreement(rows: list[dict]) -> dict:
    """The share of a model judge's verdicts the rules give too (None where the rules
    gave them all: no model judge, or no documents to judge)."""
    return {
        "label": _agreement(
            [(r["label"], r["rules_label"]) for r in rows if "label_raw" in r and r["label"]]
        ),
        "relevance": _agreement(
            [
                (r["relevant"], r["rules_relevant"])
                for r in rows
                if "relevance_raw" in r and r["relevant"] is not None
            ]
        ),
    }
