"""Reading and writing the workflow's JSONL records.

Every stage goes through this module so that bad input is reported the same way
(`path:line: what is wrong`) and no output is ever left half-written: files are
written to a temporary sibling and renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()


class RecordError(ValueError):
    """Bad input, located: the message starts with `path:line:`."""

    def __init__(self, path: str | Path, line: int | None, reason: str):
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")


# Byte-order marks of the encodings that are not UTF-8 (a UTF-8 one is read and dropped).
_OTHER_BOMS = {b"\xff\xfe": "UTF-16 (little-endian)", b"\xfe\xff": "UTF-16 (big-endian)"}


def decode_line(raw: bytes, path: str | Path, lineno: int) -> str:
    """One line of a UTF-8 text file (the first may start with a byte-order mark, as
    Windows editors write it); a RecordError at `path:line` for any other encoding."""
    if lineno == 1:
        for bom, name in _OTHER_BOMS.items():
            if raw.startswith(bom):
                raise RecordError(path, lineno, f"the file is {name} text: save it as UTF-8")
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(
            path,
            lineno,
            f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1});"
            " save the file as UTF-8",
        ) from None


def decode_text(data: bytes, path: str | Path) -> str:
    """A whole UTF-8 file's text, as `decode_line` reads each line."""
    return "".join(
        decode_line(raw, path, lineno)
        for lineno, raw in enumerate(data.splitlines(keepends=True), start=1)
    )


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) for each non-blank line; raise RecordError on bad JSON
    or text that is not UTF-8."""
    path = Path(path)
    if not path.exists():
        raise RecordError(path, None, "file not found")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = decode_line(raw, path, lineno)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(
                    path, lineno, f"invalid JSON ({e.msg} at column {e.colno})"
                ) from e
            if not isinstance(record, dict):
                raise RecordError(
                    path, lineno, f"expected a JSON object, got {type(record).__name__}"
                )
            yield lineno, record


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [record for _, record in iter_jsonl(path)]


@contextmanager
def atomic_path(path: str | Path, suffix: str = ""):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); outputs get the usual umask-based mode.
    os.chmod(tmp, 0o666 & ~UMASK)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | Path):
    """Yield an empty temporary folder beside `path`; it replaces `path` only if the block
    succeeds, so a folder output (an index, a model) is never seen half-written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    old = path.with_name(f".{path.name}.old")
    for stale in (tmp, old):  # left by a process killed here before
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        # An existing folder is moved aside, not deleted in place: a kill while a large
        # folder is deleted would leave part of it at `path`.
        if path.exists():
            path.rename(old)
        tmp.rename(path)
    except BaseException:
        if old.exists() and not path.exists():  # failed between the two renames
            old.rename(path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records atomically; return how many were written."""
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(decode_text(path.read_bytes(), path))
    except FileNotFoundError as e:
        raise RecordError(path, None, "file not found") from e
    except json.JSONDecodeError as e:
        raise RecordError(path, e.lineno, f"invalid JSON ({e.msg})") from e


def require(record: dict, field: str, kind: type | tuple[type, ...], path, lineno) -> Any:
    """Return record[field], or raise a RecordError naming the field and the record."""
    rid = record.get("id", record.get("_id"))
    who = f"record {rid!r}" if rid is not None else "record"
    if field not in record:
        raise RecordError(path, lineno, f"{who} has no field {field!r}")
    value = record[field]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RecordError(
            path, lineno, f"{who}: field {field!r} should be {names}, got {type(value).__name__}"
        )
    return value
