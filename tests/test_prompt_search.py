"""Prompt search with a scripted model (the real engine runs in the recipe's e2e test):
the beam, critiques and rewrites, the held-out re-scoring, and resuming a killed search
without asking the model again for what it had answered."""

import pytest

from ragtrain.data.prompts import PromptTemplate
from ragtrain.generation.calls import CachedChat
from ragtrain.generation.engine import Completion, Sampling
from ragtrain.generation.prompt_search import PromptSearch, parse_rewrite
from ragtrain.judges.model import ModelJudge, RawCache
from tests.conftest import ROOT

PROMPTS = ROOT / "resources/prompts"
GENERATION = {"max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0, "top_k": -1}
PARAMS = {"beam": 2, "rewrites": 2, "steps": 3, "critique_examples": 2,
          "train_questions": 4, "holdout_questions": 3, "seed": 5}  # fmt: skip


class ScriptedModel:
    """A model whose answers are good exactly when its system prompt says GOOD; as its
    own score judge it rates good answers 5, others 2; its rewrites add GOOD. Counts the
    conversations it is asked; `fail_after` calls raise (a killed job)."""

    def __init__(self, fail_after=None):
        self.asked = 0
        self.calls = 0
        self.fail_after = fail_after

    def chat(self, conversations, sampling, seeds=None, prefixes=None):
        if self.fail_after is not None and self.calls == self.fail_after:
            raise RuntimeError("killed")
        self.calls += 1
        self.asked += len(conversations)
        return [
            [Completion(self.reply(conv, seed + k), 3) for k in range(sampling.n)]
            for conv, seed in zip(conversations, seeds, strict=True)
        ]

    @staticmethod
    def reply(conv, seed):
        last = conv[-1]["content"]
        if last.startswith("Rate how well"):
            return "Score: 5" if "Response: GOOD" in last else "Score: 2"
        if last.startswith("An assistant was given"):
            return "It should be GOOD."
        if last.startswith("This was the assistant's system prompt"):
            old = conv[0]["content"].split("system prompt")[0]
            return f'Here is the new prompt: "Be GOOD, version {seed % 97}. {old[:10]}"'
        system = conv[0]["content"] if conv[0]["role"] == "system" else ""
        return "GOOD answer" if "GOOD" in system else "bad answer"


def questions(n=10):
    return [{"id": f"q{i}", "question": f"Who is {i}?", "answers": [f"A{i}"]} for i in range(n)]


def search(model, tmp_path, **params):
    def load():
        return model

    chat = CachedChat(load, "fp", RawCache(tmp_path / "calls.jsonl"))
    judge = ModelJudge(
        "score",
        {"retries": 1},
        load,
        PromptTemplate(PROMPTS / "judge_score.jinja"),
        Sampling.from_params(GENERATION),
        "fp",
        RawCache(tmp_path / "judge.jsonl"),
    )
    return PromptSearch(
        chat,
        judge,
        user=PromptTemplate(PROMPTS / "question.jinja"),
        critique=PromptTemplate(PROMPTS / "prompt_critique.jinja"),
        rewrite=PromptTemplate(PROMPTS / "prompt_rewrite.jinja"),
        sampling=Sampling.from_params(GENERATION),
        params={**PARAMS, **params},
    )


def test_rewrites_that_score_higher_rank_first(tmp_path):
    records, stats = search(ScriptedModel(), tmp_path).run(questions(), ["Be helpful."])
    # Step 1: the seed (2.0); steps 2 and 3: two rewrites per kept prompt.
    assert [r["step"] for r in records].count(0) == 1
    assert [r["step"] for r in records].count(1) == 2
    assert [r["step"] for r in records].count(2) == 4  # beam 2 x rewrites 2
    best, seed = records[0], next(r for r in records if r["step"] == 0)
    assert "GOOD" in best["prompt"] and best["holdout_score"] == 5.0
    assert seed["train_score"] == 2.0 and seed["holdout_score"] == 2.0 and seed["parent"] is None
    assert seed["rank"] == len(records)
    assert all(r["parent"] for r in records if r["step"] > 0)
    assert stats["best_seed_holdout_score"] == 2.0
    assert stats["best"]["holdout_score"] == 5.0
    assert stats["judge_replies"]["parsed_first_try"] == stats["judge_replies"]["n"]
    # Train and held-out questions are disjoint seeded samples.
    assert (stats["train_questions"], stats["holdout_questions"]) == (4, 3)


def test_a_killed_search_resumes_without_repeating_model_calls(tmp_path):
    whole = ScriptedModel()
    expected, _ = search(whole, tmp_path / "whole").run(questions(), ["Be helpful."])

    killed = ScriptedModel(fail_after=4)
    with pytest.raises(RuntimeError, match="killed"):
        search(killed, tmp_path / "run").run(questions(), ["Be helpful."])
    again = ScriptedModel()
    records, stats = search(again, tmp_path / "run").run(questions(), ["Be helpful."])
    assert records == expected
    # Between them the two runs asked exactly what one uninterrupted run asks.
    assert killed.asked + again.asked == whole.asked
    assert 0 < again.asked < whole.asked
    assert stats["model_calls"]["from_cache"] > 0


def test_too_few_questions_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="need 7 questions, the dataset has 5"):
        search(ScriptedModel(), tmp_path).run(questions(5), ["Be helpful."])


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ('Here is the rewritten prompt: "Answer briefly."', "Answer briefly."),
        ("Here's a better one:\nAnswer briefly.", "Answer briefly."),
        ("Answer briefly: cite the documents.", "Answer briefly: cite the documents."),
        ("   ", ""),
    ],
)
def test_parse_rewrite(raw, parsed):
    assert parse_rewrite(raw) == parsed
