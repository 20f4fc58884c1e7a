"""Reward sources behind one interface, and their placement on tokens.

A source scores each sampled response to an example and returns, per response, a list of
(character offset, value) pairs. A sequence-level source puts one value at the end of
the response; a fine-grained one (per sentence, per citation) puts several inside it.
PPO places each value on the token that holds the character just before its offset;
sequence-level trainers (GRPO, RLOO, best-of-n) use the sum.

Sources are configured as a list, e.g.

    rewards:
      - {kind: correctness}                       # 1 for the right response, else 0
      - {kind: length, max_words: 12, per_word: 0.05}
      - {kind: reward_model, model: rm, weight: 0.5}
      - {kind: retrieval_rank, retriever: r1}     # 1/rank of the query's source passage

and combined by weight. A later source kind only has to implement `score`.

The citation sources of Huang et al. 2024 ("Training Language Models to Generate Text
with Citations via Fine-grained Rewards") ask an NLI judge (`nli`, a judges node):

      - {kind: citation_recall, nli: nli}         # +-0.2 at each sentence's end
      - {kind: citation_precision, nli: nli}      # +-0.2 at each of its first 3 citations
      - {kind: alce_correctness, nli: nli}        # +-0.2 per gold item, at the end

Any source may take `holistic: true`: its values summed at the end of the response (the
paper's holistic baseline, one reward in place of fine-grained ones).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ragtrain.core.records import RecordError
from ragtrain.data.citations import (
    ALCE_KINDS,
    Citation,
    Segment,
    alce_kind,
    premise,
    remove_citations,
    segments,
)
from ragtrain.data.passages import Passages
from ragtrain.generation.judge import is_right
from ragtrain.judges.rules import label
from ragtrain.metrics.alce import (
    AT_MOST_CITATIONS,
    exact_presence,
    normalize_answer,
    qampari_items,
)

if TYPE_CHECKING:
    from ragtrain.judges.nli import Entailment

Placed = list[tuple[int, float]]


class RewardSource(Protocol):
    name: str

    def score(self, examples: Sequence[dict], responses: Sequence[str]) -> list[Placed]:
        """(character offset, value) pairs for each response; `examples[i]` is the record
        `responses[i]` answers (question, answers, docs, and `prompt`: its conversation)."""
        ...


class Correctness:
    """The judge's verdict: `right` for the answer the question calls for (a gold answer,
    or a refusal where there is none), `wrong` otherwise."""

    name = "correctness"
    settings = ("right", "wrong")

    def __init__(self, right: float = 1.0, wrong: float = 0.0):
        self.right, self.wrong = right, wrong

    def score(self, examples, responses):
        out = []
        for example, text in zip(examples, responses, strict=True):
            ok = is_right(label(text, example["answers"]), example["answers"])
            out.append([(len(text), self.right if ok else self.wrong)])
        return out


class LengthPenalty:
    """-per_word for each word past `max_words` (long answers ramble past the fact)."""

    name = "length"
    settings = ("max_words", "per_word")

    def __init__(self, max_words: int = 20, per_word: float = 0.05):
        self.max_words, self.per_word = max_words, per_word

    def score(self, examples, responses):
        return [
            [(len(text), -self.per_word * max(0, len(text.split()) - self.max_words))]
            for text in responses
        ]


class FormatPenalty:
    """-penalty unless the whole response matches `pattern` (a Python regex)."""

    name = "format"
    settings = ("pattern", "penalty")

    def __init__(self, pattern: str, penalty: float = 1.0):
        try:
            self.pattern = re.compile(pattern, re.DOTALL)
        except re.error as e:
            raise ValueError(f"format reward: bad pattern {pattern!r}: {e}") from None
        self.penalty = penalty

    def score(self, examples, responses):
        return [
            [(len(text), 0.0 if self.pattern.fullmatch(text.strip()) else -self.penalty)]
            for text in responses
        ]


class RewardModelScore:
    """A trained reward model's score of (prompt, response), at the end of the response."""

    name = "reward_model"
    # `model` names a reward_model node; the stage passes its folder as model_dir.
    settings = ("model", "batch_size")

    def __init__(self, model_dir: str, batch_size: int = 8):
        from ragtrain.training.reward_model import RewardModelScorer

        self.scorer = RewardModelScorer(model_dir, batch_size=batch_size)

    def score(self, examples, responses):
        values = self.scorer.score([e["prompt"] for e in examples], list(responses))
        return [[(len(text), v)] for text, v in zip(responses, values, strict=True)]


