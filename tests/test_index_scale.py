"""Retrieval at scale: the FAISS index kinds of a `dense` retriever, their stored vectors
and settings, their config checks, and bm25s searched memory-mapped. No encoder loads:
vectors are synthetic (a seeded Gaussian mixture), or a stub encoder makes them."""

import json

import numpy as np
import pytest

from ragtrain.graph.config import ConfigError, check_config, prepare
from ragtrain.graph.kinds import RETRIEVER_DEFAULTS
from ragtrain.retrieval import index as ix
from ragtrain.retrieval.index import (
    DENSE_INDEX_DEFAULTS,
    Index,
    build_faiss,
    build_index,
    check_dense_index,
    dense_search,
    load_bm25,
    load_faiss,
)
from tests.test_config import config

DIM, N, QUERIES = 64, 5000, 100


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """FAISS's OpenMP threads spin against each other on a busy 2-core CI machine (k-means
    of 5,000 vectors took 14 s on 2 threads, under 1 s on one)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    """(embeddings.npy path, its vectors, queries): 50 clusters, queries near passages."""
    rng = np.random.default_rng(0)
    centres = _unit(rng.standard_normal((50, DIM)))
    x = _unit(centres[rng.integers(0, 50, N)] + 1.2 * _unit(rng.standard_normal((N, DIM))))
    queries = _unit(
        x[rng.choice(N, QUERIES, replace=False)] + 0.5 * _unit(rng.standard_normal((QUERIES, DIM)))
    )
    path = tmp_path_factory.mktemp("vectors") / "embeddings.npy"
    np.save(path, x)
    return path, x, queries


def _exact(x, queries, k=10):
    return np.argsort(-(queries @ x.T), axis=1, kind="stable")[:, :k]


def _recall(found, exact):
    return np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)])


# recall@10 against exact search, at 5,000 vectors (64-d): IVF probes 32 of 283 lists
# (the default, 256, would probe nearly all); HNSW searches 128 candidates (the default);
# IVF-PQ: 16 codes of 6 bits (8 x 256 centroids, the default, took 6 s of CI to train),
# its top 40 rescored exactly. Measured: 1.0, 0.998, 0.978 (0.68 unrescored), 1.0.
KINDS = {"flat": 1.0, "ivf_flat": 0.95, "ivf_pq": 0.9, "hnsw": 0.95}


@pytest.mark.parametrize("kind", KINDS)
def test_each_index_kind_finds_the_exact_neighbours(kind, vectors, tmp_path):
    path, x, queries = vectors
    params = {**DENSE_INDEX_DEFAULTS, "index": kind, "nprobe": 32}
    if kind == "ivf_pq":
        params.update(m=16, nbits=6, refine=4)
    build_faiss(path, params, tmp_path)
    ids, scores = dense_search(load_faiss(tmp_path, params), queries, 10, params, path.parent)
    assert ids.shape == (QUERIES, 10)
    assert _recall(ids, _exact(x, queries)) >= KINDS[kind]
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    if kind == "ivf_pq":  # the codes' own scores, unrescored, find fewer
        alone, _ = dense_search(
            load_faiss(tmp_path, params), queries, 10, {**params, "refine": 0}, path.parent
        )
        assert _recall(alone, _exact(x, queries)) < KINDS[kind]
    if kind == "flat":
        np.testing.assert_allclose(
            scores, np.sort(queries @ x.T, axis=1)[:, ::-1][:, :10], atol=1e-5
        )


def test_ivf_training_is_seeded(vectors, tmp_path):
    path, _, queries = vectors
    params = {**DENSE_INDEX_DEFAULTS, "index": "ivf_flat", "nlist": 20, "nprobe": 2}
    params = {**params, "train_size": 1000, "seed": 7}
    found = []
    for run in ("a", "b", "c"):
        (tmp_path / run).mkdir()
        seeded = {**params, "seed": 8} if run == "c" else params
        build_faiss(path, seeded, tmp_path / run)
        found.append(dense_search(load_faiss(tmp_path / run, seeded), queries, 10, seeded, path)[0])
    np.testing.assert_array_equal(found[0], found[1])
    assert (found[0] != found[2]).any()  # another seed, another sample and k-means


class StubEncoder:
    """Stands in for a sentence-transformers model: a text's vector is a row of `vectors`
    (a passage `p<i>`) or a query's own."""

    def __init__(self, vectors, queries):
        self.vectors, self.queries, self.calls = vectors, queries, 0

    def get_sentence_embedding_dimension(self):
        return self.vectors.shape[1]

    def encode(self, texts, **kwargs):
        self.calls += 1
        rows = [
            self.queries[int(t[1:])] if t[0] == "q" else self.vectors[int(t[1:])] for t in texts
        ]
        return np.stack(rows)


