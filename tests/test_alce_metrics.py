"""ALCE's metrics (ragtrain.metrics.alce) against a second, independent implementation.

The reference implementation below is written from ALCE's published evaluation
(princeton-nlp/ALCE eval.py: exact_presence / compute_str_em, compute_qampari_f1,
compute_claims, compute_rouge, compute_autoais with at_most_citations=3, compute_len),
with its own citation regexes, sentence splitting and normalisation; it does not import
ragtrain.metrics.alce or ragtrain.data.citations. It follows the conventions that
ragtrain.metrics.alce documents where it departs from ALCE's code: `[k, j]` cites both
documents, citations after a full stop belong to the sentence before them, a statement's
citations are counted once each, the whole answer is scored (not its first line).

NLI is a deterministic stand-in in both implementations: a premise entails a hypothesis
iff every lower-cased word of the hypothesis (punctuation dropped) occurs in the
premise. NLI models are not what is tested here; which pairs are asked, and how the
answers combine into recall and precision, are.
"""

from __future__ import annotations

import json
import re
import string
import sys
import types
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from ragtrain.judges.nli import Entailment
from ragtrain.metrics.alce import (
    aggregate_alce,
    citation_scores,
    claims_nli,
    mauve_texts,
    nli_pairs,
    normalize_answer,
    qampari_items,
    qampari_scores,
    rouge_lsum,
    score_alce,
    split_sentences,
    str_em,
    str_hit,
)

FIXTURE = Path(__file__).parent / "fixtures" / "alce_predictions.json"
TOL = 1e-9


# --- The stand-in NLI ------------------------------------------------------------------


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def stand_in_entails(premise: str, hypothesis: str) -> bool:
    return _words(hypothesis) <= _words(premise)


class StandInScorer:
    """The stand-in as an NLI scorer (probability 1 or 0), recording what it is asked."""

    def __init__(self):
        self.asked: list[tuple[str, str]] = []

    def scores(self, premises, hypotheses):
        self.asked += list(zip(premises, hypotheses, strict=True))
        return [float(stand_in_entails(p, h)) for p, h in zip(premises, hypotheses, strict=True)]


def entailment() -> Entailment:
    return Entailment(StandInScorer())


# --- The independent reference implementation ------------------------------------------

REF_CITE = re.compile(r"\[\d+(?:\s*,\s*\d+)*\]")


def ref_cited(text: str) -> list[int]:
    return [int(n) for group in REF_CITE.findall(text) for n in re.findall(r"\d+", group)]


def ref_strip(text: str) -> str:
    text = re.sub(r"\s*" + REF_CITE.pattern, "", text)
    return re.sub(r"\s+([.,!?;:])", r"\1", text).strip()


