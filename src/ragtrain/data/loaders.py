"""Map public dataset formats onto the workflow's record shapes.

Passages become `{id, title, text}`, from a BEIR `corpus.jsonl` (`_id`, `title`, `text`),
our own `{id, title, text}`, or a FlashRAG corpus (`{id, contents}`: the first line of
`contents` is the title, without its surrounding double quotes, the rest the text).

QA examples become `{id, question, answers: [str], docs: [], meta?}` plus any of the
optional fields the source carries:

- `source_docs`: the dataset's own documents, `[{id, title, text}]` (KILT / RA-DIT
  `retrieved_support`, ALCE `docs`, our own `docs`). Retrieval `source` puts them in
  `docs`; any retriever, and `none`, ignores them.
- `gold_doc_ids`, `qa_pairs` (ASQA, kept as given), `claims` (ELI5),
  `answer_groups` (QAMPARI: one list of aliases per answer), `reference` (ALCE `output`:
  a teacher's answer).

An empty `answers` list marks an unanswerable question (whose right response is a
refusal), so no loader writes one for a question that has answers of another kind:
ELI5 has no short answers, and its `answers` are its claims (`meta.answers_from:
claims`), to be scored by entailment rather than string match.

Files are JSONL or, as ALCE ships them, one JSON array. Every problem is a RecordError
that names the record and the field, located at `path:line:` or, in a JSON array,
`path: element N:` (N counted from 0, as `jq '.[N]'` does).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtrain.core.records import RecordError, iter_jsonl, read_json, require

OPTIONAL_FIELDS = ("gold_doc_ids", "qa_pairs", "claims", "answer_groups", "reference")


# --- where a record is ----------------------------------------------------------------


@dataclass(frozen=True)
class Where:
    """A record's place in its file: a JSONL line, or an element of a JSON array."""

    path: str | Path
    line: int | None = None
    element: int | None = None

    @property
    def index(self) -> int:
        """Its position from 0 (blank JSONL lines count): the default ids' suffix."""
        return self.element if self.element is not None else (self.line or 1) - 1

    def __str__(self) -> str:
        return f"element {self.element}" if self.element is not None else f"line {self.line}"

    def error(self, reason: str) -> RecordError:
        if self.element is not None:
            return RecordError(self.path, None, f"element {self.element}: {reason}")
        return RecordError(self.path, self.line, reason)

    def require(
        self, record: dict, field: str, kind: type | tuple[type, ...], rid: str | None = None
    ) -> Any:
        """record[field], or an error naming the field and the record (by `rid`, its
        derived id, where the record has no `id` of its own)."""
        try:
            return require(record, field, kind, self.path, self.line)
        except RecordError as e:
            reason = e.reason
            if (
                rid is not None
                and reason.startswith(("record ", "record:"))
                and not reason.startswith("record '")
            ):
                reason = f"record {rid!r}{reason[len('record') :]}"
            raise self.error(reason) from None


def iter_records(path: str | Path) -> Iterator[tuple[Where, dict[str, Any]]]:
    """(place, record) for each record of a JSONL file or of a file holding one JSON
    array (told apart by the first character that is not white space)."""
    if _first_char(path) != "[":
        for lineno, record in iter_jsonl(path):
            yield Where(path, line=lineno), record
        return
    records = read_json(path)
    if not isinstance(records, list):
        raise RecordError(path, None, f"expected a JSON array, got {type(records).__name__}")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise Where(path, element=i).error(
                f"expected a JSON object, got {type(record).__name__}"
            )
        yield Where(path, element=i), record


def _first_char(path: str | Path) -> str:
    try:
        # (Sniffing only: the reader reports an encoding problem at its line.)
        with Path(path).open(encoding="utf-8-sig", errors="replace") as f:
            while chunk := f.read(4096):
                if stripped := chunk.lstrip():
                    return stripped[0]
    except FileNotFoundError:
        raise RecordError(path, None, "file not found") from None
    return ""


