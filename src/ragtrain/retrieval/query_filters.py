"""BM25 and dense filters for LLM-written pseudo-queries (SPTAR-style).

An LLM writes queries for documents; many of them are vague or about something else. A
pseudo-query is worth training a retriever on only if its source document is findable with it:
each filter ranks the source document `doc_id` for the query text and keeps the query when that
rank is small enough.

Rank: 1 + the number of *other* documents scoring >= the source document. Ties count against
the source, so a query sharing no word with any document (every BM25 score 0) is never kept.

Two rules, for both filters:

- `pool_top1`: rank within a pool made of the source document and `pool_size` other documents
  drawn at random (seed `stable_seed(seed, doc_id)`: the queries of one document share one pool,
  scored once per source document; BM25's IDF and mean length are the pool's). This is the
  filter of the pipeline built on SPTAR (N = 300, top-1); kept when rank <= k. When the corpus
  has fewer than `pool_size` other documents the pool is the whole corpus (stats say so).
- `corpus_topk`: rank over the whole corpus; kept when rank <= k. SPTAR kept a query when its
  source was in the BM25 top 70 on FiQA and top 30 on MS MARCO.

Only candidates are ranked: records whose `kept` is True or missing. A record an earlier filter
dropped passes through unchanged, so filters chain (BM25, then dense, then LossNet).

BM25 uses bm25s's tokenisation and BM25 variants (`method`). Over the whole corpus it is one
bm25s index; over a pool it is the same formula computed for the query's words only, because a
bm25s index scores every word of every document at build time, which makes building one per
pool slower than rank-bm25 (see `bm25_pool_scorer`).

The dense filter encodes with `encoder`, or with a trained `retriever` (a bi-encoder folder:
SPTAR's filter ranks with the few-shot DPR trained on the gold pairs), which encodes texts as
it was trained and is searched: without prefixes. Either rule applies to it.

Over stored passages (a Passages), the rules read what they need: `pool_top1` only the
pools' passages (tokenised or encoded once each), `corpus_topk` every passage in a stream
(BM25: an index built in chunks and searched memory-mapped, the in-memory index's scores;
dense: encoded in blocks, the vectors of all passages held, as over a list).

Dense ranks are exact counts over float32 inner products of unit vectors (cosine). For a rank,
every document's score is needed, not a top-k list, so the scores are one matrix product per
block of queries (the computation FAISS IndexFlatIP does, without its top-k selection);
`bench/bm25_filter.py` compares FAISS and NumPy top-k search speed.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from numbers import Real

import numpy as np

from ragtrain.core.seeds import DEFAULT_SEED, stable_seed
from ragtrain.data.passages import Passages, rows_of
from ragtrain.retrieval.index import (
    encode,
    encode_corpus,
    load_encoder,
    passage_text,
    stored_bm25,
)

# A corpus: passages as a list, or stored ones read by row and id (ragtrain.data.passages).
Corpus = list[dict] | Passages

FILTER_DEFAULTS: dict[str, dict] = {
    "bm25": {
        "rule": "pool_top1",
        "k": 1,
        "pool_size": 300,
        "k1": 1.5,
        "b": 0.75,
        "method": "lucene",
        "stopwords": "en",
    },
    "dense": {
        "rule": "corpus_topk",
        "k": 10,
        "pool_size": 300,
        "encoder": "all-MiniLM-L6-v2",
        "batch_size": 64,
        "query_prefix": "",
        "passage_prefix": "",
        "trust_remote_code": False,
        # A trained bi-encoder's folder that encodes instead of `encoder` (None: `encoder`).
        "retriever": None,
    },
}
RULES = ("pool_top1", "corpus_topk")
BM25_METHODS = ("robertson", "lucene", "atire", "bm25l", "bm25+")
# bm25s's default delta of BM25L and BM25+ (config has no key for it).
_BM25_DELTA = 0.5
# Cells of the query x document score block held at once by the dense corpus rank (256 MiB).
_DENSE_BLOCK_CELLS = 1 << 26

# (pool: document positions, source first; queries: query positions) -> scores, one row a query
PoolScorer = Callable[[np.ndarray, list[int]], np.ndarray]


def resolve_params(params: dict) -> dict:
    """The filter's defaults overlaid with `params`, checked; ValueError names the bad key."""
    name = params.get("filter")
    if name not in FILTER_DEFAULTS:
        raise ValueError(f"filter: expected one of {sorted(FILTER_DEFAULTS)}, got {name!r}")
    allowed = {*FILTER_DEFAULTS[name], "filter", "seed"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"unknown {name} filter key(s) {unknown}; allowed: {sorted(allowed)}")
    p = {**FILTER_DEFAULTS[name], "seed": DEFAULT_SEED, **params}
    if p["rule"] not in RULES:
        raise ValueError(f"{name}.rule: expected one of {list(RULES)}, got {p['rule']!r}")
    for key in ("k", "pool_size", "seed") + (("batch_size",) if name == "dense" else ()):
        minimum = 0 if key == "seed" else 1
        if not isinstance(p[key], int) or isinstance(p[key], bool) or p[key] < minimum:
            raise ValueError(f"{name}.{key}: expected an integer >= {minimum}, got {p[key]!r}")
    if name == "bm25":
        if p["method"] not in BM25_METHODS:
            raise ValueError(
                f"bm25.method: expected one of {list(BM25_METHODS)}, got {p['method']!r}"
            )
        for key, low, high in (("k1", 0.0, float("inf")), ("b", 0.0, 1.0)):
            value = p[key]
            if not isinstance(value, Real) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"bm25.{key}: expected a number in [{low}, {high}], got {value!r}")
    else:
        for key in ("encoder", "query_prefix", "passage_prefix"):
            if not isinstance(p[key], str):
                raise ValueError(f"dense.{key}: expected a string, got {p[key]!r}")
        if not p["encoder"]:
            raise ValueError("dense.encoder: expected an encoder name or folder, got ''")
        if p["retriever"] is not None:
            if not isinstance(p["retriever"], str) or not p["retriever"]:
                raise ValueError(
                    f"dense.retriever: expected a model folder, got {p['retriever']!r}"
                )
            for key in ("query_prefix", "passage_prefix"):
                if p[key]:
                    raise ValueError(
                        f"dense.{key}: a trained retriever encodes texts as it was trained,"
                        f" without prefixes; got {p[key]!r}"
                    )
    return p