def ref_normalize(text: str) -> str:
    text = text.lower()
    text = "".join(c for c in text if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def ref_sentences(text: str) -> list[str]:
    # Citations written after a stop move before it, then cut after each stop.
    text = re.sub(r"([.!?]+)((?:\s*\[\d+(?:\s*,\s*\d+)*\])+)(?=\s|$)", r"\2\1", text)
    parts = re.split(r"(?<=[.!?])\s+|\n+", text.strip())
    return [p for p in parts if re.search(r"\w", ref_strip(p))]


def ref_doc(doc: dict) -> str:
    return "Title: %s\n%s" % (doc["title"], doc["text"])  # noqa: UP031 (as ALCE writes it)


def ref_autoais(item: dict, output: str, qampari: bool) -> dict | None:
    docs = item["docs"]
    if qampari:
        # Commas inside a citation bracket ("[1, 2]") do not end an item.
        items = re.split(r",(?![^\[\]]*\])", output.rstrip().rstrip(".").rstrip(","))
        sents = [item["question"] + " " + x.strip() for x in items]
    else:
        sents = ref_sentences(output)
    if not sents:
        return None  # ALCE: `continue`, the example leaves the citation means
    entail = entail_prec = total_citations = 0
    for sent in sents:
        target = ref_strip(sent).strip()
        ref = list(dict.fromkeys(ref_cited(sent)))
        if not ref or any(not 1 <= r <= len(docs) for r in ref):
            continue  # unsupported; no citation enters the precision denominator
        ref = ref[:3]
        total_citations += len(ref)
        joint = stand_in_entails("\n".join(ref_doc(docs[r - 1]) for r in ref), target)
        entail += joint
        if joint and len(ref) > 1:
            for r in ref:
                if stand_in_entails(ref_doc(docs[r - 1]), target):
                    entail_prec += 1
                    continue
                rest = [x for x in ref if x != r]
                if not stand_in_entails("\n".join(ref_doc(docs[x - 1]) for x in rest), target):
                    entail_prec += 1
        else:
            entail_prec += joint
    return {
        "citation_rec": entail / len(sents),
        "citation_prec": entail_prec / total_citations if total_citations else 0.0,
    }


def ref_qampari(output: str, groups: list[list[str]]) -> dict:
    preds = [ref_normalize(x.strip()) for x in output.rstrip().rstrip(".").rstrip(",").split(",")]
    preds = [p for p in preds if p]
    answers = [[ref_normalize(x) for x in group] for group in groups]
    flat = [x for group in answers for x in group]
    prec = sum(p in flat for p in preds) / len(preds) if preds else 0.0
    hits = sum(any(x in preds for x in group) for group in answers)
    rec = hits / len(answers)
    rec5 = min(5, hits) / min(5, len(answers))

    def f1(p, r):
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)

    return {
        "qampari_prec": prec,
        "qampari_rec": rec,
        "qampari_rec_top5": rec5,
        "qampari_f1": f1(prec, rec),
        "qampari_f1_top5": f1(prec, rec5),
    }


def ref_rouge(prediction: str, reference: str) -> float:
    def lines(text):
        parts = re.split(r"(?<=[.!?])\s+|\n+", ref_strip(text).lower())
        return "\n".join(p.strip() for p in parts if p.strip())

    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    return scorer.score(lines(reference), lines(prediction))["rougeLsum"].fmeasure


def ref_score(item: dict) -> dict:
    output = item["prediction"]
    normalized = ref_strip(output)
    if item.get("qa_pairs"):
        kind = "asqa"
    elif item.get("answer_groups"):
        kind = "qampari"
    else:
        kind = "eli5"
    out: dict = {"kind": kind}
    if kind == "asqa":
        context = ref_normalize(normalized)
        found = [
            any(ref_normalize(a) in context for a in pair["short_answers"])
            for pair in item["qa_pairs"]
        ]
        out["str_em"] = sum(found) / len(found)
        out["str_hit"] = float(sum(found) == len(found))
    elif kind == "qampari":
        out.update(ref_qampari(normalized, item["answer_groups"]))
    else:
        claims = item["claims"]
        out["claims_nli"] = sum(stand_in_entails(normalized, c) for c in claims) / len(claims)
    if kind != "qampari" and item.get("reference"):
        out["rougeLsum"] = ref_rouge(output, item["reference"])
    out.update(ref_autoais(item, output, kind == "qampari") or {})
    out["length"] = float(len(normalized.split()))
    return out


def ref_aggregate(scores: list[dict]) -> dict:
    keys = {k for s in scores for k in s if k != "kind"}
    out = {k: sum(s[k] for s in scores if k in s) / sum(k in s for s in scores) for k in keys}
    out["n"] = len(scores)
    for kind in ("asqa", "qampari", "eli5"):
        out[f"n_{kind}"] = sum(s["kind"] == kind for s in scores)
    return out


# --- 1. Agreement on the fixture -------------------------------------------------------


@pytest.fixture(scope="module")
def items() -> list[dict]:
    return json.loads(FIXTURE.read_text())


