"""Training with TRL + PEFT on the tiny random Llama: outputs, merging, DPO metrics, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtrain.core.records import write_jsonl
from ragtrain.training.sft_dpo import CURVES, train
from ragtrain.training.toolkit import plot_curves


def _prompt(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Document: Item {i} was made in {1900 + i}. When?"}]


def sft_file(path: Path, n: int) -> Path:
    records = [
        {
            "id": f"q{i}",
            "prompt": _prompt(i),
            "completion": [{"role": "assistant", "content": str(1900 + i)}],
        }
        for i in range(n)
    ]
    write_jsonl(path, records)
    return path


def pairs_file(path: Path, ids: range) -> Path:
    """A separable preference: whatever the prompt, the same answer is chosen and the same
    other one rejected, so what the train pairs teach holds on held-out prompts."""
    records = [
        {
            "id": f"q{i}/0",
            "prompt": _prompt(i),
            "chosen": [{"role": "assistant", "content": "It says so."}],
            "rejected": [{"role": "assistant", "content": "I think it was made long ago."}],
        }
        for i in ids
    ]
    write_jsonl(path, records)
    return path


def params(kind: str, **extra) -> dict:
    return {
        "kind": kind,
        "name": f"tiny-{kind}",
        "lora": {"r": 4, "alpha": 8},
        "batch_size": 4,
        "max_length": 128,
        "logging_steps": 1,
        "learning_rate": 1e-3,
        **extra,
    }


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.mark.slow
def test_sft_with_lora_writes_a_merged_model_and_its_records(tiny_model, tmp_path):
    out = tmp_path / "models" / "sft"
    metrics = train(
        params("sft", epochs=2),
        tiny_model,
        sft_file(tmp_path / "train.jsonl", 8),
        sft_file(tmp_path / "dev.jsonl", 4),
        out,
        tmp_path / "work",
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
    assert metrics["n_train"] == 8 and metrics["n_dev"] == 4
    assert metrics["steps"] == 4  # 8 examples / batch 4 * 2 epochs
    assert metrics["dev_loss"] > 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert any("loss" in h for h in state["log_history"])
    # LoRA was merged: the saved weights differ from the init's, and load without PEFT.
    before, after = _weights(tiny_model), _weights(out)
    changed = [k for k in before if "proj" in k and not (before[k] == after[k]).all()]
    assert changed
    assert not any("lora" in k for k in after)
    # The work folder (checkpoints) is dropped once the model is in place.
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_dpo_reports_held_out_reward_accuracy(tiny_model, tmp_path):
    out = tmp_path / "dpo"
    metrics = train(
        params("dpo", beta=0.1),
        tiny_model,
        pairs_file(tmp_path / "train.jsonl", range(8)),
        pairs_file(tmp_path / "dev.jsonl", range(100, 108)),  # prompts not trained on
        out,
        tmp_path / "work",
    )
    # Untrained, the policy is its reference: every implicit reward is 0, no pair is won
    # (accuracy 0). Two steps at lr 1e-3 win all 8 held-out pairs (seed fixed).
    assert metrics["n_dev"] == 8
    assert metrics["dev_reward_accuracy"] > 0.5
    assert metrics["dev_reward_margin"] > 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert any("rewards/accuracies" in h for h in state["log_history"])
    assert any("eval_rewards/accuracies" in h for h in state["log_history"])


@pytest.mark.slow
def test_full_finetuning_saves_no_adapter(tiny_model, tmp_path):
    out = tmp_path / "full"
    metrics = train(
        params("sft", finetune="full", learning_rate=1e-4),
        tiny_model,
        sft_file(tmp_path / "train.jsonl", 4),
        None,
        out,
        tmp_path / "work",
    )
    assert not (out / "adapter").exists()
    assert metrics["n_dev"] == 0 and "dev_loss" not in metrics
    assert metrics["trainable_parameters"] > 1_000_000


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_last_checkpoint(tiny_model, tmp_path, monkeypatch):
    import transformers

    train_file = sft_file(tmp_path / "train.jsonl", 16)
    node = params("sft", save_steps=2)
    real_save = transformers.Trainer._save_checkpoint
    saved = []

    def save_then_crash(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        saved.append(self.state.global_step)
        raise KeyboardInterrupt("stopped after the first checkpoint")

    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(node, tiny_model, train_file, None, tmp_path / "out", tmp_path / "work")
    assert saved == [2]
    assert not (tmp_path / "out").exists()  # nothing that looks complete
    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", real_save)

    resumed_from = []
    real_load = transformers.Trainer._load_from_checkpoint

    def load(self, checkpoint, *args, **kwargs):
        resumed_from.append(Path(checkpoint).name)
        return real_load(self, checkpoint, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "_load_from_checkpoint", load)
    metrics = train(node, tiny_model, train_file, None, tmp_path / "out", tmp_path / "work")
    assert resumed_from == ["checkpoint-2"]
    assert metrics["steps"] == 4


@pytest.mark.slow
def test_unknown_kind_and_bad_records_are_reported(tiny_model, tmp_path):
    with pytest.raises(ValueError, match=r"^kind: expected one of \['dpo', 'sft'\]"):
        train(
            {"kind": "ppo"},
            tiny_model,
            tmp_path / "none.jsonl",
            None,
            tmp_path / "out",
            tmp_path / "work",
        )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "not a list", "completion": []}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*'prompt'"):
        train(params("sft"), tiny_model, bad, None, tmp_path / "out", tmp_path / "work")


def test_loss_plot_has_a_panel_per_curve(tmp_path):
    history = [
        {"step": 1, "loss": 0.7, "rewards/accuracies": 0.5, "rewards/margins": 0.0},
        {"step": 2, "loss": 0.6, "rewards/accuracies": 0.75, "rewards/margins": 0.1},
        {"step": 2, "eval_loss": 0.65, "eval_rewards/accuracies": 0.6},
    ]
    plot_curves(history, CURVES["dpo"], tmp_path / "loss.png", title="dpo (DPO)")
    import matplotlib.image as mpimg

    image = mpimg.imread(tmp_path / "loss.png")
    assert image.shape[1] > 2 * image.shape[0]  # three panels side by side


def test_the_newest_complete_checkpoint_is_resumed(tmp_path):
    from ragtrain.training.toolkit import last_checkpoint

    assert last_checkpoint(tmp_path / "none") is None
    for step, complete in ((2, True), (10, True), (12, False), (4, True)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    # 12 was cut short while saving (no trainer state); 10 beats 4 as a number, not text.
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    # PPO's checkpoints: iteration-<n>, complete once state.json is written.
    (tmp_path / "iteration-3").mkdir()
    (tmp_path / "iteration-3" / "state.json").write_text("{}")
    assert last_checkpoint(tmp_path, "iteration", "state.json") == tmp_path / "iteration-3"