def source_ranks(scores: np.ndarray, sources: Sequence[int] | np.ndarray) -> np.ndarray:
    """Per row of `scores`: 1 + the number of other columns scoring >= column `sources[row]`.

    Counting every column >= the source's score counts the source itself once, hence the 1.
    """
    scores = np.atleast_2d(scores)
    own = scores[np.arange(len(scores)), np.asarray(sources, dtype=np.int64)]
    return np.count_nonzero(scores >= own[:, None], axis=1).astype(np.int64)


def sample_pool(n_docs: int, source: int, pool_size: int, seed: int) -> np.ndarray:
    """Document positions: `source` first, then `pool_size` distinct others drawn with `seed`
    (all the others, in order, when there are no more than `pool_size` of them)."""
    if pool_size >= n_docs - 1:
        others = np.delete(np.arange(n_docs), source)
    else:
        rng = np.random.default_rng(seed)
        # Draw from the n_docs - 1 positions other than the source, then skip over it.
        others = rng.choice(n_docs - 1, size=pool_size, replace=False)
        others += others >= source
    return np.concatenate(([source], others)).astype(np.int64)


def pool_ranks(
    sources: Sequence[int],
    doc_ids: Sequence[str],
    scorer: PoolScorer,
    pool_size: int,
    seed: int,
) -> np.ndarray:
    """The rank of each query's source document within that document's seeded pool.

    `sources[i]` is query i's source position in `doc_ids`. Queries are grouped by source, so
    the scorer is called once per source document, with all of that document's queries.
    """
    groups: dict[int, list[int]] = defaultdict(list)
    for query, source in enumerate(sources):
        groups[int(source)].append(query)
    ranks = np.zeros(len(sources), dtype=np.int64)
    for source, queries in groups.items():
        pool = sample_pool(len(doc_ids), source, pool_size, stable_seed(seed, doc_ids[source]))
        scores = np.asarray(scorer(pool, queries)).reshape(len(queries), len(pool))
        ranks[queries] = source_ranks(scores, np.zeros(len(queries), dtype=np.int64))
    return ranks


