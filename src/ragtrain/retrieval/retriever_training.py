"""Retriever training on gold + pseudo-query pairs (SPTAR-style), and retrieval runs.

Two retrievers are trained from the same (query, document) pairs:

- a bi-encoder (sentence-transformers) with in-batch negatives
  (MultipleNegativesRankingLoss). Several pseudo-queries are written for each document,
  so batches are drawn with the NO_DUPLICATES sampler: the same passage twice in a batch
  would be scored as a negative of its own query. That sampler makes more (smaller) batches
  than the trainer plans for, so the number of steps is counted from it (see
  `_no_duplicate_steps`); otherwise the last batches would silently go untrained.
- a late-interaction ColBERT (PyLate) on (query, positive, negative) triples, the negative
  a BM25 hard one or (`negatives: random`, SPTAR's setting) a random passage. PLAID
  indexing (fast-plaid) is not installable beside our torch, so ColBERT reranks the
  candidates of a first-stage run (BM25 or the bi-encoder) instead of searching the corpus.

ColBERT's similarity: PyLate 1.6 has MaxSim over inner products only (`cosine`: its token
vectors are unit length). `similarity: l2` is ColBERT's other one (SPTAR's setting):
-sum over query tokens of the smallest squared L2 distance to a document token, used by the
training loss and by reranking (`colbert_scores.py`). On unit vectors
-||q - d||^2 = 2 q.d - 2, so the L2 score is 2 x MaxSim - 2 x (query tokens): the same
ranking of a query's documents, and in the contrastive loss logits twice as large (the
constant cancels in the softmax), i.e. MaxSim at temperature 1/2.

Runs are `{query_id: {doc_id: score}}`, best first, the shape pytrec_eval and
`ragtrain.metrics.ir` read. Models are written with `atomic_dir`: a folder that exists
is a complete model, with its `metrics.json`.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ragtrain.core.records import UMASK, atomic_dir, read_json, write_json
from ragtrain.core.security import folder_trusts_remote_code, trust_remote_code, write_model_meta
from ragtrain.core.seeds import DEFAULT_SEED, stable_seed
from ragtrain.data.passages import Passages, passages_with_ids, rows_of, skipping
from ragtrain.retrieval.index import (
    bm25_top,
    encode,
    encode_corpus,
    load_encoder,
    passage_text,
    resolve_encoder,
)

# A corpus: passages as a list, or stored ones read by row and id (ragtrain.data.passages);
# only the passages a function needs are read from a Passages.
Corpus = list[dict] | Passages

log = logging.getLogger(__name__)

BIENCODER_DEFAULTS: dict[str, Any] = {
    "encoder": "all-MiniLM-L6-v2",
    "epochs": 1,
    "batch_size": 32,
    "learning_rate": 2e-5,
    "warmup_ratio": 0.1,
    "scale": 20.0,
    "max_seq_length": 256,
    # run the encoder's own code (a hub model with custom code): only when turned on
    "trust_remote_code": False,
}
COLBERT_DEFAULTS: dict[str, Any] = {
    "encoder": "all-MiniLM-L6-v2",
    "epochs": 1,
    "batch_size": 16,
    "learning_rate": 3e-5,
    "max_triples": 300,
    "negatives_depth": 10,
    "candidates": "bm25",
    "candidates_k": 100,
    "document_length": 180,
    "query_length": 32,
    # the projection's width (PyLate's default, ColBERT's)
    "embedding_size": 128,
    "similarity": "cosine",
    "negatives": "hard",
    "trust_remote_code": False,
}
COLBERT_SIMILARITIES = ("cosine", "l2")
COLBERT_NEGATIVES = ("hard", "random")
# Written in a trained ColBERT's folder: how reranking must score with it.
COLBERT_META = "ragtrain_colbert.json"
SEARCH_KINDS = ("bm25", "biencoder", "colbert")
ENCODE_BATCH = 64
RERANK_CHUNK = 256


def _with_defaults(params: dict, defaults: dict, what: str) -> dict:
    # The caller passes the whole config node (kind, data names, ...): keys beyond the
    # defaults are carried along, unread; the config schema catches misspelt keys.
    merged = {**defaults, "seed": DEFAULT_SEED, **params}
    for key in ("epochs", "batch_size"):
        if not isinstance(merged[key], int) or isinstance(merged[key], bool) or merged[key] < 1:
            raise ValueError(f"{what}.{key}: expected a positive integer, got {merged[key]!r}")
    if not isinstance(merged["learning_rate"], (int, float)) or merged["learning_rate"] <= 0:
        raise ValueError(f"{what}.learning_rate: expected > 0, got {merged['learning_rate']!r}")
    return merged


def _save(
    model, trainer, metrics: dict, out_dir: str | Path, trust: bool, extra: dict | None = None
) -> None:
    """The model folder, its trainer state, metrics and `extra` JSON files, appearing at once."""
    with atomic_dir(out_dir) as tmp:
        model.save(str(tmp))
        for name, record in (extra or {}).items():
            write_json(tmp / name, record)
        # What loading the trained folder may run: the setting its encoder was loaded with.
        write_model_meta(tmp, trust)
        trainer.state.save_to_json(str(tmp / "trainer_state.json"))
        write_json(tmp / "metrics.json", metrics)
        _readable(tmp)


def _readable(folder: Path) -> None:
    """Give saved files the usual umask-based mode: transformers writes model.safetensors
    0600, which would hide a model from the rest of a group on a shared cluster."""
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~UMASK)


def training_pairs(queries: list[dict], corpus: Corpus) -> list[tuple[str, str]]:
    """(query text, passage text) for each query record {id, doc_id, query}."""
    for q in queries:
        for field in ("doc_id", "query"):
            if field not in q:
                raise ValueError(f"query record {q.get('id')!r} has no field {field!r}")
    by_id = passages_with_ids(corpus, (q["doc_id"] for q in queries))
    pairs = []
    for q in queries:
        if q["doc_id"] not in by_id:
            raise ValueError(
                f"query record {q.get('id')!r}: doc_id {q['doc_id']!r} is not in the corpus"
            )
        pairs.append((q["query"], passage_text(by_id[q["doc_id"]])))
    return pairs


def _no_duplicate_steps(dataset, batch_size: int, epochs: int, seed: int) -> int:
    """The number of batches the NO_DUPLICATES sampler really yields over `epochs`.

    The sampler defers a row whose text is already in the batch, so an epoch can hold more
    (smaller) batches than ceil(rows / batch_size), which is what the trainer plans with:
    training would stop before the last epoch's final batches (with one document per pair
    group, most of them) and the LR schedule would end early. Its order depends only on the
    seed and the epoch, so counting its batches here gives the trainer's exact number.
    """
    import torch
    from sentence_transformers.sampler import NoDuplicatesBatchSampler

    sampler = NoDuplicatesBatchSampler(
        dataset, batch_size=batch_size, drop_last=False, generator=torch.Generator(), seed=seed
    )
    total = 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        total += sum(1 for _ in sampler)
    return total


def _training_args(params: dict, output_dir: str, dataset, **extra):
    import torch
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.training_args import BatchSamplers

    steps = _no_duplicate_steps(dataset, params["batch_size"], params["epochs"], params["seed"])
    args = SentenceTransformerTrainingArguments(
        output_dir=output_dir,
        num_train_epochs=params["epochs"],
        max_steps=steps,
        per_device_train_batch_size=params["batch_size"],
        learning_rate=params["learning_rate"],
        seed=params["seed"],
        data_seed=params["seed"],
        # Same text twice in a batch = a false in-batch negative (pseudo-queries share docs).
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        # A short job: nothing to resume, so no checkpoints; metrics go to metrics.json.
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, steps // 10),
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        **extra,
    )
    if args.world_size > 1:
        # Each process sees a shard of the batches: let the trainer plan by epochs there.
        args.max_steps = -1
    return args


def _train(model, loss, dataset, args, **trainer_kwargs) -> tuple[Any, Any, float]:
    from sentence_transformers import SentenceTransformerTrainer

    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, **trainer_kwargs
    )
    start = time.perf_counter()
    output = trainer.train()
    return trainer, output, time.perf_counter() - start


def _train_metrics(trainer, output, seconds: float, n: int, epochs: int, unit: str) -> dict:
    return {
        "train_loss": round(float(output.training_loss), 6),
        "steps": int(trainer.state.global_step),
        "epochs": epochs,
        f"n_{unit}": n,
        "seconds": round(seconds, 2),
        f"{unit}_per_s": round(n * epochs / seconds, 2) if seconds > 0 else None,
    }


def train_biencoder(
    pairs: list[tuple[str, str]],
    params: dict,
    out_dir: str | Path,
    dev: tuple[dict[str, dict[str, int]], dict[str, str], list[dict]] | None = None,
) -> dict:
    """Fine-tune a sentence-transformers bi-encoder on (query, passage) pairs.

    `dev` = (qrels, {query_id: text}, corpus): retrieval metrics of the base and the trained
    model on it go into the metrics as `dev_base` and `dev`. Returns the metrics record.
    """
    import transformers
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, losses

    params = _with_defaults(params, BIENCODER_DEFAULTS, "biencoder")
    if not pairs:
        raise ValueError("biencoder: no training pairs (are all pseudo-queries filtered out?)")
    if not 0 <= params["warmup_ratio"] < 1:
        raise ValueError(
            f"biencoder.warmup_ratio: expected in [0, 1), got {params['warmup_ratio']}"
        )
    # Seeds weight init (none here, but a hub model may add a head) and the data order.
    transformers.set_seed(params["seed"])
    encoder = resolve_encoder(params["encoder"])
    trust = trust_remote_code(encoder, params["trust_remote_code"])
    model = SentenceTransformer(encoder, device="cpu", trust_remote_code=trust)
    model.max_seq_length = params["max_seq_length"]
    metrics: dict[str, Any] = {}
    if dev is not None:
        metrics["dev_base"] = _dev_metrics(model, dev)
    dataset = Dataset.from_dict(
        {"anchor": [q for q, _ in pairs], "positive": [p for _, p in pairs]}
    )
    loss = losses.MultipleNegativesRankingLoss(model, scale=params["scale"])
    with tempfile.TemporaryDirectory(prefix="ragtrain-biencoder-") as tmp_out:
        # warmup_steps below 1 is a fraction of the steps (transformers 5 dropped warmup_ratio).
        args = _training_args(params, tmp_out, dataset, warmup_steps=params["warmup_ratio"])
        trainer, output, seconds = _train(model, loss, dataset, args)
    metrics = {
        **_train_metrics(trainer, output, seconds, len(pairs), params["epochs"], "pairs"),
        **metrics,
    }
    if dev is not None:
        metrics["dev"] = _dev_metrics(model, dev)
    _save(model, trainer, metrics, out_dir, trust)
    return metrics


def _dev_metrics(model, dev) -> dict:
    from ragtrain.metrics.ir import evaluate_run

    qrels, queries, corpus = dev
    return evaluate_run(qrels, _dense_run(model, corpus, queries, k=100))


def _colbert_params(params: dict) -> dict:
    params = _with_defaults(params, COLBERT_DEFAULTS, "colbert")
    for key, allowed in (("similarity", COLBERT_SIMILARITIES), ("negatives", COLBERT_NEGATIVES)):
        if params[key] not in allowed:
            raise ValueError(f"colbert.{key}: expected one of {list(allowed)}, got {params[key]!r}")
    size = params["embedding_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"colbert.embedding_size: expected a positive integer, got {size!r}")
    return params


def colbert_triples(
    queries: list[dict], corpus: Corpus, params: dict
) -> list[tuple[str, str, str]]:
    """ColBERT's training triples, with the negatives `params["negatives"]` names."""
    params = _colbert_params(params)
    if params["negatives"] == "random":
        return random_negative_triples(queries, corpus, params)
    return hard_negative_triples(queries, corpus, params)


