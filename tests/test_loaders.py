"""Loading public corpus, QA and preference formats into the workflow's record shapes."""

import argparse
import copy
import json
import re

import pytest
import yaml

from ragtrain.core.records import RecordError, read_jsonl, write_jsonl
from ragtrain.data.loaders import (
    CORPUS_FORMATS,
    LOADERS,
    QA_FORMATS,
    load_beir_corpus,
    load_corpus,
    load_dataset,
    load_qa,
    with_source_docs,
)
from ragtrain.data.preferences import PAIR_FORMATS, load_pairs
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "formats"


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
    docs = [{"id": "p1", "title": "Kesh", "text": "Kesh is a village.", "score": 1.5}]
    record = {
        "id": "syn-1",
        "question": "what is kesh",
        "answers": ["a village"],
        "docs": docs,
        "gold_doc_ids": ["p1"],
        "claims": ["Kesh is a village."],
        "reference": "Kesh is a village in Ireland.",
        "meta": {"generator": "template"},
    }
    unanswerable = {"id": "syn-2", "question": "what is kosh", "answers": []}
    path = write_lines(tmp_path / "synthetic.jsonl", [record, unanswerable])
    # The documents the file carries are its own: kept as passages for retrieval `source`.
    own = [{"id": "p1", "title": "Kesh", "text": "Kesh is a village."}]
    assert load_qa(path, "ragtrain") == [
        {**record, "source_docs": own},
        {**unanswerable, "docs": []},
    ]


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
    assert set(LOADERS) == {"nq_open", "flashrag", "ragtrain", "kilt", "alce"}
    assert QA_FORMATS == ("auto", "nq_open", "flashrag", "ragtrain", "kilt", "alce")
    assert CORPUS_FORMATS == ("auto", "beir", "flashrag")
    assert PAIR_FORMATS == ("auto", "backtracking", "dpa_rag")


def test_missing_file(tmp_path):
    with pytest.raises(RecordError, match="file not found"):
        load_qa(tmp_path / "absent.jsonl", "nq_open")


# --- fixtures: one small file per public format ----------------------------------------


def located(error: RecordError, path, where: str) -> bool:
    """A one-line error at `path:line:` or `path: element N:`."""
    message = str(error)
    return "\n" not in message and message.startswith(f"{path}{where}")


def fixture_copy(tmp_path, name: str, edit) -> object:
    """A copy of a fixture with `edit(records)` applied (JSON arrays stay arrays)."""
    source = FIXTURES / name
    if name.endswith(".json"):
        records = json.loads(source.read_text(encoding="utf-8"))
        edit(records)
        path = tmp_path / name
        path.write_text(json.dumps(records, indent=1), encoding="utf-8")
        return path
    records = read_jsonl(source)
    edit(records)
    return write_lines(tmp_path / name, records)


LAKE = "Lake Orrin is a glacial lake fed by three streams."


def test_beir_corpus_fixture():
    assert load_corpus(FIXTURES / "corpus_beir.jsonl", "beir") == [
        {"id": "b1", "title": "Lake Orrin", "text": LAKE},
        {"id": "b2", "title": "", "text": "A passage without a title."},
    ]


FLASHRAG_PASSAGES = [
    {"id": "0", "title": "Lake Orrin", "text": LAKE},
    {
        "id": "1",
        # One pair of quotes is stripped: the title's own quotes stay.
        "title": '"Quoted" Harbour',
        "text": "The harbour's name carries quotes of its own.\nIts second line stays in the text.",
    },
    {"id": "2", "title": "", "text": "One line only, so no title."},
]


@pytest.mark.parametrize("fmt", ["flashrag", "auto"])
def test_flashrag_corpus(fmt):
    assert load_corpus(FIXTURES / "corpus_flashrag.jsonl", fmt) == FLASHRAG_PASSAGES