def _agree(ours: dict, theirs: dict, where: str) -> None:
    assert set(ours) == set(theirs), where
    for key, value in theirs.items():
        if isinstance(value, float):
            assert ours[key] == pytest.approx(value, abs=TOL), f"{where}: {key}"
        else:
            assert ours[key] == value, f"{where}: {key}"


def test_fixture_covers_the_cases(items):
    kinds = [ref_score(item)["kind"] for item in items]
    assert 12 <= len(items) <= 20
    assert {"asqa", "qampari", "eli5"} == set(kinds)
    predictions = " ".join(item["prediction"] for item in items)
    assert re.search(r"\[\d+, \d+\]", predictions)  # [k, j]
    assert re.search(r"\]\[", predictions)  # [k][j]
    assert re.search(r"\. \[\d", predictions)  # after the full stop
    assert "[7]" in predictions
    assert any(not item["prediction"].strip() for item in items)


def test_per_example_scores_agree_with_the_reference(items):
    for item in items:
        ours = score_alce(item, item["prediction"], entailment())
        _agree(ours, ref_score(item), item["id"])


def test_aggregate_agrees_with_the_reference(items):
    judge = entailment()
    scores = [score_alce(item, item["prediction"], judge) for item in items]
    ours = aggregate_alce(scores)
    assert ours.pop("mauve") is None and "mauve_reason" in ours
    ours.pop("mauve_reason")
    _agree(ours, ref_aggregate([ref_score(item) for item in items]), "aggregate")


def test_fixture_values_by_hand(items):
    """A few per-example values worked out by hand, to catch both implementations
    agreeing on a mistake."""
    by_id = {item["id"]: score_alce(item, item["prediction"], entailment()) for item in items}
    assert by_id["asqa-multi-cite"]["citation_prec"] == 0.5
    assert by_id["asqa-after-stop-out-of-range"]["citation_rec"] == 0.5
    assert by_id["asqa-after-stop-out-of-range"]["citation_prec"] == 1.0
    assert by_id["asqa-over-citation"]["citation_prec"] == pytest.approx(1 / 6)
    assert by_id["qampari-top5"]["citation_rec"] == pytest.approx(4 / 6)
    assert by_id["qampari-top5"]["citation_prec"] == pytest.approx(4 / 7)
    assert by_id["qampari-top5"]["qampari_f1"] == pytest.approx(12 / 13)
    assert by_id["eli5-leave-one-out"]["citation_prec"] == pytest.approx(2 / 5)
    assert "citation_rec" not in by_id["asqa-empty"]
    assert by_id["qampari-empty"]["citation_rec"] == 0.0


def test_prefetched_pairs_cover_every_question(items):
    scorer = StandInScorer()
    judge = Entailment(scorer)
    judge.prefetch(pair for item in items for pair in nli_pairs(item, item["prediction"]))
    prefetched = set(scorer.asked)
    calls = judge.calls
    for item in items:
        score_alce(item, item["prediction"], judge)
    assert judge.calls == calls  # nothing left to score
    # And every pair scoring asks is one nli_pairs names.
    for item in items:
        fresh = StandInScorer()
        score_alce(item, item["prediction"], Entailment(fresh))
        assert set(fresh.asked) <= prefetched
        assert set(fresh.asked) <= set(nli_pairs(item, item["prediction"]))


# --- 2. Unit tests, values by hand -----------------------------------------------------

DOCS = [
    {"title": "Bridge", "text": "The bridge was built in 1871."},
    {"title": "River", "text": "The river floods."},
    {"title": "Bridge", "text": "The bridge was rebuilt in 1958."},
]


def test_normalize_answer():
    assert normalize_answer("The  Orrin, Bridge!") == "orrin bridge"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("") == ""


