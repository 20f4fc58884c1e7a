"""The report's ALCE section: the metrics of each ALCE shape per model, as the citation
papers tabulate them, and paired differences between models on the same questions."""

from __future__ import annotations

from pathlib import Path

from ragtrain.core.records import read_json, read_jsonl
from ragtrain.evaluation.report import markdown_table, paired_rows
from ragtrain.metrics.paired import RESAMPLES

# Per shape, the columns its papers report (ALCE, Huang et al. 2024).
SHAPE_COLUMNS = {
    "asqa": ["str_em", "str_hit", "rougeLsum", "citation_rec", "citation_prec", "length"],
    "qampari": [
        "qampari_prec",
        "qampari_rec_top5",
        "qampari_f1_top5",
        "citation_rec",
        "citation_prec",
        "length",
    ],
    "eli5": ["claims_nli", "rougeLsum", "citation_rec", "citation_prec", "length"],
}
# The correctness score of one answer, by its shape: what `correct` pools in the pairs.
CORRECT = {"asqa": "str_em", "qampari": "qampari_rec_top5", "eli5": "claims_nli"}
PAIRED = ("correct", "citation_rec", "citation_prec")


def _evaluations(metric_files: list[str]) -> list[tuple[dict, Path]]:
    """The evaluations with ALCE metrics (the rules' rows, not a model judge's)."""
    found = []
    for file in sorted(metric_files):
        metrics = read_json(file)
        if "alce" in metrics and metrics.get("judges", {}).get("label", "rules") == "rules":
            found.append((metrics, Path(file).with_name("predictions.jsonl")))
    return found


def per_example(prediction: dict) -> dict:
    """An answer's paired scores: its shape's correctness and its citation scores."""
    scores = prediction.get("alce") or {}
    out = {"correct": scores.get(CORRECT.get(scores.get("kind"), ""))}
    out.update({key: scores.get(key) for key in PAIRED[1:]})
    return out


def alce_section(metric_files: list[str], seed: int, resamples: int = RESAMPLES) -> list[str]:
    """Markdown lines: a table per ALCE shape, then paired differences (empty if no
    evaluation has ALCE metrics)."""
    evaluations = _evaluations(metric_files)
    if not evaluations:
        return []
    nli = {m["alce"]["nli"] is not None for m, _ in evaluations}
    text = [
        "## ALCE metrics",
        "",
        "Per ALCE shape (ASQA: short-answer groups; QAMPARI: lists; ELI5: claims), as"
        " fractions: `str_em` the share of a question's short-answer groups found,"
        " `qampari_rec_top5` the answers found out of min(5, all), `claims_nli` the share"
        " of claims the answer entails, `citation_rec` the share of statements their"
        " citations entail, `citation_prec` the share of citations needed and sufficient"
        " (at most 3 per statement), `length` in words."
        + ("" if nli == {True} else " Without an NLI judge (`nli`) there are no claim or"
           " citation scores."),
        "",
    ]  # fmt: skip
    for shape, columns in SHAPE_COLUMNS.items():
        rows = [
            {"model": m["model"], "dataset": m["dataset"], **m["alce"][shape]}
            for m, _ in evaluations
            if shape in m["alce"]
        ]
        if rows:
            table = markdown_table(rows, ["model", "dataset", "n", *columns])
            text += [f"### {shape}", "", table, ""]
    paired = alce_paired(evaluations, seed, resamples)
    if paired:
        text += [
            "### Paired differences",
            "",
            "Each pair of models on the same questions: the difference of per-question"
            " `correct` (the shape's own measure above: str_em, qampari_rec_top5 or"
            " claims_nli), citation recall and precision, with a paired bootstrap 95%"
            f" interval ({resamples} resamples, seeded). An interval that spans 0 is no"
            " evidence of a difference.",
            "",
            markdown_table(paired, ["dataset", "a", "b", "metric", "n", "a - b", "95% interval"]),
            "",
        ]
    return text


def alce_paired(
    evaluations: list[tuple[dict, Path]], seed: int, resamples: int = RESAMPLES
) -> list[dict]:
    groups: dict[tuple[str, str], list[tuple[str, dict]]] = {}
    for metrics, predictions in evaluations:
        scores = {p["id"]: per_example(p) for p in read_jsonl(predictions) if p.get("alce")}
        key = (metrics["dataset"], metrics["retrieval"])
        groups.setdefault(key, []).append((metrics["model"], scores))
    return paired_rows(groups, PAIRED, seed, resamples)
