"""NLI scorers: the probability that a premise entails a hypothesis, from a local model.

One interface (`NLIScorer.scores` / `entails`, built by `load_nli(params)`) over three
kinds of model, chosen by `scorer`:

- `classifier`: a sequence-pair classifier trained on NLI (an mDeBERTa / RoBERTa MNLI
  model): the softmax over its labels, at the entailment label (`entailment_index`, else
  the one label of `config.id2label` that names entailment);
- `seq2seq`: a TRUE-style T5 fed `premise: P hypothesis: H`: the probability of "1"
  against "0" as the first decoder token (a softmax over those two tokens only);
- `llm`: a causal LM asked a yes/no question (a Jinja template with the fields `premise`
  and `hypothesis`, `resources/prompts/nli_yes_no.jinja` by default), inside the
  tokenizer's chat template when it has one: the probability of "Yes" against "No" as
  the next token (each with and without a leading space, summed, then renormalised over
  the two answers).

Pairs are scored in batches of `batch_size`, in eval mode, without gradients. The premise
is cut (at a token boundary) so that the whole input fits in `max_length` tokens; the
hypothesis is kept whole. The same inputs give the same scores; a batch scores each pair
as it would alone (up to float rounding: the padding differs).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import jinja2
import jinja2.meta

from ragtrain.core.security import trust_remote_code

# prompts in the checkout's resources/ (src/ragtrain/judges/ is three folders down).
PROMPTS = Path(__file__).resolve().parents[3] / "resources" / "prompts"

NLI_DEFAULTS = {
    "batch_size": 16,
    "max_length": 512,
    "dtype": "auto",  # float32 on CPU, bfloat16 on GPU
    "entailment_index": None,  # classifier: the entailment label's index (None: from id2label)
    "template": "nli_yes_no",  # llm: a name in resources/prompts/, or a path to a .jinja file
}
# `trust_remote_code` may be given too; unset, it is what the model folder records
# (ragtrain.core.security).
TEMPLATE_FIELDS = ("premise", "hypothesis")
# The answers the llm scorer compares. After a chat template's assistant header the answer
# starts without a space; after plain text, with one: both spellings count.
YES = ("Yes", " Yes")
NO = ("No", " No")

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)


class NLIScorer:
    """The probability that each premise entails its hypothesis. Subclasses set
    `auto_class` and `_batch` (one batch of pairs -> a tensor of probabilities)."""

    kind = ""
    auto_class = ""

    def __init__(self, model, tokenizer, params: dict):
        self.params = {**NLI_DEFAULTS, **params}
        self.batch_size = _positive_int(self.params, "batch_size")
        self.max_length = _positive_int(self.params, "max_length")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.name = str(self.params.get("path") or type(model).__name__)
        self._setup()

    def _setup(self) -> None:
        """Checks and lookups that need the model and its tokenizer."""

    @classmethod
    def check_params(cls, params: dict) -> None:
        """Checks that need no model (run before one loads)."""

    @classmethod
    def load(cls, path: str | Path, params: dict) -> NLIScorer:
        import torch
        import transformers

        params = {**NLI_DEFAULTS, **params, "path": str(path)}
        trust = trust_remote_code(path, params.get("trust_remote_code"))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = params["dtype"]
        if dtype == "auto":
            dtype = "bfloat16" if device == "cuda" else "float32"
        kwargs = {"trust_remote_code": trust, "local_files_only": True}
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, **kwargs)
        auto = getattr(transformers, cls.auto_class)
        if dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(
                f"NLI scorer: dtype must be auto, bfloat16, float16 or float32, got {dtype!r}"
            )
        model = auto.from_pretrained(path, dtype=getattr(torch, dtype), **kwargs)
        return cls(model.to(device), tokenizer, params)

    def scores(self, premises: list[str], hypotheses: list[str]) -> list[float]:
        """P(premise entails hypothesis) for each pair, in [0, 1]."""
        import torch

        if len(premises) != len(hypotheses):
            raise ValueError(
                f"NLI scorer: {len(premises)} premises but {len(hypotheses)} hypotheses"
            )
        for i, (p, h) in enumerate(zip(premises, hypotheses, strict=True)):
            if not isinstance(p, str) or not isinstance(h, str):
                raise TypeError(
                    f"NLI scorer: pair {i}: premise and hypothesis must be strings, got "
                    f"{type(p).__name__} and {type(h).__name__}"
                )
        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(premises), self.batch_size):
                end = start + self.batch_size
                probs = self._batch(premises[start:end], hypotheses[start:end])
                out.extend(probs.float().cpu().tolist())
        return out

    def entails(self, premise: str, hypothesis: str) -> float:
        return self.scores([premise], [hypothesis])[0]

    def _batch(self, premises: list[str], hypotheses: list[str]):
        raise NotImplementedError

    def _cut(self, premise: str, room: int) -> str:
        """The premise cut to its first `room` tokens; unchanged when it fits."""
        ids = self.tokenizer(premise, add_special_tokens=False)["input_ids"]
        if len(ids) <= room:
            return premise
        return self.tokenizer.decode(ids[: max(room, 0)], skip_special_tokens=True)

    def _length(self, text: str, special: bool = True) -> int:
        return len(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _single_token(self, word: str) -> int | None:
        """The id of `word` when the tokenizer writes it as one known token."""
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        unk = self.tokenizer.unk_token_id
        return ids[0] if len(ids) == 1 and (unk is None or ids[0] != unk) else None


class ClassifierNLI(NLIScorer):
    """An NLI sequence-pair classifier: softmax over the labels at the entailment label."""

    kind = "classifier"
    auto_class = "AutoModelForSequenceClassification"

    def _setup(self) -> None:
        self.entailment_index = entailment_index(
            self.model.config, self.params["entailment_index"], self.name
        )

    def _batch(self, premises, hypotheses):
        enc = self.tokenizer(
            premises,
            hypotheses,
            padding=True,
            truncation="only_first",
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        logits = self.model(**enc).logits.float()
        return logits.softmax(-1)[:, self.entailment_index]


def entailment_index(config, index: int | None, name: str = "classifier") -> int:
    """`index` checked against the model's labels, or the one label naming entailment
    ("entailment", "ENTAILMENT"; not "not_entailment")."""
    labels = {int(i): str(v) for i, v in (getattr(config, "id2label", None) or {}).items()}
    n = getattr(config, "num_labels", len(labels))
    if index is None:
        found = [
            i
            for i, label in sorted(labels.items())
            if "entail" in label.lower() and not re.search(r"\bnot|\bnon", label.lower())
        ]
        if len(found) != 1:
            raise ValueError(
                f"NLI classifier {name}: cannot tell the entailment label from config.id2label "
                f"{labels}; set `entailment_index` to its index"
            )
        return found[0]
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
        raise ValueError(
            f"NLI classifier {name}: entailment_index must be an int in [0, {n}), got {index!r}"
            f" (labels: {labels})"
        )
    return index


class Seq2SeqNLI(NLIScorer):
    """A TRUE-style T5: P("1") / (P("1") + P("0")) as the first decoder token."""

    kind = "seq2seq"
    auto_class = "AutoModelForSeq2SeqLM"

    def _setup(self) -> None:
        ids = {word: self._single_token(word) for word in ("1", "0")}
        bad = [w for w, i in ids.items() if i is None]
        if bad or ids["1"] == ids["0"]:
            raise ValueError(
                f"seq2seq NLI scorer {self.name}: its tokenizer does not write "
                f"{' and '.join(repr(w) for w in bad or ids)} as one known token each; "
                "a TRUE-style model answers with the tokens '1' and '0'"
            )
        self.one, self.zero = ids["1"], ids["0"]
        config = self.model.config
        start = getattr(config, "decoder_start_token_id", None)
        if start is None:
            start = getattr(self.model.generation_config, "decoder_start_token_id", None)
        if start is None:
            raise ValueError(f"seq2seq NLI scorer {self.name}: no decoder_start_token_id")
        self.start = start

    @staticmethod
    def text(premise: str, hypothesis: str) -> str:
        return f"premise: {premise} hypothesis: {hypothesis}"

    def _batch(self, premises, hypotheses):
        import torch

        texts = []
        for p, h in zip(premises, hypotheses, strict=True):
            room = self.max_length - self._length(self.text("", h))
            texts.append(self.text(self._cut(p, room), h))
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        start = torch.full((len(texts), 1), self.start, dtype=torch.long, device=self.device)
        logits = self.model(**enc, decoder_input_ids=start).logits[:, 0, :].float()
        return torch.sigmoid(logits[:, self.one] - logits[:, self.zero])


class LLMYesNoNLI(NLIScorer):
    """A causal LM asked whether the premise supports the hypothesis: P(Yes) / (P(Yes) +
    P(No)) as the next token after the prompt."""

    kind = "llm"
    auto_class = "AutoModelForCausalLM"

    @classmethod
    def check_params(cls, params: dict) -> None:
        load_template(params.get("template", NLI_DEFAULTS["template"]))

    def _setup(self) -> None:
        self.template_path, self.template = load_template(self.params["template"])
        self.yes, self.no = (self._answer_ids(words) for words in (YES, NO))
        if set(self.yes) & set(self.no):
            raise ValueError(f"llm NLI scorer {self.name}: Yes and No share a token")
        tok = self.tokenizer
        tok.padding_side = "left"  # the last position is every row's next-token position
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.chat = getattr(tok, "chat_template", None) is not None
        accepted = inspect.signature(self.model.forward).parameters
        self._positions = "position_ids" in accepted
        self._keep = "logits_to_keep" in accepted

    def _answer_ids(self, words: tuple[str, ...]) -> list[int]:
        ids = sorted({i for i in map(self._single_token, words) if i is not None})
        if not ids:
            raise ValueError(
                f"llm NLI scorer {self.name}: its tokenizer writes none of "
                f"{', '.join(repr(w) for w in words)} as one token"
            )
        return ids

    def prompt(self, premise: str, hypothesis: str) -> str:
        """The prompt text (chat template applied), whose next token is the answer."""
        text = self.template.render(premise=premise, hypothesis=hypothesis).strip()
        if not self.chat:
            return f"{text}\nAnswer:"
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )

    def _batch(self, premises, hypotheses):
        import torch

        special = not self.chat  # a chat template writes its own special tokens
        prompts = []
        for p, h in zip(premises, hypotheses, strict=True):
            room = self.max_length - self._length(self.prompt("", h), special)
            prompts.append(self.prompt(self._cut(p, room), h))
        enc = self.tokenizer(
            prompts, padding=True, add_special_tokens=special, return_tensors="pt"
        ).to(self.device)
        kwargs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if self._positions:  # left padding: count positions from each row's first token
            kwargs["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        if self._keep:
            kwargs["logits_to_keep"] = 1
        logp = self.model(**kwargs).logits[:, -1, :].float().log_softmax(-1)
        yes = logp[:, self.yes].logsumexp(-1)
        no = logp[:, self.no].logsumexp(-1)
        return torch.sigmoid(yes - no)


def template_path(value: str | Path) -> Path:
    """A template name (`nli_yes_no`) in resources/prompts/, or a path to a .jinja file."""
    path = Path(value)
    if path.suffix == ".jinja" or len(path.parts) > 1:
        return path
    return PROMPTS / f"{value}.jinja"


def load_template(value: str | Path) -> tuple[Path, jinja2.Template]:
    """The llm scorer's prompt template, checked to use exactly `premise` and `hypothesis`."""
    path = template_path(value)
    try:
        source = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"NLI prompt template {path} not found") from None
    try:
        fields = jinja2.meta.find_undeclared_variables(_ENV.parse(source))
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"{path}:{e.lineno}: template syntax error: {e.message}") from None
    missing = [f for f in TEMPLATE_FIELDS if f not in fields]
    if missing:
        raise ValueError(
            f"{path}: NLI prompt template lacks the field {' and '.join(missing)}"
            " (it must use {{ premise }} and {{ hypothesis }})"
        )
    extra = sorted(fields - set(TEMPLATE_FIELDS))
    if extra:
        raise ValueError(
            f"{path}: NLI prompt template uses unknown field {', '.join(extra)}"
            " (it gets only premise and hypothesis)"
        )
    return path, _ENV.from_string(source)


