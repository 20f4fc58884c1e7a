"""Invariants of the fictional-world generator (ragtrain.data.world)."""

import re
from collections import Counter
from dataclasses import replace

import pytest

from ragtrain.core.records import read_json, read_jsonl, write_jsonl
from ragtrain.data.loaders import dataset_stats, load_dataset, with_source_docs
from ragtrain.data.world import (
    ALCE_TYPES,
    TYPES,
    World,
    WorldConfig,
    generate_world,
    world_stats,
    write_world,
)

BIG = WorldConfig(
    seed=5,
    people=400,
    organisations=120,
    places=60,
    distractors=80,
    questions={"train": 700, "dev": 100, "test": 200},
)


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(WorldConfig())


@pytest.fixture(scope="module")
def big() -> World:
    return generate_world(BIG)


def examples(w: World) -> list[dict]:
    return [ex for split in w.splits.values() for ex in split]


def by_id(w: World) -> dict[str, dict]:
    return {p["id"]: p for p in w.passages}


def test_same_config_same_world_and_files(tmp_path):
    a, b = generate_world(WorldConfig()), generate_world(WorldConfig())
    assert a == b
    names = ("corpus.jsonl", "questions.jsonl", "stats.json")
    for world_, folder in ((a, tmp_path / "a"), (b, tmp_path / "b")):
        write_world(world_, *(folder / name for name in names))
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    splits = [q["meta"]["split"] for q in read_jsonl(tmp_path / "a" / "questions.jsonl")]
    assert splits.count("test") == len(a.splits["test"])


def test_other_seed_other_world(world):
    other = generate_world(WorldConfig(seed=14))
    assert {p["title"] for p in other.passages} != {p["title"] for p in world.passages}
    assert other.splits != world.splits


def test_record_shapes(world):
    for p in world.passages:
        assert set(p) == {"id", "title", "text"}
        assert p["title"] in p["text"]
        assert 15 <= len(p["text"].split()) <= 50
    for ex in examples(world):
        assert set(ex) == {"id", "question", "answers", "docs", "gold_doc_ids", "meta"}
        assert ex["docs"] == []
        assert ex["meta"]["type"] in ("single", "multihop", "unanswerable")
        assert isinstance(ex["meta"]["relation"], str)


def test_names_unique(world):
    titles = [p["title"] for p in world.passages]
    assert len(set(titles)) == len(titles)
    assert len({p["id"] for p in world.passages}) == len(world.passages)


@pytest.mark.parametrize("w", ["world", "big"])
def test_answers_are_in_gold_passages(w, request):
    w = request.getfixturevalue(w)
    docs = by_id(w)
    for ex in examples(w):
        kind = ex["meta"]["type"]
        if kind == "unanswerable":
            continue
        (answer,) = ex["answers"]
        assert len(ex["gold_doc_ids"]) == (1 if kind == "single" else 2)
        assert answer in docs[ex["gold_doc_ids"][-1]]["text"], ex
        # the first hop names the bridge entity, whose passage holds the answer
        if kind == "multihop":
            first, second = (docs[i] for i in ex["gold_doc_ids"])
            assert ex["meta"]["entity"] in first["text"]
            assert second["title"] == ex["meta"]["bridge"] in first["text"]


@pytest.mark.parametrize("w", ["world", "big"])
def test_unanswerable_answers_are_nowhere(w, request):
    w = request.getfixturevalue(w)
    reasons = set()
    for ex in examples(w):
        meta = ex["meta"]
        if meta["type"] != "unanswerable":
            continue
        assert ex["answers"] == []
        reasons.add(meta["reason"])
        mentioning = [p for p in w.passages if meta["entity"] in p["title"] + " " + p["text"]]
        if meta["reason"] == "withheld":
            (own,) = ex["gold_doc_ids"]
            assert by_id(w)[own]["title"] == meta["entity"] and meta["withheld"]
            assert not any(meta["withheld"] in p["text"] for p in mentioning), ex
        else:
            assert meta["reason"] == "unknown_entity"
            assert mentioning == [] and ex["gold_doc_ids"] == []
    assert reasons == {"withheld", "unknown_entity"}


def test_ids_and_questions_unique_and_sizes(big):
    exs = examples(big)
    assert len({ex["id"] for ex in exs}) == len(exs)
    assert len({ex["question"] for ex in exs}) == len(exs)
    assert {s: len(v) for s, v in big.splits.items()} == BIG.questions


