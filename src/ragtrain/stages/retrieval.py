"""Retrieval stages: indexes and search for QA examples, trained retrievers, and their
evaluation on a retrieval task."""

from __future__ import annotations

from pathlib import Path

from ragtrain.core.records import write_json, write_jsonl
from ragtrain.core.settings import merge, with_defaults
from ragtrain.graph.kinds import RETRIEVAL_EVAL_DEFAULTS, RETRIEVER_DEFAULTS
from ragtrain.stages.common import (
    CORPUS_HELP,
    add_stage,
    log,
    peak_rss,
    set_threads,
    settings_of,
    trained_retriever,
)


def cmd_index(args) -> None:
    from ragtrain.retrieval.index import build_index

    output = Path(args.output)
    # The workflow's index folder is named after its retriever: errors name the node's key.
    params = with_defaults(args.params, RETRIEVER_DEFAULTS)
    # The corpus is read as a stream, its files linked into the index (stored once).
    n = build_index(
        args.corpus, params, output, where=f"retrievers.{output.name}", work_root=args.work
    )
    log.info("index: %s over %d passages, %s", args.params["kind"], n, peak_rss())


def cmd_retrieve(args) -> None:
    from ragtrain.core.records import read_jsonl
    from ragtrain.retrieval.index import Index, retrieve

    index = Index(args.index)
    # The index's own settings, and its kind's defaults, unless given.
    k = with_defaults(merge(index.params, args.params), RETRIEVER_DEFAULTS)["k"]
    # A retriever's documents replace the dataset's own (`source_docs`, retrieval `source`).
    examples = [
        {key: v for key, v in ex.items() if key != "source_docs"}
        for ex in read_jsonl(args.examples)
    ]
    examples, stats = retrieve(examples, index, k)
    write_jsonl(args.output, examples)
    write_json(args.stats, stats)
    log.info("retrieve: %s", stats)


def cmd_train_retriever(args) -> None:
    from ragtrain.core.records import atomic_dir
    from ragtrain.data.beir import gold_queries, read_query_records
    from ragtrain.data.passages import open_corpus
    from ragtrain.retrieval.retriever_training import (
        BIENCODER_DEFAULTS,
        COLBERT_DEFAULTS,
        colbert_triples,
        train_biencoder,
        train_colbert,
        training_pairs,
    )

    set_threads(args.threads)
    params = args.params
    kind = params.get("kind")
    if kind not in ("biencoder", "colbert"):
        raise ValueError("--params: 'kind' must be biencoder or colbert")
    gold = gold_queries(args.queries, args.qrels)
    pseudo = [r for path in args.pseudo for r in read_query_records(path) if r.get("kept", True)]
    queries = gold + pseudo
    with atomic_dir(args.output) as tmp:
        # The pairs' and triples' passages read by id and row (hard negatives: a BM25 over
        # all passages, built in chunks); the corpus is closed before training.
        with open_corpus(args.corpus) as corpus:
            if kind == "biencoder":
                settings = settings_of(params, BIENCODER_DEFAULTS)
                data = training_pairs(queries, corpus)
            else:
                settings = settings_of(params, COLBERT_DEFAULTS)
                data = colbert_triples(queries, corpus, settings)
        if kind == "biencoder":
            metrics = train_biencoder(data, settings, tmp / "model")
        else:
            metrics = train_colbert(data, settings, tmp / "model")
        metrics = {"kind": kind, **metrics, "n_gold": len(gold), "n_pseudo": len(pseudo)}
        write_json(tmp / "metrics.json", metrics)
    log.info("train-retriever (%s): %s", kind, metrics)


