"""Pseudo-query products: doc -> query SFT data, generation, difficulty and pairs."""

import pytest

from ragtrain.core.records import RecordError
from ragtrain.data.prompts import PromptTemplate
from ragtrain.generation.engine import Completion, Throughput
from ragtrain.generation.pseudo_query import (
    clean_query,
    generate_queries,
    preference_pairs,
    query_sft_data,
    unlabelled_sample,
    with_difficulty,
)
from ragtrain.graph.kinds import GENERATION_DEFAULTS
from tests.conftest import ROOT

TEMPLATE = PromptTemplate(ROOT / "resources" / "prompts" / "doc2query.jinja")
CORPUS = [{"id": f"d{i}", "title": f"Title {i}", "text": f"Passage number {i}."} for i in range(6)]


def test_sft_data_holds_out_whole_passages_and_keeps_the_order():
    queries = [{"id": f"q{i}", "doc_id": f"d{i % 3}", "query": f"query {i}"} for i in range(9)]
    queries.append({"id": "dropped", "doc_id": "d4", "query": "x", "kept": False})
    train, dev, stats = query_sft_data(queries, CORPUS, TEMPLATE, {"dev_fraction": 0.34}, "src")
    assert stats["n_used"] == 9 and len(train) + len(dev) == 9
    dev_docs = {r["id"] for r in dev}
    assert dev and train
    # A passage is entirely in one split.
    by_doc = {q["id"]: q["doc_id"] for q in queries}
    assert not {by_doc[i] for i in dev_docs} & {by_doc[r["id"]] for r in train}
    assert [r["id"] for r in train] == [
        q["id"] for q in queries if q["id"] in {r["id"] for r in train}
    ]
    first = train[0]
    assert "Passage number" in first["prompt"][0]["content"]
    assert first["completion"] == [{"role": "assistant", "content": by_query(queries, first["id"])}]


def by_query(queries, qid):
    return next(q["query"] for q in queries if q["id"] == qid)


def test_sft_data_unknown_passage_names_the_query():
    with pytest.raises(RecordError, match="query 'q1': passage 'nope'"):
        query_sft_data([{"id": "q1", "doc_id": "nope", "query": "x"}], CORPUS, TEMPLATE, {}, "src")


def test_unlabelled_sample_skips_labelled_passages_and_is_seeded():
    sample = unlabelled_sample(CORPUS, {"d0", "d1"}, 3, seed=5)
    assert len(sample) == 3 and not {p["id"] for p in sample} & {"d0", "d1"}
    assert sample == unlabelled_sample(CORPUS, {"d0", "d1"}, 3, seed=5)
    assert len(unlabelled_sample(CORPUS, {"d0"}, 100, seed=5)) == 5


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Query: who makes maps in Tramvale?\nMore text", "who makes maps in Tramvale?"),
        ('  "the plant scientist from Oslo"  ', "the plant scientist from Oslo"),
        ("\n\nsearch: pottery firm", "pottery firm"),
        ("   ", ""),
    ],
)
def test_clean_query(raw, clean):
    assert clean_query(raw) == clean


class ScriptedGenerator:
    """A stand-in generator (not a model): returns scripted texts, to test the bookkeeping."""

    def __init__(self, texts):
        self.texts = texts
        self.throughput = Throughput()

    def chat(self, conversations, sampling, seeds=None):
        return [[Completion(t, 3) for t in self.texts] for _ in conversations]


def test_generate_queries_drops_empty_and_repeated(tmp_path):
    generator = ScriptedGenerator(["Query: pottery firm", "pottery FIRM", "", "map maker"])
    generation = {**GENERATION_DEFAULTS, "seed": 1, "temperature": 0.7}
    params = {"per_doc": 4, "shard_size": 2, "generation": generation}
    queries, stats = generate_queries(CORPUS[:3], lambda: generator, TEMPLATE, params, tmp_path)
    assert [q["query"] for q in queries if q["doc_id"] == "d0"] == ["pottery firm", "map maker"]
    assert stats["n_queries"] == 6 and stats["dropped_empty"] == 3
    assert stats["dropped_repeated"] == 3
    assert len({q["id"] for q in queries}) == 6


def test_difficulty_is_the_source_rank():
    run = {"a": {"d1": 0.9, "d0": 0.5}, "b": {"d2": 0.1}}
    queries = [
        {"id": "a", "doc_id": "d0", "query": "x"},
        {"id": "b", "doc_id": "d2", "query": "y"},
        {"id": "c", "doc_id": "d3", "query": "z"},
    ]
    out = with_difficulty(queries, lambda texts, k: run, depth=5)
    assert [q["difficulty"] for q in out] == [2, 1, 6]


def test_pairs_put_a_kept_query_over_a_dropped_one_easy_to_hard():
    queries = [
        {"id": "k1", "doc_id": "d0", "query": "good zero", "difficulty": 3},
        {"id": "x1", "doc_id": "d0", "query": "bad zero", "difficulty": 50, "kept": False},
        {"id": "k2", "doc_id": "d1", "query": "good one", "difficulty": 1, "kept": True},
        {"id": "x2", "doc_id": "d1", "query": "bad one", "difficulty": 9, "kept": False},
        # a passage whose queries all passed gives no pair
        {"id": "k3", "doc_id": "d2", "query": "good two", "difficulty": 2},
    ]
    train, dev, stats = preference_pairs(queries, CORPUS, TEMPLATE, {"dev_fraction": 0}, "src")
    assert dev == [] and stats["n_pairs"] == 2
    assert [p["chosen"][0]["content"] for p in train] == ["good one", "good zero"]
    assert [p["rejected"][0]["content"] for p in train] == ["bad one", "bad zero"]
    assert "Passage number 1" in train[0]["prompt"][0]["content"]
    assert stats["mean_difficulty_kept"] == 2.0
