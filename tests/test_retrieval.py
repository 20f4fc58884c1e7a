import pytest

from ragtrain.graph.kinds import RETRIEVER_DEFAULTS
from ragtrain.retrieval.index import Index, build_index, resolve_encoder, retrieve

CORPUS = [
    {"id": "p1", "title": "Marel Dovant", "text": "Marel Dovant was born in Kesh in 1962."},
    {"id": "p2", "title": "Orvane Systems", "text": "Orvane Systems builds ferries in Ostrivale."},
    {"id": "p3", "title": "Kesh", "text": "Kesh is a river town in Valdoria."},
    {"id": "p4", "title": "Tollan Brisk", "text": "Tollan Brisk is a glassblower."},
]
EXAMPLES = [
    {
        "id": "q1",
        "question": "Where was Marel Dovant born?",
        "answers": ["Kesh"],
        "gold_doc_ids": ["p1"],
    },
    {
        "id": "q2",
        "question": "What does Orvane Systems build?",
        "answers": ["ferries"],
        "gold_doc_ids": ["p2"],
    },
    {
        "id": "q3",
        "question": "In what year was Ilse Quorn born?",
        "answers": [],
        "gold_doc_ids": [],
    },
]


@pytest.mark.parametrize("kind", ["bm25", pytest.param("dense", marks=pytest.mark.slow)])
def test_index_retrieves_gold_first(kind, tmp_path):
    params = {**RETRIEVER_DEFAULTS[kind], "kind": kind, "corpus": "c", "k": 2}
    build_index(CORPUS, params, tmp_path / "index")
    assert not (tmp_path / ".index.tmp").exists()
    index = Index(tmp_path / "index")
    examples, stats = retrieve(EXAMPLES, index, k=2)
    assert [ex["docs"][0]["id"] for ex in examples[:2]] == ["p1", "p2"]
    assert all(len(ex["docs"]) == 2 for ex in examples)
    scores = [d["score"] for d in examples[0]["docs"]]
    assert scores == sorted(scores, reverse=True)
    # Two answerable questions, both answers in the retrieved passages.
    assert stats["answer_recall@2"] == 1.0
    assert stats["gold_recall@2"] == 1.0
    assert stats["n"] == 3 and stats["n_answerable"] == 2


def test_k_larger_than_corpus_is_clamped(tmp_path):
    params = {**RETRIEVER_DEFAULTS["bm25"], "kind": "bm25", "corpus": "c"}
    build_index(CORPUS, params, tmp_path / "index")
    examples, stats = retrieve(EXAMPLES[:1], Index(tmp_path / "index"), k=10)
    assert len(examples[0]["docs"]) == 4
    assert stats["k"] == 10


def test_packaged_encoder_resolves_to_a_local_folder():
    from pathlib import Path

    folder = Path(resolve_encoder("sentence-transformers/all-MiniLM-L6-v2"))
    assert (folder / "modules.json").exists()
    assert resolve_encoder("org/some-other-encoder") == "org/some-other-encoder"
    # Someone's fine-tune of the same name is not the packaged model.
    assert resolve_encoder("me/all-MiniLM-L6-v2") == "me/all-MiniLM-L6-v2"


def test_gold_recall_counts_each_gold_passage(tmp_path):
    params = {**RETRIEVER_DEFAULTS["bm25"], "kind": "bm25", "corpus": "c"}
    build_index(CORPUS, params, tmp_path / "index")
    multihop = {
        "id": "m",
        "question": "Where was Marel Dovant born?",
        "answers": ["Valdoria"],
        "gold_doc_ids": ["p1", "p3"],
    }
    _, stats = retrieve([multihop], Index(tmp_path / "index"), k=1)
    assert stats["gold_recall@1"] == 0.5
    assert stats["answer_recall@1"] == 0.0
