"""ALCE's metrics (Gao et al. 2023; princeton-nlp/ALCE eval.py) as an evaluation family,
as Huang et al. (2024, "Training Language Models to Generate Text with Citations via
Fine-grained Rewards") report them.

Per example (`score_alce`), only what applies to the example's ALCE dataset
(`ragtrain.data.citations.alce_kind`):

- ASQA: `str_em` (share of the qa_pairs with a short answer present in the answer) and
  `str_hit` (1.0 if all are).
- QAMPARI: `qampari_prec`, `qampari_rec`, `qampari_rec_top5`, `qampari_f1`,
  `qampari_f1_top5` (the answer read as a comma-separated list).
- ELI5: `claims_nli` (share of the gold claims the answer entails).
- ASQA and ELI5 (ALCE skips QAMPARI): `rougeLsum` against the example's `reference`,
  where it has one.
- All: `citation_rec`, `citation_prec` (ALCE's AutoAIS with at most 3 citations per
  statement) and `length` (words).

Every score is a fraction in [0, 1] (ALCE prints 100x) and `aggregate_alce` takes plain
means over the examples that have a key (ALCE's ROUGE takes the mid of a bootstrap
aggregate, which is the mean up to resampling noise).

Where this differs from ALCE's code, on purpose:

- Citations are read by `ragtrain.data.citations`: `[1, 2]` cites documents 1 and 2
  (ALCE's regex sees only the 1 and leaves ", 2" in the text); citations written after a
  sentence's full stop belong to that sentence (NLTK would hand them to the next one);
  a statement's citations are counted once each ("[1][1]" cites one document) before
  the first 3 are kept; `[0]` is out of range (ALCE would read it as the last
  document). Statements are `citations.segments` (a regex split, not NLTK's punkt); in a
  QAMPARI list the comma inside "[1, 2]" does not end an item.
- ALCE's eval.py keeps only an answer's first line; here the whole answer is scored
  (cut answers where they are generated if that is wanted).
- ROUGE-Lsum needs one sentence a line: ALCE uses NLTK's punkt, which needs a data
  download; here `split_sentences` cuts after . ! ? followed by whitespace (and at line
  breaks). Citations are removed from the reference too (a teacher answer may cite).
- QAMPARI items that are empty are dropped from the citation statements (ALCE would score
  "question " as an uncited statement).

Kept from ALCE, although odd:

- `str_em` matches normalised short answers as substrings ("10" is present in "100").
- A citation that points past the documents (`[7]` of 5) makes its statement
  unsupported (recall), and none of that statement's citations enter the precision
  denominator (ALCE counts citations only of statements it sends to NLI).
- An answer with no statements (empty) gets no citation scores and is left out of the
  citation means; for QAMPARI ALCE still sees one empty item, so it scores 0 and 0.
- Precision of a statement with several citations that is not jointly entailed: all its
  citations count as wrong; a statement with no citations adds nothing to precision.

MAUVE is optional: `aggregate_alce` computes it only when the `mauve` package imports
and texts are given (`mauve_texts`); otherwise it reports `"mauve": None` with the reason.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

from ragtrain.data.citations import (
    ALCE_KINDS,
    alce_kind,
    premise,
    remove_citations,
    segments,
)

# ALCE's --at_most_citations default: a statement's first 3 cited documents are judged.
AT_MOST_CITATIONS = 3
# ALCE's MAUVE inputs: question and answer, cut to 100 words.
MAUVE_WORDS = 100

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")


def normalize_answer(s: str) -> str:
    """ALCE's (SQuAD's) normalisation: lower case, no punctuation, no articles, single
    spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _example_id(example: dict) -> str:
    return repr(example.get("id", "?"))


def _string_list(value: Any, example: dict, field: str) -> list[str]:
    # A bare string would be read character by character.
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(
            f"example {_example_id(example)}: field {field!r} must be a list of strings, "
            f"got {value!r}"
        )
    return value