def bm25_tokens(texts: list[str], stopwords) -> list[list[str]]:
    """bm25s's tokenisation (lower case, words of 2+ characters, stopwords removed), as strings,
    so that other BM25 implementations can be given the very same tokens."""
    import bm25s

    return bm25s.tokenize(texts, stopwords=stopwords, return_ids=False, show_progress=False)


def _bm25s_index(doc_tokens: list[list[str]], params: dict):
    import bm25s

    model = bm25s.BM25(k1=params["k1"], b=params["b"], method=params["method"])
    model.index(doc_tokens, show_progress=False)
    return model


def _bm25s_scores(model, tokens: list[str]) -> np.ndarray:
    # Words absent from the index score nothing; bm25s's get_scores rejects an empty query.
    ids = model.get_tokens_ids(tokens)
    if not ids:
        return np.zeros(model.scores["num_docs"], dtype=np.float32)
    return model.get_scores_from_ids(ids)


class _TermCounts:
    """Every document's term counts (a CSR matrix over the corpus vocabulary) and lengths."""

    def __init__(self, doc_tokens: list[list[str]]):
        from scipy.sparse import csr_matrix

        self.vocab: dict[str, int] = {}
        indptr, indices, counts = [0], [], []
        for tokens in doc_tokens:
            ids, n = np.unique(
                [self.vocab.setdefault(t, len(self.vocab)) for t in tokens], return_counts=True
            )
            indices.extend(ids.tolist())
            counts.extend(n.tolist())
            indptr.append(len(indices))
        shape = (len(doc_tokens), max(1, len(self.vocab)))
        self.matrix = csr_matrix((np.asarray(counts, np.float64), indices, indptr), shape=shape)
        self.lengths = np.array([len(t) for t in doc_tokens], dtype=np.float64)

    def ids(self, tokens: list[str]) -> list[int]:
        # A word in no document scores nothing in any pool; repeated words count each time.
        return [self.vocab[t] for t in tokens if t in self.vocab]


def _idf(df: np.ndarray, n: int, method: str) -> np.ndarray:
    """IDF of bm25s's variants (Kamphuis et al. 2020), for document frequencies df >= 1."""
    if method == "robertson":  # floored at 0 where a word is in more than half the documents
        return np.log(np.maximum((n - df + 0.5) / (df + 0.5), 1.0))
    if method == "lucene":
        return np.log1p((n - df + 0.5) / (df + 0.5))
    if method == "atire":
        return np.log(n / df)
    if method == "bm25l":
        return np.log((n + 1) / (df + 0.5))
    return np.log((n + 1) / df)  # bm25+


def _tf_part(tf: np.ndarray, norm: np.ndarray, k1: float, method: str) -> np.ndarray:
    """Term-frequency part of bm25s's variants; norm = 1 - b + b * length / mean length."""
    delta = _BM25_DELTA
    with np.errstate(divide="ignore", invalid="ignore"):
        if method in ("robertson", "lucene"):
            part, absent = tf / (k1 * norm + tf), 0.0
        elif method == "atire":
            part, absent = tf * (k1 + 1) / (tf + k1 * norm), 0.0
        elif method == "bm25l":
            c = tf / norm
            part, absent = (
                (k1 + 1) * (c + delta) / (k1 + c + delta),
                (k1 + 1) * delta / (k1 + delta),
            )
        else:  # bm25+
            part, absent = (k1 + 1) * tf / (k1 * norm + tf) + delta, delta
    # A word absent from a document: no division by a zero-length document's norm.
    return np.where(tf > 0, part, absent)


