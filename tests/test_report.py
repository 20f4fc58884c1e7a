import csv
import json

from ragtrain.evaluation.report import (
    load_rows,
    paired_differences,
    write_plot,
    write_summary,
    write_table,
)


def metrics(model, retrieval, em):
    return {
        "model": model,
        "dataset": "test",
        "retrieval": retrieval,
        "n": 10,
        "em": em,
        "f1": em,
        "accuracy": em,
        "hits@1": em,
        "refusal_rate": 0.1,
        "correct_refusal": None,
        "false_refusal": 0.0,
        "precision": 0.5,
        "recall": em,
        "pr_f1": None,
        "errors": {"neither": 2, "generation_miss": 3, "retrieval_miss": 1, "both": 4},
        "tokens_per_second": 33.33,
        "by_type": {
            "single": {"n": 10, "em": em, "f1": em, "accuracy": em, "correct_refusal": None}
        },
    }


def test_report_files(tmp_path):
    files = []
    for model, retrieval, em in (
        ("sft", "none", 0.1),
        ("base", "bm25", 0.25),
        ("base", "none", 0.0),
    ):
        path = tmp_path / f"{model}-{retrieval}.json"
        path.write_text(json.dumps(metrics(model, retrieval, em)))
        files.append(str(path))
    stats = tmp_path / "retrieval" / "bm25" / "test" / "stats.json"
    stats.parent.mkdir(parents=True)
    stats.write_text(json.dumps({"k": 3, "answer_recall@3": 0.8, "gold_recall@3": 0.9, "n": 10}))

    rows = load_rows(files)
    assert [(r["model"], r["retrieval"]) for r in rows] == [
        ("base", "bm25"),
        ("base", "none"),
        ("sft", "none"),
    ]
    write_table(rows, tmp_path / "summary.csv")
    table = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert table[0]["em"] == "0.25" and table[0]["correct_refusal"] == ""
    write_summary(rows, [str(stats)], "demo", tmp_path / "summary.md")
    md = (tmp_path / "summary.md").read_text()
    assert (
        "| base | test | bm25 | rules | 10 | 0.250 | 0.250 | 0.250 | 0.250 | 0.500 | 0.250 | -"
        " | 0.100 | - | 0.000 | 33.3 |" in md
    )
    assert "| base | test | bm25 | rules | 2 | 3 | 1 | 4 |" in md
    assert "| bm25 | test | 3 | 0.800 | 0.900 | 10 |" in md
    assert "| base | test | bm25 | single | 10 | 0.250 |" in md
    write_plot(rows, tmp_path / "metrics.png")
    assert (tmp_path / "metrics.png").read_bytes()[:4] == b"\x89PNG"