def _qa_pairs(example: dict) -> list[dict]:
    pairs = example.get("qa_pairs")
    if not isinstance(pairs, list):
        raise ValueError(
            f"example {_example_id(example)}: field 'qa_pairs' must be a list of "
            f"{{question, short_answers}} objects, got {type(pairs).__name__}"
        )
    for i, pair in enumerate(pairs):
        if not isinstance(pair, dict) or "short_answers" not in pair:
            raise ValueError(
                f"example {_example_id(example)}: field 'qa_pairs[{i}]' has no 'short_answers'"
            )
        _string_list(pair["short_answers"], example, f"qa_pairs[{i}].short_answers")
    return pairs


def _answer_groups(example: dict) -> list[list[str]]:
    groups = example.get("answer_groups")
    if not isinstance(groups, list) or not groups:
        raise ValueError(
            f"example {_example_id(example)}: field 'answer_groups' must be a non-empty list "
            f"of alias lists, got {groups!r}"
        )
    return [_string_list(g, example, f"answer_groups[{i}]") for i, g in enumerate(groups)]


def _claims(example: dict) -> list[str]:
    claims = _string_list(example.get("claims"), example, "claims")
    if not claims:
        raise ValueError(f"example {_example_id(example)}: field 'claims' is empty")
    return claims


def _docs(example: dict) -> list[dict]:
    docs = example.get("docs") or []
    if not isinstance(docs, list) or not all(isinstance(d, dict) for d in docs):
        raise ValueError(
            f"example {_example_id(example)}: field 'docs' must be a list of "
            f"{{title, text}} objects"
        )
    return docs


# --- ASQA ------------------------------------------------------------------------------


def exact_presence(short_answers: Sequence[str], context: str) -> bool:
    """ALCE: some normalised short answer is a substring of the normalised context."""
    text = normalize_answer(context)
    return any(normalize_answer(a) in text for a in short_answers)


def _presence(prediction: str, qa_pairs: Sequence[dict]) -> list[bool]:
    text = remove_citations(prediction)
    return [exact_presence(pair["short_answers"], text) for pair in qa_pairs]


def str_em(prediction: str, qa_pairs: Sequence[dict]) -> float:
    """Share of `qa_pairs` with a short answer present in the citation-free prediction."""
    found = _presence(prediction, qa_pairs)
    if not found:
        raise ValueError("str_em needs at least one qa_pair")
    return sum(found) / len(found)


def str_hit(prediction: str, qa_pairs: Sequence[dict]) -> float:
    """1.0 if every qa_pair has a short answer present, else 0.0."""
    found = _presence(prediction, qa_pairs)
    if not found:
        raise ValueError("str_hit needs at least one qa_pair")
    return float(all(found))


# --- QAMPARI ---------------------------------------------------------------------------


def qampari_items(prediction: str) -> list[str]:
    """The normalised, non-empty items of a comma-separated answer (citations and the
    final full stop removed; repeats kept, as ALCE counts them)."""
    text = remove_citations(prediction).rstrip().rstrip(".").rstrip(",")
    items = (normalize_answer(item.strip()) for item in text.split(","))
    return [item for item in items if item]


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def qampari_scores(prediction: str, answer_groups: Sequence[Sequence[str]]) -> dict:
    """ALCE's QAMPARI list scores. Precision: items matching an alias of some answer /
    items (0 for no items); recall: answers with an alias among the items / answers;
    top-5 recall caps both at 5."""
    if not answer_groups:
        raise ValueError("qampari_scores needs at least one answer group")
    items = qampari_items(prediction)
    groups = [{normalize_answer(alias) for alias in group} for group in answer_groups]
    aliases = set().union(*groups)
    precision = sum(item in aliases for item in items) / len(items) if items else 0.0
    hits = sum(any(alias in items for alias in group) for group in groups)
    recall = hits / len(groups)
    recall_top5 = min(5, hits) / min(5, len(groups))
    return {
        "qampari_prec": precision,
        "qampari_rec": recall,
        "qampari_rec_top5": recall_top5,
        "qampari_f1": _f1(precision, recall),
        "qampari_f1_top5": _f1(precision, recall_top5),
    }


