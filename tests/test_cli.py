"""Stages run alone through `python -m ragtrain`: bad input gives `path:line: reason`, no output."""

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # every test runs stages in a subprocess


def ragtrain(*args):
    return subprocess.run(
        [sys.executable, "-m", "ragtrain", *args], capture_output=True, text=True, cwd=ROOT
    )


# Every stage of the command line, by family (ragtrain.stages): data, retrieval, models,
# LLM products, query products, evaluation, then the other families' (backtracking's).
STAGES = (
    "world",
    "task",
    "corpus",
    "dataset",
    "index",
    "retrieve",
    "train-retriever",
    "evaluate-retrieval",
    "base-model",
    "train",
    "train-reward-model",
    "train-rl",
    "export-gguf",
    "self-demos",
    "judge",
    "sft-data",
    "preference-pairs",
    "reward",
    "best-of-n",
    "segment-beam",
    "reference-sft",
    "pseudo-queries",
    "query-filter",
    "query-sft-data",
    "query-preferences",
    "evaluate",
    "report",
    "judge-relevance",
    "judge-evaluation",
    "prompt-search",
    "tournament",
    "doc-preferences",
    "query-augment",
    "pre-aligned-sft",
    "train-reranker",
    "rerank",
    "step-sft",
    "step-pairs",
    "pair-file",
    "pair-mix",
)


def test_help_lists_every_stage():
    proc = ragtrain("--help")
    assert proc.returncode == 0
    # The stage list: one stage a line, indented under `<stage>` (help text beside it,
    # or on the next lines, indented further).
    listed = re.findall(r"^    ([a-z][a-z-]*)(?:\s|$)", proc.stdout, flags=re.MULTILINE)
    assert sorted(listed) == sorted(STAGES)
    assert len(set(STAGES)) == len(STAGES)