class RetrievalRank:
    """How well a written query finds its source passage: 1/rank of the example's
    `doc_id` among all passages of the corpus under a trained bi-encoder (exact cosine),
    0 beyond rank `depth` or for an empty query. For a query writer whose prompt is a
    passage (PPO over a BEIR task's passages); the query is read as pseudo-queries are
    (first line, no `Query:` label)."""

    name = "retrieval_rank"
    # `retriever` names a biencoder model node; the stage passes its folder and the corpus.
    settings = ("retriever", "depth", "batch_size")

    def __init__(
        self, model_dir: str, corpus: list[dict] | Passages, depth: int = 100, batch_size: int = 64
    ):
        from ragtrain.retrieval.index import encode, load_encoder

        model = load_encoder({"encoder": str(Path(model_dir) / "model")})
        self._setup(lambda texts: encode(model, texts, {"batch_size": batch_size}), corpus, depth)

    @classmethod
    def from_embedder(cls, embed, corpus: list[dict] | Passages, depth: int = 100) -> RetrievalRank:
        """With any `embed(texts) -> unit vectors` (a test's, another encoder's)."""
        source = cls.__new__(cls)
        source._setup(embed, corpus, depth)
        return source

    def _setup(self, embed, corpus: list[dict] | Passages, depth: int) -> None:
        from ragtrain.retrieval.index import encode_corpus

        if not len(corpus):
            raise ValueError("retrieval_rank: no corpus given")
        self.embed, self.depth, self.corpus = embed, depth, corpus
        # A stored corpus's rows are found by its id table; a list's by one dict.
        stored = isinstance(corpus, Passages)
        self._rows = None if stored else {p["id"]: i for i, p in enumerate(corpus)}
        # The passages once, a block at a time: every rollout batch is ranked against them.
        self.passages = encode_corpus(None, corpus, {}, encoder=lambda _, texts, __: embed(texts))

    def _row(self, doc_id: str) -> int:
        try:
            return self.corpus.row_of(doc_id) if self._rows is None else self._rows[doc_id]
        except KeyError:
            raise ValueError(f"retrieval_rank: passage {doc_id!r} is not in the corpus") from None

    def ranks(self, doc_ids: Sequence[str], queries: Sequence[str]) -> list[int | None]:
        """The rank of each source passage (1 = first; None for an empty query)."""
        from ragtrain.generation.pseudo_query import clean_query

        texts = [clean_query(q) for q in queries]
        asked = [i for i, t in enumerate(texts) if t]
        out: list[int | None] = [None] * len(texts)
        if not asked:
            return out
        scores = self.embed([texts[i] for i in asked]) @ self.passages.T
        for row, i in zip(scores, asked, strict=True):
            source = row[self._row(doc_ids[i])]
            # Ties count in the query's favour: rank 1 + passages scored strictly higher.
            out[i] = 1 + int((row > source).sum())
        return out

    def score(self, examples, responses):
        for example in examples:
            if "doc_id" not in example:
                raise ValueError(
                    f"{self.name}: example {_example_id(example)} has no `doc_id` (its prompt"
                    " must be a passage: PPO over a BEIR task's passages)"
                )
        ranks = self.ranks([e["doc_id"] for e in examples], responses)
        return [
            [(len(text), 1.0 / rank if rank is not None and rank <= self.depth else 0.0)]
            for text, rank in zip(responses, ranks, strict=True)
        ]


# --- Citation rewards (Huang et al. 2024) -------------------------------------------
# A sentence is judged by its first three cited documents (ALCE's and the paper's limit).
CITED_DOCS = AT_MOST_CITATIONS
Pair = tuple[str, str]  # (premise, hypothesis)