def cmd_evaluate_retrieval(args) -> None:
    from ragtrain.core.records import read_json
    from ragtrain.data.beir import load_queries
    from ragtrain.data.passages import open_corpus
    from ragtrain.metrics.ir import evaluate_run, read_qrels, read_run, write_run
    from ragtrain.retrieval.index import Index
    from ragtrain.retrieval.retriever_training import search

    params = {**RETRIEVAL_EVAL_DEFAULTS, **args.params}
    split, k = params["split"], params["k"]
    if "cutoffs" not in args.params:  # as the config does: the defaults stop at the depth
        params["cutoffs"] = [c for c in RETRIEVAL_EVAL_DEFAULTS["cutoffs"] if c <= k]
    qrels = read_qrels(Path(args.qrels) / f"{split}.tsv")
    texts = {q["id"]: q["query"] for q in load_queries(args.queries) if q["id"] in qrels}
    if args.index:
        # The index holds its passages (read by row as the hits need them).
        index = Index(args.index)
        qids = list(texts)
        hits = index.search([texts[q] for q in qids], k)
        run = {
            q: {index.corpus[i]["id"]: s for i, s in ranked}
            for q, ranked in zip(qids, hits, strict=True)
        }
        kind = index.params["kind"]
    else:
        kind = read_json(Path(args.model) / "metrics.json")["kind"]
        if kind == "colbert" and not args.candidates:
            raise ValueError("a ColBERT reranks a first-stage run: give --candidates")
        candidates = read_run(args.candidates) if args.candidates else None
        # A bi-encoder encodes every passage in blocks; a ColBERT reads its candidates.
        with open_corpus(args.corpus) as corpus:
            model = trained_retriever(args.model)
            run = search(kind, model, corpus, texts, k, candidates=candidates)
    metrics = evaluate_run(qrels, run, cutoffs=params["cutoffs"])
    write_run(args.run, run)
    write_json(
        args.metrics,
        {"retriever": params.get("retriever", Path(args.model or args.index).name),
         "kind": kind, "dataset": params.get("dataset"), "split": split, **metrics},
    )  # fmt: skip
    log.info("evaluate-retrieval: %s", metrics)


def register(stages) -> None:
    p = add_stage(
        stages,
        "index",
        cmd_index,
        "build a BM25 (bm25s) or dense (sentence-transformers + FAISS) index",
    )
    p.add_argument(
        "--corpus",
        required=True,
        help="passages (JSONL), with the corpus stage's offsets and id tables beside it",
    )
    p.add_argument("--output", required=True, help="index folder")
    p.add_argument(
        "--work",
        help="resumable state (a dense index's encoded shards); default: .<index>.work/ beside it",
    )

    p = add_stage(
        stages,
        "retrieve",
        cmd_retrieve,
        "attach the top-k passages to each example; recall@k to stats",
    )
    p.add_argument("--index", required=True)
    p.add_argument("--examples", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--stats", required=True)

    p = add_stage(
        stages,
        "train-retriever",
        cmd_train_retriever,
        "a bi-encoder (in-batch negatives) or ColBERT (PyLate) on gold plus kept pseudo-queries",
    )
    p.add_argument("--corpus", required=True, help=CORPUS_HELP)
    p.add_argument("--queries", required=True, help="the task's queries.jsonl")
    p.add_argument("--qrels", required=True, help="the task's qrels folder (train.tsv)")
    p.add_argument("--pseudo", nargs="*", default=[], help="query records (JSONL); kept used")
    p.add_argument("--output", required=True, help="model folder")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")

    p = add_stage(
        stages,
        "evaluate-retrieval",
        cmd_evaluate_retrieval,
        "rank a task's queries; nDCG@10, MAP@10, Recall@100, MRR@10 (BEIR's way), and each"
        " at the entry's `cutoffs`",
    )
    ranker = p.add_mutually_exclusive_group(required=True)
    ranker.add_argument("--index", help="an index folder (BM25 or dense, untrained)")
    ranker.add_argument("--model", help="a trained retriever's folder")
    p.add_argument("--candidates", help="ColBERT: the first-stage run to rerank (TREC)")
    p.add_argument("--corpus", required=True, help=CORPUS_HELP)
    p.add_argument("--queries", required=True)
    p.add_argument("--qrels", required=True, help="the task's qrels folder")
    p.add_argument("--run", required=True, help="output run (TREC)")
    p.add_argument("--metrics", required=True)