def bm25_pool_scorer(
    doc_tokens: list[list[str]], query_tokens: list[list[str]], params: dict
) -> PoolScorer:
    """BM25 over the pool alone (IDF, document count and mean length of the pool's documents),
    with bm25s's formula for `params["method"]`, computed for the queries' words only.

    A bm25s index scores every word of every document when it is built: worth it for one
    corpus searched by many queries, not for a 301-document pool searched by one or two
    (`bench/bm25_filter.py` measured it 2.6x slower than rank-bm25 there). The scores equal those
    of a bm25s index built over the pool (the tests check it).
    """
    counts = _TermCounts(doc_tokens)
    query_ids = [counts.ids(tokens) for tokens in query_tokens]
    k1, b, method = params["k1"], params["b"], params["method"]

    def score(pool: np.ndarray, queries: list[int]) -> np.ndarray:
        out = np.zeros((len(queries), len(pool)))
        terms = sorted({t for q in queries for t in query_ids[q]})
        lengths = counts.lengths[pool]
        if not terms or lengths.mean() == 0:
            return out
        tf = counts.matrix[pool][:, terms].toarray()  # pool x the queries' words
        df = np.count_nonzero(tf, axis=0)
        idf = np.zeros(len(terms))
        idf[df > 0] = _idf(df[df > 0], len(pool), method)  # words absent from the pool score 0
        norm = 1 - b + b * lengths / lengths.mean()
        weights = _tf_part(tf, norm[:, None], k1, method) * idf
        column = {t: j for j, t in enumerate(terms)}
        for i, q in enumerate(queries):
            # Column by column, not a matrix product: duplicate documents get bit-identical
            # scores, so ties with the source are seen as ties.
            for t in query_ids[q]:
                out[i] += weights[:, column[t]]
        return out

    return score


def dense_pool_scorer(doc_vectors: np.ndarray, query_vectors: np.ndarray) -> PoolScorer:
    """Inner products of unit vectors (cosine); the corpus is encoded once, not per pool."""

    def score(pool: np.ndarray, queries: list[int]) -> np.ndarray:
        return query_vectors[queries] @ doc_vectors[pool].T

    return score


def bm25_corpus_ranks(
    doc_tokens: list[list[str]],
    query_tokens: list[list[str]],
    sources: Sequence[int],
    params: dict,
) -> np.ndarray:
    """Ranks over the whole corpus: one bm25s index, each query scored against every document."""
    model = _bm25s_index(doc_tokens, params)
    ranks = np.zeros(len(sources), dtype=np.int64)
    for i, (tokens, source) in enumerate(zip(query_tokens, sources, strict=True)):
        ranks[i] = source_ranks(_bm25s_scores(model, tokens), [source])[0]
    return ranks