def test_too_small_world_is_refused():
    cfg = WorldConfig(people=5, organisations=2, places=2, questions={"train": 500})
    with pytest.raises(ValueError, match=r"world too small: \d+ distinct single .* only \d+"):
        generate_world(cfg)


def test_questions_read_naturally(world):
    starts = ("Where", "In which", "In what", "What", "Which", "Who", "On which")
    for ex in examples(world):
        q = ex["question"]
        assert q.endswith("?") and q.startswith(starts), q
        assert ex["meta"]["entity"] in q
        for answer in ex["answers"]:
            assert 1 <= len(answer.split()) <= 3, answer


def test_distractors(world):
    cfg = WorldConfig()
    assert len(world.distractor_ids) == cfg.distractors
    docs = by_id(world)
    distractors = [docs[i] for i in world.distractor_ids]
    real = [p for p in world.passages if p["id"] not in set(world.distractor_ids)]
    titles = {p["title"] for p in real}
    parts = {part for t in titles for part in t.split()}
    for d in distractors:
        name = d["title"]
        # a near-namesake shares a first name or surname, or the root of an organisation or city
        assert name not in titles
        assert set(name.split()) & parts or any(name[:3] == t[:3] for t in titles)
    gold = {i for ex in examples(world) for i in ex["gold_doc_ids"]}
    assert not gold & set(world.distractor_ids)
    asked = {ex["meta"]["entity"] for ex in examples(world)}
    assert not asked & {d["title"] for d in distractors}


def test_rates_are_respected(big):
    exs = examples(big)
    assert len(exs) == 1000
    for kind, rate in (("multihop", BIG.multihop_rate), ("unanswerable", BIG.unanswerable_rate)):
        share = sum(ex["meta"]["type"] == kind for ex in exs) / len(exs)
        assert abs(share - rate) <= 0.05, kind


def test_write_world_and_stats(world, tmp_path):
    write_world(world, tmp_path / "corpus.jsonl", tmp_path / "q.jsonl", tmp_path / "stats.json")
    assert read_jsonl(tmp_path / "corpus.jsonl") == world.passages
    by_split: dict[str, list] = {}
    for q in read_jsonl(tmp_path / "q.jsonl"):
        by_split.setdefault(q["meta"].pop("split"), []).append(q)
    assert by_split == world.splits
    stats = read_json(tmp_path / "stats.json")
    assert stats["passages"] == len(world.passages)
    assert stats["distractor_passages"] == WorldConfig().distractors
    for split, exs in world.splits.items():
        s = stats["splits"][split]
        assert s["total"] == len(exs)
        assert s["single"] + s["multihop"] + s["unanswerable"] == len(exs)
        assert s["unanswerable"] == sum(not ex["answers"] for ex in exs)
    assert sum(stats["types"].values()) == stats["questions"] == 350


def test_config_from_dict():
    cfg = WorldConfig.from_dict({"seed": 3, "people": 10, "questions": {"train": 5}})
    assert cfg == replace(WorldConfig(), seed=3, people=10, questions={"train": 5})
    with pytest.raises(ValueError, match="'peeple'"):
        WorldConfig.from_dict({"peeple": 10})
    with pytest.raises(ValueError, match="rates"):
        WorldConfig(multihop_rate=0.7, unanswerable_rate=0.5)
    with pytest.raises(ValueError, match="split"):
        WorldConfig(questions={"../x": 3})


# --- ALCE-shaped questions ----------------------------------------------------------

ALCE = replace(WorldConfig(), alce={"cite_train": 48, "cite_test": 30})
SHAPE_FIELDS = {"asqa": "qa_pairs", "qampari": "answer_groups", "eli5": "claims"}


@pytest.fixture(scope="module")
def alce() -> World:
    return generate_world(ALCE)


def alce_examples(w: World) -> list[dict]:
    return [ex for split in ALCE.alce for ex in w.splits[split]]


def test_alce_leaves_the_rest_of_the_world_unchanged(world, alce):
    assert alce.passages == world.passages
    assert alce.distractor_ids == world.distractor_ids
    assert alce.entities == world.entities
    assert list(alce.splits) == [*world.splits, *ALCE.alce]
    assert {split: alce.splits[split] for split in world.splits} == world.splits
    before, after = world_stats(world), world_stats(alce)
    assert list(before["types"]) == list(TYPES)
    assert list(after["types"]) == [*TYPES, *ALCE_TYPES]
    assert {split: after["splits"][split] for split in world.splits} == before["splits"]
    assert after["questions"] == before["questions"] + sum(ALCE.alce.values())


