"""Judge nodes in a config: their keys, references and templates are checked before any
job, each problem one line naming the key."""

import copy

import pytest
import yaml

from ragtrain.graph.config import ConfigError, prepare
from ragtrain.graph.kinds import check_keys
from tests.conftest import ROOT

BASE = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
PROMPTS = ROOT / "resources/prompts"


def with_judges(judges=None, entry=None, product=None):
    cfg = copy.deepcopy(BASE)
    cfg["judges"].update(
        judges if judges is not None else {"lj": {"kind": "label", "model": "base"}}
    )
    cfg["evaluate"] = [
        {"models": ["base"], "datasets": ["test"], "retrieval": ["bm25"], **(entry or {})}
    ]
    if product:
        cfg["products"]["judged"].update(product)
    return cfg


def test_a_model_judge_takes_its_kind_s_defaults_and_the_run_s_generation():
    cfg = prepare(with_judges(), PROMPTS)
    judge = cfg["judges"]["lj"]
    assert judge["prompt"] == "judge_label" and judge["retries"] == 5
    assert judge["pattern"].endswith("(correct|incorrect|refuse)")
    assert judge["generation"]["backend"] == "vllm"
    assert judge["seed"] == BASE["seed"]
    assert cfg["judges"]["rules"] == {"kind": "rules"}  # always there


def test_an_evaluation_names_its_judges_only_when_one_is_a_model():
    cfg = prepare(with_judges(entry={"label_judge": "lj"}), PROMPTS)
    assert cfg["evaluations"][0]["judges"] == {"label": "lj", "relevance": "rules"}
    plain = prepare(with_judges(entry={"label_judge": "rules"}), PROMPTS)
    assert "judges" not in plain["evaluations"][0]


@pytest.mark.parametrize(
    ("cfg", "key", "message"),
    [
        (with_judges(entry={"label_judge": "nope"}), "evaluate[0].label_judge", "unknown judge"),
        (
            with_judges(entry={"relevance_judge": "lj"}),
            "evaluate[0].relevance_judge",
            "expected a relevance judge or rules, got 'lj' (label)",
        ),
        (with_judges(product={"judge": "nope"}), "products.judged.judge", "unknown judge"),
        (
            with_judges({"lj": {"kind": "label", "model": "nope"}}),
            "judges.lj.model",
            "unknown model",
        ),
        (
            with_judges({"lj": {"kind": "label", "model": "base", "prompt": "rag"}}),
            "judges.lj.prompt",
            "does not read answers, response, which a label judge needs",
        ),
        (
            with_judges({"lj": {"kind": "label", "model": "base", "pattern": "Label: \\w+"}}),
            "judges.lj.pattern",
            "has no group",
        ),
        (
            with_judges({"lj": {"kind": "score", "model": "base", "unparsed": 7}}),
            "judges.lj.unparsed",
            "expected 'drop' or a verdict (1 to 5), got 7",
        ),
        (
            with_judges({"lj": {"kind": "label", "model": "base", "prompt": "missing"}}),
            "judges.lj.prompt",
            "no template",
        ),
    ],
)
def test_bad_judges_name_the_key(cfg, key, message):
    with pytest.raises(ConfigError, match="config key ") as err:
        prepare(cfg, PROMPTS)
    assert str(err.value).startswith(f"config key {key}: "), err.value
    assert message in str(err.value)


def test_a_judge_product_takes_a_label_judge_only():
    cfg = with_judges({"rj": {"kind": "relevance", "model": "base"}}, product={"judge": "rj"})
    with pytest.raises(
        ConfigError, match=r"products\.judged\.judge: expected a rules or label judge"
    ):
        prepare(cfg, PROMPTS)


def test_unknown_judge_kind_and_foreign_keys_are_one_line():
    with pytest.raises(ConfigError, match=r"judges\.j\.kind: expected one of \["):
        check_keys({"judges": {"j": {"kind": "oracle"}}})
    with pytest.raises(ConfigError, match=r"judges\.j\.beam: not a key of a label judge"):
        check_keys({"judges": {"j": {"kind": "label", "model": "base", "beam": 2}}})