def _triple_sample(
    queries: list[dict], corpus: Corpus, params: dict
) -> tuple[list[dict], dict[str, set], random.Random]:
    """A seeded sample of at most `max_triples` query records, each query text's positives,
    and the generator that then draws the negatives."""
    limit = params["max_triples"]
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"colbert.max_triples: expected a positive integer, got {limit!r}")
    if len(corpus) < 2:
        raise ValueError("colbert: negatives need a corpus of at least 2 passages")
    training_pairs(queries, corpus)  # validates doc ids
    rng = random.Random(stable_seed(params["seed"], "colbert-triples"))
    sample = list(queries) if len(queries) <= limit else rng.sample(list(queries), limit)
    # Every passage labelled for a query text is a positive, never its negative.
    positives: dict[str, set] = {}
    for q in queries:
        positives.setdefault(q["query"], set()).add(q["doc_id"])
    return sample, positives, rng


def random_negative_triples(
    queries: list[dict], corpus: Corpus, params: dict
) -> list[tuple[str, str, str]]:
    """(query, positive passage, random passage) for a seeded sample of at most
    `max_triples` query records: one negative per positive, drawn uniformly (seeded) from
    the passages that are not a positive of the query text, as SPTAR trains ColBERT."""
    params = _with_defaults(params, COLBERT_DEFAULTS, "colbert")
    sample, positives, rng = _triple_sample(queries, corpus, params)
    by_id = passages_with_ids(corpus, (q["doc_id"] for q in sample))
    triples = []
    for q in sample:
        gold = positives[q["query"]]
        if len(gold) >= len(corpus):
            continue  # every passage is a positive of this query
        # Redrawn until not a positive: positives are few, so this ends fast (and reads
        # no list of all passage ids).
        negative = corpus[rng.randrange(len(corpus))]
        while negative["id"] in gold:
            negative = corpus[rng.randrange(len(corpus))]
        triples.append((q["query"], passage_text(by_id[q["doc_id"]]), passage_text(negative)))
    return triples