def _stub(monkeypatch, vectors, queries):
    stub = StubEncoder(vectors, queries)
    monkeypatch.setattr(ix, "load_encoder", lambda params: stub)
    return stub


def _dense(**settings):
    return {**RETRIEVER_DEFAULTS["dense"], "kind": "dense", "corpus": "c", **settings}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_embeddings_are_stored_in_blocks_in_their_dtype(dtype, vectors, tmp_path, monkeypatch):
    _, x, queries = vectors
    x, queries = x[:600], queries[:20]
    stub = _stub(monkeypatch, x, queries)
    # Small blocks: encoding and reading back go through several of them.
    monkeypatch.setattr(ix, "ENCODE_BLOCK", 256)
    monkeypatch.setattr(ix, "ROW_BLOCK", 100)
    corpus = [{"id": f"d{i}", "title": "", "text": f"p{i}"} for i in range(len(x))]
    build_index(corpus, _dense(embedding_dtype=dtype), tmp_path / "index")
    assert stub.calls == 3
    stored = np.load(tmp_path / "index" / "embeddings.npy")
    assert stored.dtype == np.dtype(dtype) and stored.shape == x.shape
    np.testing.assert_allclose(stored, x, atol=1e-3 if dtype == "float16" else 0)
    hits = Index(tmp_path / "index").search([f"q{i}" for i in range(20)], 10)
    exact = _exact(stored.astype(np.float32), queries)
    assert [[i for i, _ in h] for h in hits] == exact.tolist()


def test_search_settings_are_saved_with_the_index(vectors, tmp_path, monkeypatch):
    _, x, queries = vectors
    _stub(monkeypatch, x[:2000], queries)
    corpus = [{"id": f"d{i}", "title": "", "text": f"p{i}"} for i in range(2000)]
    for kind, given in (("ivf_flat", {"nlist": 40, "nprobe": 7}), ("hnsw", {"ef_search": 33})):
        build_index(corpus, _dense(index=kind, **given), tmp_path / kind)
        loaded = Index(tmp_path / kind)
        assert json.loads((tmp_path / kind / "retriever.json").read_text())["index"] == kind
        if kind == "ivf_flat":
            assert (loaded._faiss.nlist, loaded._faiss.nprobe) == (40, 7)
        else:
            assert loaded._faiss.hnsw.efSearch == 33
        assert len(loaded.search(["q0", "q1"], 5)[1]) == 5


def test_an_index_built_before_the_kinds_is_flat(vectors, tmp_path):
    import faiss

    _, x, queries = vectors
    flat = faiss.IndexFlatIP(DIM)
    flat.add(x)
    faiss.write_index(flat, str(tmp_path / "dense.faiss"))
    old = {k: v for k, v in _dense().items() if k not in DENSE_INDEX_DEFAULTS}
    ids, _ = dense_search(load_faiss(tmp_path, old), queries, 10, old, tmp_path)
    np.testing.assert_array_equal(ids, _exact(x, queries))


