"""Pseudo-query products (SPTAR-style augmentation of retrievers).

- doc -> query SFT data: {id, prompt: [user turn with the passage], completion: [the
  query]}, from a task's gold train pairs or from the pseudo-queries a round kept;
- pseudo-queries: `per_doc` queries written by a fine-tuned LLM for each of a seeded
  sample of `docs` passages that no train query judges (sharded and resumable, like
  self-demonstrations), as query records {id, doc_id, query};
- passage prompts: the same sample's doc -> query prompts as RL prompt records (PPO of
  the writer, scored by a reward model on the pairs below and the source's rank);
- difficulty and preference data: the rank of each query's source passage under the
  round's trained retriever (`difficulty`, 1 = easiest), and, for passages with several
  queries, pairs with the passage as the shared prompt: chosen = a query every filter
  kept, rejected = one a filter dropped, ordered easy to hard by the chosen query's
  difficulty (what the next round's SFT data and, later, a reward model train on).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path

from ragtrain.core.records import RecordError
from ragtrain.core.seeds import DEFAULT_SEED
from ragtrain.data.prompts import PromptTemplate
from ragtrain.generation.engine import Generator
from ragtrain.generation.selfdemo import sample_demos

QUERY_SFT_DEFAULTS = {"prompt": "doc2query", "dev_fraction": 0.1, "seed": DEFAULT_SEED}
PSEUDO_QUERY_DEFAULTS = {
    "prompt": "doc2query",
    "docs": 100,
    "per_doc": 3,
    "shard_size": 64,
    "seed": DEFAULT_SEED,
}
PREFERENCE_DEFAULTS = {"dev_fraction": 0.1, "pairs_per_doc": 2, "depth": 1000, "seed": DEFAULT_SEED}


def is_kept(record: dict) -> bool:
    """A query every filter so far kept (an unfiltered query counts as kept)."""
    return record.get("kept", True)


def passages_by_id(corpus: list[dict]) -> dict[str, dict]:
    return {p["id"]: p for p in corpus}


def _passage(by_id: dict[str, dict], record: dict, source: str | Path) -> dict:
    try:
        return by_id[record["doc_id"]]
    except KeyError:
        raise RecordError(
            source,
            None,
            f"query {record['id']!r}: passage {record['doc_id']!r} is not in the corpus",
        ) from None


def _dev_docs(doc_ids: list[str], fraction: float, seed: int) -> set[str]:
    """A seeded share of the passages (at least one when asked for, never all)."""
    ids = sorted(set(doc_ids))
    if fraction <= 0 or len(ids) < 2:
        return set()
    n = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    return set(random.Random(seed).sample(ids, n))


def query_sft_data(
    queries: list[dict], corpus: list[dict], template: PromptTemplate, params: dict, source: str
) -> tuple[list[dict], list[dict], dict]:
    """SFT records (passage -> query) split by passage into train and dev, in the order of
    `queries` (a curriculum, when the queries come sorted by difficulty)."""
    params = {**QUERY_SFT_DEFAULTS, **params}
    by_id = passages_by_id(corpus)
    chosen = [q for q in queries if is_kept(q)]
    if not chosen:
        raise RecordError(source, None, "no kept queries to build doc -> query SFT data from")
    dev_docs = _dev_docs([q["doc_id"] for q in chosen], params["dev_fraction"], params["seed"])
    train, dev = [], []
    for q in chosen:
        record = {
            "id": q["id"],
            "prompt": template.conversation(_passage(by_id, q, source)),
            "completion": [{"role": "assistant", "content": q["query"]}],
        }
        (dev if q["doc_id"] in dev_docs else train).append(record)
    stats = {
        "n_queries": len(queries),
        "n_used": len(chosen),
        "n_train": len(train),
        "n_dev": len(dev),
        "n_passages": len({q["doc_id"] for q in chosen}),
    }
    return train, dev, stats


def unlabelled_sample(corpus: list[dict], labelled: set[str], n: int, seed: int) -> list[dict]:
    """A seeded sample of `n` passages that no train query judges (all of them if fewer)."""
    pool = [p for p in corpus if p["id"] not in labelled]
    n = min(n, len(pool))
    chosen = set(p["id"] for p in random.Random(seed).sample(pool, n))
    return [p for p in pool if p["id"] in chosen]


def passage_prompts(passages: list[dict], template: PromptTemplate) -> list[dict]:
    """Prompt records for RL of the query writer: each passage's doc -> query prompt
    (the template pseudo-queries are written with), with its id as `doc_id` (what a
    retrieval reward ranks) and no gold answer."""
    return [
        {"id": p["id"], "doc_id": p["id"], "answers": [], "prompt": template.conversation(p)}
        for p in passages
    ]


_PREFIX = re.compile(r"^\s*(?:query|question|search)\s*:\s*", re.IGNORECASE)


def clean_query(text: str) -> str:
    """The first line of a generation, without a `Query:` label or wrapping quotes."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = _PREFIX.sub("", line).strip().strip("\"'“”").strip()
    return line


