"""Judging stages of evaluation: a relevance judge over a dataset's retrieved documents,
and an evaluation's answers labelled (and its metrics computed) with model judges."""

from __future__ import annotations

from ragtrain.stages.common import add_judge, add_stage, log, model_judge, params_json


def cmd_judge_relevance(args) -> None:
    from ragtrain.core.records import read_jsonl, write_json, write_jsonl
    from ragtrain.evaluation.judged import relevance_items, rules_relevance
    from ragtrain.judges.model import verdict_stats
    from ragtrain.judges.rules import PRESENT

    examples = read_jsonl(args.examples)
    verdicts = model_judge(args).judge(relevance_items(examples))
    same = [
        (v["verdict"] == PRESENT) == rules_relevance(ex)
        for ex, v in zip(examples, verdicts, strict=True)
        if v["verdict"] is not None
    ]
    stats = {
        "judge": args.judge["name"],
        "replies": verdict_stats(verdicts),
        "present": sum(v["verdict"] == PRESENT for v in verdicts),
        "agreement_with_rules": round(sum(same) / len(same), 4) if same else None,
    }
    write_jsonl(args.verdicts, verdicts)
    write_json(args.stats, stats)
    log.info("judge-relevance: %s", stats)


def cmd_judge_evaluation(args) -> None:
    from ragtrain.core.records import read_json, read_jsonl, write_json, write_jsonl
    from ragtrain.evaluation.judged import agreement, judged_metrics, judged_rows
    from ragtrain.judges.model import verdict_stats

    predictions = read_jsonl(args.predictions)
    rules = read_json(args.rules_metrics)
    labels, replies = None, {}
    judge = model_judge(args)
    if judge:
        items = [
            {
                "id": p["id"],
                "question": p["question"],
                "response": p["prediction"],
                "answers": p["answers"],
            }
            for p in predictions
        ]
        labels = judge.judge(items)
        replies["label"] = verdict_stats(labels)
    relevance = None
    if args.relevance:
        relevance = {v["id"]: v for v in read_jsonl(args.relevance)}
        missing = [p["id"] for p in predictions if p["id"] not in relevance]
        if missing:
            raise ValueError(
                f"{args.relevance}: no verdict for {len(missing)} ids, e.g. {missing[0]!r}"
            )
    rows = judged_rows(predictions, labels, relevance)
    metrics = {
        **{k: rules[k] for k in ("model", "dataset", "retrieval", "n", "em", "f1", "accuracy")},
        "correct_refusal": rules["correct_refusal"],
        **judged_metrics(rows),
        "judged": True,
        "judges": args.judges,
        "agreement_with_rules": agreement(rows),
        "replies": replies,
    }
    write_jsonl(args.verdicts, rows)
    write_json(args.metrics, metrics)
    log.info("judge-evaluation: %s", metrics)


def register(stages) -> None:
    p = add_stage(
        stages,
        "judge-relevance",
        cmd_judge_relevance,
        "a relevance judge's verdict on each example's documents (present / absent)",
        params=False,
    )
    add_judge(p, required=True)
    p.add_argument("--examples", required=True, help="examples with their documents")
    p.add_argument("--verdicts", required=True)
    p.add_argument("--stats", required=True)

    p = add_stage(
        stages,
        "judge-evaluation",
        cmd_judge_evaluation,
        "an evaluation's answers labelled by model judges; its metrics from their verdicts",
        params=False,
    )
    p.add_argument("--predictions", required=True, help="the evaluation's predictions.jsonl")
    p.add_argument("--rules-metrics", required=True, help="the evaluation's metrics.json")
    add_judge(p)  # the label judge, where it is a model
    p.add_argument(
        "--relevance", default=None, help="a relevance judge's verdicts (else the rules')"
    )
    p.add_argument(
        "--judges", type=params_json, required=True, help='names: {"label": .., "relevance": ..}'
    )
    p.add_argument("--verdicts", required=True)
    p.add_argument("--metrics", required=True)