def test_auto_corpus_detects_beir():
    path = FIXTURES / "corpus_beir.jsonl"
    assert load_corpus(path, "auto") == load_corpus(path, "beir")


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"path": "x", "format": "flashrag"}, FLASHRAG_PASSAGES),
        ({"path": "x", "format": "auto"}, FLASHRAG_PASSAGES),
    ],
)
def test_corpus_stage_reads_the_format_key(tmp_path, params, expected):
    from ragtrain.stages.data import cmd_corpus

    out = tmp_path / "corpus.jsonl"
    args = argparse.Namespace(
        params=params, input=str(FIXTURES / "corpus_flashrag.jsonl"), output=str(out)
    )
    cmd_corpus(args)
    assert read_jsonl(out) == expected


def test_corpus_stage_default_is_beir(tmp_path):
    from ragtrain.stages.data import cmd_corpus

    args = argparse.Namespace(
        params={}, input=str(FIXTURES / "corpus_flashrag.jsonl"), output=str(tmp_path / "c")
    )
    with pytest.raises(RecordError, match=r"record '0' has no field 'text'"):
        cmd_corpus(args)


def test_flashrag_corpus_errors(tmp_path):
    def drop(records):
        del records[1]["contents"]

    path = fixture_copy(tmp_path, "corpus_flashrag.jsonl", drop)
    with pytest.raises(RecordError, match=r"record '1' has no field 'contents'") as e:
        load_corpus(path, "flashrag")
    assert located(e.value, path, ":2:")
    path = write_lines(tmp_path / "odd.jsonl", [{"doc": "x"}])
    with pytest.raises(RecordError, match=r"cannot detect the corpus format.*'contents'") as e:
        load_corpus(path, "auto")
    assert located(e.value, path, ":1:")
    with pytest.raises(ValueError, match="unknown corpus format 'tsv'"):
        load_corpus(path, "tsv")


def test_corpus_format_enum_matches_the_loader():
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    props = schema["properties"]
    assert props["corpora"]["additionalProperties"]["properties"]["format"]["enum"] == list(
        CORPUS_FORMATS
    )
    qa = props["datasets"]["additionalProperties"]["properties"]["format"]["enum"]
    assert set(qa) == set(QA_FORMATS)


def test_nq_open_and_flashrag_fixtures():
    assert load_qa(FIXTURES / "qa_nq_open.jsonl") == [
        {
            "id": "qa_nq_open-0",
            "question": "how many streams feed lake orrin",
            "answers": ["three", "3"],
            "docs": [],
        },
        {
            "id": "qa_nq_open-1",
            "question": "what kind of lake is lake orrin",
            "answers": ["glacial"],
            "docs": [],
        },
    ]
    flashrag = load_qa(FIXTURES / "qa_flashrag.jsonl")
    assert [ex["answers"] for ex in flashrag] == [["three", "3"], ["glacial"]]
    assert flashrag[0]["meta"] == {"source": "invented"}


def test_kilt_fixture():
    examples = load_qa(FIXTURES / "qa_kilt.jsonl", "kilt")
    assert load_qa(FIXTURES / "qa_kilt.jsonl") == examples  # detected
    first, second = examples
    assert first["id"] == "k1"
    assert first["question"] == "how many streams feed lake orrin"
    # Answers of every output, once each; outputs with provenance only add no answer.
    assert first["answers"] == ["three", "3"]
    assert first["docs"] == []
    # Provenance points into KILT's Wikipedia, not at corpus passages: meta, not gold ids.
    assert [p["wikipedia_id"] for p in first["meta"]["provenance"]] == ["5001", "5002"]
    assert "gold_doc_ids" not in first
    assert "source_docs" not in first
    assert second == {
        "id": "k2",
        "question": "what kind of lake is lake orrin",
        "answers": ["glacial"],
        "docs": [],
    }


