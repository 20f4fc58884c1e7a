"""PPO: the loss pieces against hand-computed cases, reward placement on tokens, and a
tiny run that must learn a trivially learnable per-token reward."""

from __future__ import annotations

import math

import pytest
import torch

from ragtrain.core.settings import with_defaults
from ragtrain.training import ppo, ppo_math
from ragtrain.training.rewards import Rewards, place_rewards, token_char_ends
from tests.conftest import in_child_process


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    rewards, values, mask = t([[1.0, 0.0, 2.0]]), t([[0.5, 0.2, 0.1]]), t([[1, 1, 1]])
    advantages, returns = ppo_math.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert returns.tolist()[0] == pytest.approx([3.0, 2.0, 2.0])
    assert advantages.tolist()[0] == pytest.approx([2.5, 1.8, 1.9])


def test_gae_hand_computed_and_padding_ends_the_episode():
    # gamma 0.9, lambda 0.5, by hand:
    # t2: delta = 2 - 0.1 = 1.9;             A2 = 1.9
    # t1: delta = 0 + 0.9*0.1 - 0.2 = -0.11; A1 = -0.11 + 0.45*1.9 = 0.745
    # t0: delta = 1 + 0.9*0.2 - 0.5 = 0.68;  A0 = 0.68 + 0.45*0.745 = 1.01525
    rewards = t([[1.0, 0.0, 2.0, 0.0], [1.0, 3.0, 9.0, 9.0]])
    values = t([[0.5, 0.2, 0.1, 0.0], [0.5, 0.2, 7.0, 7.0]])
    mask = t([[1, 1, 1, 0], [1, 1, 0, 0]])
    advantages, returns = ppo_math.gae(rewards, values, mask, gamma=0.9, lam=0.5)
    assert advantages[0].tolist() == pytest.approx([1.01525, 0.745, 1.9, 0.0])
    # Row 2 ends after two tokens: the padded value 7 must not leak in.
    # t1: delta = 3 - 0.2 = 2.8; t0: delta = 1 + 0.9*0.2 - 0.5 = 0.68, A0 = 0.68 + 0.45*2.8
    assert advantages[1].tolist() == pytest.approx([0.68 + 0.45 * 2.8, 2.8, 0.0, 0.0])
    assert returns[1, :2].tolist() == pytest.approx([0.68 + 0.45 * 2.8 + 0.5, 3.0])


def test_whiten_uses_unmasked_entries_only():
    x, mask = t([[1.0, 2.0, 3.0, 100.0]]), t([[1, 1, 1, 0]])
    out = ppo_math.whiten(x, mask)
    # mean 2, unbiased variance 1
    assert out.tolist()[0] == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    kept = ppo_math.whiten(x, mask, shift_mean=False)
    assert kept.tolist()[0] == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)


def test_kl_per_token_is_the_log_ratio_on_response_tokens():
    logp, ref, mask = t([[-1.0, -2.0, -3.0]]), t([[-1.5, -1.0, -9.0]]), t([[1, 1, 0]])
    assert ppo_math.kl_per_token(logp, ref, mask).tolist()[0] == pytest.approx([0.5, -1.0, 0.0])


def test_policy_loss_clips_the_ratio_in_the_advantages_direction():
    old = t([[-1.0, -1.0]])
    new = old + math.log(1.5)  # ratio 1.5 on both tokens
    mask = t([[1, 1]])
    # A = +1: min(1.5, 1.2) * A -> loss -1.2, clipped; A = -1: max(-1.5, -1.2) -> loss 1.5
    loss, clipped = ppo_math.policy_loss(new, old, t([[1.0, -1.0]]), mask, clip=0.2)
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert clipped.item() == pytest.approx(0.5)
    # Inside the clip range nothing is clipped and the loss is -ratio * A.
    loss, clipped = ppo_math.policy_loss(old + math.log(1.1), old, t([[2.0, 2.0]]), mask, clip=0.2)
    assert loss.item() == pytest.approx(-2.2)
    assert clipped.item() == 0.0


def test_value_loss_takes_the_larger_of_clipped_and_unclipped_errors():
    old, returns, mask = t([[0.0, 0.0]]), t([[1.0, 1.0]]), t([[1, 1]])
    # token 1 moves 0 -> 0.5: clipped to 0.2, error 0.64 > 0.25; token 2 moves 0 -> 0.1
    loss, clipped = ppo_math.value_loss(t([[0.5, 0.1]]), old, returns, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81) / 2)
    assert clipped.item() == pytest.approx(0.5)