def _who(rid: str | None) -> str:
    return f"record {rid!r}" if rid is not None else "record"


def _record_id(record: dict, field: str, at: Where) -> str:
    # Some exports write numeric ids; the workflow joins on strings.
    rid = str(at.require(record, field, (str, int)))
    if not rid.strip():
        raise at.error(f"record has an empty {field!r}")
    return rid


def convert_records(
    path: str | Path,
    convert: Callable[[dict, Where], dict[str, Any]] | None,
    converters: dict[str, Callable[[dict, Where], dict[str, Any]]],
    detect: Callable[[dict, Where], str],
    kind: str,
) -> list[dict[str, Any]]:
    """Every record of a file through `convert`, or, where it is None, through the
    converter of the format `detect` names from the first record; ids unique."""
    records = []
    seen: dict[str, Where] = {}
    for at, record in iter_records(path):
        if convert is None:
            convert = converters[detect(record, at)]
        converted = convert(record, at)
        check_unique(converted["id"], seen, at, kind)
        records.append(converted)
    return records


def check_unique(rid: str, seen: dict[str, Where], at: Where, kind: str) -> None:
    if rid in seen:
        raise at.error(f"duplicate {kind} id {rid!r} (first on {seen[rid]})")
    seen[rid] = at


def _strings(value: Any, field: str, rid: str | None, at: Where) -> list[str]:
    """A list of str, or an error naming the field and the element."""
    if not isinstance(value, list):
        raise at.error(f"{_who(rid)}: field {field!r} should be list, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise at.error(f"{_who(rid)}: {field}[{i}] should be str, got {type(item).__name__}")
    return list(value)


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _gold(values: list[str], field: str, rid: str | None, at: Where) -> list[str]:
    """Gold answers, none of them empty: an empty answer is never matched (an
    unanswerable question has no answers at all, `[]`)."""
    for i, value in enumerate(values):
        if not value.strip():
            raise at.error(
                f"{_who(rid)}: {field}[{i}] is an empty answer, which nothing can match"
                " (an unanswerable question has an empty list)"
            )
    return values


def _passages(value: Any, field: str, rid: str, at: Where) -> list[dict[str, str]]:
    """A record's own documents as passages `{id, title, text}`; a document without an id
    gets `<record id>-<position>`."""
    if not isinstance(value, list):
        raise at.error(
            f"record {rid!r}: field {field!r} should be list, got {type(value).__name__}"
        )
    passages = []
    for i, doc in enumerate(value):
        name = f"{field}[{i}]"
        if not isinstance(doc, dict):
            raise at.error(f"record {rid!r}: {name} should be an object, got {type(doc).__name__}")
        if not isinstance(doc.get("text"), str):
            got = "no field 'text'" if "text" not in doc else "a 'text' that is not str"
            raise at.error(f"record {rid!r}: {name} has {got}")
        title = doc.get("title") or ""
        if not isinstance(title, str):
            raise at.error(f"record {rid!r}: {name}.title should be str")
        did = doc.get("id")
        if did is None:
            did = f"{rid}-{i}"
        elif not isinstance(did, (str, int)):
            raise at.error(f"record {rid!r}: {name}.id should be str or int")
        passages.append({"id": str(did), "title": title, "text": doc["text"]})
    return passages


# --- corpora ---------------------------------------------------------------------------


def _beir_passage(record: dict, at: Where) -> dict[str, str]:
    if "_id" not in record and "id" not in record:
        raise at.error("record has no field '_id' (BEIR) or 'id'")
    pid = _record_id(record, "_id" if "_id" in record else "id", at)
    text = at.require(record, "text", str)
    # BEIR leaves title empty or out for corpora without titles.
    title = record.get("title") or ""
    if not isinstance(title, str):
        raise at.error(f"passage {pid!r}: field 'title' should be str")
    return _passage(pid, title, text, at)


def _passage(pid: str, title: str, text: str, at: Where) -> dict[str, str]:
    """A passage with a title or a text (BEIR leaves some texts empty): one with
    neither is an error, as nothing could retrieve it or read anything in it."""
    if not title.strip() and not text.strip():
        raise at.error(f"passage {pid!r} is empty (no title, no text)")
    return {"id": pid, "title": title, "text": text}


def _flashrag_passage(record: dict, at: Where) -> dict[str, str]:
    pid = _record_id(record, "id", at)
    contents = at.require(record, "contents", str)
    first, newline, rest = contents.partition("\n")
    if not newline:
        # One line: no title line, all text.
        return _passage(pid, "", contents, at)
    title = first.strip()
    # One pair of surrounding quotes: a title that itself starts with a quote keeps it.
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1]
    return _passage(pid, title, rest, at)


