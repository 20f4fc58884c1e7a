"""The corpus readers of the query, retriever-training and task stages over stored
passages (ragtrain.data.passages): the same results as over a list of passages, reading
the passages they need by id and row (a pool, a sample, the records' passages) and never
loading the corpus as a list."""

import argparse
import hashlib
import json
import random

import numpy as np
import pytest

from ragtrain.core.records import RecordError, read_jsonl
from ragtrain.data import loaders
from ragtrain.data import passages as ps
from ragtrain.data.passages import (
    Passages,
    ids_in_corpus,
    open_corpus,
    passages_with_ids,
    sample_passages,
    skipping,
    write_passages,
)
from ragtrain.generation.pseudo_query import query_sft_data, unlabelled_sample
from ragtrain.retrieval import lossnet
from ragtrain.retrieval import query_filters as qf
from ragtrain.retrieval import retriever_training as rt
from ragtrain.retrieval.index import bm25_top

WORDS = ["river", "bank", "loan", "money", "water", "fish", "boat", "city", "tower", "rain"]


def _corpus(n: int = 60) -> list[dict]:
    rng = random.Random(3)
    return [
        {"id": f"d{i}", "title": rng.choice(WORDS), "text": " ".join(rng.choices(WORDS, k=8))}
        for i in range(n)
    ]


CORPUS = _corpus()
RECORDS = [
    {"id": f"q{i}", "doc_id": f"d{i % 20}", "query": " ".join(random.Random(i).choices(WORDS, k=3))}
    for i in range(30)
] + [{"id": "q-none", "doc_id": "d5", "query": "zebra"}]  # no BM25 match


@pytest.fixture
def stored(tmp_path, monkeypatch):
    """CORPUS stored; the list loaders fail, so a reader that used them would fail."""
    write_passages(tmp_path / "corpus.jsonl", CORPUS)

    def refused(*args, **kwargs):
        raise AssertionError("the corpus was loaded as a list")

    monkeypatch.setattr(loaders, "load_corpus", refused)
    monkeypatch.setattr(loaders, "load_beir_corpus", refused)
    with Passages(tmp_path / "corpus.jsonl") as passages:
        yield passages


@pytest.fixture
def no_full_pass(monkeypatch):
    """Reading every passage (iteration, blocks) fails: only rows by id and row remain."""

    def refused(self, *args, **kwargs):
        raise AssertionError("every passage was read")

    monkeypatch.setattr(Passages, "__iter__", refused)
    monkeypatch.setattr(Passages, "blocks", refused)


class FakeEncoder:
    """A stand-in sentence encoder (not a model): a seeded vector per text."""

    def encode(self, texts, **kwargs):
        def vector(text):
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")
            return np.random.default_rng(seed).standard_normal(8)

        return np.array([vector(t) for t in texts], dtype=np.float32).reshape(len(texts), 8)


def test_skipping_maps_a_draw_from_the_other_rows_back_to_a_row():
    for skipped in ([], [0], [2, 3], [0, 1, 5], [9]):
        others = [r for r in range(10) if r not in skipped]
        rows = skipping(np.arange(len(others)), np.array(skipped, dtype=np.int64))
        assert rows.tolist() == others


def test_the_unlabelled_sample_is_drawn_by_row(stored, no_full_pass):
    for labelled in (set(), {"d0", "d7", "nope"}, {f"d{i}" for i in range(0, 60, 3)}):
        for n in (1, 5, 40, 100):
            expected = unlabelled_sample(CORPUS, labelled, n, seed=7)
            assert sample_passages(stored, labelled, n, seed=7) == expected


