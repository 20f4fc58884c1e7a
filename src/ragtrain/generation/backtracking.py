"""Backtracking correction (Feng et al., "Training Large Language Models for
Retrieval-Augmented Question Answering through Backtracking Correction", ICLR 2025): a
RAG answer as a multi-step decision process, one step per retrieved document (useful or
not, and what it says), then the answer; step data by error sampling.

The step format lives in the prompt template (resources/prompts/stepwise.jinja): its
macros `step(index, decision, note)` and `answer(text)` and its words `useful`,
`not_useful` and `refusal` write the steps, and the parser is built from the same
macros, so the wording can change without code and a template whose steps do not read
back is refused at config check (`check_step_template`).

The truth of a step: a document is useful iff it contains a gold answer; its note is
the sentence that holds the answer (or what the document is about). The answer step is
right iff the answer contains a gold answer, or refuses when no document is useful.

Step data for step K (`step_pairs`): the state is the question, the documents and the
true steps 1..K-1 (the start of the assistant's turn); the current model continues it
`n` times (temperature 1.0 by default) to the end of its answer; each continuation is
judged at step K. A pair's chosen side is the continuation right at step K with the most
right steps after it, or, where none was sampled, the true continuation (the
self-correction); its rejected side a continuation wrong at step K. Prompts are kept as
chat-templated text (`meta.chat_template_applied`), as the published BackTracking files
are, since a DPO prompt here ends inside the assistant's turn.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtrain.data.prompts import PromptTemplate
from ragtrain.judges.rules import doc_text
from ragtrain.metrics.qa import contains_answer, is_refusal

STEP_TEMPLATE = "stepwise"
# The product kinds that read a step template.
STEP_PRODUCTS = ("step_sft", "step_pairs")
STEP_SFT_DEFAULTS: dict[str, Any] = {"prompt": STEP_TEMPLATE, "dev_fraction": 0.15, "seed": 13}
STEP_PAIRS_DEFAULTS: dict[str, Any] = {
    "prompt": STEP_TEMPLATE,
    "n": 4,
    # The paper samples its errors at temperature 1.0; over `generation.temperature`.
    "temperature": 1.0,
    "pairs_per_example": 2,
    "shard_size": 64,
    "dev_fraction": 0.15,
    "seed": 13,
}
PAIR_FILE_DEFAULTS: dict[str, Any] = {"format": "backtracking", "dev_fraction": 0.05, "seed": 13}
# What a step template defines (see the module's docstring).
MACROS = ("step", "answer")
WORDS = ("useful", "not_useful", "refusal")
# Stand-ins rendered through the macros to find where each field goes.
_HOLES = {"index": "\x01", "decision": "\x02", "note": "\x03", "answer": "\x04"}


@dataclass(frozen=True)
class Step:
    index: int
    useful: bool
    note: str


@dataclass(frozen=True)
class Parsed:
    """What a step-format text says. `error` is None when the whole text follows the
    format (the steps in order, then the answer, nothing after); otherwise it says what
    broke, and `steps` / `answer` hold what was read before."""

    steps: tuple[Step, ...]
    answer: str | None
    error: str | None


def _pattern(rendered: str, groups: dict[str, str]) -> re.Pattern:
    """A line regex from a macro rendered over the holes: the literal parts as written
    (runs of spaces as any spacing), each hole its group."""
    parts, at = [], 0
    holes = {hole: name for name, hole in _HOLES.items()}
    for i, char in enumerate(rendered):
        if char in holes:
            literal = rendered[at:i]
            parts.append(r"\s*".join(re.escape(p) for p in re.split(r"\s+", literal)))
            parts.append(groups[holes[char]])
            at = i + 1
    tail = rendered[at:]
    parts.append(r"\s*".join(re.escape(p) for p in re.split(r"\s+", tail)))
    return re.compile("".join(parts), re.IGNORECASE)


class StepFormat:
    """The step format of a template: writes steps and reads them back."""

    def __init__(self, path: str | Path):
        self.template = PromptTemplate(path)
        self.path = self.template.path
        module = self.template.module()
        missing = [m for m in MACROS if not callable(getattr(module, m, None))] + [
            w for w in WORDS if not isinstance(getattr(module, w, None), str)
        ]
        if missing:
            raise ValueError(
                f"{self.path}: a step template defines the macros step(index, decision,"
                f" note) and answer(text) and the words useful, not_useful and refusal;"
                f" missing: {', '.join(missing)}"
            )
        self._step, self._answer = module.step, module.answer
        self.useful, self.not_useful = module.useful.strip(), module.not_useful.strip()
        self.refusal = module.refusal.strip()
        if not self.useful or not self.not_useful or self.useful.lower() == self.not_useful.lower():
            raise ValueError(f"{self.path}: `useful` and `not_useful` must be two different words")
        decisions = sorted((self.useful, self.not_useful), key=len, reverse=True)
        probe = self._render_step(_HOLES["index"], _HOLES["decision"], _HOLES["note"])
        for name in ("index", "decision", "note"):
            if probe.count(_HOLES[name]) != 1:
                raise ValueError(
                    f"{self.path}: the step macro must write its {name} exactly once"
                    f" (it writes {probe.count(_HOLES[name])})"
                )
        note_last = probe.rstrip().endswith(_HOLES["note"])
        self._step_re = _pattern(
            probe,
            {
                "index": r"(?P<index>\d+)",
                "decision": "(?P<decision>" + "|".join(re.escape(d) for d in decisions) + ")",
                "note": r"(?P<note>.*)" if note_last else r"(?P<note>.*?)",
            },
        )
        answer_probe = str(self._answer(_HOLES["answer"])).strip()
        if answer_probe.count(_HOLES["answer"]) != 1:
            raise ValueError(f"{self.path}: the answer macro must write its text exactly once")
        self._answer_re = _pattern(answer_probe, {"answer": r"(?P<answer>.*)"})

    def _render_step(self, index, decision, note) -> str:
        return str(self._step(index, decision, note)).strip()

    def step_line(self, step: Step) -> str:
        note = " ".join(step.note.split())  # one line
        return self._render_step(step.index, self.useful if step.useful else self.not_useful, note)

    def answer_line(self, answer: str) -> str:
        return str(self._answer(" ".join(answer.split()))).strip()

    def render(self, steps: list[Step] | tuple[Step, ...], answer: str | None) -> str:
        lines = [self.step_line(s) for s in steps]
        if answer is not None:
            lines.append(self.answer_line(answer))
        return "\n".join(lines)

    def parse(self, text: str, k: int | None = None) -> Parsed:
        """Read a step-format text; `k`, the number of documents, also checks the count.
        A text that breaks the format gives an error value, never an exception."""
        steps: list[Step] = []
        answer = None
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        for n, line in enumerate(lines, 1):
            if answer is not None:
                return Parsed(tuple(steps), answer, f"line {n}: text after the answer")
            match = self._step_re.fullmatch(line)
            if match:
                index, due = int(match["index"]), len(steps) + 1
                if index != due:
                    return Parsed(tuple(steps), None, f"line {n}: step {index} where {due} was due")
                useful = match["decision"].lower() == self.useful.lower()
                steps.append(Step(index, useful, match["note"].strip()))
                continue
            match = self._answer_re.fullmatch(line)
            if match:
                answer = match["answer"].strip()
                continue
            return Parsed(tuple(steps), None, f"line {n}: neither a step nor the answer")
        if answer is None:
            return Parsed(tuple(steps), None, "no answer line")
        if k is not None and len(steps) != k:
            return Parsed(tuple(steps), answer, f"{len(steps)} steps for {k} documents")
        return Parsed(tuple(steps), answer, None)

    def check(self) -> None:
        """Steps written by the macros read back as written (ValueError otherwise)."""
        steps = (
            Step(1, True, "Ana Vell is a surveyor at Brudern Holdings - since 1951."),
            Step(2, False, "about Kipem Foundry: a telegraphy company"),
            Step(3, True, "x"),
        )
        for answer in ("surveyor", self.refusal):
            text = self.render(steps, answer)
            parsed = self.parse(text, len(steps))
            if parsed != Parsed(steps, answer, None):
                raise ValueError(
                    f"{self.path}: the steps it writes do not read back: {text!r} reads as {parsed}"
                )


def check_step_template(path: str | Path) -> str | None:
    """Why the template at `path` is not a step template (None if it is one)."""
    try:
        StepFormat(path).check()
    except ValueError as e:
        return str(e)
    return None


# -- the truth ------------------------------------------------------------------------


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def is_useful(doc: dict, answers: list[str]) -> bool:
    return bool(answers) and bool(contains_answer(doc_text(doc), answers))


def true_steps(example: dict) -> tuple[tuple[Step, ...], bool]:
    """Each document's true step (useful iff it holds a gold answer; the note, the
    sentence that holds it, or what the document is about), and whether any is useful."""
    steps = []
    answers = example["answers"]
    for i, doc in enumerate(example.get("docs") or [], 1):
        useful = is_useful(doc, answers)
        if useful:
            held = [s for s in _sentences(doc.get("text", "")) if contains_answer(s, answers)]
            note = held[0] if held else doc.get("text", "")
        else:
            note = f"about {doc.get('title') or ' '.join(doc.get('text', '').split()[:6])}"
        steps.append(Step(i, useful, note))
    return tuple(steps), any(s.useful for s in steps)


def true_text(example: dict, fmt: StepFormat) -> str:
    """The true steps, then the first gold answer where a document holds one (the
    refusal otherwise)."""
    steps, any_useful = true_steps(example)
    return fmt.render(steps, example["answers"][0] if any_useful else fmt.refusal)


def answer_right(answer: str | None, example: dict, any_useful: bool) -> bool:
    """The answer step: a gold answer contained, or a refusal where no document helps."""
    if answer is None:
        return False
    if is_refusal(answer):
        return not any_useful
    return bool(example["answers"]) and bool(contains_answer(answer, example["answers"]))


def step_verdicts(parsed: Parsed, example: dict) -> list[bool]:
    """Right or wrong at each step 1..k+1 (k documents, then the answer); a step the text
    never reached (a broken format) is wrong."""
    truth, any_useful = true_steps(example)
    verdicts = [
        i < len(parsed.steps) and parsed.steps[i].useful == step.useful
        for i, step in enumerate(truth)
    ]
    complete = len(parsed.steps) == len(truth)
    verdicts.append(complete and answer_right(parsed.answer, example, any_useful))
    return verdicts


# -- SFT on the step format -------------------------------------------------------------


def step_sft_records(
    examples: list[dict], fmt: StepFormat, params: dict
) -> tuple[list[dict], dict]:
    """SFT records: each question's true steps and answer as the completion of the step
    prompt; (records with their split, stats)."""
    from ragtrain.generation.judge import dev_ids

    params = {**STEP_SFT_DEFAULTS, **params}
    _check_docs(examples)
    held = dev_ids([ex["id"] for ex in examples], params["dev_fraction"], params["seed"])
    records = [
        {
            "id": ex["id"],
            "prompt": fmt.template.conversation(ex),
            "completion": [{"role": "assistant", "content": true_text(ex, fmt)}],
            "split": "dev" if ex["id"] in held else "train",
        }
        for ex in examples
    ]
    truths = [true_steps(ex) for ex in examples]
    useful = [s.useful for steps, _ in truths for s in steps]
    stats = {
        "n_examples": len(records),
        "docs_per_question": len(examples[0]["docs"]),
        "useful_docs": round(sum(useful) / len(useful), 4),
        "refusals": sum(not any_useful for _, any_useful in truths),
    }
    return records, stats


def _check_docs(examples: list[dict]) -> None:
    if not examples:
        raise ValueError("no questions")
    k = len(examples[0].get("docs") or [])
    for ex in examples:
        if len(ex.get("docs") or []) != k or not k:
            raise ValueError(
                f"example {ex['id']!r} has {len(ex.get('docs') or [])} documents where"
                f" {examples[0]['id']!r} has {k}: the step format takes the same number"
                " (at least one) for every question"
            )


# -- step data by error sampling -------------------------------------------------------


def step_items(examples: list[dict], fmt: StepFormat, step: int) -> list[dict]:
    """The states of step `step`: each question with its true steps before it as the
    start of the assistant's turn (`prefix`)."""
    _check_docs(examples)
    k = len(examples[0]["docs"])
    if not 1 <= step <= k + 1:
        raise ValueError(f"step: expected 1..{k + 1} ({k} documents, then the answer), got {step}")
    items = []
    for ex in examples:
        steps, _ = true_steps(ex)
        # No trailing newline: chat templates drop the trailing space of a continued
        # message (vLLM's and transformers' `continue_final_message`), so the model starts
        # step K with the line break itself.
        prefix = "\n".join(fmt.step_line(s) for s in steps[: step - 1])
        # The item's id seeds its samples: one seed per (question, step).
        items.append({**ex, "id": f"{ex['id']}@step{step}", "question_id": ex["id"],
                      "prefix": prefix})  # fmt: skip
    return items