CORPUS_LOADERS: dict[str, Callable[[dict, Where], dict[str, str]]] = {
    "beir": _beir_passage,
    "flashrag": _flashrag_passage,
}
CORPUS_FORMATS = ("auto", *CORPUS_LOADERS)


def detect_corpus_format(record: dict, at: Where) -> str:
    """A corpus's format, judged from its first record's keys."""
    if "contents" in record:
        return "flashrag"
    if "_id" in record or "text" in record:
        return "beir"
    raise at.error(
        f"cannot detect the corpus format from keys {sorted(record)}; expected 'contents'"
        " (flashrag) or '_id' / 'text' (beir, or our own {id, title, text})"
    )


def _check_corpus_format(fmt: str) -> None:
    if fmt not in CORPUS_FORMATS:
        raise ValueError(
            f"unknown corpus format {fmt!r}; known formats: {', '.join(CORPUS_FORMATS)}"
        )


def iter_corpus(path: str | Path, fmt: str = "beir") -> Iterator[tuple[Where, dict[str, str]]]:
    """(place, passage `{id, title, text}`) for each record of a corpus, as a stream (ids
    are not checked for duplicates here: `write_corpus` does, without holding them)."""
    _check_corpus_format(fmt)
    convert = CORPUS_LOADERS.get(fmt)
    for at, record in iter_records(path):
        if convert is None:
            convert = CORPUS_LOADERS[detect_corpus_format(record, at)]
        yield at, convert(record, at)


def write_corpus(path: str | Path, fmt: str, output: str | Path) -> int:
    """Stream a corpus in one of CORPUS_FORMATS into `output` (passages JSONL) and its
    offsets and id tables (ragtrain.data.passages); return the passage count. A duplicate
    id or an empty corpus is a RecordError at `path`, and nothing is written."""
    from ragtrain.data.passages import DuplicateId, write_passages

    def passages() -> Iterator[dict[str, str]]:
        n = 0
        for _, passage in iter_corpus(path, fmt):
            n += 1
            yield passage
        if not n:
            raise RecordError(path, None, "no passages: the corpus is empty")

    try:
        return write_passages(output, passages())
    except DuplicateId as e:
        # Read again to name the input's lines: an error path, the ids are not kept.
        places = {}
        for row, (at, _) in enumerate(iter_corpus(path, fmt)):
            if row in (e.first, e.second):
                places[row] = at
            if len(places) == 2:
                break
        raise places[e.second].error(
            f"duplicate passage id {e.pid!r} (first on {places[e.first]})"
        ) from None


def load_corpus(path: str | Path, fmt: str = "beir") -> list[dict[str, Any]]:
    """Read a corpus in one of CORPUS_FORMATS into passages `{id, title, text}`.
    `beir` also reads our own `{id, title, text}`. (A list in memory: the corpus stage
    streams instead, `write_corpus`.)"""
    _check_corpus_format(fmt)
    passages = convert_records(
        path, CORPUS_LOADERS.get(fmt), CORPUS_LOADERS, detect_corpus_format, "passage"
    )
    if not passages:
        raise RecordError(path, None, "no passages: the corpus is empty")
    return passages


