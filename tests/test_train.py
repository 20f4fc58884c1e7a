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
    with pytest.raises(
        ValueError, match=r"^kind: expected one of \['dpo', 'kto', 'orpo', 'sft', 'simpo'\]"
    ):
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


def _filled(kind: str, **extra) -> dict:
    from ragtrain.core.settings import with_defaults
    from ragtrain.training.sft_dpo import TRAIN_DEFAULTS

    return with_defaults(params(kind, **extra), TRAIN_DEFAULTS)


@pytest.mark.slow
def test_dpo_config_takes_a_step_budget_a_final_learning_rate_and_an_nll_weight(tmp_path):
    import torch

    from ragtrain.training.sft_dpo import trl_config

    # The paper's DPO: beta 0.1, lr 5.5e-6 cosine-annealed to 1.1e-6, a step budget.
    node = _filled(
        "dpo",
        max_steps=7,
        learning_rate=5.5e-6,
        lr_scheduler="cosine",
        min_learning_rate=1.1e-6,
        rpo_alpha=0.5,
    )
    config = trl_config("dpo", node, tmp_path, True, 100, torch.float32)
    assert config.max_steps == 7
    assert config.lr_scheduler_type == "cosine_with_min_lr"
    assert config.lr_scheduler_kwargs == {"min_lr": 1.1e-6}
    assert config.beta == 0.1
    # TRL >= 1.0 has no rpo_alpha: RPO is DPO's loss plus TRL's `sft` loss (the chosen
    # answers' NLL) at that weight.
    assert config.loss_type == ["sigmoid", "sft"] and config.loss_weights == [1.0, 0.5]
    # The held-out point is placed by the step budget (7), not the epoch (25 steps).
    assert config.eval_steps == 4

    # The defaults: epochs decide, the node's own schedule, no NLL term.
    plain = trl_config("dpo", _filled("dpo"), tmp_path, True, 100, torch.float32)
    assert plain.max_steps == -1 and plain.num_train_epochs == 1
    assert plain.lr_scheduler_type == "linear" and not plain.lr_scheduler_kwargs
    assert plain.loss_type == ["sigmoid"] and plain.loss_weights is None
    # SFT takes the step budget and the final rate alike.
    sft = _filled("sft", max_steps=3, lr_scheduler="cosine_with_min_lr", min_learning_rate=0.0)
    config = trl_config("sft", sft, tmp_path, False, 100, torch.float32)
    assert config.max_steps == 3 and config.lr_scheduler_kwargs == {"min_lr": 0.0}
    # train() checks the settings first: no model, no data is read.
    with pytest.raises(ValueError, match=r"^min_learning_rate needs lr_scheduler cosine"):
        train(
            params("dpo", min_learning_rate=1e-6),
            tmp_path / "no-model",
            tmp_path / "no-data.jsonl",
            None,
            tmp_path / "out",
            tmp_path / "work",
        )


def test_bad_schedules_step_budgets_and_nll_weights_are_refused(tmp_path):
    import torch

    from ragtrain.training.sft_dpo import trl_config

    def config(**extra):  # refused before TRL is imported
        return trl_config("dpo", _filled("dpo", **extra), tmp_path, False, 8, torch.float32)

    with pytest.raises(ValueError, match=r"^min_learning_rate needs lr_scheduler cosine.*'linear'"):
        config(min_learning_rate=1e-6)
    with pytest.raises(ValueError, match=r"^lr_scheduler cosine_with_min_lr needs min_learning"):
        config(lr_scheduler="cosine_with_min_lr")
    with pytest.raises(ValueError, match=r"^min_learning_rate: expected a number from 0 to"):
        config(lr_scheduler="cosine", min_learning_rate=2e-3)  # above learning_rate
    with pytest.raises(ValueError, match=r"^max_steps: expected a positive integer"):
        config(max_steps=0)
    with pytest.raises(ValueError, match=r"^rpo_alpha: expected a number >= 0"):
        config(rpo_alpha=-1)


@pytest.mark.slow
def test_a_step_budget_ends_a_cosine_at_the_final_rate_and_survives_a_resume(
    tiny_model, tmp_path, monkeypatch
):
    import math

    import transformers

    from ragtrain.training import sft_dpo

    # 16 pairs at batch 4: 4 steps an epoch, of which the budget takes 2.
    node = params(
        "dpo",
        max_steps=2,
        lr_scheduler="cosine",
        min_learning_rate=1e-4,
        rpo_alpha=1.0,
        save_steps=50,
    )
    train_file = pairs_file(tmp_path / "train.jsonl", range(16))
    ended = {}
    real_gather = sft_dpo._gathered_model

    def stop_after_training(trainer, *args):
        ended["step"] = trainer.state.global_step
        ended["lr"] = trainer.lr_scheduler.get_last_lr()[0]
        raise KeyboardInterrupt("stopped after training, before the model folder")

    monkeypatch.setattr(sft_dpo, "_gathered_model", stop_after_training)
    with pytest.raises(KeyboardInterrupt):
        train(node, tiny_model, train_file, None, tmp_path / "out", tmp_path / "work")
    assert ended["step"] == 2
    assert ended["lr"] == pytest.approx(1e-4)  # the schedule ends at min_learning_rate
    monkeypatch.setattr(sft_dpo, "_gathered_model", real_gather)

    # Rerun: the checkpoint at the last step is loaded, and no step is trained (the
    # Trainer, resumed mid-epoch at max_steps, would train a third).
    resumed_from = []
    real_load = transformers.Trainer._load_from_checkpoint

    def load(self, checkpoint, *args, **kwargs):
        resumed_from.append(Path(checkpoint).name)
        return real_load(self, checkpoint, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "_load_from_checkpoint", load)
    out = tmp_path / "out"
    metrics = train(node, tiny_model, train_file, None, out, tmp_path / "work")
    assert resumed_from == ["checkpoint-2"]
    assert metrics["steps"] == 2 and metrics["train_loss"] is None
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    rates = [h["learning_rate"] for h in state["log_history"] if "learning_rate" in h]
    # Logged at each step, the rate it ran at: the peak, then halfway down the cosine.
    halfway = 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi / 2))
    assert rates == pytest.approx([1e-3, halfway])
    assert rates[-1] < 1e-3
