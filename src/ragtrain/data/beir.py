"""Retrieval tasks in BEIR's layout: a corpus, queries and qrels per split.

A BEIR folder holds `corpus.jsonl`, `queries.jsonl` (`_id`, `text`) and
`qrels/<split>.tsv` (`query-id corpus-id score`, with a header). Inside the workflow a
task is `queries.jsonl` ({id, query}), `qrels/<split>.tsv` and the corpus of the
task's `corpus` node.

`world_task` builds a synthetic task over a generated world (ragtrain.data.world) for the
demo and the tests. Its queries describe a passage's entity by two of its attributes
without its name, and in other words than the passage's (a "map maker" for a
cartographer, "pottery" for ceramics), so that lexical match is not enough: several
passages share each attribute, and only the pair picks one out. Few queries go to
train (the few-shot setting of SPTAR, about 50-100), the rest to held-out splits;
each passage is the answer of at most one query.
"""

from __future__ import annotations

import random
from pathlib import Path

from ragtrain.core.records import RecordError, iter_jsonl, require, write_json, write_jsonl
from ragtrain.metrics.ir import read_qrels, write_qrels

# fmt: off
PROFESSION_WORDS = {
    "cartographer": "map maker", "glassblower": "glass artisan", "archivist": "keeper of records",
    "ferry pilot": "boat captain on the crossings", "tax assessor": "revenue office valuer",
    "beekeeper": "apiarist", "violin maker": "luthier", "surveyor": "land measurer",
    "botanist": "plant scientist", "typesetter": "print compositor",
    "locksmith": "lock and key tradesman", "hydrologist": "water scientist",
    "auctioneer": "sale room caller", "stonemason": "stone carver",
    "translator": "interpreter of languages", "actuary": "risk statistician",
}
INDUSTRY_WORDS = {
    "shipbuilding": "vessel construction", "textiles": "fabric making",
    "rail freight": "goods trains", "insurance": "underwriting", "mining": "ore extraction",
    "publishing": "books and periodicals", "ceramics": "pottery", "telegraphy": "wire messages",
    "brewing": "beer making", "aviation": "aircraft", "salt trading": "the trade in sea salt",
    "clockmaking": "timepieces",
}
# kind -> [(attributes used, query template)]; the template sees the entity's attributes
# and the paraphrased `job` / `trade`.
QUERY_TEMPLATES = {
    "person": [
        (("profession", "birthplace"), "which {job} comes from {birthplace}"),
        (("profession", "employer"), "{job} on the staff of {employer}"),
        (("birthplace", "employer"), "someone from {birthplace} on the payroll of {employer}"),
        (("profession", "birth_year"), "{job} who came into the world in {birth_year}"),
    ],
    "organisation": [
        (("industry", "founder"), "{trade} business started by {founder}"),
        (("industry", "headquarters"), "{trade} firm with its head office in {headquarters}"),
        (("founder", "headquarters"), "outfit set up by {founder}, based in {headquarters}"),
        (("industry", "founding_year"), "{trade} enterprise established in {founding_year}"),
    ],
    "city": [
        (("country", "river"), "which town of {country} does the {river} flow through"),
        (("river", "population"), "riverside town on the {river}, home to {population} residents"),
    ],
}
# fmt: on
WORLD_TASK_DEFAULTS = {"queries": {"train": 64, "dev": 32, "test": 100}}


def world_task(
    entities: dict[str, dict], counts: dict[str, int], seed: int
) -> tuple[list[dict], dict[str, dict[str, dict[str, int]]]]:
    """Queries and qrels per split over a world's passages (`entities`: passage id ->
    the attributes its passage states). Returns (queries, {split: qrels})."""
    rng = random.Random(seed)
    # How many passages state each (attribute, value): a query must pick out one.
    holders: dict[tuple, int] = {}
    for e in entities.values():
        for attrs, _ in QUERY_TEMPLATES[e["kind"]]:
            if all(a in e for a in attrs):
                key = (e["kind"], *((a, e[a]) for a in attrs))
                holders[key] = holders.get(key, 0) + 1
    candidates: list[tuple[str, str]] = []
    for doc_id in sorted(entities):
        e = entities[doc_id]
        templates = list(QUERY_TEMPLATES[e["kind"]])
        rng.shuffle(templates)
        for attrs, template in templates:
            if (
                all(a in e for a in attrs)
                and holders[(e["kind"], *((a, e[a]) for a in attrs))] == 1
            ):
                words = {
                    "job": PROFESSION_WORDS.get(e.get("profession", ""), ""),
                    "trade": INDUSTRY_WORDS.get(e.get("industry", ""), ""),
                }
                candidates.append((doc_id, template.format(**e, **words)))
                break
    need = sum(counts.values())
    if need > len(candidates):
        raise ValueError(
            f"world too small: {need} queries requested but only {len(candidates)} passages "
            "can be described uniquely; enlarge the world or ask for fewer queries"
        )
    rng.shuffle(candidates)
    queries, qrels = [], {}
    start = 0
    for split, n in counts.items():
        qrels[split] = {}
        for i, (doc_id, text) in enumerate(candidates[start : start + n]):
            qid = f"{split}-q{i:05d}"
            queries.append({"id": qid, "query": text[0].upper() + text[1:] + "?"})
            qrels[split][qid] = {doc_id: 1}
        start += n
    return queries, qrels