def test_ra_dit_retrieved_support_is_kept_as_source_docs():
    (example,) = load_qa(FIXTURES / "qa_radit_tasks.jsonl")
    assert example["answers"] == ["three"]
    assert example["source_docs"] == [
        {"id": "p7", "title": "Lake Orrin", "text": LAKE},
        {"id": "r1-1", "title": "Orrin Valley", "text": "The valley lies south of the lake."},
    ]
    assert example["docs"] == []


def test_a_dataset_keeps_the_first_source_docs_as_the_paper_keeps_four():
    (whole,) = load_dataset(FIXTURES / "qa_radit_tasks.jsonl", {"format": "kilt"})
    (first,) = load_dataset(FIXTURES / "qa_radit_tasks.jsonl", {"format": "kilt", "source_docs": 1})
    assert len(whole["source_docs"]) == 2
    assert first["source_docs"] == whole["source_docs"][:1]


def test_alce_asqa_fixture():
    (example,) = load_qa(FIXTURES / "qa_alce_asqa.json", "alce")
    assert example["id"] == "-801"
    # Answers: the union of the short answers; the pairs are kept for per-pair scoring.
    assert example["answers"] == ["1871", "1958", "in 1958"]
    assert [p["short_answers"] for p in example["qa_pairs"]] == [["1871"], ["1958", "in 1958"]]
    assert example["source_docs"] == [
        {
            "id": "4410",
            "title": "Orrin Bridge",
            "text": "A timber bridge crossed the river from 1871.",
        },
        {
            "id": "4411",
            "title": "Orrin Bridge",
            "text": "The present concrete span opened in 1958.",
        },
    ]
    assert example["reference"].startswith("The first bridge was built in 1871 [1]")
    assert example["meta"]["task"] == "asqa"
    assert example["meta"]["long_answer"].startswith("The first Orrin bridge")
    assert example["docs"] == []


def test_alce_qampari_fixture():
    (example,) = load_qa(FIXTURES / "qa_alce_qampari.json")
    assert example["answers"] == ["Alder Brook", "Alder", "Bell Run", "Cold Creek"]
    assert example["answer_groups"] == [["Alder Brook", "Alder"], ["Bell Run"], ["Cold Creek"]]
    assert example["meta"] == {"task": "qampari"}
    assert example["source_docs"][0]["id"] == "77"


def test_alce_eli5_fixture_stays_answerable():
    (example,) = load_qa(FIXTURES / "qa_alce_eli5.json")
    assert example["id"] == "qa_alce_eli5-0"  # no id in the file: name and position
    claims = [
        "Water is densest at about four degrees Celsius.",
        "Colder water floats above denser water.",
    ]
    assert example["claims"] == claims
    # No short answers: the claims stand in, and say so; [] would mean unanswerable.
    assert example["answers"] == claims
    assert example["meta"]["answers_from"] == "claims"
    assert example["meta"]["task"] == "eli5"
    assert example["source_docs"] == [
        {
            "id": "qa_alce_eli5-0-0",
            "title": "Freezing lakes",
            "text": "Lakes freeze from the surface down because ice floats.",
        }
    ]


def test_alce_records_in_jsonl_are_detected(tmp_path):
    records = json.loads((FIXTURES / "qa_alce_qampari.json").read_text())
    path = write_lines(tmp_path / "qampari.jsonl", records)
    assert load_qa(path) == load_qa(FIXTURES / "qa_alce_qampari.json")


def _set(index, field, value):
    def edit(records):
        records[index][field] = value

    return edit


def _drop(index, field):
    def edit(records):
        del records[index][field]

    return edit