def hard_negative_triples(
    queries: list[dict], corpus: Corpus, params: dict
) -> list[tuple[str, str, str]]:
    """(query, positive passage, BM25 hard negative passage) for a seeded sample of at most
    `max_triples` query records.

    The negative is drawn (seeded) from the BM25 top `negatives_depth` that are not a
    positive of the query text, rather than always the top one: the highest-ranked
    unlabelled passage is the likeliest to be a relevant one nobody labelled. A query with
    no BM25 match beside its positives gets a random passage instead.
    """
    params = _with_defaults(params, COLBERT_DEFAULTS, "colbert")
    depth = params["negatives_depth"]
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"colbert.negatives_depth: expected a positive integer, got {depth!r}")
    sample, positives, rng = _triple_sample(queries, corpus, params)
    # Deep enough that `depth` non-positives remain after dropping a query's positives.
    most = max(len(docs) for docs in positives.values())
    # An in-memory BM25 over a list; over stored passages, built in chunks (bm25_top).
    ranked = bm25_top(corpus, [q["query"] for q in sample], depth + most)
    by_id = passages_with_ids(corpus, (q["doc_id"] for q in sample))
    # The rows of the positives: a fallback draws among the other rows without a list.
    gold_rows = rows_of(corpus, {d for docs in positives.values() for d in docs})
    triples, fallbacks = [], 0
    for q, hits in zip(sample, ranked, strict=True):
        gold = positives[q["query"]]
        matched = (corpus[i] for i, score in hits if score > 0)
        pool = [p for p in matched if p["id"] not in gold][:depth]
        if pool:
            negative = rng.choice(pool)
        else:
            fallbacks += 1
            # As rng.choice over the list of the other passages: one draw below its length.
            skipped = np.array(sorted(gold_rows[d] for d in gold), dtype=np.int64)
            if len(skipped) >= len(corpus):
                continue  # every passage is a positive of this query
            negative = corpus[skipping(rng.randrange(len(corpus) - len(skipped)), skipped)]
        triples.append((q["query"], passage_text(by_id[q["doc_id"]]), passage_text(negative)))
    if fallbacks:
        log.info("%d of %d queries had no BM25 negative: random ones used", fallbacks, len(sample))
    return triples


