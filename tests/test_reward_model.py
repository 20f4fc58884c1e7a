"""Reward model training with TRL's RewardTrainer on the tiny random Llama: it learns a
separable preference, writes a loadable scorer folder, and reports bad records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ragtrain.core.records import write_jsonl
from ragtrain.training.reward_model import (
    CURVES,
    RewardModelScorer,
    pair_metrics,
    train_reward_model,
)
from ragtrain.training.toolkit import plot_curves

FRUITS = ("banana", "cherry")


def _prompt(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Item {i} needs a fruit. Which one?"}]


def _reply(fruit: str, i: int) -> str:
    return f"For item {i} I suggest {fruit}."


def _pairs(ids: range, good: str, bad: str) -> list[dict]:
    """Separable pairs: the chosen reply always names `good`, the rejected one `bad`."""
    return [
        {
            "id": f"q{i}/0",
            "prompt": _prompt(i),
            "chosen": [{"role": "assistant", "content": _reply(good, i)}],
            "rejected": [{"role": "assistant", "content": _reply(bad, i)}],
        }
        for i in ids
    ]


def pairs_file(path: Path, ids: range, good: str = "banana", bad: str = "cherry") -> Path:
    write_jsonl(path, _pairs(ids, good, bad))
    return path


def params(**extra) -> dict:
    return {
        "name": "tiny-rm",
        "lora": {"r": 4, "alpha": 8},
        "batch_size": 8,
        "max_length": 128,
        "logging_steps": 1,
        "learning_rate": 3e-3,
        "epochs": 2,
        **extra,
    }


def _untrained_scorer(tiny_model: Path, folder: Path) -> RewardModelScorer:
    """The reward model training starts from: the init with the same seeded random head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    from ragtrain.training.reward_model import REWARD_MODEL_DEFAULTS

    set_seed(REWARD_MODEL_DEFAULTS["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return RewardModelScorer(folder)


@pytest.fixture(scope="module")
def lora_rm(tiny_model, tmp_path_factory):
    """One LoRA reward model on 40 separable pairs, 8 held out (shared by the tests).

    A random head already ranks one fruit above the other, by chance, on every pair: the
    chosen fruit is the one the untrained model ranks lower, so that a high held-out
    accuracy can only come from training.
    """
    tmp = tmp_path_factory.mktemp("rm")
    dev = range(100, 108)
    untrained = _untrained_scorer(tiny_model, tmp / "untrained")
    before = pair_metrics(untrained, _pairs(dev, *FRUITS))
    good, bad = FRUITS if before["pair_accuracy"] <= 0.5 else FRUITS[::-1]
    before = pair_metrics(untrained, _pairs(dev, good, bad))
    out = tmp / "models" / "rm"
    metrics = train_reward_model(
        params(),
        tiny_model,
        pairs_file(tmp / "train.jsonl", range(40), good, bad),
        pairs_file(tmp / "dev.jsonl", dev, good, bad),
        out,
        tmp / "work",
    )
    return out, metrics, tmp, before, (good, bad)


@pytest.mark.slow
def test_a_separable_preference_is_learned(lora_rm):
    _, metrics, _, before, _ = lora_rm
    assert before["pair_accuracy"] <= 0.5  # what the untrained model gets
    assert metrics["n_train"] == 40 and metrics["n_dev"] == 8
    assert metrics["steps"] == 10  # 40 pairs / batch 8 * 2 epochs
    assert metrics["dev_pair_accuracy"] >= 0.9
    assert metrics["dev_mean_margin"] > 0
    # The scorer tokenizes as the trainer did: TRL's margin over the same 8 pairs (one
    # batch) agrees with the merged model's.
    assert metrics["dev_mean_margin"] == pytest.approx(metrics["dev_margin"], abs=2e-3)


@pytest.mark.slow
def test_the_output_folder_holds_a_merged_scorer_and_its_records(lora_rm, tiny_model):
    out, metrics, tmp, _, _ = lora_rm
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
    for key in ("train_loss", "train_runtime_s", "dev_loss", "dev_accuracy", "dev_margin"):
        assert key in metrics, key
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["pad_token_id"] is not None
    # LoRA merged; the score head trained (PEFT's SEQ_CLS keeps a trainable copy of it).
    from safetensors.torch import load_file

    weights = load_file(out / "model.safetensors")
    assert "score.weight" in weights and not any("lora" in k for k in weights)
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any("score" in k for k in adapter)
    state = json.loads((out / "trainer_state.json").read_text())
    assert any("accuracy" in h for h in state["log_history"])
    assert any("eval_accuracy" in h for h in state["log_history"])
    # Checkpoints lived in the work folder, dropped once the model is in place.
    assert not (tmp / "work").exists()


@pytest.mark.slow
def test_the_scorer_prefers_the_learned_side_on_new_examples(lora_rm):
    out, _, _, _, (good_fruit, bad_fruit) = lora_rm
    scorer = RewardModelScorer(out, batch_size=3)
    prompts = [_prompt(i) for i in range(500, 505)]
    good = scorer.score(prompts, [_reply(good_fruit, i) for i in range(500, 505)])
    bad = scorer.score(prompts, [_reply(bad_fruit, i) for i in range(500, 505)])
    assert all(isinstance(v, float) for v in good + bad)
    assert sum(g > b for g, b in zip(good, bad, strict=True)) >= 4
    # Scores do not depend on the batch (right padding, read at the last real token).
    alone = [scorer.score([p], [_reply(good_fruit, 500 + k)])[0] for k, p in enumerate(prompts[:2])]
    assert alone == pytest.approx(good[:2], abs=1e-4)
    with pytest.raises(ValueError, match="2 conversations but 1 responses"):
        scorer.score(prompts[:2], ["x"])


@pytest.mark.slow
def test_full_finetuning_saves_no_adapter(tiny_model, tmp_path):
    out = tmp_path / "full"
    metrics = train_reward_model(
        params(finetune="full", learning_rate=1e-4, epochs=1),
        tiny_model,
        pairs_file(tmp_path / "train.jsonl", range(8)),
        None,
        out,
        tmp_path / "work",
    )
    assert (out / "model.safetensors").is_file() and not (out / "adapter").exists()
    assert metrics["n_dev"] == 0 and "dev_pair_accuracy" not in metrics
    assert metrics["trainable_parameters"] > 1_000_000
    assert math.isfinite(RewardModelScorer(out).score([_prompt(0)], ["hi"])[0])


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_last_checkpoint(tiny_model, tmp_path, monkeypatch):
    import transformers

    train_file = pairs_file(tmp_path / "train.jsonl", range(16))
    node = params(batch_size=4, epochs=1, save_steps=2)
    real_save = transformers.Trainer._save_checkpoint

    def save_then_crash(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        raise KeyboardInterrupt("stopped after the first checkpoint")

    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(node, tiny_model, train_file, None, tmp_path / "out", tmp_path / "work")
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", real_save)

    resumed_from = []
    real_load = transformers.Trainer._load_from_checkpoint

    def load(self, checkpoint, *args, **kwargs):
        resumed_from.append(Path(checkpoint).name)
        return real_load(self, checkpoint, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "_load_from_checkpoint", load)
    metrics = train_reward_model(
        node, tiny_model, train_file, None, tmp_path / "out", tmp_path / "work"
    )
    assert resumed_from == ["checkpoint-2"]
    assert metrics["steps"] == 4


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a", "prompt": "not a list", "chosen": [], "rejected": []}', r"'prompt'"),
        ('{"id": "a", "prompt": [], "rejected": []}', r"no field 'chosen'"),
        ('{"id": "a", "prompt": [], "chosen": [], "rejected": []}', r"'chosen' has no message"),
        ('{"id": "a", "prompt": [], "chosen": ["hi"], "rejected": []}', r"'chosen': expected"),
    ],
)
@pytest.mark.slow
def test_bad_records_are_reported_with_their_line(tiny_model, tmp_path, line, message):
    bad = tmp_path / "bad.jsonl"
    good = json.dumps(
        {
            "id": "ok",
            "prompt": _prompt(0),
            "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        }
    )
    bad.write_text(f"{good}\n{line}\n")
    with pytest.raises(ValueError, match=rf"bad.jsonl:2: .*{message}"):
        train_reward_model(params(), tiny_model, bad, None, tmp_path / "out", tmp_path / "work")
    assert not (tmp_path / "out").exists()


def test_curves_have_a_panel_each(tmp_path):
    history = [
        {"step": 1, "loss": 0.7, "accuracy": 0.5, "margin": 0.0},
        {"step": 2, "loss": 0.6, "accuracy": 0.75, "margin": 0.1},
        {"step": 2, "eval_loss": 0.65, "eval_accuracy": 0.6, "eval_margin": 0.05},
    ]
    plot_curves(history, CURVES, tmp_path / "loss.png", title="rm (reward model)")
    import matplotlib.image as mpimg

    image = mpimg.imread(tmp_path / "loss.png")
    assert image.shape[1] > 2 * image.shape[0]