def test_entropy_of_uniform_logits_is_log_vocab():
    assert ppo_math.entropy_from_logits(torch.zeros(1, 1, 8)).item() == pytest.approx(math.log(8))


class FakeTokenizer:
    """Tokens are fixed strings, so character ends are known exactly."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces[i] for i in ids)


def test_rewards_land_on_the_token_holding_the_character_before_the_offset():
    tok = FakeTokenizer(["Par", "is", " is", " big", ".", ""])  # id 5: EOS, no text
    ids = [0, 1, 2, 3, 4, 5]
    ends = token_char_ends(tok, ids)
    assert ends == [3, 5, 8, 12, 13, 13]
    # offset 2 is inside "Par" (chars 0-2): token 0; 5 ends "is": token 1; 6 is inside
    # " is": token 2; the end of the text (13): the period, not EOS; past the end: last.
    placed = [(2, 1.0), (5, 2.0), (6, 4.0), (13, 8.0), (99, 16.0), (0, 32.0)]
    assert place_rewards(placed, ends) == [33.0, 2.0, 4.0, 0.0, 8.0, 16.0]


@pytest.mark.slow
def test_token_char_ends_with_the_real_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = "The capital is Parisville, founded 1843."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    ends = token_char_ends(tok, ids)
    assert ends[-1] == len(text)
    assert ends == sorted(ends)
    # A value at the end of "Parisville" lands on the token that completes it, which is
    # the token whose decoded prefix first reaches that character.
    offset = text.index("ville") + 3  # inside "ville"
    position = place_rewards([(offset, 1.0)], ends).index(1.0)
    assert len(tok.decode(ids[: position + 1])) >= offset > len(tok.decode(ids[:position]))


class LetterReward:
    """+1 at every letter `e` of a response: a per-token reward any policy can learn
    (a random model already writes e-tokens now and then)."""

    name = "letter_e"

    def score(self, examples, responses):
        return [[(i + 1, 1.0) for i, ch in enumerate(text) if ch == "e"] for text in responses]


def _prompts(n, prefix):
    return [
        {"id": f"{prefix}{i}", "prompt": [{"role": "user", "content": f"Say something {i}."}]}
        for i in range(n)
    ]


PARAMS = {
    "iterations": 8,
    "prompts_per_iteration": 4,
    "samples_per_prompt": 4,
    "ppo_epochs": 2,
    "minibatch_size": 8,
    "grad_accum": 2,
    "learning_rate": 3e-3,
    "kl_coef": 0.01,
    "max_new_tokens": 8,
    "temperature": 1.0,
    "top_k": 0,
    "eval_every": 4,
    "save_every": 4,
    "lora": {"r": 8, "alpha": 16},
    "seed": 3,
}


@pytest.mark.parametrize("value_model", ["separate", "shared"])
@pytest.mark.slow
def test_tiny_ppo_learns_a_per_token_reward(tiny_model, tmp_path, value_model):
    import json

    rewards = Rewards.from_sources([(LetterReward(), 1.0)])
    params = {**PARAMS, "value_model": value_model, "name": "ppo"}
    metrics = ppo.train_ppo(
        params,
        tiny_model,
        _prompts(8, "q"),
        _prompts(4, "d"),
        rewards,
        tmp_path / "model",
        tmp_path / "work",
    )
    history = json.loads((tmp_path / "model" / "trainer_state.json").read_text())["log_history"]
    train = [h["reward"] for h in history if "reward" in h]
    # It learns: the last iterations' rollouts earn clearly more than the first ones'.
    assert sum(train[-2:]) / 2 > sum(train[:2]) / 2 + 0.5, train
    assert metrics["dev_reward"] > metrics["dev_reward_init"]
    assert metrics["iterations"] == 8 and metrics["steps"] == 8 * 2 * 2
    for key in ("kl", "entropy", "value_loss", "clip_fraction", "approx_kl", "policy_loss"):
        assert all(math.isfinite(h[key]) for h in history if "reward" in h), key
    out = tmp_path / "model"
    for name in ("model.safetensors", "adapter/adapter_config.json", "loss.png", "metrics.json"):
        assert (out / name).is_file(), name
    # The final checkpoint is not kept: only the model folder is the result.
    assert not (tmp_path / "work" / "checkpoints" / "iteration-8").exists()


@pytest.mark.slow
def test_ppo_resumes_from_its_last_checkpoint(tiny_model, tmp_path, monkeypatch):
    """A run stopped after iteration 4's checkpoint goes on from iteration 5, with the
    same rollouts an uninterrupted run would draw."""
    import json

    rewards = Rewards.from_sources([(LetterReward(), 1.0)])
    params = {**PARAMS, "iterations": 6, "save_every": 2, "eval_every": 100}
    calls = []
    original = ppo.PPOTrainer.optimize

    def stop_after_four(self, scored, rng):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return original(self, scored, rng)

    monkeypatch.setattr(ppo.PPOTrainer, "optimize", stop_after_four)
    with pytest.raises(KeyboardInterrupt):
        ppo.train_ppo(
            params, tiny_model, _prompts(8, "q"), [], rewards, tmp_path / "m", tmp_path / "w"
        )
    assert not (tmp_path / "m").exists()
    assert (tmp_path / "w" / "checkpoints" / "iteration-4" / "state.json").is_file()
    monkeypatch.setattr(ppo.PPOTrainer, "optimize", original)
    ppo.train_ppo(params, tiny_model, _prompts(8, "q"), [], rewards, tmp_path / "m", tmp_path / "w")
    history = json.loads((tmp_path / "m" / "trainer_state.json").read_text())["log_history"]
    assert [h["iteration"] for h in history] == [1, 2, 3, 4, 5, 6]
    # The uninterrupted run draws the same iteration-5 rollouts (same seeds, same weights).
    ppo.train_ppo(
        params, tiny_model, _prompts(8, "q"), [], rewards, tmp_path / "m2", tmp_path / "w2"
    )
    again = json.loads((tmp_path / "m2" / "trainer_state.json").read_text())["log_history"]
    assert again[4]["reward"] == pytest.approx(history[4]["reward"])


@pytest.mark.slow
def test_holistic_mode_puts_the_whole_reward_on_the_last_token(tiny_model):
    params = {**PARAMS, "holistic": True, "kl_coef": 0.0, "gamma": 1.0, "lam": 1.0}
    trainer = ppo.PPOTrainer(params, tiny_model, Rewards.from_sources([(LetterReward(), 1.0)]))
    rollouts = trainer.generate(_prompts(2, "q"), trainer.sampling, "x")
    scored = trainer.score(rollouts)
    # gamma = lambda = 1 and values 0 (zero head): returns are the reward still to come,
    # the same on every token when the whole reward sits on the last one.
    for r, returns, mask in zip(rollouts, scored["returns"], scored["batch"].mask, strict=True):
        n = int(mask.sum())
        expected = float(r["text"].count("e"))
        assert returns[:n].tolist() == pytest.approx([expected] * n, abs=1e-4)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="value_model"):
        ppo.check(with_defaults({"value_model": "both"}, ppo.PPO_DEFAULTS, kinds=False))
    with pytest.raises(ValueError, match="grad_accum"):
        ppo.check(
            with_defaults({"minibatch_size": 6, "grad_accum": 4}, ppo.PPO_DEFAULTS, kinds=False)
        )
    ppo.check(with_defaults({}, ppo.PPO_DEFAULTS, kinds=False))


def test_curves_have_two_rows_of_three_panels_per_iteration(tmp_path):
    import matplotlib.image as mpimg

    from ragtrain.training.toolkit import plot_curves

    history = [
        {"iteration": 0, "dev_reward": 0.1},
        *({"iteration": i, **{key: 0.1 * i for key, _ in ppo.CURVES}} for i in (1, 2)),
        {"iteration": 2, "dev_reward": 0.3},
    ]
    path = tmp_path / "loss.png"
    plot_curves(history, ppo.CURVES, path, title="ppo (PPO)", x="iteration", columns=3)
    height, width = mpimg.imread(path).shape[:2]
    assert 1.5 * height < width < 2.5 * height  # 3 x 2 panels, 4.2 x 3.2 each


def _examples_file(path, n):
    import json

    rows = [
        {
            "id": f"q{i}",
            "question": f"Who founded company {i}?",
            "answers": [f"Ann {i}"],
            "docs": [],
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.e2e
@pytest.mark.slow
def test_ppo_stage_under_accelerate_with_two_processes(tiny_model, tmp_path):
    """Two CPU processes (torchrun; accelerate forms a gloo group from them): each rolls
    out half the prompts, gradients are averaged, and one process writes the model.
    (`accelerate launch --cpu --num_processes 2` starts a single process in accelerate
    1.15: its multi-CPU launch goes through mpirun.)"""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    params = {
        "kind": "ppo",
        "iterations": 2,
        "prompts_per_iteration": 4,
        "samples_per_prompt": 2,
        "ppo_epochs": 1,
        "minibatch_size": 4,
        "max_new_tokens": 4,
        "eval_every": 1,
        "save_every": 1,
        "dev_fraction": 0.25,
        "lora": {"r": 4, "alpha": 8},
        "rewards": [{"kind": "length", "max_words": 1, "per_word": 0.1}],
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "-m", "ragtrain", "train-rl", "--params", json.dumps(params),
        "--init", str(tiny_model), "--examples", str(_examples_file(tmp_path / "ex.jsonl", 8)),
        "--prompt", str(ROOT / "resources/prompts/closed_book.jinja"),
        "--work", str(tmp_path / "work"), "--output", str(tmp_path / "ppo"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ppo" / "metrics.json").read_text())
    assert metrics["iterations"] == 2 and metrics["n_dev"] == 2 and metrics["n_train"] == 6
    history = json.loads((tmp_path / "ppo" / "trainer_state.json").read_text())["log_history"]
    # Two processes of 2 prompts x 2 samples each: one step per process and iteration
    # (one process alone would take all 4 prompts: two steps).
    assert [h["updates"] for h in history if "reward" in h] == [1.0, 1.0]
    assert "PPO process 1 of 2" in proc.stderr
    assert (tmp_path / "ppo" / "model.safetensors").is_file()


def test_rollouts_auto_is_vllm_only_with_a_gpu_and_the_package(monkeypatch):
    import importlib.util

    import torch

    params = with_defaults({}, ppo.PPO_DEFAULTS, kinds=False)
    assert params["rollouts"] == "auto"
    find_spec = importlib.util.find_spec
    for cuda, has_vllm, expected in (
        (True, True, "vllm"),
        (False, True, "hf"),
        (True, False, "hf"),
    ):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda name, *a, has=has_vllm, **k: (
                (object() if has else None) if name == "vllm" else find_spec(name, *a, **k)
            ),
        )
        assert ppo.rollout_backend(params) == expected
    # Asked for by name without the package: the key and the way out.
    with pytest.raises(ValueError, match=r"^rollouts: vllm needs the vllm package"):
        ppo.rollout_backend({**params, "rollouts": "vllm"})
    with pytest.raises(ValueError, match=r"^rollouts: expected one of auto, hf, vllm"):
        ppo.check({**params, "rollouts": "sglang"})


@pytest.mark.slow
def test_vllm_rollouts_follow_the_policy_after_each_change_of_its_weights(tiny_model):
    """vLLM on CPU serves the policy's LoRA adapter: its greedy answers are the training
    model's own (HF generate on it), before and after the weights change. In a process
    of its own, as the train_rl stage is: an in-process vLLM binds the process's threads."""
    in_child_process(_vllm_rollouts_follow_the_policy, tiny_model)


