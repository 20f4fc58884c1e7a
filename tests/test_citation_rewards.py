"""Citation rewards (ragtrain.training.rewards: citation_recall, citation_precision,
alce_correctness, holistic mode): which value lands at which character offset, and on
which token.

The NLI judge is a stand-in (`WordScorer`: a hypothesis is entailed iff each of its words
occurs in the premise) wrapped in the real `Entailment`: the placement logic, not an NLI
model, is under test, and a rule anyone can check by eye makes each expected value plain.
"""

from __future__ import annotations

import re

import pytest

from ragtrain.judges.nli import Entailment
from ragtrain.training.rewards import (
    SOURCE_SETTINGS,
    AlceCorrectness,
    CitationPrecision,
    CitationRecall,
    Rewards,
    check_specs,
    nli_judges,
    place_rewards,
    total,
)

RIGHT, WRONG = 0.2, -0.2


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


class WordScorer:
    """1.0 iff every word of the hypothesis (lower case, punctuation removed) occurs in
    the premise, else 0.0; records each call's pairs."""

    def __init__(self):
        self.calls: list[list[tuple[str, str]]] = []

    def scores(self, premises, hypotheses):
        self.calls.append(list(zip(premises, hypotheses, strict=True)))
        return [
            1.0 if set(_words(h)) <= set(_words(p)) else 0.0
            for p, h in zip(premises, hypotheses, strict=True)
        ]


DOCS = [
    {"id": "d1", "title": "Eiffel Tower", "text": "The Eiffel Tower was built in 1889."},
    {"id": "d2", "title": "Paris", "text": "Paris is the capital of France."},
    {"id": "d3", "title": "Gustave Eiffel", "text": "Gustave Eiffel designed the tower."},
    {"id": "d4", "title": "Weather", "text": "It rained on Tuesday."},
    {"id": "d5", "title": "Iron", "text": "The tower is made of iron."},
]


def example(**fields) -> dict:
    record = {
        "id": "x-00001",
        "question": "When was the Eiffel Tower built?",
        "answers": ["1889"],
        "docs": DOCS,
        "prompt": [{"role": "user", "content": "..."}],
    }
    return record | fields


def after(text: str, fragment: str) -> int:
    """The offset just past `fragment` (unique in `text`)."""
    assert text.count(fragment) == 1, fragment
    return text.index(fragment) + len(fragment)


@pytest.fixture
def scorer():
    return WordScorer()


@pytest.fixture
def nli(scorer):
    return Entailment(scorer)


def approx(placed):
    return [(offset, pytest.approx(value)) for offset, value in placed]


# ---- citation recall -------------------------------------------------------------------

RECALL_TEXT = (
    "The tower was built in 1889 [1]. It rained in Paris [4]. "
    "Paris is the capital of France. The tower is made of iron [7]."
)


def test_recall_at_each_sentence_end(nli):
    text = RECALL_TEXT
    [placed] = CitationRecall(nli).score([example()], [text])
    assert placed == approx(
        [
            (after(text, "1889 [1]."), RIGHT),  # doc 1 entails it
            (after(text, "Paris [4]."), WRONG),  # doc 4 does not
            (after(text, "of France."), WRONG),  # no citation
            (len(text), WRONG),  # [7] of 5 documents
        ]
    )


def test_recall_judges_the_first_three_documents_jointly(nli):
    # Docs 1 and 2 together hold every word; alone neither does. A 4th citation is not read.
    text = "The tower was built in Paris in 1889 [1][2]. Paris is the capital [4][3][5][2]."
    [placed] = CitationRecall(nli, right=1.0, wrong=-1.0).score([example()], [text])
    assert placed == approx([(after(text, "[1][2]."), 1.0), (len(text), -1.0)])


def test_recall_out_of_range_past_the_third_citation_is_wrong(nli):
    text = "The tower was built in 1889 [1][2][3][9]."
    [placed] = CitationRecall(nli).score([example()], [text])
    assert placed == approx([(len(text), WRONG)])


# ---- citation precision -----------------------------------------------------------------