def cited_docs(segment: Segment, n_docs: int, limit: int = CITED_DOCS) -> list[int] | None:
    """The documents a sentence is judged by: the first `limit` it cites, each once; None
    when it cites none, or cites a document that does not exist (even past `limit`): a
    wrong citation, never an index error."""
    if not segment.citations or any(not 1 <= c.doc <= n_docs for c in segment.citations):
        return None
    return segment.docs[:limit]


def _pair(docs: list[dict], cited: list[int] | None, hypothesis: str) -> Pair | None:
    text = premise(docs, cited or [])
    return None if text is None else (text, hypothesis)


def supported(
    entailment: Entailment, docs: list[dict], cited: list[int] | None, hypothesis: str
) -> bool:
    """Whether the documents `cited` (1-based) jointly entail a sentence's hypothesis;
    False for none (None, or an empty list)."""
    pair = _pair(docs, cited, hypothesis)
    return pair is not None and entailment.entails(*pair)


def _sentences(example: dict, text: str) -> list[Segment]:
    """The statements of a response (list items for a QAMPARI-shaped example)."""
    return segments(text, alce_kind(example), example.get("question", ""))


def _example_id(example: dict) -> str:
    return repr(example.get("id", "?"))


class NLISource:
    """A source that asks an NLI judge. `pairs` lists the (premise, hypothesis) pairs a
    response needs: all responses' pairs are scored in one `prefetch` (full batches)
    before `place` reads the verdicts (`entails`, from the cache)."""

    name = ""

    def __init__(self, entailment: Entailment | None):
        self.entailment = entailment

    def pairs(self, example: dict, text: str) -> list[Pair]:
        raise NotImplementedError

    def place(self, example: dict, text: str) -> Placed:
        raise NotImplementedError

    def score(self, examples, responses):
        if self.entailment is not None:
            both = zip(examples, responses, strict=True)
            self.entailment.prefetch([p for e, text in both for p in self.pairs(e, text)])
        return [self.place(e, text) for e, text in zip(examples, responses, strict=True)]


class CitationRecall(NLISource):
    """At each sentence's end: `right` if its cited documents (the first three) jointly
    entail it (citations stripped), else `wrong`; a sentence without citations, or citing
    a document that does not exist, is `wrong`."""

    name = "citation_recall"
    settings = ("nli", "right", "wrong")

    def __init__(self, entailment: Entailment, right: float = 0.2, wrong: float = -0.2):
        super().__init__(entailment)
        self.right, self.wrong = right, wrong

    def pairs(self, example, text):
        docs = example.get("docs") or []
        found = (
            _pair(docs, cited_docs(s, len(docs)), s.hypothesis) for s in _sentences(example, text)
        )
        return [p for p in found if p]

    def place(self, example, text):
        docs = example.get("docs") or []
        return [
            (s.end, self.right if self._supported(docs, s) else self.wrong)
            for s in _sentences(example, text)
        ]

    def _supported(self, docs, sentence: Segment) -> bool:
        return supported(
            self.entailment, docs, cited_docs(sentence, len(docs)), sentence.hypothesis
        )