def load_beir_corpus(path: str | Path) -> list[dict[str, Any]]:
    """Read a BEIR `corpus.jsonl` (`_id`, `title`, `text`) or our own `{id, title, text}`."""
    return load_corpus(path, "beir")


# --- QA examples -----------------------------------------------------------------------


def _question(record: dict, at: Where, field: str = "question") -> str:
    question = at.require(record, field, str)
    if not question.strip():
        raise at.error(f"record {record.get('id')!r} has an empty {field!r}")
    return question


def _answers(record: dict, field: str, at: Where, wrap_str: bool = False) -> list[str]:
    kinds = (list, str) if wrap_str else list
    answers = at.require(record, field, kinds)
    if isinstance(answers, str):
        return _gold([answers], field, record.get("id"), at)
    return _gold(_strings(answers, field, record.get("id"), at), field, record.get("id"), at)


def _example(record: dict, rid: str, question: str, answers: list[str]) -> dict[str, Any]:
    example: dict[str, Any] = {"id": rid, "question": question, "answers": answers, "docs": []}
    example.update({k: record[k] for k in OPTIONAL_FIELDS if k in record})
    return example


def default_id(record: dict, at: Where, *fields: str) -> str:
    # NQ-open and some ALCE files carry no ids: derive a stable one from the file name
    # and the record's position.
    for field in (*fields, "id"):
        if field in record:
            return _record_id(record, field, at)
    return f"{Path(at.path).stem}-{at.index}"


def _meta(record: dict, field: str, at: Where) -> dict:
    if record.get(field) is None:
        return {}
    return dict(at.require(record, field, dict))


def _from_nq_open(record: dict, at: Where) -> dict[str, Any]:
    rid = default_id(record, at)
    question = _question(record, at)
    return _example(record, rid, question, _answers(record, "answer", at, wrap_str=True))


def _from_flashrag(record: dict, at: Where) -> dict[str, Any]:
    rid = default_id(record, at)
    question = _question(record, at)
    example = _example(record, rid, question, _answers(record, "golden_answers", at))
    if "metadata" in record:
        example["meta"] = at.require(record, "metadata", dict)
    return example


def _from_world(record: dict, at: Where) -> dict[str, Any]:
    # A world's questions: our own shape (validate the required fields, keep everything
    # else as is); the documents a question came from are not its to give.
    example = dict(record)
    example["id"] = _record_id(record, "id", at)
    example["question"] = _question(record, at)
    example["answers"] = _answers(record, "answers", at)
    example["docs"] = at.require(record, "docs", list) if "docs" in record else []
    if "meta" in record:
        at.require(record, "meta", dict)
    return example


def _from_ragtrain(record: dict, at: Where) -> dict[str, Any]:
    # Our own shape; the documents a file carries are its own (`source_docs`, unless it
    # names them).
    example = _from_world(record, at)
    rid = example["id"]
    if "source_docs" in record:
        example["source_docs"] = _passages(record["source_docs"], "source_docs", rid, at)
    elif example["docs"]:
        example["source_docs"] = _passages(example["docs"], "docs", rid, at)
    return example