PRECISION_TEXT = (
    "The tower was built in 1889 [1]. "  # single, supported
    "It rained in Paris [4]. "  # single, unsupported
    "The tower was built in Paris in 1889 [1][2][4]. "  # joint; [4] irrelevant
    "Gustave Eiffel designed the tower in Paris [3][2][1][5]. "  # 3 needed; [5] past 3
    "Paris is the capital of France [2][4]. "  # [2] alone entails; [4] irrelevant
    "The tower is made of iron [5][7]."  # [7] of 5 documents
)


def test_precision_at_each_citation(nli):
    text = PRECISION_TEXT
    s3 = text.index("The tower was built in Paris")
    s4 = text.index("Gustave")
    s5 = text.index("Paris is the capital")
    s6 = text.index("The tower is made")
    [placed] = CitationPrecision(nli).score([example()], [text])
    assert placed == approx(
        [
            (after(text, "built in 1889 [1"), RIGHT),  # alone entails
            (after(text, "rained in Paris [4"), WRONG),  # not entailed
            (text.index("[1][2][4]", s3) + 2, RIGHT),  # needed with [2]
            (text.index("[1][2][4]", s3) + 5, RIGHT),  # needed with [1]
            (text.index("[1][2][4]", s3) + 8, WRONG),  # irrelevant: [1][2] suffice
            (text.index("[3][2][1][5]", s4) + 2, RIGHT),
            (text.index("[3][2][1][5]", s4) + 5, RIGHT),
            (text.index("[3][2][1][5]", s4) + 8, RIGHT),
            # [5], the 4th citation, gets nothing
            (text.index("[2][4]", s5) + 2, RIGHT),  # alone entails
            (text.index("[2][4]", s5) + 5, WRONG),  # irrelevant
            (text.index("[5][7]", s6) + 2, WRONG),  # the sentence cites a missing doc
            (text.index("[5][7]", s6) + 5, WRONG),
        ]
    )


def test_precision_max_citations_and_repeats(nli):
    text = "Gustave Eiffel designed the tower in Paris [3][3][2][1]."
    [placed] = CitationPrecision(nli, max_citations=2).score([example()], [text])
    # Judged by docs 3 and 2 only (no "in"): both wrong; the repeated [3] and [1] get nothing.
    assert placed == approx([(after(text, "Paris [3"), WRONG), (after(text, "[3][3][2"), WRONG)])
    with pytest.raises(ValueError, match="max_citations"):
        CitationPrecision(nli, max_citations=0)


# ---- ALCE correctness ----------------------------------------------------------------------

ASQA = example(
    qa_pairs=[
        {"question": "When?", "short_answers": ["1889"]},
        {"question": "Who designed it?", "short_answers": ["Gustave Eiffel", "G. Eiffel"]},
        {"question": "Made of?", "short_answers": ["wrought iron", "puddled iron"]},
    ]
)
QAMPARI = example(
    question="Which cities are in France?",
    answer_groups=[["Paris"], ["Lyon", "Lyons"], ["Nice"], ["Lille"], ["Marseille"], ["Nantes"]],
)
ELI5 = example(
    claims=["The tower was built in 1889.", "The tower is made of iron.", "The tower is in Rome."]
)


def test_asqa_correctness(nli):
    # "G Eiffel" matches "G. Eiffel" after normalisation; nothing matches "wrought iron".
    text = "The Eiffel Tower was built in 1889 [1], designed by G Eiffel [3]."
    [placed] = AlceCorrectness(dataset="asqa").score([ASQA], [text])
    assert placed == approx([(len(text), 2 * RIGHT + WRONG)])


def test_asqa_correctness_ignores_citations():
    # "1889 [1]" is not "1889" unless citations are stripped first; an answer split by a
    # citation only matches once it is gone.
    text = "Built by Gustave [3] Eiffel."
    [placed] = AlceCorrectness(dataset="asqa", per_item=1.0).score([ASQA], [text])
    assert placed == approx([(len(text), 1.0 - 2.0)])


def test_qampari_correctness():
    source = AlceCorrectness(dataset="qampari")
    some = "The Paris [1], Lyons [2], Berlin [3]."  # 2 hits, 3 short of 5
    every = "Paris [1], Lyon [2], Nice, Lille, Marseille, Nantes [4]."  # 6 hits
    substring = "Paris and Lyon [1]."  # one item, equal to no alias
    placed = source.score([QAMPARI] * 3, [some, every, substring])
    assert placed == [
        approx([(len(some), 2 * RIGHT + 3 * WRONG)]),
        approx([(len(every), 6 * RIGHT)]),
        approx([(len(substring), 5 * WRONG)]),
    ]


