"""Retriever training: the bi-encoder learns a mapping the base encoder does not know,
ColBERT trains and reranks, BM25 runs and hard negatives behave."""

from __future__ import annotations

import json

import pytest

from ragtrain.metrics.ir import evaluate_run
from ragtrain.retrieval import retriever_training
from ragtrain.retrieval.index import passage_text
from ragtrain.retrieval.retriever_training import (
    colbert_triples,
    hard_negative_triples,
    random_negative_triples,
    search,
    train_biencoder,
    train_colbert,
    training_pairs,
)

TOPICS = [
    ("Volcanoes", "A volcano erupts molten lava and ash from deep inside the earth."),
    ("Bread baking", "Bakers knead flour, water and yeast, then bake the dough in an oven."),
    ("Chess", "Chess is a board game where two players move kings, queens and pawns."),
    ("Honeybees", "Honeybees collect nectar from flowers and make honey in their hives."),
    ("Glaciers", "Glaciers are slow rivers of ice that carve valleys in mountains."),
    ("Violins", "The violin is a string instrument played with a bow."),
    ("Tides", "Ocean tides rise and fall with the pull of the moon."),
    ("Bicycles", "A bicycle has two wheels, pedals and a chain that drives the rear wheel."),
    ("Coffee", "Coffee beans are roasted and ground to brew a hot drink."),
    ("Lighthouses", "Lighthouses shine a bright lamp to guide ships near the coast."),
    ("Cheese", "Cheese is made by curdling milk and ageing the curds."),
    ("Comets", "Comets are icy bodies that grow glowing tails near the sun."),
]
CORPUS = [{"id": f"d{i}", "title": t, "text": x} for i, (t, x) in enumerate(TOPICS)]
# Invented code words, one per document: the base encoder cannot know which is which.
CODES = ["vrelkor", "quondip", "zantrix", "plimbo", "skorvane", "drumwel"]
CODES += ["fexalot", "gormish", "tarvune", "wibbant", "yostrel", "hulmerk"]
TRAIN_TEMPLATES = ["what is {w}?", "tell me about {w}"]
HELD_OUT_TEMPLATES = ["describe {w} to me", "{w} overview please"]


def _code_queries(templates: list[str], prefix: str) -> list[dict]:
    return [
        {"id": f"{prefix}{i}-{j}", "doc_id": f"d{i}", "query": tpl.format(w=w)}
        for i, w in enumerate(CODES)
        for j, tpl in enumerate(templates)
    ]


TRAIN = _code_queries(TRAIN_TEMPLATES, "t")
HELD_OUT = _code_queries(HELD_OUT_TEMPLATES, "h")
HELD_QUERIES = {q["id"]: q["query"] for q in HELD_OUT}
HELD_QRELS = {q["id"]: {q["doc_id"]: 1} for q in HELD_OUT}
FAST = {"epochs": 2, "batch_size": 12, "learning_rate": 1e-4, "max_seq_length": 64, "seed": 1}


def test_training_pairs_map_ids_to_passage_text():
    pairs = training_pairs(TRAIN[:2], CORPUS)
    assert pairs == [
        ("what is vrelkor?", passage_text(CORPUS[0])),
        ("tell me about vrelkor", "Volcanoes\n" + TOPICS[0][1]),
    ]
    with pytest.raises(ValueError, match="doc_id 'd99' is not in the corpus"):
        training_pairs([{"id": "x", "doc_id": "d99", "query": "q"}], CORPUS)
    with pytest.raises(ValueError, match="no field 'query'"):
        training_pairs([{"id": "x", "doc_id": "d1"}], CORPUS)


@pytest.fixture(scope="module")
def biencoder(tmp_path_factory):
    out = tmp_path_factory.mktemp("biencoder") / "model"
    dev = (HELD_QRELS, HELD_QUERIES, CORPUS)
    metrics = train_biencoder(training_pairs(TRAIN, CORPUS), FAST, out, dev=dev)
    return out, metrics