def _from_kilt(record: dict, at: Where) -> dict[str, Any]:
    """KILT (`id`, `input`, `output[].answer`, `output[].provenance`), and RA-DIT's KILT
    tasks with `retrieved_support` (passages with `title`, `text`)."""
    rid = _record_id(record, "id", at)
    question = _question(record, at, "input")
    outputs = at.require(record, "output", list)
    answers: list[str] = []
    provenance: list[dict] = []
    for i, output in enumerate(outputs):
        if not isinstance(output, dict):
            raise at.error(
                f"record {rid!r}: output[{i}] should be an object, got {type(output).__name__}"
            )
        if "answer" in output:
            if not isinstance(output["answer"], str):
                raise at.error(f"record {rid!r}: output[{i}].answer should be str")
            answers += _gold([output["answer"]], f"output[{i}].answer", rid, at)
        for j, source in enumerate(output.get("provenance") or []):
            if not isinstance(source, dict):
                raise at.error(f"record {rid!r}: output[{i}].provenance[{j}] should be an object")
            provenance.append(source)
    if not answers:
        # Provenance-only outputs: an empty list would mark the question unanswerable.
        raise at.error(f"record {rid!r}: no output[].answer (outputs hold only provenance)")
    example: dict[str, Any] = {
        "id": rid,
        "question": question,
        "answers": _unique(answers),
        "docs": [],
    }
    if "retrieved_support" in record:
        example["source_docs"] = _passages(
            record["retrieved_support"], "retrieved_support", rid, at
        )
    # Provenance names pages and paragraphs of KILT's Wikipedia, not passage ids of the
    # corpus retrieved from: kept in meta, not as gold_doc_ids (which retrieval compares
    # with passage ids).
    meta = _meta(record, "meta", at)
    if provenance:
        meta["provenance"] = provenance
    if meta:
        example["meta"] = meta
    return example


def _from_alce(record: dict, at: Where) -> dict[str, Any]:
    """ALCE: ASQA (`qa_pairs[].short_answers`), QAMPARI (`answers`: alias lists), ELI5
    (`claims`); `docs` with `title` / `text`; `output` (a teacher's answer) kept as
    `reference`, the long-form `answer` in meta."""
    rid = default_id(record, at, "sample_id")
    question = _question(record, at)
    meta: dict[str, Any] = {}
    example: dict[str, Any] = {"id": rid, "question": question, "answers": [], "docs": []}
    if "qa_pairs" in record:
        meta["task"] = "asqa"
        qa_pairs = at.require(record, "qa_pairs", list, rid)
        answers = []
        for i, pair in enumerate(qa_pairs):
            if not isinstance(pair, dict) or "short_answers" not in pair:
                raise at.error(f"record {rid!r}: qa_pairs[{i}] has no field 'short_answers'")
            field = f"qa_pairs[{i}].short_answers"
            answers += _gold(_strings(pair["short_answers"], field, rid, at), field, rid, at)
        example["answers"] = _unique(answers)
        example["qa_pairs"] = qa_pairs
    elif "answers" in record:
        meta["task"] = "qampari"
        groups = []
        for i, group in enumerate(at.require(record, "answers", list, rid)):
            # An answer is a list of its aliases (a bare str is one alias).
            aliases = (
                [group] if isinstance(group, str) else _strings(group, f"answers[{i}]", rid, at)
            )
            groups.append(_gold(aliases, f"answers[{i}]", rid, at))
        example["answers"] = _unique([alias for group in groups for alias in group])
        example["answer_groups"] = groups
    elif "claims" in record:
        meta["task"] = "eli5"
        claims = _gold(_strings(record["claims"], "claims", rid, at), "claims", rid, at)
        # No short answers: the claims stand in (an empty list means unanswerable).
        example["answers"] = _unique(claims)
        example["claims"] = claims
        meta["answers_from"] = "claims"
    else:
        raise at.error(
            f"record {rid!r} has none of 'qa_pairs' (ASQA), 'answers' (QAMPARI), 'claims' (ELI5)"
        )
    if not example["answers"]:
        field = {"asqa": "qa_pairs[].short_answers", "qampari": "answers", "eli5": "claims"}
        raise at.error(f"record {rid!r}: {field[meta['task']]} is empty (no answer)")
    if "docs" in record:
        example["source_docs"] = _passages(record["docs"], "docs", rid, at)
    if "output" in record:
        example["reference"] = at.require(record, "output", str, rid)
    if isinstance(record.get("answer"), str):
        meta["long_answer"] = record["answer"]
    example["meta"] = meta
    return example