def train_colbert(triples: list[tuple[str, str, str]], params: dict, out_dir: str | Path) -> dict:
    """Train a PyLate ColBERT on (query, positive, negative) triples; return its metrics."""
    import transformers
    from datasets import Dataset
    from pylate import losses, models, utils

    from ragtrain.retrieval.colbert_scores import L2Scores

    params = _colbert_params(params)
    if not triples:
        raise ValueError("colbert: no training triples")
    if len(triples) > params["max_triples"]:
        rng = random.Random(stable_seed(params["seed"], "colbert-train"))
        triples = rng.sample(list(triples), params["max_triples"])
    # The projection layer PyLate adds on top of the encoder is randomly initialised.
    transformers.set_seed(params["seed"])
    encoder = resolve_encoder(params["encoder"])
    trust = trust_remote_code(encoder, params["trust_remote_code"])
    model = models.ColBERT(
        model_name_or_path=encoder,
        trust_remote_code=trust,
        device="cpu",
        query_length=params["query_length"],
        document_length=params["document_length"],
        embedding_size=params["embedding_size"],
    )
    dataset = Dataset.from_dict(
        {
            "query": [t[0] for t in triples],
            "positive": [t[1] for t in triples],
            "negative": [t[2] for t in triples],
        }
    )
    with tempfile.TemporaryDirectory(prefix="ragtrain-colbert-") as tmp_out:
        args = _training_args(params, tmp_out, dataset)
        trainer, output, seconds = _train(
            model,
            # None: PyLate's MaxSim.
            losses.Contrastive(
                model=model, score_metric=L2Scores() if params["similarity"] == "l2" else None
            ),
            dataset,
            args,
            data_collator=utils.ColBERTCollator(tokenize_fn=model.tokenize),
        )
    metrics = _train_metrics(trainer, output, seconds, len(triples), params["epochs"], "triples")
    metrics |= {k: params[k] for k in ("similarity", "negatives", "embedding_size")}
    meta = {"similarity": params["similarity"]}
    _save(model, trainer, metrics, out_dir, trust, extra={COLBERT_META: meta})
    return metrics