def test_eli5_correctness(nli, scorer):
    text = "The tower was built in 1889 [1]. The tower is made of iron [5]."
    [placed] = AlceCorrectness(nli, dataset="eli5").score([ELI5], [text])
    assert placed == approx([(len(text), 2 * RIGHT + WRONG)])
    # The premise is the response without citations.
    assert {p for p, _ in scorer.calls[0]} == {
        "The tower was built in 1889. The tower is made of iron."
    }


def test_auto_picks_each_examples_dataset(nli):
    texts = ["Built in 1889 by Gustave Eiffel.", "Paris, Nice.", "The tower is made of iron."]
    placed = AlceCorrectness(nli).score([ASQA, QAMPARI, ELI5], texts)
    assert [total(p) for p in placed] == pytest.approx(
        [2 * RIGHT + WRONG, 2 * RIGHT + 3 * WRONG, RIGHT + 2 * WRONG]
    )
    assert [p[0][0] for p in placed] == [len(t) for t in texts]


def test_forced_dataset_errors_name_the_example(nli):
    rewards = Rewards([{"kind": "alce_correctness", "dataset": "asqa"}])
    with pytest.raises(ValueError) as e:
        rewards.score([example(id="x-00003")], ["1889."])
    assert str(e.value) == "rewards[0]: alce_correctness (asqa): example 'x-00003' has no qa_pairs"
    rewards = Rewards([{"kind": "alce_correctness", "nli": "nli"}], nli={"nli": nli})
    with pytest.raises(ValueError, match=r"rewards\[0\]: alce_correctness \(auto\): example "):
        rewards.score([example(id="x-00004")], ["1889."])


# ---- holistic mode, weights, placement on tokens ------------------------------------------


def test_holistic_moves_the_total_to_the_end(nli):
    specs = [
        {"kind": "citation_recall", "nli": "nli"},
        {"kind": "citation_precision", "nli": "nli", "weight": 0.5},
    ]
    fine = Rewards(specs, nli={"nli": nli})
    holistic = Rewards([s | {"holistic": True} for s in specs], nli={"nli": nli})
    texts = [RECALL_TEXT, PRECISION_TEXT]
    fine_by, holistic_by = (r.per_source([example()] * 2, texts) for r in (fine, holistic))
    for name in ("citation_recall", "citation_precision"):
        for text, f, h in zip(texts, fine_by[name], holistic_by[name], strict=True):
            assert len(f) > 1
            assert h == approx([(len(text), total(f))])
    assert holistic.totals([example()] * 2, texts) == pytest.approx(
        fine.totals([example()] * 2, texts)
    )


def test_weights_apply(nli):
    text = "The tower was built in 1889 [1]. It rained in Paris [4]."
    rewards = Rewards(
        [
            {"kind": "citation_recall", "nli": "a", "weight": 2.0},
            {"kind": "citation_precision", "nli": "a", "weight": 0.5, "right": 1.0},
        ],
        nli={"a": nli},
    )
    [placed] = rewards.score([example()], [text])
    assert placed == approx(
        [
            (after(text, "1889 [1"), 0.5),
            (after(text, "1889 [1]."), 2 * RIGHT),
            (after(text, "Paris [4"), 0.5 * WRONG),
            (len(text), 2 * WRONG),
        ]
    )


def test_place_rewards_on_tokens(nli):
    tokens = ["Built", " in", " 1889", " [", "1", "].", " It", " snowed", " [", "4", "]."]
    text = "".join(tokens)
    char_ends = [sum(len(t) for t in tokens[: i + 1]) for i in range(len(tokens))]
    rewards = Rewards(
        [
            {"kind": "citation_recall", "nli": "nli"},
            {"kind": "citation_precision", "nli": "nli", "right": 1.0, "wrong": -1.0},
        ],
        nli={"nli": nli},
    )
    [placed] = rewards.score([example()], [text])
    per_token = place_rewards(placed, char_ends)
    expected = [0.0] * len(tokens)
    expected[4] = 1.0  # the "1" of [1]
    expected[5] = RIGHT  # "]." ends the first sentence
    expected[9] = -1.0  # the "4" of [4]
    expected[10] = WRONG  # the last token ends the second
    assert per_token == pytest.approx(expected)