@pytest.mark.slow
def test_biencoder_learns_the_code_words(biencoder):
    out, metrics = biencoder
    # Held-out phrasings of the code words: near chance before, found after training.
    assert metrics["dev_base"]["mrr@10"] < 0.5
    assert metrics["dev"]["mrr@10"] >= 0.9
    assert metrics["dev"]["mrr@10"] > metrics["dev_base"]["mrr@10"] + 0.4
    # The saved folder is the trained model: searching with it gives the same numbers.
    run = search("biencoder", out, CORPUS, HELD_QUERIES, k=100)
    assert evaluate_run(HELD_QRELS, run) == metrics["dev"]
    base = search("biencoder", "all-MiniLM-L6-v2", CORPUS, HELD_QUERIES, k=100)
    assert evaluate_run(HELD_QRELS, base) == metrics["dev_base"]


@pytest.mark.slow
def test_biencoder_folder_is_complete(biencoder):
    out, metrics = biencoder
    assert (out / "modules.json").is_file() and (out / "model.safetensors").is_file()
    assert json.loads((out / "metrics.json").read_text()) == metrics
    # 24 pairs, 12 distinct documents, batches of 12, 2 epochs.
    assert metrics["n_pairs"] == 24 and metrics["steps"] == 4
    assert metrics["pairs_per_s"] > 0 and metrics["train_loss"] > 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    # Nothing but the model: no checkpoints inside, no temporary folder beside it.
    assert not list(out.glob("checkpoint-*"))
    assert [p.name for p in out.parent.iterdir()] == ["model"]
    assert (out / "model.safetensors").stat().st_mode & 0o044


@pytest.mark.slow
def test_biencoder_run_is_top_k_best_first(biencoder):
    out, _ = biencoder
    run = search("biencoder", out, CORPUS, HELD_QUERIES, k=3)
    assert set(run) == set(HELD_QUERIES)
    for hits in run.values():
        scores = list(hits.values())
        assert len(hits) == 3 and scores == sorted(scores, reverse=True)


@pytest.mark.slow
def test_biencoder_batches_never_repeat_a_passage(tmp_path):
    # Three pseudo-queries of one document: in one batch, each would have the other two
    # copies of its own passage as "negatives"; the sampler puts them in separate batches,
    # and every one of those batches is trained on (the trainer alone plans 1 step/epoch).
    pairs = [(f"question {i} about lava", passage_text(CORPUS[0])) for i in range(3)]
    params = {"epochs": 2, "batch_size": 3, "max_seq_length": 32}
    metrics = train_biencoder(pairs, params, tmp_path / "model")
    assert metrics["steps"] == 6


def test_training_refuses_empty_input(tmp_path):
    with pytest.raises(ValueError, match="no training pairs"):
        train_biencoder([], {}, tmp_path / "b")
    with pytest.raises(ValueError, match="no training triples"):
        train_colbert([], {}, tmp_path / "c")
    with pytest.raises(ValueError, match=r"biencoder\.batch_size"):
        train_biencoder([("q", "p")], {"batch_size": 0}, tmp_path / "b")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_bm25_finds_the_passage_sharing_rare_words():
    queries = {"q1": "curdling milk", "q2": "glowing tails", "q3": "xylophone zeppelin"}
    run = search("bm25", None, CORPUS, queries, k=5)
    assert next(iter(run["q1"])) == "d10" and next(iter(run["q2"])) == "d11"
    # A passage sharing no term is not a hit.
    assert run["q3"] == {}
    assert all(len(hits) <= 5 for hits in run.values())


# Queries naming a document's topic and one of its words: BM25 finds hard negatives for them.
TOPIC_QUERIES = [
    {"id": f"n{i}", "doc_id": f"d{i}", "query": f"{title.lower()} {text.split()[3]}"}
    for i, (title, text) in enumerate(TOPICS)
]