def search(
    kind: str,
    model_dir: str | Path | None,
    corpus: Corpus,
    queries: dict[str, str],
    k: int,
    candidates: dict[str, dict[str, float]] | None = None,
) -> dict[str, dict[str, float]]:
    """Top-k run {query_id: {doc_id: score}}, best first.

    kind "bm25": bm25s over the corpus (model_dir unused); passages that share no term with
    the query (score 0) are left out, as a search engine would. "biencoder": exact inner
    product over unit vectors (FAISS IndexFlatIP); model_dir may be a trained folder or an
    encoder name (the untrained baseline). "colbert": rerank `candidates`, a first-stage run.
    Over stored Passages, BM25 and the bi-encoder read every passage (an index over all of
    them, built in chunks or encoded in blocks: bm25_top, encode_corpus); ColBERT reads the
    candidates only.
    """
    if kind not in SEARCH_KINDS:
        raise ValueError(f"search kind: expected one of {list(SEARCH_KINDS)}, got {kind!r}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    if not len(corpus):
        raise ValueError("search: empty corpus")
    if kind == "bm25":
        qids = list(queries)
        ranked = bm25_top(corpus, [queries[q] for q in qids], k)
        return {
            qid: {corpus[i]["id"]: score for i, score in hits if score > 0}
            for qid, hits in zip(qids, ranked, strict=True)
        }
    if model_dir is None:
        raise ValueError(f"search kind {kind!r} needs a model folder")
    if kind == "biencoder":
        return _dense_run(load_encoder({"encoder": str(model_dir)}), corpus, queries, k)
    if candidates is None:
        raise ValueError(
            "search kind 'colbert' reranks candidates: pass a first-stage run (BM25 or bi-encoder)"
        )
    return _colbert_rerank(model_dir, corpus, queries, k, candidates)


def _dense_run(model, corpus: Corpus, queries: dict[str, str], k: int) -> dict:
    import faiss

    qids = list(queries)
    if not qids:
        return {}
    params = {"batch_size": ENCODE_BATCH}
    doc_vectors = encode_corpus(model, corpus, params, encoder=encode)
    # Inner product over unit vectors is cosine similarity; exact search.
    index = faiss.IndexFlatIP(doc_vectors.shape[1])
    index.add(doc_vectors)
    scores, ids = index.search(
        encode(model, [queries[q] for q in qids], params), min(k, len(corpus))
    )
    return {
        qid: {
            corpus[int(i)]["id"]: float(s)
            for i, s in zip(row_ids, row_scores, strict=True)
            if i >= 0
        }
        for qid, row_ids, row_scores in zip(qids, ids, scores, strict=True)
    }


def _colbert_rerank(
    model_dir: str | Path,
    corpus: Corpus,
    queries: dict[str, str],
    k: int,
    candidates: dict[str, dict[str, float]],
) -> dict[str, dict[str, float]]:
    from pylate import models, rank

    from ragtrain.retrieval.colbert_scores import l2_rerank

    missing = [q for q in queries if q not in candidates]
    if missing:
        raise ValueError(
            f"colbert: {len(missing)} queries have no candidates (first: {missing[0]!r}); "
            "the candidate run must cover every query"
        )
    by_id = passages_with_ids(corpus, (d for q in queries for d in candidates[q]))
    unknown = sorted({d for q in queries for d in candidates[q] if d not in by_id}, key=str)
    if unknown:
        raise ValueError(f"colbert: candidate doc ids not in the corpus: {unknown[:5]}")
    qids = [q for q in queries if candidates[q]]
    run: dict[str, dict[str, float]] = {q: {} for q in queries}
    if not qids:
        return run
    # No device given: the GPU where there is one (scoring is the costly part of a run).
    model = models.ColBERT(
        model_name_or_path=resolve_encoder(str(model_dir)),
        trust_remote_code=folder_trusts_remote_code(model_dir),
    )
    # Scored as it was trained (a folder from before the option: MaxSim).
    meta = Path(model_dir) / COLBERT_META
    similarity = read_json(meta)["similarity"] if meta.is_file() else "cosine"
    rerank = l2_rerank if similarity == "l2" else rank.rerank
    # Token embeddings are large (length x 128 floats a passage): hold those of one chunk of
    # queries at a time, each candidate passage encoded once within it.
    for start in range(0, len(qids), RERANK_CHUNK):
        chunk = qids[start : start + RERANK_CHUNK]
        doc_ids = [list(candidates[q]) for q in chunk]
        unique = sorted({d for ids in doc_ids for d in ids}, key=str)
        vectors = model.encode(
            [passage_text(by_id[d]) for d in unique],
            is_query=False,
            batch_size=ENCODE_BATCH,
            show_progress_bar=False,
        )
        doc_embeddings = dict(zip(unique, vectors, strict=True))
        reranked = rerank(
            documents_ids=doc_ids,
            queries_embeddings=model.encode(
                [queries[q] for q in chunk],
                is_query=True,
                batch_size=ENCODE_BATCH,
                show_progress_bar=False,
            ),
            documents_embeddings=[[doc_embeddings[d] for d in ids] for ids in doc_ids],
        )
        for qid, hits in zip(chunk, reranked, strict=True):
            run[qid] = {hit["id"]: float(hit["score"]) for hit in hits[:k]}
    return run
