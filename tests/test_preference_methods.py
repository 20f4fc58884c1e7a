"""KTO, ORPO and SimPO (ragtrain.training.preference) as model kinds of the train stage:
their data (KTO's unpaired pairs and judged samples), class weights, checks and config
errors, the rule's inputs, and a few steps of each on the tiny random Llama."""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path

import pytest
import yaml

from ragtrain.core.records import RecordError, write_jsonl
from ragtrain.core.settings import with_defaults
from ragtrain.graph.config import ConfigError, prepare
from ragtrain.graph.kinds import KINDS
from ragtrain.training import preference
from ragtrain.training.sft_dpo import CURVES, TRAIN_DEFAULTS, train
from tests.conftest import ROOT, snakemake, tiny_config
from tests.test_train import _weights, pairs_file, params, sft_file

KINDS_HERE = ("kto", "orpo", "simpo")


def _msgs(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _prompt(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Document: Item {i} was made in {1900 + i}. When?"}]


def _sample(text: str, label: str) -> dict:
    return {"text": text, "label": label}


def judged_file(path: Path) -> Path:
    """A judge product's records: three train questions, one dev question."""
    records = [
        # Answerable: one right answer (twice, the same once normalised), two wrong.
        {"id": "q0", "answers": ["1900"], "split": "train", "prompt": _prompt(0),
         "samples": [_sample("1900", "correct"), _sample("1900.", "correct"),
                     _sample("1950", "incorrect"), _sample("I don't know", "refuse")]},
        # No right answer: two wrong ones.
        {"id": "q1", "answers": ["1901"], "split": "train", "prompt": _prompt(1),
         "samples": [_sample("1800", "incorrect"), _sample("1700", "incorrect")]},
        # Unanswerable: the refusal is right, a made-up answer wrong.
        {"id": "q2", "answers": [], "split": "train", "prompt": _prompt(2),
         "samples": [_sample("I don't know.", "refuse"), _sample("1999", "incorrect")]},
        {"id": "q3", "answers": ["1903"], "split": "dev", "prompt": _prompt(3),
         "samples": [_sample("1903", "correct"), _sample("1904", "incorrect")]},
    ]  # fmt: skip
    write_jsonl(path, records)
    return path


def _labels(rows: list[dict]) -> tuple[int, int]:
    good = sum(r["label"] for r in rows)
    return good, len(rows) - good


# ---------------------------------------------------------------- KTO's data


def test_kto_unpairs_pairs_each_distinct_answer_once(tmp_path):
    # Two pairs per prompt share their chosen answer: one desirable example, two
    # undesirable ones (TRL's own unpairing would repeat the chosen answer).
    records = [
        {"id": f"q{i}/{k}", "prompt": _prompt(i), "chosen": _msgs(f"{1900 + i}"),
         "rejected": _msgs(f"wrong {k}")}
        for i in range(3) for k in range(2)
    ]  # fmt: skip
    write_jsonl(tmp_path / "pairs.jsonl", records)
    node = with_defaults({"kind": "kto", "sampling": "sequential"}, TRAIN_DEFAULTS)
    rows = preference.kto_rows(tmp_path / "pairs.jsonl", "train", node)
    assert _labels(rows) == (3, 6)
    assert rows[:3] == [
        {"prompt": _prompt(0), "completion": _msgs("1900"), "label": True},
        {"prompt": _prompt(0), "completion": _msgs("wrong 0"), "label": False},
        {"prompt": _prompt(0), "completion": _msgs("wrong 1"), "label": False},
    ]


def test_kto_reads_a_judge_products_samples_of_its_split(tmp_path):
    path = judged_file(tmp_path / "data.jsonl")
    node = with_defaults({"kind": "kto", "sampling": "sequential"}, TRAIN_DEFAULTS)
    train_rows = preference.kto_rows(path, "train", node)
    # q0: "1900" once (desirable), "1950" and the refusal (undesirable); q1: two
    # undesirable; q2 (unanswerable): the refusal desirable, the made-up answer not.
    assert _labels(train_rows) == (2, 5)
    by_answer = {r["completion"][0]["content"]: r["label"] for r in train_rows}
    assert by_answer == {"1900": True, "1950": False, "I don't know": False, "1800": False,
                         "1700": False, "I don't know.": True, "1999": False}  # fmt: skip
    dev_rows = preference.kto_rows(path, "dev", node)
    assert [(r["completion"][0]["content"], r["label"]) for r in dev_rows] == [
        ("1903", True),
        ("1904", False),
    ]


def test_kto_shuffles_its_training_rows_once_by_seed(tmp_path):
    path = pairs_file(tmp_path / "pairs.jsonl", range(20))
    node = with_defaults({"kind": "kto"}, TRAIN_DEFAULTS)  # sampling: random
    first = preference.kto_rows(path, "train", {**node, "seed": 1})
    assert first == preference.kto_rows(path, "train", {**node, "seed": 1})  # resumable
    assert first != preference.kto_rows(path, "train", {**node, "seed": 2})
    kept = preference.kto_rows(path, "train", {**node, "sampling": "sequential"})
    assert first != kept and sorted(map(json.dumps, first)) == sorted(map(json.dumps, kept))
    # Held-out rows keep the file's order.
    assert preference.kto_rows(path, "dev", node) == kept


def test_kto_names_the_line_of_a_file_it_cannot_read(tmp_path):
    path = sft_file(tmp_path / "sft.jsonl", 2)
    with pytest.raises(RecordError, match=r"sft\.jsonl:1: .*kto reads preference pairs"):
        preference.kto_rows(path, "train", {})
    unjudged = tmp_path / "demos.jsonl"
    write_jsonl(unjudged, [{"id": "q0", "answers": ["1"], "prompt": _prompt(0),
                            "samples": [{"text": "1"}]}])  # fmt: skip
    with pytest.raises(RecordError, match=r"demos\.jsonl:1: record 'q0': .*no 'label'"):
        preference.kto_rows(unjudged, "train", {})


def _trl_recommends(desirable, undesirable, n_desirable, n_undesirable) -> bool:
    """TRL's KTOTrainer check (its warning when neither weight is in range), as written
    in trl/trainer/kto_trainer.py."""
    des_low = round(n_undesirable * undesirable / n_desirable, 2)
    des_high = round(n_undesirable * undesirable / n_desirable * 1.33, 2)
    und_low = round(n_desirable * desirable / n_undesirable / 1.33, 2)
    und_high = round(n_desirable * desirable / n_undesirable, 2)
    return des_low <= desirable <= des_high or und_low <= undesirable <= und_high


@pytest.mark.parametrize("counts", [(10, 10), (10, 9), (2, 5), (1, 30), (7, 100), (50, 3)])
def test_null_desirable_weight_balances_the_classes_as_the_kto_paper_advises(counts):
    n_desirable, n_undesirable = counts
    node = with_defaults({"kind": "kto"}, TRAIN_DEFAULTS)
    desirable, undesirable = preference.class_weights(node, n_desirable, n_undesirable)
    ratio = desirable * n_desirable / (undesirable * n_undesirable)
    assert 1 <= ratio <= 4 / 3
    assert _trl_recommends(desirable, undesirable, n_desirable, n_undesirable)
    if 1 <= n_desirable / n_undesirable <= 4 / 3:
        assert (desirable, undesirable) == (1.0, 1.0)  # TRL's defaults
    # A weight given is kept, in range or not.
    given = preference.class_weights({**node, "desirable_weight": 1.0}, n_desirable, n_undesirable)
    assert given == (1.0, 1.0)


# ---------------------------------------------------------------- checks and config


@pytest.mark.parametrize(
    ("kind", "change", "message"),
    [
        ("kto", {"batch_size": 1}, r"^batch_size: KTO needs at least 2"),
        ("kto", {"loss_type": "sigmoid"}, r"^loss_type: expected one of \['kto',"),
        ("kto", {"desirable_weight": 0}, r"^desirable_weight: expected a number > 0"),
        ("orpo", {"beta": -1}, r"^beta: expected a number > 0"),
        ("simpo", {"simpo_gamma": -0.5}, r"^simpo_gamma: expected a number >= 0"),
        ("simpo", {"cpo_alpha": "1"}, r"^cpo_alpha: expected a number >= 0"),
        # QLoRA's checks, as for sft and dpo.
        ("orpo", {"quantization": "4bit", "finetune": "full"}, r"^quantization: 4bit needs"),
        ("kto", {"quantization": "2bit"}, r"^quantization: expected null, '4bit' or '8bit'"),
    ],
)
def test_bad_settings_stop_training_before_anything_loads(kind, change, message, tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match=message):
        train({"kind": kind, **change}, missing, missing / "train.jsonl", None,
              tmp_path / "out", tmp_path / "work")  # fmt: skip
    assert not (tmp_path / "out").exists()


def _tiny() -> dict:
    """tests/tiny.yaml (whose end-to-end run trains KTO) with ORPO and SimPO nodes beside
    its KTO node, trained on the DPO model's pairs and evaluated as the others are."""
    cfg = tiny_config("tiny.yaml", Path("/tiny-model"))
    for kind in ("orpo", "simpo"):
        node = {k: v for k, v in cfg["models"]["kto"].items() if not k.startswith("export")}
        cfg["models"][kind] = {**node, "kind": kind, "data": "pairs"}
    cfg["evaluate"][0]["models"] += ["orpo", "simpo"]
    return cfg


def test_tiny_config_takes_the_three_kinds_with_their_defaults():
    cfg = prepare(_tiny())
    kto, orpo, simpo = (cfg["models"][k] for k in KINDS_HERE)
    assert kto["kind"] == "kto" and kto["data"] == "judged"
    assert kto["beta"] == 0.1 and kto["desirable_weight"] is None
    assert kto["undesirable_weight"] == 1.0 and kto["loss_type"] == "kto"
    assert orpo["beta"] == 0.1
    assert (simpo["beta"], simpo["simpo_gamma"], simpo["cpo_alpha"]) == (2.0, 1.0, 0.0)
    evaluated = {e["model"] for e in cfg["evaluations"]}
    assert set(KINDS_HERE) <= evaluated


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("kto", "sft_data", r"models\.kto\.data: a kto model trains on a preference_pairs"
         r" or .* or judge product, not 'sft_data' \(sft_data\)"),
        ("kto", "demos", r"models\.kto\.data: .*not 'demos' \(self_demos\)"),
        ("orpo", "judged", r"models\.orpo\.data: a orpo model trains on a .*, not 'judged'"),
        ("simpo", "sft_data", r"models\.simpo\.data: .*not 'sft_data'"),
    ],
)  # fmt: skip
def test_a_product_a_kind_cannot_read_is_a_config_error_naming_the_key(name, data, message):
    cfg = _tiny()
    cfg["models"][name]["data"] = data
    with pytest.raises(ConfigError, match=message):
        prepare(cfg)


