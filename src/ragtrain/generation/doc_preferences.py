"""DPA-RAG's preference knowledge: which retrieved documents help the model answer.

For every question the model answers once closed book and once with each of its top-k
documents alone. Each (question, document) is labelled by the two answers:

    both_correct    right without the document and right with it
    aligned         wrong -> right: the document is what the model needed
    unaligned       right -> wrong: the document misled it
    both_incorrect  wrong either way

`label_rule: f1` (the paper's, default): aligned iff the answer's F1 rises with the document,
unaligned iff it falls; equal F1 is both_correct when the answer holds a gold answer
(token-bounded containment), else both_incorrect. `label_rule: correct`: by containment alone.

From the labels come
- the reranker's records, in DPA-RAG's file format (read back by
  ragtrain.data.preferences, like the paper's own files): `rank_list` one document per
  label tier present, best tier first (aligned, both_correct, both_incorrect, unaligned);
  `positive` / `negative` the documents whose labels the node counts as such (for the
  contrastive loss, so both are left empty unless the question has both);
  `classification` one of those, its class drawn first so that the classes balance;
- the pre-aligned SFT data (the paper's "pre-aligned" task): given all k documents, name
  the helpful ones, then answer.

Augmented questions (ragtrain.generation.query_augment) keep their original's split, so
that no reworded dev question is trained on.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from ragtrain.core.seeds import DEFAULT_SEED, stable_seed
from ragtrain.metrics.qa import contains_answer, f1

KNOWLEDGE_LABELS = ("both_correct", "aligned", "unaligned", "both_incorrect")
# Best first: the order of a record's rank_list.
TIER_ORDER = ("aligned", "both_correct", "both_incorrect", "unaligned")
LABEL_RULES = ("f1", "correct")
# DPA-RAG's classification labels: 1 aligned (relevant), 2 not.
ALIGNED, NOT_ALIGNED = 1, 2

DOC_PREFERENCE_DEFAULTS = {
    "label_rule": "f1",
    "positive": ["aligned"],
    "negative": ["unaligned"],
    "rank_depth": 4,
    "contrastive_per_side": 2,
    "prompt": "rag",
    "closed_book_prompt": "closed_book",
    "shard_size": 64,
    "dev_fraction": 0.15,
    "seed": DEFAULT_SEED,
}
PRE_ALIGNED_DEFAULTS = {
    "helpful": ["aligned", "both_correct"],
    "augmented": True,
    "prompt": "pre_aligned",
}


def knowledge_label(without: str, with_doc: str, answers: list[str], rule: str = "f1") -> str:
    """The label of one document from the closed-book answer and the answer with it."""
    right_without = contains_answer(without, answers) > 0
    right_with = contains_answer(with_doc, answers) > 0
    if rule == "f1":
        before, after = f1(without, answers), f1(with_doc, answers)
        if after > before:
            return "aligned"
        if after < before:
            return "unaligned"
        return "both_correct" if right_with else "both_incorrect"
    if rule != "correct":
        raise ValueError(f"label_rule: expected one of {', '.join(LABEL_RULES)}, got {rule!r}")
    if right_without and right_with:
        return "both_correct"
    if right_with:
        return "aligned"
    if right_without:
        return "unaligned"
    return "both_incorrect"


def check_labels(key: str, labels: list[str]) -> None:
    unknown = [label for label in labels if label not in KNOWLEDGE_LABELS]
    if unknown:
        raise ValueError(
            f"{key}: unknown label {unknown[0]!r} (known: {', '.join(KNOWLEDGE_LABELS)})"
        )


def original_id(example: dict) -> str:
    """The question an (augmented) example stands for: its split follows that one's."""
    return (example.get("meta") or {}).get("augmented_from") or example["id"]


def doc_items(examples: list[dict]) -> list[dict]:
    """One generation item per (question, document): the question with that document only."""
    return [
        {"id": f"{ex['id']}#{i}", "question": ex["question"], "docs": [doc]}
        for ex in examples
        for i, doc in enumerate(ex["docs"])
    ]


def label_documents(
    examples: list[dict],
    closed_book: dict[str, str],
    with_doc: dict[str, str],
    params: dict,
) -> tuple[list[dict], dict]:
    """Labelled records {id, question, answers, split, closed_book, docs: [{..., answer,
    label}]} from the answers (`closed_book` by question id, `with_doc` by doc item id),
    and their stats."""
    from ragtrain.generation.judge import dev_ids

    params = {**DOC_PREFERENCE_DEFAULTS, **params}
    originals = sorted({original_id(ex) for ex in examples})
    held = dev_ids(originals, params["dev_fraction"], params["seed"])
    records, counts = [], Counter()
    for ex in examples:
        without = closed_book[ex["id"]]
        docs = []
        for i, doc in enumerate(ex["docs"]):
            answer = with_doc[f"{ex['id']}#{i}"]
            label = knowledge_label(without, answer, ex["answers"], params["label_rule"])
            counts[label] += 1
            docs.append({**doc, "answer": answer, "label": label})
        records.append(
            {
                "id": ex["id"],
                "question": ex["question"],
                "answers": ex["answers"],
                "split": "dev" if original_id(ex) in held else "train",
                "closed_book": without,
                "docs": docs,
                **({"meta": ex["meta"]} if ex.get("meta") else {}),
            }
        )
    total = sum(counts.values())
    stats = {
        "n_questions": len(records),
        "n_documents": total,
        "labels": {label: counts[label] for label in KNOWLEDGE_LABELS},
        "label_shares": {
            label: round(counts[label] / total, 4) if total else None for label in KNOWLEDGE_LABELS
        },
        "closed_book_accuracy": round(
            sum(contains_answer(r["closed_book"], r["answers"]) for r in records) / len(records),
            4,
        )
        if records
        else None,
    }
    return records, stats


