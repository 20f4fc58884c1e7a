"""Preference data of public formats: response pairs for DPO, document preferences for a
reranker.

pair (BackTracking: `instruction`, `chosen_output`, `rejected_output`, `source`; one file
per step, `...step<K>...`):

    {id, prompt: str, chosen: str, rejected: str,
     meta: {chat_template_applied: true, source?, step?}}

  TRL's standard (not conversational) format. BackTracking's `instruction` already holds
  the chat-templated text, so `prompt` is that text and `meta.chat_template_applied`
  says so: training uses it as is, with no second chat template (a conversational
  record holds message lists instead).

document preference (DPA-RAG reranker data: `query`, `classification`, `rank_list`,
`positive`, `negative`; documents as ` Title: <title> Content: <text>` strings):

    {id, query, positive: [passage], negative: [passage],
     classification: {doc: passage, label: int, relevant: bool}, rank_list: [passage]}

  with passage = `{title, text}`. `positive` documents helped the model answer and
  `negative` ones misled it; `classification` is one labelled document (DPA-RAG's label
  1: relevant, 2: not); `rank_list` the documents ranked for the query, in order.

`load_pairs(path, fmt)` reads either (`fmt`: one of PAIR_FORMATS) from JSONL or a JSON
array; problems are RecordErrors at `path:line:` (or `path: element N:`) naming the
record and the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragtrain.data.loaders import Where, convert_records, default_id

_STEP = re.compile(r"step[_-]?(\d+)", re.IGNORECASE)
# ` Title: X Content: Y`, DPA-RAG's one-string documents.
_TITLED = re.compile(r"\s*Title:\s*(.*?)\s+Content:\s*(.*)", re.DOTALL)


def file_step(path: str | Path) -> int | None:
    """The step a BackTracking file holds, from its name (`step2.jsonl`, `train_step_3`)."""
    match = _STEP.search(Path(path).stem)
    return int(match.group(1)) if match else None


def _text(record: dict, field: str, at: Where, rid: str) -> str:
    value = at.require(record, field, str, rid)
    if not value.strip():
        raise at.error(f"record {rid!r} has an empty {field!r}")
    return value


def _from_backtracking(record: dict, at: Where) -> dict[str, Any]:
    rid = default_id(record, at)
    meta: dict[str, Any] = {"chat_template_applied": True}
    if record.get("source") is not None:
        meta["source"] = at.require(record, "source", str, rid)
    step = file_step(at.path)
    if step is not None:
        meta["step"] = step
    return {
        "id": rid,
        "prompt": _text(record, "instruction", at, rid),
        "chosen": _text(record, "chosen_output", at, rid),
        "rejected": _text(record, "rejected_output", at, rid),
        "meta": meta,
    }


def _passage(doc: Any, field: str, at: Where, rid: str) -> dict[str, str]:
    if not isinstance(doc, str):
        raise at.error(f"record {rid!r}: {field} should be str, got {type(doc).__name__}")
    match = _TITLED.fullmatch(doc)
    if match:
        return {"title": match.group(1), "text": match.group(2).strip()}
    return {"title": "", "text": doc.strip()}


def _passages(record: dict, field: str, at: Where, rid: str) -> list[dict[str, str]]:
    docs = at.require(record, field, list, rid)
    return [_passage(doc, f"{field}[{i}]", at, rid) for i, doc in enumerate(docs)]


def _from_dpa_rag(record: dict, at: Where) -> dict[str, Any]:
    rid = default_id(record, at)
    query = _text(record, "query", at, rid)
    labelled = at.require(record, "classification", dict, rid)
    if "text" not in labelled:
        raise at.error(f"record {rid!r}: classification has no field 'text'")
    label = labelled.get("label")
    if label not in (1, 2):
        raise at.error(f"record {rid!r}: classification.label should be 1 or 2, got {label!r}")
    rank_list = _passages(record, "rank_list", at, rid)
    seen: set[tuple[str, str]] = set()
    for i, doc in enumerate(rank_list):
        key = (doc["title"], doc["text"])
        if key in seen:
            raise at.error(
                f"record {rid!r}: rank_list[{i}] names a document already ranked above it"
                " (a ranking lists each document once)"
            )
        seen.add(key)
    return {
        "id": rid,
        "query": query,
        "positive": _passages(record, "positive", at, rid),
        "negative": _passages(record, "negative", at, rid),
        "classification": {
            "doc": _passage(labelled["text"], "classification.text", at, rid),
            "label": label,
            "relevant": label == 1,
        },
        "rank_list": rank_list,
    }


PAIR_LOADERS: dict[str, Callable[[dict, Where], dict[str, Any]]] = {
    "backtracking": _from_backtracking,
    "dpa_rag": _from_dpa_rag,
}
PAIR_FORMATS = ("auto", *PAIR_LOADERS)
_DETECT = (("chosen_output", "backtracking"), ("rank_list", "dpa_rag"))


def detect_pair_format(record: dict, at: Where) -> str:
    for key, fmt in _DETECT:
        if key in record:
            return fmt
    expected = ", ".join(f"{key!r} ({fmt})" for key, fmt in _DETECT)
    raise at.error(
        f"cannot detect the preference format from keys {sorted(record)};"
        f" expected one of {expected}"
    )


def load_pairs(path: str | Path, fmt: str = "auto") -> list[dict[str, Any]]:
    """Read a preference file in one of PAIR_FORMATS: response pairs (backtracking) or
    document preferences (dpa_rag), in the shapes above."""
    if fmt not in PAIR_FORMATS:
        raise ValueError(
            f"unknown preference format {fmt!r}; known formats: {', '.join(PAIR_FORMATS)}"
        )
    return convert_records(path, PAIR_LOADERS.get(fmt), PAIR_LOADERS, detect_pair_format, "record")
