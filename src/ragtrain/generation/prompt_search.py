"""Prompt search: a beam search over system prompts, scored by a `score` judge.

As in the self-demonstrations paper (Finlayson et al. 2025, its prompt optimisation):
start from seed prompts; each step, the model answers a seeded sample of training
questions under every prompt of the pool, a `score` judge rates each answer 1-5, and a
prompt's score is the mean of its parsed ratings. The `beam` best prompts of the pool
are kept; for each, the model critiques its answers to the `critique_examples`
best-rated questions (one conversation, one turn per example) and is then asked, in the
same conversation, for `rewrites` new prompts sampled at `rewrite_temperature`. The
rewrites are the next step's pool. After the last step every prompt scored is scored
again on held-out questions: the output lists them best first by that score.

Every model call goes through a cache (ragtrain.generation.calls) and every request is
seeded, so a killed search resumes without asking the model again for what it answered.
"""

from __future__ import annotations

import hashlib
import random
import re
import statistics
from collections.abc import Callable
from dataclasses import replace

from ragtrain.core.seeds import DEFAULT_SEED, stable_seed
from ragtrain.data.prompts import PromptTemplate
from ragtrain.generation.calls import CachedChat
from ragtrain.generation.engine import Sampling
from ragtrain.judges.model import ModelJudge, verdict_stats

PROMPT_SEARCH_DEFAULTS = {
    "seeds": ["sys_rag"],
    "beam": 5,
    "critique_examples": 2,
    "rewrites": 2,
    "rewrite_temperature": 1.0,
    "rewrite_max_new_tokens": 160,
    "steps": 5,
    "train_questions": 30,
    "holdout_questions": 30,
    "critique_prompt": "prompt_critique",
    "rewrite_prompt": "prompt_rewrite",
    "seed": DEFAULT_SEED,
}
# "Here is the rewritten prompt:" and the like, before the prompt itself.
_PREAMBLE = re.compile(r"^\s*(here is|here's)[^:\n]*:\s*", re.IGNORECASE)


def prompt_id(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:12]