@pytest.mark.parametrize(
    ("settings", "key", "why"),
    [
        ({"index": "ivf"}, "index", "unknown dense index 'ivf'"),
        ({"embedding_dtype": "int8"}, "embedding_dtype", "'int8'"),
        ({"index": "ivf_flat", "nlist": 600}, "nlist", "600 lists for 500 passages"),
        ({"index": "ivf_flat", "nlist": 50, "train_size": 20}, "train_size", "20 training"),
        ({"index": "ivf_pq", "nlist": 4, "m": 5}, "m", "5 sub-quantizers do not divide .* 64"),
        ({"index": "ivf_pq", "nlist": 4, "nbits": 10}, "nbits", "2\\^10 centroids"),
    ],
)
def test_bad_index_settings_name_the_key(settings, key, why):
    with pytest.raises(ValueError, match=rf"^retrievers\.wiki\.{key}: .*{why}"):
        check_dense_index({**DENSE_INDEX_DEFAULTS, **settings}, 500, DIM, "retrievers.wiki")


def test_bad_settings_stop_the_build_before_any_encoding(vectors, tmp_path, monkeypatch):
    _, x, queries = vectors
    stub = _stub(monkeypatch, x[:100], queries)
    corpus = [{"id": f"d{i}", "title": "", "text": f"p{i}"} for i in range(100)]
    with pytest.raises(ValueError, match=r"^retrievers\.wiki\.m: 48 sub-quantizers"):
        build_index(
            corpus, _dense(index="ivf_pq", m=48, nlist=2), tmp_path / "wiki", "retrievers.wiki"
        )
    assert stub.calls == 0
    assert not (tmp_path / "wiki").exists()


def _dense_config(**node):
    cfg = config()
    cfg["retrievers"] = {**cfg["retrievers"], "wiki": {"kind": "dense", "corpus": "world", **node}}
    return cfg


@pytest.mark.parametrize(
    ("node", "key"),
    [
        ({"index": "ivf_pq", "nlist": 16, "train_size": 8}, "train_size"),
        ({"index": "ivf_pq", "train_size": 100}, "train_size"),
    ],
)
def test_contradicting_index_settings_are_config_errors(node, key):
    with pytest.raises(ConfigError, match=rf"retrievers\.wiki\.{key}"):
        prepare(_dense_config(**node))


def test_index_settings_are_typed_by_the_schema():
    cfg = _dense_config(index="hnsw", hnsw_m=16, ef_search=64, seed=3)
    check_config(cfg)
    filled = prepare(cfg)["retrievers"]["wiki"]
    assert filled["index"] == "hnsw" and filled["nprobe"] == DENSE_INDEX_DEFAULTS["nprobe"]
    assert prepare(_dense_config())["retrievers"]["wiki"]["seed"] == 13  # the top-level seed
    with pytest.raises(ConfigError, match=r"retrievers\.wiki\.index"):
        check_config(_dense_config(index="ivf"))
    with pytest.raises(ConfigError, match=r"retrievers\.wiki\.nlist"):
        check_config(_dense_config(index="ivf_flat", nlist=0))


WORDS = [f"w{a}{b}" for a in "abcdefghij" for b in "klmnopqrst"]


def test_bm25_memory_mapped_search_equals_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    corpus = [
        {"id": f"d{i}", "title": "", "text": " ".join(rng.choice(WORDS, 30))} for i in range(400)
    ]
    build_index(
        corpus, {**RETRIEVER_DEFAULTS["bm25"], "kind": "bm25", "corpus": "c"}, tmp_path / "i"
    )
    queries = [" ".join(rng.choice(WORDS, 4)) for _ in range(60)]
    loaded = Index(tmp_path / "i")
    assert isinstance(loaded._bm25.scores["data"], np.memmap)
    mapped = loaded.search(queries, 10)
    memory = ix._bm25_hits(load_bm25(tmp_path / "i" / "bm25", mmap=False), queries, 10, "en", 1)
    assert mapped == memory
    assert ix._bm25_hits(load_bm25(tmp_path / "i" / "bm25"), queries, 10, "en", 2) == memory


BM25_METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")