def _nested(index, keys, value):
    def edit(records):
        target = records[index]
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("name", "fmt", "edit", "where", "message"),
    [
        ("qa_kilt.jsonl", "kilt", _drop(1, "input"), ":2:", r"record 'k2' has no field 'input'"),
        ("qa_kilt.jsonl", "kilt", _drop(0, "output"), ":1:", r"record 'k1' has no field 'output'"),
        (
            "qa_kilt.jsonl",
            "kilt",
            _nested(1, ["output", 0, "answer"], ["glacial"]),
            ":2:",
            r"record 'k2': output\[0\]\.answer should be str",
        ),
        (
            "qa_kilt.jsonl",
            "kilt",
            _set(1, "output", [{"provenance": []}]),
            ":2:",
            r"record 'k2': no output\[\]\.answer",
        ),
        (
            "qa_radit_tasks.jsonl",
            "kilt",
            _nested(0, ["retrieved_support", 1], {"title": "Orrin Valley"}),
            ":1:",
            r"record 'r1': retrieved_support\[1\] has no field 'text'",
        ),
        (
            "qa_alce_asqa.json",
            "alce",
            _drop(0, "question"),
            ": element 0:",
            r"record has no field 'question'",
        ),
        (
            "qa_alce_asqa.json",
            "alce",
            _nested(0, ["qa_pairs", 1], {"question": "q"}),
            ": element 0:",
            r"record '-801': qa_pairs\[1\] has no field 'short_answers'",
        ),
        (
            "qa_alce_asqa.json",
            "alce",
            _nested(0, ["docs", 0, "title"], 3),
            ": element 0:",
            r"record '-801': docs\[0\]\.title should be str",
        ),
        (
            "qa_alce_asqa.json",
            "alce",
            _set(0, "output", ["a"]),
            ": element 0:",
            r"record '-801': field 'output' should be str",
        ),
        (
            "qa_alce_qampari.json",
            "alce",
            _nested(0, ["answers", 1], ["Bell Run", 7]),
            ": element 0:",
            r"record 'q1__wikidata_comp': answers\[1\]\[1\] should be str",
        ),
        (
            "qa_alce_eli5.json",
            "alce",
            _set(0, "claims", "one claim"),
            ": element 0:",
            r"record 'qa_alce_eli5-0': field 'claims' should be list",
        ),
        (
            "qa_alce_eli5.json",
            "alce",
            _drop(0, "claims"),
            ": element 0:",
            r"none of 'qa_pairs' \(ASQA\), 'answers' \(QAMPARI\), 'claims' \(ELI5\)",
        ),
        (
            "qa_alce_eli5.json",
            "alce",
            _set(0, "claims", []),
            ": element 0:",
            r"claims is empty",
        ),
        (
            "qa_flashrag.jsonl",
            "flashrag",
            _set(1, "golden_answers", "glacial"),
            ":2:",
            r"record 'test_1': field 'golden_answers' should be list",
        ),
        (
            "qa_nq_open.jsonl",
            "nq_open",
            _drop(1, "answer"),
            ":2:",
            r"no field 'answer'",
        ),
    ],
)
def test_a_bad_field_is_one_located_line(tmp_path, name, fmt, edit, where, message):
    path = fixture_copy(tmp_path, name, edit)
    with pytest.raises(RecordError, match=message) as e:
        load_qa(path, fmt)
    assert located(e.value, path, where)


def test_json_array_errors(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"question": "q",\n "claims": [}]', encoding="utf-8")
    with pytest.raises(RecordError, match="invalid JSON") as e:
        load_qa(path, "alce")
    assert located(e.value, path, ":2:")
    path.write_text('[{"question": "q", "claims": ["c"]}, 3]', encoding="utf-8")
    with pytest.raises(RecordError, match="expected a JSON object, got int") as e:
        load_qa(path, "alce")
    assert located(e.value, path, ": element 1:")
    path.write_text(
        '[{"id": "a", "question": "q", "claims": ["c"]}, {"id": "a", "question": "r",'
        ' "claims": ["d"]}]',
        encoding="utf-8",
    )
    with pytest.raises(RecordError, match=r"duplicate example id 'a' \(first on element 0\)") as e:
        load_qa(path, "alce")
    assert located(e.value, path, ": element 1:")


# --- a dataset's own documents: retrieval `source` -------------------------------------


