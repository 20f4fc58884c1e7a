"""Index scale: bm25s and each FAISS index kind over a generated corpus of N passages.

No encoder runs (far too slow on a CPU for millions of passages): the dense side indexes
synthetic vectors shaped like MiniLM's (384 dimensions, unit length) from a seeded
two-level Gaussian mixture (N / 1000 topics of 20 subtopics) in 64 latent dimensions,
mapped into 384 (see `gen_vectors`); a query is a perturbed passage. The sparse side
indexes synthetic text: 100-word passages over a 200,000-word Zipf vocabulary (exponent
1.07): bm25s's English stopwords, then made-up words; a query is 5 words of a random
passage that are not stopwords. Recall on real embeddings differs: it depends on how
clustered they are.

Every measurement runs in a process of its own (this script, `--phase ...`), and its peak
RSS is the kernel's (`os.wait4`'s `ru_maxrss`), so the phases' peaks do not mix; it
includes Python, NumPy and FAISS themselves (about 0.14 GB) and the pages of memory-mapped
files the process touched. Build and search go through ragtrain's own functions
(`ragtrain.retrieval.index`): the vectors are read from `embeddings.npy` in blocks, IVF
is trained on a seeded sample, bm25s is searched memory-mapped. Recall@10 is against exact
search (FAISS `flat`); bm25s's memory-mapped top 10 against its in-memory top 10.

    python bench/index_scale.py [--n 1000000] [--queries 300] [--threads 2] [--kinds ...]
                                [--work DIR [--resume]]

About 13 minutes at 1M passages on 2 cores (results in bench/README.md).

The ratios are to `flat`; `peak RSS / raw` is the larger of build's and search's peak
RSS over the raw float32 vectors (N x 384 x 4 bytes; the bar is under 4x), for bm25s over
the corpus text. The last table extrapolates to 21M passages (DPR's Wikipedia).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

DIM, LATENT = 384, 64
REFINE = 20  # the ivf_pq_refine row: ivf_pq's top 20 x 10 rescored exactly
WIKI = 21_000_000
KINDS = ("flat", "ivf_flat", "ivf_pq", "ivf_pq_refine", "hnsw")
SEED = 13
BLOCK = 50_000
VOCAB, ZIPF, WORDS = 200_000, 1.07, 100
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _noise(rng, n: int, scale: float, dim: int = DIM) -> np.ndarray:
    return scale * _unit(rng.standard_normal((n, dim), dtype=np.float32))


def gen_vectors(work: Path, n: int, n_queries: int) -> None:
    """embeddings.npy (N x 384 float32, unit rows) and queries.npy, written in blocks.

    Sentence embeddings fill few of their dimensions: the mixture lives in LATENT
    dimensions, turned into 384 by a random orthonormal map, plus a little noise in all
    384. A passage is its subtopic's centre plus noise (cosine to it about 0.7); a query
    is its source passage's latent plus noise, then mapped. Exact search then gives the
    source at cosine 0.82, the 10th passage at 0.49, the 100th at 0.39, random pairs 0.01.
    """
    rng = np.random.default_rng(SEED)
    to_dim = np.linalg.qr(rng.standard_normal((DIM, LATENT)))[0].T.astype(np.float32)
    topics = _unit(rng.standard_normal((max(1, n // 1000), LATENT), dtype=np.float32))
    picked = topics[rng.integers(0, len(topics), len(topics) * 20)]
    subs = _unit(picked + _noise(rng, len(picked), 0.8, LATENT))
    out = np.lib.format.open_memmap(work / "embeddings.npy", "w+", np.float32, (n, DIM))
    latents = np.empty((n, LATENT), dtype=np.float32)
    for start in range(0, n, BLOCK):
        size = min(BLOCK, n - start)
        latent = _unit(subs[rng.integers(0, len(subs), size)] + _noise(rng, size, 1.0, LATENT))
        latents[start : start + size] = latent
        out[start : start + size] = _unit(latent @ to_dim + _noise(rng, size, 0.3))
    out.flush()
    sources = np.sort(rng.choice(n, n_queries, replace=False))
    latent = _unit(latents[sources] + _noise(rng, n_queries, 0.5, LATENT))
    queries = _unit(latent @ to_dim + _noise(rng, n_queries, 0.3))
    np.save(work / "queries.npy", queries.astype(np.float32))


def _word(rank: int) -> str:
    """A made-up word per rank (bijective base-70 syllables: frequent words are short)."""
    out = []
    rank += 1
    while rank:
        rank, digit = divmod(rank - 1, len(SYLLABLES))
        out.append(SYLLABLES[digit])
    return "".join(out)


def gen_text(work: Path, n: int, n_queries: int) -> None:
    """corpus.txt (one passage a line) and queries.txt. The most frequent words are
    bm25s's English stopwords (42% of the words, as in English text), which its tokenizer
    drops; a query is 5 of its passage's other words."""
    from bm25s.stopwords import STOPWORDS_EN

    rng = np.random.default_rng(SEED + 1)
    made_up = (_word(r) for r in range(VOCAB))
    vocab = np.array([*STOPWORDS_EN, *(w for w in made_up if w not in STOPWORDS_EN)][:VOCAB])
    p = 1.0 / np.arange(1, VOCAB + 1) ** ZIPF
    cum = np.cumsum(p / p.sum())
    with (work / "corpus.txt").open("w") as f:
        for start in range(0, n, BLOCK):
            size = min(BLOCK, n - start)
            ids = np.searchsorted(cum, rng.random(size * WORDS)).clip(0, VOCAB - 1)
            words = vocab[ids].reshape(size, WORDS)
            f.write("\n".join(" ".join(row) for row in words) + "\n")
    picked = set(rng.choice(n, n_queries, replace=False).tolist())
    queries = []
    with (work / "corpus.txt").open() as f:
        for i, line in enumerate(f):
            if i in picked:
                words = [w for w in line.split() if w not in STOPWORDS_EN]
                queries.append(" ".join(rng.choice(words, 5, replace=False)))
    (work / "queries.txt").write_text("\n".join(queries) + "\n")


