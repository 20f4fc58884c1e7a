"""Map public dataset formats onto the workflow's record shapes.

Passages become `{id, title, text}`; QA examples become
`{id, question, answers: [str], docs: [], meta?}` plus any of the optional fields
`gold_doc_ids`, `qa_pairs`, `claims`, `reference` the source carries. An empty
`answers` list marks an unanswerable question. Every problem is reported as a
RecordError located at `path:line:` and naming the record and field.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragtrain.core.records import RecordError, iter_jsonl, require

OPTIONAL_FIELDS = ("gold_doc_ids", "qa_pairs", "claims", "reference")


def load_beir_corpus(path: str | Path) -> list[dict[str, Any]]:
    """Read a BEIR `corpus.jsonl` (`_id`, `title`, `text`) or our own `{id, title, text}`."""
    passages = []
    seen: dict[str, int] = {}
    for lineno, record in iter_jsonl(path):
        if "_id" not in record and "id" not in record:
            raise RecordError(path, lineno, "record has no field '_id' (BEIR) or 'id'")
        pid = _record_id(record, "_id" if "_id" in record else "id", path, lineno)
        _check_unique(pid, seen, path, lineno, "passage")
        text = require(record, "text", str, path, lineno)
        # BEIR leaves title empty or out for corpora without titles.
        title = record.get("title") or ""
        if not isinstance(title, str):
            raise RecordError(path, lineno, f"passage {pid!r}: field 'title' should be str")
        passages.append({"id": pid, "title": title, "text": text})
    if not passages:
        raise RecordError(path, None, "no passages: the corpus is empty")
    return passages


def _record_id(record: dict, field: str, path, lineno: int) -> str:
    # Some exports write numeric ids; the workflow joins on strings.
    rid = str(require(record, field, (str, int), path, lineno))
    if not rid.strip():
        raise RecordError(path, lineno, f"record has an empty {field!r}")
    return rid


def _check_unique(rid: str, seen: dict[str, int], path, lineno: int, kind: str) -> None:
    if rid in seen:
        raise RecordError(path, lineno, f"duplicate {kind} id {rid!r} (first on line {seen[rid]})")
    seen[rid] = lineno


def _question(record: dict, path, lineno: int) -> str:
    question = require(record, "question", str, path, lineno)
    if not question.strip():
        raise RecordError(path, lineno, f"record {record.get('id')!r} has an empty 'question'")
    return question


def _answers(record: dict, field: str, path, lineno: int, wrap_str: bool = False) -> list[str]:
    kinds = (list, str) if wrap_str else list
    answers = require(record, field, kinds, path, lineno)
    if isinstance(answers, str):
        return [answers]
    for i, answer in enumerate(answers):
        if not isinstance(answer, str):
            raise RecordError(
                path,
                lineno,
                f"record {record.get('id')!r}: {field}[{i}] should be str, "
                f"got {type(answer).__name__}",
            )
    return list(answers)


def _example(record: dict, rid: str, question: str, answers: list[str]) -> dict[str, Any]:
    example: dict[str, Any] = {"id": rid, "question": question, "answers": answers, "docs": []}
    example.update({k: record[k] for k in OPTIONAL_FIELDS if k in record})
    return example


def _default_id(record: dict, path, lineno: int) -> str:
    # NQ-open files carry no ids: derive a stable one from the file name and line.
    if "id" in record:
        return _record_id(record, "id", path, lineno)
    return f"{Path(path).stem}-{lineno - 1}"


def _from_nq_open(record: dict, path, lineno: int) -> dict[str, Any]:
    rid = _default_id(record, path, lineno)
    question = _question(record, path, lineno)
    return _example(record, rid, question, _answers(record, "answer", path, lineno, wrap_str=True))


def _from_flashrag(record: dict, path, lineno: int) -> dict[str, Any]:
    rid = _default_id(record, path, lineno)
    question = _question(record, path, lineno)
    example = _example(record, rid, question, _answers(record, "golden_answers", path, lineno))
    if "metadata" in record:
        example["meta"] = require(record, "metadata", dict, path, lineno)
    return example


def _from_ragtrain(record: dict, path, lineno: int) -> dict[str, Any]:
    # Our own shape: validate the required fields and keep everything else as is.
    example = dict(record)
    example["id"] = _record_id(record, "id", path, lineno)
    example["question"] = _question(record, path, lineno)
    example["answers"] = _answers(record, "answers", path, lineno)
    example["docs"] = require(record, "docs", list, path, lineno) if "docs" in record else []
    if "meta" in record:
        require(record, "meta", dict, path, lineno)
    return example


LOADERS: dict[str, Callable[[dict, Any, int], dict[str, Any]]] = {
    "nq_open": _from_nq_open,
    "flashrag": _from_flashrag,
    "ragtrain": _from_ragtrain,
}
QA_FORMATS = ("auto", *LOADERS)

# Checked in this order: the answers field that identifies each format.
_DETECT = (("golden_answers", "flashrag"), ("answers", "ragtrain"), ("answer", "nq_open"))


def detect_format(record: dict, path, lineno: int) -> str:
    """The QA format of a file, judged from its first record's keys."""
    for key, fmt in _DETECT:
        if key in record:
            return fmt
    expected = ", ".join(f"{key!r} ({fmt})" for key, fmt in _DETECT)
    raise RecordError(
        path,
        lineno,
        f"cannot detect the QA format from keys {sorted(record)}; expected one of {expected}",
    )


def load_qa(path: str | Path, fmt: str = "auto") -> list[dict[str, Any]]:
    """Read a QA file in one of QA_FORMATS into example records."""
    if fmt not in QA_FORMATS:
        raise ValueError(f"unknown QA format {fmt!r}; known formats: {', '.join(QA_FORMATS)}")
    convert = LOADERS.get(fmt)
    examples = []
    seen: dict[str, int] = {}
    for lineno, record in iter_jsonl(path):
        if convert is None:
            convert = LOADERS[detect_format(record, path, lineno)]
        example = convert(record, path, lineno)
        _check_unique(example["id"], seen, path, lineno, "example")
        examples.append(example)
    return examples


def load_dataset(path: str | Path, params: dict) -> list[dict[str, Any]]:
    """The QA examples a dataset node names, without documents: the questions of a world's
    `split` (a node with `world`), else a QA file in `format`; the first `limit` if set."""
    if params.get("world"):
        examples = [
            ex for ex in load_qa(path, "ragtrain") if ex["meta"].get("split") == params["split"]
        ]
    else:
        examples = load_qa(path, params.get("format", "auto"))
    if params.get("limit"):
        examples = examples[: params["limit"]]
    if not examples:
        raise RecordError(path, None, "no examples (check the split or the file)")
    # Retrieval attaches documents later: a dataset starts closed-book.
    return [{**ex, "docs": []} for ex in examples]


def dataset_stats(examples: list[dict]) -> dict:
    """A dataset's counts: answerable and unanswerable examples, and question types."""
    types = Counter(ex.get("meta", {}).get("type", "unknown") for ex in examples)
    answerable = sum(1 for ex in examples if ex["answers"])
    return {
        "n": len(examples),
        "n_answerable": answerable,
        "n_unanswerable": len(examples) - answerable,
        "types": dict(sorted(types.items())),
    }
