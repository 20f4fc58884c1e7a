"""Experiment trackers (`tracking`): the config keys, the environment each tracker is
pointed at (W&B offline, MLflow's local store), TensorBoard event files of a tiny SFT run
and of our PPO read back with TensorBoard's own reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtrain.graph.config import ConfigError, check_config, prepare
from ragtrain.training import tracking
from tests.conftest import tiny_config

TRACKER_ENV = (
    "TENSORBOARD_LOGGING_DIR",
    "WANDB_MODE",
    "WANDB_DIR",
    "WANDB_PROJECT",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
)


@pytest.fixture
def clean_env(monkeypatch):
    """No tracker variable set, none remembered as ours; all restored afterwards."""
    for name in TRACKER_ENV:
        monkeypatch.setenv(name, "x")  # recorded, so teardown restores the original
        monkeypatch.delenv(name)
    monkeypatch.setattr(tracking, "_SET", {})


# ------------------------------------------------------------------ config


def test_the_top_level_tracking_is_every_training_node_s_unless_the_node_sets_its_own():
    config = tiny_config("tiny.yaml", Path("/tiny-model"))
    config["tracking"] = ["tensorboard", "wandb"]
    config["models"]["dpo"]["tracking"] = []
    check_config(config)
    models = prepare(config)["models"]
    assert models["sft"]["tracking"] == ["tensorboard", "wandb"]
    assert models["dpo"]["tracking"] == []
    assert "tracking" not in models["base"]  # nothing trains there
    # Off by default.
    del config["tracking"]
    assert prepare(config)["models"]["sft"]["tracking"] == []


def test_an_unknown_tracker_or_one_on_a_base_model_is_refused():
    config = tiny_config("tiny.yaml", Path("/tiny-model"))
    config["tracking"] = ["tensorbored"]
    with pytest.raises(ConfigError, match=r"tracking"):
        check_config(config)
    config = tiny_config("tiny.yaml", Path("/tiny-model"))
    config["models"]["sft"]["tracking"] = ["comet"]
    with pytest.raises(ConfigError, match=r"models\.sft\.tracking"):
        check_config(config)
    config = tiny_config("tiny.yaml", Path("/tiny-model"))
    config["models"]["base"]["tracking"] = ["tensorboard"]
    with pytest.raises(ConfigError, match=r"models\.base.*tracking"):
        prepare(config)


# ------------------------------------------------------------------ trackers and environment


def test_a_tracker_whose_package_is_missing_names_the_key_and_the_package(monkeypatch):
    monkeypatch.setattr(tracking, "_installed", lambda module: module != "wandb")
    with pytest.raises(ValueError) as error:
        tracking.trackers({"name": "sft", "tracking": ["tensorboard", "wandb"]})
    message = str(error.value)
    assert message.startswith("models.sft.tracking: wandb needs the wandb package")
    assert "pip install wandb" in message
    with pytest.raises(ValueError, match=r"^models\.sft\.tracking: expected a list of"):
        tracking.trackers({"name": "sft", "tracking": ["neptune"]})
    # Checked by the stage before anything loads.
    with pytest.raises(ValueError, match=r"^models\.dpo\.tracking: wandb needs"):
        tracking.stage_params({"tracking": ["wandb"]}, "results/demo/models/dpo")
    assert tracking.trackers({"tracking": None}) == tracking.trackers({}) == []


def test_wandb_is_offline_and_mlflow_local_unless_the_user_said_otherwise(tmp_path, clean_env):
    work = tmp_path / "work"
    env: dict[str, str] = {}
    set_here = tracking.prepare_env(["tensorboard", "wandb", "mlflow"], work, env)
    assert env == set_here
    assert env["WANDB_MODE"] == "offline" and env["WANDB_DIR"] == str(work.resolve())
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{work.resolve()}/mlflow.db"
    assert env["TENSORBOARD_LOGGING_DIR"] == str(work.resolve() / "runs")
    # The user's own settings stay; ours follow the next node trained in the process.
    user = {"WANDB_MODE": "online", "MLFLOW_TRACKING_URI": "http://mlflow.example:5000"}
    env.update(user)
    other = tmp_path / "other"
    tracking.prepare_env(["tensorboard", "wandb", "mlflow"], other, env)
    assert {k: env[k] for k in user} == user
    assert env["WANDB_DIR"] == str(other.resolve())
    assert env["TENSORBOARD_LOGGING_DIR"] == str(other.resolve() / "runs")
    # Only what is chosen is set.
    assert tracking.prepare_env(["tensorboard"], work, fresh := {}) == fresh
    assert set(fresh) == {"TENSORBOARD_LOGGING_DIR"}


def test_trainer_arguments_report_to_the_chosen_trackers_under_the_run_s_name(
    tmp_path, clean_env, monkeypatch
):
    monkeypatch.setattr(tracking, "_installed", lambda module: True)
    params = tracking.stage_params({"tracking": ["wandb"]}, "results/demo/models/sft")
    assert params["name"] == "sft" and params["run_name"] == "demo/sft"
    assert tracking.trainer_kwargs(params, tmp_path) == {
        "report_to": ["wandb"],
        "run_name": "demo/sft",
    }
    import os

    assert os.environ["WANDB_MODE"] == "offline"
    assert tracking.trainer_kwargs({"tracking": []}, tmp_path) == {"report_to": "none"}
    assert tracking.run_name("out/my-model") == "my-model"
    assert tracking.tag("loss") == "train/loss" and tracking.tag("dev_reward") == "eval/reward"
    assert tracking.tag("eval_loss") == "eval/loss"


def test_the_work_folder_key_ignores_the_trackers(tmp_path):
    from ragtrain.core.workdir import work_dir

    node = {"kind": "sft", "learning_rate": 1e-4}
    plain = work_dir(tmp_path, {**node, "tracking": []}, [])
    assert work_dir(tmp_path, {**node, "tracking": ["tensorboard"], "run_name": "r/x"}, []) == plain
    assert work_dir(tmp_path, {**node, "learning_rate": 2e-4}, []) != plain


def test_tracker_tokens_are_redacted(monkeypatch):
    from ragtrain.core.security import redact

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "mlflow-token-0123")
    monkeypatch.setenv("WANDB_API_KEY", "wandb-key-0123456789")
    assert redact("t=mlflow-token-0123 k=wandb-key-0123456789") == "t=[REDACTED] k=[REDACTED]"


# ------------------------------------------------------------------ real event files


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the event files in `folder`, by TensorBoard's reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


@pytest.mark.slow
def test_sft_with_tensorboard_writes_event_files_into_the_model_folder(
    tiny_model, tmp_path, clean_env
):
    from ragtrain.training.sft_dpo import train
    from tests.test_train import params, sft_file

    node = tracking.stage_params(
        params("sft", epochs=2, tracking=["tensorboard"]), tmp_path / "results/tiny/models/sft"
    )
    out = tmp_path / "results/tiny/models/sft"
    train(
        node,
        tiny_model,
        sft_file(tmp_path / "train.jsonl", 8),
        sft_file(tmp_path / "dev.jsonl", 4),
        out,
        tmp_path / "work",
    )
    assert list((out / "runs").glob("events.out.tfevents.*"))
    scalars = _scalars(out / "runs")
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = [(h["step"], h["loss"]) for h in history if "loss" in h]
    assert len(logged) == 4  # 8 examples / batch 4 * 2 epochs, logging every step
    steps = [step for step, _ in scalars["train/loss"]]
    assert steps == [step for step, _ in logged]
    assert [value for _, value in scalars["train/loss"]] == pytest.approx(
        [value for _, value in logged], rel=1e-6
    )
    # The final held-out loss (logged after training) is there too.
    assert scalars["eval/loss"][-1][1] == pytest.approx(
        next(h["eval_loss"] for h in reversed(history) if "eval_loss" in h), rel=1e-6
    )
    assert not (tmp_path / "work").exists()  # the work folder (and its runs/) is gone


@pytest.mark.slow
def test_a_resumed_run_keeps_its_first_event_files(tiny_model, tmp_path, clean_env, monkeypatch):
    """Stopped after its step-2 checkpoint, then resumed: the model folder's events hold
    every step once, the first run's and the resumed run's."""
    import transformers

    from ragtrain.training.sft_dpo import train
    from tests.test_train import params, sft_file

    out = tmp_path / "results/tiny/models/sft"
    node = tracking.stage_params(params("sft", save_steps=2, tracking=["tensorboard"]), out)
    data = sft_file(tmp_path / "train.jsonl", 16)
    real_save = transformers.Trainer._save_checkpoint

    def save_then_crash(self, *args, **kwargs):
        real_save(self, *args, **kwargs)
        raise KeyboardInterrupt("stopped after the first checkpoint")

    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(node, tiny_model, data, None, out, tmp_path / "work")
    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", real_save)
    train(node, tiny_model, data, None, out, tmp_path / "work")
    assert len(list((out / "runs").glob("events.out.tfevents.*"))) == 2  # one per run
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = [(h["step"], h["loss"]) for h in history if "loss" in h]
    assert [s for s, _ in logged] == [1, 2, 3, 4]
    loss = _scalars(out / "runs")["train/loss"]
    assert [s for s, _ in loss] == [1, 2, 3, 4]
    assert [v for _, v in loss] == pytest.approx([v for _, v in logged], rel=1e-6)


class _LetterE:
    name = "letter_e"

    def score(self, examples, responses):
        return [[(i + 1, 1.0) for i, ch in enumerate(text) if ch == "e"] for text in responses]


@pytest.mark.slow
def test_ppo_logs_its_metrics_to_tensorboard(tiny_model, tmp_path, clean_env):
    from ragtrain.training import ppo
    from ragtrain.training.rewards import Rewards

    def prompts(n, prefix):
        return [
            {"id": f"{prefix}{i}", "prompt": [{"role": "user", "content": f"Say {i}."}]}
            for i in range(n)
        ]

    params = {
        "name": "ppo",
        "tracking": ["tensorboard"],
        "iterations": 2,
        "value_model": "shared",
        "prompts_per_iteration": 2,
        "samples_per_prompt": 2,
        "ppo_epochs": 1,
        "minibatch_size": 4,
        "max_new_tokens": 4,
        "eval_every": 2,
        "save_every": 2,
        "lora": {"r": 4, "alpha": 8},
        "top_k": 0,
        "seed": 3,
    }
    out, work = tmp_path / "model", tmp_path / "work"
    rewards = Rewards.from_sources([(_LetterE(), 1.0)])
    ppo.train_ppo(params, tiny_model, prompts(4, "q"), prompts(2, "d"), rewards, out, work)
    scalars = _scalars(out / "runs")
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    for key in ("reward", "kl", "entropy", "value_loss", "clip_fraction"):
        expected = [(h["iteration"], h[key]) for h in history if key in h]
        assert [s for s, _ in scalars[f"train/{key}"]] == [s for s, _ in expected], key
        assert [v for _, v in scalars[f"train/{key}"]] == pytest.approx(
            [v for _, v in expected], rel=1e-5, abs=1e-7
        )
    # Dev reward before training (iteration 0) and at the end.
    assert [s for s, _ in scalars["eval/reward"]] == [0, 2]