def test_the_pseudo_query_stage_samples_a_stored_corpus(stored, no_full_pass, monkeypatch):
    from ragtrain.generation import shards
    from ragtrain.stages.queries import cmd_pseudo_queries

    got = []
    monkeypatch.setattr(shards, "generate_in_shards", lambda gen, items, *a: got.extend(items))
    qrels = stored.path.parent / "qrels"
    qrels.mkdir()
    (qrels / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td3\t1\nq2\td4\t1\n")
    args = argparse.Namespace(
        params={"docs": 6, "seed": 2}, corpus=str(stored.path), qrels=str(qrels), model="m",
        prompt="p", work="w", output="o", stats="s", stage="pseudo-queries",
    )  # fmt: skip
    cmd_pseudo_queries(args)
    assert got == unlabelled_sample(CORPUS, {"d3", "d4"}, 6, seed=2)


@pytest.mark.parametrize(
    "params",
    [
        {"filter": "bm25", "rule": "pool_top1", "pool_size": 10, "k": 1},
        {"filter": "bm25", "rule": "pool_top1", "pool_size": 100, "k": 1},  # the whole corpus
        {"filter": "bm25", "rule": "corpus_topk", "k": 5, "method": "bm25+"},
        {"filter": "bm25", "rule": "corpus_topk", "k": 5},
        {"filter": "dense", "rule": "pool_top1", "pool_size": 10, "k": 1},
        {"filter": "dense", "rule": "corpus_topk", "k": 10},
    ],
)
def test_the_query_filters_rank_a_stored_corpus_as_a_list(stored, monkeypatch, params):
    monkeypatch.setattr(qf, "load_encoder", lambda p: FakeEncoder())
    expected = qf.filter_queries(RECORDS, CORPUS, params)
    if params["rule"] == "pool_top1":
        # Only the pools' passages are read.
        monkeypatch.setattr(Passages, "__iter__", lambda self: pytest.fail("a full pass"))
        monkeypatch.setattr(Passages, "blocks", lambda self, *a: pytest.fail("a full pass"))
    out, stats = qf.filter_queries(RECORDS, stored, params)
    assert out == expected[0]
    drop = ("seconds", "queries_per_second")
    assert {k: v for k, v in stats.items() if k not in drop} == {
        k: v for k, v in expected[1].items() if k not in drop
    }


def test_a_filter_names_a_record_whose_passage_is_not_stored(stored):
    bad = [*RECORDS, {"id": "x", "doc_id": "d999", "query": "river"}]
    with pytest.raises(ValueError, match="doc_id 'd999' is not a passage id"):
        qf.filter_queries(bad, stored, {"filter": "bm25"})


def test_bm25_over_stored_passages_ranks_as_in_memory(stored):
    queries = [r["query"] for r in RECORDS]
    assert bm25_top(stored, queries, 7) == bm25_top(CORPUS, queries, 7)


def test_training_pairs_and_triples_read_a_stored_corpus_by_id(stored, no_full_pass):
    queries = RECORDS[:12]
    assert rt.training_pairs(queries, stored) == rt.training_pairs(queries, CORPUS)
    with pytest.raises(ValueError, match="doc_id 'd99' is not in the corpus"):
        rt.training_pairs([{"id": "x", "doc_id": "d99", "query": "q"}], stored)
    params = {"negatives": "random", "max_triples": 8, "seed": 4}
    expected = rt.colbert_triples(queries, CORPUS, params)
    assert rt.colbert_triples(queries, stored, params) == expected


def test_hard_negative_triples_over_a_stored_corpus(stored):
    # `q-none` matches no passage: its negative is a random other one (the fallback).
    params = {"negatives": "hard", "max_triples": 40, "negatives_depth": 3, "seed": 1}
    expected = rt.colbert_triples(RECORDS, CORPUS, params)
    assert rt.colbert_triples(RECORDS, stored, params) == expected
    assert any(t[0] == "zebra" for t in expected)


def test_search_over_a_stored_corpus(stored, monkeypatch):
    texts = {r["id"]: r["query"] for r in RECORDS[:10]}
    assert rt.search("bm25", None, stored, texts, 5) == rt.search("bm25", None, CORPUS, texts, 5)
    monkeypatch.setattr(rt, "load_encoder", lambda p: FakeEncoder())
    expected = rt.search("biencoder", "m", CORPUS, texts, 5)
    assert rt.search("biencoder", "m", stored, texts, 5) == expected


def test_lossnet_negatives_over_a_stored_corpus(stored):
    queries = [r["query"] for r in RECORDS]
    sources = [r["doc_id"] for r in RECORDS]
    for depth in (1, 4):  # depth 1: the stand-in draw where the source is the top hit
        expected = lossnet.hard_negatives(queries, sources, CORPUS, depth, seed=3)
        assert lossnet.hard_negatives(queries, sources, stored, depth, seed=3) == expected


def test_the_query_sft_stage_reads_the_records_passages(stored, no_full_pass, tmp_path):
    from ragtrain.data.prompts import PromptTemplate
    from ragtrain.stages.queries import cmd_query_sft_data

    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    prompt = tmp_path / "p.jinja"
    prompt.write_text("Passage: {{ text }}\nQuery:")
    args = argparse.Namespace(
        input=str(tmp_path / "q.jsonl"), queries=None, qrels=None, corpus=str(stored.path),
        prompt=str(prompt), params={}, train=str(tmp_path / "train.jsonl"),
        dev=str(tmp_path / "dev.jsonl"), stats=str(tmp_path / "stats.json"),
    )  # fmt: skip
    cmd_query_sft_data(args)
    train, _, _ = query_sft_data(RECORDS, CORPUS, PromptTemplate(prompt), {}, "q")
    assert read_jsonl(args.train) == train


def test_passages_with_ids_from_a_list_or_stored(stored, no_full_pass):
    wanted = {"d3", "d40", "nope"}
    assert passages_with_ids(stored, wanted) == passages_with_ids(CORPUS, wanted)
    assert set(passages_with_ids(stored, wanted)) == {"d3", "d40"}


def test_judged_ids_are_looked_up_in_the_table_or_streamed(stored, monkeypatch, tmp_path):
    monkeypatch.setattr(loaders, "iter_corpus", lambda *a: pytest.fail("streamed"))
    assert ids_in_corpus(stored.path, {"d1", "d59", "x"}) == {"d1", "d59"}
    monkeypatch.undo()
    raw = tmp_path / "beir.jsonl"  # a BEIR file, no tables: its ids are streamed
    raw.write_text('{"_id": "a", "title": "", "text": "x"}\n{"_id": "b", "text": "y"}\n')
    monkeypatch.setattr(ps, "Passages", lambda *a: pytest.fail("tables built"))
    assert ids_in_corpus(raw, {"b", "c"}) == {"b"}
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(RecordError, match="empty"):
        ids_in_corpus(tmp_path / "empty.jsonl", {"a"})


def test_a_corpus_without_tables_is_opened_through_a_normalised_copy(tmp_path):
    raw = tmp_path / "beir.jsonl"
    raw.write_text('{"_id": "a", "title": "T", "text": "x"}\n{"_id": "b", "text": "y"}\n')
    with open_corpus(raw) as corpus:
        assert len(corpus) == 2 and corpus.by_id("b")["text"] == "y"
        copy = corpus.path
    assert not copy.exists() and not (tmp_path / "beir.offsets.npy").exists()
