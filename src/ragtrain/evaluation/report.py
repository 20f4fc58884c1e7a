"""The run's report: summary.md, summary.csv, a bar chart of the evaluations and the
training curves of the trained models."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from ragtrain.core.records import atomic_path, read_json, read_jsonl
from ragtrain.evaluation.judged import ERROR_CELLS
from ragtrain.metrics.paired import RESAMPLES, paired_bootstrap

COLUMNS = [
    "model",
    "dataset",
    "retrieval",
    "judges",
    "n",
    "em",
    "f1",
    "accuracy",
    "hits@1",
    "precision",
    "recall",
    "pr_f1",
    "refusal_rate",
    "correct_refusal",
    "false_refusal",
    "tokens_per_second",
]
ERROR_COLUMNS = ["model", "dataset", "retrieval", "judges", *ERROR_CELLS.values()]
PAIRED_COLUMNS = ["dataset", "retrieval", "a", "b", "n", "metric", "a - b", "95% interval"]
# The per-example scores compared in pairs (over answerable questions, as EM is).
PAIRED_METRICS = ("em", "accuracy")
PLOTTED = ["em", "f1", "accuracy", "correct_refusal"]


def _fmt(value, column: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if column in ("tokens_per_second", "length") else f"{value:.3f}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c), c) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _judges(metrics: dict) -> str:
    judges = metrics.get("judges") or {"label": "rules", "relevance": "rules"}
    if judges["label"] == judges["relevance"]:
        return judges["label"]
    return f"{judges['label']} / {judges['relevance']}"


def load_rows(metric_files: list[str]) -> list[dict]:
    """One row per evaluation (the rules' metrics) and per model-judged evaluation."""
    rows = [{**(m := read_json(path)), "judges": _judges(m)} for path in metric_files]
    return sorted(rows, key=lambda r: (r["dataset"], r["model"], r["retrieval"], r["judges"]))


def paired_differences(
    metric_files: list[str], seed: int, resamples: int = RESAMPLES
) -> list[dict]:
    """Every pair of models evaluated on the same dataset and retrieval: the difference
    of their per-example EM and accuracy on the answerable questions both saw, with a
    paired bootstrap interval (the predictions.jsonl beside each metrics.json)."""
    groups: dict[tuple[str, str], list[tuple[str, dict[str, dict]]]] = {}
    for file in sorted(metric_files):
        metrics = read_json(file)
        if metrics.get("judges", {}).get("label", "rules") != "rules":
            continue  # judged rows share their predictions with the rules' row
        predictions = read_jsonl(Path(file).with_name("predictions.jsonl"))
        scores = {p["id"]: p["scores"] for p in predictions if p["answers"]}
        groups.setdefault((metrics["dataset"], metrics["retrieval"]), []).append(
            (metrics["model"], scores)
        )
    return paired_rows(groups, PAIRED_METRICS, seed, resamples)


def paired_rows(
    groups: dict[tuple[str, str], list[tuple[str, dict[str, dict]]]],
    metrics: tuple[str, ...],
    seed: int,
    resamples: int = RESAMPLES,
) -> list[dict]:
    """For each (dataset, retrieval) group of (model, {question id: per-example scores}),
    every pair of models and metric: the paired bootstrap difference over the questions
    both have a score for (a score of None is left out)."""
    rows = []
    for (dataset, retrieval), models in sorted(groups.items()):
        models.sort(key=lambda m: m[0])
        for i, (name_a, a) in enumerate(models):
            for name_b, b in models[i + 1 :]:
                for metric in metrics:
                    shared = sorted(
                        q
                        for q in a.keys() & b.keys()
                        if a[q][metric] is not None and b[q][metric] is not None
                    )
                    if not shared:
                        continue
                    result = paired_bootstrap(
                        [a[q][metric] for q in shared],
                        [b[q][metric] for q in shared],
                        resamples=resamples,
                        seed=seed,
                    )
                    rows.append(
                        {
                            "dataset": dataset,
                            "retrieval": retrieval,
                            "a": name_a,
                            "b": name_b,
                            "n": result["n"],
                            "metric": metric,
                            "a - b": f"{result['diff']:+.3f}",
                            "95% interval": f"[{result['low']:+.3f}, {result['high']:+.3f}]",
                        }
                    )
    return rows


TRAINING_COLUMNS = [
    "model",
    "kind",
    "init",
    "n_train",
    "n_dev",
    "steps",
    "train_loss",
    "dev_loss",
    "dev_reward_accuracy",
    "dev_reward_margin",
    "dev_pair_accuracy",
    "dev_reward_init",
    "dev_reward",
    "kl_last",
    "train_runtime_s",
]


def load_training(model_dirs: list[str]) -> list[dict]:
    return [
        {"model": Path(d).name, **read_json(Path(d) / "metrics.json")} for d in sorted(model_dirs)
    ]


IR_MEASURES = ["ndcg@10", "map@10", "recall@100", "mrr@10"]
RETRIEVER_COLUMNS = ["retriever", "kind", "dataset", "split", "n_gold", "n_pseudo", *IR_MEASURES]
CSV_COLUMNS = [*COLUMNS, "retriever", "kind", "split", "n_gold", "n_pseudo", *IR_MEASURES]
IR_CUTOFF = re.compile(r"(ndcg|map|recall|mrr)@(\d+)")


def cutoff_columns(rows: list[dict]) -> list[str]:
    """The measures at other cutoffs the rows hold (evaluate_retrieval `cutoffs`), by
    measure then cutoff; the headline ones have their own columns."""
    found = {k for r in rows for k in r if IR_CUTOFF.fullmatch(k) and k not in IR_MEASURES}
    order = {m: i for i, m in enumerate(("ndcg", "map", "recall", "mrr"))}
    return sorted(found, key=lambda k: (order[k.split("@")[0]], int(k.split("@")[1])))


def load_retrieval_rows(metric_files: list[str], model_dirs: list[str]) -> list[dict]:
    """One row per evaluated retriever, with what a trained one was trained on."""
    trained = {Path(d).name: read_json(Path(d) / "metrics.json") for d in model_dirs}
    rows = []
    for file in metric_files:
        m = read_json(file)
        info = trained.get(m["retriever"], {})
        rows.append({**m, "n_gold": info.get("n_gold"), "n_pseudo": info.get("n_pseudo")})
    return sorted(rows, key=lambda r: (r["dataset"], r["split"], r["retriever"]))


# Retriever pairs: per-query measures compared, the markdown table's and the CSV's columns.
RETRIEVER_PAIRED_METRICS = ("ndcg@10", "mrr@10")
RETRIEVER_PAIRED_COLUMNS = ["dataset", "split", "a", "b", "n", "metric", "mean a", "mean b",
                            "a - b", "95% interval", "p_not_better"]  # fmt: skip
RETRIEVER_PAIRS_CSV = ["dataset", "split", "a", "b", "n", "metric", "mean_a", "mean_b", "diff",
                       "low", "high", "p_not_better"]  # fmt: skip


def retriever_paired_differences(
    pairs: list[dict], seed: int, resamples: int = RESAMPLES
) -> list[dict]:
    """For each pair {dataset, split, a, b, run_a, run_b, qrels} (an `evaluate_retrieval`
    entry's `paired`; its two TREC runs and its split's qrels TSV): per-query nDCG@10 and
    MRR@10 of both (pytrec_eval, as the metrics.json beside each run: every query of the
    qrels, one without hits scoring 0), and the paired bootstrap difference a - b."""
    from ragtrain.metrics.ir import evaluate_run, read_qrels, read_run

    qrels_of: dict[str, dict] = {}
    scores_of: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    rows = []
    for pair in pairs:
        if pair["qrels"] not in qrels_of:
            qrels_of[pair["qrels"]] = read_qrels(pair["qrels"])
        qrels = qrels_of[pair["qrels"]]
        per = {}
        for side in ("a", "b"):
            key = (pair[f"run_{side}"], pair["qrels"])
            if key not in scores_of:
                scores_of[key] = evaluate_run(qrels, read_run(key[0]), per_query=True)[1]
            per[side] = scores_of[key]
        queries = sorted(per["a"].keys() & per["b"].keys())  # the qrels' queries, both
        for metric in RETRIEVER_PAIRED_METRICS:
            a = [per["a"][q][metric] for q in queries]
            b = [per["b"][q][metric] for q in queries]
            result = paired_bootstrap(a, b, resamples=resamples, seed=seed)
            rows.append(
                {
                    **{k: pair[k] for k in ("dataset", "split", "a", "b")},
                    "n": result["n"],
                    "metric": metric,
                    "mean_a": round(sum(a) / len(a), 4),
                    "mean_b": round(sum(b) / len(b), 4),
                    **{k: result[k] for k in ("diff", "low", "high", "p_not_better")},
                }
            )
    return rows


def _retriever_paired_cells(row: dict) -> dict:
    return {
        **row,
        "mean a": row["mean_a"],
        "mean b": row["mean_b"],
        "a - b": f"{row['diff']:+.3f}",
        "95% interval": f"[{row['low']:+.3f}, {row['high']:+.3f}]",
    }


def write_retriever_pairs(rows: list[dict], path: Path) -> None:
    """The retriever pairs' differences as CSV, one row per pair and measure (a header
    alone when no entry names pairs)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=RETRIEVER_PAIRS_CSV, extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")


RERANK_COLUMNS = ["retriever", "reranker", "dataset", "first_stage", "k", "first_stage_recall",
                  "reranked_recall", "reranked - first", "95% interval", "candidates",
                  "candidates_recall"]  # fmt: skip


RERANKER_COLUMNS = ["model", "losses", "weighting", "steps", "train_records", "dev_records",
                    "precision_before", "precision", "recall_before", "recall", "f1_before",
                    "f1", "mean_weights"]  # fmt: skip


def reranker_section(model_dirs: list[str]) -> list[str]:
    """The trained rerankers: the aligned class's precision / recall / F1 on held-out
    records before and after training, and the losses' mean weights."""
    rows = []
    for folder in sorted(model_dirs):
        m = read_json(Path(folder) / "metrics.json")
        before, after = m.get("dev_before") or {}, m.get("dev") or {}
        weights = ", ".join(f"{k} {v:.2f}" for k, v in (m.get("mean_weights") or {}).items())
        rows.append(
            {
                "model": Path(folder).name,
                "losses": " + ".join(m["losses"]),
                "weighting": m["weighting"],
                "steps": m.get("steps"),
                "train_records": m.get("train_records"),
                "dev_records": m.get("dev_records"),
                **{f"{k}_before": before.get(k) for k in ("precision", "recall", "f1")},
                **{k: after.get(k) for k in ("precision", "recall", "f1")},
                "mean_weights": weights or "-",
            }
        )
    if not rows:
        return []
    return [
        "## Rerankers",
        "",
        "Held-out reranker records: precision, recall and F1 of the aligned class (the"
        " documents that help the model) before and after training; the losses' weights"
        " averaged over the steps (MGDA's change each step: weights.png in the model's folder).",
        "",
        markdown_table(rows, RERANKER_COLUMNS),
        "",
    ]


def _rerank_row(retriever: str, dataset: str, stats: dict) -> dict:
    k, n = stats["k"], stats["candidates"]
    diff = stats.get("reranked_minus_first_stage") or {}
    return {
        "retriever": retriever,
        "reranker": stats.get("reranker") or "none",
        "dataset": dataset,
        "first_stage": stats["first_stage"],
        "k": k,
        "first_stage_recall": stats.get(f"first_stage_answer_recall@{k}"),
        "reranked_recall": stats.get(f"answer_recall@{k}"),
        "reranked - first": f"{diff['diff']:+.3f}" if diff else "-",
        "95% interval": f"[{diff['low']:+.3f}, {diff['high']:+.3f}]" if diff else "-",
        "candidates": n,
        "candidates_recall": stats.get(f"answer_recall@{n}"),
    }


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _query_product(stats: dict) -> str | None:
    """Pseudo-query products, in a few words (None for other products)."""
    if "filter" in stats:
        held = (
            f"{stats['filter']} filter"
            + (f" ({stats['rule']}, k {stats['k']})" if "rule" in stats else "")
            + f": kept {stats['n_kept']} of {stats['n_candidates']} candidates"
        )
        if stats.get("spearman_holdout") is not None:
            held += f"; held-out Spearman of predicted vs true loss {stats['spearman_holdout']:.3f}"
        return held
    if "dropped_repeated" in stats:
        return (
            f"{stats['n_queries']} pseudo-queries for {stats['n_passages']} passages"
            f" ({stats['dropped_empty']} empty, {stats['dropped_repeated']} repeated dropped),"
            f" {stats['tokens_per_second']} generated tok/s"
        )
    if "n_pairs" in stats and "mean_difficulty_kept" in stats:
        return (
            f"{stats['n_pairs']} query preference pairs ({stats['n_train']} train,"
            f" {stats['n_dev']} dev); mean difficulty (source rank) of kept queries"
            f" {stats['mean_difficulty_kept']}, of dropped {stats['mean_difficulty_dropped']}"
        )
    if "reward_model" in stats and "mean_reward" in stats:
        return (
            f"{stats['n_samples']} samples scored by reward model {stats['reward_model']}:"
            f" mean {_num(stats['mean_reward'])},"
            f" best per question {_num(stats['mean_best_reward'])}"
        )
    if "mean_best_reward" in stats:  # best-of-n
        return (
            f"{stats['n_train']} train + {stats['n_dev']} dev demonstrations, the best of"
            f" {stats['n_samples'] // max(stats['n_examples'], 1)} samples by reward: mean"
            f" reward {_num(stats['mean_best_reward'])} vs {_num(stats['mean_sample_reward'])}"
            " over all samples"
        )
    if "n_finished" in stats:  # segment beam
        return (
            f"{stats['n_train']} train + {stats['n_dev']} dev demonstrations by segment beam"
            f" search: {_num(stats['mean_segments'])} segments, mean reward"
            f" {_num(stats['mean_reward'])}, {stats['n_finished']} finished"
        )
    if "n_prompts" in stats:  # prompt search
        best = stats["best"]
        return (
            f"{stats['n_prompts']} system prompts over {stats['steps_run']} steps; the best"
            f" (step {best['step']}) scores {_num(best['holdout_score'])} on"
            f" {stats['holdout_questions']} held-out questions, the best seed prompt"
            f" {_num(stats['best_seed_holdout_score'])} (judge {stats['judge']})"
        )
    if "win_share" in stats:  # tournament
        b = stats["brackets"]
        return (
            f"{stats['n_resolved']} of {stats['n_questions']} questions resolved by"
            f" {stats['judge']} ({stats['unresolved_dropped']} dropped unresolved),"
            f" {stats['candidates_per_question']['mean']:g} candidates each;"
            f" {b['n']} brackets: {b['parsed_first_try']} parsed at the first try,"
            f" {b['parsed_after_retry']} after retries, {b['unparsed']} not"
        )
    if "reranker_records" in stats:  # doc_preferences
        shares = ", ".join(f"{k} {v}" for k, v in stats["labels"].items())
        rec = stats["reranker_records"]
        return (
            f"{stats['n_documents']} documents of {stats['n_questions']} questions labelled:"
            f" {shares}; closed-book accuracy {_num(stats['closed_book_accuracy'])};"
            f" {stats['n_train']} train + {stats['n_dev']} dev reranker records"
            f" ({rec['ranking_pairs']} ranking pairs, {rec['with_contrastive']} with both"
            " positives and negatives)"
        )
    if "by_strategy" in stats:  # query_augment
        parts = ", ".join(
            f"{name} {s['kept']}/{s['generated']}" for name, s in stats["by_strategy"].items()
        )
        return f"{stats['n_kept']} rewrites kept of {stats['n_questions']} questions: {parts}"
    if "helpful_documents" in stats:  # pre_aligned_sft
        return (
            f"{stats['n_train']} train + {stats['n_dev']} dev pre-aligned examples;"
            f" {stats['helpful_documents']} of {stats['documents']} documents marked helpful"
        )
    if "self_corrections" in stats:  # step_pairs
        rates = ", ".join(f"step {k} {v}" for k, v in stats["error_rate_by_step"].items())
        return (
            f"step {stats['step']} of {stats['steps']}: {stats['n_train']} train +"
            f" {stats['n_dev']} dev pairs from {stats['n_samples']} samples; error rate {rates};"
            f" {stats['self_corrections']} self-corrections, {stats['questions_all_right']}"
            " questions with no error"
        )
    if "docs_per_question" in stats:  # step_sft
        return (
            f"{stats['n_train']} train + {stats['n_dev']} dev step-format answers,"
            f" {stats['docs_per_question']} documents each ({stats['useful_docs']} useful),"
            f" {stats['refusals']} refusals"
        )
    if "path" in stats and "steps" in stats:  # pair_file
        return (
            f"{stats['n_train']} train + {stats['n_dev']} dev pairs of step"
            f" {', '.join(map(str, stats['steps'])) or '?'} from {Path(stats['path']).name}"
        )
    if "pairs_by_step" in stats:  # pair_mix
        by_step = ", ".join(f"step {k}: {n}" for k, n in sorted(stats["pairs_by_step"].items()))
        return f"{stats['n_train']} train + {stats['n_dev']} dev pairs ({by_step})"
    if "n_used" in stats:
        return (
            f"{stats['n_train']} train + {stats['n_dev']} dev doc -> query pairs"
            f" over {stats['n_passages']} passages"
        )
    return None


def _product_rows(stats_files: list[str]) -> list[dict]:
    """One line per product: what it holds, in a few words."""
    rows = []
    for file in sorted(stats_files):
        stats = read_json(file)
        name = Path(file).parent.name
        if (query := _query_product(stats)) is not None:
            held = query
        elif "labels" in stats:
            labels = stats["labels"]
            groups = stats["by_group"]
            held = (
                f"{stats['n_samples']} samples of {stats['n_examples']} questions:"
                f" {labels['correct']} correct, {labels['incorrect']} incorrect,"
                f" {labels['refuse']} refusals; questions with a right sample:"
                f" {groups['answerable']['solved']}/{groups['answerable']['n_examples']}"
                f" answerable, {groups['unanswerable']['solved']}/"
                f"{groups['unanswerable']['n_examples']} unanswerable"
            )
        elif "pairs" in stats:
            parts = ", ".join(f"{k} {v}" for k, v in stats["pairs"].items())
            held = (
                f"{stats['n_train']} train + {stats['n_dev']} dev pairs;"
                f" all by kind/source: {parts}"
            )
        elif "sources" in stats:
            parts = ", ".join(f"{k} {v}" for k, v in stats["sources"].items())
            held = (
                f"{stats['n_train']} train + {stats['n_dev']} dev demonstrations;"
                f" all by source: {parts}"
            )
        elif "samples_per_example" in stats:
            held = (
                f"{stats['n_samples']} samples ({stats['samples_per_example']} per question),"
                f" {stats['mean_tokens_per_sample']} tokens each on average,"
                f" {stats['tokens_per_second']} generated tok/s"
            )
        else:
            continue
        rows.append({"product": name, "contents": held})
    return rows


def _win_share_rows(stats_files: list[str]) -> list[dict]:
    """Each tournament's win share by strategy."""
    rows = []
    for file in sorted(stats_files):
        stats = read_json(file)
        for strategy, share in stats.get("win_share", {}).items():
            rows.append({"tournament": Path(file).parent.name, "strategy": strategy, **share})
    return rows


def write_summary(
    rows: list[dict],
    retrieval_files: list[str],
    run: str,
    path: Path,
    training: list[dict] | None = None,
    product_files: list[str] | None = None,
    retrievers: list[dict] | None = None,
    paired: list[dict] | None = None,
    resamples: int = RESAMPLES,
    alce: list[str] | None = None,
    rerankers: list[str] | None = None,
    retriever_paired: list[dict] | None = None,
) -> None:
    """summary.md; `alce`: the sections after the paired differences (the ALCE one,
    ragtrain.evaluation.alce_report; the step decisions, steps_report); `rerankers`: the
    trained rerankers' (`reranker_section`); `retriever_paired`: the retriever pairs'
    differences (`retriever_paired_differences`)."""
    retrieval_rows, reranked = [], []
    for file in sorted(retrieval_files):
        stats = read_json(file)
        parts = Path(file).parts  # .../retrieval/<retriever>/<dataset>/stats.json
        k = stats["k"]
        retrieval_rows.append(
            {
                "retriever": parts[-3],
                "dataset": parts[-2],
                "k": k,
                "answer_recall": stats.get(f"answer_recall@{k}"),
                "gold_recall": stats.get(f"gold_recall@{k}"),
                "n": stats["n"],
            }
        )
        if stats.get("kind") == "rerank":
            reranked.append(_rerank_row(parts[-3], parts[-2], stats))
    text = [f"# ragtrain report: run `{run}`", ""]
    if rows:
        text += [
            "## Evaluation",
            "",
            "EM, F1 and accuracy are over answerable questions. `judges`: the label /"
            " relevance judges behind the columns from `precision` on (`rules`: the string"
            " rules). Over answerable questions, precision = correct / (correct +"
            " incorrect), recall = correct / all, `pr_f1` their F1; `correct_refusal` is"
            " the share of unanswerable questions declined, `false_refusal` the share of"
            " refusals among questions whose documents hold the answer. Retrieval `none` is"
            " the closed-book contrast.",
            "",
            markdown_table(rows, COLUMNS),
            "",
            "## Errors by cause",
            "",
            "Answerable questions by whether the documents hold a gold answer and whether"
            " the answer is right: `generation_miss` (documents hold it, answer wrong: fix"
            " the generator), `both` (neither), `retrieval_miss` (not in the documents, yet"
            " answered right), `neither` (both right).",
            "",
            markdown_table([{**r, **r["errors"]} for r in rows if "errors" in r], ERROR_COLUMNS),
            "",
        ]
    if paired:
        text += [
            "## Paired differences",
            "",
            "Each pair of models on the same dataset and retrieval: the difference of"
            " per-question EM and accuracy over the answerable questions, with a paired"
            f" bootstrap 95% interval ({resamples} resamples of the questions, seeded). An"
            " interval that spans 0 is no evidence of a difference.",
            "",
            markdown_table(paired, PAIRED_COLUMNS),
            "",
        ]
    text += alce or []
    if retrievers:
        text += [
            "## Retrievers",
            "",
            "Held-out queries, measured the way BEIR does (pytrec_eval; a hit whose id equals"
            " the query id is ignored). `n_gold` / `n_pseudo`: the gold and pseudo-query pairs"
            " a trained retriever learnt from; untrained ones have none. A ColBERT reranks"
            " its candidates retriever's top 100.",
            "",
            markdown_table(retrievers, RETRIEVER_COLUMNS),
            "",
        ]
        if cutoffs := cutoff_columns(retrievers):
            text += [
                "### Retrievers at cutoffs",
                "",
                markdown_table(retrievers, ["retriever", "dataset", "split", *cutoffs]),
                "",
            ]
    if retriever_paired:
        text += [
            "### Paired differences between retrievers",
            "",
            "The pairs each `evaluate_retrieval` entry names (`paired`): per-query nDCG@10"
            " and MRR@10 of a and b over the same queries (all of the split's qrels; a query"
            " without hits scores 0), their means, the mean difference a - b with a paired"
            f" bootstrap 95% interval ({resamples} resamples of the queries, seeded), and"
            " `p_not_better`, the share of resamples where a - b is not above 0 (a one-sided"
            " p-value). Also in retriever_pairs.csv.",
            "",
            markdown_table(
                [_retriever_paired_cells(r) for r in retriever_paired], RETRIEVER_PAIRED_COLUMNS
            ),
            "",
        ]
    typed = [
        {
            "model": r["model"],
            "dataset": r["dataset"],
            "retrieval": r["retrieval"],
            "type": kind,
            **m,
        }
        for r in rows
        for kind, m in r.get("by_type", {}).items()
    ]
    if typed:
        text += [
            "## By question type",
            "",
            markdown_table(typed, ["model", "dataset", "retrieval", "type", "n", *PLOTTED]),
            "",
        ]
    if retrieval_rows:
        text += [
            "## Retrieval",
            "",
            "Answer recall@k: share of answerable questions with a gold answer in the top-k"
            " passages; gold recall@k: share of the gold passages retrieved"
            " (a multi-hop question has two).",
            "",
            markdown_table(
                retrieval_rows, ["retriever", "dataset", "k", "answer_recall", "gold_recall", "n"]
            ),
            "",
        ]
    if reranked:
        text += [
            "## Reranking",
            "",
            "Each rerank retriever's top k against its first stage's own top k on the same"
            " questions: answer recall@k, the paired difference with a bootstrap 95% interval"
            " over questions, and the recall of all n candidates (what reranking can reach)."
            " `reranker` none: the untrained encoder with a fresh head.",
            "",
            markdown_table(reranked, RERANK_COLUMNS),
            "",
        ]
    text += rerankers or []
    products = _product_rows(product_files or [])
    if products:
        text += ["## Training data", "", markdown_table(products, ["product", "contents"]), ""]
    wins = _win_share_rows(product_files or [])
    if wins:
        text += [
            "## Tournaments",
            "",
            "Which strategies the pick judge prefers: questions won (`share` of those"
            " resolved), candidates entered, and wins per candidate entered (a strategy"
            " sampled three times enters three).",
            "",
            markdown_table(wins, ["tournament", "strategy", "wins", "share", "candidates",
                                   "wins_per_candidate"]),
            "",
        ]  # fmt: skip
    if training:
        text += [
            "## Training",
            "",
            "Held-out (`dev_`) values are on the product's dev split; for DPO (ORPO, SimPO),"
            " `dev_reward_accuracy` is the share of held-out pairs whose chosen answer gets"
            " the higher implicit reward; for a reward model, `dev_pair_accuracy` the share"
            " it scores the right way round. RL models (PPO, GRPO, RLOO): mean reward of"
            " greedy answers to the held-out questions before (`dev_reward_init`) and after"
            " (`dev_reward`) training, and the last KL to the init model. Curves:"
            " `training.png` (reward and KL for RL), and `loss.png` in each model's folder.",
            "",
            markdown_table(training, TRAINING_COLUMNS),
            "",
        ]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(text), encoding="utf-8")