def _zipf_corpus(n, seed=0):
    """Passages of 0 to 40 words, Zipf-like (stopwords among them), some with titles."""
    rng = np.random.default_rng(seed)
    words = np.array([*WORDS, "the", "and", "of"])
    p = 1.0 / np.arange(1, len(words) + 1) ** 1.1
    p /= p.sum()
    return [
        {
            "id": f"d{i}",
            "title": "" if i % 3 else f"t{i % 7}",
            "text": " ".join(rng.choice(words, rng.integers(0, 40), p=p)),
        }
        for i in range(n)
    ], [" ".join(rng.choice(words, 3, p=p)) for _ in range(40)]


@pytest.mark.parametrize("method", BM25_METHODS)
def test_bm25_built_in_chunks_equals_bm25s_in_one_piece(method, tmp_path, monkeypatch):
    corpus, queries = _zipf_corpus(300)
    params = {**RETRIEVER_DEFAULTS["bm25"], "kind": "bm25", "corpus": "c", "method": method}
    monkeypatch.setattr(ix, "BM25_CHUNK", 37)  # 9 chunks, the last one short
    monkeypatch.setattr(ix, "BM25_BLOCK", 50)  # column blocks; common tokens' alone
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    build_index(corpus, params, tmp_path / "chunked")
    whole = ix._bm25_index([ix.passage_text(p) for p in corpus], params)
    whole.save(str(tmp_path / "whole"), show_progress=False)
    chunked, saved = (load_bm25(tmp_path / f) for f in ("chunked/bm25", "whole"))
    for part in ("data", "indices", "indptr"):  # the same matrix, float for float
        np.testing.assert_array_equal(chunked.scores[part], saved.scores[part])
    assert chunked.vocab_dict == saved.vocab_dict
    if method in ix.BM25_NONOCCURRENCE:
        np.testing.assert_array_equal(chunked.nonoccurrence_array, saved.nonoccurrence_array)
    for model in (chunked, whole):
        np.testing.assert_array_equal(
            model.get_scores(queries[0].split()), whole.get_scores(queries[0].split())
        )
    assert ix._bm25_hits(chunked, queries, 10, "en") == ix._bm25_hits(whole, queries, 10, "en")


def test_bm25_chunks_counted_in_worker_processes_give_the_same_index(tmp_path, monkeypatch):
    corpus, queries = _zipf_corpus(200, seed=1)
    params = {**RETRIEVER_DEFAULTS["bm25"], "kind": "bm25", "corpus": "c"}
    monkeypatch.setattr(ix, "BM25_CHUNK", 30)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the job's cores: two worker processes
    build_index(corpus, params, tmp_path / "pool")
    whole = ix._bm25_index([ix.passage_text(p) for p in corpus], params)
    pooled = load_bm25(tmp_path / "pool" / "bm25")
    np.testing.assert_array_equal(pooled.scores["data"], whole.scores["data"])
    assert ix._bm25_hits(pooled, queries, 10, "en") == ix._bm25_hits(whole, queries, 10, "en")


class FailingStub(StubEncoder):
    """Raises at its `fail_at`-th call (a crash mid-way, within this process)."""

    fail_at = 0

    def encode(self, texts, **kwargs):
        if self.calls + 1 == self.fail_at:
            raise RuntimeError("crashed")
        return super().encode(texts, **kwargs)