def _evaluation(folder, model, ems):
    """A metrics.json and its predictions.jsonl with per-question EM `ems`."""
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(
        json.dumps({"model": model, "dataset": "test", "retrieval": "bm25"})
    )
    lines = [
        {"id": str(i), "answers": ["a"], "scores": {"em": em, "accuracy": em}}
        for i, em in enumerate(ems)
    ]
    lines.append({"id": "u", "answers": [], "scores": {"em": 0.0, "accuracy": 0.0}})
    (folder / "predictions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(folder / "metrics.json")


def test_paired_differences_compare_models_question_by_question(tmp_path):
    # sft right on 40 of 50 questions, base on 10: a clear difference; dpo equals sft.
    sft = [1.0] * 40 + [0.0] * 10
    files = [
        _evaluation(tmp_path / "base", "base", [1.0] * 10 + [0.0] * 40),
        _evaluation(tmp_path / "sft", "sft", sft),
        _evaluation(tmp_path / "dpo", "dpo", sft),
    ]
    rows = paired_differences(files, seed=3, resamples=500)
    by_pair = {(r["a"], r["b"], r["metric"]): r for r in rows}
    assert len(rows) == 6  # 3 pairs x (em, accuracy)
    base_sft = by_pair[("base", "sft", "em")]
    assert base_sft["n"] == 50  # the unanswerable question is left out
    assert base_sft["a - b"] == "-0.600"
    low, high = (float(x) for x in base_sft["95% interval"].strip("[]").split(", "))
    assert low < -0.6 < high < 0
    assert by_pair[("dpo", "sft", "em")]["95% interval"] == "[+0.000, +0.000]"
    assert paired_differences(files, seed=3, resamples=500) == rows  # seeded
    write_summary([], [], "demo", tmp_path / "summary.md", paired=rows, resamples=500)
    md = (tmp_path / "summary.md").read_text()
    assert "500 resamples" in md
    assert "| test | bm25 | base | sft | 50 | em | -0.600 |" in md


def test_retrievers_at_cutoffs_get_their_own_table_and_csv_columns(tmp_path):
    rows = [
        {"retriever": "bm25", "kind": "bm25", "dataset": "task", "split": "test",
         "ndcg@10": 0.5, "map@10": 0.4, "recall@100": 0.9, "mrr@10": 0.45, "n": 8,
         "ndcg@1": 0.25, "mrr@1": 0.25, "recall@5": 0.75, "ndcg@3": 0.375},
    ]  # fmt: skip
    write_summary([], [], "demo", tmp_path / "summary.md", retrievers=rows)
    md = (tmp_path / "summary.md").read_text()
    assert "| bm25 | bm25 | task | test | - | - | 0.500 | 0.400 | 0.900 | 0.450 |" in md
    # By measure, then cutoff; the headline measures stay in the first table only.
    assert "| retriever | dataset | split | ndcg@1 | ndcg@3 | recall@5 | mrr@1 |" in md
    assert "| bm25 | task | test | 0.250 | 0.375 | 0.750 | 0.250 |" in md
    write_table(rows, tmp_path / "summary.csv")
    [row] = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert (row["ndcg@10"], row["ndcg@1"], row["recall@5"]) == ("0.5", "0.25", "0.75")
    # No cutoff measures: no extra table.
    write_summary([], [], "demo", tmp_path / "plain.md", retrievers=[
        {k: v for k, v in rows[0].items() if k in ("retriever", "ndcg@10")}
    ])  # fmt: skip
    assert "at cutoffs" not in (tmp_path / "plain.md").read_text()


def _retriever_pair_files(tmp_path):
    """Qrels of four queries (one relevant passage each) and two runs. By hand, the
    relevant passage's rank per query: a 1, 2, none, 4; b 2, 1, 1, none (b has no hits
    for q4, a none for q3; a's hit whose id is its query's, and its query q9 without
    judgements, are ignored)."""
    qrels = tmp_path / "qrels" / "test.tsv"
    qrels.parent.mkdir()
    qrels.write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(1, 5))
    )
    ranked = {
        "a": {"q1": ["d1", "x"], "q2": ["q2", "x", "d2"], "q4": ["x", "y", "z", "d4"],
              "q9": ["d9"]},
        "b": {"q1": ["x", "d1"], "q2": ["d2"], "q3": ["d3", "x"]},
    }  # fmt: skip
    runs = {}
    for name, run in ranked.items():
        runs[name] = tmp_path / f"{name}.trec"
        runs[name].write_text(
            "".join(
                f"{q} Q0 {d} {r} {10 - r} {name}\n"
                for q, docs in run.items()
                for r, d in enumerate(docs, start=1)
            )
        )
    pair = {"dataset": "task", "split": "test", "a": "a", "b": "b", "run_a": str(runs["a"]),
            "run_b": str(runs["b"]), "qrels": str(qrels)}  # fmt: skip
    return pair


