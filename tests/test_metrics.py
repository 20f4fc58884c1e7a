"""QA metrics against hand-checked values."""

import pytest

from ragtrain.metrics.qa import (
    aggregate,
    answer_recall,
    contains_answer,
    exact_match,
    f1,
    is_refusal,
    normalize_answer,
    score_example,
)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  An   apple,  a day ", "apple day"),
        ("Theatre of the absurd", "theatre of absurd"),  # articles only as whole words
        ("U.S.A.", "usa"),
        ("rock'n'roll", "rocknroll"),
        ("", ""),
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_exact_match_ignores_articles_punctuation_case():
    assert exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert exact_match("Eiffel Tower in Paris", ["eiffel tower"]) == 0.0


def test_exact_match_takes_max_over_golds():
    assert exact_match("Paris", ["London", "paris.", "Rome"]) == 1.0
    assert exact_match("Berlin", ["London", "Paris"]) == 0.0
    assert exact_match("anything", []) == 0.0


def test_f1_partial_overlap():
    # "in city of kesh" (4 tokens) vs "kesh": P = 1/4, R = 1, F1 = 2 * 0.25 / 1.25 = 0.4
    assert f1("in the city of Kesh", ["Kesh"]) == pytest.approx(0.4)


def test_f1_max_over_golds():
    # vs "eiffel tower": P = 2/4, R = 1 -> 2/3; vs "paris france": P = 1/4, R = 1/2 -> 1/3
    assert f1("Eiffel Tower in Paris", ["the Eiffel Tower", "Paris, France"]) == pytest.approx(
        2 / 3
    )


def test_f1_counts_repeated_tokens_once_per_gold_occurrence():
    # "kesh kesh" vs "kesh": overlap 1, P = 1/2, R = 1 -> 2/3
    assert f1("the Kesh, the Kesh", ["Kesh"]) == pytest.approx(2 / 3)


def test_f1_no_overlap_and_no_golds():
    assert f1("Berlin", ["Paris"]) == 0.0
    assert f1("Berlin", []) == 0.0
    assert f1("", ["Paris"]) == 0.0


def test_contains_answer_on_token_boundaries():
    assert contains_answer("It opened in 1962, to great acclaim.", ["1962"]) == 1.0
    assert contains_answer("The answer is The Eiffel Tower.", ["eiffel tower"]) == 1.0
    assert contains_answer("About 100 people", ["10"]) == 0.0
    assert contains_answer("Kesharo", ["Kesh"]) == 0.0
    assert contains_answer("Rome", ["Paris", "rome"]) == 1.0
    assert contains_answer("Rome", []) == 0.0


def test_gold_answers_given_as_a_string_are_rejected():
    with pytest.raises(TypeError):
        exact_match("Kesh", "Kesh")


@pytest.mark.parametrize(
    "text",
    [
        "I don't know.",
        "I don’t know",
        "i DO NOT know the answer",
        "I cannot answer this question.",
        "Sorry, I can't answer that.",
        "I can’t answer based on the context.",
        "The documents do not contain this information.",
        "The document doesn't mention his birthplace.",
        "The passages do not say.",
        "The context does not provide the date.",
        "There is no information about this.",
        "No information available.",
        "The year is not mentioned in the documents.",
        "Unanswerable",
        "Unknown",
        "unknown.",
        "The answer is unknown.",
        "I'm not sure.",
        "I’m not sure which one.",
        "There is no mention of a second album.",
        "There is not enough information to answer.",
        "I am unable to determine the answer.",
        "Unable to find it in the documents",
        "Insufficient information.",
        "",
        "   \n",
    ],
)
def test_is_refusal_positive(text):
    assert is_refusal(text)


@pytest.mark.parametrize(
    "text",
    [
        "Kesh",
        "1962",
        "A",  # a real answer although it normalises to ""
        "Unknown Pleasures",
        "Unknown Pleasures Ltd",
        "The Unknown Soldier",
        "Knowledge is power",
        "She knows the answer: Paris.",
        "The Eiffel Tower, completed in 1889.",
        "Information theory",
    ],
)
def test_is_refusal_negative(text):
    assert not is_refusal(text)


def test_score_example():
    assert score_example("in the city of Kesh", ["Kesh"]) == {
        "em": 0.0,
        "f1": pytest.approx(0.4),
        "accuracy": 1.0,
        "refusal": False,
        "answerable": True,
    }
    assert score_example("I don't know", []) == {
        "em": 0.0,
        "f1": 0.0,
        "accuracy": 0.0,
        "refusal": True,
        "answerable": False,
    }
    # A refusal on an answerable question simply scores zero.
    refused = score_example("I don't know", ["1962"])
    assert (refused["em"], refused["f1"], refused["accuracy"]) == (0.0, 0.0, 0.0)
    assert refused["refusal"] and refused["answerable"]


def test_aggregate_mixed():
    scores = [
        score_example("Kesh", ["Kesh"]),  # em 1, f1 1, acc 1
        score_example("in the city of Kesh", ["Kesh"]),  # em 0, f1 0.4, acc 1
        score_example("I don't know", ["1962"]),  # false refusal
        score_example("I don't know", []),  # correct refusal
        score_example("Paris", []),  # answered an unanswerable question
    ]
    assert aggregate(scores) == {
        "em": 0.3333,
        "f1": 0.4667,  # (1 + 0.4 + 0) / 3
        "accuracy": 0.6667,
        "hits@1": 0.6667,  # DPA-RAG's name for accuracy
        "refusal_rate": 0.4,
        "correct_refusal": 0.5,
        "refused_answerable": 0.3333,
        "n": 5,
        "n_answerable": 3,
        "n_unanswerable": 2,
    }


def test_aggregate_without_unanswerable_examples():
    metrics = aggregate([score_example("Kesh", ["Kesh"]), score_example("Rome", ["Paris"])])
    assert metrics["em"] == 0.5
    assert metrics["correct_refusal"] is None
    assert metrics["refused_answerable"] == 0.0
    assert metrics["refusal_rate"] == 0.0
    assert (metrics["n_answerable"], metrics["n_unanswerable"]) == (2, 0)


def test_aggregate_without_answerable_examples():
    metrics = aggregate([score_example("I don't know", []), score_example("Paris", [])])
    assert metrics["em"] is None
    assert metrics["f1"] is None
    assert metrics["accuracy"] is None
    assert metrics["refused_answerable"] is None
    assert metrics["correct_refusal"] == 0.5
    assert metrics["refusal_rate"] == 0.5


def test_aggregate_empty():
    metrics = aggregate([])
    assert metrics["n"] == 0
    assert all(
        metrics[k] is None
        for k in ("em", "f1", "accuracy", "refusal_rate", "correct_refusal", "refused_answerable")
    )


def test_answer_recall():
    docs = ["Kesh is a village.", "The festival drew 100 visitors."]
    assert answer_recall(docs, ["kesh"]) == 1.0
    assert answer_recall(docs, ["Dublin", "100"]) == 1.0
    assert answer_recall(docs, ["10"]) == 0.0
    assert answer_recall(docs, []) == 0.0
    assert answer_recall([], ["Kesh"]) == 0.0
    # A gold answer that normalises to nothing must not match every document.
    assert answer_recall(docs, ["The"]) == 0.0