def load_queries(path: str | Path) -> list[dict]:
    """BEIR `queries.jsonl` (`_id`, `text`) or ours ({id, query})."""
    queries, seen = [], {}
    for lineno, record in iter_jsonl(path):
        beir = "_id" in record
        qid = str(require(record, "_id" if beir else "id", (str, int), path, lineno))
        text = require(record, "text" if beir else "query", str, path, lineno)
        if qid in seen:
            raise RecordError(
                path, lineno, f"duplicate query id {qid!r} (first on line {seen[qid]})"
            )
        seen[qid] = lineno
        queries.append({"id": qid, "query": text})
    if not queries:
        raise RecordError(path, None, "no queries")
    return queries


def load_folder(
    folder: str | Path, splits: list[str]
) -> tuple[list[dict], dict[str, dict[str, dict[str, int]]]]:
    """A BEIR folder's queries and the qrels of the splits it has (of those asked for)."""
    folder = Path(folder)
    queries = load_queries(folder / "queries.jsonl")
    qrels = {s: read_qrels(folder / "qrels" / f"{s}.tsv") for s in splits
             if (folder / "qrels" / f"{s}.tsv").is_file()}  # fmt: skip
    if not qrels:
        raise RecordError(folder / "qrels", None, f"no qrels file for any of {splits}")
    return queries, qrels


def check_task(
    queries: list[dict], qrels: dict[str, dict], corpus_ids: set[str], source: str | Path
) -> None:
    """Every judged query exists and every judged passage is in the corpus."""
    known = {q["id"] for q in queries}
    for split, by_query in qrels.items():
        for qid, docs in by_query.items():
            if qid not in known:
                raise RecordError(source, None, f"qrels/{split}.tsv: unknown query id {qid!r}")
            for doc_id in docs:
                if doc_id not in corpus_ids:
                    raise RecordError(
                        source, None, f"qrels/{split}.tsv: query {qid!r} judges passage "
                        f"{doc_id!r}, which is not in the corpus"
                    )  # fmt: skip


def write_task(
    queries: list[dict], qrels: dict[str, dict], out_queries: Path, out_qrels: Path, stats: Path
) -> dict:
    """Write the task (only the queries some split judges) and its counts."""
    judged = {qid for by_query in qrels.values() for qid in by_query}
    kept = [q for q in queries if q["id"] in judged]
    out_qrels.mkdir(parents=True, exist_ok=True)
    for split, by_query in qrels.items():
        write_qrels(out_qrels / f"{split}.tsv", by_query)
    write_jsonl(out_queries, kept)
    counts = {
        "n_queries": len(kept),
        "splits": {
            s: {"queries": len(q), "judgements": sum(len(d) for d in q.values())}
            for s, q in qrels.items()
        },
    }
    write_json(stats, counts)
    return counts


def gold_queries(
    queries_path: str | Path, qrels_dir: str | Path, split: str = "train"
) -> list[dict]:
    """A task's judged (query, passage) pairs of a split as query records {id, doc_id,
    query}; a query that judges several passages gets one record each (`qid:doc_id`)."""
    texts = {q["id"]: q["query"] for q in load_queries(queries_path)}
    path = Path(qrels_dir) / f"{split}.tsv"
    if not path.is_file():
        raise RecordError(path, None, f"the task has no {split} qrels")
    return [
        {"id": f"{qid}:{doc_id}" if len(docs) > 1 else qid, "doc_id": doc_id, "query": texts[qid]}
        for qid, docs in read_qrels(path).items()
        for doc_id, score in docs.items()
        if score > 0
    ]


def read_query_records(path: str | Path) -> list[dict]:
    """Query records {id, doc_id, query, ...} (pseudo-queries, filtered or not), checked."""
    records = []
    for lineno, record in iter_jsonl(path):
        for field in ("id", "doc_id", "query"):
            require(record, field, str, path, lineno)
        records.append(record)
    return records