class CitationPrecision(NLISource):
    """At each citation (the offset just past its number), for a sentence's first
    `max_citations` cited documents (a repeated document counts at its first citation):
    `wrong` if the sentence is not entailed by them jointly (or cites a document that
    does not exist); else `right` for a citation that alone entails it, `wrong` for one
    that does not and whose removal leaves the sentence entailed (irrelevant), `right`
    otherwise (it helps the others). Citations past the first `max_citations` documents,
    and repeats, get nothing."""

    name = "citation_precision"
    settings = ("nli", "right", "wrong", "max_citations")

    def __init__(
        self,
        entailment: Entailment,
        right: float = 0.2,
        wrong: float = -0.2,
        max_citations: int = CITED_DOCS,
    ):
        if not isinstance(max_citations, int) or max_citations < 1:
            raise ValueError(f"{self.name}: max_citations must be >= 1, got {max_citations!r}")
        super().__init__(entailment)
        self.right, self.wrong, self.max_citations = right, wrong, max_citations

    @staticmethod
    def _premises(cited: list[int]) -> list[list[int]]:
        """The document sets asked about: all together, each alone, all but each."""
        alone = [[d] for d in cited]
        others = [[x for x in cited if x != d] for d in cited] if len(cited) > 1 else []
        return [cited, *alone, *others]

    def pairs(self, example, text):
        docs = example.get("docs") or []
        out = []
        for s in _sentences(example, text):
            cited = cited_docs(s, len(docs), self.max_citations)
            out += [_pair(docs, c, s.hypothesis) for c in self._premises(cited or [])]
        return [p for p in out if p]

    def place(self, example, text):
        docs = example.get("docs") or []
        out: Placed = []
        for s in _sentences(example, text):
            cited = cited_docs(s, len(docs), self.max_citations)
            joint = supported(self.entailment, docs, cited, s.hypothesis)
            for c in self._firsts(s):
                ok = joint and self._needed(docs, cited, c.doc, s.hypothesis)
                out.append((c.end, self.right if ok else self.wrong))
        return out

    def _firsts(self, sentence: Segment) -> list[Citation]:
        """The first citation of each document the sentence cites, up to max_citations."""
        first: dict[int, Citation] = {}
        for c in sentence.citations:
            first.setdefault(c.doc, c)
        return list(first.values())[: self.max_citations]

    def _needed(self, docs, cited: list[int], doc: int, hypothesis: str) -> bool:
        """Of a jointly entailed sentence: `doc` entails it alone, or the rest do not."""
        rest = [d for d in cited if d != doc]
        return supported(self.entailment, docs, [doc], hypothesis) or not supported(
            self.entailment, docs, rest, hypothesis
        )


# Where an ALCE example keeps its gold items, by dataset.
GOLD_FIELDS = {"asqa": "qa_pairs", "qampari": "answer_groups", "eli5": "claims"}


class AlceCorrectness(NLISource):
    """ALCE correctness at the end of the response, `per_item` per gold item found minus
    `per_item` per item missed, on the response without citations:

    - ASQA: a `qa_pairs` entry is found if one of its short answers appears (normalised)
      in the response;
    - QAMPARI: an `answer_groups` entry is found if one of its aliases equals a
      comma-separated item (normalised); missed: `qampari_target` minus the found, at
      least 0;
    - ELI5: a `claims` entry is found if the response entails it (the NLI judge).

    `dataset: auto` picks per example by its fields; `asqa|qampari|eli5` forces one."""

    name = "alce_correctness"
    settings = ("nli", "dataset", "per_item", "qampari_target")

    def __init__(
        self,
        entailment: Entailment | None = None,
        dataset: str = "auto",
        per_item: float = 0.2,
        qampari_target: int = 5,
    ):
        _check_dataset(dataset, f"{self.name}.dataset")
        if entailment is None and dataset in ("auto", "eli5"):
            raise ValueError(f"{self.name} ({dataset}): needs an NLI judge (`nli`)")
        super().__init__(entailment)
        self.dataset, self.per_item, self.qampari_target = dataset, per_item, qampari_target

    def _gold(self, example: dict) -> tuple[str, list]:
        """The example's ALCE kind and its gold items; ValueError if they are missing."""
        kind = alce_kind(example) if self.dataset == "auto" else self.dataset
        if kind is None:
            raise ValueError(
                f"{self.name} (auto): example {_example_id(example)} has none of"
                f" {sorted(GOLD_FIELDS.values())}"
            )
        items = example.get(GOLD_FIELDS[kind])
        if not items:
            raise ValueError(
                f"{self.name} ({kind}): example {_example_id(example)} has no {GOLD_FIELDS[kind]}"
            )
        return kind, items

    def pairs(self, example, text):
        kind, items = self._gold(example)
        return [(remove_citations(text), claim) for claim in items] if kind == "eli5" else []

    def place(self, example, text):
        kind, items = self._gold(example)
        answer = remove_citations(text)
        if kind == "asqa":
            found = sum(exact_presence(qa.get("short_answers", []), answer) for qa in items)
            missed = len(items) - found
        elif kind == "qampari":
            said = set(qampari_items(answer))
            found = sum(any(normalize_answer(a) in said for a in group) for group in items)
            missed = max(self.qampari_target - found, 0)
        else:
            found = sum(self.entailment.entails(answer, claim) for claim in items)
            missed = len(items) - found
        return [(len(text), self.per_item * found - self.per_item * missed)]