def text_passages(corpus_txt: Path) -> Iterator[dict]:
    """corpus.txt's lines as passages `{id, title, text}`, streamed."""
    with corpus_txt.open() as f:
        for i, line in enumerate(f):
            yield {"id": str(i), "title": "", "text": line.rstrip("\n")}


def _params(kind: str) -> dict:
    from ragtrain.retrieval.index import DENSE_INDEX_DEFAULTS

    index = "ivf_pq" if kind == "ivf_pq_refine" else kind
    return {
        **DENSE_INDEX_DEFAULTS,
        "index": index,
        "seed": SEED,
        "refine": REFINE * (kind == "ivf_pq_refine"),
    }


def _resident() -> dict:
    """This process's resident memory now: anonymous (its own heap) and file-backed (pages of
    mapped files, which processes share and the kernel may drop)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {
        key: int(status[name].split()[0]) * 1024
        for key, name in (("anon", "RssAnon"), ("file", "RssFile"))
    }


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def phase(args) -> dict:
    """One measurement, in this process; returns what it measured (RSS: the parent's)."""
    from ragtrain.data.passages import Passages, write_passages
    from ragtrain.retrieval.index import (
        BM25_DEFAULTS,
        _bm25_hits,
        _build_bm25,
        build_faiss,
        dense_search,
        job_threads,
        load_bm25,
        load_faiss,
    )

    work, name = Path(args.work), args.phase
    if name == "baseline":  # the libraries alone
        importlib.import_module("bm25s")
        importlib.import_module("faiss")

        return {}
    if name == "gen":
        gen_vectors(work, args.n, args.queries)
        gen_text(work, args.n, args.queries)
        return {}
    if name == "build-bm25":
        shutil.rmtree(work / "bm25", ignore_errors=True)
        passages = work / "passages.jsonl"  # the corpus stage's stored form (not timed)
        if not passages.exists():
            write_passages(passages, text_passages(work / "corpus.txt"))
        t = time.perf_counter()
        _build_bm25(Passages(passages), BM25_DEFAULTS, work)  # writes work/bm25
        return {"build_s": time.perf_counter() - t, "disk": _du(work / "bm25")}
    if name.startswith("search-bm25"):
        mmap = name == "search-bm25"
        importlib.import_module("bm25s")  # before the load is timed

        queries = (work / "queries.txt").read_text().splitlines()
        t = time.perf_counter()
        model = load_bm25(work / "bm25", mmap=mmap)
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        hits = _bm25_hits(model, queries, 10, BM25_DEFAULTS["stopwords"], job_threads())
        qps = len(queries) / (time.perf_counter() - t)
        np.save(work / f"ids-{name}.npy", np.array([[i for i, _ in h] for h in hits]))
        return {"qps": qps, "load_s": load_s, **_resident()}
    kind = args.kind
    params = _params(kind)
    folder = work / (kind if kind != "ivf_pq_refine" else "ivf_pq")
    if name == "build":
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        t = time.perf_counter()
        build_faiss(work / "embeddings.npy", params, folder)
        return {"build_s": time.perf_counter() - t, "disk": _du(folder / "dense.faiss")}
    importlib.import_module("faiss")  # before the load is timed

    queries = np.load(work / "queries.npy")
    t = time.perf_counter()
    index = load_faiss(folder, params)
    load_s = time.perf_counter() - t
    dense_search(index, queries[:8], 10, params, work)  # warm-up, not timed
    t = time.perf_counter()
    ids, _ = dense_search(index, queries, 10, params, work)
    qps = len(queries) / (time.perf_counter() - t)
    np.save(work / f"ids-{kind}.npy", ids)
    return {"qps": qps, "load_s": load_s, **_resident()}


def _run(args, phase_name: str, kind: str | None = None) -> dict:
    """A phase in a child process: its result and its peak RSS (bytes); with --resume, a
    phase measured before in this folder (for this N) is not run again."""
    saved = Path(args.work) / "results" / f"{args.n}-{phase_name}-{kind or ''}.json"
    if args.resume and saved.exists():
        print(f"  {phase_name} {kind or ''}: measured before, {saved}", flush=True)
        return json.loads(saved.read_text())
    cmd = [sys.executable, __file__, "--phase", phase_name, "--work", args.work, "--n", str(args.n)]
    cmd += ["--queries", str(args.queries)] + (["--kind", kind] if kind else [])
    out = Path(args.work) / "phase.json"
    out.unlink(missing_ok=True)
    t = time.perf_counter()
    child = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"phase {phase_name} {kind or ''} failed ({child.returncode})")
    result = {**json.loads(out.read_text()), "phase": phase_name}
    result["rss"] = usage.ru_maxrss * 1024
    result["wall_s"] = time.perf_counter() - t
    saved.parent.mkdir(exist_ok=True)
    saved.write_text(json.dumps(result))
    shown = {k: round(v, 3) for k, v in result.items() if k != "phase"}
    print(f"  {phase_name} {kind or ''}: {json.dumps(shown)}", flush=True)
    return result


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(
        np.mean([len(set(a) & set(b) - {-1}) / len(b) for a, b in zip(found, exact, strict=True)])
    )


