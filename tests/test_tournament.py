"""The judge's tournament with a scripted pick judge (the real engine runs in the recipe's
e2e test): brackets of 3 with byes, shuffled positions, unresolved questions dropped,
the statistics, the products made from the results, and resuming a killed tournament."""

import re

import pytest

from ragtrain.data.prompts import PromptTemplate
from ragtrain.generation.engine import Completion, Sampling
from ragtrain.generation.products import preference_pairs, sft_data
from ragtrain.generation.tournament import rejected_of, run_tournament
from ragtrain.judges.model import ModelJudge, RawCache
from tests.conftest import ROOT

PROMPTS = ROOT / "resources/prompts"
GENERATION = {"max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0, "top_k": -1}


class ScriptedPicker:
    """Picks the candidate with the highest `quality N`; never parses for a question
    containing `unjudgeable`; records the positions the best candidate was shown at."""

    def __init__(self, fail_after=None):
        self.asked = 0
        self.calls = 0
        self.fail_after = fail_after
        self.positions = []

    def chat(self, conversations, sampling, seeds=None, prefixes=None):
        if self.fail_after is not None and self.calls == self.fail_after:
            raise RuntimeError("killed")
        self.calls += 1
        self.asked += len(conversations)
        out = []
        for conv in conversations:
            text = conv[-1]["content"]
            if "unjudgeable" in text:
                out.append([Completion("I cannot decide.", 3)])
                continue
            qualities = [int(q) for q in re.findall(r"Prediction \d+: quality (\d+)", text)]
            best = qualities.index(max(qualities)) + 1
            self.positions.append(best)
            out.append([Completion(f"Best: Prediction {best}", 3)])
        return out


def record(qid, strategies, question=None):
    samples = [{"text": f"quality {q}", "strategy": name} for name, q in strategies]
    return {
        "id": qid,
        "question": question or f"Question {qid}?",
        "answers": ["gold answer"],
        "prompt": [{"role": "user", "content": f"Question {qid}?"}],
        "docs": [{"title": "t", "text": "d"}] * 6,
        "samples": samples,
    }


NINE = [(f"s{i}", i) for i in range(9)]  # s8 is the best


def judge(model, tmp_path, **node):
    return ModelJudge(
        "pick",
        {"retries": 1, **node},
        lambda: model,
        PromptTemplate(PROMPTS / "judge_pick.jinja"),
        Sampling.from_params(GENERATION),
        "fp",
        RawCache(tmp_path / "pick.jsonl"),
    )


def test_nine_candidates_meet_in_three_brackets_then_a_final(tmp_path):
    records = [record(f"q{i}", NINE) for i in range(20)]
    model = ScriptedPicker()
    results, stats = run_tournament(records, judge(model, tmp_path), {"seed": 1})
    assert len(results) == 20
    for r in results:
        assert r["winner"]["strategy"] == "s8"
        assert [c["round"] for c in r["losers"]].count(1) == 6
        assert [c["round"] for c in r["losers"]].count(2) == 2
        assert [b["round"] for b in r["brackets"]] == [1, 1, 1, 2]
    # 20 questions x (3 + 1) brackets, every verdict parsed at once.
    assert stats["brackets"]["n"] == 80 and stats["brackets"]["parsed_first_try"] == 80
    assert stats["candidates_per_question"] == {"mean": 9, "min": 9, "max": 9}
    assert stats["win_share"]["s8"] == {
        "wins": 20, "share": 1.0, "candidates": 20, "wins_per_candidate": 1.0
    }  # fmt: skip
    # Shuffled: the winner was shown at every position of its brackets, not at a fixed one.
    assert set(model.positions) == {1, 2, 3}


def test_byes_and_any_number_of_candidates(tmp_path):
    records = [record("four", NINE[:4]), record("one", NINE[:1]), record("two", NINE[:2])]
    results, stats = run_tournament(records, judge(ScriptedPicker(), tmp_path), {"seed": 2})
    by_id = {r["id"]: r for r in results}
    assert by_id["four"]["winner"]["strategy"] == "s3"
    assert by_id["one"]["winner"]["strategy"] == "s0" and by_id["one"]["losers"] == []
    assert by_id["two"]["winner"]["strategy"] == "s1"
    # Four: a bracket of 3 and a bye, then a final of 2.
    assert [len(b["candidates"]) for b in by_id["four"]["brackets"]] == [3, 2]
    assert stats["brackets"]["byes"] == 1


def test_an_unresolved_bracket_drops_its_question_and_is_counted(tmp_path):
    records = [record("ok", NINE), record("bad", NINE, question="an unjudgeable one")]
    model = ScriptedPicker()
    results, stats = run_tournament(records, judge(model, tmp_path), {})
    assert [r["id"] for r in results] == ["ok"]
    assert stats["unresolved_dropped"] == 1 and stats["n_resolved"] == 1
    # Each of the bad question's three first-round brackets was tried twice (1 retry).
    assert stats["brackets"]["unparsed"] == 3


def test_the_gold_answer_can_join(tmp_path):
    records = [record("q", [("a", 1), ("b", 2)])]
    records[0]["answers"] = ["quality 99"]
    results, stats = run_tournament(records, judge(ScriptedPicker(), tmp_path), {"gold": True})
    assert results[0]["winner"]["strategy"] == "gold"
    assert stats["candidates_per_question"]["max"] == 3


def test_winner_is_the_demonstration_and_losers_the_rejected(tmp_path):
    records = [record(f"q{i}", NINE) for i in range(3)]
    results, _ = run_tournament(records, judge(ScriptedPicker(), tmp_path), {})
    for r in results:
        r["rejected"] = rejected_of(r, "first_round")
        r["split"] = "train"
    sft, sft_stats = sft_data(results, {})
    assert [s["completion"][0]["content"] for s in sft] == ["quality 8"] * 3
    assert sft_stats["sources"] == {"winner/s8": 3}
    pairs, pair_stats = preference_pairs(results, {"pairs_per_example": None})
    assert len(pairs) == 3 * 6 and pair_stats["pairs"] == {"round 1 loser": 18}
    assert all(p["chosen"][0]["content"] == "quality 8" for p in pairs)
    capped, _ = preference_pairs(results, {"pairs_per_example": 2})
    assert len(capped) == 6
    # RA-IT: the gold answer for every question, from the same records.
    gold, gold_stats = sft_data(results, {"select": "gold"})
    assert {g["completion"][0]["content"] for g in gold} == {"gold answer"}
    assert gold_stats["sources"] == {"gold": 3}


def test_a_killed_tournament_resumes_without_repeating_verdicts(tmp_path):
    records = [record(f"q{i}", NINE) for i in range(100)]
    whole = ScriptedPicker()
    expected, _ = run_tournament(records, judge(whole, tmp_path / "whole"), {"seed": 3})
    killed = ScriptedPicker(fail_after=3)  # after 3 chunks of 64 brackets
    with pytest.raises(RuntimeError, match="killed"):
        run_tournament(records, judge(killed, tmp_path / "run"), {"seed": 3})
    again = ScriptedPicker()
    results, _ = run_tournament(records, judge(again, tmp_path / "run"), {"seed": 3})
    assert results == expected
    assert killed.asked + again.asked == whole.asked
    assert killed.asked == 3 * 64


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="bracket: expected 2 to 9"):
        run_tournament([], judge(ScriptedPicker(), tmp_path), {"bracket": 1})
    with pytest.raises(ValueError, match="rejected: expected one of"):
        run_tournament([], judge(ScriptedPicker(), tmp_path), {"rejected": "some"})
