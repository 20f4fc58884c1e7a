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
