"""Training data built from judged self-demonstrations, in TRL's conversational formats.

- SFT data: one right response per question, {id, prompt, completion};
- preference pairs: a right response (chosen) against a wrong one (rejected) with the
  same prompt, {id, prompt, chosen, rejected}: correct vs incorrect answers on
  answerable questions, a refusal vs a made-up answer on unanswerable ones.

Where no sample is right, the gold answer (or, for an unanswerable question, the
configured refusal) can stand in as a short demonstration (`gold_fallback`). With
`select: gold` every demonstration is the gold answer: RA-IT, the usual retrieval-
augmented instruction tuning, on the same questions and documents as the self-demos.

From a tournament (ragtrain.generation.tournament) instead of judged samples: the
winner is the demonstration, and each question's pairs are the winner against its
rejected losers. Records
keep their question's split (`train` / `dev`), chosen once by the judge stage, so that
SFT data and pairs built from the same judged samples hold out the same questions: a
DPO model that starts from the SFT model is scored on pairs SFT never saw.
"""

from __future__ import annotations

from collections import Counter

from ragtrain.judges.rules import CORRECT, INCORRECT, REFUSE
from ragtrain.metrics.qa import normalize_answer

SFT_DEFAULTS = {"select": "shortest", "gold_fallback": True, "refusal": "I don't know."}
# `select`: a right sample (shortest / first), or the gold answer for every question.
SELECT = ("shortest", "first", "gold")
PAIRS_DEFAULTS = {"pairs_per_example": 2, "gold_fallback": True, "refusal": "I don't know."}


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _distinct(samples: list[dict], labels: tuple[str, ...], select: str) -> list[str]:
    """Texts of the samples with these labels, one per normalised answer, in `select` order
    (`shortest`: fewest tokens first; `first`: as sampled); labels earlier in `labels` first."""
    seen: set[str] = set()
    texts: list[str] = []
    for lab in labels:
        group = [s for s in samples if s["label"] == lab]
        if select == "shortest":
            group.sort(key=lambda s: (s.get("num_tokens", 0), len(s["text"])))
        elif select != "first":
            raise ValueError(f"select: expected 'shortest' or 'first', got {select!r}")
        for s in group:
            key = normalize_answer(s["text"]) or s["text"].strip()
            if key not in seen:
                seen.add(key)
                texts.append(s["text"])
    return texts


def _fallback(record: dict, params: dict) -> str:
    return record["answers"][0] if record["answers"] else params["refusal"]


def sft_data(judged: list[dict], params: dict) -> tuple[list[dict], dict]:
    """One demonstration per question: its best right sample, else (by config) the gold."""
    params = {**SFT_DEFAULTS, **params}
    if params["select"] not in SELECT:
        raise ValueError(f"select: expected one of {SELECT}, got {params['select']!r}")
    records, sources = [], Counter()
    for r in judged:
        if params["select"] == "gold":
            text, source = _fallback(r, params), "gold"
        elif "winner" in r:  # a tournament's
            text, source = r["winner"]["text"], f"winner/{r['winner']['strategy']}"
        elif texts := _distinct(r["samples"], (CORRECT,) if r["answers"] else (REFUSE,),
                                params["select"]):  # fmt: skip
            text, source = texts[0], "sample"
        elif params["gold_fallback"]:
            text, source = _fallback(r, params), "gold"
        else:
            sources["skipped"] += 1
            continue
        sources[source] += 1
        records.append(
            {
                "id": r["id"],
                "prompt": r["prompt"],
                "completion": _assistant(text),
                "source": source,
                "answerable": bool(r["answers"]),
            }
        )
    stats = {"n": len(records), "sources": dict(sorted(sources.items()))}
    return records, stats


def preference_pairs(judged: list[dict], params: dict) -> tuple[list[dict], dict]:
    """Up to `pairs_per_example` (chosen, rejected) pairs per question."""
    params = {**PAIRS_DEFAULTS, **params}
    if judged and "winner" in judged[0]:
        return tournament_pairs(judged, params)
    records, counts = [], Counter()
    without_pair = 0
    for r in judged:
        if r["answers"]:
            # A refusal on an answerable question is wrong too, but a made-up answer is
            # the worse failure to contrast with first.
            chosen = _distinct(r["samples"], (CORRECT,), "shortest")
            rejected = _distinct(r["samples"], (INCORRECT, REFUSE), "first")
            kind = "answer"
        else:
            chosen = _distinct(r["samples"], (REFUSE,), "shortest")
            rejected = _distinct(r["samples"], (INCORRECT,), "first")
            kind = "refusal"
        source = "sample"
        if not chosen and params["gold_fallback"] and rejected:
            chosen, source = [_fallback(r, params)], "gold"
        made = 0
        for bad in rejected if chosen else []:
            if made == params["pairs_per_example"]:
                break
            good = chosen[made % len(chosen)]
            if good == bad or normalize_answer(good) == normalize_answer(bad):
                continue
            records.append(_pair(r, made, good, bad, source, kind))
            counts[f"{kind}/{source}"] += 1
            made += 1
        without_pair += not made
    # pairs: kind (answer: correct vs wrong; refusal: refusal vs made-up) / source of chosen
    return records, _pair_stats(records, counts, without_pair)