def test_a_foreign_key_names_the_node_and_its_kind():
    cfg = _tiny()
    cfg["models"]["orpo"]["simpo_gamma"] = 1.0
    with pytest.raises(ConfigError, match=r"models\.orpo\.simpo_gamma: not a key of a orpo"):
        prepare(cfg)


def test_the_train_rule_takes_every_kind_the_train_stage_trains():
    text = (ROOT / "workflow/rules/models.smk").read_text()
    rule = text.split("rule train:", 1)[1].split("\nrule ", 1)[0]
    named = set(re.findall(r'"(\w+)"', re.search(r'model=names\("models", ([^)]*)\)', rule)[1]))
    assert named == {k.name for k in KINDS.values() if k.rule == "train"}
    assert set(KINDS_HERE) <= named


def test_kto_on_judged_samples_plans_the_judge_products_file_for_both_splits(tmp_path):
    cfg = copy.deepcopy(_tiny())
    cfg["models"]["base"]["path"] = str(tmp_path / "model")
    (tmp_path / "model").mkdir()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = snakemake("-n", "-p", "--configfile", str(tmp_path / "config.yaml"),
                    "--directory", str(tmp_path)).stdout  # fmt: skip
    jobs = [block for block in out.split("\n\n") if "rule train:" in block]
    kto = next(b for b in jobs if "model=kto" in b)
    judged = "results/tiny/products/judged/data.jsonl"
    assert f"--train {judged} --dev {judged}" in kto
    orpo = next(b for b in jobs if "model=orpo" in b)
    assert "--train results/tiny/products/pairs/train.jsonl" in orpo
    assert "--dev results/tiny/products/pairs/dev.jsonl" in orpo