def dpa_text(doc: dict) -> str:
    """A document as DPA-RAG's files write it."""
    return f" Title: {doc.get('title', '')} Content: {doc['text']}"


def reranker_record(labelled: dict, params: dict) -> dict | None:
    """One DPA-RAG reranker record from a question's labelled documents (None when it
    holds nothing to learn from: no positive or negative document and fewer than two
    tiers to rank)."""
    params = {**DOC_PREFERENCE_DEFAULTS, **params}
    docs = labelled["docs"]
    positive = [d for d in docs if d["label"] in params["positive"]]
    negative = [d for d in docs if d["label"] in params["negative"]]
    tiers = [tier for tier in TIER_ORDER if any(d["label"] == tier for d in docs)]
    rank_list = [next(d for d in docs if d["label"] == tier) for tier in tiers]
    rank_list = rank_list[: params["rank_depth"]]
    classes = [(label, group) for label, group in ((ALIGNED, positive), (NOT_ALIGNED, negative))
               if group]  # fmt: skip
    if classes:
        rng = random.Random(stable_seed(params["seed"], labelled["id"], "classification"))
        label, group = rng.choice(classes)
        labelled_doc = rng.choice(group)
    elif len(rank_list) >= 2:
        # Ranking pairs only; the loader needs a classification: the best-ranked document,
        # aligned only if its tier is.
        labelled_doc = rank_list[0]
        label = ALIGNED if labelled_doc["label"] == "aligned" else NOT_ALIGNED
    else:
        return None
    per_side = params["contrastive_per_side"]
    if not (positive and negative):  # the contrastive loss contrasts the two sides
        positive = negative = []
    return {
        "id": labelled["id"],
        "query": labelled["question"],
        "classification": {"text": dpa_text(labelled_doc), "label": label},
        "rank_list": [dpa_text(d) for d in rank_list],
        "positive": [dpa_text(d) for d in positive[:per_side]],
        "negative": [dpa_text(d) for d in negative[:per_side]],
    }


def reranker_records(labelled: list[dict], params: dict) -> tuple[list[dict], dict]:
    """Reranker records (each with its question's split) and their stats."""
    records, dropped = [], 0
    for item in labelled:
        record = reranker_record(item, params)
        if record is None:
            dropped += 1
            continue
        records.append({**record, "split": item["split"]})
    stats = {
        "n_records": len(records),
        "n_without_signal": dropped,
        "classification": {
            "aligned": sum(r["classification"]["label"] == ALIGNED for r in records),
            "not_aligned": sum(r["classification"]["label"] == NOT_ALIGNED for r in records),
        },
        "ranking_pairs": sum(len(r["rank_list"]) * (len(r["rank_list"]) - 1) // 2 for r in records),
        "with_contrastive": sum(bool(r["positive"] and r["negative"]) for r in records),
    }
    return records, stats


def helpful_completion(docs: list[dict], answers: list[str], helpful: list[str]) -> str:
    """The pre-aligned target: the helpful documents by number, then the answer."""
    marks = [f"[{i}]" for i, d in enumerate(docs, start=1) if d["label"] in helpful]
    answer = answers[0] if answers else "I don't know."
    return f"Helpful documents: {', '.join(marks) or 'none'}\nAnswer: {answer}"


def pre_aligned_records(labelled: list[dict], template, params: dict) -> tuple[list[dict], dict]:
    """SFT records of the pre-aligned task, each question's split kept."""
    params = {**PRE_ALIGNED_DEFAULTS, **params}
    if not params["augmented"]:
        labelled = [item for item in labelled if original_id(item) == item["id"]]
    records = []
    for item in labelled:
        if not item["docs"]:
            continue
        records.append(
            {
                "id": item["id"],
                "prompt": template.conversation(item),
                "completion": [
                    {
                        "role": "assistant",
                        "content": helpful_completion(
                            item["docs"], item["answers"], params["helpful"]
                        ),
                    }
                ],
                "split": item["split"],
            }
        )
    helpful = sum(d["label"] in params["helpful"] for r in labelled for d in r["docs"])
    stats = {
        "n_examples": len(records),
        "helpful_documents": helpful,
        "documents": sum(len(r["docs"]) for r in labelled),
    }
    return records, stats


def answer_all(
    examples: list[dict], load_generator, templates: dict[str, Path], params: dict, work: Path
) -> tuple[dict[str, str], dict[str, str], dict]:
    """Closed-book answers by question id and answers with each document alone by item
    id (greedy by default), each set in its own resumable shards under `work`."""
    from ragtrain.generation.selfdemo import answer_sets

    closed = [{k: v for k, v in ex.items() if k != "docs"} for ex in examples]
    answers, stats = answer_sets(
        [("closed_book", closed, templates["closed_book"]),
         ("with_doc", doc_items(examples), templates["prompt"])],
        load_generator, params, work,
    )  # fmt: skip
    return answers["closed_book"], answers["with_doc"], stats