# --- ELI5 ------------------------------------------------------------------------------


def claims_nli(prediction: str, claims: Sequence[str], entailment) -> float:
    """Share of `claims` that the citation-free prediction entails."""
    if not claims:
        raise ValueError("claims_nli needs at least one claim")
    text = remove_citations(prediction)
    return sum(entailment.entails(text, claim) for claim in claims) / len(claims)


# --- ROUGE-Lsum ------------------------------------------------------------------------


def split_sentences(text: str) -> list[str]:
    """Sentences for ROUGE-Lsum: cut after . ! ? followed by whitespace, and at line
    breaks (a stand-in for ALCE's NLTK punkt, which needs a data download)."""
    return [s.strip() for s in _SENTENCE_BREAK.split(text) if s.strip()]


@cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)


def rouge_lsum(prediction: str, reference: str) -> float:
    """ROUGE-Lsum F-measure (Porter stemmer), citations removed from both texts, one
    sentence a line, lower-cased as ALCE does."""

    def lines(text: str) -> str:
        return "\n".join(split_sentences(remove_citations(text).lower()))

    return _rouge_scorer().score(lines(reference), lines(prediction))["rougeLsum"].fmeasure


# --- Citations -------------------------------------------------------------------------


def _statements(
    prediction: str, docs: list[dict], kind: str | None, question: str
) -> list[tuple[str, list[int] | None]]:
    """Each statement's NLI hypothesis and the documents it is judged on: its first
    AT_MOST_CITATIONS distinct citations, [] if it cites nothing, None if a citation
    (any, also past the first 3) is out of range."""
    out = []
    for seg in segments(prediction, kind, question):
        cited = seg.docs
        if any(not 1 <= k <= len(docs) for k in cited):
            out.append((seg.hypothesis, None))
        else:
            out.append((seg.hypothesis, cited[:AT_MOST_CITATIONS]))
    return out


def _citation_pairs(hypothesis: str, cited: list[int], docs: list[dict]) -> list[tuple]:
    """Every pair judging a statement may ask: the joint premise and, for several
    citations, each one alone and all but each one."""
    pairs = [(premise(docs, cited), hypothesis)]
    if len(cited) > 1:
        for k in cited:
            pairs.append((premise(docs, [k]), hypothesis))
            pairs.append((premise(docs, [c for c in cited if c != k]), hypothesis))
    return pairs


def citation_scores(
    prediction: str, docs: list[dict], entailment, kind: str | None = None, question: str = ""
) -> dict:
    """ALCE's citation recall and precision of one answer ({} if it has no statements,
    except QAMPARI: 0 and 0).

    Recall: share of statements whose cited documents (first 3, all in range) jointly
    entail them. Precision: over the citations of statements with in-range citations, a
    citation counts if its statement is entailed and, for several citations, unless it
    alone does not entail the statement while the others without it still do."""
    statements = _statements(prediction, docs, kind, question)
    if not statements:
        return {"citation_rec": 0.0, "citation_prec": 0.0} if kind == "qampari" else {}
    supported = correct = total = 0
    for hypothesis, cited in statements:
        if not cited:  # no citations, or one out of range
            continue
        total += len(cited)
        if not entailment.entails(premise(docs, cited), hypothesis):
            continue
        supported += 1
        if len(cited) == 1:
            correct += 1
            continue
        for k in cited:
            alone = entailment.entails(premise(docs, [k]), hypothesis)
            rest = [c for c in cited if c != k]
            if alone or not entailment.entails(premise(docs, rest), hypothesis):
                correct += 1
    return {
        "citation_rec": supported / len(statements),
        "citation_prec": correct / total if total else 0.0,
    }


# --- The family ------------------------------------------------------------------------


