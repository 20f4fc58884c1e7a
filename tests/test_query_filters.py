"""The BM25 and dense pseudo-query filters on corpora small enough to know the right answer."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest

from ragtrain.retrieval import query_filters as qf
from ragtrain.retrieval.query_filters import (
    BM25_METHODS,
    FILTER_DEFAULTS,
    bm25_pool_scorer,
    bm25_tokens,
    dense_corpus_ranks,
    filter_queries,
    pool_ranks,
    sample_pool,
    source_ranks,
)

CORPUS = [
    {"id": "glass", "title": "Zorvik Tenmark",
     "text": "Zorvik Tenmark blows glass vases in the harbour town of Ulbrin."},
    {"id": "beer", "title": "Pelu Ousk",
     "text": "Pelu Ousk brews dark beer beside the river Kessaly."},
    {"id": "bees", "title": "Harn Dovegate",
     "text": "Harn Dovegate keeps honey bees on the hills above Marrowby."},
    {"id": "clocks", "title": "Quillon Vey",
     "text": "Quillon Vey repairs old clocks and watches in Stavenholm."},
]  # fmt: skip
OWN = {"id": "q-own", "doc_id": "glass", "query": "Which glassblower in Ulbrin is Zorvik Tenmark?"}
OTHER = {"id": "q-other", "doc_id": "glass", "query": "Who brews dark beer beside the Kessaly?"}


def params(name: str, **over) -> dict:
    return {**FILTER_DEFAULTS[name], "filter": name, "seed": 13, **over}


@pytest.mark.parametrize("name", ["bm25", pytest.param("dense", marks=pytest.mark.slow)])
@pytest.mark.parametrize("rule", ["pool_top1", "corpus_topk"])
def test_query_naming_its_document_is_kept_and_one_about_another_is_dropped(name, rule):
    out, stats = filter_queries([OWN, OTHER], CORPUS, params(name, rule=rule, k=1))
    key = f"{name}_rank"
    assert out[0]["filters"][key] == 1 and out[0]["kept"] is True
    assert out[1]["filters"][key] > 1 and out[1]["kept"] is False
    assert stats["n_candidates"] == 2 and stats["n_kept"] == 1 and stats["kept_fraction"] == 0.5
    # three other documents, fewer than pool_size: the pool is the whole corpus
    assert stats.get("pool_is_whole_corpus", True) is True


def test_records_already_dropped_pass_through_and_input_is_not_modified():
    dropped = {**OWN, "id": "q-dropped", "kept": False, "filters": {"dense_rank": 40}}
    earlier = {**OWN, "id": "q-earlier", "kept": True, "filters": {"dense_rank": 2},
               "difficulty": 0.7}  # fmt: skip
    records = [dropped, earlier, OTHER]
    before = copy.deepcopy(records)
    out, stats = filter_queries(records, CORPUS, params("bm25"))
    assert records == before
    assert out[0] == dropped and out[0] is not dropped
    assert out[1] == {**earlier, "filters": {"dense_rank": 2, "bm25_rank": 1}, "kept": True}
    assert out[2]["kept"] is False
    assert [r["id"] for r in out] == ["q-dropped", "q-earlier", "q-other"]
    assert (stats["n_records"], stats["n_candidates"], stats["n_kept"]) == (3, 2, 1)


@pytest.mark.parametrize("rule", ["pool_top1", "corpus_topk"])
def test_ties_count_against_the_source(rule):
    twin = {**CORPUS[0], "id": "glass-copy"}
    corpus = [*CORPUS, twin]
    silent = {"id": "q-silent", "doc_id": "beer", "query": "what is it about?"}  # stopwords only
    out, _ = filter_queries([OWN, silent], corpus, params("bm25", rule=rule, k=1))
    assert out[0]["filters"]["bm25_rank"] == 2 and out[0]["kept"] is False
    # no word in common with any document: every score is 0, so every document ties
    assert out[1]["filters"]["bm25_rank"] == len(corpus) and out[1]["kept"] is False
    out, _ = filter_queries([OWN], corpus, params("bm25", rule=rule, k=2))
    assert out[0]["kept"] is True
    assert source_ranks(np.array([[0.5, 0.5, 0.2], [0.1, 0.5, 0.2]]), [0, 2]).tolist() == [2, 2]


def test_missing_doc_id_is_reported_with_the_query_and_doc_ids():
    bad = {"id": "q-lost", "doc_id": "nope", "query": "anything"}
    with pytest.raises(ValueError, match=r"q-lost.*'nope'"):
        filter_queries([OWN, bad], CORPUS, params("bm25"))


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"filter": "sparse"}, r"filter: expected one of \['bm25', 'dense'\], got 'sparse'"),
        ({"rule": "top3"}, r"bm25.rule: expected one of \['pool_top1', 'corpus_topk'\]"),
        ({"k": 0}, r"bm25.k: expected an integer >= 1"),
        ({"method": "okapi"}, r"bm25.method: expected one of \['robertson'"),
        ({"pool_sise": 3}, r"unknown bm25 filter key\(s\) \['pool_sise'\]"),
    ],
)
def test_bad_params_name_the_key_and_the_allowed_values(over, match):
    with pytest.raises(ValueError, match=match):
        filter_queries([OWN], CORPUS, params("bm25") | over)


def test_seeded_pools_are_reproducible_and_differ_by_seed():
    pool = sample_pool(1000, 7, 300, seed=1)
    assert pool[0] == 7 and len(pool) == 301 and len(set(pool.tolist())) == 301
    assert 7 not in pool[1:].tolist() and pool.min() >= 0 and pool.max() < 1000
    assert np.array_equal(pool, sample_pool(1000, 7, 300, seed=1))
    assert set(pool.tolist()) != set(sample_pool(1000, 7, 300, seed=2).tolist())
    # no more other documents than pool_size: the pool is the whole corpus, whatever the seed
    assert sorted(sample_pool(5, 2, 300, seed=1).tolist()) == [0, 1, 2, 3, 4]


def test_queries_of_one_document_share_one_pool():
    calls = []

    def scorer(pool, queries):
        calls.append((pool.tolist(), list(queries)))
        return np.zeros((len(queries), len(pool)))

    doc_ids = [f"d{i}" for i in range(50)]
    ranks = pool_ranks([3, 9, 3, 3], doc_ids, scorer, pool_size=10, seed=5)
    assert [c[1] for c in calls] == [[0, 2, 3], [1]]
    assert all(len(c[0]) == 11 for c in calls)
    assert ranks.tolist() == [11, 11, 11, 11]  # all scores tie: last place in the pool
    again = []
    pool_ranks([3], doc_ids, lambda p, q: again.append(p.tolist()) or np.zeros((1, 11)), 10, 5)
    assert again[0] == calls[0][0]


def _random_corpus(n_docs: int, n_queries: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(300)]
    corpus = [
        {"id": f"d{i}", "title": "", "text": " ".join(rng.choices(vocab, k=12))}
        for i in range(n_docs)
    ]
    records = []
    for i in range(n_queries):
        doc = rng.randrange(n_docs)
        words = rng.sample(corpus[doc]["text"].split(), 1) + rng.choices(vocab, k=3)
        records.append({"id": f"q{i}", "doc_id": f"d{doc}", "query": " ".join(words)})
    return corpus, records


def test_bm25_pool_ranks_are_reproducible_and_depend_on_the_seed():
    corpus, records = _random_corpus(120, 60)

    def ranks(seed):
        out, _ = filter_queries(records, corpus, params("bm25", pool_size=20, seed=seed))
        return [r["filters"]["bm25_rank"] for r in out]

    first = ranks(1)
    assert first == ranks(1)
    assert first != ranks(2)
    assert max(first) <= 21 and len(set(first)) > 3


@pytest.mark.parametrize("method", BM25_METHODS)
def test_bm25_pool_scores_equal_a_bm25s_index_built_over_the_pool(method):
    import bm25s

    corpus, records = _random_corpus(80, 6)
    corpus[5]["text"] = ""  # an empty document, and a repeated word in a query
    records[0]["query"] += " " + records[0]["query"].split()[0]
    docs = bm25_tokens([d["text"] for d in corpus], "en")
    queries = bm25_tokens([r["query"] for r in records], "en")
    bm25 = {"k1": 1.2, "b": 0.6, "method": method}
    pool = sample_pool(len(corpus), 3, 30, seed=4)
    pool[5] = 5
    ours = bm25_pool_scorer(docs, queries, bm25)(pool, list(range(len(queries))))
    index = bm25s.BM25(**bm25)
    index.index([docs[i] for i in pool], show_progress=False)
    for row, tokens in zip(ours, queries, strict=True):
        known = [t for t in tokens if t in index.vocab_dict]
        assert known  # the comparison means something only if the query matches the pool
        np.testing.assert_allclose(row, index.get_scores(known), rtol=1e-5, atol=1e-6)


def test_bm25_pool_over_the_whole_corpus_ranks_as_corpus_topk():
    corpus, records = _random_corpus(120, 60)

    def ranks(**over):
        out, _ = filter_queries(records, corpus, params("bm25", **over))
        return [r["filters"]["bm25_rank"] for r in out]

    # a pool holding every document has the corpus's IDF: the same ranks as the bm25s index
    assert ranks(pool_size=500) == ranks(rule="corpus_topk")


def test_dense_corpus_ranks_are_the_same_computed_in_blocks(monkeypatch):
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((50, 8)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = docs[[4, 9, 30]] + 0.5 * rng.standard_normal((3, 8)).astype(np.float32)
    sources = [4, 9, 7]
    whole = dense_corpus_ranks(docs, queries, sources)
    # the source's score is read from the same product as the others' (a separate dot product
    # may round differently and miscount the source itself)
    expected = [
        int((docs @ q >= (docs @ q)[s]).sum()) for q, s in zip(queries, sources, strict=True)
    ]
    assert whole.tolist() == expected
    monkeypatch.setattr(qf, "_DENSE_BLOCK_CELLS", 100)  # two queries per block
    assert dense_corpus_ranks(docs, queries, sources).tolist() == expected


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"retriever": ""}, r"dense.retriever: expected a model folder, got ''"),
        ({"retriever": "m", "query_prefix": "query: "}, r"dense.query_prefix: a trained retriever"),
    ],
)
def test_bad_dense_retriever_params_name_the_key(over, match):
    with pytest.raises(ValueError, match=match):
        filter_queries([OWN], CORPUS, params("dense") | over)


@pytest.mark.parametrize("rule", ["pool_top1", "corpus_topk"])
def test_dense_filter_ranks_with_the_trained_retriever_when_named(monkeypatch, rule):
    # Stand-ins: the untrained encoder sees a query about beer as about beer; the "trained"
    # one has learnt to send it to the glass passage (as a few-shot DPR may).
    loaded = []

    def fake_load(p):
        loaded.append((p["encoder"], p.get("trust_remote_code")))
        return p["encoder"]

    def fake_encode(model, texts, p):
        out = np.zeros((len(texts), 4), dtype=np.float32)
        for i, text in enumerate(texts):
            words = text.lower()
            topic = next(j for j, w in enumerate(("glass", "beer", "bees", "clocks")) if w in words)
            if model == "/models/dpr" and topic == 1 and "?" in text:
                topic = 0
            out[i, topic] = 1.0
        return out

    monkeypatch.setattr(qf, "load_encoder", fake_load)
    monkeypatch.setattr(qf, "encode", fake_encode)
    base, _ = filter_queries([OTHER], CORPUS, params("dense", rule=rule, k=1))
    trained, stats = filter_queries(
        [OTHER], CORPUS, params("dense", rule=rule, k=1, retriever="/models/dpr")
    )
    assert base[0]["kept"] is False and base[0]["filters"]["dense_rank"] > 1
    assert trained[0]["kept"] is True and trained[0]["filters"]["dense_rank"] == 1
    # The trained folder, whose own record says whether its code may run.
    assert loaded == [("all-MiniLM-L6-v2", False), ("/models/dpr", None)]
    assert stats["params"]["retriever"] == "/models/dpr"


def test_the_stage_gives_the_dense_filter_the_trained_models_folder(monkeypatch, tmp_path):
    import argparse
    import json

    from ragtrain.stages.queries import cmd_query_filter

    loaded = []
    monkeypatch.setattr(qf, "load_encoder", lambda p: loaded.append(p["encoder"]))
    monkeypatch.setattr(
        qf, "encode", lambda model, texts, p: np.eye(len(texts), 4, dtype=np.float32)
    )
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in CORPUS))
    (tmp_path / "q.jsonl").write_text(json.dumps(OWN) + "\n")
    node = {"kind": "query_filter", "filter": "dense", "from": "q", "retriever": "pq_gold"}
    args = argparse.Namespace(
        params=node, input=str(tmp_path / "q.jsonl"), corpus=str(tmp_path / "corpus.jsonl"),
        queries=None, qrels=None, retriever=None, output=str(tmp_path / "out.jsonl"),
        stats=str(tmp_path / "stats.json"),
    )  # fmt: skip
    with pytest.raises(ValueError, match="names retriever 'pq_gold': give its folder"):
        cmd_query_filter(args)
    args.retriever = str(tmp_path / "models" / "pq_gold")
    cmd_query_filter(args)
    # A trained retriever's model sits in `model` beside its metrics.json.
    assert loaded == [str(tmp_path / "models" / "pq_gold" / "model")]
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["params"]["retriever"] == loaded[0]
