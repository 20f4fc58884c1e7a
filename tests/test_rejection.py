"""Rejection sampling: best-of-n selection, and the segment beam search (scripted
generator for its logic, the tiny model through the HF backend for its wiring)."""

import pytest

from ragtrain.core.seeds import stable_seed
from ragtrain.data.prompts import PromptTemplate
from ragtrain.generation.engine import Completion, HFGenerator, Throughput, device_defaults
from ragtrain.generation.judge import dev_ids
from ragtrain.graph.kinds import GENERATION_DEFAULTS
from ragtrain.training.rejection import (
    SEGMENT_BEAM_DEFAULTS,
    best_of_n,
    segment_beam,
    segment_beam_demos,
    split_records,
)
from ragtrain.training.rewards import Rewards


class Marks:
    """A fine-grained source: +1 for each '+', -1 for each '-', placed where it stands."""

    name = "marks"

    def __init__(self):
        self.calls = 0

    def score(self, examples, responses):
        self.calls += 1
        return [
            [(i + 1, 1.0 if ch == "+" else -1.0) for i, ch in enumerate(text) if ch in "+-"]
            for text in responses
        ]


def marks_rewards(weight=1.0):
    rewards = Rewards([{"kind": "length"}])
    source = Marks()
    rewards.sources = [(source, weight), *rewards.sources]
    return rewards, source