class Holistic:
    """A source's values summed at the end of the response (`holistic: true`)."""

    def __init__(self, source: RewardSource):
        self.source, self.name = source, source.name

    def score(self, examples, responses):
        placed = self.source.score(examples, responses)
        return [[(len(text), total(p))] for text, p in zip(responses, placed, strict=True)]


# The reward sources a `rewards` list can name, by kind: a new source is a class above
# (a `name`, its `settings`, a `score`) added here.
SOURCES = {
    s.name: s
    for s in (
        Correctness,
        LengthPenalty,
        FormatPenalty,
        RewardModelScore,
        RetrievalRank,
        CitationRecall,
        CitationPrecision,
        AlceCorrectness,
    )
}
# kind -> (settings it takes, besides `kind`, `weight` and `holistic`)
SOURCE_SETTINGS = {name: source.settings for name, source in SOURCES.items()}


def check_specs(specs, key: str) -> None:
    """Raise ValueError naming `key[i].<setting>` for a malformed source list."""
    if not isinstance(specs, list) or not specs:
        raise ValueError(f"{key}: expected a non-empty list of reward sources")
    for i, spec in enumerate(specs):
        where = f"{key}[{i}]"
        if not isinstance(spec, dict) or spec.get("kind") not in SOURCE_SETTINGS:
            kind = spec.get("kind") if isinstance(spec, dict) else spec
            raise ValueError(
                f"{where}.kind: expected one of {sorted(SOURCE_SETTINGS)}, got {kind!r}"
            )
        allowed = {"kind", "weight", "holistic", *SOURCE_SETTINGS[spec["kind"]]}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise ValueError(f"{where}: unknown setting {unknown[0]!r} (takes {sorted(allowed)})")
        if spec["kind"] == "reward_model" and not spec.get("model"):
            raise ValueError(f"{where}.model: a reward_model source names a trained reward model")
        if spec["kind"] == "retrieval_rank" and not spec.get("retriever"):
            raise ValueError(f"{where}.retriever: a retrieval_rank source names a biencoder model")
        if spec["kind"] == "format" and not spec.get("pattern"):
            raise ValueError(f"{where}.pattern: a format source needs a pattern")
        if not isinstance(spec.get("weight", 1.0), int | float):
            raise ValueError(f"{where}.weight: expected a number, got {spec['weight']!r}")
        if not isinstance(spec.get("holistic", False), bool):
            raise ValueError(f"{where}.holistic: expected true or false, got {spec['holistic']!r}")
        _check_nli(spec, where)


def _needs_nli(spec: dict) -> bool:
    """Whether a source asks an NLI judge (alce_correctness: where ELI5 examples may come)."""
    if spec["kind"] == "alce_correctness":
        return spec.get("dataset", "auto") in ("auto", "eli5")
    return "nli" in SOURCE_SETTINGS[spec["kind"]]


def _check_dataset(dataset, where: str) -> None:
    if dataset not in ("auto", *ALCE_KINDS):
        raise ValueError(f"{where}: expected auto or one of {list(ALCE_KINDS)}, got {dataset!r}")


def _check_nli(spec: dict, where: str) -> None:
    if spec["kind"] == "alce_correctness":
        _check_dataset(spec.get("dataset", "auto"), f"{where}.dataset")
    if "nli" in spec and (not isinstance(spec["nli"], str) or not spec["nli"]):
        raise ValueError(f"{where}.nli: expected the name of an NLI judge, got {spec['nli']!r}")
    if _needs_nli(spec) and "nli" not in spec:
        why = f" (dataset {spec.get('dataset', 'auto')}: ELI5 claims are judged by entailment)"
        raise ValueError(
            f"{where}.nli: a {spec['kind']} source names an NLI judge"
            + (why if spec["kind"] == "alce_correctness" else "")
        )