def _gb(x: float) -> str:
    return f"{x / 1e9:.2f}"


def report(args, rows: dict, text_bytes: int, baseline: int) -> None:
    n, raw = args.n, args.n * DIM * 4
    work = Path(args.work)
    emb = _du(work / "embeddings.npy")
    print(
        f"\nN = {n:,} passages, {args.queries} queries, {args.threads} threads on"
        f" {os.cpu_count()} CPUs; raw vectors {_gb(raw)} GB (embeddings.npy, beside every dense"
        f" index); corpus text {_gb(text_bytes)} GB; a process's own RSS {_gb(baseline)} GB"
    )
    print(
        "| index | build s | build peak RSS GB | search peak RSS GB | peak RSS / raw | disk GB"
        " | queries/s | recall@10 | build vs flat | disk vs flat | q/s vs flat |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base = rows.get("flat")
    exact = np.load(work / "ids-flat.npy") if base else None
    for kind, (build, search) in rows.items():
        peak = max(build["rss"], search["rss"])
        if kind.startswith("bm25s"):
            # Memory-mapped against in-memory search: the same top 10 is 1.000.
            found = np.load(work / f"ids-{search['phase']}.npy")
            recall = _recall(found, np.load(work / "ids-search-bm25-memory.npy"))
            ratio = f"{peak / text_bytes:.2f}x text"
        else:
            recall = _recall(np.load(work / f"ids-{kind}.npy"), exact) if base else float("nan")
            ratio = f"{peak / raw:.2f}x vectors"
        vs = (
            (
                f"{build['build_s'] / base[0]['build_s']:.2f}x",
                f"{build['disk'] / base[0]['disk']:.2f}x",
                f"{search['qps'] / base[1]['qps']:.2f}x",
            )
            if base and not kind.startswith("bm25s")
            else ("-", "-", "-")
        )
        print(
            f"| {kind} | {build['build_s']:.1f} | {_gb(build['rss'])} | {_gb(search['rss'])}"
            f" | {ratio} | {_gb(build['disk'])} | {search['qps']:.0f} | {recall:.3f}"
            f" | {' | '.join(vs)} |"
        )
    print("\nSearch processes: index load time, and resident memory when done (anonymous, and")
    print("file-backed: pages of memory-mapped files, shared between processes, reclaimable):")
    print("| index | load s | anonymous GB | file-backed GB |")
    print("|---|---|---|---|")
    for kind, (_, search) in rows.items():
        print(
            f"| {kind} | {search['load_s']:.2f} | {_gb(search['anon'])} | {_gb(search['file'])} |"
        )
    scale = WIKI / n
    print(
        f"\nExtrapolated to {WIKI // 1_000_000}M passages (x{scale:.0f}), 384-d vectors: peak RSS"
        " above a process's own, linearly; the index file (what search holds in memory);"
        " disk with embeddings.npy for a dense index; build hours linearly, and for IVF also"
        " as N x sqrt(N) (nlist grows as sqrt(N), and so does the work per vector):"
    )
    print("| index | peak RSS GB | index file GB | disk GB | build hours |")
    print("|---|---|---|---|---|")
    for kind, (build, search) in rows.items():
        rss = max(0, max(build["rss"], search["rss"]) - baseline) * scale + baseline
        disk = (build["disk"] + (0 if kind.startswith("bm25s") else emb)) * scale
        hours = build["build_s"] * scale / 3600
        both = (
            f"{hours:.1f} - {hours * scale**0.5:.1f}" if kind.startswith("ivf") else f"{hours:.1f}"
        )
        print(
            f"| {kind} | {rss / 1e9:.0f} | {build['disk'] * scale / 1e9:.1f} | {disk / 1e9:.0f}"
            f" | {both} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="passages")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--work", help="folder for the corpus and indexes (default: a temporary one)")
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="OMP_NUM_THREADS of every phase (FAISS; bm25s's search threads), as a job's",
    )
    p.add_argument("--kinds", nargs="+", default=["bm25s", *KINDS], choices=["bm25s", *KINDS])
    p.add_argument(
        "--resume", action="store_true", help="keep what --work holds from a run cut short"
    )
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--kind", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        result = phase(args)
        (Path(args.work) / "phase.json").write_text(json.dumps(result))
        return
    keep = args.work is not None
    args.work = args.work or tempfile.mkdtemp(prefix="index_scale.")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    print(f"index_scale: N={args.n:,}, {args.threads} threads, in {args.work}; load {load:.2f}")
    t = time.perf_counter()
    _run(args, "gen")
    print(f"  generated in {time.perf_counter() - t:.0f} s", flush=True)
    rows = {}
    if "flat" not in args.kinds:
        args.kinds.insert(0, "flat")  # the exact baseline
    if "bm25s" in args.kinds:
        build = _run(args, "build-bm25")
        rows["bm25s (in memory)"] = (build, _run(args, "search-bm25-memory"))
        rows["bm25s (mmap)"] = (build, _run(args, "search-bm25"))
    for kind in [k for k in KINDS if k in args.kinds]:
        build = (
            rows["ivf_pq"][0]
            if kind == "ivf_pq_refine" and "ivf_pq" in rows
            else _run(args, "build", kind)
        )
        rows[kind] = (build, _run(args, "search", kind))
    baseline = _run(args, "baseline")["rss"]
    report(args, rows, _du(Path(args.work) / "corpus.txt"), baseline)
    print(f"total {time.perf_counter() - t:.0f} s; load average {os.getloadavg()[0]:.2f}")
    if not keep:
        shutil.rmtree(args.work)


if __name__ == "__main__":
    main()
