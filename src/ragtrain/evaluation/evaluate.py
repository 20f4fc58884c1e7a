"""Evaluation: answers for one (model, dataset, retrieval) node, scored per example.

Greedy by default. Sampled answers (a `temperature` above 0, as the self-demos paper
evaluates at 0.5) are seeded per question from the generation seed and the question's
id: a question's answer depends neither on the others nor on batching, and two models
evaluated with the same seed draw their answers with the same per-question seeds.
"""

from __future__ import annotations

import logging

from ragtrain.core.seeds import stable_seed
from ragtrain.data.citations import ALCE_KINDS, alce_kind
from ragtrain.data.prompts import PromptTemplate
from ragtrain.evaluation.judged import judged_metrics, rules_relevance
from ragtrain.generation.backtracking import StepFormat, aggregate_steps, score_steps
from ragtrain.generation.engine import Generator, Sampling
from ragtrain.judges.rules import INCORRECT, label
from ragtrain.metrics.alce import aggregate_alce, mauve_texts, nli_pairs, score_alce
from ragtrain.metrics.qa import aggregate, score_example

log = logging.getLogger(__name__)


def evaluate(
    examples: list[dict],
    generator: Generator,
    template: PromptTemplate,
    params: dict,
    entailment=None,
) -> tuple[list[dict], dict]:
    """Return (prediction records, metrics record). ALCE-shaped examples (ASQA, QAMPARI,
    ELI5 alike) are scored by the ALCE metrics too; `entailment` (an NLI judge,
    ragtrain.judges.nli.Entailment) adds those that need one (citations, claims)."""
    conversations = [template.conversation(ex) for ex in examples]
    sampling = Sampling.from_params(params["generation"])
    seeds = [stable_seed(params["generation"]["seed"], ex["id"]) for ex in examples]
    completions = generator.chat(conversations, sampling, seeds) if conversations else []
    # The step format (backtracking): the answer is read from the answer line, and each
    # document's step is scored against the truth.
    steps_format = StepFormat(template.path) if params.get("answer_format") == "steps" else None
    predictions, scores, step_scores = [], [], []
    for ex, conv, (completion, *_) in zip(examples, conversations, completions, strict=True):
        answer, verdict = completion.text, None
        if steps_format is not None:
            step_scores.append(score_steps(completion.text, ex, steps_format))
            answer = step_scores[-1]["answer"] or ""
        score = score_example(answer, ex["answers"])
        if steps_format is not None and step_scores[-1]["answer"] is None:
            # No answer line: a wrong answer, not a refusal.
            score["refusal"], verdict = False, INCORRECT
        scores.append(score)
        predictions.append(
            {
                "id": ex["id"],
                "question": ex["question"],
                "prompt": conv[-1]["content"],
                "docs": [
                    {"id": d["id"], "title": d.get("title", ""), "score": d.get("score")}
                    for d in ex.get("docs", [])
                ],
                "prediction": completion.text,
                **({"answer": answer, "steps": step_scores[-1]} if steps_format else {}),
                "answers": ex["answers"],
                "scores": score,
                # The `rules` judges' verdicts; a model judge's come in their own file.
                "label": verdict or label(answer, ex["answers"]),
                "relevant": rules_relevance(ex),
                "meta": ex.get("meta", {}),
            }
        )
    alce = alce_metrics(examples, [p["prediction"] for p in predictions], entailment)
    if alce is not None:
        for prediction, alce_scores in zip(predictions, alce.pop("scores"), strict=True):
            prediction["alce"] = alce_scores
    # Per question type (single / multihop / unanswerable in the synthetic data).
    by_type: dict[str, list[dict]] = {}
    for ex, score in zip(examples, scores, strict=True):
        if "type" in ex.get("meta", {}):
            by_type.setdefault(ex["meta"]["type"], []).append(score)
    metrics = {
        "model": params["model"],
        "dataset": params["dataset"],
        "retrieval": params["retrieval"],
        **aggregate(scores),
        **judged_metrics(
            [{**p["scores"], "label": p["label"], "relevant": p["relevant"]} for p in predictions]
        ),
        "judges": {"label": "rules", "relevance": "rules"},
        "by_type": {kind: aggregate(group) for kind, group in sorted(by_type.items())},
        **({"alce": alce} if alce is not None else {}),
        **({"steps": aggregate_steps(step_scores)} if steps_format else {}),
        "generated_tokens": generator.throughput.tokens,
        "tokens_per_second": round(generator.throughput.tokens_per_second, 1),
    }
    log.info("metrics: %s", metrics)
    return predictions, metrics


def alce_metrics(examples: list[dict], texts: list[str], entailment=None) -> dict | None:
    """The ALCE family over the ALCE-shaped examples (None if there are none): per
    example (`scores`, None for the others), over all and per ALCE dataset shape. The NLI
    pairs of every answer go to the judge in one batched call first."""
    shaped = [i for i, ex in enumerate(examples) if alce_kind(ex)]
    if not shaped:
        return None
    if entailment is not None:
        entailment.prefetch(pair for i in shaped for pair in nli_pairs(examples[i], texts[i]))
    scores: list[dict | None] = [None] * len(examples)
    for i in shaped:
        scores[i] = score_alce(examples[i], texts[i], entailment)
    kept = [scores[i] for i in shaped]
    by_kind = {
        kind: aggregate_alce([s for s in kept if s["kind"] == kind])
        for kind in ALCE_KINDS
        if any(s["kind"] == kind for s in kept)
    }
    return {
        "all": aggregate_alce(kept, [mauve_texts(examples[i], texts[i]) for i in shaped]),
        **by_kind,
        "nli": entailment.stats() if entailment is not None else None,
        "scores": scores,
    }
