"""Pseudo-query filter speed: BM25 pool scoring against rank-bm25, FAISS against NumPy.

The BM25 pool_top1 filter (SPTAR's pipeline: the source document among 300 random others,
kept when it ranks first) runs over the same synthetic corpus and queries, through the same
`query_filters.pool_ranks` (same pools) and the same token lists, scoring each pool
three ways: ragtrain's pool scorer (`bm25_pool_scorer`: bm25s's formula for the query's words
only), a bm25s index built per pool, and `rank_bm25.BM25Okapi` built per pool (what the
original pipeline used).

All three use the same BM25 variant: bm25s `method="robertson"` and BM25Okapi with
`epsilon=0`, k1 1.5, b 0.75. BM25Okapi floors a negative IDF (a word in more than half the
pool's documents) at epsilon x the mean IDF; the Robertson IDF of bm25s floors it at 0, which
is BM25Okapi's floor when epsilon is 0. Okapi's (k1 + 1) factor, which bm25s leaves out,
scales every score alike and changes no rank. What is left is float rounding (bm25s stores
float32 scores; ragtrain and rank-bm25 compute in float64), which can swap near-ties. The
library defaults (bm25s `lucene` IDF, rank-bm25's epsilon 0.25) are compared too, for
agreement only.

The dense part times top-k search of the same vectors: FAISS IndexFlatIP against a NumPy
matrix product + argpartition, and the exact source ranks the dense filter computes.

Corpus: `ragtrain.data.world` passages (people, organisations, cities, near-namesakes); each query
mixes one to three words of its source passage with one to three words of another passage,
so that some are kept and some not. Sources are drawn with replacement, so some documents
have several queries and share one pool.

    python bench/bm25_filter.py [--passages 20000] [--queries 5000] [--seed 13]
"""

from __future__ import annotations

import argparse
import random
import re
import time

import numpy as np

from ragtrain.data.world import WorldConfig, generate_world
from ragtrain.retrieval.index import passage_text
from ragtrain.retrieval.query_filters import (
    FILTER_DEFAULTS,
    bm25_pool_scorer,
    bm25_tokens,
    dense_corpus_ranks,
    filter_queries,
    pool_ranks,
)

POOL_SIZE = 300
K1, B = 1.5, 0.75


def build(n_passages: int, n_queries: int, seed: int) -> tuple[list[dict], list[dict]]:
    # world proportions: 60% people, 20% organisations, 10% cities, 10% near-namesakes
    people, orgs, places = n_passages * 6 // 10, n_passages * 2 // 10, n_passages // 10
    cfg = WorldConfig(
        seed=seed,
        people=people,
        organisations=orgs,
        places=places,
        distractors=n_passages - people - orgs - places,
        questions={},
    )
    corpus = generate_world(cfg).passages
    rng = random.Random(seed)
    records = []
    for i in range(n_queries):
        source, other = rng.sample(range(len(corpus)), 2)
        own = re.findall(r"\w+", passage_text(corpus[source]))
        foreign = re.findall(r"\w+", passage_text(corpus[other]))
        words = rng.sample(own, rng.randint(1, 3)) + rng.sample(foreign, rng.randint(1, 3))
        rng.shuffle(words)
        records.append({"id": f"q{i}", "doc_id": corpus[source]["id"], "query": " ".join(words)})
    return corpus, records


def bm25s_index_scorer(doc_tokens, query_tokens, bm25: dict):
    import bm25s

    def score(pool: np.ndarray, queries: list[int]) -> np.ndarray:
        model = bm25s.BM25(**bm25)
        model.index([doc_tokens[i] for i in pool], show_progress=False)
        rows = []
        for q in queries:
            known = [t for t in query_tokens[q] if t in model.vocab_dict]
            rows.append(model.get_scores(known) if known else np.zeros(len(pool)))
        return np.stack(rows)

    return score


def rank_bm25_scorer(doc_tokens, query_tokens, epsilon: float):
    from rank_bm25 import BM25Okapi

    def score(pool: np.ndarray, queries: list[int]) -> np.ndarray:
        model = BM25Okapi([doc_tokens[i] for i in pool], k1=K1, b=B, epsilon=epsilon)
        return np.stack([model.get_scores(query_tokens[q]) for q in queries])

    return score


def timed(fn):
    began = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - began


