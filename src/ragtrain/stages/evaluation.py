"""Evaluation stages: a model's RAG answers scored on a dataset, and the run's report."""

from __future__ import annotations

import json
from pathlib import Path

from ragtrain.core.records import write_json, write_jsonl
from ragtrain.core.seeds import DEFAULT_SEED
from ragtrain.graph.kinds import NO_RETRIEVAL, SOURCE_RETRIEVAL
from ragtrain.metrics.paired import RESAMPLES
from ragtrain.stages.common import add_nli, add_stage, entailments, generation


def cmd_evaluate(args) -> None:
    from ragtrain.core.records import read_jsonl
    from ragtrain.data.prompts import PromptTemplate
    from ragtrain.evaluation.evaluate import evaluate
    from ragtrain.generation.engine import load_generator

    params = {
        "model": Path(args.model).name,
        "dataset": Path(args.examples).parent.name,
        "retrieval": "given",
        **args.params,
    }
    params["generation"] = generation(params)
    if params["retrieval"] == SOURCE_RETRIEVAL:
        from ragtrain.data.loaders import with_source_docs

        examples = with_source_docs(args.examples)
    else:
        examples = read_jsonl(args.examples)
    if params["retrieval"] == NO_RETRIEVAL:
        examples = [{**ex, "docs": []} for ex in examples]
    template = PromptTemplate(args.prompt)
    generator = load_generator(args.model, params["generation"])
    entailment = entailments(args.nli).get(params.get("nli"))
    predictions, metrics = evaluate(examples, generator, template, params, entailment)
    # Metrics last: their presence means the predictions are complete.
    write_jsonl(args.predictions, predictions)
    write_json(args.metrics, metrics)


def cmd_report(args) -> None:
    from ragtrain.evaluation.alce_report import alce_section
    from ragtrain.evaluation.report import (
        load_retrieval_rows,
        load_rows,
        load_training,
        paired_differences,
        reranker_section,
        retriever_paired_differences,
        write_plot,
        write_retriever_pairs,
        write_summary,
        write_table,
        write_training_plot,
    )
    from ragtrain.evaluation.steps_report import steps_section

    rows = load_rows(args.metrics)
    training = load_training(args.models)
    retrievers = load_retrieval_rows(args.retrieval_metrics, args.retrievers)
    write_table([*rows, *retrievers], Path(args.table))
    write_plot(rows or retrievers, Path(args.plot))
    write_training_plot(args.models, Path(args.training_plot))
    paired = paired_differences(args.metrics, args.seed, args.resamples)
    retriever_paired = retriever_paired_differences(
        json.loads(args.retriever_pairs), args.seed, args.resamples
    )
    if args.retriever_pairs_table:
        write_retriever_pairs(retriever_paired, Path(args.retriever_pairs_table))
    write_summary(
        rows,
        args.retrieval,
        args.run,
        Path(args.summary),
        training,
        args.products,
        retrievers,
        paired,
        args.resamples,
        [
            *alce_section(args.metrics, args.seed, args.resamples),
            *steps_section(args.metrics, args.seed, args.resamples),
        ],
        reranker_section(args.rerankers),
        retriever_paired,
    )


def register(stages) -> None:
    p = add_stage(
        stages,
        "evaluate",
        cmd_evaluate,
        "greedy RAG answers for a dataset, scored (EM, F1, refusals; ALCE metrics)",
    )
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--examples", required=True)
    p.add_argument("--prompt", required=True, help="Jinja template of the user turn")
    p.add_argument("--predictions", required=True)
    p.add_argument("--metrics", required=True)
    add_nli(p, "the NLI judge (`nli`) of the ALCE citation and claim metrics")

    p = add_stage(
        stages,
        "report",
        cmd_report,
        "summary.md, summary.csv, a bar chart of the evaluations, the training curves",
        params=False,
    )
    p.add_argument("--run", required=True, help="the run's name, for the title")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the bootstrap's seed")
    p.add_argument("--resamples", type=int, default=RESAMPLES, help="paired bootstrap resamples")
    p.add_argument("--metrics", nargs="*", default=[], help="QA evaluation metrics.json files")
    p.add_argument(
        "--retrieval-metrics", nargs="*", default=[], help="retrieval evaluation metrics.json"
    )
    p.add_argument("--retrievers", nargs="*", default=[], help="trained retriever folders")
    p.add_argument("--rerankers", nargs="*", default=[], help="trained reranker folders")
    p.add_argument("--retrieval", nargs="*", default=[], help="retrieval stats.json files")
    p.add_argument("--models", nargs="*", default=[], help="trained model folders")
    p.add_argument("--products", nargs="*", default=[], help="product stats.json files")
    p.add_argument(
        "--retriever-pairs",
        default="[]",
        help="JSON: the retriever pairs to compare, each {dataset, split, a, b, run_a, run_b,"
        " qrels} (their TREC runs and the split's qrels TSV)",
    )
    p.add_argument("--retriever-pairs-table", help="the retriever pairs' differences (CSV)")
    p.add_argument("--summary", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--plot", required=True)
    p.add_argument("--training-plot", required=True, help="training curves (PNG)")
