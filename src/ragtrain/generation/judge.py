"""Judging samples: each response is labelled `correct`, `incorrect` or `refuse`, by
the string rules (ragtrain.judges.rules) or a model judge (ragtrain.judges.model).

The label describes the response. What is right depends on the question: a correct
answer where gold answers exist, a refusal where none do (unanswerable).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ragtrain.core.records import iter_jsonl, require
from ragtrain.core.seeds import DEFAULT_SEED, stable_seed
from ragtrain.judges.rules import CORRECT, LABELS, REFUSE, label
from ragtrain.metrics.qa import exact_match, f1

JUDGE_DEFAULTS = {"dev_fraction": 0.1, "seed": DEFAULT_SEED}


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


def dev_ids(ids: list[str], fraction: float, seed: int) -> set[str]:
    """A fixed share of the ids, chosen by a seeded hash (stable under reordering); at
    least one when the share is above 0, and never all of them."""
    if not 0 <= fraction < 1:
        raise ValueError(f"dev_fraction: expected a number in [0, 1), got {fraction}")
    n_dev = round(len(ids) * fraction)
    if fraction > 0 and len(ids) > 1:
        n_dev = min(max(n_dev, 1), len(ids) - 1)
    return set(sorted(ids, key=lambda i: stable_seed(seed, i))[:n_dev])


def assign_splits(records: list[dict], params: dict) -> list[dict]:
    """Mark each question `train` or `dev`: the held-out questions of every product made
    from these judged samples."""
    params = {**JUDGE_DEFAULTS, **params}
    held = dev_ids([r["id"] for r in records], params["dev_fraction"], params["seed"])
    return [{**r, "split": "dev" if r["id"] in held else "train"} for r in records]


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
        "n_dev_examples": sum(1 for r in records if r.get("split") == "dev"),
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


def prompt_records(
    path: str | Path, template, dev_fraction: float, seed: int
) -> tuple[list[dict], list[dict]]:
    """The examples of `path` (each with `id` and `answers`) with their prompt rendered by
    `template` (a PromptTemplate), as (train, dev): the dev share held out by `dev_ids`,
    as RL stages sample from the train prompts and score the dev ones."""
    records = []
    for lineno, record in iter_jsonl(path):
        require(record, "id", str, path, lineno)
        require(record, "answers", list, path, lineno)
        records.append({**record, "prompt": template.conversation(record)})
    held = dev_ids([r["id"] for r in records], dev_fraction, seed)
    return [r for r in records if r["id"] not in held], [r for r in records if r["id"] in held]
