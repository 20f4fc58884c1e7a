import math

import numpy as np
import pytest

from ragtrain.core.records import RecordError
from ragtrain.metrics.ir import evaluate_run, read_qrels, read_run, write_qrels, write_run


def test_one_relevant_doc_at_rank_two():
    qrels = {"q1": {"d1": 1}}
    run = {"q1": {"d0": 3.0, "d1": 2.0, "d2": 1.0}}
    m = evaluate_run(qrels, run)
    assert m["ndcg@10"] == round(1 / math.log2(3), 4)
    assert m["mrr@10"] == 0.5
    assert m["map@10"] == 0.5
    assert m["recall@100"] == 1.0
    assert m["n"] == 1


def test_graded_relevance_uses_linear_gains():
    # d2 (grade 1) first, d1 (grade 2) second: DCG = 1 + 2/log2(3), ideal = 2 + 1/log2(3).
    qrels = {"q": {"d1": 2, "d2": 1}}
    m = evaluate_run(qrels, {"q": {"d2": 2.0, "d1": 1.0}})
    expected = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert m["ndcg@10"] == round(expected, 4)
    assert m["mrr@10"] == 1.0
    assert m["recall@100"] == 1.0


def test_hit_identical_to_query_id_is_ignored():
    qrels = {"q1": {"d1": 1}}
    run = {"q1": {"q1": 9.0, "d1": 2.0}}
    assert evaluate_run(qrels, run)["mrr@10"] == 1.0
    assert evaluate_run(qrels, run, ignore_identical_ids=False)["mrr@10"] == 0.5


def test_relevant_doc_at_rank_eleven_counts_for_recall_only():
    run = {"q": {f"n{i:02d}": 100.0 - i for i in range(10)} | {"rel": 50.0}}
    m = evaluate_run({"q": {"rel": 1}}, run)
    assert m["recall@100"] == 1.0
    assert m["mrr@10"] == 0.0
    assert m["ndcg@10"] == 0.0


def test_query_without_run_entry_scores_zero_and_counts_in_the_mean():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    run = {"q1": {"d1": 1.0}, "q_unjudged": {"d1": 1.0}}
    means, per = evaluate_run(qrels, run, per_query=True)
    assert means == {"ndcg@10": 0.5, "map@10": 0.5, "recall@100": 0.5, "mrr@10": 0.5, "n": 2}
    assert set(per) == {"q1", "q2"}
    assert per["q2"] == {"ndcg@10": 0.0, "map@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}
    assert per["q1"]["mrr@10"] == 1.0


def test_ties_follow_trec_eval_order_for_every_measure():
    # Equal scores: trec_eval puts the larger doc id first, so "b" is ranked above "a".
    m = evaluate_run({"q": {"a": 1}}, {"q": {"a": 1.0, "b": 1.0}})
    assert m["mrr@10"] == 0.5
    assert m["ndcg@10"] == round(1 / math.log2(3), 4)


def test_numpy_scores_are_accepted_and_bad_values_rejected():
    m = evaluate_run({"q": {"d": 1}}, {"q": {"d": np.float32(0.3)}})
    assert m["mrr@10"] == 1.0
    with pytest.raises(ValueError, match="score should be a number"):
        evaluate_run({"q": {"d": 1}}, {"q": {"d": "high"}})
    with pytest.raises(ValueError, match="grade should be an int"):
        evaluate_run({"q": {"d": 1.5}}, {"q": {"d": 1.0}})
    with pytest.raises(ValueError, match="qrels is empty"):
        evaluate_run({}, {"q": {"d": 1.0}})


def test_qrels_and_run_files_round_trip(tmp_path):
    qrels = {"q1": {"d1": 1, "d2": 2}, "q2": {"d3": 0}}
    write_qrels(tmp_path / "qrels.tsv", qrels)
    text = (tmp_path / "qrels.tsv").read_text()
    assert text.splitlines()[0] == "query-id\tcorpus-id\tscore"
    assert read_qrels(tmp_path / "qrels.tsv") == qrels

    run = {"q1": {"d1": 0.25, "d2": 0.75, "d3": 0.5}, "q2": {"d3": 1.0}}
    write_run(tmp_path / "run.trec", run, tag="bm25")
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert lines[0] == "q1 Q0 d2 1 0.75 bm25"
    assert [line.split()[3] for line in lines[:3]] == ["1", "2", "3"]
    assert read_run(tmp_path / "run.trec") == run
    assert not list(tmp_path.glob(".*"))  # no temp file left behind


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        ("q1\td1\t1\n", 1, "expected the header"),
        ("query-id\tcorpus-id\tscore\nq1\td1\n", 2, "expected 3 tab-separated fields, got 2"),
        ("query-id\tcorpus-id\tscore\nq1\td1\t1\n\nq1\td2\thigh\n", 4, "should be an integer"),
        ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t2\n", 3, "first on line 2"),
    ],
)
def test_qrels_errors_name_file_and_line(tmp_path, content, line, reason):
    path = tmp_path / "qrels.tsv"
    path.write_text(content)
    with pytest.raises(RecordError, match=reason) as err:
        read_qrels(path)
    assert str(err.value).startswith(f"{path}:{line}: ")


