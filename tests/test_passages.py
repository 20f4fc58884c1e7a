"""Passages stored once (ragtrain.data.passages): the corpus stage's stream into
corpus.jsonl and its offsets and id tables, and reads by row and by id."""

import argparse
import json

import numpy as np
import pytest

from ragtrain.core.records import RecordError, read_jsonl
from ragtrain.data import passages as ps
from ragtrain.data.passages import DuplicateId, Passages, table_paths, write_passages

PASSAGES = [
    {"id": f"d{i}", "title": "Tî" if i % 2 else "", "text": f"passage {i} " * (i % 5)}
    for i in range(50)
]


def test_rows_ids_and_blocks_read_what_was_written(tmp_path):
    path = tmp_path / "corpus.jsonl"
    assert write_passages(path, iter(PASSAGES)) == 50
    assert read_jsonl(path) == PASSAGES  # the JSONL every other stage reads
    offsets, ids = table_paths(path)
    assert (offsets.name, ids.name) == ("corpus.offsets.npy", "corpus.ids.npy")
    stored = Passages(path)
    assert isinstance(stored._offsets, np.memmap) and isinstance(stored._ids, np.memmap)
    assert len(stored) == 50
    assert stored[7] == PASSAGES[7] and stored[-1] == PASSAGES[-1]
    assert stored.by_id("d31") == PASSAGES[31] and stored.row_of("d0") == 0
    assert "d49" in stored and "d50" not in stored
    with pytest.raises(KeyError):
        stored.by_id("nope")
    with pytest.raises(IndexError):
        stored[50]
    assert [len(b) for b in stored.blocks(16, start=10)] == [16, 16, 8]
    assert list(stored) == PASSAGES


def test_ids_sharing_a_hash_are_told_apart(tmp_path, monkeypatch):
    monkeypatch.setattr(ps, "id_hash", lambda pid: len(pid))  # many collisions
    path = tmp_path / "corpus.jsonl"
    write_passages(path, PASSAGES)
    stored = Passages(path)
    assert all(stored.by_id(p["id"]) == p for p in PASSAGES)


def test_a_duplicate_id_names_both_lines_of_the_input(tmp_path):
    from ragtrain.stages.data import cmd_corpus

    source = tmp_path / "beir.jsonl"
    lines = [{"_id": f"d{i}", "text": "x"} for i in range(5)] + [{"_id": "d2", "text": "y"}]
    source.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "corpus.jsonl"
    args = argparse.Namespace(params={}, input=str(source), output=str(out))
    with pytest.raises(
        RecordError, match=rf"^{source}:6: duplicate passage id 'd2' \(first on line 3\)"
    ):
        cmd_corpus(args)
    assert not out.exists() and not any(p.exists() for p in table_paths(out))
    with pytest.raises(DuplicateId, match=r"corpus\.jsonl:6: duplicate passage id 'd2'"):
        write_passages(out, [{"id": r["_id"], "title": "", "text": r["text"]} for r in lines])


def test_the_corpus_stage_streams_into_the_stored_form(tmp_path):
    from ragtrain.stages.data import cmd_corpus

    source = tmp_path / "flashrag.jsonl"
    source.write_text(
        "".join(json.dumps({"id": i, "contents": f'"T{i}"\ntext {i}'}) + "\n" for i in range(9))
    )
    out = tmp_path / "corpus.jsonl"
    cmd_corpus(argparse.Namespace(params={"format": "auto"}, input=str(source), output=str(out)))
    assert Passages(out).by_id("4") == {"id": "4", "title": "T4", "text": "text 4"}


def test_a_stale_offsets_table_is_refused(tmp_path):
    path = tmp_path / "corpus.jsonl"
    write_passages(path, PASSAGES)
    with path.open("a") as f:
        f.write(json.dumps({"id": "late", "title": "", "text": "added by hand"}) + "\n")
    with pytest.raises(RecordError, match=r"corpus\.offsets\.npy: .* another version"):
        Passages(path)


def test_a_corpus_without_tables_is_read_line_by_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n" + "".join(json.dumps(p) + "\n\n" for p in PASSAGES[:5]))
    stored = Passages(path)  # an index built before the tables: they are built in memory
    assert list(stored) == PASSAGES[:5] and stored.by_id("d3") == PASSAGES[3]
    path.write_text(json.dumps(PASSAGES[0]) + "\n" + '{"title": "no id"}\n')
    with pytest.raises(RecordError, match=r"corpus\.jsonl:2: expected a passage"):
        Passages(path)


def test_an_index_stores_its_passages_once(tmp_path):
    from ragtrain.graph.kinds import RETRIEVER_DEFAULTS
    from ragtrain.retrieval.index import Index, build_index

    corpus = tmp_path / "corpus" / "corpus.jsonl"
    corpus.parent.mkdir()
    write_passages(corpus, PASSAGES)
    params = {**RETRIEVER_DEFAULTS["bm25"], "kind": "bm25", "corpus": "c"}
    assert build_index(corpus, params, tmp_path / "index") == 50
    linked = tmp_path / "index" / "corpus.jsonl"
    assert linked.stat().st_ino == corpus.stat().st_ino  # a hard link, not a copy
    index = Index(tmp_path / "index")
    assert isinstance(index.corpus, Passages) and index.corpus.by_id("d9") == PASSAGES[9]
    [(row, _), *_] = index.search(["passage 9"], 3)[0]
    assert index.corpus[row]["id"] in {p["id"] for p in PASSAGES if "passage" in p["text"]}


@pytest.mark.parametrize("record", [{"title": "t", "text": "no id"}, {"id": 7, "text": "int"}])
def test_a_passage_without_a_string_id_is_named_and_nothing_is_written(tmp_path, record):
    good = {"id": "a", "title": "", "text": "fine"}
    with pytest.raises(ValueError, match=r"corpus\.jsonl: passage 2 needs a string `id`"):
        write_passages(tmp_path / "corpus.jsonl", [good, record])
    assert not list(tmp_path.iterdir())
