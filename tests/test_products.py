"""SFT data, preference pairs and the dev split, from hand-made judged samples."""

import random

import pytest

from ragtrain.generation.judge import assign_splits, dev_ids, judge_record
from ragtrain.generation.products import by_split, preference_pairs, sft_data
from ragtrain.metrics.qa import is_refusal, normalize_answer


def split(records, params, key="id"):
    """Held-out questions chosen as the judge stage does, then records sorted by them."""
    questions = [{"id": q} for q in dict.fromkeys(r[key] for r in records)]
    return by_split(records, assign_splits(questions, params), key)


def judged(rid, answers, texts):
    """A judged record; num_tokens is the word count."""
    prompt = [{"role": "user", "content": f"question {rid}"}]
    samples = [{"text": t, "num_tokens": len(t.split())} for t in texts]
    return judge_record({"id": rid, "answers": answers, "prompt": prompt, "samples": samples})


def texts(records, field):
    return [r[field][0]["content"] for r in records]


def test_sft_selects_shortest_or_first_correct_sample():
    record = judged("q", ["Paris"], ["Rome", "It was Paris, the capital", "Paris"])
    assert texts(sft_data([record], {"select": "shortest"})[0], "completion") == ["Paris"]
    first = sft_data([record], {"select": "first"})[0]
    assert texts(first, "completion") == ["It was Paris, the capital"]


def test_sft_picks_a_refusal_on_unanswerable():
    record = judged("q", [], ["Paris", "I don't know.", "Rome"])
    (out,), stats = sft_data([record], {})
    assert out["completion"] == [{"role": "assistant", "content": "I don't know."}]
    assert out["source"] == "sample" and out["answerable"] is False
    assert stats == {"n": 1, "sources": {"sample": 1}}


def test_sft_record_format():
    record = judged("q1", ["Paris"], ["Paris"])
    (out,), _ = sft_data([record], {})
    assert out["id"] == "q1"
    assert out["prompt"] == record["prompt"]
    assert out["completion"] == [{"role": "assistant", "content": "Paris"}]
    assert out["answerable"] is True


def test_sft_gold_fallback_or_skip():
    records = [
        judged("a", ["Paris", "paris, France"], ["Rome", "I don't know."]),
        judged("u", [], ["Rome"]),
    ]
    out, stats = sft_data(records, {"refusal": "Not in the documents."})
    assert texts(out, "completion") == ["Paris", "Not in the documents."]
    assert [r["source"] for r in out] == ["gold", "gold"]
    assert stats["sources"] == {"gold": 2}
    out, stats = sft_data(records, {"gold_fallback": False})
    assert out == []
    assert stats == {"n": 0, "sources": {"skipped": 2}}


def test_sft_bad_select():
    with pytest.raises(ValueError, match="select"):
        sft_data([judged("q", ["Paris"], ["Paris"])], {"select": "longest"})


def test_pairs_on_answerable_question():
    samples = ["The city of Paris", "Rome", "I don't know.", "Paris", "Berlin"]
    pairs, stats = preference_pairs([judged("q", ["Paris"], samples)], {"pairs_per_example": 3})
    assert list(zip(texts(pairs, "chosen"), texts(pairs, "rejected"), strict=True)) == [
        ("Paris", "Rome"),  # shortest correct first; incorrect answers before refusals
        ("The city of Paris", "Berlin"),
        ("Paris", "I don't know."),
    ]
    assert {p["kind"] for p in pairs} == {"answer"}
    assert stats["pairs"] == {"answer/sample": 3}


def test_pairs_per_example_caps_the_count():
    samples = ["Paris", "Rome", "Berlin", "Madrid", "I don't know."]
    for cap in (1, 2, 4):
        pairs, _ = preference_pairs([judged("q", ["Paris"], samples)], {"pairs_per_example": cap})
        assert len(pairs) == cap


def test_pairs_on_unanswerable_question():
    samples = ["Paris", "I don't know.", "The documents do not mention it", "Rome"]
    pairs, stats = preference_pairs([judged("u", [], samples)], {"pairs_per_example": 5})
    assert len(pairs) == 2
    assert all(is_refusal(t) for t in texts(pairs, "chosen"))
    assert texts(pairs, "rejected") == ["Paris", "Rome"]
    assert {p["kind"] for p in pairs} == {"refusal"}
    assert stats["pairs"] == {"refusal/sample": 2}


def test_duplicate_samples_give_one_pair():
    samples = ["Rome", "rome.", "Paris", "the Paris", "Rome"]
    pairs, _ = preference_pairs([judged("q", ["Paris"], samples)], {"pairs_per_example": 5})
    assert len(pairs) == 1
    assert (texts(pairs, "chosen"), texts(pairs, "rejected")) == (["Paris"], ["Rome"])