def generate_queries(
    passages: list[dict],
    load_generator: Callable[[], Generator],
    template: PromptTemplate,
    params: dict,
    work: Path,
) -> tuple[list[dict], dict]:
    """`per_doc` pseudo-queries per passage, through the generation interface (vLLM / HF),
    in shards under `work` (resumed). Empty and repeated queries of a passage are dropped."""
    sampling_params = {**params, "n": params["per_doc"]}
    records, stats = sample_demos(
        passages, load_generator, template, sampling_params, work, desc="pseudo-queries"
    )
    queries, empty, repeated = [], 0, 0
    for r in records:
        seen: set[str] = set()
        for j, sample in enumerate(r["samples"]):
            text = clean_query(sample["text"])
            key = text.lower()
            if not text:
                empty += 1
            elif key in seen:
                repeated += 1
            else:
                seen.add(key)
                queries.append({"id": f"{r['id']}-pq{j}", "doc_id": r["id"], "query": text})
    stats = {
        **stats,
        "n_passages": len(records),
        "n_queries": len(queries),
        "dropped_empty": empty,
        "dropped_repeated": repeated,
    }
    return queries, stats


def with_difficulty(
    queries: list[dict], search: Callable[[dict[str, str], int], dict], depth: int
) -> list[dict]:
    """Each query with `difficulty`: the rank of its source passage among the retriever's
    top `depth` (depth + 1 when it is not there)."""
    run = search({q["id"]: q["query"] for q in queries}, depth)
    out = []
    for q in queries:
        ranked = sorted(run.get(q["id"], {}).items(), key=lambda kv: -kv[1])
        ranks = {doc_id: i for i, (doc_id, _) in enumerate(ranked, start=1)}
        out.append({**q, "difficulty": ranks.get(q["doc_id"], depth + 1)})
    return out


def preference_pairs(
    queries: list[dict], corpus: list[dict], template: PromptTemplate, params: dict, source: str
) -> tuple[list[dict], list[dict], dict]:
    """Pairs per passage (kept query over dropped query), easy to hard; split by passage."""
    params = {**PREFERENCE_DEFAULTS, **params}
    by_id = passages_by_id(corpus)
    by_doc: dict[str, list[dict]] = {}
    for q in queries:
        by_doc.setdefault(q["doc_id"], []).append(q)
    pairs = []
    for doc_id, group in by_doc.items():
        kept = sorted((q for q in group if is_kept(q)), key=lambda q: q["difficulty"])
        dropped = [q for q in group if not is_kept(q)]
        prompt = template.conversation(_passage(by_id, group[0], source))
        # Each kept query against a different dropped one, easiest kept first.
        for chosen, rejected in list(zip(kept, dropped, strict=False))[: params["pairs_per_doc"]]:
            pairs.append(
                {
                    "id": f"{chosen['id']}>{rejected['id']}",
                    "doc_id": doc_id,
                    "prompt": prompt,
                    "chosen": [{"role": "assistant", "content": chosen["query"]}],
                    "rejected": [{"role": "assistant", "content": rejected["query"]}],
                    "difficulty": chosen["difficulty"],
                }
            )
    pairs.sort(key=lambda p: (p["difficulty"], p["id"]))
    dev_docs = _dev_docs([p["doc_id"] for p in pairs], params["dev_fraction"], params["seed"])
    train = [p for p in pairs if p["doc_id"] not in dev_docs]
    dev = [p for p in pairs if p["doc_id"] in dev_docs]
    kept = [q for q in queries if is_kept(q)]
    stats = {
        "n_queries": len(queries),
        "n_kept": len(kept),
        "n_pairs": len(pairs),
        "n_train": len(train),
        "n_dev": len(dev),
        "mean_difficulty_kept": _mean([q["difficulty"] for q in kept]),
        "mean_difficulty_dropped": _mean([q["difficulty"] for q in queries if not is_kept(q)]),
    }
    return train, dev, stats


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None