# ---- batching: one prefetch per score call --------------------------------------------


def test_prefetch_once_with_every_pair(nli, scorer):
    texts = [RECALL_TEXT, PRECISION_TEXT]
    CitationPrecision(nli).score([example()] * 2, texts)
    assert len(scorer.calls) == 1
    asked = set(scorer.calls[0])
    # Every pair `entails` read came from that one batch: nothing was scored after it.
    assert nli.calls == len(asked)
    # Recall's joint pairs were among precision's: cached, no call. A new sentence's pair
    # costs one call of one pair.
    CitationRecall(nli).score([example()] * 2, texts)
    assert len(scorer.calls) == 1
    CitationRecall(nli).score([example()], ["Paris is the capital of France [2][5]."])
    assert len(scorer.calls) == 2 and len(scorer.calls[1]) == 1


def test_recall_prefetches_every_sentence(nli, scorer):
    CitationRecall(nli).score([example()] * 2, [RECALL_TEXT, PRECISION_TEXT])
    [batch] = scorer.calls
    hypotheses = [h for _, h in batch]
    # The two sentences with valid citations of RECALL_TEXT, the five of PRECISION_TEXT
    # (its first two are the same pairs, asked once); none for the uncited sentence or
    # those citing a missing document.
    assert len(batch) == 5
    assert "Paris is the capital of France." in hypotheses
    assert "The tower is made of iron." not in hypotheses


def test_eli5_prefetches_every_claim(nli, scorer):
    AlceCorrectness(nli).score([ELI5, ASQA, ELI5], ["The tower.", "1889.", "Iron."])
    [batch] = scorer.calls
    assert len(batch) == 6


# ---- configuration ------------------------------------------------------------------------


def test_unknown_nli_name(nli):
    with pytest.raises(ValueError, match=r"rewards\[1\]\.nli: no NLI judge 'big'"):
        Rewards(
            [{"kind": "length"}, {"kind": "citation_recall", "nli": "big"}],
            nli={"small": nli},
        )
    with pytest.raises(ValueError, match="'big'"):
        Rewards([{"kind": "citation_precision", "nli": "big"}])


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "citation_recall"},
        {"kind": "citation_precision"},
        {"kind": "alce_correctness"},
        {"kind": "alce_correctness", "dataset": "auto"},
        {"kind": "alce_correctness", "dataset": "eli5"},
    ],
)
def test_missing_nli(spec):
    with pytest.raises(ValueError, match=r"^rewards\[0\]\.nli: a .* source names an NLI judge"):
        check_specs([spec], "rewards")
    with pytest.raises(ValueError, match=r"rewards\[0\]\.nli"):
        Rewards([spec])


def test_nli_optional_for_string_matched_datasets():
    for dataset in ("asqa", "qampari"):
        check_specs([{"kind": "alce_correctness", "dataset": dataset}], "rewards")
    with pytest.raises(ValueError, match=r"rewards\[0\]\.dataset: expected auto or one of"):
        check_specs([{"kind": "alce_correctness", "dataset": "nq", "nli": "n"}], "rewards")
    with pytest.raises(ValueError, match=r"rewards\[0\]\.nli: expected the name"):
        check_specs([{"kind": "citation_recall", "nli": 3}], "rewards")
    with pytest.raises(ValueError, match="needs an NLI judge"):
        AlceCorrectness(dataset="eli5")


def test_holistic_allowed_on_every_source():
    for kind in SOURCE_SETTINGS:
        given = {"model": "rm", "pattern": ".*", "nli": "n", "retriever": "r1"}
        spec = {k: v for k, v in given.items() if k in SOURCE_SETTINGS[kind]}
        check_specs([{"kind": kind, "holistic": True, **spec}], "r")
    with pytest.raises(ValueError, match=r"r\[0\]\.holistic: expected true or false"):
        check_specs([{"kind": "length", "holistic": "yes"}], "r")


def test_nli_judges():
    specs = [
        {"kind": "citation_recall", "nli": "a"},
        {"kind": "reward_model", "model": "rm"},
        {"kind": "citation_precision", "nli": "a"},
        {"kind": "alce_correctness", "dataset": "asqa"},
        {"kind": "alce_correctness", "nli": "b"},
    ]
    assert nli_judges(specs) == ["a", "b"]