def reward_models(specs: list[dict]) -> list[str]:
    """The reward model names the sources use (rule inputs)."""
    return [s["model"] for s in specs if s["kind"] == "reward_model"]


def rank_retrievers(specs: list[dict]) -> list[str]:
    """The retriever (biencoder model) names the retrieval_rank sources use, each once."""
    return list(dict.fromkeys(s["retriever"] for s in specs if s["kind"] == "retrieval_rank"))


# Sources that read no gold answer: what a prompt without one (a passage) can be scored by.
ANSWERLESS_SOURCES = ("length", "format", "reward_model", "retrieval_rank")


def nli_judges(specs: list[dict]) -> list[str]:
    """The NLI judge names the sources use, each once (rule inputs)."""
    return list(dict.fromkeys(s["nli"] for s in specs if s.get("nli")))


class Rewards:
    """Weighted sources as one: `score` concatenates their placed values, weighted."""

    def __init__(
        self,
        specs: list[dict],
        model_dirs: dict[str, str] | None = None,
        nli: dict[str, Entailment] | None = None,
        retrievers: dict[str, str] | None = None,
        corpus: list[dict] | None = None,
    ):
        """`model_dirs`: reward model name -> its folder; `nli`: NLI judge name -> its
        `Entailment` (ragtrain.judges.nli), for the sources that name one; `retrievers`:
        biencoder name -> its folder, and `corpus`, the passages they rank
        (retrieval_rank)."""
        check_specs(specs, "rewards")
        ranking = {"retrievers": retrievers or {}, "corpus": corpus}
        self.sources: list[tuple[RewardSource, float]] = []
        for i, spec in enumerate(specs):
            source = _build(spec, f"rewards[{i}]", model_dirs or {}, nli or {}, ranking)
            if spec.get("holistic"):
                source = Holistic(source)
            self.sources.append((source, float(spec.get("weight", 1.0))))

    @classmethod
    def from_sources(cls, sources: list[tuple[RewardSource, float]]) -> Rewards:
        """Sources built elsewhere (a custom source, a test's), with their weights."""
        rewards = cls.__new__(cls)
        rewards.sources = list(sources)
        return rewards

    @property
    def names(self) -> list[str]:
        """The sources' names, a repeated kind numbered (length, length_2)."""
        names, seen = [], {}
        for source, _ in self.sources:
            seen[source.name] = seen.get(source.name, 0) + 1
            count = seen[source.name]
            names.append(source.name if count == 1 else f"{source.name}_{count}")
        return names

    def per_source(self, examples, responses) -> dict[str, list[Placed]]:
        """Each source's weighted values per response. A source's ValueError (an example
        it cannot score) is raised naming the source: `rewards[i]: ...`."""
        out = {}
        for i, (name, (source, weight)) in enumerate(zip(self.names, self.sources, strict=True)):
            try:
                placed_lists = source.score(examples, responses)
            except ValueError as e:
                raise ValueError(f"rewards[{i}]: {e}") from e
            out[name] = [[(offset, weight * value) for offset, value in p] for p in placed_lists]
        return out

    def score(self, examples, responses) -> list[Placed]:
        """All sources' weighted values per response, in offset order."""
        return combine(self.per_source(examples, responses), len(responses))

    def totals(self, examples, responses) -> list[float]:
        return [total(p) for p in self.score(examples, responses)]

    def by_source(self, examples, responses) -> dict[str, list[float]]:
        """Each source's weighted total per response (for logs and stats)."""
        return {
            name: [total(p) for p in placed]
            for name, placed in self.per_source(examples, responses).items()
        }


