"""Passages stored once, read by row or by id without loading the corpus.

A corpus is `corpus.jsonl` (one `{id, title, text}` per line, the JSONL every stage
reads) with two tables beside it, written with it by the corpus stage:

- `corpus.offsets.npy`: int64, n + 1 byte offsets (passage i is bytes
  offsets[i]..offsets[i+1]), so a row is one read;
- `corpus.ids.npy`: int64, shape (2, n): the ids' 64-bit hashes sorted, and the row of
  each, so an id is found by binary search (a collision is told apart by reading the
  rows) with no dict of all ids in memory.

Both are memory-mapped: 16 bytes a passage on disk, pages read as they are used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from array import array
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from ragtrain.core.records import RecordError, atomic_path

log = logging.getLogger(__name__)

OFFSETS_SUFFIX = ".offsets.npy"
IDS_SUFFIX = ".ids.npy"
READ_BLOCK = 4096  # passages read per block when streaming


def table_paths(corpus: str | Path) -> tuple[Path, Path]:
    """The offsets and id tables beside a corpus file (`corpus.jsonl` ->
    `corpus.offsets.npy`, `corpus.ids.npy`)."""
    corpus = Path(corpus)
    stem = corpus.name.removesuffix(".jsonl")
    return corpus.with_name(stem + OFFSETS_SUFFIX), corpus.with_name(stem + IDS_SUFFIX)


def id_hash(pid: str) -> int:
    """A stable 64-bit hash of an id (Python's own `hash` changes per process)."""
    digest = hashlib.blake2b(pid.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class DuplicateId(ValueError):
    """Two rows with one id (rows from 0)."""

    def __init__(self, path: str | Path, pid: str, first: int, second: int):
        self.pid, self.first, self.second = pid, first, second
        super().__init__(
            f"{path}:{second + 1}: duplicate passage id {pid!r} (first on line {first + 1})"
        )


class Passages:
    """A stored corpus: `len`, `[row]` (a passage dict), `by_id(id)`, iteration and
    `blocks(size, start)` in file order. Only the rows asked for are read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise RecordError(self.path, None, "file not found")
        offsets, ids = table_paths(self.path)
        if offsets.exists() and ids.exists():
            self._offsets = np.load(offsets, mmap_mode="r")
            self._ids = np.load(ids, mmap_mode="r")
        else:
            # A corpus from before the tables (an older index): built here, in memory.
            log.warning("%s has no offsets table: reading the file to build one", self.path)
            self._offsets, self._ids = _tables(self.path)
        size = self.path.stat().st_size
        if int(self._offsets[-1]) != size:
            raise RecordError(
                offsets,
                None,
                f"the offsets table ends at byte {int(self._offsets[-1])} but {self.path.name}"
                f" has {size} bytes: it belongs to another version of the file (rerun the"
                " corpus rule)",
            )
        self._file = self.path.open("rb")

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def _read(self, first: int, last: int) -> bytes:
        start, end = int(self._offsets[first]), int(self._offsets[last])
        return os.pread(self._file.fileno(), end - start, start)

    def __getitem__(self, row: int) -> dict[str, Any]:
        n = len(self)
        row = int(row)
        if not -n <= row < n:
            raise IndexError(f"row {row} of {n} passages in {self.path}")
        row %= n
        return json.loads(self._read(row, row + 1))

    def row_of(self, pid: str) -> int:
        """The row of the passage with this id; KeyError if none."""
        hashes, rows = self._ids[0], self._ids[1]
        h = id_hash(pid)
        lo, hi = np.searchsorted(hashes, h, "left"), np.searchsorted(hashes, h, "right")
        for row in rows[lo:hi]:  # one row unless two ids share a hash
            if self[int(row)]["id"] == pid:
                return int(row)
        raise KeyError(pid)

    def by_id(self, pid: str) -> dict[str, Any]:
        return self[self.row_of(pid)]

    def __contains__(self, pid: object) -> bool:
        try:
            self.row_of(str(pid))
        except KeyError:
            return False
        return True

    def span(self, first: int, last: int) -> list[dict[str, Any]]:
        """Rows first..last (not included), in one read."""
        lines = self._read(first, min(last, len(self))).splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def blocks(self, size: int = READ_BLOCK, start: int = 0) -> Iterator[list[dict[str, Any]]]:
        """The passages from row `start` on, `size` at a time (one read per block)."""
        for first in range(start, len(self), size):
            yield self.span(first, first + size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for block in self.blocks():
            yield from block

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Passages:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_passages(path: str | Path, passages: Iterable[dict[str, Any]]) -> int:
    """Write passages to `path` (JSONL) and its tables, each file atomically, as a stream:
    what is held is 16 bytes a passage (its offset and id hash; about 40 while the hashes
    are sorted at the end). A DuplicateId (its lines in `path`) where two passages share
    an id; nothing is written then."""
    path = Path(path)
    offsets_path, ids_path = table_paths(path)
    offsets, hashes = array("q", [0]), array("q")
    with ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(path))
        tmp_offsets = stack.enter_context(atomic_path(offsets_path, suffix=".npy"))
        tmp_ids = stack.enter_context(atomic_path(ids_path, suffix=".npy"))
        with tmp.open("wb") as f:
            for row, p in enumerate(passages):
                if not isinstance(p.get("id"), str):
                    raise ValueError(
                        f"{path}: passage {row + 1} needs a string `id`, got {p.get('id')!r}"
                    )
                line = (json.dumps(p, ensure_ascii=False) + "\n").encode("utf-8")
                f.write(line)
                offsets.append(offsets[-1] + len(line))
                hashes.append(id_hash(p["id"]))
        ids = _id_table(np.frombuffer(hashes, dtype=np.int64))
        _check_unique(tmp, path, np.frombuffer(offsets, dtype=np.int64), ids)
        np.save(tmp_offsets, np.frombuffer(offsets, dtype=np.int64))
        np.save(tmp_ids, ids)
    return len(offsets) - 1


def _id_table(hashes: np.ndarray) -> np.ndarray:
    """The (2, n) id table: sorted hashes over the row of each."""
    table = np.empty((2, len(hashes)), dtype=np.int64)
    table[1] = np.argsort(hashes, kind="stable")
    table[0] = hashes[table[1]]
    return table


def _check_unique(file: Path, name: Path, offsets: np.ndarray, ids: np.ndarray) -> None:
    """A DuplicateId naming `name` where two rows of `file` have one id: rows whose hashes
    are equal are read and compared (a shared hash alone is a collision)."""
    hashes = ids[0]
    same = np.flatnonzero(hashes[1:] == hashes[:-1])
    if not len(same):
        return
    with file.open("rb") as f:

        def pid(row: int) -> str:
            start, end = int(offsets[row]), int(offsets[row + 1])
            return json.loads(os.pread(f.fileno(), end - start, start))["id"]

        for i in same:
            first, second = sorted((int(ids[1][i]), int(ids[1][i + 1])))
            if pid(first) == pid(second):
                raise DuplicateId(name, pid(first), first, second)


def _tables(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The offsets and id tables of a JSONL file of passages, read line by line."""
    offsets, hashes = array("q", [0]), array("q")
    start = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            start += len(raw)
            if not raw.strip():
                # Blank lines join the passage before them (whitespace to JSON).
                if len(offsets) > 1:
                    offsets[-1] = start
                else:
                    offsets[0] = start
                continue
            try:
                record = json.loads(raw)
                pid = record["id"]
            except (ValueError, KeyError, TypeError):
                raise RecordError(path, lineno, "expected a passage {id, title, text}") from None
            offsets.append(start)
            hashes.append(id_hash(str(pid)))
    if len(hashes) == 0:
        raise RecordError(path, None, "no passages: the corpus is empty")
    offsets_array = np.frombuffer(offsets, dtype=np.int64)
    ids = _id_table(np.frombuffer(hashes, dtype=np.int64))
    _check_unique(path, path, offsets_array, ids)
    return offsets_array, ids


def link_passages(source: str | Path, folder: Path) -> Passages:
    """`folder/corpus.jsonl` and its tables as hard links to a stored corpus's files: the
    passages are stored once (a copy only across file systems); a corpus without tables
    gets them written in `folder`."""
    source, target = Path(source), folder / "corpus.jsonl"
    pairs = [(source, target)]
    if has_tables(source):
        pairs += list(zip(table_paths(source), table_paths(target), strict=True))
    for src, dst in pairs:
        try:
            os.link(src, dst)
        except OSError:
            log.warning("%s: no hard link possible here, copied", src)
            shutil.copyfile(src, dst)
    if len(pairs) == 1:
        offsets, ids = _tables(target)
        offsets_path, ids_path = table_paths(target)
        np.save(offsets_path, offsets)
        np.save(ids_path, ids)
    return Passages(target)


def has_tables(corpus: str | Path) -> bool:
    """Whether the corpus stage's offsets and id tables are beside this corpus file."""
    return all(p.exists() for p in table_paths(corpus))


@contextmanager
def open_corpus(path: str | Path) -> Iterator[Passages]:
    """Passages over a corpus file: by its tables where the corpus stage wrote them (the
    workflow's corpora); a file given by hand without them (a BEIR `corpus.jsonl` with
    `_id`, or any file `load_beir_corpus` reads) is first normalised as a stream into a
    temporary folder, so no list of its passages is held either way."""
    path = Path(path)
    if has_tables(path):
        with Passages(path) as passages:
            yield passages
        return
    from ragtrain.data.loaders import write_corpus

    log.warning("%s has no offsets and id tables: normalising a copy to read it by id", path)
    with tempfile.TemporaryDirectory(prefix="ragtrain-corpus-") as tmp:
        write_corpus(path, "beir", Path(tmp) / "corpus.jsonl")
        with Passages(Path(tmp) / "corpus.jsonl") as passages:
            yield passages


def passages_with_ids(corpus: Sequence[dict] | Passages, ids: Iterable[str]) -> dict[str, dict]:
    """{id: passage} for those of `ids` that are in the corpus (the others left out): by
    the id table of a Passages, in one pass over a list."""
    if isinstance(corpus, Passages):  # each found row read once
        return {pid: corpus[row] for pid, row in rows_of(corpus, ids).items()}
    wanted = set(ids)
    return {p["id"]: p for p in corpus if p["id"] in wanted}


def rows_of(corpus: Sequence[dict] | Passages, ids: Iterable[str]) -> dict[str, int]:
    """{id: row} for those of `ids` that are in the corpus: by the id table of a Passages,
    in one pass over a list."""
    wanted = set(ids)
    if isinstance(corpus, Passages):
        out = {}
        for pid in sorted(wanted):
            with suppress(KeyError):
                out[pid] = corpus.row_of(pid)
        return out
    return {p["id"]: i for i, p in enumerate(corpus) if p["id"] in wanted}


def skipping(positions, skipped: np.ndarray):
    """The rows at `positions` (an int or an array) among the rows that are not in
    `skipped` (sorted, distinct): how a draw from the list of all rows but a few maps back
    to a row, without that list."""
    shifted = skipped - np.arange(len(skipped))  # the positions the skipped rows precede
    rows = np.asarray(positions) + np.searchsorted(shifted, positions, "right")
    return int(rows) if np.ndim(rows) == 0 else rows


def sample_passages(
    corpus: Sequence[dict] | Passages, skip: Iterable[str], n: int, seed: int
) -> list[dict]:
    """A seeded sample of `n` passages whose ids are not in `skip` (all of them if fewer),
    in corpus order: the passages `random.Random(seed).sample` draws from the list of
    them (ragtrain.generation.pseudo_query.unlabelled_sample gives the same), with no such
    list: the skipped ids are looked up and only the rows drawn are read."""
    skipped = np.array(sorted(rows_of(corpus, skip).values()), dtype=np.int64)
    size = len(corpus) - len(skipped)
    # random.sample's draws depend only on the population's length: positions in the list.
    positions = sorted(random.Random(seed).sample(range(size), min(n, size)))
    rows = skipping(np.array(positions, dtype=np.int64), skipped)
    return [corpus[int(row)] for row in rows]


def ids_in_corpus(path: str | Path, ids: Iterable[str]) -> set[str]:
    """Those of `ids` that are passage ids of a corpus file: looked up in its id table
    where the corpus stage wrote one; otherwise the file's ids are streamed (any format a
    BEIR corpus is read in, `_id` too), only the matches kept. A RecordError if the file
    has no passages."""
    wanted = set(ids)
    if has_tables(path):
        with Passages(path) as passages:
            return set(rows_of(passages, wanted))
    from ragtrain.data.loaders import iter_corpus

    found, n = set(), 0
    for _, passage in iter_corpus(path, "beir"):
        n += 1
        if passage["id"] in wanted:
            found.add(passage["id"])
    if not n:
        raise RecordError(path, None, "no passages: the corpus is empty")
    return found
