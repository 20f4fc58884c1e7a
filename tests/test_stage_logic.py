"""What the stages used to do inline, now domain functions: called on plain records and
files, with no subprocess and no model."""

from __future__ import annotations

import json

import pytest

from ragtrain.core.records import RecordError, read_jsonl
from ragtrain.data.beir import gold_queries, read_query_records
from ragtrain.data.loaders import dataset_stats, load_dataset
from ragtrain.data.prompts import PromptTemplate
from ragtrain.generation.judge import prompt_records
from ragtrain.generation.shards import generate_in_shards
from ragtrain.training.rewards import score_samples
from tests.conftest import ROOT

RAG_PROMPT = ROOT / "resources" / "prompts" / "rag.jinja"


def write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def question(id_, answers, split=None, type_=None):
    meta = {k: v for k, v in (("split", split), ("type", type_)) if v}
    return {"id": id_, "question": f"{id_}?", "answers": answers, "meta": meta}


def test_a_world_dataset_is_its_split_cut_to_limit_and_closed_book(tmp_path):
    path = write_lines(
        tmp_path / "questions.jsonl",
        [
            question("a", ["x"], "train", "single"),
            {**question("b", [], "test", "single"), "docs": [{"id": "d"}]},
            question("c", ["y"], "test", "multihop"),
            question("d", ["z"], "test", "single"),
        ],
    )
    examples = load_dataset(path, {"world": "w", "split": "test", "limit": 2})
    assert [ex["id"] for ex in examples] == ["b", "c"]
    assert all(ex["docs"] == [] for ex in examples)
    assert dataset_stats(examples) == {
        "n": 2,
        "n_answerable": 1,
        "n_unanswerable": 1,
        "types": {"multihop": 1, "single": 1},
    }
    with pytest.raises(RecordError, match="no examples"):
        load_dataset(path, {"world": "w", "split": "dev"})


def test_gold_queries_are_the_positive_judgements_of_a_split(tmp_path):
    queries = write_lines(
        tmp_path / "queries.jsonl",
        [{"id": "q1", "query": "one"}, {"id": "q2", "query": "two"}],
    )
    qrels = tmp_path / "qrels"
    qrels.mkdir()
    (qrels / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq2\td3\t1\nq2\td4\t0\n"
    )
    assert gold_queries(queries, qrels) == [
        {"id": "q1", "doc_id": "d1", "query": "one"},
        # A query judging several passages: one record each, the passage in its id.
        {"id": "q2:d2", "doc_id": "d2", "query": "two"},
        {"id": "q2:d3", "doc_id": "d3", "query": "two"},
    ]  # d4 is judged not relevant (0): no record
    with pytest.raises(RecordError, match="the task has no dev qrels"):
        gold_queries(queries, qrels, "dev")


def test_query_records_name_the_line_without_a_field(tmp_path):
    path = write_lines(
        tmp_path / "q.jsonl",
        [{"id": "q1", "doc_id": "d1", "query": "x", "kept": True}, {"id": "q2", "query": "y"}],
    )
    with pytest.raises(RecordError, match=rf"^{path}:2:.*doc_id"):
        read_query_records(path)
    write_lines(path, [{"id": "q1", "doc_id": "d1", "query": "x", "kept": True}])
    assert read_query_records(path) == [{"id": "q1", "doc_id": "d1", "query": "x", "kept": True}]


def test_prompt_records_hold_out_a_seeded_dev_share(tmp_path):
    path = write_lines(tmp_path / "ex.jsonl", [question(f"q{i}", ["a"]) for i in range(20)])
    template = PromptTemplate(RAG_PROMPT)
    train, dev = prompt_records(path, template, 0.25, seed=3)
    assert len(dev) == 5 and len(train) == 15
    assert {r["id"] for r in train} | {r["id"] for r in dev} == {f"q{i}" for i in range(20)}
    assert train[0]["prompt"] == template.conversation(train[0])
    assert prompt_records(path, template, 0.25, seed=3) == (train, dev)
    assert {r["id"] for r in prompt_records(path, template, 0.25, seed=4)[1]} != {
        r["id"] for r in dev
    }
    write_lines(path, [{"id": "q0", "question": "q?"}])
    with pytest.raises(RecordError, match=rf"^{path}:1:.*answers"):
        prompt_records(path, template, 0.25, seed=3)


class LengthScorer:
    """A stand-in reward model: a response's score is its length."""

    def score(self, conversations, responses):
        assert len(conversations) == len(responses)
        return [float(len(r)) for r in responses]


def test_score_samples_scores_every_sample_in_place():
    prompt = [{"role": "user", "content": "q?"}]
    records = [
        {"prompt": prompt, "samples": [{"text": "ab"}, {"text": "abcd"}]},
        {"prompt": prompt, "samples": [{"text": "abc"}]},
        {"prompt": prompt, "samples": []},
    ]
    stats = score_samples(records, LengthScorer(), "in.jsonl", "rm")
    assert [[s["reward_model"] for s in r["samples"]] for r in records] == [[2, 4], [3], []]
    assert stats == {
        "n_examples": 3,
        "n_samples": 3,
        "reward_model": "rm",
        "mean_reward": 3.0,
        "mean_best_reward": 3.5,
    }
    with pytest.raises(RecordError, match=r"^in.jsonl:2: no field 'samples'"):
        score_samples([records[0], {"prompt": prompt}], LengthScorer(), "in.jsonl")


def test_generate_in_shards_writes_output_then_stats_and_drops_its_work(tmp_path):
    seen = {}

    def generate(items, load_generator, template, params, work):
        # The work folder exists while generating; no model is loaded unless asked.
        seen["work"] = work
        assert work.is_dir() and isinstance(template, PromptTemplate)
        return [{**item, "samples": []} for item in items], {"n": len(items)}

    params = {"n": 1, "generation": {"backend": "hf"}}
    out, stats = tmp_path / "out.jsonl", tmp_path / "stats.json"
    result = generate_in_shards(
        generate, [{"id": "a"}, {"id": "b"}], tmp_path / "no-model", RAG_PROMPT, params,
        tmp_path / "work", [RAG_PROMPT], out, stats,
    )  # fmt: skip
    assert result == {"n": 2} == json.loads(stats.read_text())
    assert read_jsonl(out) == [{"id": "a", "samples": []}, {"id": "b", "samples": []}]
    assert not seen["work"].exists()
