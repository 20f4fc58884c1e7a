"""Stages run alone through `python -m ragtrain`: bad input gives `path:line: reason`, no output."""

import json
import subprocess
import sys

from tests.conftest import ROOT


def ragtrain(*args):
    return subprocess.run(
        [sys.executable, "-m", "ragtrain", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_help_lists_every_stage():
    proc = ragtrain("--help")
    assert proc.returncode == 0
    for stage in (
        "world",
        "corpus",
        "dataset",
        "index",
        "retrieve",
        "base-model",
        "evaluate",
        "report",
    ):
        assert stage in proc.stdout


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
