"""Retrieval metrics computed the way BEIR computes them, with pytrec_eval.

BEIR's numbers are trec_eval's: `ndcg_cut.10` (linear gains, so a grade-2 document counts
twice a grade-1 one), `map_cut.10` and `recall.100` from pytrec_eval, and MRR@10 as
`recip_rank` over each query's run cut to its 10 best hits. Like BEIR, a hit whose document
id equals the query id is dropped by default (in BEIR's corpora a query can be a document of
the corpus, and retrieving itself says nothing).

Beside those four, every measure can be asked for at other cutoffs (`cutoffs`: nDCG@k,
MAP@k, Recall@k and MRR@k for each k, named the same way), as SPTAR reports @1, @3, @5, @10
and @100.

Two departures from calling pytrec_eval directly, both so that a retriever cannot look
better by retrieving less:
- pytrec_eval silently skips a query of the qrels that has no run entry; here such a query
  scores 0 on every measure, and means are over all queries of the qrels.
- queries of the run that are not in the qrels are ignored (they have no judgements).

Ordering follows trec_eval everywhere (the rank column of a run file is ignored): hits are
sorted by score, best first, and ties are broken by document id in reverse lexicographic
order. The MRR@10 cut uses the same order, so it agrees with the other measures.

Files: qrels are BEIR TSV (`query-id<TAB>corpus-id<TAB>score`, with that header); runs are
TREC run files (`qid Q0 docid rank score tag`). Both are written atomically and reading
errors are reported as `file:line: what is wrong`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, overload

from ragtrain.core.records import RecordError, atomic_path

QRELS_HEADER = ("query-id", "corpus-id", "score")
# The headline measures, always reported (BEIR's).
MEASURES = ("ndcg@10", "map@10", "recall@100", "mrr@10")
# Measures asked for at any cutoff k: our name's stem -> pytrec_eval's measure stem (the
# measure is requested as `<stem>.<k>` and reported as `<stem>_<k>`); MRR is apart.
_TREC_STEMS = {"ndcg": "ndcg_cut", "map": "map_cut", "recall": "recall"}
CUTOFF_MEASURES = (*_TREC_STEMS, "mrr")

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


def ranked(hits: dict[str, float]) -> list[tuple[str, float]]:
    """A query's hits in trec_eval's order: score descending, ties by doc id descending."""
    return sorted(hits.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


@overload
def evaluate_run(
    qrels: Qrels,
    run: Run,
    ignore_identical_ids: bool = ...,
    per_query: Literal[False] = ...,
    cutoffs: Sequence[int] = ...,
) -> dict: ...


@overload
def evaluate_run(
    qrels: Qrels,
    run: Run,
    ignore_identical_ids: bool = ...,
    *,
    per_query: Literal[True],
    cutoffs: Sequence[int] = ...,
) -> tuple[dict, dict[str, dict[str, float]]]: ...


def evaluate_run(
    qrels: Qrels,
    run: Run,
    ignore_identical_ids: bool = True,
    per_query: bool = False,
    cutoffs: Sequence[int] = (),
) -> dict | tuple[dict, dict[str, dict[str, float]]]:
    """Mean nDCG@10, MAP@10, recall@100 and MRR@10 over the queries of `qrels`, plus `n`;
    with `cutoffs`, also nDCG@k, MAP@k, recall@k and MRR@k for each k of them.

    With `per_query=True`, also return {query id: {measure: value}} for every query of the
    qrels (unrounded). A query of the qrels without run entry scores 0; a query without any
    relevant document (all grades <= 0) scores 0 too, as in trec_eval.
    """
    if not qrels:
        raise ValueError("evaluate_run: qrels is empty (no query to evaluate)")
    names = measure_names(cutoffs)
    # Imported here: qrels and runs are read and written in envs without pytrec_eval.
    import pytrec_eval

    clean_qrels = _check_qrels(qrels)
    clean_run: Run = {}
    for qid in clean_qrels:
        hits = {str(d): _score(qid, d, s) for d, s in run.get(qid, {}).items()}
        if ignore_identical_ids:
            hits.pop(qid, None)
        # An empty dict (rather than no entry) makes pytrec_eval score the query 0.
        clean_run[qid] = hits

    split = [(name, *name.split("@")) for name in names]
    trec = {n: (_TREC_STEMS[m], int(k)) for n, m, k in split if m != "mrr"}
    asked = {f"{stem}.{k}" for stem, k in trec.values()}
    scores = pytrec_eval.RelevanceEvaluator(clean_qrels, asked).evaluate(clean_run)
    # MRR@k is trec_eval's recip_rank over each query's run cut to its k best hits.
    mrr = {}
    for k in sorted({int(k) for _, m, k in split if m == "mrr"}):
        cut_run = {qid: dict(ranked(hits)[:k]) for qid, hits in clean_run.items()}
        mrr[k] = pytrec_eval.RelevanceEvaluator(clean_qrels, {"recip_rank"}).evaluate(cut_run)

    per: dict[str, dict[str, float]] = {}
    for qid in clean_qrels:
        row = {}
        for name, measure, k in split:
            if measure == "mrr":
                row[name] = mrr[int(k)].get(qid, {}).get("recip_rank", 0.0)
            else:
                stem, cut = trec[name]
                row[name] = scores.get(qid, {}).get(f"{stem}_{cut}", 0.0)
        per[qid] = row
    means: dict = {m: round(sum(row[m] for row in per.values()) / len(per), 4) for m in names}
    means["n"] = len(per)
    return (means, per) if per_query else means


def measure_names(cutoffs: Sequence[int] = ()) -> list[str]:
    """The headline measures, then each measure at each of `cutoffs` not already among them
    (by measure, then cutoff)."""
    for k in cutoffs:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"cutoffs: expected positive integers, got {k!r}")
    extra = [f"{m}@{k}" for m in CUTOFF_MEASURES for k in sorted(set(cutoffs))]
    return [*MEASURES, *(name for name in extra if name not in MEASURES)]


def _check_qrels(qrels: Qrels) -> Qrels:
    out: Qrels = {}
    for qid, docs in qrels.items():
        row = {}
        for doc_id, grade in docs.items():
            # bool is an int subclass, but a True grade is surely a mistake.
            if isinstance(grade, bool) or not isinstance(grade, int):
                raise ValueError(
                    f"qrels[{qid!r}][{doc_id!r}]: grade should be an int, got {grade!r}"
                )
            row[str(doc_id)] = grade
        out[str(qid)] = row
    return out


def _score(qid: str, doc_id: str, score: object) -> float:
    # numbers.Real admits numpy scalars (a float32 from FAISS is not a Python float).
    if isinstance(score, bool) or not isinstance(score, numbers.Real):
        raise ValueError(f"run[{qid!r}][{doc_id!r}]: score should be a number, got {score!r}")
    return float(score)


def read_qrels(path: str | Path) -> Qrels:
    """Read BEIR qrels TSV (header `query-id<TAB>corpus-id<TAB>score`, integer grades)."""
    path = Path(path)
    if not path.exists():
        raise RecordError(path, None, "file not found")
    qrels: Qrels = {}
    first_seen: dict[tuple[str, str], int] = {}
    header_seen = False
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if not header_seen:
                if tuple(x.strip().lower() for x in fields) != QRELS_HEADER:
                    raise RecordError(
                        path, lineno, f"expected the header {'<TAB>'.join(QRELS_HEADER)!r}"
                    )
                header_seen = True
                continue
            if len(fields) != 3:
                raise RecordError(
                    path, lineno, f"expected 3 tab-separated fields, got {len(fields)}"
                )
            qid, doc_id, grade_text = (x.strip() for x in fields)
            if not qid or not doc_id:
                raise RecordError(path, lineno, "empty query-id or corpus-id")
            try:
                grade = int(grade_text)
            except ValueError:
                raise RecordError(
                    path, lineno, f"score should be an integer, got {grade_text!r}"
                ) from None
            if (qid, doc_id) in first_seen:
                raise RecordError(
                    path,
                    lineno,
                    f"duplicate pair ({qid!r}, {doc_id!r}), "
                    f"first on line {first_seen[qid, doc_id]}",
                )
            first_seen[qid, doc_id] = lineno
            qrels.setdefault(qid, {})[doc_id] = grade
    if not header_seen:
        raise RecordError(path, None, f"empty file, expected the header {QRELS_HEADER}")
    return qrels


def write_qrels(path: str | Path, qrels: Qrels) -> None:
    """Write BEIR qrels TSV, header first, atomically."""
    clean = _check_qrels(qrels)
    lines = ["\t".join(QRELS_HEADER)]
    for qid, docs in clean.items():
        _check_id(qid, "query id", "\t\n")
        for doc_id, grade in docs.items():
            _check_id(doc_id, "doc id", "\t\n")
            lines.append(f"{qid}\t{doc_id}\t{grade}")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_run(path: str | Path, run: Run, tag: str = "ragtrain") -> None:
    """Write a TREC run file (`qid Q0 docid rank score tag`), hits in trec_eval's order."""
    _check_id(tag, "run tag", None)
    lines = []
    for qid, hits in run.items():
        _check_id(qid, "query id", None)
        clean = {str(d): _score(qid, d, s) for d, s in hits.items()}
        for rank, (doc_id, score) in enumerate(ranked(clean), start=1):
            _check_id(doc_id, "doc id", None)
            lines.append(f"{qid} Q0 {doc_id} {rank} {score!r} {tag}")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def read_run(path: str | Path) -> Run:
    """Read a TREC run file into {query id: {doc id: score}} (the rank column is ignored)."""
    path = Path(path)
    if not path.exists():
        raise RecordError(path, None, "file not found")
    run: Run = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 6:
                raise RecordError(
                    path,
                    lineno,
                    f"expected 6 fields 'qid Q0 docid rank score tag', got {len(fields)}",
                )
            qid, _, doc_id, rank, score_text, _ = fields
            try:
                int(rank)
                score = float(score_text)
            except ValueError:
                raise RecordError(
                    path,
                    lineno,
                    f"rank should be an integer and score a number, got {rank!r}, {score_text!r}",
                ) from None
            hits = run.setdefault(qid, {})
            if doc_id in hits:
                raise RecordError(path, lineno, f"doc {doc_id!r} listed twice for query {qid!r}")
            hits[doc_id] = score
    return run


def _check_id(value: str, what: str, forbidden: str | None) -> None:
    # A run file is whitespace-separated and qrels tab-separated: an id containing the
    # separator would be read back as different fields.
    bad = (
        any(c.isspace() for c in value) if forbidden is None else any(c in value for c in forbidden)
    )
    if not value or bad:
        raise ValueError(f"{what} {value!r} cannot be written: empty or containing a separator")