LOADERS: dict[str, Callable[[dict, Where], dict[str, Any]]] = {
    "nq_open": _from_nq_open,
    "flashrag": _from_flashrag,
    "ragtrain": _from_ragtrain,
    "kilt": _from_kilt,
    "alce": _from_alce,
}
QA_FORMATS = ("auto", *LOADERS)

# Checked in this order: the keys that identify each format.
_DETECT = (
    ("golden_answers", "flashrag"),
    ("input", "kilt"),
    ("qa_pairs", "alce"),
    ("claims", "alce"),
    ("answers", "ragtrain"),
    ("answer", "nq_open"),
)


def detect_format(record: dict, at: Where) -> str:
    """The QA format of a file, judged from its first record's keys."""
    answers = record.get("answers")
    if isinstance(answers, list) and answers and isinstance(answers[0], list):
        return "alce"  # QAMPARI: a list of alias lists
    for key, fmt in _DETECT:
        if key in record:
            return fmt
    expected = ", ".join(f"{key!r} ({fmt})" for key, fmt in _DETECT)
    raise at.error(
        f"cannot detect the QA format from keys {sorted(record)}; expected one of {expected}"
    )


def load_qa(path: str | Path, fmt: str = "auto") -> list[dict[str, Any]]:
    """Read a QA file in one of QA_FORMATS into example records."""
    if fmt not in QA_FORMATS:
        raise ValueError(f"unknown QA format {fmt!r}; known formats: {', '.join(QA_FORMATS)}")
    return convert_records(path, LOADERS.get(fmt), LOADERS, detect_format, "example")


def load_dataset(path: str | Path, params: dict) -> list[dict[str, Any]]:
    """The QA examples a dataset node names, without documents: the questions of a world's
    `split` (a node with `world`), else a QA file in `format`; the first `limit` if set.
    The documents a file carries stay in `source_docs` (retrieval `source`), the first
    `source_docs` of them if set."""
    if params.get("world"):
        examples = [
            ex
            for ex in convert_records(path, _from_world, LOADERS, detect_format, "example")
            if ex["meta"].get("split") == params["split"]
        ]
    else:
        examples = load_qa(path, params.get("format", "auto"))
    if params.get("limit"):
        examples = examples[: params["limit"]]
    if params.get("source_docs"):
        # The first N of the file's own documents (its retriever's top N).
        examples = [
            {**ex, "source_docs": ex["source_docs"][: params["source_docs"]]}
            if "source_docs" in ex
            else ex
            for ex in examples
        ]
    if not examples:
        raise RecordError(path, None, "no examples (check the split or the file)")
    # Retrieval attaches documents later: a dataset starts closed-book.
    return [{**ex, "docs": []} for ex in examples]


def with_source_docs(path: str | Path) -> list[dict[str, Any]]:
    """The examples of a dataset's `examples.jsonl` with their own documents
    (`source_docs`) as `docs`: what retrieval `source` gives."""
    examples = []
    for lineno, example in iter_jsonl(path):
        if "source_docs" not in example:
            raise RecordError(
                path,
                lineno,
                f"{_who(example.get('id'))} has no field 'source_docs': its dataset has no"
                " documents of its own, which retrieval 'source' needs (formats that carry"
                " them: kilt with retrieved_support, alce docs, ragtrain docs)",
            )
        examples.append({**example, "docs": example["source_docs"]})
    return examples


def dataset_stats(examples: list[dict]) -> dict:
    """A dataset's counts: answerable and unanswerable examples, and question types."""
    types = Counter(ex.get("meta", {}).get("type", "unknown") for ex in examples)
    answerable = sum(1 for ex in examples if ex["answers"])
    stats = {
        "n": len(examples),
        "n_answerable": answerable,
        "n_unanswerable": len(examples) - answerable,
        "types": dict(sorted(types.items())),
    }
    with_docs = sum(1 for ex in examples if "source_docs" in ex)
    if with_docs:
        stats["n_with_source_docs"] = with_docs
    return stats
