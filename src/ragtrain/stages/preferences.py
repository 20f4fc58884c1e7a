"""Document preference stages (DPA-RAG): which documents help the model (labels), more
questions to learn them on (query augmentation), a reranker trained on them, retrieval
reranked by it, and the pre-aligned SFT data."""

from __future__ import annotations

from pathlib import Path

from ragtrain.core.records import write_json, write_jsonl
from ragtrain.core.settings import merge
from ragtrain.graph.kinds import MODEL_DEFAULTS, PRODUCT_DEFAULTS, RETRIEVER_DEFAULTS
from ragtrain.stages.common import (
    add_nli,
    add_stage,
    entailments,
    generation,
    log,
    set_threads,
    settings_of,
    write_split,
)


def cmd_doc_preferences(args) -> None:
    from functools import partial

    from ragtrain.core.workdir import finish, work_dir
    from ragtrain.generation.doc_preferences import (
        answer_all,
        check_labels,
        label_documents,
        reranker_records,
    )
    from ragtrain.generation.engine import load_generator
    from ragtrain.stages.products import dataset_examples

    params = merge(PRODUCT_DEFAULTS["doc_preferences"], args.params)
    params["generation"] = generation(params)
    for key in ("positive", "negative"):
        check_labels(key, params[key])
    examples = dataset_examples(args.examples, params)
    missing = [ex["id"] for ex in examples if not ex.get("docs")]
    if missing:
        raise ValueError(f"{args.examples}: example {missing[0]!r} has no retrieved documents")
    inputs = [args.model, args.examples, args.prompt, args.closed_book_prompt]
    work = work_dir(args.work, params, inputs)
    closed, with_doc, answer_stats = answer_all(
        examples,
        partial(load_generator, args.model, params["generation"]),
        {"prompt": args.prompt, "closed_book": args.closed_book_prompt},
        params,
        work,
    )
    labelled, label_stats = label_documents(examples, closed, with_doc, params)
    records, record_stats = reranker_records(labelled, params)
    write_jsonl(args.labels, labelled)
    stats = {**label_stats, "reranker_records": record_stats, "generation": answer_stats}
    write_split(args, records, stats, "reranker records")
    finish(work)


def cmd_query_augment(args) -> None:
    from functools import partial

    from ragtrain.core.records import read_jsonl
    from ragtrain.core.workdir import finish, work_dir
    from ragtrain.generation.engine import load_generator
    from ragtrain.generation.query_augment import check_strategies, filter_rewrites, rewrite_all

    params = merge(PRODUCT_DEFAULTS["query_augment"], args.params)
    params["generation"] = generation(params)
    problem = check_strategies(params["augment"], params["nli_checked"])
    if problem:
        raise ValueError(f"--params {problem[0]}: {problem[1]}")
    templates = {Path(t).stem: t for t in args.template}
    examples = read_jsonl(args.examples)
    nli = entailments(args.nli)
    entailment = next(iter(nli.values())) if nli else None
    inputs = [args.model, args.examples, *args.template, *(n["path"] for n in args.nli.values())]
    work = work_dir(args.work, params, inputs)
    rewrites, generation_stats = rewrite_all(
        examples, partial(load_generator, args.model, params["generation"]), templates, params,
        work,
    )  # fmt: skip
    kept, verdicts, stats = filter_rewrites(examples, rewrites, params, entailment)
    originals = [{k: v for k, v in ex.items() if k != "docs"} for ex in examples]
    write_jsonl(args.rewrites, verdicts)
    write_jsonl(args.examples_out, [*originals, *kept])
    write_json(args.stats, {**stats, "generation": generation_stats})
    log.info("query-augment: %s", stats)
    finish(work)


def cmd_pre_aligned_sft(args) -> None:
    from ragtrain.core.records import read_jsonl
    from ragtrain.data.prompts import PromptTemplate
    from ragtrain.generation.doc_preferences import check_labels, pre_aligned_records

    params = merge(PRODUCT_DEFAULTS["pre_aligned_sft"], args.params)
    check_labels("helpful", params["helpful"])
    records, stats = pre_aligned_records(
        read_jsonl(args.labels), PromptTemplate(args.prompt), params
    )
    write_split(args, records, stats, "pre-aligned records")


def _reranker_data(args, params: dict) -> tuple[list[dict], list[dict]]:
    """Train and dev reranker records: a doc_preferences product's, or a DPA-RAG file
    split by `dev_fraction`."""
    from ragtrain.data.preferences import load_pairs
    from ragtrain.generation.judge import dev_ids

    if args.data:
        folder = Path(args.data)
        train = load_pairs(folder / "train.jsonl", "dpa_rag")
        dev_file = folder / "dev.jsonl"
        dev = load_pairs(dev_file, "dpa_rag") if dev_file.stat().st_size else []
        return train, dev
    records = load_pairs(args.path, "dpa_rag")
    held = dev_ids([r["id"] for r in records], params["dev_fraction"], params["seed"])
    return [r for r in records if r["id"] not in held], [r for r in records if r["id"] in held]