def _vllm_rollouts_follow_the_policy(tiny_model) -> None:
    import torch

    from ragtrain.generation.engine import HFGenerator, Sampling

    params = {**PARAMS, "rollouts": "vllm", "rollout_max_model_len": 512}
    trainer = ppo.PPOTrainer(params, tiny_model, Rewards.from_sources([(LetterReward(), 1.0)]))
    assert trainer.backend == "vllm"
    hf = HFGenerator.from_model(trainer.ac.model, trainer.tokenizer, {"batch_size": 4})
    greedy = Sampling(max_new_tokens=8)
    examples = _prompts(3, "q")
    served = set()
    for scale in (0.0, 0.5, 0.8):
        # A new policy: its LoRA B matrices drawn afresh (zero at first: the init model).
        state = {
            name: (torch.randn_like(value) * scale if "lora_B" in name else value)
            for name, value in trainer.state_dict().items()
        }
        trainer.load_state_dict(state)
        rollouts = trainer.generate(examples, greedy, "x")
        served.add(str(trainer._policy_adapter()))
        expected = hf.chat([ex["prompt"] for ex in examples], greedy)
        assert [r["response_ids"] for r in rollouts] == [
            trainer._response_ids(c[0]) for c in expected
        ], scale
    assert len(served) == 3  # one adapter saved per version of the weights
    trainer.close()
    assert not trainer._adapters.exists()
