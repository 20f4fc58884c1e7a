"""Model judges with a scripted generator (the real engine runs in the e2e test): the
regex, retries with fresh seeded samples, the fallback of unparsed items, the raw-output
cache and the checks of a judge node."""

import pytest

from ragtrain.data.prompts import PromptTemplate
from ragtrain.generation.engine import Completion, Sampling
from ragtrain.judges.model import (
    MODEL_JUDGE_DEFAULTS,
    ModelJudge,
    RawCache,
    check_judge,
    verdict_stats,
)
from tests.conftest import ROOT

PROMPTS = ROOT / "resources/prompts"
GENERATION = {"max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0, "top_k": -1}


class Scripted:
    """Replies from a queue per question, recording the sampling and seeds asked for."""

    def __init__(self, replies: dict[str, list[str]]):
        self.replies = {q: list(r) for q, r in replies.items()}
        self.calls = []

    def chat(self, conversations, sampling, seeds=None, prefixes=None):
        self.calls.append((sampling.temperature, list(seeds)))
        self.prefixes = prefixes
        out = []
        for conv in conversations:
            question = conv[-1]["content"].split("Question: ")[1].split("\n")[0]
            out.append([Completion(self.replies[question].pop(0), 3)])
        return out


def judge(kind, replies, cache=None, **node):
    generator = Scripted(replies)
    template = PromptTemplate(PROMPTS / f"judge_{kind}.jinja")
    sampling = Sampling.from_params(GENERATION)
    return ModelJudge(kind, node, generator, template, sampling, "fp", cache), generator


def label_item(qid, question="Q1"):
    return {"id": qid, "question": question, "response": "Kesh", "answers": ["Kesh"]}


def test_label_parsed_case_insensitively_from_the_first_try():
    j, gen = judge("label", {"Q1": ["Label: CORRECT because it says Kesh"]})
    (result,) = j.judge([label_item("1")])
    assert result == {
        "id": "1",
        "verdict": "correct",
        "raw": ["Label: CORRECT because it says Kesh"],
        "tries": 1,
        "parsed": True,
    }
    assert gen.calls[0][0] == 0.0  # the first try is greedy


def test_retries_sample_fresh_with_a_seed_per_try_then_fall_back():
    replies = {"Q1": ["hmm", "Label: maybe", "Label: refuse"], "Q2": ["no idea"] * 3}
    j, gen = judge("label", replies, retries=2, unparsed="incorrect")
    first, second = j.judge([label_item("1"), label_item("2", "Q2")])
    assert (first["verdict"], first["tries"], first["parsed"]) == ("refuse", 3, True)
    assert first["raw"] == replies["Q1"]
    assert (second["verdict"], second["tries"], second["parsed"]) == ("incorrect", 3, False)
    retry = MODEL_JUDGE_DEFAULTS["retry_temperature"]
    assert [t for t, _ in gen.calls] == [0.0, retry, retry]
    seeds = [s for _, s in gen.calls]
    assert seeds[1] != seeds[2]  # each retry of an item is a new sample
    assert verdict_stats([first, second]) == {
        "n": 2,
        "parsed_first_try": 0,
        "parsed_after_retry": 1,
        "unparsed": 1,
        "mean_tries": 3.0,
    }


def test_unparsed_items_are_dropped_by_default():
    j, _ = judge("label", {"Q1": ["?"] * 6})
    (result,) = j.judge([label_item("1")])
    assert result["verdict"] is None and result["tries"] == 1 + MODEL_JUDGE_DEFAULTS["retries"]


def test_pick_takes_only_a_candidate_s_number():
    item = {"id": "1", "question": "Q1", "candidates": ["a", "b", "c"]}
    j, _ = judge("pick", {"Q1": ["Best: Prediction 7", "Best: Prediction 2"]})
    (result,) = j.judge([item])
    assert (result["verdict"], result["tries"]) == (2, 2)
    with pytest.raises(ValueError, match="1 to 9 candidates, got 10"):
        j.judge([{**item, "candidates": ["x"] * 10}])


def test_score_is_a_digit_from_1_to_5():
    item = {"id": "1", "question": "Q1", "response": "Kesh"}
    j, _ = judge("score", {"Q1": ["Score: 0", "Score: 9", "Score: 4"]})
    assert j.judge([item])[0]["verdict"] == 4


def test_relevance_reads_the_documents():
    item = {"id": "1", "question": "Q1", "docs": [{"title": "Marel", "text": "born in Kesh"}]}
    j, _ = judge("relevance", {"Q1": ["Verdict: present"]})
    assert j.judge([item])[0]["verdict"] == "present"
    rendered = j.template.conversation(item)[0]["content"]
    assert "(Title: Marel) born in Kesh" in rendered


def test_a_changed_regex_is_applied_to_cached_outputs_without_asking_again(tmp_path):
    cache_file = tmp_path / "cache.jsonl"
    j, _ = judge("label", {"Q1": ["Verdict: correct"] * 2}, RawCache(cache_file), retries=1)
    assert j.judge([label_item("1")])[0]["verdict"] is None
    assert j.asked == 2
    # A regex that reads those outputs: parsed from the cache, the model not asked.
    # The engine is not even loaded: a loader that fails shows it is never called.
    j2, _ = judge("label", {}, RawCache(cache_file), retries=1, pattern=r"Verdict: (\w+)")
    j2.generator = lambda: pytest.fail("the engine was loaded for cached replies")
    assert j2.judge([label_item("1")])[0]["verdict"] == "correct"
    assert j2.asked == 0


def test_the_cache_key_holds_the_model_weights(tmp_path):
    cache_file = tmp_path / "cache.jsonl"
    j, _ = judge("label", {"Q1": ["Label: correct"]}, RawCache(cache_file))
    j.judge([label_item("1")])
    other, gen = judge("label", {"Q1": ["Label: incorrect"]}, RawCache(cache_file))
    other.fingerprint = "retrained"
    assert other.judge([label_item("1")])[0]["verdict"] == "incorrect"
    assert len(gen.calls) == 1


def test_judge_node_checks(tmp_path):
    label_prompt = PROMPTS / "judge_label.jinja"
    assert check_judge("label", {}, label_prompt) is None
    bare = tmp_path / "bare.jinja"
    bare.write_text("Question: {{ question }} Answer: {{ response }}")
    assert check_judge("label", {}, bare) == (
        f"prompt: {bare} does not read answers, which a label judge needs"
        " (its fields: answers, question, response)"
    )
    assert "has no group" in check_judge("label", {"pattern": "Label: correct"}, label_prompt)
    assert "is not a regex" in check_judge("label", {"pattern": "Label: ("}, label_prompt)
    assert check_judge("label", {"unparsed": "wrong"}, label_prompt) == (
        "unparsed: expected 'drop' or a verdict (correct / incorrect / refuse), got 'wrong'"
    )
    assert check_judge("score", {"unparsed": 3}, PROMPTS / "judge_score.jinja") is None
    assert check_judge("label", {}, tmp_path / "none.jinja").startswith("prompt: no template")


def test_a_reply_prefix_is_continued_and_read_with_the_reply(tmp_path):
    """`reply_prefix`: the model continues "Score: ", so it only has to say the digit."""
    item = {"id": "1", "question": "Q1", "response": "Kesh"}
    j, gen = judge("score", {"Q1": ["4"]}, RawCache(tmp_path / "c.jsonl"), reply_prefix="Score: ")
    (result,) = j.judge([item])
    assert gen.prefixes == ["Score: "]
    assert (result["verdict"], result["raw"]) == (4, ["Score: 4"])
    # The prefix is part of the request: without it the cached reply is not reused.
    plain, gen2 = judge("score", {"Q1": ["Score: 2"]}, RawCache(tmp_path / "c.jsonl"))
    assert plain.judge([item])[0]["verdict"] == 2 and gen2.calls
