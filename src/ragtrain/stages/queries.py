"""Query stages: pseudo-queries for unlabelled passages, their filters, and the query
writer's training data (doc -> query SFT data, preference pairs of queries).

The corpus is read as stored passages (ragtrain.data.passages, `open_corpus`): by id and
row where a stage needs some passages (the sample, the records' passages, the pools), as
a stream where it needs a pass over all of them; no list of all passages is held.
"""

from __future__ import annotations

from pathlib import Path

from ragtrain.core.records import write_json, write_jsonl
from ragtrain.core.settings import merge
from ragtrain.graph.kinds import PRODUCT_DEFAULTS
from ragtrain.stages.common import (
    CORPUS_HELP,
    add_stage,
    generation,
    log,
    settings_of,
    trained_retriever,
)

# The corpus stage's passages: read by id and row through its tables beside the file (a
# file without them, e.g. a BEIR corpus.jsonl, is normalised into a temporary copy).


def cmd_pseudo_queries(args) -> None:
    from ragtrain.data.passages import open_corpus, sample_passages
    from ragtrain.generation.pseudo_query import generate_queries
    from ragtrain.generation.shards import generate_in_shards
    from ragtrain.metrics.ir import read_qrels

    params = merge(PRODUCT_DEFAULTS["pseudo_queries"], args.params)
    params["generation"] = generation(params)
    train = Path(args.qrels) / "train.tsv"
    labelled = (
        {d for docs in read_qrels(train).values() for d in docs} if train.is_file() else set()
    )
    # The sample unlabelled_sample draws, the rows read by id and row.
    with open_corpus(args.corpus) as corpus:
        passages = sample_passages(corpus, labelled, params["docs"], params["seed"])
    inputs = [args.model, args.corpus, args.prompt]
    stats = generate_in_shards(
        generate_queries, passages, args.model, args.prompt, params,
        args.work, inputs, args.output, args.stats,
    )  # fmt: skip
    log.info("%s: %s", args.stage, stats)


def cmd_query_filter(args) -> None:
    from ragtrain.data.beir import read_query_records
    from ragtrain.data.passages import open_corpus
    from ragtrain.graph.kinds import FILTER_KINDS

    params = args.params
    kind = params.get("filter")
    if kind not in FILTER_KINDS:
        raise ValueError(f"--params: 'filter' must be one of {sorted(FILTER_KINDS)}")
    records = read_query_records(args.input)
    with open_corpus(args.corpus) as corpus:
        out, stats = _filter(args, kind, records, corpus)
    stats = {"filter": kind, **stats}
    write_jsonl(args.output, out)
    write_json(args.stats, stats)
    log.info("query-filter (%s): %s", kind, stats)


def _filter(args, kind: str, records: list[dict], corpus) -> tuple[list[dict], dict]:
    """The filter `kind` over stored passages (LossNet, BM25 and dense read the pools' or
    records' passages by row; a `corpus_topk` rule streams all of them)."""
    from ragtrain.data.beir import gold_queries
    from ragtrain.graph.kinds import FILTER_KINDS

    params = args.params
    if kind == "lossnet":
        from ragtrain.retrieval.lossnet import lossnet_filter

        settings = settings_of(params, FILTER_KINDS["lossnet"])
        # The current retriever: a trained one, else the untrained encoder.
        retriever = (
            trained_retriever(args.retriever)
            if args.retriever
            else settings.get("encoder", FILTER_KINDS["lossnet"]["encoder"])
        )
        gold = gold_queries(args.queries, args.qrels) if args.queries else None
        return lossnet_filter(records, corpus, retriever, settings, gold=gold)
    else:
        from ragtrain.retrieval.query_filters import filter_queries

        settings = {**settings_of(params, FILTER_KINDS[kind]), "filter": kind}
        if kind == "dense" and (settings.get("retriever") or args.retriever):
            # The node names a trained model; the workflow passes its folder.
            if not args.retriever:
                raise ValueError(
                    f"the dense filter names retriever {settings['retriever']!r}:"
                    " give its folder with --retriever"
                )
            settings["retriever"] = trained_retriever(args.retriever)
        return filter_queries(records, corpus, settings)


def records_passages(corpus, records: list[dict]) -> list[dict]:
    """The passages of a corpus (stored Passages) that query records name (`doc_id`), read
    by id: what a function that looks the records' passages up in a corpus needs of it (a
    name it lacks stays missing, for that function to report)."""
    from ragtrain.data.passages import passages_with_ids

    named = (r.get("doc_id") for r in records)
    return list(passages_with_ids(corpus, (d for d in named if isinstance(d, str))).values())