# ---------------------------------------------------------------- training


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS_HERE)
def test_each_kind_trains_from_pairs_and_writes_its_model_folder(kind, tiny_model, tmp_path):
    out = tmp_path / kind
    metrics = train(
        params(kind, max_steps=2, batch_size=2),
        tiny_model,
        pairs_file(tmp_path / "train.jsonl", range(6)),
        pairs_file(tmp_path / "dev.jsonl", range(100, 102)),
        out,
        tmp_path / "work",
    )
    for file in ("model.safetensors", "adapter/adapter_config.json", "trainer_state.json",
                 "metrics.json", "loss.png"):  # fmt: skip
        assert (out / file).is_file(), file
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == kind and metrics["steps"] == 2
    assert metrics["dev_loss"] is not None and metrics["train_loss"] is not None
    before, after = _weights(tiny_model), _weights(out)
    assert any(not (before[k] == after[k]).all() for k in before if "proj" in k)
    # What each trainer logs is what its curves plot.
    logged = set().union(*json.loads((out / "trainer_state.json").read_text())["log_history"])
    assert {key for key, _ in CURVES[kind]} <= logged
    if kind == "kto":
        # Six pairs of six prompts: six desirable and six undesirable examples.
        assert (metrics["n_train"], metrics["n_desirable"], metrics["n_undesirable"]) == (12, 6, 6)
        assert metrics["desirable_weight"] == metrics["undesirable_weight"] == 1.0
        assert "dev_kl" in metrics and metrics["n_dev"] == 4
    else:
        assert metrics["n_train"] == 6 and metrics["n_dev"] == 2
        assert 0 <= metrics["dev_reward_accuracy"] <= 1
    if kind == "orpo":
        assert "dev_log_odds_ratio" in metrics


@pytest.mark.slow
def test_kto_trains_on_judged_samples_with_balanced_class_weights(tiny_model, tmp_path, caplog):
    path = judged_file(tmp_path / "data.jsonl")
    with caplog.at_level(logging.WARNING):
        metrics = train(params("kto", max_steps=1, batch_size=2), tiny_model, path, path,
                        tmp_path / "out", tmp_path / "work")  # fmt: skip
    assert (metrics["n_train"], metrics["n_dev"]) == (7, 2)
    assert (metrics["n_desirable"], metrics["n_undesirable"]) == (2, 5)
    # 2 x w / 5 = 7/6: the right answers, fewer, weigh more; TRL finds the weights right.
    assert metrics["desirable_weight"] == pytest.approx(7 / 6 * 5 / 2, abs=1e-4)
    assert metrics["undesirable_weight"] == 1.0
    assert "don't seem to be in an ideal range" not in caplog.text