def test_retriever_pairs_compare_per_query_measures_with_a_paired_bootstrap(tmp_path):
    import math

    import pytest

    from ragtrain.evaluation.report import retriever_paired_differences, write_retriever_pairs
    from ragtrain.metrics.paired import paired_bootstrap

    pair = _retriever_pair_files(tmp_path)
    rows = retriever_paired_differences([pair], seed=7, resamples=400)
    by_metric = {r["metric"]: r for r in rows}
    assert list(by_metric) == ["ndcg@10", "mrr@10"]
    # Reciprocal ranks by hand; a query without hits scores 0, all four queries count.
    rr_a, rr_b = [1, 1 / 2, 0, 1 / 4], [1 / 2, 1, 1, 0]
    mrr = by_metric["mrr@10"]
    assert (mrr["n"], mrr["mean_a"], mrr["mean_b"]) == (4, 0.4375, 0.625)
    expected = paired_bootstrap(rr_a, rr_b, resamples=400, seed=7)
    assert mrr["diff"] == expected["diff"] == -0.1875
    assert (mrr["low"], mrr["high"], mrr["p_not_better"]) == (
        expected["low"], expected["high"], expected["p_not_better"],
    )  # fmt: skip
    # nDCG@10 with one relevant passage of grade 1 at rank r: 1 / log2(r + 1).
    gain = lambda rank: 1 / math.log2(rank + 1) if rank else 0.0  # noqa: E731
    ndcg_a, ndcg_b = [gain(r) for r in (1, 2, 0, 4)], [gain(r) for r in (2, 1, 1, 0)]
    ndcg = by_metric["ndcg@10"]
    assert ndcg["mean_a"] == pytest.approx(sum(ndcg_a) / 4, abs=1e-4)
    assert ndcg["mean_b"] == pytest.approx(sum(ndcg_b) / 4, abs=1e-4)
    expected = paired_bootstrap(ndcg_a, ndcg_b, resamples=400, seed=7)
    for key in ("diff", "low", "high", "p_not_better"):
        assert ndcg[key] == pytest.approx(expected[key], abs=1e-4)
    # Seeded: the same numbers again; the other way round, the opposite difference.
    assert retriever_paired_differences([pair], seed=7, resamples=400) == rows
    swapped = {**pair, "a": "b", "b": "a", "run_a": pair["run_b"], "run_b": pair["run_a"]}
    back = retriever_paired_differences([swapped], seed=7, resamples=400)
    assert back[1]["diff"] == 0.1875 and back[1]["p_not_better"] < 0.5

    write_retriever_pairs(rows, tmp_path / "retriever_pairs.csv")
    table = list(csv.DictReader((tmp_path / "retriever_pairs.csv").open()))
    assert [(r["a"], r["b"], r["metric"], r["n"], r["diff"]) for r in table][1] == (
        "a", "b", "mrr@10", "4", "-0.1875",
    )  # fmt: skip
    write_retriever_pairs([], tmp_path / "none.csv")
    assert (tmp_path / "none.csv").read_text().startswith("dataset,split,a,b,n,metric,")


def test_the_report_shows_the_retriever_pairs(tmp_path):
    from ragtrain.evaluation.report import retriever_paired_differences

    rows = retriever_paired_differences([_retriever_pair_files(tmp_path)], seed=7, resamples=400)
    retrievers = [{"retriever": n, "dataset": "task", "split": "test"} for n in ("a", "b")]
    write_summary([], [], "demo", tmp_path / "summary.md", retrievers=retrievers,
                  resamples=400, retriever_paired=rows)  # fmt: skip
    md = (tmp_path / "summary.md").read_text()
    section = md.split("### Paired differences between retrievers")[1]
    assert "400 resamples" in section
    assert "| task | test | a | b | 4 | mrr@10 | 0.438 | 0.625 | -0.188 | [" in section
    assert md.index("## Retrievers") < md.index("### Paired differences between retrievers")
    # No pairs: no section.
    write_summary([], [], "demo", tmp_path / "plain.md", retrievers=retrievers)
    assert "between retrievers" not in (tmp_path / "plain.md").read_text()
