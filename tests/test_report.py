import csv
import json

from ragtrain.evaluation.report import load_rows, write_plot, write_summary, write_table


def metrics(model, retrieval, em):
    return {
        "model": model,
        "dataset": "test",
        "retrieval": retrieval,
        "n": 10,
        "em": em,
        "f1": em,
        "accuracy": em,
        "refusal_rate": 0.1,
        "correct_refusal": None,
        "false_refusal": 0.0,
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
    assert "| base | test | bm25 | 10 | 0.250 | 0.250 | 0.250 | 0.100 | - | 0.000 | 33.3 |" in md
    assert "| bm25 | test | 3 | 0.800 | 0.900 | 10 |" in md
    assert "| base | test | bm25 | single | 10 | 0.250 |" in md
    write_plot(rows, tmp_path / "metrics.png")
    assert (tmp_path / "metrics.png").read_bytes()[:4] == b"\x89PNG"
