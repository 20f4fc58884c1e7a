"""Judging samples: each response is labelled `correct`, `incorrect` or `refuse`.

The label describes the response. What is right depends on the question: a correct
answer where gold answers exist, a refusal where none do (unanswerable). Answers match
as in evaluation (SQuAD normalisation, any gold answer contained on token boundaries);
refusals are detected first, so a hedge that names a guess still counts as a refusal.
"""

from __future__ import annotations

from collections import Counter

from ragtrain.metrics import contains_answer, exact_match, f1, is_refusal

CORRECT, INCORRECT, REFUSE = "correct", "incorrect", "refuse"
LABELS = (CORRECT, INCORRECT, REFUSE)


def label(text: str, answers: list[str]) -> str:
    if is_refusal(text):
        return REFUSE
    if answers and contains_answer(text, answers):
        return CORRECT
    return INCORRECT


def is_right(sample_label: str, answers: list[str]) -> bool:
    """The response the question calls for: the answer, or a refusal when there is none."""
    return sample_label == (CORRECT if answers else REFUSE)


def judge_record(record: dict) -> dict:
    """Label every sample of a sample record; reward 1 for the right response, else 0."""
    answers = record["answers"]
    samples = []
    for sample in record["samples"]:
        lab = label(sample["text"], answers)
        scores = (
            {"em": exact_match(sample["text"], answers), "f1": f1(sample["text"], answers)}
            if answers
            else {}
        )
        samples.append(
            {**sample, "label": lab, "reward": float(is_right(lab, answers)), "scores": scores}
        )
    return {**record, "samples": samples}


def judge_stats(records: list[dict]) -> dict:
    """Label counts, overall and for answerable / unanswerable questions."""
    counts = {"answerable": Counter(), "unanswerable": Counter()}
    solved = {"answerable": 0, "unanswerable": 0}
    for record in records:
        group = "answerable" if record["answers"] else "unanswerable"
        labels = [s["label"] for s in record["samples"]]
        counts[group].update(labels)
        solved[group] += any(is_right(lab, record["answers"]) for lab in labels)
    total = counts["answerable"] + counts["unanswerable"]
    n_samples = sum(total.values())
    return {
        "n_examples": len(records),
        "n_samples": n_samples,
        "labels": {lab: total[lab] for lab in LABELS},
        "by_group": {
            group: {
                "n_examples": sum(
                    1 for r in records if bool(r["answers"]) == (group == "answerable")
                ),
                "labels": {lab: c[lab] for lab in LABELS},
                # Questions with at least one right sample: the ones self-demos can teach.
                "solved": solved[group],
            }
            for group, c in counts.items()
        },
        "right_rate": round(sum(s["reward"] for r in records for s in r["samples"]) / n_samples, 4)
        if n_samples
        else None,
    }