def test_str_em_and_hit():
    pairs = [{"short_answers": ["1871"]}, {"short_answers": ["1958", "nineteen fifty-eight"]}]
    assert str_em("Built in 1871 [1].", pairs) == 0.5
    assert str_hit("Built in 1871 [1].", pairs) == 0.0
    assert str_em("Built in 1871, rebuilt in Nineteen Fifty-Eight.", pairs) == 1.0
    assert str_hit("Built in 1871, rebuilt in Nineteen Fifty-Eight.", pairs) == 1.0
    # ALCE's presence is a substring test of normalised text.
    assert str_em("It was 18710 years ago", pairs) == 0.5
    # Citations are removed first: "[1958]" is not a citation, but "[2]" is.
    assert str_em("Built in 2 [2]", [{"short_answers": ["2"]}]) == 1.0
    assert str_em("Built [2]", [{"short_answers": ["2"]}]) == 0.0


def test_qampari_scores_by_hand():
    groups = [["Alder Brook", "Alder"], ["Bell Run"], ["Cold Creek"]]
    assert qampari_items("Alder Brook [1], The Bell Run [2, 3], Dry Creek, Alder.") == [
        "alder brook",
        "bell run",
        "dry creek",
        "alder",
    ]
    got = qampari_scores("Alder Brook [1], The Bell Run [2, 3], Dry Creek, Alder.", groups)
    assert got["qampari_prec"] == 0.75
    assert got["qampari_rec"] == pytest.approx(2 / 3)
    assert got["qampari_rec_top5"] == pytest.approx(2 / 3)
    assert got["qampari_f1"] == pytest.approx(12 / 17)
    # Repeated items count each time (ALCE keeps them).
    assert qampari_scores("Dry Creek, Dry Creek, Alder", groups)["qampari_prec"] == 1 / 3
    assert qampari_scores("", groups) == dict.fromkeys(got, 0.0)
    assert qampari_scores(" ,. ", groups)["qampari_prec"] == 0.0
    seven = [[f"item {i}"] for i in range(7)]
    top = qampari_scores(", ".join(f"item {i}" for i in range(6)), seven)
    assert top["qampari_rec"] == pytest.approx(6 / 7)
    assert top["qampari_rec_top5"] == 1.0
    assert top["qampari_f1_top5"] == 1.0
    with pytest.raises(ValueError):
        qampari_scores("x", [])


def test_claims_nli_by_hand():
    claims = ["Ice floats on water.", "Fish sleep in winter."]
    assert claims_nli("Ice floats on water [1].", claims, entailment()) == 0.5
    assert claims_nli("", claims, entailment()) == 0.0


def test_citations_single_and_uncited():
    judge = entailment()
    got = citation_scores("The bridge was built in 1871 [1]. It is old.", DOCS, judge)
    assert got == {"citation_rec": 0.5, "citation_prec": 1.0}
    got = citation_scores("The bridge was built in 1871 [2].", DOCS, judge)
    assert got == {"citation_rec": 0.0, "citation_prec": 0.0}


def test_out_of_range_citation_is_unsupported_not_an_error():
    judge = entailment()
    got = citation_scores("The bridge was built in 1871 [1]. The river floods [7].", DOCS, judge)
    # Unsupported for recall; its citation stays out of precision's denominator.
    assert got == {"citation_rec": 0.5, "citation_prec": 1.0}
    # Out of range anywhere in the sentence, even past the first 3, and [0].
    got = citation_scores("The bridge was built in 1871 [1][2][3][9].", DOCS, judge)
    assert got == {"citation_rec": 0.0, "citation_prec": 0.0}
    assert citation_scores("The river floods [0].", DOCS, judge)["citation_rec"] == 0.0
    assert citation_scores("The river floods [1].", [], judge)["citation_rec"] == 0.0