def write_table(rows: list[dict], path: Path) -> None:
    """QA evaluations and retrieval evaluations, one row each (blank where n/a)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer,
        fieldnames=[*CSV_COLUMNS, *cutoff_columns(rows)],
        extrasaction="ignore",
        lineterminator="\n",
    )
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")


def write_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    # QA evaluations; a run without any (a retriever recipe) plots its retrievers, whose
    # longer names are slanted.
    qa = bool(rows) and "model" in rows[0]
    if qa:
        labels = [f"{r['model']}\n{r['dataset']}/{r['retrieval']}" for r in rows]
    else:
        labels = [r["retriever"] for r in rows]
    plotted = PLOTTED if qa else IR_MEASURES
    x = np.arange(len(rows))
    width = 0.8 / len(plotted)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows) + 2), 4))
    for i, metric in enumerate(plotted):
        # No value (e.g. no unanswerable questions) draws no bar, not a zero.
        values = [np.nan if r.get(metric) is None else r[metric] for r in rows]
        ax.bar(x + (i - (len(plotted) - 1) / 2) * width, values, width, label=metric)
    ax.set_xticks(x, labels, fontsize=8, rotation=0 if qa else 30, ha="center" if qa else "right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.legend(ncols=len(plotted), fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def write_training_plot(model_dirs: list[str], path: Path) -> None:
    """The trained models' loss.png, stacked into one figure (a note if there are none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    # (A model left unchanged, a DPO node with no pairs, has no curves.)
    images = [
        (Path(d).name, mpimg.imread(Path(d) / "loss.png"))
        for d in sorted(model_dirs)
        if (Path(d) / "loss.png").exists()
    ]
    if not images:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.text(0.5, 0.5, "no trained models in this run", ha="center", va="center")
        ax.axis("off")
    else:
        width = max(img.shape[1] for _, img in images)
        height = sum(img.shape[0] for _, img in images)
        fig, axes = plt.subplots(len(images), 1, figsize=(width / 100, height / 100), squeeze=False)
        for ax, (_, img) in zip(axes[:, 0], images, strict=True):
            ax.imshow(img)
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
