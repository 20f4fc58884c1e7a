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


def judge_record(record: dict, verdicts: list[dict] | None = None) -> dict:
    """Label every sample of a sample record; reward 1 for the right response, else 0.

    With `verdicts` (a model judge's, one per sample) the labels are the model's; the
    rules' label is kept beside as `rules_label`, the judge's replies as `judge_raw`,
    and a sample the judge gave no verdict is dropped."""
    answers = record["answers"]
    samples = []
    for k, sample in enumerate(record["samples"]):
        extra = {}
        if verdicts is None:
            lab = label(sample["text"], answers)
        else:
            if verdicts[k]["verdict"] is None:
                continue
            lab = verdicts[k]["verdict"]
            extra = {"rules_label": label(sample["text"], answers), "judge_raw": verdicts[k]["raw"]}
        scores = (
            {"em": exact_match(sample["text"], answers), "f1": f1(sample["text"], answers)}
            if answers
            else {}
        )
        samples.append(
            {
                **sample,
                "label": lab,
                "reward": float(is_right(lab, answers)),
                "scores": scores,
                **extra,
            }
        )
    return {**record, "samples": samples}


def judge_with_model(records: list[dict], judge) -> tuple[list[dict], dict]:
    """Every sample labelled by a model `label` judge (ragtrain.judges.model), as
    `judge_record` does with its verdicts; and the judge's reply statistics."""
    from ragtrain.judges.model import verdict_stats

    items = [
        {
            "id": f"{record['id']}#{k}",
            "question": record["question"],
            "response": sample["text"],
            "answers": record["answers"],
            "docs": record.get("docs", []),
        }
        for record in records
        for k, sample in enumerate(record["samples"])
    ]
    verdicts = judge.judge(items)
    judged, start = [], 0
    for record in records:
        end = start + len(record["samples"])
        judged.append(judge_record(record, verdicts[start:end]))
        start = end
    return judged, verdict_stats(verdicts)


def agreement_with_rules(records: list[dict]) -> dict:
    """How often a model judge's labels equal the rules' (samples it labelled)."""
    pairs = [
        (s["label"], s["rules_label"]) for r in records for s in r["samples"] if "rules_label" in s
    ]
    same = sum(a == b for a, b in pairs)
    confusion: Counter = Counter(f"{b}->{a}" for a, b in pairs if a != b)
    return {
        "n": len(pairs),
        "agreement": round(same / len(pairs), 4) if pairs else None,
        # rules' label -> model's label, for the pairs that differ
        "disagreements": dict(confusion.most_common()),
    }


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
    path: str | Path, template, dev_fraction: float, seed: int, source_docs: bool = False
) -> tuple[list[dict], list[dict]]:
    """The examples of `path` (each with `id` and `answers`) with their prompt rendered by
    `template` (a PromptTemplate), as (train, dev): the dev share held out by `dev_ids`,
    as RL stages sample from the train prompts and score the dev ones. With
    `source_docs`, each example's own documents are its `docs` (retrieval `source`)."""
    records = []
    for lineno, record in iter_jsonl(path):
        require(record, "id", str, path, lineno)
        require(record, "answers", list, path, lineno)
        if source_docs:
            require(record, "source_docs", list, path, lineno)
            record = {**record, "docs": record["source_docs"]}
        records.append({**record, "prompt": template.conversation(record)})
    held = dev_ids([r["id"] for r in records], dev_fraction, seed)
    return [r for r in records if r["id"] not in held], [r for r in records if r["id"] in held]
