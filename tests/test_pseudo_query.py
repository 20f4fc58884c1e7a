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


# ---------------------------------------------------------------- RL of the writer

WORDS = ("apple", "banana", "cherry", "plum")
FRUIT = [
    {"id": "d0", "title": "", "text": "apple banana"},
    {"id": "d1", "title": "", "text": "cherry"},
    {"id": "d2", "title": "", "text": "apple cherry"},
    {"id": "d3", "title": "", "text": "plum"},
]


def bag_of_words(texts):
    """Unit vectors of word counts over WORDS: cosine is word overlap (no model)."""
    import numpy as np

    vectors = np.array([[t.lower().split().count(w) for w in WORDS] for t in texts], float)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def test_retrieval_rank_is_the_reciprocal_rank_of_the_source_passage():
    from ragtrain.training.rewards import RetrievalRank

    source = RetrievalRank.from_embedder(bag_of_words, FRUIT, depth=2)
    examples = [{"id": "a", "doc_id": "d1"}, {"id": "b", "doc_id": "d2"},
                {"id": "c", "doc_id": "d1"}, {"id": "d", "doc_id": "d3"}]  # fmt: skip
    # "cherry" finds d1 first; "apple cherry" (read past its label) d2 first; "apple"
    # ranks d1 third, below d0 and d2 (beyond depth 2: 0); an empty query scores 0.
    responses = ["cherry", "Query: apple cherry\nmore", "apple", "  "]
    assert source.ranks([e["doc_id"] for e in examples], responses) == [1, 1, 3, None]
    placed = source.score(examples, responses)
    assert placed == [[(6, 1.0)], [(24, 1.0)], [(5, 0.0)], [(2, 0.0)]]
    # A tie counts for the query: "banana" scores d0 alone above 0, d1-d3 tie at 0.
    assert source.ranks(["d3"], ["banana"]) == [2]
    assert source.score([{"id": "e", "doc_id": "d3"}], ["banana"]) == [[(6, 0.5)]]
    with pytest.raises(ValueError, match="example 'x' has no `doc_id`"):
        source.score([{"id": "x"}], ["cherry"])
    with pytest.raises(ValueError, match="passage 'd9' is not in the corpus"):
        source.ranks(["d9"], ["cherry"])


def test_retrieval_rank_over_a_stored_corpus_equals_the_list(tmp_path, monkeypatch):
    """The workflow's corpus (Passages: rows by the id table, vectors a block at a time)
    ranks as the list does, with no dict of every id."""
    import ragtrain.retrieval.index as index
    from ragtrain.data.passages import Passages, write_passages
    from ragtrain.training.rewards import RetrievalRank

    write_passages(tmp_path / "corpus.jsonl", FRUIT)
    monkeypatch.setattr(index, "ENCODE_BLOCK", 3)  # two blocks of the four passages
    queries = ["cherry", "apple cherry", "apple", "plum", "banana"]
    doc_ids = ["d1", "d2", "d1", "d3", "d3"]
    with Passages(tmp_path / "corpus.jsonl") as stored:
        source = RetrievalRank.from_embedder(bag_of_words, stored, depth=2)
        assert source._rows is None
        assert source.ranks(doc_ids, queries) == [1, 1, 3, 1, 2]
        assert source.ranks(doc_ids, queries) == RetrievalRank.from_embedder(
            bag_of_words, FRUIT, depth=2
        ).ranks(doc_ids, queries)
        with pytest.raises(ValueError, match="passage 'd9' is not in the corpus"):
            source.ranks(["d9"], ["cherry"])


def test_retrieval_rank_sources_name_their_retriever():
    from ragtrain.training.rewards import Rewards, check_specs, rank_retrievers

    specs = [{"kind": "retrieval_rank", "retriever": "r1", "weight": 0.5, "depth": 10}]
    check_specs(specs, "rewards")
    assert rank_retrievers([*specs, *specs, {"kind": "length"}]) == ["r1"]
    with pytest.raises(ValueError, match=r"rewards\[0\]\.retriever: a retrieval_rank source"):
        check_specs([{"kind": "retrieval_rank"}], "rewards")
    with pytest.raises(ValueError, match=r"\.retriever: no folder given for retriever 'r1'"):
        Rewards(specs, corpus=FRUIT)
    with pytest.raises(ValueError, match="needs the corpus its retriever ranks"):
        Rewards(specs, retrievers={"r1": "/nowhere"})


def test_ppo_prompts_over_passages_are_the_unlabelled_sample_pseudo_queries_take(tmp_path):
    """PPO of the writer (train-rl with --corpus) prompts with the passages that
    pseudo-queries of the same `docs` and seed write for, minus a dev share."""
    import argparse
    import json

    from ragtrain.data.passages import open_corpus
    from ragtrain.generation.pseudo_query import passage_prompts
    from ragtrain.stages.training import passage_records

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": p["id"], "title": p["title"],
                                          "text": p["text"]}) + "\n" for p in CORPUS))  # fmt: skip
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\n")
    args = argparse.Namespace(corpus=str(corpus), qrels=str(tmp_path / "qrels"),
                              prompt=str(ROOT / "resources/prompts/doc2query.jinja"))  # fmt: skip
    params = {"docs": 4, "seed": 3, "dev_fraction": 0.25}
    with open_corpus(corpus) as passages:
        train, dev = passage_records(args, params, passages)
        every = passage_records(args, {**params, "docs": None}, passages)
        with pytest.raises(ValueError, match="--corpus needs --qrels"):
            passage_records(argparse.Namespace(**{**vars(args), "qrels": None}), params, passages)
    sample = unlabelled_sample(CORPUS, {"d0"}, 4, seed=3)
    assert sorted(r["id"] for r in train + dev) == sorted(p["id"] for p in sample)
    assert len(dev) == 1 and not {r["id"] for r in dev} & {r["id"] for r in train}
    record = next(r for r in train + dev if r["id"] == sample[0]["id"])
    assert record == passage_prompts([sample[0]], TEMPLATE)[0]
    assert record["doc_id"] == record["id"] and record["answers"] == []
    turn = record["prompt"][-1]
    assert turn["role"] == "user" and sample[0]["text"] in turn["content"]
    # docs null: every unlabelled passage.
    assert sum(map(len, every)) == 5