def cmd_query_sft_data(args) -> None:
    from ragtrain.data.beir import gold_queries, read_query_records
    from ragtrain.data.passages import open_corpus
    from ragtrain.data.prompts import PromptTemplate
    from ragtrain.generation.pseudo_query import query_sft_data

    if args.input:
        queries, source = read_query_records(args.input), args.input
    else:
        queries, source = gold_queries(args.queries, args.qrels), f"{args.qrels}/train.tsv"
    # Only the queries' passages: query_sft_data looks each one up by id.
    with open_corpus(args.corpus) as corpus:
        passages = records_passages(corpus, queries)
    train, dev, stats = query_sft_data(
        queries, passages, PromptTemplate(args.prompt), args.params, source
    )
    write_jsonl(args.train, train)
    write_jsonl(args.dev, dev)
    write_json(args.stats, stats)
    log.info("query-sft-data: %s", stats)


def cmd_query_preferences(args) -> None:
    from ragtrain.data.beir import read_query_records
    from ragtrain.data.passages import open_corpus
    from ragtrain.data.prompts import PromptTemplate
    from ragtrain.generation.pseudo_query import preference_pairs, with_difficulty
    from ragtrain.retrieval.retriever_training import search

    params = merge(PRODUCT_DEFAULTS["query_preferences"], args.params)
    retriever = trained_retriever(args.retriever)
    with open_corpus(args.corpus) as corpus:
        # The bi-encoder ranks every passage: encoded in blocks from the stored corpus.
        queries = with_difficulty(
            read_query_records(args.input),
            lambda texts, k: search("biencoder", retriever, corpus, texts, k),
            min(params["depth"], len(corpus)),
        )
        # Only the queries' passages: preference_pairs looks each one up by id.
        passages = records_passages(corpus, queries)
    train, dev, stats = preference_pairs(
        queries, passages, PromptTemplate(args.prompt), params, args.input
    )
    write_jsonl(args.output, queries)
    write_jsonl(args.train, train)
    write_jsonl(args.dev, dev)
    write_json(args.stats, stats)
    log.info("query-preferences: %s", stats)


def register(stages) -> None:
    p = add_stage(
        stages,
        "pseudo-queries",
        cmd_pseudo_queries,
        "per_doc queries for a sample of unlabelled passages (sharded, resumable)",
    )
    p.add_argument("--model", required=True, help="the query writer's folder")
    p.add_argument("--corpus", required=True, help=CORPUS_HELP)
    p.add_argument("--qrels", required=True, help="the task's qrels folder (train: labelled)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--work", required=True, help="work folder root (shards; resumed)")
    p.add_argument("--output", required=True, help="query records (JSONL)")
    p.add_argument("--stats", required=True)

    p = add_stage(
        stages,
        "query-filter",
        cmd_query_filter,
        "rank each query's source passage (BM25, dense) or predict its loss (LossNet); keep some",
    )
    p.add_argument("--input", required=True, help="query records (JSONL)")
    p.add_argument("--corpus", required=True, help=CORPUS_HELP)
    p.add_argument("--queries", help="the task's queries (LossNet: gold examples)")
    p.add_argument("--qrels", help="the task's qrels folder (LossNet: gold examples)")
    p.add_argument(
        "--retriever", help="LossNet, dense: the trained retriever's folder (`retriever`)"
    )
    p.add_argument("--output", required=True, help="query records with filters and kept")
    p.add_argument("--stats", required=True)

    p = add_stage(
        stages,
        "query-sft-data",
        cmd_query_sft_data,
        "doc -> query SFT data from a task's gold train pairs or from kept pseudo-queries",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="query records (JSONL); those kept are used")
    source.add_argument("--queries", help="the task's queries.jsonl (with --qrels)")
    p.add_argument("--qrels", help="the task's qrels folder (train.tsv is used)")
    p.add_argument("--corpus", required=True, help=CORPUS_HELP)
    p.add_argument("--prompt", required=True, help="Jinja template of the user turn")
    p.add_argument("--train", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--stats", required=True)

    p = add_stage(
        stages,
        "query-preferences",
        cmd_query_preferences,
        "difficulty under a trained retriever; pairs of kept over dropped queries, easy to hard",
    )
    p.add_argument("--input", required=True, help="filtered query records (JSONL)")
    p.add_argument("--corpus", required=True, help=CORPUS_HELP)
    p.add_argument("--retriever", required=True, help="a trained bi-encoder's folder")
    p.add_argument("--prompt", required=True, help="the doc -> query template")
    p.add_argument("--output", required=True, help="query records with difficulty")
    p.add_argument("--train", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--stats", required=True)