def test_no_pair_where_chosen_equals_rejected_after_normalisation():
    # "" is a refusal and "." a (made-up) answer, yet both normalise to "".
    pairs, stats = preference_pairs([judged("u", [], ["", "."])], {})
    assert pairs == []
    assert stats["questions_without_pair"] == 1


def test_gold_fallback_becomes_chosen():
    records = [judged("a", ["Paris"], ["Rome", "Berlin"]), judged("u", [], ["Rome"])]
    pairs, stats = preference_pairs(records, {"refusal": "Not in the documents."})
    assert texts(pairs, "chosen") == ["Paris", "Paris", "Not in the documents."]
    assert texts(pairs, "rejected") == ["Rome", "Berlin", "Rome"]
    assert {p["source"] for p in pairs} == {"gold"}
    assert stats["pairs"] == {"answer/gold": 2, "refusal/gold": 1}
    pairs, stats = preference_pairs(records, {"gold_fallback": False})
    assert pairs == [] and stats["questions_without_pair"] == 2


def test_only_right_samples_give_no_pair():
    records = [judged("a", ["Paris"], ["Paris", "Paris."]), judged("u", [], ["I don't know."])]
    pairs, stats = preference_pairs(records, {})
    assert pairs == []
    assert stats == {
        "n": 0,
        "pairs": {},
        "questions_with_pairs": 0,
        "questions_without_pair": 2,
    }


def test_pair_record_format():
    record = judged("q7", ["Paris"], ["Paris", "Rome", "Berlin"])
    pairs, stats = preference_pairs([record], {})
    assert [p["id"] for p in pairs] == ["q7/0", "q7/1"]
    for p in pairs:
        assert p["example_id"] == "q7"
        assert p["prompt"] == record["prompt"]
        for field in ("chosen", "rejected"):
            assert [m["role"] for m in p[field]] == ["assistant"]
        assert normalize_answer(p["chosen"][0]["content"]) != normalize_answer(
            p["rejected"][0]["content"]
        )
    assert stats["questions_with_pairs"] == 1


def make_pairs(n_examples=50):
    return [
        {"id": f"e{i}/{j}", "example_id": f"e{i}"}
        for i in range(n_examples)
        for j in range(i % 3 + 1)
    ]


def test_split_keeps_an_examples_pairs_together():
    records = make_pairs()
    train, dev = split(records, {"dev_fraction": 0.2, "seed": 1}, key="example_id")
    dev_examples = {r["example_id"] for r in dev}
    assert len(dev_examples) == 10
    assert not dev_examples & {r["example_id"] for r in train}
    assert sorted(map(str, train + dev)) == sorted(map(str, records))
    assert [r for r in records if r in train] == train  # order kept


def test_split_is_deterministic_and_seeded():
    records = make_pairs()
    params = {"dev_fraction": 0.2, "seed": 1}
    assert split(records, params, key="example_id") == split(records, params, key="example_id")
    shuffled = random.Random(0).sample(records, len(records))
    _, dev = split(shuffled, params, key="example_id")
    assert {r["id"] for r in dev} == {r["id"] for r in split(records, params, "example_id")[1]}
    other = split(records, {"dev_fraction": 0.2, "seed": 2}, key="example_id")[1]
    assert {r["id"] for r in other} != {r["id"] for r in dev}


def test_split_by_id_and_no_dev():
    records = [{"id": f"q{i}"} for i in range(40)]
    assert len(split(records, {"dev_fraction": 0.1})[1]) == 4
    train, dev = split(records, {"dev_fraction": 0})
    assert dev == [] and train == records


def test_dev_ids_small_and_bad_fraction():
    assert len(dev_ids(["a", "b"], 0.1, 0)) == 1
    assert len(dev_ids(["a", "b"], 0.9, 0)) == 1  # never every question
    assert dev_ids(["a"], 0.1, 0) == set()
    for bad in (1, 1.5, -0.1):
        with pytest.raises(ValueError, match="dev_fraction"):
            dev_ids(["a", "b"], bad, 0)


def test_sft_data_and_pairs_hold_out_the_same_questions():
    records = [judged(f"q{i}", ["Paris"], ["Paris", "London"]) for i in range(30)]
    records = assign_splits(records, {"dev_fraction": 0.2, "seed": 5})
    sft, _ = sft_data(records, {})
    pairs, _ = preference_pairs(records, {})
    sft_train, sft_dev = by_split(sft, records, "id")
    _, pairs_dev = by_split(pairs, records, "example_id")
    assert len(sft_dev) == 6
    assert {r["id"] for r in sft_dev} == {r["example_id"] for r in pairs_dev}
    assert not {r["id"] for r in sft_train} & {r["example_id"] for r in pairs_dev}