def parse_rewrite(text: str) -> str:
    """A rewrite's prompt: a leading `Here is ...:` and enclosing quotes removed."""
    text = _PREAMBLE.sub("", text.strip(), count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def system_conversation(system: str, user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


class PromptSearch:
    """One search: the model's calls (`chat`), the score judge, the templates."""

    def __init__(
        self,
        chat: CachedChat,
        judge: ModelJudge,
        user: PromptTemplate,
        critique: PromptTemplate,
        rewrite: PromptTemplate,
        sampling: Sampling,
        params: dict,
        progress: Callable[[str], None] = lambda message: None,
    ):
        self.chat, self.judge = chat, judge
        self.user, self.critique, self.rewrite = user, critique, rewrite
        self.sampling = sampling  # the answers' and critiques'
        self.params = {**PROMPT_SEARCH_DEFAULTS, **params}
        self.progress = progress
        self.verdicts: list[dict] = []

    def answers(self, prompts: list[str], questions: list[dict]) -> dict[tuple[str, str], str]:
        """(prompt, question id) -> the model's answer under that system prompt."""
        pairs = [(p, q) for p in prompts for q in questions]
        texts = self.chat.chat(
            [system_conversation(p, self.user.render(q)) for p, q in pairs],
            self.sampling,
            [stable_seed(self.params["seed"], "answer", prompt_id(p), q["id"]) for p, q in pairs],
        )
        return {(p, q["id"]): t[0] for (p, q), t in zip(pairs, texts, strict=True)}

    def scores(
        self, prompts: list[str], questions: list[dict]
    ) -> tuple[dict[str, float | None], dict[tuple[str, str], int | None], dict]:
        """Each prompt's mean rating over `questions` (None: no rating parsed), each
        answer's rating, and the answers."""
        answers = self.answers(prompts, questions)
        items = [
            {
                "id": f"{prompt_id(p)}/{q['id']}",
                "question": q["question"],
                "response": answers[(p, q["id"])],
                "answers": q.get("answers", []),
                "docs": q.get("docs", []),
            }
            for p in prompts
            for q in questions
        ]
        verdicts = self.judge.judge(items)
        self.verdicts.extend(verdicts)
        ratings = {}
        for (p, q), v in zip(((p, q) for p in prompts for q in questions), verdicts, strict=True):
            ratings[(p, q["id"])] = v["verdict"]
        means = {}
        for p in prompts:
            parsed = [ratings[(p, q["id"])] for q in questions if ratings[(p, q["id"])] is not None]
            means[p] = round(statistics.mean(parsed), 4) if parsed else None
        return means, ratings, answers

    def rewrites(
        self,
        kept: list[str],
        questions: list[dict],
        ratings: dict[tuple[str, str], int | None],
        answers: dict[tuple[str, str], str],
        step: int,
    ) -> list[tuple[str, str]]:
        """(new prompt, parent) pairs: each kept prompt critiqued on its best-rated
        questions, then rewritten, in one conversation per kept prompt."""
        n_examples = self.params["critique_examples"]
        conversations, examples = [], []
        for p in kept:
            # Its best-rated questions first; a seeded order among equal ratings.
            order = sorted(
                questions,
                key=lambda q: (
                    -(ratings[(p, q["id"])] or 0),
                    stable_seed(self.params["seed"], "critique", p, q["id"]),
                ),
            )
            examples.append(order[:n_examples])
            conversations.append([])
        for turn in range(n_examples):
            asking = [i for i, ex in enumerate(examples) if turn < len(ex)]
            for i in asking:
                q = examples[i][turn]
                message = self.critique.render(
                    {**q, "prompt": kept[i], "response": answers[(kept[i], q["id"])]}
                )
                conversations[i].append({"role": "user", "content": message})
            replies = self.chat.chat(
                [conversations[i] for i in asking],
                self.sampling,
                [stable_seed(self.params["seed"], "critique", step, kept[i], turn) for i in asking],
            )
            for i, reply in zip(asking, replies, strict=True):
                conversations[i].append({"role": "assistant", "content": reply[0]})
        for i, p in enumerate(kept):
            conversations[i].append({"role": "user", "content": self.rewrite.render({"prompt": p})})
        sampling = replace(
            self.sampling,
            n=self.params["rewrites"],
            temperature=self.params["rewrite_temperature"],
            max_new_tokens=self.params["rewrite_max_new_tokens"],
        )
        texts = self.chat.chat(
            conversations,
            sampling,
            [stable_seed(self.params["seed"], "rewrite", step, p) for p in kept],
        )
        pairs = zip(kept, texts, strict=True)
        parsed = [(parse_rewrite(t), parent) for parent, outs in pairs for t in outs]
        return [(prompt, parent) for prompt, parent in parsed if prompt]

    def run(self, examples: list[dict], seed_prompts: list[str]) -> tuple[list[dict], dict]:
        """(prompt records best first, stats)."""
        params = self.params
        n_train, n_holdout = params["train_questions"], params["holdout_questions"]
        if len(examples) < n_train + n_holdout:
            raise ValueError(
                f"prompt search: train_questions {n_train} + holdout_questions {n_holdout}"
                f" need {n_train + n_holdout} questions, the dataset has {len(examples)}"
            )
        sample = random.Random(params["seed"]).sample(examples, n_train + n_holdout)
        train, holdout = sample[:n_train], sample[n_train:]
        found: dict[str, dict] = {}  # prompt -> its record, in the order first scored
        pool = [(p, None) for p in dict.fromkeys(seed_prompts)]
        for step in range(params["steps"]):
            pool = [(p, parent) for p, parent in pool if p not in found]
            if not pool:
                self.progress(f"step {step + 1}: no new prompt to score; search ends")
                break
            prompts = [p for p, _ in pool]
            means, ratings, answers = self.scores(prompts, train)
            for p, parent in pool:
                found[p] = {
                    "prompt": p,
                    "step": step,
                    "parent": prompt_id(parent) if parent else None,
                    "train_score": means[p],
                }
            ranked = sorted(
                prompts,
                key=lambda p: (
                    means[p] is None,
                    -(means[p] or 0),
                    stable_seed(params["seed"], "rank", step, p),
                ),
            )
            kept = ranked[: params["beam"]]
            self.progress(
                f"step {step + 1}/{params['steps']}: {len(prompts)} prompts scored, best"
                f" {means[kept[0]]}"
            )
            if step + 1 < params["steps"]:
                pool = self.rewrites(kept, train, ratings, answers, step)
        held, _, _ = self.scores(list(found), holdout)
        records = sorted(
            found.values(),
            key=lambda r: (held[r["prompt"]] is None, -(held[r["prompt"]] or 0),
                           -(r["train_score"] or 0), r["step"]),
        )  # fmt: skip
        records = [
            {"rank": i, "id": prompt_id(r["prompt"]), **r, "holdout_score": held[r["prompt"]]}
            for i, r in enumerate(records, start=1)
        ]
        seeds = [r for r in records if r["step"] == 0]
        stats = {
            "n_prompts": len(records),
            "steps_run": 1 + max(r["step"] for r in records),
            "train_questions": n_train,
            "holdout_questions": n_holdout,
            "best": {k: records[0][k] for k in ("id", "step", "train_score", "holdout_score")},
            "best_seed_holdout_score": max(
                (r["holdout_score"] for r in seeds if r["holdout_score"] is not None),
                default=None,
            ),
            "model_calls": {"asked": self.chat.asked, "from_cache": self.chat.reused},
            "judge_replies": verdict_stats(self.verdicts),
        }
        return records, stats