def test_hard_negatives_are_seeded_bm25_non_positives():
    params = {"max_triples": 5, "negatives_depth": 3, "seed": 7}
    triples = hard_negative_triples(TOPIC_QUERIES, CORPUS, params)
    assert len(triples) == 5
    assert triples == hard_negative_triples(TOPIC_QUERIES, CORPUS, params)
    assert triples != hard_negative_triples(TOPIC_QUERIES, CORPUS, {**params, "seed": 8})
    texts = {passage_text(p): p["id"] for p in CORPUS}
    by_query = {q["query"]: q["doc_id"] for q in TOPIC_QUERIES}
    bm25 = search("bm25", None, CORPUS, {q: q for q in by_query}, k=4)
    for query, positive, negative in triples:
        assert texts[positive] == by_query[query]
        assert negative != positive
        # From the BM25 top (depth 3 after the positive) when the query matches another doc.
        others = [d for d in bm25[query] if d != by_query[query]][:3]
        if others:
            assert texts[negative] in others


def test_hard_negatives_never_use_another_positive_of_the_same_query():
    # Two documents labelled for one query text: neither is a negative of it.
    queries = [
        {"id": "a", "doc_id": "d0", "query": "lava ash earth"},
        {"id": "b", "doc_id": "d4", "query": "lava ash earth"},
    ]
    for seed in range(5):
        for _, _, negative in hard_negative_triples(queries, CORPUS, {"seed": seed}):
            assert negative not in (passage_text(CORPUS[0]), passage_text(CORPUS[4]))
    with pytest.raises(ValueError, match=r"colbert\.negatives_depth"):
        hard_negative_triples(queries, CORPUS, {"negatives_depth": 0})


@pytest.mark.slow
def test_colbert_trains_saves_and_reranks_candidates(tmp_path, monkeypatch):
    triples = hard_negative_triples(TOPIC_QUERIES, CORPUS, {"max_triples": 8, "seed": 3})
    params = {"batch_size": 4, "document_length": 40, "query_length": 16, "seed": 1}
    out = tmp_path / "colbert"
    metrics = train_colbert(triples, params, out)
    # 2 batches of 4, or more where one triple's negative is another's positive (deferred).
    assert metrics["n_triples"] == 8 and 2 <= metrics["steps"] <= 8
    assert metrics["train_loss"] > 0 and metrics["triples_per_s"] > 0
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / "modules.json").is_file() and not list(out.glob("checkpoint-*"))

    queries = {q["id"]: q["query"] for q in TOPIC_QUERIES}
    # First-stage candidates that rank each query's own document last: three others, then it.
    candidates = {
        f"n{i}": {**{f"d{(i + j) % 12}": float(4 - j) for j in (1, 2, 3)}, f"d{i}": 0.0}
        for i in range(12)
    }
    run = search("colbert", out, CORPUS, queries, k=3, candidates=candidates)
    assert set(run) == set(queries)
    for qid, hits in run.items():
        assert len(hits) == 3 and set(hits) <= set(candidates[qid])
        scores = list(hits.values())
        assert scores == sorted(scores, reverse=True)
    # The reranker reads the text: each query's own document moves from last to first.
    found = [next(iter(run[q["id"]])) == q["doc_id"] for q in TOPIC_QUERIES]
    assert sum(found) >= 10
    # Queries are reranked in chunks (bounded memory): the chunking changes nothing.
    monkeypatch.setattr(retriever_training, "RERANK_CHUNK", 5)
    chunked = search("colbert", out, CORPUS, queries, k=3, candidates=candidates)
    for qid, hits in run.items():
        assert list(chunked[qid]) == list(hits)
        assert list(chunked[qid].values()) == pytest.approx(list(hits.values()), rel=1e-4)


