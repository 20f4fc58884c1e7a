"""Question-answering metrics: SQuAD exact match and F1, answer containment, refusals.

Answer comparison follows the official SQuAD v1.1 evaluation script (normalisation,
token F1, max over gold answers), so scores are comparable with published numbers.
Aggregates average EM/F1/accuracy over answerable examples only; refusals are scored
separately, so a model that declines to answer unanswerable questions is rewarded by
`correct_refusal` rather than penalised on F1.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# Typographic apostrophes and quotes are not in string.punctuation; fold them to ASCII so
# "don’t" and "don't" normalise alike in refusal detection.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})

# Matched against the SQuAD-normalised response: lower case, no punctuation (so "can't"
# reads "cant"), no articles (so "the documents" reads "documents").
_REFUSAL = re.compile(
    r"\bi (?:dont|do not) know\b"
    r"|\b(?:cannot|can not|cant) answer\b"
    r"|\bunable to (?:answer|determine|find)\b"
    r"|\b(?:documents?|passages?|context|texts?|sources?) (?:do not|does not|dont|doesnt)"
    r" (?:contain|mention|say|provide)\b"
    r"|\bthere is no (?:mention|information)\b"
    r"|\bno information\b"
    r"|\bnot mentioned\b"
    r"|\b(?:not enough|insufficient) information\b"
    r"|\bunanswerable\b"
    r"|\b(?:im|i am) not sure\b"
    # "unknown" alone or as the stated answer; not as part of a name ("Unknown Pleasures").
    r"|^unknown$"
    r"|\b(?:answer|it) is unknown\b"
)


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace (SQuAD v1.1)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _gold_list(golds: Sequence[str]) -> Sequence[str]:
    # A bare string would silently be scored character by character.
    if isinstance(golds, str):
        raise TypeError("gold answers must be a list of strings, not a string")
    return golds


def _contains(haystack: str, needle: str) -> bool:
    """Token-boundary containment of normalised strings: "10" is not in "100"."""
    return bool(needle) and f" {needle} " in f" {haystack} "


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    pred = normalize_answer(prediction)
    return max((float(pred == normalize_answer(g)) for g in _gold_list(golds)), default=0.0)


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, golds: Sequence[str]) -> float:
    pred_tokens = normalize_answer(prediction).split()
    return max(
        (_token_f1(pred_tokens, normalize_answer(g).split()) for g in _gold_list(golds)),
        default=0.0,
    )


def contains_answer(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if some gold answer occurs in the prediction (normalised, on token boundaries)."""
    pred = normalize_answer(prediction)
    return float(any(_contains(pred, normalize_answer(g)) for g in _gold_list(golds)))


def is_refusal(text: str) -> bool:
    """True if the response is empty or declines to answer ("I don't know", ...)."""
    # Checked on the raw text: "A" is a real answer although it normalises to "".
    if not text.strip():
        return True
    return _REFUSAL.search(normalize_answer(text.translate(_APOSTROPHES))) is not None


def score_example(prediction: str, answers: Sequence[str]) -> dict:
    """Per-example scores; an example with no gold answers is unanswerable."""
    return {
        "em": exact_match(prediction, answers),
        "f1": f1(prediction, answers),
        "accuracy": contains_answer(prediction, answers),
        "refusal": is_refusal(prediction),
        "answerable": len(answers) > 0,
    }


def _mean(values: list[float]) -> float | None:
    # None rather than 0 or NaN: "no examples of this kind" must not read as a score.
    return round(sum(values) / len(values), 4) if values else None


def aggregate(scores: list[dict]) -> dict:
    """Combine `score_example` results into the metrics record."""
    answerable = [s for s in scores if s["answerable"]]
    unanswerable = [s for s in scores if not s["answerable"]]
    return {
        "em": _mean([s["em"] for s in answerable]),
        "f1": _mean([s["f1"] for s in answerable]),
        "accuracy": _mean([s["accuracy"] for s in answerable]),
        # DPA-RAG's name for the same number: the (first) generated answer holds a gold one.
        "hits@1": _mean([s["accuracy"] for s in answerable]),
        "refusal_rate": _mean([float(s["refusal"]) for s in scores]),
        "correct_refusal": _mean([float(s["refusal"]) for s in unanswerable]),
        # Any refusal of an answerable question; evaluation's `false_refusal` counts only
        # those whose documents hold the answer (ragtrain.evaluation.judged).
        "refused_answerable": _mean([float(s["refusal"]) for s in answerable]),
        "n": len(scores),
        "n_answerable": len(answerable),
        "n_unanswerable": len(unanswerable),
    }


def answer_recall(docs_texts: Sequence[str], answers: Sequence[str]) -> float:
    """1.0 if some gold answer occurs in some document (for retrieval answer recall@k)."""
    golds = [normalize_answer(a) for a in _gold_list(answers)]
    docs = [normalize_answer(t) for t in docs_texts]
    return float(any(_contains(doc, gold) for doc in docs for gold in golds))