def test_irrelevant_and_joint_citations():
    judge = entailment()
    # [2] is irrelevant: [1] alone entails; [3] alone does not but [1] without it does.
    got = citation_scores("The bridge was built in 1871 [1][2][3].", DOCS, judge)
    assert got == {"citation_rec": 1.0, "citation_prec": pytest.approx(1 / 3)}
    # Both needed: neither alone entails, neither is irrelevant.
    joint = citation_scores("The bridge was built in 1871, the river floods [1, 2].", DOCS, judge)
    assert joint == {"citation_rec": 1.0, "citation_prec": 1.0}
    # Not jointly entailed: all its citations are wrong.
    wrong = citation_scores("The bridge was built in 1999 [1][2].", DOCS, judge)
    assert wrong == {"citation_rec": 0.0, "citation_prec": 0.0}
    # A document cited twice counts once.
    twice = citation_scores("The bridge was built in 1871 [1][1].", DOCS, judge)
    assert twice == {"citation_rec": 1.0, "citation_prec": 1.0}


def test_over_citation_keeps_the_first_three():
    docs = [*DOCS, {"title": "Fish", "text": "Fish swim."}]
    judge = entailment()
    # Only [4] supports; it is the 4th citation, so not judged.
    got = citation_scores("Fish swim [1][2][3][4].", docs, judge)
    assert got == {"citation_rec": 0.0, "citation_prec": 0.0}
    got = citation_scores("Fish swim [4][1][2][3].", docs, judge)
    assert got == {"citation_rec": 1.0, "citation_prec": pytest.approx(1 / 3)}


def test_citation_after_full_stop_and_qampari_statements():
    judge = entailment()
    got = citation_scores("The bridge was built in 1871. [1] The river floods. [2]", DOCS, judge)
    assert got == {"citation_rec": 1.0, "citation_prec": 1.0}
    docs = [{"title": "Rivers of Orrin", "text": "Tay and Dee."}]
    got = citation_scores("Tay [1], Dee [1], Spey [1].", docs, judge, "qampari", "Rivers of Orrin?")
    assert got == {"citation_rec": pytest.approx(2 / 3), "citation_prec": pytest.approx(2 / 3)}


def test_empty_prediction_citations():
    judge = entailment()
    assert citation_scores("", DOCS, judge) == {}
    assert citation_scores("  ", DOCS, judge, "qampari", "Q?") == {
        "citation_rec": 0.0,
        "citation_prec": 0.0,
    }


def _asqa(**over) -> dict:
    example = {
        "id": "q-17",
        "question": "When was the bridge built?",
        "qa_pairs": [{"question": "When?", "short_answers": ["1871"]}],
        "docs": DOCS,
        "reference": "The bridge was built in 1871.",
    }
    return {**example, **over}


def test_score_alce_keys_by_kind():
    judge = entailment()
    asqa = score_alce(_asqa(), "The bridge was built in 1871 [1].", judge)
    assert asqa == {
        "kind": "asqa",
        "str_em": 1.0,
        "str_hit": 1.0,
        "rougeLsum": 1.0,
        "citation_rec": 1.0,
        "citation_prec": 1.0,
        "length": 6.0,
    }
    qampari = score_alce(
        {"id": "q", "question": "Q?", "answer_groups": [["a"]], "docs": DOCS}, "a", judge
    )
    assert qampari["kind"] == "qampari" and "rougeLsum" not in qampari
    assert {"qampari_prec", "qampari_f1_top5", "citation_rec"} <= set(qampari)
    eli5 = score_alce({"id": "e", "question": "Q?", "claims": ["x"]}, "x y [1].", judge)
    assert eli5 == {
        "kind": "eli5",
        "claims_nli": 1.0,
        "citation_rec": 0.0,
        "citation_prec": 0.0,
        "length": 2.0,
    }


@pytest.mark.parametrize(
    ("qa_pairs", "field"),
    [
        ("1871", "'qa_pairs'"),
        ([{"question": "When?"}], "'qa_pairs[0]'"),
        ([{"short_answers": ["1871"]}, {"short_answers": "1958"}], "'qa_pairs[1].short_answers'"),
        ([{"short_answers": [1871]}], "'qa_pairs[0].short_answers'"),
    ],
)
def test_malformed_qa_pairs_name_the_example_and_field(qa_pairs, field):
    example = _asqa(qa_pairs=qa_pairs)
    with pytest.raises(ValueError, match=r"'q-17'.*" + re.escape(field)):
        score_alce(example, "Built in 1871.", entailment())