def dense_corpus_ranks(
    doc_vectors: np.ndarray, query_vectors: np.ndarray, sources: Sequence[int]
) -> np.ndarray:
    """Exact ranks over the whole corpus, from blocks of full score rows.

    The source's score is read from the same product as the others' (a separate dot product can
    round differently, enough to miscount a duplicate of the source or the source itself).
    """
    sources = np.asarray(sources, dtype=np.int64)
    rows = max(1, _DENSE_BLOCK_CELLS // max(1, len(doc_vectors)))
    ranks = np.zeros(len(sources), dtype=np.int64)
    for start in range(0, len(sources), rows):
        block = query_vectors[start : start + rows] @ doc_vectors.T
        ranks[start : start + rows] = source_ranks(block, sources[start : start + rows])
    return ranks


def _check_inputs(records: list[dict], corpus: Corpus) -> dict[str, int]:
    position: dict[str, int] = {}
    if isinstance(corpus, Passages):
        # Checked when stored (string ids, no two alike): only the records' rows are read.
        ids = (r.get("doc_id") for r in records)
        position = rows_of(corpus, (d for d in ids if isinstance(d, str)))
    for i, p in enumerate(corpus if not isinstance(corpus, Passages) else ()):
        if not isinstance(p.get("id"), str) or not isinstance(p.get("text"), str):
            raise ValueError(f"corpus passage {i}: expected string 'id' and 'text', got {p!r:.200}")
        if p["id"] in position:
            raise ValueError(f"corpus: duplicate passage id {p['id']!r}")
        position[p["id"]] = i
    for i, r in enumerate(records):
        name = r.get("id", f"#{i}")
        for key in ("id", "doc_id", "query"):
            if not isinstance(r.get(key), str):
                raise ValueError(f"query record {name!r}: expected a string {key!r}")
        if r["doc_id"] not in position:
            raise ValueError(
                f"query {r['id']!r}: doc_id {r['doc_id']!r} is not a passage id of the corpus"
            )
        if "kept" in r and not isinstance(r["kept"], bool):
            raise ValueError(f"query {r['id']!r}: 'kept' must be true or false, got {r['kept']!r}")
        if not isinstance(r.get("filters", {}), dict):
            raise ValueError(f"query {r['id']!r}: 'filters' must be an object")
    return position


class _RowIds(Sequence):
    """The ids of stored passages by row, read when asked for (a pool's seed names its
    source)."""

    def __init__(self, passages: Passages):
        self.passages = passages

    def __len__(self) -> int:
        return len(self.passages)

    def __getitem__(self, row):
        return self.passages[row]["id"]


def _pool_rows(sources: list[int], doc_ids: Sequence[str], p: dict) -> np.ndarray:
    """Every row in some query's pool (sorted): the pools `pool_ranks` draws."""
    rows = {
        int(r)
        for source in set(sources)
        for r in sample_pool(
            len(doc_ids), source, p["pool_size"], stable_seed(p["seed"], doc_ids[source])
        )
    }
    return np.array(sorted(rows), dtype=np.int64)


def _within(rows: np.ndarray, scorer: PoolScorer) -> PoolScorer:
    """A scorer over the passages of `rows` (sorted) as one over corpus rows."""
    return lambda pool, queries: scorer(np.searchsorted(rows, pool), queries)


def _stored_ranks(p: dict, corpus: Passages, queries: list[str], sources: list[int]) -> np.ndarray:
    """`_ranks` over stored passages: a pool rule reads and scores the pools' passages only;
    `corpus_topk` streams every passage (BM25: an index built in chunks, memory-mapped)."""
    doc_ids = _RowIds(corpus)
    if p["rule"] == "corpus_topk":
        if p["filter"] == "bm25":
            ranks = np.zeros(len(sources), dtype=np.int64)
            with stored_bm25(corpus, p) as model:
                query_tokens = bm25_tokens(queries, p["stopwords"])
                for i, (tokens, source) in enumerate(zip(query_tokens, sources, strict=True)):
                    ranks[i] = source_ranks(_bm25s_scores(model, tokens), [source])[0]
            return ranks
        model = _dense_model(p)
        doc_vectors = encode_corpus(model, corpus, p, p["passage_prefix"], encoder=encode)
        query_vectors = encode(model, [p["query_prefix"] + q for q in queries], p)
        return dense_corpus_ranks(doc_vectors, query_vectors, sources)
    rows = _pool_rows(sources, doc_ids, p)
    passages = [passage_text(d) for first, last in _runs(rows) for d in corpus.span(first, last)]
    if p["filter"] == "bm25":
        doc_tokens = bm25_tokens(passages, p["stopwords"])
        scorer = bm25_pool_scorer(doc_tokens, bm25_tokens(queries, p["stopwords"]), p)
    else:
        model = _dense_model(p)
        doc_vectors = encode(model, [p["passage_prefix"] + t for t in passages], p)
        query_vectors = encode(model, [p["query_prefix"] + q for q in queries], p)
        scorer = dense_pool_scorer(doc_vectors, query_vectors)
    return pool_ranks(sources, doc_ids, _within(rows, scorer), p["pool_size"], p["seed"])


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Sorted rows as (first, last) ranges of consecutive rows (last not included)."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return [(int(run[0]), int(run[-1]) + 1) for run in np.split(rows, breaks) if len(run)]


def _dense_model(p: dict):
    if p["retriever"]:
        # A trained folder records whether its code may run (no setting given): the
        # node's setting is about its `encoder`.
        trained = {k: v for k, v in p.items() if k != "trust_remote_code"}
        return load_encoder({**trained, "encoder": p["retriever"]})
    return load_encoder(p)


def _ranks(p: dict, corpus: Corpus, queries: list[str], sources: list[int]) -> np.ndarray:
    if isinstance(corpus, Passages):
        return _stored_ranks(p, corpus, queries, sources)
    doc_ids = [d["id"] for d in corpus]
    if p["filter"] == "bm25":
        doc_tokens = bm25_tokens([passage_text(d) for d in corpus], p["stopwords"])
        query_tokens = bm25_tokens(queries, p["stopwords"])
        if p["rule"] == "corpus_topk":
            return bm25_corpus_ranks(doc_tokens, query_tokens, sources, p)
        scorer = bm25_pool_scorer(doc_tokens, query_tokens, p)
    else:
        model = _dense_model(p)
        doc_vectors = encode(model, [p["passage_prefix"] + passage_text(d) for d in corpus], p)
        query_vectors = encode(model, [p["query_prefix"] + q for q in queries], p)
        if p["rule"] == "corpus_topk":
            return dense_corpus_ranks(doc_vectors, query_vectors, sources)
        scorer = dense_pool_scorer(doc_vectors, query_vectors)
    return pool_ranks(sources, doc_ids, scorer, p["pool_size"], p["seed"])


def filter_queries(records: list[dict], corpus: Corpus, params: dict) -> tuple[list[dict], dict]:
    """Rank each candidate query's source document and keep or drop the query.

    params: one of FILTER_DEFAULTS overlaid with the user's, plus "filter" ("bm25" or "dense")
    and "seed" (missing keys take the defaults). Returns new records (same order, same count;
    candidates get `filters["<filter>_rank"]` and `kept`, the rest are copied unchanged; the
    input is not modified) and stats.
    """
    start = time.perf_counter()
    p = resolve_params(params)
    position = _check_inputs(records, corpus)
    out = [copy.deepcopy(r) for r in records]
    candidates = [i for i, r in enumerate(records) if r.get("kept", True)]
    sources = [position[records[i]["doc_id"]] for i in candidates]
    queries = [records[i]["query"] for i in candidates]
    ranks = _ranks(p, corpus, queries, sources) if candidates else np.zeros(0, dtype=np.int64)

    key = f"{p['filter']}_rank"
    for i, rank in zip(candidates, ranks, strict=True):
        out[i]["filters"] = {**out[i].get("filters", {}), key: int(rank)}
        out[i]["kept"] = bool(rank <= p["k"])

    seconds = time.perf_counter() - start
    n_kept = sum(out[i]["kept"] for i in candidates)
    stats: dict = {"filter": p["filter"], "rule": p["rule"], "k": p["k"]}
    if p["rule"] == "pool_top1":
        stats["pool_size"] = p["pool_size"]
        # Fewer other documents than pool_size: every pool is the whole corpus.
        stats["pool_is_whole_corpus"] = p["pool_size"] >= len(corpus) - 1
    stats |= {
        "n_records": len(records),
        "n_candidates": len(candidates),
        "n_kept": n_kept,
        "kept_fraction": round(n_kept / len(candidates), 4) if candidates else None,
        "mean_rank": round(float(ranks.mean()), 3) if candidates else None,
        "seconds": round(seconds, 3),
        "queries_per_second": round(len(candidates) / seconds, 1) if candidates else None,
        "params": {k: v for k, v in p.items() if k != "filter"},
    }
    return out, stats