def cmd_train_reranker(args) -> None:
    from ragtrain.core.records import atomic_dir
    from ragtrain.retrieval.reranker import RERANKER_DEFAULTS, train_reranker

    set_threads(args.threads)
    params = merge(MODEL_DEFAULTS["reranker"], args.params)
    train, dev = _reranker_data(args, params)
    settings = settings_of(params, RERANKER_DEFAULTS)
    with atomic_dir(args.output) as tmp:
        metrics = train_reranker(train, dev, settings, tmp, args.threads)
        write_json(tmp / "metrics.json", metrics)
    log.info("train-reranker: %s", metrics)


def cmd_rerank(args) -> None:
    from ragtrain.core.records import read_jsonl
    from ragtrain.retrieval.index import Index
    from ragtrain.retrieval.rerank import rerank_examples
    from ragtrain.retrieval.reranker import CrossEncoderReranker

    set_threads(args.threads)
    params = merge(RETRIEVER_DEFAULTS["rerank"], args.params)
    if args.reranker:
        model = CrossEncoderReranker.load(args.reranker)
    else:
        model = CrossEncoderReranker.from_encoder(
            params["encoder"], params["seed"], params["trust_remote_code"]
        )
    model.eval()

    def score(question: str, docs: list[dict]) -> list[float]:
        return model.scores(question, docs, params["max_length"], params["batch_size"])

    # The first stage's documents are replaced, as `retrieve` replaces a dataset's own.
    examples = [
        {k: v for k, v in ex.items() if k != "source_docs"} for ex in read_jsonl(args.examples)
    ]
    examples, stats = rerank_examples(examples, Index(args.index), score, params)
    stats["reranker"] = params.get("reranker")
    write_jsonl(args.output, examples)
    write_json(args.stats, stats)
    log.info("rerank: %s", stats)


def register(stages) -> None:
    p = add_stage(
        stages,
        "doc-preferences",
        cmd_doc_preferences,
        "label each retrieved document by the answers without and with it; reranker records",
    )
    p.add_argument("--model", required=True)
    p.add_argument("--examples", required=True, help="questions with retrieved docs (JSONL)")
    p.add_argument("--prompt", required=True, help="template with one document")
    p.add_argument("--closed-book-prompt", required=True, help="template without documents")
    p.add_argument("--work", required=True, help="work folder root (shards; resumed)")
    p.add_argument("--labels", required=True, help="output: labelled documents (JSONL)")
    p.add_argument("--train", required=True, help="output: reranker records (DPA-RAG format)")
    p.add_argument("--dev", required=True)
    p.add_argument("--stats", required=True)

    p = add_stage(
        stages,
        "query-augment",
        cmd_query_augment,
        "rewrite each question per strategy; drop rewrites the NLI judge finds unfaithful",
    )
    p.add_argument("--model", required=True)
    p.add_argument("--examples", required=True, help="a dataset's questions (JSONL)")
    p.add_argument(
        "--template", action="append", default=[], help="a strategy's template (repeatable)"
    )
    add_nli(p, "the NLI judge of the filter")
    p.add_argument("--work", required=True, help="work folder root (shards; resumed)")
    p.add_argument("--rewrites", required=True, help="output: every rewrite and its verdict")
    p.add_argument("--examples-out", required=True, help="output: the questions and kept rewrites")
    p.add_argument("--stats", required=True)

    p = add_stage(
        stages,
        "pre-aligned-sft",
        cmd_pre_aligned_sft,
        "SFT data: name a question's helpful documents, then answer (DPA-RAG's pre-aligned task)",
    )
    p.add_argument("--labels", required=True, help="a doc-preferences product's labels")
    p.add_argument("--prompt", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--stats", required=True)

    p = add_stage(
        stages,
        "train-reranker",
        cmd_train_reranker,
        "a cross-encoder reranker: classification, ranking and contrastive losses, MGDA",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a doc-preferences product's folder")
    source.add_argument("--path", help="reranker records in DPA-RAG's format")
    p.add_argument("--output", required=True, help="model folder")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")

    p = add_stage(
        stages,
        "rerank",
        cmd_rerank,
        "a first-stage index's top n reranked, the top k attached; recall beside the first stage",
    )
    p.add_argument("--index", required=True, help="the first stage's index folder")
    p.add_argument("--reranker", help="a trained reranker's folder (none: untrained)")
    p.add_argument("--examples", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--stats", required=True)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