SCORERS: dict[str, type[NLIScorer]] = {
    cls.kind: cls for cls in (ClassifierNLI, Seq2SeqNLI, LLMYesNoNLI)
}


def load_nli(params: dict) -> NLIScorer:
    """An NLI scorer from its params: `scorer` (classifier, seq2seq or llm), `path` (a
    local HF model folder) and NLI_DEFAULTS' keys."""
    params = {**NLI_DEFAULTS, **params}
    kind = params.get("scorer")
    if kind not in SCORERS:
        raise ValueError(f"NLI scorer: unknown scorer {kind!r}; known: {', '.join(SCORERS)}")
    _positive_int(params, "batch_size")
    _positive_int(params, "max_length")
    SCORERS[kind].check_params(params)
    path = params.get("path")
    if not path:
        raise ValueError(f"NLI scorer {kind}: `path` (a local model folder) is required")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"NLI scorer {kind}: path {str(path)!r} is not a folder")
    return SCORERS[kind].load(path, params)


def _positive_int(params: dict, key: str) -> int:
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"NLI scorer: {key} must be an int >= 1, got {value!r}")
    return value


class LazyScorer:
    """`load_nli(params)`, loaded on the first `scores` call: a stage whose rewards are
    all resumed from its work folder never loads the model."""

    def __init__(self, params: dict):
        self.params = params
        self.scorer: NLIScorer | None = None

    def scores(self, premises: list[str], hypotheses: list[str]) -> list[float]:
        if self.scorer is None:
            keys = (*NLI_DEFAULTS, "scorer", "path", "trust_remote_code")
            self.scorer = load_nli({k: v for k, v in self.params.items() if k in keys})
        return self.scorer.scores(premises, hypotheses)


