"""Labelling and rewarding sampled responses."""

import pytest

from ragtrain.generation.judge import judge_record, judge_stats
from ragtrain.judges.rules import CORRECT, INCORRECT, REFUSE, label


@pytest.mark.parametrize(
    ("text", "answers"),
    [
        ("It was 1958.", ["1958"]),
        ("The Eiffel Tower!", ["eiffel tower"]),
        ("an APPLE", ["Apple", "pear"]),
        ("Paris, France", ["London", "paris"]),
    ],
)
def test_label_correct_when_gold_contained_after_normalisation(text, answers):
    assert label(text, answers) == CORRECT


@pytest.mark.parametrize(
    ("text", "answers"),
    [("Berlin", ["Paris"]), ("100", ["10"]), ("It was 1958.", ["958"]), ("A", ["10"])],
)
def test_label_incorrect(text, answers):
    assert label(text, answers) == INCORRECT


@pytest.mark.parametrize(
    "text", ["I don't know.", "The documents do not mention it", "", "  ", "I don’t know"]
)
def test_label_refuse(text):
    assert label(text, ["Paris"]) == REFUSE
    assert label(text, []) == REFUSE


def test_refusal_detected_before_containment():
    assert label("I don't know, maybe Paris", ["Paris"]) == REFUSE


def test_any_answer_to_an_unanswerable_question_is_incorrect():
    assert label("Paris", []) == INCORRECT
    assert label("1958", []) == INCORRECT


def _record(answers, texts):
    return {
        "id": "q",
        "question": "?",
        "answers": answers,
        "samples": [{"text": t, "num_tokens": len(t.split())} for t in texts],
    }


def test_judge_record_rewards_the_right_answer_on_answerable():
    out = judge_record(_record(["1958"], ["It was 1958.", "1959", "I don't know."]))
    assert [s["label"] for s in out["samples"]] == [CORRECT, INCORRECT, REFUSE]
    assert [s["reward"] for s in out["samples"]] == [1.0, 0.0, 0.0]
    # "it was 1958" vs "1958": P = 1/3, R = 1 -> F1 = 0.5
    assert out["samples"][0]["scores"] == {"em": 0.0, "f1": pytest.approx(0.5)}
    assert out["samples"][1]["scores"] == {"em": 0.0, "f1": 0.0}
    # sample fields and record fields are kept
    assert out["samples"][0]["num_tokens"] == 3
    assert out["question"] == "?" and out["id"] == "q"


def test_judge_record_rewards_refusal_on_unanswerable():
    out = judge_record(_record([], ["Paris", "I don't know."]))
    assert [s["label"] for s in out["samples"]] == [INCORRECT, REFUSE]
    assert [s["reward"] for s in out["samples"]] == [0.0, 1.0]
    assert all(s["scores"] == {} for s in out["samples"])


def test_judge_record_does_not_modify_its_input():
    record = _record(["Paris"], ["Paris"])
    judge_record(record)
    assert "label" not in record["samples"][0]


def test_judge_stats_counts_labels_overall_and_by_group():
    records = [
        judge_record(_record(["Paris"], ["Paris", "Rome"])),  # solved
        judge_record(_record(["1958"], ["1959", "I don't know."])),  # not solved
        judge_record(_record([], ["I don't know.", "Paris"])),  # solved
        judge_record(_record([], ["Rome", "Berlin"])),  # not solved
    ]
    stats = judge_stats(records)
    assert stats["n_examples"] == 4
    assert stats["n_samples"] == 8
    assert stats["labels"] == {CORRECT: 1, INCORRECT: 5, REFUSE: 2}
    assert stats["by_group"]["answerable"] == {
        "n_examples": 2,
        "labels": {CORRECT: 1, INCORRECT: 2, REFUSE: 1},
        "solved": 1,
    }
    assert stats["by_group"]["unanswerable"] == {
        "n_examples": 2,
        "labels": {CORRECT: 0, INCORRECT: 3, REFUSE: 1},
        "solved": 1,
    }
    assert stats["right_rate"] == 0.25


def test_judge_stats_empty():
    stats = judge_stats([])
    assert stats["n_samples"] == 0
    assert stats["right_rate"] is None
    assert stats["by_group"]["answerable"]["solved"] == 0