def test_alce_same_config_same_questions(alce):
    again = generate_world(ALCE)
    assert {s: again.splits[s] for s in ALCE.alce} == {s: alce.splits[s] for s in ALCE.alce}
    other = generate_world(replace(ALCE, seed=14))
    assert other.splits["cite_test"] != alce.splits["cite_test"]


def test_alce_record_shapes_and_documents(alce):
    passages = by_id(alce)
    exs = alce_examples(alce)
    assert len({ex["question"] for ex in exs}) == len(exs)
    for split in ALCE.alce:
        ids = [ex["id"] for ex in alce.splits[split]]
        assert ids == [f"{split}-{i:05d}" for i in range(ALCE.alce[split])]
    for ex in exs:
        shape = ex["meta"]["type"]
        assert shape in ALCE_TYPES and ex["meta"]["task"] == shape
        base = {"id", "question", "answers", "docs", "source_docs", "gold_doc_ids"}
        assert set(ex) == base | {"reference", "meta", SHAPE_FIELDS[shape]}
        assert ex["docs"] == [] and ex["answers"]
        assert len(ex["answers"]) == len(set(ex["answers"]))
        doc_ids = [d["id"] for d in ex["source_docs"]]
        assert len(doc_ids) == len(set(doc_ids)) == 5
        assert all(d == passages[d["id"]] for d in ex["source_docs"])
        assert set(ex["gold_doc_ids"]) <= set(doc_ids)
        assert 1 <= len(ex["gold_doc_ids"]) <= 4
        if shape == "asqa":
            assert len(ex["gold_doc_ids"]) == 2 and len(ex["qa_pairs"]) >= 2
            short = [a for pair in ex["qa_pairs"] for a in pair["short_answers"]]
            assert ex["answers"] == list(dict.fromkeys(short))
            assert all(pair["question"].endswith("?") for pair in ex["qa_pairs"])
        elif shape == "eli5":
            assert ex["answers"] == ex["claims"] and len(ex["claims"]) == 3
            assert ex["meta"]["answers_from"] == "claims"
    # the fillers prefer near-namesakes of the entities asked about
    fillers = [
        d["id"] for ex in exs for d in ex["source_docs"] if d["id"] not in ex["gold_doc_ids"]
    ]
    assert set(fillers) & set(alce.distractor_ids)
    # a person's or organisation's background spans two passages
    two = [ex for ex in exs if ex["meta"]["type"] == "eli5" and len(ex["gold_doc_ids"]) == 2]
    assert two