def _build(
    spec: dict, where: str, model_dirs: dict, nli: dict, ranking: dict | None = None
) -> RewardSource:
    """One source from its (checked) spec; named reward models, NLI judges and
    retrievers resolved."""
    settings = {k: v for k, v in spec.items() if k not in ("kind", "weight", "holistic")}
    kind = spec["kind"]
    if kind == "retrieval_rank":
        ranking = ranking or {}
        retriever = settings.pop("retriever")
        if retriever not in ranking.get("retrievers", {}):
            raise ValueError(f"{where}.retriever: no folder given for retriever {retriever!r}")
        if not ranking.get("corpus"):
            raise ValueError(f"{where}: retrieval_rank needs the corpus its retriever ranks")
        return RetrievalRank(ranking["retrievers"][retriever], ranking["corpus"], **settings)
    if kind == "reward_model":
        model = settings.pop("model")
        if model not in model_dirs:
            raise ValueError(f"rewards: no folder given for reward model {model!r}")
        return RewardModelScore(model_dirs[model], **settings)
    if "nli" in settings:
        judge = settings.pop("nli")
        if judge not in nli:
            raise ValueError(f"{where}.nli: no NLI judge {judge!r} given (have {sorted(nli)})")
        settings["entailment"] = nli[judge]
    return SOURCES[kind](**settings)


def combine(per_source: dict[str, list[Placed]], n: int) -> list[Placed]:
    out: list[Placed] = [[] for _ in range(n)]
    for placed_lists in per_source.values():
        for placed, more in zip(out, placed_lists, strict=True):
            placed.extend(more)
    return [sorted(p, key=lambda pair: pair[0]) for p in out]


def total(placed: Placed) -> float:
    return float(sum(value for _, value in placed))


def token_char_ends(tokenizer, token_ids: Sequence[int]) -> list[int]:
    """The end offset, in the decoded response text, of each generated token.

    Generated ids are not a tokenization of their text (the tokenizer may split it
    differently), so the offsets come from decoding growing prefixes: token i ends where
    the text of ids[:i+1] ends. Special tokens (EOS) add no text and end where the text
    does.
    """
    ends, previous = [], 0
    for i in range(len(token_ids)):
        length = len(tokenizer.decode(token_ids[: i + 1], skip_special_tokens=True))
        # A byte-level token that completes a character can shorten a replacement char:
        # offsets never go back.
        previous = max(previous, length)
        ends.append(previous)
    return ends


def place_rewards(placed: Placed, char_ends: Sequence[int]) -> list[float]:
    """Per-token rewards: each value lands on the first token whose text reaches its
    offset, i.e. the token holding the character just before it (an offset inside a
    multi-character token lands on that token). Offsets past the text, or at 0, land on
    the last token or the first."""
    rewards = [0.0] * len(char_ends)
    if not char_ends:
        return rewards
    for offset, value in placed:
        position = next((i for i, end in enumerate(char_ends) if end >= offset), len(char_ends) - 1)
        rewards[position] += value
    return rewards


class ResponseScorer(Protocol):
    """A trained reward model's scores (ragtrain.training.reward_model.RewardModelScorer)."""

    def score(
        self, conversations: Sequence[list[dict]], responses: Sequence[str]
    ) -> list[float]: ...


def score_samples(
    records: list[dict], scorer: ResponseScorer, source: str | Path, model: str | None = None
) -> dict:
    """Score every sample of `records` (read from `source`) with a reward model, in place
    (`reward_model` on each sample), in one batch of calls; returns the stats: the mean
    score, and the mean of each question's best one (what best-of-n would reach)."""
    for i, record in enumerate(records, start=1):
        for field in ("prompt", "samples"):
            if field not in record:
                raise RecordError(source, i, f"no field {field!r} (expected sample records)")
    flat = [(r, s) for r in records for s in r["samples"]]
    scores = scorer.score([r["prompt"] for r, _ in flat], [s["text"] for _, s in flat])
    for (_, sample), score in zip(flat, scores, strict=True):
        sample["reward_model"] = round(score, 6)
    best = [max(s["reward_model"] for s in r["samples"]) for r in records if r["samples"]]
    return {
        "n_examples": len(records),
        "n_samples": len(flat),
        "reward_model": model,
        "mean_reward": round(sum(scores) / len(scores), 4) if scores else None,
        "mean_best_reward": round(sum(best) / len(best), 4) if best else None,
    }