def nli_pairs(example: dict, prediction: str) -> list[tuple[str, str]]:
    """Every (premise, hypothesis) pair `score_alce` may ask of the NLI judge for this
    prediction, each once: a superset (precision checks are only asked of statements
    that turn out entailed), so that one `Entailment.prefetch` over all examples leaves
    scoring nothing to compute."""
    kind = alce_kind(example)
    pairs: list[tuple[str, str]] = []
    if kind == "eli5":
        text = remove_citations(prediction)
        pairs += [(text, claim) for claim in _claims(example)]
    docs = _docs(example)
    for hypothesis, cited in _statements(prediction, docs, kind, example.get("question", "")):
        if cited:
            pairs += _citation_pairs(hypothesis, cited, docs)
    return list(dict.fromkeys(pairs))


def score_alce(example: dict, prediction: str, entailment) -> dict:
    """The ALCE metrics of one prediction: those of the example's kind (ASQA, QAMPARI,
    ELI5), ROUGE-Lsum where there is a reference (not QAMPARI), citation recall and
    precision, and length. `entailment`: a `ragtrain.judges.nli.Entailment` (or anything
    with `entails(premise, hypothesis) -> bool`); None leaves out the metrics that need
    one (claims, citations)."""
    kind = alce_kind(example)
    scores: dict[str, Any] = {"kind": kind}
    if kind == "asqa":
        found = _presence(prediction, _qa_pairs(example))
        scores["str_em"] = sum(found) / len(found)
        scores["str_hit"] = float(all(found))
    elif kind == "qampari":
        scores.update(qampari_scores(prediction, _answer_groups(example)))
    elif kind == "eli5" and entailment is not None:
        scores["claims_nli"] = claims_nli(prediction, _claims(example), entailment)
    reference = example.get("reference")
    if kind != "qampari" and isinstance(reference, str) and reference.strip():
        scores["rougeLsum"] = rouge_lsum(prediction, reference)
    if entailment is not None:
        question = example.get("question", "")
        scores.update(citation_scores(prediction, _docs(example), entailment, kind, question))
    scores["length"] = float(len(remove_citations(prediction).split()))
    return scores


def mauve_texts(example: dict, prediction: str) -> tuple[str, str] | None:
    """ALCE's MAUVE inputs (human, model): question and answer, 100 words at most, end
    punctuation stripped; None for QAMPARI or without a reference."""
    reference = example.get("reference")
    if alce_kind(example) == "qampari" or not isinstance(reference, str):
        return None
    question = example.get("question", "")

    def text(answer: str) -> str:
        words = f"{question} {answer.strip()}".split()[:MAUVE_WORDS]
        return " ".join(words).rstrip(string.punctuation)

    return text(reference), text(remove_citations(prediction))


def _mauve(texts: Iterable[tuple[str, str] | None] | None) -> dict:
    try:
        import mauve
    except ImportError:
        return {"mauve": None, "mauve_reason": "the mauve package is not installed"}
    pairs = [t for t in texts or () if t is not None]
    if not pairs:
        return {"mauve": None, "mauve_reason": "no MAUVE texts given (see mauve_texts)"}
    import torch

    out = mauve.compute_mauve(
        p_text=[human for human, _ in pairs],
        q_text=[model for _, model in pairs],
        device_id=0 if torch.cuda.is_available() else -1,
        max_text_length=512,
        verbose=False,
        batch_size=8,
        featurize_model_name="gpt2-large",
    )
    return {"mauve": float(out.mauve)}


def aggregate_alce(
    scores: Sequence[dict], mauve: Iterable[tuple[str, str] | None] | None = None
) -> dict:
    """Mean of each metric over the examples that have it (None where none does), the
    number of examples of each kind, and MAUVE (over `mauve`: `mauve_texts` of each
    example) or None with `mauve_reason`."""
    keys = list(
        dict.fromkeys(
            k
            for s in scores
            for k, v in s.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        )
    )
    out: dict[str, Any] = {}
    for key in keys:
        values = [s[key] for s in scores if key in s]
        out[key] = sum(values) / len(values)
    out.update(_mauve(mauve))
    out["n"] = len(scores)
    for kind in ALCE_KINDS:
        out[f"n_{kind}"] = sum(s.get("kind") == kind for s in scores)
    return out