def test_dataset_keeps_its_own_documents(tmp_path):
    examples = load_dataset(FIXTURES / "qa_alce_asqa.json", {"format": "auto"})
    assert examples[0]["docs"] == []
    assert [d["id"] for d in examples[0]["source_docs"]] == ["4410", "4411"]
    path = tmp_path / "examples.jsonl"
    write_jsonl(path, examples)
    (given,) = with_source_docs(path)
    assert given["docs"] == examples[0]["source_docs"]


def test_own_shape_documents_become_source_docs_but_not_a_worlds(tmp_path):
    doc = {"id": "p1", "title": "Kesh", "text": "Kesh is a village.", "score": 2.0}
    record = {"id": "q", "question": "q?", "answers": ["a"], "docs": [doc], "meta": {"split": "t"}}
    path = write_lines(tmp_path / "own.jsonl", [record])
    (example,) = load_dataset(path, {"format": "ragtrain"})
    assert example["docs"] == []
    assert example["source_docs"] == [{"id": "p1", "title": "Kesh", "text": "Kesh is a village."}]
    (question,) = load_dataset(path, {"world": "w", "split": "t"})
    assert question["docs"] == []
    assert "source_docs" not in question


def test_source_retrieval_needs_own_documents(tmp_path):
    path = tmp_path / "examples.jsonl"
    write_jsonl(path, load_dataset(FIXTURES / "qa_kilt.jsonl", {"format": "kilt"}))
    with pytest.raises(RecordError, match=r"record 'k1' has no field 'source_docs'") as e:
        with_source_docs(path)
    assert located(e.value, path, ":1:")


BASE = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def _config_with_asqa():
    cfg = copy.deepcopy(BASE)
    cfg["datasets"]["asqa"] = {"path": str(FIXTURES / "qa_alce_asqa.json"), "format": "alce"}
    return cfg


def test_config_source_retrieval_in_evaluate_and_self_demos():
    from ragtrain.graph.config import prepare
    from ragtrain.graph.kinds import SOURCE_RETRIEVAL

    cfg = _config_with_asqa()
    cfg["evaluate"] = [{"models": ["base"], "datasets": ["asqa"], "retrieval": ["source", "none"]}]
    demos = next(n for n, p in cfg["products"].items() if p.get("kind") == "self_demos")
    cfg["products"][demos].update(dataset="asqa", retrieval=SOURCE_RETRIEVAL)
    prepared = prepare(cfg)
    prompts = {e["retrieval"]: e["prompt"] for e in prepared["evaluations"]}
    assert prompts == {"source": "rag", "none": "closed_book"}
    assert prepared["products"][demos]["prompt"] == "rag"


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        (
            lambda cfg: cfg.update(
                evaluate=[{"models": ["base"], "datasets": ["test"], "retrieval": ["source"]}]
            ),
            "evaluate[0].retrieval",
            "is a world's question split: it has no documents of its own",
        ),
        (
            lambda cfg: cfg["retrievers"].update(source=cfg["retrievers"]["bm25"]),
            "retrievers.source",
            "is a retrieval setting",
        ),
    ],
)
def test_config_source_retrieval_errors(change, key, message):
    from ragtrain.graph.config import ConfigError, prepare

    cfg = _config_with_asqa()
    change(cfg)
    with pytest.raises(ConfigError, match=re.escape(key)) as e:
        prepare(cfg)
    assert message in str(e.value)


# --- preference data --------------------------------------------------------------------