def bm25_part(corpus: list[dict], records: list[dict], seed: int) -> None:
    doc_ids = [d["id"] for d in corpus]
    position = {d: i for i, d in enumerate(doc_ids)}
    sources = [position[r["doc_id"]] for r in records]
    stopwords = FILTER_DEFAULTS["bm25"]["stopwords"]
    (doc_tokens, query_tokens), tok_s = timed(
        lambda: (
            bm25_tokens([passage_text(d) for d in corpus], stopwords),
            bm25_tokens([r["query"] for r in records], stopwords),
        )
    )
    robertson = {"k1": K1, "b": B, "method": "robertson"}
    runs = {}

    def run(name: str, scorer) -> None:
        ranks, seconds = timed(lambda: pool_ranks(sources, doc_ids, scorer, POOL_SIZE, seed))
        runs[name] = (ranks, seconds)

    run("ragtrain pool scorer, robertson", bm25_pool_scorer(doc_tokens, query_tokens, robertson))
    run("bm25s index per pool, robertson", bm25s_index_scorer(doc_tokens, query_tokens, robertson))
    run("rank-bm25 Okapi eps=0", rank_bm25_scorer(doc_tokens, query_tokens, 0.0))
    run("rank-bm25 Okapi eps=0.25", rank_bm25_scorer(doc_tokens, query_tokens, 0.25))
    # the library's own path, end to end (tokenisation included), with its defaults
    params = {**FILTER_DEFAULTS["bm25"], "filter": "bm25", "seed": seed, "pool_size": POOL_SIZE}
    (out, _), seconds = timed(lambda: filter_queries(records, corpus, params))
    runs["filter_queries (lucene, defaults)"] = (
        np.array([r["filters"]["bm25_rank"] for r in out]),
        seconds,
    )

    n = len(records)
    print(f"\nBM25 pool_top1: {len(corpus)} passages, {n} queries, {len(set(sources))} pools of")
    print(f"{POOL_SIZE + 1} documents, k1 {K1}, b {B}; tokenisation (shared) {tok_s:.2f} s\n")
    print("| scorer | seconds | queries/s | kept (rank 1) | mean rank |")
    print("|---|---|---|---|---|")
    for name, (ranks, seconds) in runs.items():
        kept = (ranks <= 1).mean()
        print(f"| {name} | {seconds:.2f} | {n / seconds:.0f} | {kept:.3f} | {ranks.mean():.2f} |")
    base = runs["rank-bm25 Okapi eps=0"][1]
    print()
    for name in ("ragtrain pool scorer, robertson", "bm25s index per pool, robertson"):
        print(f"{name} / rank-bm25 speed (same variant): {base / runs[name][1]:.2f}x")
    for a, b in (
        ("ragtrain pool scorer, robertson", "rank-bm25 Okapi eps=0"),
        ("bm25s index per pool, robertson", "rank-bm25 Okapi eps=0"),
        ("filter_queries (lucene, defaults)", "rank-bm25 Okapi eps=0.25"),
        ("rank-bm25 Okapi eps=0", "rank-bm25 Okapi eps=0.25"),
    ):
        ra, rb = runs[a][0], runs[b][0]
        same_kept = ((ra <= 1) == (rb <= 1)).mean()
        same_rank = (ra == rb).mean()
        print(f"agreement {a} vs {b}: kept {same_kept:.4f}, rank {same_rank:.4f}")
    # the other rule, for scale: one bm25s index over the corpus, every document scored
    (_, stats), seconds = timed(
        lambda: filter_queries(records, corpus, params | {"k": 70, "rule": "corpus_topk"})
    )
    print(
        f"\nfilter_queries corpus_topk (lucene, k 70, one bm25s index over the corpus): "
        f"{seconds:.2f} s, {n / seconds:.0f} queries/s, kept {stats['kept_fraction']:.3f}, "
        f"mean rank {stats['mean_rank']:.1f}"
    )


def dense_part(n_docs: int, n_queries: int, k: int, seed: int, dim: int = 384) -> None:
    import faiss

    # Random unit vectors: exact search costs the same whatever the vectors hold, and encoding
    # 20,000 passages with all-MiniLM would take minutes on 2 CPU cores.
    rng = np.random.default_rng(seed)
    docs = rng.standard_normal((n_docs, dim), dtype=np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    sources = rng.integers(0, n_docs, n_queries)
    queries = docs[sources] + rng.standard_normal((n_queries, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    index = faiss.IndexFlatIP(dim)
    index.add(docs)
    (_, faiss_ids), faiss_s = timed(lambda: index.search(queries, k))

    def numpy_topk(block: int = 1024) -> np.ndarray:
        out = np.empty((n_queries, k), dtype=np.int64)
        for start in range(0, n_queries, block):
            scores = queries[start : start + block] @ docs.T
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
            out[start : start + block] = np.take_along_axis(top, order, axis=1)
        return out

    numpy_ids, numpy_s = timed(numpy_topk)
    _, ranks_s = timed(lambda: dense_corpus_ranks(docs, queries, sources))
    same = np.mean(
        [set(a) == set(b) for a, b in zip(faiss_ids.tolist(), numpy_ids.tolist(), strict=True)]
    )
    print(
        f"\nDense top-{k} search: {n_docs} random unit vectors (dim {dim}), {n_queries} queries\n"
    )
    print("| search | seconds | queries/s |")
    print("|---|---|---|")
    print(f"| FAISS IndexFlatIP | {faiss_s:.3f} | {n_queries / faiss_s:.0f} |")
    print(f"| NumPy matmul + argpartition | {numpy_s:.3f} | {n_queries / numpy_s:.0f} |")
    print(f"| exact source ranks (dense filter) | {ranks_s:.3f} | {n_queries / ranks_s:.0f} |")
    print(f"\nFAISS / NumPy speed: {numpy_s / faiss_s:.2f}x; same top-{k} sets: {same:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--k", type=int, default=10, help="top-k of the dense search")
    args = parser.parse_args()
    (corpus, records), build_s = timed(lambda: build(args.passages, args.queries, args.seed))
    print(f"built {len(corpus)} passages and {len(records)} queries in {build_s:.1f} s")
    bm25_part(corpus, records, args.seed)
    dense_part(len(corpus), len(records), args.k, args.seed)


if __name__ == "__main__":
    main()
