"""Retrieval tasks: BEIR folders and the synthetic task over a world."""

import json

import pytest

from ragtrain.core.records import RecordError
from ragtrain.data.beir import (
    INDUSTRY_WORDS,
    PROFESSION_WORDS,
    check_task,
    load_folder,
    load_queries,
    world_task,
)
from ragtrain.data.world import WorldConfig, generate_world


@pytest.fixture(scope="module")
def world():
    return generate_world(
        WorldConfig(seed=3, people=60, organisations=20, places=12, distractors=20)
    )


def test_world_task_queries_pick_out_one_passage_in_other_words(world):
    queries, qrels = world_task(world.entities, {"train": 10, "dev": 5, "test": 20}, seed=1)
    assert {s: len(q) for s, q in qrels.items()} == {"train": 10, "dev": 5, "test": 20}
    texts = {q["id"]: q["query"] for q in queries}
    passages = {p["id"]: p for p in world.passages}
    judged = [doc for split in qrels.values() for docs in split.values() for doc in docs]
    assert len(judged) == len(set(judged)), "each passage answers at most one query"
    for split in qrels.values():
        for qid, docs in split.items():
            (doc_id,) = docs
            passage, query = passages[doc_id], texts[qid].lower()
            # Never the entity's own name, never the passage's words for a job or a trade.
            assert passage["title"].lower() not in query
            entity = world.entities[doc_id]
            for field, words in (("profession", PROFESSION_WORDS), ("industry", INDUSTRY_WORDS)):
                if field in entity and words[entity[field]] in query:
                    assert entity[field] not in query


def test_world_task_is_seeded_and_too_many_queries_fail(world):
    counts = {"train": 5, "test": 5}
    assert world_task(world.entities, counts, 1) == world_task(world.entities, counts, 1)
    assert world_task(world.entities, counts, 1) != world_task(world.entities, counts, 2)
    with pytest.raises(ValueError, match="world too small"):
        world_task(world.entities, {"test": 10_000}, 1)


def test_beir_folder_loads_and_bad_qrels_name_the_line(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "queries.jsonl").write_text(
        "\n".join(json.dumps({"_id": i, "text": f"query {i}"}) for i in ("q1", "q2")) + "\n"
    )
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    queries, qrels = load_folder(tmp_path, ["train", "test"])
    assert [q["id"] for q in queries] == ["q1", "q2"]
    assert qrels == {"test": {"q1": {"d1": 1}}}
    check_task(queries, qrels, {"d1"}, tmp_path)
    with pytest.raises(RecordError, match="'d9', which is not in the corpus"):
        check_task(queries, {"test": {"q1": {"d9": 1}}}, {"d1"}, tmp_path)
    with pytest.raises(RecordError, match="unknown query id 'q7'"):
        check_task(queries, {"test": {"q7": {"d1": 1}}}, {"d1"}, tmp_path)
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\n")
    with pytest.raises(RecordError, match=r"test\.tsv:2"):
        load_folder(tmp_path, ["test"])


def test_queries_file_errors(tmp_path):
    path = tmp_path / "queries.jsonl"
    path.write_text('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n')
    with pytest.raises(RecordError, match=r":2: duplicate query id 'a' \(first on line 1\)"):
        load_queries(path)
    path.write_text('{"_id": "a"}\n')
    with pytest.raises(RecordError, match=r":1:.*text"):
        load_queries(path)