def test_dense_encoding_keeps_finished_shards_until_its_settings_or_corpus_change(
    vectors, tmp_path, monkeypatch
):
    from ragtrain.data.passages import write_passages

    _, x, queries = vectors
    stub = FailingStub(x[:100], queries)
    monkeypatch.setattr(ix, "load_encoder", lambda params: stub)
    monkeypatch.setattr(ix, "ENCODE_BLOCK", 16)  # 7 shards, the last one short
    corpus, work = tmp_path / "corpus.jsonl", tmp_path / "work"
    write_passages(corpus, [{"id": f"d{i}", "title": "", "text": f"p{i}"} for i in range(100)])

    def build(out, fail_at, **settings):
        stub.calls, stub.fail_at = 0, fail_at
        build_index(corpus, _dense(**settings), tmp_path / out, work_root=work)
        return stub.calls

    with pytest.raises(RuntimeError, match="crashed"):
        build("wiki", 4)
    assert not (tmp_path / "wiki").exists()  # nothing half-written looks complete
    [progress] = work.glob("*/progress.json")
    assert json.loads(progress.read_text())["rows"] == 48
    assert build("wiki", 0) == 4  # shards 4 to 7
    assert not work.exists()
    np.testing.assert_array_equal(np.load(tmp_path / "wiki" / "embeddings.npy"), x[:100])
    # Crashed, then another batch size (its floats may differ): all are encoded again.
    with pytest.raises(RuntimeError):
        build("other", 3)
    assert build("other", 0, batch_size=7) == 7
    # Crashed, then the corpus rewritten: its shards are stale, cleared.
    with pytest.raises(RuntimeError):
        build("third", 3)
    write_passages(corpus, [{"id": f"d{i}", "title": "", "text": f"p{i}"} for i in range(99)])
    assert build("third", 0) == 7


# The killed build: a subprocess that SIGKILLs itself as its third shard is encoded (after
# two were written), as a scheduler's kill or the OOM killer would.
KILLED_BUILD = """
import json, os, signal, sys
import torch
from ragtrain.retrieval import index as ix

torch.set_num_threads(1)
ix.ENCODE_BLOCK = 16
encode, calls = ix.encode, []

def dying(model, texts, params):
    calls.append(len(texts))
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return encode(model, texts, params)

ix.encode = dying
ix.build_index(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3])
"""


@pytest.mark.slow
def test_dense_encoding_killed_mid_way_resumes_from_the_last_shard(tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys

    import torch

    from ragtrain.data.passages import write_passages

    corpus = tmp_path / "corpus.jsonl"
    topics = ["ferries", "glass", "rivers", "towns", "songs", "maps", "bread"]
    write_passages(
        corpus,
        [
            {"id": f"d{i}", "title": f"T{i}", "text": f"a passage {i} about {topics[i % 7]}"}
            for i in range(72)
        ],
    )
    params = {**_dense(), "batch_size": 8}
    out = tmp_path / "index"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_BUILD, str(corpus), json.dumps(params), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()
    [progress] = (tmp_path / ".index.work").glob("*/progress.json")
    assert json.loads(progress.read_text())["rows"] == 32  # two shards written before the kill

    monkeypatch.setattr(ix, "ENCODE_BLOCK", 16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encoded = []
        encode = ix.encode

        def counting(model, texts, params):
            encoded.append(len(texts))
            return encode(model, texts, params)

        monkeypatch.setattr(ix, "encode", counting)
        build_index(corpus, params, out)
        assert sum(encoded) == 72 - 32  # resumed at the first unfinished shard
        assert not (tmp_path / ".index.work").exists()
        monkeypatch.setattr(ix, "encode", encode)
        build_index(corpus, params, tmp_path / "whole")  # never interrupted
    finally:
        torch.set_num_threads(threads)
    resumed, whole = (np.load(tmp_path / f / "embeddings.npy") for f in ("index", "whole"))
    np.testing.assert_array_equal(resumed, whole)
    assert Index(out).search(["ferries"], 3)[0][0][0] % 7 == 0


@pytest.mark.slow
def test_the_index_scale_benchmark_runs_small(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    args = ["--n", "3000", "--queries", "20", "--threads", "1", "--work", str(tmp_path)]
    script = str(ROOT / "bench" / "index_scale.py")
    run = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, check=True, timeout=300
    )
    out = run.stdout
    rows: dict[str, str] = {}  # the first table's row of each index
    for line in out.splitlines():
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0].strip("| "), line)
    assert {"bm25s (mmap)", "flat", "ivf_flat", "ivf_pq", "ivf_pq_refine", "hnsw"} <= set(rows)
    assert " | 1.000 | " in rows["flat"] and " | 1.000 | " in rows["bm25s (mmap)"]
    assert "Extrapolated to 21M passages" in out