@pytest.mark.parametrize("counts", [{"cite_train": 48, "cite_test": 30}, {"a": 7, "b": 1}])
def test_alce_shapes_dealt_evenly(alce, counts):
    w = alce if counts == ALCE.alce else generate_world(replace(WorldConfig(), alce=counts))
    for split, n in counts.items():
        shapes = Counter(ex["meta"]["type"] for ex in w.splits[split])
        assert sum(shapes.values()) == n
        per_shape = [shapes[t] for t in ALCE_TYPES]
        assert max(per_shape) - min(per_shape) <= 1
        if n % 3 == 0:
            assert per_shape == [n // 3] * 3
        expected = {"total": n, **{t: shapes[t] for t in ALCE_TYPES}}
        assert world_stats(w)["splits"][split] == expected


def test_qampari_answers_are_every_passage_stating_the_fact(alce):
    lists = [ex for ex in alce_examples(alce) if ex["meta"]["type"] == "qampari"]
    assert len(lists) == 26
    for ex in lists:
        rel, value = ex["meta"]["relation"], ex["meta"]["value"]
        stating = [d for d, e in alce.entities.items() if e.get(rel) == value]
        assert sorted(ex["gold_doc_ids"]) == sorted(stating)
        assert 2 <= len(stating) <= 4
        assert ex["answers"] == [alce.entities[d]["name"] for d in ex["gold_doc_ids"]]
        assert ex["answer_groups"] == [[a] for a in ex["answers"]]
        assert value in ex["question"]
    # distractors about near-namesakes are answers too where they state the fact
    assert {d for ex in lists for d in ex["gold_doc_ids"]} & set(alce.distractor_ids)


def _sentences(reference: str) -> list[tuple[str, list[int]]]:
    """An ALCE-style answer's sentences and the documents each cites."""
    found = re.findall(r"(.+?)((?: \[\d+\])+)\.(?: |$)", reference)
    rebuilt = " ".join(f"{text}{cites}." for text, cites in found)
    assert rebuilt == reference, reference
    return [(text, [int(k) for k in re.findall(r"\d+", cites)]) for text, cites in found]


def test_alce_references_cite_the_passages_that_state_them(alce):
    # every fact value the world states: names, places, professions, years, populations
    values = {v for e in alce.entities.values() for k, v in e.items() if k != "kind"}
    for ex in alce_examples(alce):
        docs, gold, ref = ex["source_docs"], ex["gold_doc_ids"], ex["reference"]
        if ex["meta"]["type"] == "qampari":
            items = re.findall(r"([^,\[\] ][^,\[\]]*?) \[(\d+)\]", ref)
            assert ref == ", ".join(f"{name} [{k}]" for name, k in items) + "."
            assert sorted(name for name, _ in items) == sorted(ex["answers"])
            rel, value = ex["meta"]["relation"], ex["meta"]["value"]
            for name, k in items:
                cited = docs[int(k) - 1]
                assert cited["title"] == name and cited["id"] in gold
                assert alce.entities[cited["id"]][rel] == value in cited["text"]
            continue
        sentences = _sentences(ref)
        cited_ids = set()
        for text, cites in sentences:
            stated = [v for v in values if re.search(rf"\b{re.escape(v)}\b", text)]
            numbers = re.findall(r"\d[\d,]*\d", text)
            assert len(stated) >= 2, text  # who or what, and a fact
            for k in cites:
                passage = docs[k - 1]
                cited_ids.add(passage["id"])
                for v in stated + numbers:
                    assert v in passage["text"], (text, passage)
        assert cited_ids == set(gold), ex
        if ex["meta"]["type"] == "eli5":
            assert [f"{text}." for text, _ in sentences] == ex["claims"]
        else:
            for answer in ex["answers"]:
                assert answer in ref, (answer, ref)


def test_alce_too_small_world_is_refused():
    cfg = WorldConfig(people=5, organisations=2, places=2, distractors=0,
                      questions={"train": 5}, alce={"cite": 60})  # fmt: skip
    with pytest.raises(ValueError, match=r"world too small: \d+ distinct \w+ \(ALCE-shaped\)"):
        generate_world(cfg)


def test_alce_config_errors():
    cfg = WorldConfig.from_dict({"questions": {"train": 5}, "alce": {"cite": 3}})
    assert cfg.alce == {"cite": 3}
    assert WorldConfig().alce == {}
    with pytest.raises(ValueError, match=r"alce: bad split name '\.\./x'"):
        WorldConfig(alce={"../x": 3})
    for bad in (-1, 2.5, "3"):
        with pytest.raises(ValueError, match=r"alce: split 'cite': question count"):
            WorldConfig(alce={"cite": bad})
    with pytest.raises(ValueError, match=r"alce: split 'test' is also in questions"):
        WorldConfig(alce={"cite": 3, "test": 3})


def test_alce_split_loads_with_its_documents(alce, tmp_path):
    names = ("corpus.jsonl", "questions.jsonl", "stats.json")
    write_world(alce, *(tmp_path / name for name in names))
    stats = read_json(tmp_path / "stats.json")
    assert stats["splits"]["cite_test"]["total"] == 30
    loaded = load_dataset(tmp_path / "questions.jsonl", {"world": "w", "split": "cite_test"})
    assert len(loaded) == 30
    kept = ("source_docs", "gold_doc_ids", "qa_pairs", "answer_groups", "claims", "reference")
    for ex, given in zip(loaded, alce.splits["cite_test"], strict=True):
        assert ex["docs"] == [] and ex["meta"]["split"] == "cite_test"
        assert {k: ex[k] for k in kept if k in given} == {k: given[k] for k in kept if k in given}
        assert ex["answers"] == given["answers"]
    assert {f for ex in loaded for f in SHAPE_FIELDS.values() if f in ex} == set(
        SHAPE_FIELDS.values()
    )
    # what retrieval `source` gives: each question's own five documents as `docs`
    path = tmp_path / "examples.jsonl"
    write_jsonl(path, loaded)
    for ex in with_source_docs(path):
        assert ex["docs"] == ex["source_docs"] and len(ex["docs"]) == 5
        assert ex["reference"] and ex["meta"]["type"] in ALCE_TYPES
    assert dataset_stats(loaded)["n_with_source_docs"] == 30