class Entailment:
    """Yes/no entailment from a scorer at a `threshold`, each (premise, hypothesis) pair
    scored once per run: rewards and metrics ask the same pairs again and again (a
    partial answer's earlier sentences, a sentence's citations one by one).

    Callers that know the pairs they will ask list them to `prefetch` first, so that the
    scorer sees them in full batches; `entails` then reads the cache (and scores a pair
    it has not seen on its own)."""

    def __init__(self, scorer, threshold: float = 0.5):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"NLI threshold must lie in [0, 1], got {threshold!r}")
        self.scorer = scorer  # anything with scores(premises, hypotheses) -> [0, 1] list
        self.threshold = threshold
        self.probabilities: dict[tuple[str, str], float] = {}
        self.calls = 0  # pairs sent to the scorer (cache misses)

    def prefetch(self, pairs) -> None:
        todo = list(dict.fromkeys(p for p in pairs if p not in self.probabilities))
        if todo:
            scores = self.scorer.scores([p for p, _ in todo], [h for _, h in todo])
            self.calls += len(todo)
            self.probabilities.update(zip(todo, scores, strict=True))

    def probability(self, premise: str, hypothesis: str) -> float:
        self.prefetch([(premise, hypothesis)])
        return self.probabilities[(premise, hypothesis)]

    def entails(self, premise: str, hypothesis: str) -> bool:
        return self.probability(premise, hypothesis) >= self.threshold

    def stats(self) -> dict:
        return {"nli_pairs": len(self.probabilities), "nli_calls": self.calls}