def test_run_errors_name_file_and_line(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 x t\n")
    with pytest.raises(RecordError, match=rf"^{path}:2: .*score"):
        read_run(path)
    path.write_text("q1 Q0 d1 1 0.5\n")
    with pytest.raises(RecordError, match=rf"^{path}:1: expected 6 fields"):
        read_run(path)
    with pytest.raises(ValueError, match="separator"):
        write_run(tmp_path / "bad.trec", {"q 1": {"d": 1.0}})


def test_measures_at_cutoffs_equal_a_hand_computation_and_pytrec_eval():
    import pytrec_eval

    # q1: relevant a (rank 2) and b (rank 4); q2: its one relevant document first.
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 1}}
    run = {"q1": {"x": 4.0, "a": 3.0, "y": 2.0, "b": 1.0}, "q2": {"c": 2.0, "z": 1.0}}
    means, per = evaluate_run(qrels, run, per_query=True, cutoffs=[1, 3, 5])
    ideal = 1 + 1 / math.log2(3)
    q1 = {
        "ndcg@1": 0.0, "map@1": 0.0, "recall@1": 0.0, "mrr@1": 0.0,
        "ndcg@3": (1 / math.log2(3)) / ideal, "map@3": (1 / 2) / 2, "recall@3": 0.5,
        "mrr@3": 0.5,
        "ndcg@5": (1 / math.log2(3) + 1 / math.log2(5)) / ideal, "map@5": (1 / 2 + 2 / 4) / 2,
        "recall@5": 1.0, "mrr@5": 0.5,
    }  # fmt: skip
    for name, value in q1.items():
        assert per["q1"][name] == pytest.approx(value), name
        assert per["q2"][name] == pytest.approx(1.0), name
        assert means[name] == round((value + 1.0) / 2, 4), name
    # The same numbers pytrec_eval gives asked directly.
    direct = pytrec_eval.RelevanceEvaluator(
        qrels, {"ndcg_cut.1,3,5", "map_cut.1,3,5", "recall.1,3,5"}
    ).evaluate(run)
    for k in (1, 3, 5):
        for ours, theirs in (("ndcg", "ndcg_cut"), ("map", "map_cut"), ("recall", "recall")):
            assert per["q1"][f"{ours}@{k}"] == pytest.approx(direct["q1"][f"{theirs}_{k}"])
    # The headline measures keep their names and values.
    assert list(means)[:4] == ["ndcg@10", "map@10", "recall@100", "mrr@10"]
    assert means["mrr@10"] == evaluate_run(qrels, run)["mrr@10"] == 0.75


def test_cutoffs_name_each_measure_once_and_must_be_positive_integers():
    from ragtrain.metrics.ir import measure_names

    assert measure_names() == ["ndcg@10", "map@10", "recall@100", "mrr@10"]
    names = measure_names([10, 1, 100])
    assert len(names) == len(set(names)) == 4 + 4 * 3 - 4
    assert names[4:7] == ["ndcg@1", "ndcg@100", "map@1"]
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="cutoffs: expected positive integers"):
            evaluate_run({"q": {"d": 1}}, {"q": {"d": 1.0}}, cutoffs=[bad])
