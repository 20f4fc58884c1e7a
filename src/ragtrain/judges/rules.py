"""The string rules: the `rules` judge, the default wherever a judge can be named.

`label` says what a response is (correct / incorrect / refuse) against the gold
answers; `documents_hold_answer` says whether retrieved documents contain what the
question needs (a gold answer, on token boundaries). Answers match as in evaluation
(SQuAD normalisation); refusals are detected first, so a hedge that names a guess still
counts as a refusal.
"""

from __future__ import annotations

from collections.abc import Sequence

from ragtrain.metrics.qa import answer_recall, contains_answer, is_refusal

RULES = "rules"
CORRECT, INCORRECT, REFUSE = "correct", "incorrect", "refuse"
LABELS = (CORRECT, INCORRECT, REFUSE)
PRESENT, ABSENT = "present", "absent"


def label(text: str, answers: Sequence[str]) -> str:
    if is_refusal(text):
        return REFUSE
    if answers and contains_answer(text, answers):
        return CORRECT
    return INCORRECT


def documents_hold_answer(doc_texts: Sequence[str], answers: Sequence[str]) -> bool:
    """A gold answer occurs in some document; never for an unanswerable question."""
    return bool(answers) and answer_recall(doc_texts, answers) == 1.0


def doc_text(doc: dict) -> str:
    return f"{doc.get('title', '')}\n{doc.get('text', '')}"
