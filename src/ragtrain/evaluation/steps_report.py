"""The report's step section (backtracking correction): per evaluation in the step
format, the share of answers in format and each document step's decision accuracy; and
paired differences between models on the same questions."""

from __future__ import annotations

from pathlib import Path

from ragtrain.core.records import read_json, read_jsonl
from ragtrain.evaluation.report import markdown_table, paired_rows
from ragtrain.metrics.paired import RESAMPLES

PAIRED = ("decision_accuracy", "format_ok")


def _per_question(prediction: dict) -> dict:
    steps = prediction["steps"]
    decisions = steps["decisions"]
    return {
        "decision_accuracy": sum(decisions) / len(decisions) if decisions else None,
        "format_ok": float(steps["format_ok"]),
    }


def steps_section(metric_files: list[str], seed: int, resamples: int = RESAMPLES) -> list[str]:
    """The section's lines ([] when no evaluation is in the step format)."""
    rows, groups = [], {}
    for file in sorted(metric_files):
        metrics = read_json(file)
        if "steps" not in metrics or metrics.get("judges", {}).get("label", "rules") != "rules":
            continue
        steps = metrics["steps"]
        rows.append(
            {
                "model": metrics["model"],
                "dataset": metrics["dataset"],
                "retrieval": metrics["retrieval"],
                "n": metrics["n"],
                "format_ok": steps["format_ok"],
                "decision_accuracy": steps["decision_accuracy"],
                **{f"step {k}": v for k, v in steps["decision_accuracy_by_step"].items()},
            }
        )
        predictions = read_jsonl(Path(file).with_name("predictions.jsonl"))
        groups.setdefault((metrics["dataset"], metrics["retrieval"]), []).append(
            (metrics["model"], {p["id"]: _per_question(p) for p in predictions})
        )
    if not rows:
        return []
    step_columns = sorted({c for r in rows for c in r if c.startswith("step ")})
    columns = ["model", "dataset", "retrieval", "n", "format_ok", "decision_accuracy",
               *step_columns]  # fmt: skip
    paired = paired_rows(groups, PAIRED, seed, resamples)
    return [
        "## Step decisions",
        "",
        "Answers in the step format (one line per retrieved document, then the answer;"
        " the answer columns above are read from the answer line). `format_ok`: share"
        " of answers that follow the format to the end; `step i`: share of questions whose"
        " i-th document is rightly called useful or not (useful = holds a gold answer; a"
        " step never written counts as wrong); `decision_accuracy` their mean.",
        "",
        markdown_table(rows, columns),
        "",
        "Paired differences of per-question decision accuracy (over its documents) and"
        f" format, with a paired bootstrap 95% interval ({resamples} resamples, seeded).",
        "",
        markdown_table(
            paired, ["dataset", "retrieval", "a", "b", "n", "metric", "a - b", "95% interval"]
        ),
        "",
    ]