def test_search_rejects_bad_requests(tmp_path):
    queries = {"q": "lava"}
    with pytest.raises(ValueError, match="search kind: expected one of"):
        search("splade", None, CORPUS, queries, k=3)
    with pytest.raises(ValueError, match="reranks candidates"):
        search("colbert", tmp_path, CORPUS, queries, k=3)
    with pytest.raises(ValueError, match="have no candidates"):
        search("colbert", tmp_path, CORPUS, queries, k=3, candidates={"other": {"d0": 1.0}})
    with pytest.raises(ValueError, match="not in the corpus"):
        search("colbert", tmp_path, CORPUS, queries, k=3, candidates={"q": {"d99": 1.0}})
    with pytest.raises(ValueError, match="k: expected a positive integer"):
        search("bm25", None, CORPUS, queries, k=0)


@pytest.mark.slow
def test_dense_filter_ranks_with_the_trained_biencoder(biencoder):
    from ragtrain.retrieval.query_filters import FILTER_DEFAULTS, filter_queries

    out, _ = biencoder
    params = {**FILTER_DEFAULTS["dense"], "filter": "dense", "rule": "corpus_topk", "k": 1}
    base, _ = filter_queries(HELD_OUT, CORPUS, params)
    trained, _ = filter_queries(HELD_OUT, CORPUS, {**params, "retriever": str(out)})
    # The base encoder cannot tell which code word names which passage; the trained one can,
    # and its ranks are those of a search with it.
    run = search("biencoder", out, CORPUS, HELD_QUERIES, k=12)
    for record in trained:
        assert (
            record["filters"]["dense_rank"] == list(run[record["id"]]).index(record["doc_id"]) + 1
        )
    assert sum(r["kept"] for r in trained) >= 10 > sum(r["kept"] for r in base) + 4


def test_random_negatives_are_seeded_non_positives_one_per_positive():
    queries = [
        *TOPIC_QUERIES,
        {"id": "a", "doc_id": "d0", "query": "lava ash earth"},
        {"id": "b", "doc_id": "d4", "query": "lava ash earth"},
        # Shares no word with any passage: BM25 has no negative for it, a random draw does.
        {"id": "c", "doc_id": "d1", "query": "xylophone zeppelin"},
    ]
    params = {"max_triples": 15, "seed": 3, "negatives": "random"}
    triples = colbert_triples(queries, CORPUS, params)
    assert triples == random_negative_triples(queries, CORPUS, params)
    assert len(triples) == 15  # one triple per (query, positive)
    assert triples != colbert_triples(queries, CORPUS, {**params, "seed": 4})
    texts = {passage_text(p): p["id"] for p in CORPUS}
    positives = {}
    for q in queries:
        positives.setdefault(q["query"], set()).add(q["doc_id"])
    for query, positive, negative in triples:
        assert texts[positive] in positives[query] and texts[negative] not in positives[query]
    # Random, not BM25's: over seeds, negatives outside BM25's top 10 turn up.
    bm25 = search("bm25", None, CORPUS, {q["query"]: q["query"] for q in TOPIC_QUERIES}, k=10)
    outside = {
        (query, negative)
        for seed in range(5)
        for query, _, negative in colbert_triples(TOPIC_QUERIES, CORPUS, {**params, "seed": seed})
        if texts[negative] not in bm25[query]
    }
    assert outside
    # `hard` (the default) is the BM25 sampler.
    hard = {"max_triples": 5, "seed": 3}
    assert colbert_triples(TOPIC_QUERIES, CORPUS, hard) == hard_negative_triples(
        TOPIC_QUERIES, CORPUS, hard
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"negatives": "mined"}, r"colbert.negatives: expected one of \['hard', 'random'\]"),
        ({"similarity": "dot"}, r"colbert.similarity: expected one of \['cosine', 'l2'\]"),
        ({"embedding_size": 0}, r"colbert.embedding_size: expected a positive integer"),
    ],
)
def test_bad_colbert_options_name_the_key(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        colbert_triples(TOPIC_QUERIES, CORPUS, change)
    with pytest.raises(ValueError, match=message):
        train_colbert([("q", "p", "n")], change, tmp_path / "model")


def test_l2_score_equals_a_hand_computation_and_skips_padding():
    import torch

    from ragtrain.retrieval.colbert_scores import l2_maxsim

    query = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # Two real tokens, then a pad that would match the second query token exactly.
    doc = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # Query token 1: distance 0 to d1. Token 2: min(||(0,1)-(1,0)||^2 = 2,
    # ||(0,1)-(0.6,0.8)||^2 = 0.36 + 0.04) = 0.4. Score: -(0 + 0.4).
    assert l2_maxsim(query, doc, documents_mask=mask).item() == pytest.approx(-0.4)
    assert l2_maxsim(query, doc).item() == pytest.approx(0.0)  # the pad, unmasked, wins
    # A masked query token adds nothing.
    qmask = torch.tensor([[1, 0]])
    assert l2_maxsim(query, doc, qmask, mask).item() == pytest.approx(0.0)


def test_l2_score_on_unit_vectors_is_an_affine_map_of_maxsim():
    import torch

    from ragtrain.retrieval.colbert_scores import L2Scores, l2_maxsim

    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 4, 8, generator=gen), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(5, 6, 8, generator=gen), dim=-1)
    maxsim = torch.einsum("ash,bth->abst", q, d).max(-1).values.sum(-1)
    # -||q - d||^2 = 2 q.d - 2 per token pair: 2 x MaxSim - 2 x (4 query tokens).
    torch.testing.assert_close(l2_maxsim(q, d), 2 * maxsim - 2 * 4, atol=1e-5, rtol=0)
    # As PyLate's contrastive score_metric: groups of N = 2 documents, query-major columns.
    groups = d[:4].reshape(2, 2, 6, 8)
    scores = L2Scores()(q, groups, documents_mask=torch.ones(2, 2, 6))
    assert scores.shape == (3, 4)
    torch.testing.assert_close(scores, l2_maxsim(q, d[:4]), atol=1e-5, rtol=0)