def test_backtracking_pairs_fixture():
    path = FIXTURES / "pairs_backtracking_step2.jsonl"
    pairs = load_pairs(path, "backtracking")
    assert load_pairs(path) == pairs  # detected
    first = pairs[0]
    assert first["id"] == "pairs_backtracking_step2-0"
    # The instruction is already chat-templated text: a str prompt, and the record says so.
    assert first["prompt"].startswith("<|im_start|>user\nDocument [1]")
    assert first["chosen"] == "Three streams feed Lake Orrin."
    assert first["rejected"] == "Lake Orrin has no inflow."
    assert first["meta"] == {"chat_template_applied": True, "source": "invented", "step": 2}
    assert set(first) == {"id", "prompt", "chosen", "rejected", "meta"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _drop(1, "chosen_output"),
            r"record 'pairs_backtracking_step2-1' has no field 'chosen_output'",
        ),
        (_set(1, "rejected_output", ["x"]), r"field 'rejected_output' should be str"),
        (_set(1, "instruction", " "), r"has an empty 'instruction'"),
    ],
)
def test_backtracking_errors(tmp_path, edit, message):
    path = fixture_copy(tmp_path, "pairs_backtracking_step2.jsonl", edit)
    with pytest.raises(RecordError, match=message) as e:
        load_pairs(path, "backtracking")
    assert located(e.value, path, ":2:")


def test_dpa_rag_fixture():
    (record,) = load_pairs(FIXTURES / "pairs_dpa_rag.jsonl")
    lake = {"title": "Lake Orrin", "text": "Lake Orrin is fed by three streams."}
    valley = {"title": "Orrin Valley", "text": "The valley lies south of the lake."}
    assert record == {
        "id": "pairs_dpa_rag-0",
        "query": "how many streams feed lake orrin",
        "positive": [lake],
        "negative": [valley, {"title": "", "text": "An untitled note about rivers."}],
        "classification": {"doc": lake, "label": 1, "relevant": True},
        "rank_list": [lake, valley],
    }


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_drop(0, "positive"), r"record 'pairs_dpa_rag-0' has no field 'positive'"),
        (_nested(0, ["classification", "label"], 0), r"classification\.label should be 1 or 2"),
        (_nested(0, ["rank_list", 1], {"text": "x"}), r"rank_list\[1\] should be str"),
        (_set(0, "classification", "doc"), r"field 'classification' should be dict"),
    ],
)
def test_dpa_rag_errors(tmp_path, edit, message):
    path = fixture_copy(tmp_path, "pairs_dpa_rag.jsonl", edit)
    with pytest.raises(RecordError, match=message) as e:
        load_pairs(path, "dpa_rag")
    assert located(e.value, path, ":1:")


def test_unknown_pair_format(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [{"prompt": "p"}])
    with pytest.raises(RecordError, match="cannot detect the preference format"):
        load_pairs(path)
    with pytest.raises(ValueError, match="unknown preference format 'kto'"):
        load_pairs(path, "kto")


def test_dpo_rows_of_chat_templated_pairs_are_plain_text(tmp_path):
    """TRL applies no chat template to a str prompt: the rows keep the text as is."""
    from ragtrain.training.sft_dpo import _dataset

    pairs = load_pairs(FIXTURES / "pairs_backtracking_step2.jsonl")
    path = tmp_path / "train.jsonl"
    write_jsonl(path, pairs)
    rows = _dataset(path, "dpo").to_list()
    assert rows == [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs]
    assert all(isinstance(row["prompt"], str) for row in rows)


def test_dpo_rows_refuse_unmarked_text_and_mixed_formats(tmp_path):
    from ragtrain.training.sft_dpo import _rows

    text = {"id": "t", "prompt": "q", "chosen": "a", "rejected": "b"}
    path = write_lines(tmp_path / "unmarked.jsonl", [text])
    with pytest.raises(RecordError, match=r"meta\.chat_template_applied' must be true") as e:
        _rows(path, "dpo")
    assert located(e.value, path, ":1:")
    chat = {
        "id": "c",
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
    marked = {**text, "meta": {"chat_template_applied": True}}
    path = write_lines(tmp_path / "mixed.jsonl", [chat, marked])
    with pytest.raises(RecordError, match="holds plain text but line 1 holds message lists") as e:
        _rows(path, "dpo")
    assert located(e.value, path, ":2:")
    path = write_lines(tmp_path / "half.jsonl", [{**marked, "chosen": ["a"]}])
    with pytest.raises(RecordError, match=r"field 'chosen' should be str"):
        _rows(path, "dpo")