@pytest.fixture
def template(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("Q: {{ question }}")
    return PromptTemplate(path)


# -- best of n --------------------------------------------------------------------------


def sample_record(i, texts, tokens=None, split=None):
    record = {
        "id": f"q{i}",
        "question": f"question {i}?",
        "answers": ["Kesh"],
        "prompt": [{"role": "user", "content": f"Q: question {i}?"}],
        "samples": [
            {"text": t, "num_tokens": (tokens or [5] * len(texts))[k]} for k, t in enumerate(texts)
        ],
    }
    if split:
        record["split"] = split
    return record


def completion(record):
    return record["completion"][0]["content"]


def test_best_of_n_picks_the_highest_total_reward():
    records = [
        sample_record(0, ["a -", " b ++ ", "c +"], split="train"),
        sample_record(1, ["-", "--", "d"], split="dev"),
    ]
    rewards, _ = marks_rewards()
    out, stats = best_of_n(records, rewards, {})
    assert [completion(r) for r in out] == ["b ++", "d"]  # stripped
    assert [r["reward"] for r in out] == [2.0, 0.0]
    assert [r["split"] for r in out] == ["train", "dev"]
    assert out[0]["prompt"] == records[0]["prompt"]
    assert out[0]["completion"][0]["role"] == "assistant"
    assert split_records(out) == ([out[0]], [out[1]])
    assert stats["n_examples"] == stats["n_kept"] == 2
    assert stats["mean_best_reward"] == 1.0
    assert stats["mean_sample_reward"] == round((-1 + 2 + 1 - 1 - 2 + 0) / 6, 4)
    assert stats["by_source"]["marks"] == {"best": 1.0, "all": stats["mean_sample_reward"]}
    assert stats["by_source"]["length"] == {"best": 0.0, "all": 0.0}


def test_best_of_n_weights_and_sums_the_sources():
    """length: -1 per word past 1; marks weighted 0.5."""
    records = [sample_record(0, ["x ++++", "+++", "x y z ++++++"])]
    rewards, _ = marks_rewards(weight=0.5)
    rewards.sources[1] = (rewards.sources[1][0].__class__(max_words=1, per_word=1.0), 1.0)
    out, _ = best_of_n(records, rewards, {})
    # totals: 2 - 1 = 1, 1.5 - 0 = 1.5, 3 - 3 = 0
    assert completion(out[0]) == "+++" and out[0]["reward"] == 1.5


def test_best_of_n_ties_fewest_tokens_then_first():
    records = [
        sample_record(0, ["+ a", "+ b", "+ c"], tokens=[7, 4, 4]),
        sample_record(1, ["a", "b"], tokens=[3, 3]),
        # Different texts, same reward: the shorter in tokens.
        sample_record(2, ["+ " * 3, "+ " * 3 + "+-"], tokens=[9, 2]),
    ]
    out, _ = best_of_n(records, marks_rewards()[0], {})
    assert [completion(r) for r in out] == ["+ b", "a", "+ + + +-"]
    assert [r["sample"] for r in out] == [1, 0, 1]


def test_best_of_n_min_reward_drops_and_counts():
    records = [
        sample_record(0, ["+", "++"]),
        sample_record(1, ["-", ""]),  # the empty sample is never chosen
        sample_record(2, ["", "  "]),  # nothing to choose
    ]
    out, stats = best_of_n(records, marks_rewards()[0], {"min_reward": 1.5})
    assert [r["id"] for r in out] == ["q0"]
    assert (stats["n_kept"], stats["n_below_min_reward"], stats["n_without_sample"]) == (1, 1, 1)
    assert stats["mean_best_reward"] == 0.5  # (2 - 1) / 2: before the threshold
    assert stats["mean_kept_reward"] == 2.0
    out, stats = best_of_n(records, marks_rewards()[0], {"min_reward": -1.0})
    assert [r["id"] for r in out] == ["q0", "q1"] and stats["n_below_min_reward"] == 0


def test_best_of_n_splits_as_the_judge_where_records_have_none():
    records = [sample_record(i, ["+"]) for i in range(20)]
    out, stats = best_of_n(records, marks_rewards()[0], {"dev_fraction": 0.2, "seed": 5})
    held = dev_ids([r["id"] for r in records], 0.2, 5)
    assert len(held) == 4 and {r["id"] for r in out if r["split"] == "dev"} == held
    assert stats["n_dev"] == 4


def test_best_of_n_resumes_its_scored_shards(tmp_path):
    records = [sample_record(i, ["+", "++" if i % 2 else "-"]) for i in range(5)]
    rewards, source = marks_rewards()
    first, stats = best_of_n(records, rewards, {"shard_size": 2}, work=tmp_path)
    assert source.calls == 3 and stats["shards"] == 3 and stats["resumed_shards"] == 0
    assert sorted(p.name for p in tmp_path.iterdir())[0] == "shard-00000.jsonl"
    again, stats = best_of_n(records, rewards, {"shard_size": 2}, work=tmp_path)
    assert source.calls == 3 and stats["resumed_shards"] == 3
    assert again == first


# -- segment beam: the search, with a scripted generator --------------------------------


def done(text, tokens=1):
    return (text, "eos", tokens)


def cut(text, tokens=1):
    return (text, "stop", tokens)


class Scripted:
    """Continuations by (question, prefix); records each call."""

    def __init__(self, script):
        self.script = script
        self.calls = []
        self.throughput = Throughput()

    def chat(self, conversations, sampling, seeds=None, prefixes=None):
        self.calls.append({"prefixes": list(prefixes), "seeds": list(seeds), "sampling": sampling})
        out = []
        for conversation, prefix in zip(conversations, prefixes, strict=True):
            question = conversation[-1]["content"].removeprefix("Q: ")
            scripted = self.script[question][prefix]
            assert len(scripted) == sampling.n
            out.append([Completion(t, n, finish_reason=r) for t, r, n in scripted])
        self.throughput.add(sum(c.num_tokens for o in out for c in o), 0.5)
        return out


def beam_params(**overrides):
    return {"beam": 2, "samples_per_beam": 3, "max_segments": 3, "seed": 7, **overrides}


def examples(*questions):
    return [{"id": f"e-{q}", "question": q, "answers": []} for q in questions]


SCRIPT = {
    "one": {
        # Step 1: C (2) and A (1) go on, B (0) is pruned.
        "": [cut("A+. "), cut("B. "), cut(" C++. ")],
        # Step 2, C first: the beam in reward order.
        "C++.": [cut(" D-. "), cut(" E+. "), done(" F.")],
        # An empty continuation ends the answer as it is.
        "A+.": [cut(" G+++. "), cut(" H. "), done("")],
        # Step 3 (the last): G (4) and E (3) were kept, D and H (1) pruned.
        "A+. G+++.": [cut(" I. "), cut(" I. "), cut(" J+. ")],
        "C++. E+.": [cut(" K. "), done(" L++"), cut(" M. ")],
    },
    # Two samples say the same: one beam entry (then the answer ends).
    "four": {
        "": [cut("A++. "), cut("A++. "), cut("B+. ")],
        "A++.": [done(" a.")] * 3,
        "B+.": [done(" b.")] * 3,
    },
    # Every answer ends at the first segment: one step only.
    "two": {"": [done("Yes+."), done("No."), done("Yes+.")]},
    # No answer ever ends: the best partial one after max_segments.
    "three": {
        "": [cut("P. ", 3), cut("Q+\n", 2), ("R-", "length", 8)],
        "Q+\n": [cut("S+. ", 4), cut("S+. ", 4), cut("T. ", 1)],
        "P.": [cut(" U. ", 1), cut(" V++. ", 1), cut(" W-. ", 1)],
        "Q+\nS+.": [cut(" x. ", 5), cut(" y. ", 4), cut(" z. ", 4)],
        "P. V++.": [cut(" -. "), cut(" --. "), cut(" ---. ")],
    },
}


def test_segment_beam_prunes_to_the_best_accumulated_rewards(template):
    generator = Scripted(SCRIPT)
    rewards, _ = marks_rewards()
    records, stats = segment_beam(
        examples("one"), generator, template, rewards, beam_params(max_segments=3)
    )
    # One call per step; the prefixes without trailing spaces, the beam best first.
    assert [c["prefixes"] for c in generator.calls] == [
        [""],
        ["C++.", "A+."],
        ["A+. G+++.", "C++. E+."],
    ]
    sampling = generator.calls[0]["sampling"]
    assert sampling.n == 3 and sampling.stop == tuple(SEGMENT_BEAM_DEFAULTS["segment_stop"])
    assert sampling.temperature == SEGMENT_BEAM_DEFAULTS["temperature"]
    # Finished: C++. F. (2), A+. (1), C++. E+. L++ (5): the best finished one wins over
    # the partial A+. G+++. J+. (5).
    [record] = records
    assert completion(record) == "C++. E+. L++"
    assert record["reward"] == 5.0 and record["segments"] == 3 and record["finished"]
    assert record["prompt"] == [{"role": "user", "content": "Q: one"}]
    assert stats["n_finished"] == 1 and stats["mean_segments"] == 3.0
    assert stats["generated_tokens"] == 3 * 5 == generator.throughput.tokens


def test_segment_beam_stops_when_every_answer_has_ended(template):
    generator = Scripted(SCRIPT)
    records, _ = segment_beam(
        examples("two"), generator, template, marks_rewards()[0], beam_params()
    )
    assert len(generator.calls) == 1
    assert [(completion(r), r["segments"], r["finished"]) for r in records] == [("Yes+.", 1, True)]


def test_segment_beam_keeps_one_of_equal_partial_answers(template):
    generator = Scripted(SCRIPT)
    records, _ = segment_beam(
        examples("four"), generator, template, marks_rewards()[0], beam_params()
    )
    assert [c["prefixes"] for c in generator.calls] == [[""], ["A++.", "B+."]]
    assert completion(records[0]) == "A++. a."


def test_segment_beam_without_an_ending_takes_the_best_partial_answer(template):
    generator = Scripted(SCRIPT)
    records, stats = segment_beam(
        examples("three"), generator, template, marks_rewards()[0], beam_params()
    )
    # Step 1: Q+ (1), P (0); R- (-1, cut by length: goes on) pruned. Step 2: duplicate
    # S+. kept once, Q+ S+. (2), P. V++. (2, fewer tokens: 4 against 6) first.
    assert generator.calls[2]["prefixes"] == ["P. V++.", "Q+\nS+."]
    # Step 3: Q+ S+. y. and z. tie at 2 with 10 tokens: the first sampled.
    [record] = records
    assert completion(record) == "Q+\nS+. y."
    assert (record["segments"], record["finished"], record["reward"]) == (3, False, 2.0)
    assert stats["n_finished"] == 0


def test_segment_beam_batches_examples_and_seeds_each_beam_entry(template):
    generator = Scripted(SCRIPT)
    params = beam_params()
    records, stats = segment_beam(
        examples("two", "one", "three"), generator, template, marks_rewards()[0], params
    )
    assert [len(c["prefixes"]) for c in generator.calls] == [3, 4, 4]
    example_seed = {q: stable_seed(7, f"e-{q}") for q in ("one", "two", "three")}
    assert generator.calls[0]["seeds"] == [
        stable_seed(example_seed[q], 0, 0) for q in ("two", "one", "three")
    ]
    assert generator.calls[1]["seeds"] == [
        stable_seed(example_seed[q], 1, k) for q in ("one", "three") for k in (0, 1)
    ]
    # The same answers as searched alone.
    assert [completion(r) for r in records] == ["Yes+.", "C++. E+. L++", "Q+\nS+. y."]
    assert stats["n_examples"] == stats["n_kept"] == 3
    assert stats["mean_reward"] == round((1 + 5 + 2) / 3, 4)
    # Sharded one example at a time: a call per example and step, same answers.
    generator = Scripted(SCRIPT)
    again, _ = segment_beam(
        examples("two", "one", "three"),
        generator,
        template,
        marks_rewards()[0],
        {**params, "shard_size": 1},
    )
    assert len(generator.calls) == 1 + 3 + 3 and again == records


def test_segment_beam_demos_resumes_without_loading(template, tmp_path):
    loaded = []

    def load():
        loaded.append(Scripted(SCRIPT))
        return loaded[-1]

    def never():
        raise AssertionError("must not be loaded")

    params = beam_params(shard_size=2, dev_fraction=0.5)
    exs = examples("two", "one", "three")
    first, stats = segment_beam_demos(
        exs, load, template, params, tmp_path, load_rewards=lambda: marks_rewards()[0]
    )
    assert len(loaded) == 1 and stats["shards"] == 2 and stats["resumed_shards"] == 0
    held = dev_ids([e["id"] for e in exs], 0.5, 7)
    assert {r["id"] for r in first if r["split"] == "dev"} == held
    again, stats = segment_beam_demos(exs, never, template, params, tmp_path, load_rewards=never)
    assert again == first and stats["resumed_shards"] == 2
    assert stats["generated_tokens"] > 0 and stats["tokens_per_second"] == 0


# -- segment beam: the HF backend on the tiny model ------------------------------------


@pytest.mark.slow
def test_segment_beam_with_the_tiny_model(tiny_model, template):
    generator = HFGenerator(
        str(tiny_model), device_defaults({**GENERATION_DEFAULTS, "batch_size": 8})
    )
    rewards = Rewards([{"kind": "length", "max_words": 3, "per_word": 0.1}])
    exs = examples("Where was Marel Dovant born?", "Who founded Orvane Systems?")
    params = {
        "beam": 2,
        "samples_per_beam": 2,
        "max_segments": 2,
        "max_new_tokens": 5,
        "segment_stop": ["e"],  # frequent enough in the random model's text to be hit
        "temperature": 1.0,
        "top_k": -1,
    }
    records, stats = segment_beam(exs, generator, template, rewards, params)
    assert [r["id"] for r in records] == [e["id"] for e in exs]
    for record, ex in zip(records, exs, strict=True):
        text = completion(record)
        assert text and text == text.strip()
        assert 1 <= record["segments"] <= 2
        # The reward is the final answer's own.
        assert record["reward"] == pytest.approx(
            rewards.totals([{**ex, "prompt": record["prompt"]}], [text])[0], abs=1e-6
        )
    # Up to 1 + 2 beam entries per example, 2 samples of at most 5 tokens each.
    assert 0 < stats["generated_tokens"] <= 2 * 3 * 2 * 5
    assert stats["generated_tokens"] == generator.throughput.tokens
    assert stats["tokens_per_second"] > 0
    # Reproducible: the seeds fix the draws.
    again, _ = segment_beam(exs, generator, template, rewards, params)
    assert again == records


def test_segment_beam_checks_its_settings(template):
    with pytest.raises(ValueError, match="beam"):
        segment_beam(examples("one"), Scripted(SCRIPT), template, marks_rewards()[0], {"beam": 0})
