"""Invariants of the fictional-world generator (ragtrain.data.world)."""

from dataclasses import replace

import pytest

from ragtrain.core.records import read_json, read_jsonl
from ragtrain.data.world import World, WorldConfig, generate_world, write_world

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
