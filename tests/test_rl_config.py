"""The RL config (config/rl.yaml): node defaults, reward source lists, and the kind
checks that stop a wrong graph before any job, naming the key."""

import copy

import pytest
import yaml

from ragtrain.graph.config import ConfigError, prepare
from tests.conftest import ROOT

RL = yaml.safe_load((ROOT / "config" / "rl.yaml").read_text())
PROMPTS = ROOT / "resources" / "prompts"


def rl(edit) -> dict:
    cfg = copy.deepcopy(RL)
    edit(cfg)
    return cfg


def test_rl_config_fills_defaults_and_keeps_anchored_rewards():
    cfg = prepare(RL, prompts_dir=PROMPTS)
    ppo = cfg["models"]["ppo"]
    # given, and the published fine-grained defaults left alone
    assert ppo["value_model"] == "shared" and ppo["kl_coef"] == 0.2
    assert (ppo["gamma"], ppo["lam"], ppo["clip"], ppo["value_clip"]) == (1.0, 0.95, 0.2, 0.2)
    assert ppo["prompt"] == "rag"  # retrieval bm25
    assert cfg["models"]["grpo"]["beta"] == 0.04
    assert [s["kind"] for s in ppo["rewards"]] == ["correctness", "reward_model", "length"]
    assert cfg["models"]["grpo"]["rewards"] == ppo["rewards"]  # the shared anchor
    assert [s["kind"] for s in cfg["products"]["best_of_4"]["rewards"]] == ["correctness", "length"]
    assert cfg["models"]["rm"]["center_rewards_coefficient"] is None
    evaluated = {e["model"] for e in cfg["evaluations"]}
    assert evaluated == {"sft", "ppo", "grpo", "sft_best_of_4"}


def test_rl_model_without_retrieval_uses_the_closed_book_prompt():
    cfg = prepare(rl(lambda c: c["models"]["ppo"].pop("retrieval")))
    assert cfg["models"]["ppo"]["retrieval"] == "none"
    assert cfg["models"]["ppo"]["prompt"] == "closed_book"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["models"]["ppo"].update(rewards=[{"kind": "bleu"}]),
            r"key models\.ppo\.rewards\[0\]\.kind: expected one of",
        ),
        (
            lambda c: c["models"]["ppo"].update(rewards=[{"kind": "reward_model", "model": "sft"}]),
            r"models\.ppo\.rewards\[0\]\.model: expected a reward_model model, got 'sft'",
        ),
        (
            lambda c: c["models"]["ppo"].update(rewards=[{"kind": "format"}]),
            r"models\.ppo\.rewards\[0\]\.pattern: a format source needs a pattern",
        ),
        (
            lambda c: c["models"]["ppo"].update(rewards=[{"kind": "length", "max_word": 3}]),
            r"models\.ppo\.rewards\[0\]: unknown setting 'max_word'",
        ),
        (
            lambda c: c["models"]["grpo"].update(init="rm"),
            r"models\.grpo\.init: 'rm' is a reward_model model, not a language model",
        ),
        (
            lambda c: c["models"]["rm"].update(data="sft_data"),
            r"models\.rm\.data: a reward_model model trains on a preference_pairs",
        ),
        (
            lambda c: c["models"]["sft_best_of_4"].update(data="pairs"),
            r"models\.sft_best_of_4\.data: a sft model trains on a sft_data",
        ),
        (
            lambda c: c["products"]["best_of_4"].update(**{"from": "sft_data"}),
            r"products\.best_of_4\.from: a best_of_n product is made from a self_demos",
        ),
        (
            lambda c: c["models"]["ppo"].pop("dataset"),
            r"models\.ppo\.dataset: a ppo model needs dataset",
        ),
        (
            lambda c: c["evaluate"][0]["models"].append("rm"),
            r"evaluate\[0\]\.models: 'rm' is a reward_model model, not a language model",
        ),
        (
            lambda c: c["products"].update(
                scored={"kind": "reward", "from": "demos", "model": "sft"}
            ),
            r"products\.scored\.model: expected a reward_model model, got 'sft'",
        ),
        (
            lambda c: c["models"]["ppo"].update(prompt="nope"),
            r"models\.ppo\.prompt: no template nope\.jinja",
        ),
    ],
)
def test_bad_rl_graphs_name_the_key(edit, message):
    with pytest.raises(ConfigError, match=message):
        prepare(rl(edit), prompts_dir=PROMPTS)