def test_malformed_jsonl_line_stops_the_stage_without_output(tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "q1", "answer": ["a"]}\n{"question": "q2", "answer": \n')
    out, stats = tmp_path / "examples.jsonl", tmp_path / "stats.json"
    proc = ragtrain(
        "dataset",
        "--params",
        '{"path": "x", "format": "nq_open"}',
        "--input",
        str(data),
        "--output",
        str(out),
        "--stats",
        str(stats),
    )
    assert proc.returncode == 1
    assert f"{data}:2: invalid JSON" in proc.stderr
    assert not out.exists() and not stats.exists()
    assert list(tmp_path.iterdir()) == [data]


def test_record_without_question_names_field_and_record(tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text(
        '{"id": "a", "question": "q", "golden_answers": ["x"]}\n'
        '{"id": "b", "golden_answers": ["y"]}\n'
    )
    out = tmp_path / "examples.jsonl"
    proc = ragtrain(
        "dataset",
        "--params",
        '{"path": "x", "format": "flashrag"}',
        "--input",
        str(data),
        "--output",
        str(out),
        "--stats",
        str(tmp_path / "s.json"),
    )
    assert proc.returncode == 1
    assert f"{data}:2:" in proc.stderr and "'b'" in proc.stderr and "'question'" in proc.stderr
    assert not out.exists()


def test_world_then_dataset_split(tmp_path):
    params = json.dumps(
        {
            "people": 10,
            "organisations": 4,
            "places": 4,
            "distractors": 2,
            "questions": {"train": 6, "test": 4},
        }
    )
    files = {
        name: tmp_path / f"{name}.json{'l' if name != 'stats' else ''}"
        for name in ("corpus", "questions", "stats")
    }
    proc = ragtrain(
        "world", "--params", params, *[a for k, v in files.items() for a in (f"--{k}", str(v))]
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "test.jsonl"
    proc = ragtrain(
        "dataset",
        "--params",
        '{"world": "w", "split": "test"}',
        "--input",
        str(files["questions"]),
        "--output",
        str(out),
        "--stats",
        str(tmp_path / "test-stats.json"),
    )
    assert proc.returncode == 0, proc.stderr
    examples = [json.loads(line) for line in out.open()]
    assert len(examples) == 4
    assert all(ex["meta"]["split"] == "test" and ex["docs"] == [] for ex in examples)


def test_beir_corpus_stage(tmp_path):
    beir = tmp_path / "corpus.jsonl"
    beir.write_text(
        '{"_id": "d1", "title": "Kesh", "text": "Kesh is a town.", "metadata": {}}\n'
        '{"_id": 7, "text": "No title here."}\n'
    )
    out = tmp_path / "out.jsonl"
    proc = ragtrain(
        "corpus", "--params", '{"path": "x"}', "--input", str(beir), "--output", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line) for line in out.open()] == [
        {"id": "d1", "title": "Kesh", "text": "Kesh is a town."},
        {"id": "7", "title": "", "text": "No title here."},
    ]


def test_stages_alone_take_defaults(tmp_path):
    """world -> index -> dataset -> retrieve, by hand, with only the settings that have none."""
    w = {name: str(tmp_path / name) for name in ("corpus.jsonl", "q.jsonl", "w.json")}
    assert (
        ragtrain(
            "world",
            "--corpus",
            w["corpus.jsonl"],
            "--questions",
            w["q.jsonl"],
            "--stats",
            w["w.json"],
        ).returncode
        == 0
    )
    index = tmp_path / "index"
    proc = ragtrain(
        "index",
        "--params",
        '{"kind": "bm25"}',
        "--corpus",
        w["corpus.jsonl"],
        "--output",
        str(index),
    )
    assert proc.returncode == 0, proc.stderr
    data = tmp_path / "test.jsonl"
    assert (
        ragtrain(
            "dataset",
            "--params",
            '{"world": "w", "split": "test"}',
            "--input",
            w["q.jsonl"],
            "--output",
            str(data),
            "--stats",
            str(tmp_path / "s.json"),
        ).returncode
        == 0
    )
    out = tmp_path / "retrieved.jsonl"
    proc = ragtrain(
        "retrieve",
        "--index",
        str(index),
        "--examples",
        str(data),
        "--output",
        str(out),
        "--stats",
        str(tmp_path / "r.json"),
    )
    assert proc.returncode == 0, proc.stderr
    examples = [json.loads(line) for line in out.open()]
    assert len(examples) == 100 and all(len(ex["docs"]) == 3 for ex in examples)
    assert json.loads((tmp_path / "r.json").read_text())["answer_recall@3"] > 0.5


def test_bad_settings_give_one_line_not_a_traceback(tmp_path):
    files = [str(tmp_path / n) for n in ("c.jsonl", "q.jsonl", "s.json")]
    proc = ragtrain(
        "world",
        "--params",
        '{"people": 2, "questions": {"test": 500}}',
        "--corpus",
        files[0],
        "--questions",
        files[1],
        "--stats",
        files[2],
    )
    assert proc.returncode == 1
    assert "world too small" in proc.stderr and "Traceback" not in proc.stderr
    assert not any((tmp_path / n).exists() for n in ("c.jsonl", "q.jsonl", "s.json"))

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    proc = ragtrain("corpus", "--input", str(empty), "--output", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 1 and f"{empty}: no passages" in proc.stderr


def test_outputs_are_not_private(tmp_path):
    out = tmp_path / "c.jsonl"
    ragtrain(
        "world",
        "--corpus",
        str(out),
        "--questions",
        str(tmp_path / "q.jsonl"),
        "--stats",
        str(tmp_path / "s.json"),
    )
    assert out.stat().st_mode & 0o044  # readable by group/others under the usual umask


def _sample(id_, answers, texts):
    return {
        "id": id_,
        "question": "q?",
        "answers": answers,
        "prompt": [{"role": "user", "content": "q?"}],
        "samples": [{"text": t, "num_tokens": len(t.split())} for t in texts],
    }


def test_judge_then_products_through_the_cli(tmp_path):
    samples = tmp_path / "samples.jsonl"
    records = [_sample(f"q{i}", ["Paris"], ["Paris.", "London"]) for i in range(8)]
    records += [_sample("u0", [], ["Rome", "I don't know."])]
    samples.write_text("".join(json.dumps(r) + "\n" for r in records))
    judged, stats = tmp_path / "judged.jsonl", tmp_path / "judged.json"
    proc = ragtrain(
        "judge", "--input", str(samples), "--output", str(judged), "--stats", str(stats)
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(stats.read_text())["labels"] == {"correct": 8, "incorrect": 9, "refuse": 1}

    train, dev, pstats = tmp_path / "train.jsonl", tmp_path / "dev.jsonl", tmp_path / "p.json"
    proc = ragtrain(
        "preference-pairs",
        "--params",
        '{"dev_fraction": 0.25}',
        "--input",
        str(judged),
        "--train",
        str(train),
        "--dev",
        str(dev),
        "--stats",
        str(pstats),
    )
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(pstats.read_text())
    assert stats["n_train"] + stats["n_dev"] == 9 and stats["n_dev"] >= 1
    pairs = [json.loads(line) for line in train.open()] + [json.loads(line) for line in dev.open()]
    refusal = next(p for p in pairs if p["example_id"] == "u0")
    assert refusal["chosen"][0]["content"] == "I don't know."
    assert refusal["rejected"][0]["content"] == "Rome"


def test_products_refuse_unjudged_samples(tmp_path):
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps(_sample("q0", ["Paris"], ["Paris"])) + "\n")
    out = tmp_path / "train.jsonl"
    proc = ragtrain(
        "sft-data",
        "--input",
        str(samples),
        "--train",
        str(out),
        "--dev",
        str(tmp_path / "dev.jsonl"),
        "--stats",
        str(tmp_path / "s.json"),
    )
    assert proc.returncode == 1
    assert f"{samples}:1: a sample has no 'label': run the judge stage first" in proc.stderr
    assert not out.exists()


def test_judge_names_the_bad_record(tmp_path):
    samples = tmp_path / "samples.jsonl"
    good = _sample("q0", ["Paris"], ["Paris"])
    bad = {**_sample("q1", ["Paris"], []), "samples": [{"txt": "Paris"}]}
    samples.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    out = tmp_path / "judged.jsonl"
    proc = ragtrain(
        "judge", "--input", str(samples), "--output", str(out), "--stats", str(tmp_path / "s")
    )
    assert proc.returncode == 1
    assert f"{samples}:2: every sample needs a string field 'text'" in proc.stderr
    assert not out.exists()


def test_train_names_a_missing_file(tmp_path):
    proc = ragtrain(
        "train",
        "--params",
        '{"kind": "sft"}',
        "--init",
        str(tmp_path / "model"),
        "--train",
        str(tmp_path / "nope.jsonl"),
        "--work",
        str(tmp_path / "work"),
        "--output",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 1
    assert f"{tmp_path / 'nope.jsonl'}: file not found" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_task_from_a_beir_folder_names_the_bad_qrels_line(tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "x"}\n')
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "find x"}\n')
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\tone\n")
    out = tmp_path / "out"
    args = ["task", "--params", '{"splits": ["test"]}', "--folder", str(folder)]
    args += ["--corpus", str(folder / "corpus.jsonl"), "--queries", str(out / "queries.jsonl")]
    args += ["--qrels", str(out / "qrels"), "--stats", str(out / "stats.json")]
    proc = ragtrain(*args)
    assert proc.returncode == 1
    assert f"{folder / 'qrels' / 'test.tsv'}:2:" in proc.stderr
    assert not (out / "stats.json").exists()
    # Fixed, the task is written: queries, qrels in BEIR's layout and counts.
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    assert ragtrain(*args).returncode == 0
    assert (out / "qrels" / "test.tsv").read_text().splitlines()[1] == "q1\td1\t1"
    assert json.loads((out / "stats.json").read_text())["splits"]["test"]["queries"] == 1


def test_query_filter_names_a_query_without_doc_id(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "d1", "title": "", "text": "x"}\n')
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"id": "q1", "doc_id": "d1", "query": "x"}\n{"id": "q2", "query": "y"}\n')
    out = tmp_path / "kept.jsonl"
    proc = ragtrain(
        "query-filter", "--params", '{"filter": "bm25"}', "--input", str(queries),
        "--corpus", str(corpus), "--output", str(out), "--stats", str(tmp_path / "s.json"),
    )  # fmt: skip
    assert proc.returncode == 1
    assert f"{queries}:2:" in proc.stderr and "doc_id" in proc.stderr
    assert not out.exists()