def _pair(r: dict, k: int, good: str, bad: str, source: str, kind: str) -> dict:
    """The k-th preference record of question `r`."""
    return {
        "id": f"{r['id']}/{k}",
        "example_id": r["id"],
        "prompt": r["prompt"],
        "chosen": _assistant(good),
        "rejected": _assistant(bad),
        "source": source,
        "kind": kind,
    }


def _pair_stats(records: list[dict], counts: Counter, without_pair: int) -> dict:
    return {
        "n": len(records),
        "pairs": dict(sorted(counts.items())),
        "questions_with_pairs": len({r["example_id"] for r in records}),
        "questions_without_pair": without_pair,
    }


def tournament_pairs(results: list[dict], params: dict) -> tuple[list[dict], dict]:
    """The winner (chosen) against each of its question's rejected losers, distinct
    answers only, at most `pairs_per_example` (null: all) per question."""
    records, counts = [], Counter()
    without_pair = 0
    cap = params["pairs_per_example"]
    for r in results:
        good = r["winner"]["text"]
        seen = {normalize_answer(good) or good.strip()}
        made = 0
        for loser in r["rejected"]:
            key = normalize_answer(loser["text"]) or loser["text"].strip()
            if key in seen or (cap is not None and made == cap):
                continue
            seen.add(key)
            source, kind = f"winner/{r['winner']['strategy']}", f"beat/{loser['strategy']}"
            records.append(_pair(r, made, good, loser["text"], source, kind))
            counts[f"round {loser['round']} loser"] += 1
            made += 1
        without_pair += not made
    return records, _pair_stats(records, counts, without_pair)


def by_split(records: list[dict], judged: list[dict], key: str) -> tuple[list[dict], list[dict]]:
    """(train, dev) records by their question's split in the judged samples."""
    dev = {r["id"] for r in judged if r.get("split") == "dev"}
    return [r for r in records if r[key] not in dev], [r for r in records if r[key] in dev]


REFERENCE_SFT_DEFAULTS = {"retrieval": "source", "target": "reference", "dev_fraction": 0.15,
                          "seed": 13}  # fmt: skip
TARGETS = ("reference", "answer")


def _target(example: dict, target: str) -> str:
    if target == "answer":
        return example["answers"][0] if example["answers"] else ""
    return str(example.get("reference") or "").strip()


def reference_sft(examples: list[dict], template, params: dict) -> tuple[list[dict], dict]:
    """Distillation data: each example's `reference` (a teacher's answer, ALCE's `output`),
    or with `target: answer` its first gold answer, as the completion of its prompt
    (`template` over the question and its documents); (SFT records with their split,
    stats). Examples without one are dropped and counted; none with one is an error
    naming the field."""
    from ragtrain.generation.doc_preferences import original_id
    from ragtrain.generation.judge import dev_ids

    params = {**REFERENCE_SFT_DEFAULTS, **params}
    if params["target"] not in TARGETS:
        raise ValueError(f"target: expected one of {', '.join(TARGETS)}, got {params['target']!r}")
    kept = [ex for ex in examples if _target(ex, params["target"])]
    if not kept:
        what = (
            "a `reference` (a teacher's answer: ALCE `output`, or the world's ALCE-shaped"
            " questions)"
            if params["target"] == "reference"
            else "a gold answer"
        )
        raise ValueError(f"reference_sft: none of the {len(examples)} examples has {what}")
    # An augmented question (ragtrain.generation.query_augment) goes where its original does.
    originals = sorted({original_id(ex) for ex in kept})
    held = dev_ids(originals, params["dev_fraction"], params["seed"])
    records = [
        {
            "id": ex["id"],
            "prompt": template.conversation(ex),
            "completion": _assistant(_target(ex, params["target"])),
            "split": "dev" if original_id(ex) in held else "train",
        }
        for ex in kept
    ]
    stats = {
        "n_examples": len(examples),
        "n_kept": len(records),
        f"n_without_{params['target']}": len(examples) - len(records),
    }
    return records, stats
