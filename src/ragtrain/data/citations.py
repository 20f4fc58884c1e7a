"""Answers that cite their documents, ALCE style: "... built in 1871 [1][2]."

- `citations(text)`: the documents a text cites, as written (1-based): `[k]`, `[k][j]`
  and `[k, j]` all count.
- `remove_citations(text)`: the text without them, what an NLI model is asked about.
- `segments(text, kind, question)`: the statements of an answer, each with its
  citations and where they sit. A sentence keeps the citations written after its full
  stop ("... 1871. [1]" cites like "... 1871 [1]."). A QAMPARI answer is a list: each
  comma-separated item is a statement, and its hypothesis is the question followed by
  the item (as ALCE scores it).
- `document_text(doc)`: a document as an NLI premise (ALCE's "Title: T\\ntext").

Offsets are character offsets into the text as given, so that rewards placed on them
land on the right tokens (ragtrain.training.rewards.place_rewards).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# One bracket of citations: [3], [1, 2] or [1,2].
CITATION_GROUP = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_NUMBER = re.compile(r"\d+")
# A sentence ends at . ! ? (or a line break) followed by space or the end; citation
# brackets right after its stop still belong to it.
_SENTENCE_END = re.compile(r"[.!?]+(?:\s*\[\d+(?:\s*,\s*\d+)*\])*(?=\s|$)|\n+")
# The ALCE datasets, by the fields their examples carry.
ALCE_KINDS = ("asqa", "qampari", "eli5")


@dataclass(frozen=True)
class Citation:
    doc: int  # 1-based, as written
    end: int  # offset just past its number


@dataclass(frozen=True)
class Segment:
    """A statement of an answer: its span, its words without citations (`claim`), the
    NLI hypothesis (the claim; for a list item, the question and the item) and its
    citations in the order written."""

    start: int
    end: int
    claim: str
    hypothesis: str
    citations: tuple[Citation, ...] = field(default_factory=tuple)

    @property
    def docs(self) -> list[int]:
        """The cited documents, in order, each once."""
        return list(dict.fromkeys(c.doc for c in self.citations))


def _citations_in(text: str, offset: int = 0) -> list[Citation]:
    found = []
    for group in CITATION_GROUP.finditer(text):
        for number in _NUMBER.finditer(group.group(1)):
            found.append(Citation(int(number.group()), offset + group.start(1) + number.end()))
    return found


def citations(text: str) -> list[int]:
    """The documents `text` cites, 1-based, in order (repeats kept)."""
    return [c.doc for c in _citations_in(text)]


def remove_citations(text: str) -> str:
    """`text` without its citation brackets (and the spaces before them)."""
    text = re.sub(r"\s*" + CITATION_GROUP.pattern, "", text)
    return re.sub(r"\s+([.,!?;:])", r"\1", text).strip()


def alce_kind(example: dict) -> str | None:
    """Which ALCE dataset an example is shaped like: `asqa` (it has `qa_pairs`),
    `qampari` (`answer_groups`), `eli5` (`claims`), else None."""
    if example.get("qa_pairs"):
        return "asqa"
    if example.get("answer_groups"):
        return "qampari"
    if example.get("claims"):
        return "eli5"
    return None


def _spans(text: str, kind: str | None) -> list[tuple[int, int]]:
    """(start, end) of each statement, surrounding whitespace and list commas excluded."""
    if kind == "qampari":
        # Items end at commas, but not at those inside a citation group ("[1, 2]").
        bounds = [m.end() for m in re.finditer(r",(?![\d\s,]*\])", text)]
    else:
        bounds = [m.end() for m in _SENTENCE_END.finditer(text)]
    spans, start = [], 0
    for end in [*bounds, len(text)]:
        piece = text[start:end]
        stripped_start = start + len(piece) - len(piece.lstrip())
        stripped_end = start + len(piece.rstrip())
        if kind == "qampari":
            # The item's own comma (and a final full stop) are not part of it.
            while stripped_end > stripped_start and text[stripped_end - 1] in ",.":
                stripped_end -= 1
            stripped_end = stripped_start + len(text[stripped_start:stripped_end].rstrip())
        if stripped_end > stripped_start:
            spans.append((stripped_start, stripped_end))
        start = end
    return spans


def segments(text: str, kind: str | None = None, question: str = "") -> list[Segment]:
    """The statements of `text`: sentences, or for `kind` qampari list items."""
    out = []
    for start, end in _spans(text, kind):
        piece = text[start:end]
        claim = remove_citations(piece)
        if not claim.strip(" .,!?;:"):
            # Citations alone (after a list's last comma): they cite for the item before.
            if out and kind == "qampari":
                last = out[-1]
                more = tuple(_citations_in(piece, start))
                out[-1] = Segment(last.start, end, last.claim, last.hypothesis,
                                  last.citations + more)  # fmt: skip
            continue
        hypothesis = f"{question} {claim}".strip() if kind == "qampari" else claim
        out.append(Segment(start, end, claim, hypothesis, tuple(_citations_in(piece, start))))
    return out


def document_text(doc: dict) -> str:
    """A document as an NLI premise: its title line, then its text."""
    return f"Title: {doc.get('title', '')}\n{doc.get('text', '')}"


def premise(docs: list[dict], cited: list[int]) -> str | None:
    """The cited documents (1-based) joined as one premise; None if one does not exist
    (a citation [7] of 5 documents is a wrong citation, never an index error)."""
    if not cited or any(not 1 <= k <= len(docs) for k in cited):
        return None
    return "\n".join(document_text(docs[k - 1]) for k in cited)
