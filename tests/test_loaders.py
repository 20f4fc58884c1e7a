"""Loading public corpus and QA formats into the workflow's record shapes."""

import json

import pytest

from ragtrain.core.records import RecordError
from ragtrain.data.loaders import LOADERS, QA_FORMATS, load_beir_corpus, load_qa


def write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# --- BEIR corpus -------------------------------------------------------------


def test_beir_corpus_with_and_without_title(tmp_path):
    path = write_lines(
        tmp_path / "corpus.jsonl",
        [
            {"_id": "d1", "title": "Kesh", "text": "Kesh is a village.", "metadata": {"x": 1}},
            {"_id": "d2", "text": "No title here."},
            {"_id": "d3", "title": "", "text": "Empty title."},
            {"_id": "d4", "title": None, "text": "Null title."},
        ],
    )
    assert load_beir_corpus(path) == [
        {"id": "d1", "title": "Kesh", "text": "Kesh is a village."},
        {"id": "d2", "title": "", "text": "No title here."},
        {"id": "d3", "title": "", "text": "Empty title."},
        {"id": "d4", "title": "", "text": "Null title."},
    ]


def test_corpus_in_our_own_shape(tmp_path):
    path = write_lines(tmp_path / "passages.jsonl", [{"id": "p1", "title": "T", "text": "x"}])
    assert load_beir_corpus(path) == [{"id": "p1", "title": "T", "text": "x"}]


def test_corpus_missing_id(tmp_path):
    path = write_lines(tmp_path / "corpus.jsonl", [{"_id": "d1", "text": "a"}, {"text": "b"}])
    with pytest.raises(RecordError, match=r"'_id'") as e:
        load_beir_corpus(path)
    assert str(e.value).startswith(f"{path}:2:")


def test_corpus_missing_text(tmp_path):
    path = write_lines(tmp_path / "corpus.jsonl", [{"_id": "d1", "title": "t"}])
    with pytest.raises(RecordError, match=r"record 'd1' has no field 'text'") as e:
        load_beir_corpus(path)
    assert str(e.value).startswith(f"{path}:1:")


def test_corpus_duplicate_id(tmp_path):
    path = write_lines(
        tmp_path / "corpus.jsonl",
        [{"_id": "d1", "text": "a"}, {"_id": "d2", "text": "b"}, {"_id": "d1", "text": "c"}],
    )
    with pytest.raises(RecordError, match=r"duplicate passage id 'd1' \(first on line 1\)") as e:
        load_beir_corpus(path)
    assert str(e.value).startswith(f"{path}:3:")


def test_corpus_malformed_json(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": \n', encoding="utf-8")
    with pytest.raises(RecordError) as e:
        load_beir_corpus(path)
    assert str(e.value).startswith(f"{path}:2:")


# --- QA formats --------------------------------------------------------------


def test_nq_open(tmp_path):
    path = write_lines(
        tmp_path / "nq-test.jsonl",
        [
            {"question": "where is kesh", "answer": ["Ireland", "County Fermanagh"]},
            {"question": "when did it open", "answer": "1962"},
            {"id": "custom", "question": "who knows", "answer": []},
        ],
    )
    assert load_qa(path, "nq_open") == [
        {
            "id": "nq-test-0",
            "question": "where is kesh",
            "answers": ["Ireland", "County Fermanagh"],
            "docs": [],
        },
        {"id": "nq-test-1", "question": "when did it open", "answers": ["1962"], "docs": []},
        {"id": "custom", "question": "who knows", "answers": [], "docs": []},
    ]


def test_flashrag(tmp_path):
    path = write_lines(
        tmp_path / "test.jsonl",
        [
            {
                "id": "test_0",
                "question": "who wrote it",
                "golden_answers": ["Joyce", "James Joyce"],
                "metadata": {"source": "nq"},
            },
            {"id": "test_1", "question": "what year", "golden_answers": ["1922"]},
        ],
    )
    assert load_qa(path, "flashrag") == [
        {
            "id": "test_0",
            "question": "who wrote it",
            "answers": ["Joyce", "James Joyce"],
            "docs": [],
            "meta": {"source": "nq"},
        },
        {"id": "test_1", "question": "what year", "answers": ["1922"], "docs": []},
    ]


def test_flashrag_keeps_optional_fields(tmp_path):
    qa_pairs = [{"question": "q?", "short_answers": ["a"]}]
    path = write_lines(
        tmp_path / "asqa.jsonl",
        [{"id": "a1", "question": "q", "golden_answers": ["a"], "qa_pairs": qa_pairs}],
    )
    assert load_qa(path, "flashrag")[0]["qa_pairs"] == qa_pairs


def test_ragtrain_passes_through(tmp_path):
    record = {
        "id": "syn-1",
        "question": "what is kesh",
        "answers": ["a village"],
        "docs": [{"id": "p1", "title": "Kesh", "text": "Kesh is a village."}],
        "gold_doc_ids": ["p1"],
        "claims": ["Kesh is a village."],
        "reference": "Kesh is a village in Ireland.",
        "meta": {"generator": "template"},
    }
    unanswerable = {"id": "syn-2", "question": "what is kosh", "answers": []}
    path = write_lines(tmp_path / "synthetic.jsonl", [record, unanswerable])
    assert load_qa(path, "ragtrain") == [record, {**unanswerable, "docs": []}]


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"id": "f", "question": "q", "golden_answers": ["a"]}, "flashrag"),
        ({"question": "q", "answer": ["a"]}, "nq_open"),
        ({"id": "r", "question": "q", "answers": ["a"]}, "ragtrain"),
    ],
)
def test_auto_detection(tmp_path, record, expected):
    path = write_lines(tmp_path / "data.jsonl", [record])
    assert load_qa(path, "auto") == load_qa(path, expected)
    assert load_qa(path) == load_qa(path, expected)