def test_malformed_answer_groups_and_claims():
    with pytest.raises(ValueError, match=r"'q-2'.*'answer_groups\[0\]'"):
        score_alce({"id": "q-2", "answer_groups": ["Alder Brook"]}, "Alder", entailment())
    with pytest.raises(ValueError, match=r"'e-3'.*'claims'"):
        nli_pairs({"id": "e-3", "claims": "Ice floats."}, "Ice")


def test_nli_pairs_by_hand():
    example = {"id": "e", "question": "Q?", "claims": ["Ice floats."], "docs": DOCS}
    pairs = nli_pairs(example, "Ice floats [1][2]. Unsupported [7].")
    doc = [f"Title: {d['title']}\n{d['text']}" for d in DOCS]
    assert pairs == [
        ("Ice floats. Unsupported.", "Ice floats."),
        (f"{doc[0]}\n{doc[1]}", "Ice floats."),
        (doc[0], "Ice floats."),
        (doc[1], "Ice floats."),
    ]


# --- 3. ROUGE-Lsum and aggregation -----------------------------------------------------


def test_rouge_lsum():
    text = "The bridge was built in 1871. It was rebuilt in 1958."
    assert rouge_lsum(text, text) == 1.0
    assert rouge_lsum("The bridge was built in 1871 [1]. It was rebuilt in 1958 [2].", text) == 1.0
    assert rouge_lsum("", text) == 0.0
    assert 0.0 < rouge_lsum("The bridges were built.", text) < 1.0
    assert rouge_lsum("Nothing alike here", text) == 0.0


def test_split_sentences():
    assert split_sentences("One. Two!  Three?\nFour\n\nfive 3.5 six") == [
        "One.",
        "Two!",
        "Three?",
        "Four",
        "five 3.5 six",
    ]
    assert split_sentences("  ") == []


def test_aggregate_means_over_examples_that_have_the_key():
    scores = [
        {"kind": "asqa", "str_em": 1.0, "citation_rec": 0.5, "length": 4.0},
        {"kind": "asqa", "str_em": 0.0, "length": 0.0},
        {"kind": "eli5", "claims_nli": 0.25, "citation_rec": 1.0, "length": 8.0},
    ]
    got = aggregate_alce(scores)
    assert got["str_em"] == 0.5
    assert got["citation_rec"] == 0.75
    assert got["claims_nli"] == 0.25
    assert got["length"] == 4.0
    assert (got["n"], got["n_asqa"], got["n_qampari"], got["n_eli5"]) == (3, 2, 0, 1)
    assert got["mauve"] is None
    assert "not installed" in got["mauve_reason"]
    assert "qampari_f1" not in got


def test_mauve_when_the_package_imports(monkeypatch):
    seen = {}

    def compute_mauve(p_text, q_text, **kwargs):
        seen.update(p=p_text, q=q_text, **kwargs)
        return types.SimpleNamespace(mauve=0.875)

    monkeypatch.setitem(sys.modules, "mauve", types.SimpleNamespace(compute_mauve=compute_mauve))
    example = _asqa(reference="Built in 1871.")
    texts = [mauve_texts(example, "Built in 1871 [1]."), None]
    got = aggregate_alce([{"kind": "asqa"}], mauve=texts)
    assert got["mauve"] == 0.875 and "mauve_reason" not in got
    assert seen["p"] == ["When was the bridge built? Built in 1871"]
    assert seen["q"] == ["When was the bridge built? Built in 1871"]
    assert seen["featurize_model_name"] == "gpt2-large"
    assert aggregate_alce([], mauve=None)["mauve"] is None
    assert mauve_texts({"answer_groups": [["a"]], "reference": "a"}, "a") is None