def test_l2_rerank_orders_candidates_of_any_length_best_first():
    import numpy as np

    from ragtrain.retrieval.colbert_scores import l2_rerank

    query = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    docs = [
        np.array([[0.6, 0.8]], dtype=np.float32),  # -(0.8 + 0.4)
        np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32),  # 0
        np.array([[1.0, 0.0]], dtype=np.float32),  # -(0 + 2)
    ]
    [hits] = l2_rerank([["a", "b", "c"]], [query], [docs])
    assert [h["id"] for h in hits] == ["b", "a", "c"]
    assert [h["score"] for h in hits] == pytest.approx([0.0, -1.2, -2.0])
    assert l2_rerank([[]], [query], [[]]) == [[]]


@pytest.mark.slow
def test_colbert_in_the_seeds_setting_trains_and_reranks_by_l2(tmp_path):
    params = {"batch_size": 4, "document_length": 40, "query_length": 16, "seed": 1,
              "max_triples": 8, "negatives": "random", "similarity": "l2",
              "embedding_size": 64}  # fmt: skip
    triples = colbert_triples(TOPIC_QUERIES, CORPUS, params)
    out = tmp_path / "colbert"
    metrics = train_colbert(triples, params, out)
    assert (metrics["similarity"], metrics["negatives"], metrics["embedding_size"]) == (
        "l2", "random", 64,
    )  # fmt: skip
    assert json.loads((out / "ragtrain_colbert.json").read_text()) == {"similarity": "l2"}
    queries = {q["id"]: q["query"] for q in TOPIC_QUERIES}
    candidates = {
        f"n{i}": {**{f"d{(i + j) % 12}": float(4 - j) for j in (1, 2, 3)}, f"d{i}": 0.0}
        for i in range(12)
    }
    run = search("colbert", out, CORPUS, queries, k=4, candidates=candidates)
    # L2 scores: never above 0 (MaxSim's over unit vectors are mostly positive).
    assert all(s <= 0 for hits in run.values() for s in hits.values())
    found = [next(iter(run[q["id"]])) == q["doc_id"] for q in TOPIC_QUERIES]
    assert sum(found) >= 9