def step_pairs(
    records: list[dict], fmt: StepFormat, step: int, chat_text: Callable[[list], str], params: dict
) -> tuple[list[dict], dict]:
    """DPO pairs of step `step` from sampled continuations (`records`: step_items with
    their `samples`), and stats: the error rate at every step the continuations reach.
    `chat_text` renders a conversation with the model's chat template, ready for the
    assistant's turn."""
    from ragtrain.generation.judge import dev_ids

    params = {**STEP_PAIRS_DEFAULTS, **params}
    ids = [r["question_id"] for r in records]
    held = dev_ids(ids, params["dev_fraction"], params["seed"])
    k = len(records[0]["docs"])
    wrong_at = [0] * (k + 1)
    pairs, n_samples, corrected, all_right, broken = [], 0, 0, 0, 0
    for r in records:
        judged = []
        for sample in r["samples"]:
            # After a prefix the continuation keeps its leading line break.
            continuation = sample["text"].rstrip() if r["prefix"] else sample["text"].strip()
            parsed = fmt.parse(r["prefix"] + continuation, k)
            verdicts = step_verdicts(parsed, r)
            for j in range(step - 1, k + 1):
                wrong_at[j] += not verdicts[j]
            broken += parsed.error is not None
            judged.append((continuation, parsed, verdicts))
        n_samples += len(judged)
        right = [
            (sum(v[step:]), i)
            for i, (_, parsed, v) in enumerate(judged)
            if v[step - 1] and parsed.error is None
        ]
        wrong = list(dict.fromkeys(c for c, _, v in judged if not v[step - 1] and c.strip()))
        if not wrong:
            # Every sample right at this step (or only empty ones wrong): nothing to correct.
            all_right += 1
            continue
        if right:
            chosen, source = judged[max(right, key=lambda x: (x[0], -x[1]))[1]][0], "sampled"
        else:
            # The self-correction: the true step and the true steps after it.
            truth = true_text(r, fmt).splitlines()
            chosen, source = "\n".join(truth[step - 1 :]), "corrected"
            chosen = "\n" + chosen if r["prefix"] else chosen
            corrected += 1
        prompt = chat_text(fmt.template.conversation(r)) + r["prefix"]
        for j, rejected in enumerate(wrong[: params["pairs_per_example"]]):
            pairs.append(
                {
                    "id": f"{r['question_id']}-step{step}-{j}",
                    "prompt": prompt,
                    "chosen": chosen,
                    "rejected": rejected,
                    "split": "dev" if r["question_id"] in held else "train",
                    "meta": {"chat_template_applied": True, "step": step, "chosen_source": source},
                }
            )
    stats = {
        "step": step,
        "steps": k + 1,
        "n_questions": len(records),
        "n_samples": n_samples,
        # Share of the samples wrong at each step from this one on (a step the text never
        # reached counts as wrong); the answer is step k + 1.
        "error_rate": round(wrong_at[step - 1] / n_samples, 4) if n_samples else None,
        "error_rate_by_step": {
            str(j + 1): round(wrong_at[j] / n_samples, 4) if n_samples else None
            for j in range(step - 1, k + 1)
        },
        "broken_format": broken,
        "questions_all_right": all_right,
        "self_corrections": corrected,
        "n_pairs": len(pairs),
    }
    return pairs, stats


# -- the model's own steps, evaluated ---------------------------------------------------


def score_steps(text: str, example: dict, fmt: StepFormat) -> dict:
    """What evaluation keeps of a step-format prediction: the answer read from it (None
    where there is no answer line), whether the format held, and each document step's
    decision right or wrong."""
    k = len(example.get("docs") or [])
    parsed = fmt.parse(text, k)
    verdicts = step_verdicts(parsed, example)
    return {
        "answer": parsed.answer,
        "format_ok": parsed.error is None,
        "error": parsed.error,
        "decisions": verdicts[:k],
    }


def aggregate_steps(scored: list[dict]) -> dict:
    """Per-step decision accuracy over the predictions, and the share in format."""
    if not scored:
        return {}
    k = len(scored[0]["decisions"])
    per_step = [sum(s["decisions"][i] for s in scored) / len(scored) for i in range(k)]
    return {
        "format_ok": round(sum(s["format_ok"] for s in scored) / len(scored), 4),
        "decision_accuracy": round(sum(per_step) / k, 4) if k else None,
        "decision_accuracy_by_step": {str(i + 1): round(a, 4) for i, a in enumerate(per_step)},
    }