def test_auto_detection_unknown_keys(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", [{"query": "q", "label": "a"}])
    with pytest.raises(RecordError) as e:
        load_qa(path, "auto")
    message = str(e.value)
    assert message.startswith(f"{path}:1:")
    for key in ("golden_answers", "answers", "answer"):
        assert repr(key) in message


def test_auto_detection_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    assert load_qa(path) == []


def test_malformed_json_line(tmp_path):
    path = tmp_path / "nq.jsonl"
    path.write_text('{"question": "q", "answer": ["a"]}\n{"question": "q2", \n', encoding="utf-8")
    with pytest.raises(RecordError) as e:
        load_qa(path, "nq_open")
    assert str(e.value).startswith(f"{path}:2:")


def test_missing_question_names_field_and_record(tmp_path):
    path = write_lines(
        tmp_path / "fr.jsonl",
        [
            {"id": "ok", "question": "q", "golden_answers": ["a"]},
            {"id": "bad-7", "golden_answers": ["a"]},
        ],
    )
    with pytest.raises(RecordError, match=r"record 'bad-7' has no field 'question'") as e:
        load_qa(path, "flashrag")
    assert str(e.value).startswith(f"{path}:2:")


def test_missing_question_without_id_names_line(tmp_path):
    path = write_lines(tmp_path / "nq.jsonl", [{"answer": ["a"]}])
    with pytest.raises(RecordError, match=r"no field 'question'") as e:
        load_qa(path, "nq_open")
    assert str(e.value).startswith(f"{path}:1:")


@pytest.mark.parametrize(
    ("fmt", "record", "field"),
    [
        ("nq_open", {"question": "q"}, "answer"),
        ("flashrag", {"id": "x", "question": "q"}, "golden_answers"),
        ("ragtrain", {"id": "x", "question": "q"}, "answers"),
    ],
)
def test_missing_answers_field(tmp_path, fmt, record, field):
    path = write_lines(tmp_path / "data.jsonl", [record])
    with pytest.raises(RecordError, match=rf"no field '{field}'") as e:
        load_qa(path, fmt)
    assert str(e.value).startswith(f"{path}:1:")


@pytest.mark.parametrize(
    ("fmt", "record"),
    [
        ("flashrag", {"id": "x", "question": "q", "golden_answers": "a"}),
        ("ragtrain", {"id": "x", "question": "q", "answers": "a"}),
        ("nq_open", {"question": "q", "answer": ["a", 3]}),
        ("ragtrain", {"id": "x", "question": "q", "answers": [None]}),
    ],
)
def test_answers_must_be_a_list_of_strings(tmp_path, fmt, record):
    path = write_lines(tmp_path / "data.jsonl", [record])
    with pytest.raises(RecordError, match="should be"):
        load_qa(path, fmt)


def test_ragtrain_requires_id(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", [{"question": "q", "answers": ["a"]}])
    with pytest.raises(RecordError, match=r"no field 'id'"):
        load_qa(path, "ragtrain")


def test_empty_question_is_rejected(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", [{"id": "x", "question": " ", "answers": []}])
    with pytest.raises(RecordError, match=r"record 'x' has an empty 'question'"):
        load_qa(path, "ragtrain")


def test_duplicate_example_id(tmp_path):
    path = write_lines(
        tmp_path / "data.jsonl",
        [
            {"id": "q1", "question": "a", "answers": ["x"]},
            {"id": "q1", "question": "b", "answers": ["y"]},
        ],
    )
    with pytest.raises(RecordError, match=r"duplicate example id 'q1' \(first on line 1\)") as e:
        load_qa(path, "ragtrain")
    assert str(e.value).startswith(f"{path}:2:")


def test_unknown_format(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", [{"question": "q", "answer": ["a"]}])
    with pytest.raises(ValueError, match="unknown QA format 'squad'") as e:
        load_qa(path, "squad")
    for fmt in ("auto", "nq_open", "flashrag", "ragtrain"):
        assert fmt in str(e.value)


def test_format_constants():
    assert set(LOADERS) == {"nq_open", "flashrag", "ragtrain"}
    assert QA_FORMATS == ("auto", "nq_open", "flashrag", "ragtrain")


def test_missing_file(tmp_path):
    with pytest.raises(RecordError, match="file not found"):
        load_qa(tmp_path / "absent.jsonl", "nq_open")
