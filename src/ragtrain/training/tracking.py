"""Experiment trackers: a training node's `tracking` (TensorBoard, W&B, MLflow).

A node's `tracking` (the top-level `tracking` by default; empty: off) is a list of
trackers. For the TRL trainers it becomes transformers' `report_to` (`trainer_kwargs`),
with `run_name` `<run>/<node>`; our own loops (PPO) log through `Tracker`, the same
metrics under the same names (`train/<key>`, `eval/<key>`).

Where each writes, unless the user's environment says otherwise (a variable the user
set is left alone; this process sets the others):

- tensorboard: event files in the node's work folder, `runs/`
  (`TENSORBOARD_LOGGING_DIR`), copied into the model folder's `runs/` when the model is
  saved (`save_logs`): the model folder is written whole at the end, and a resumed run
  adds its event files beside the first ones (TensorBoard drops the steps logged twice);
- wandb: offline (`WANDB_MODE=offline`: `wandb sync` uploads a run later), under the
  work folder (`WANDB_DIR`), copied into the model folder's `wandb/`; project `ragtrain`;
- mlflow: a local SQLite store in the work folder (`MLFLOW_TRACKING_URI`; MLflow 3 refuses
  new file stores), copied into the model folder's `mlflow.db` (`mlflow ui
  --backend-store-uri sqlite:///<model>/mlflow.db`); experiment `ragtrain`.

Tokens (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN, ...) come from the environment only; the
logs redact them (ragtrain.core.security). Each tracker's package is imported only when
a node names it; a tracker whose package is missing is an error naming the key.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path

log = logging.getLogger(__name__)

# tracker -> (its package's import name, what to install)
PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
}
TRACKERS = tuple(PACKAGES)
# What each tracker writes in the work folder (by default), copied into the model folder.
LOGS = {"tensorboard": "runs", "wandb": "wandb", "mlflow": "mlflow.db"}
PROJECT = "ragtrain"
# Keys of a logged record that say where it is (the step given), not a metric.
STEP_KEYS = ("iteration", "step")
# The environment variables this process set itself (name -> value): set again for the
# next node trained in the same process; any other value is the user's and is kept.
_SET: dict[str, str] = {}


def _key(params: dict) -> str:
    name = params.get("name")
    return f"models.{name}.tracking" if name else "tracking"


def trackers(params: dict) -> list[str]:
    """The node's trackers, checked: known names whose packages are installed."""
    value = params.get("tracking")
    if value is None or value == "none":
        return []
    if isinstance(value, str):
        value = [value]
    key = _key(params)
    if not isinstance(value, list | tuple) or not all(v in TRACKERS for v in value):
        raise ValueError(
            f"{key}: expected a list of {', '.join(TRACKERS)} (empty or null: off), got {value!r}"
        )
    chosen = list(dict.fromkeys(value))
    for tracker in chosen:
        module, package = PACKAGES[tracker]
        if not _installed(module):
            raise ValueError(
                f"{key}: {tracker} needs the {package} package, which is not installed in"
                f" this environment: pip install {package} (or drop {tracker} from {key})"
            )
    return chosen


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run_name(output: str | Path) -> str:
    """`<run>/<node>` for a model folder `results/<run>/models/<node>`; elsewhere (a stage
    run alone) the folder's name."""
    out = Path(output)
    if out.parent.name == "models" and out.parent.parent.name:
        return f"{out.parent.parent.name}/{out.name}"
    return out.name


def stage_params(params: dict, output: str | Path) -> dict:
    """A training stage's params: the node's `name` (its model folder's) and `run_name`
    before the node's own settings, its trackers checked before anything loads."""
    out = {"name": Path(output).name, "run_name": run_name(output), **params}
    trackers(out)
    return out


def prepare_env(chosen: list[str], work: str | Path, environ=None) -> dict[str, str]:
    """Point the chosen trackers at the work folder, W&B offline: each variable set
    only where the user has not set it. Returns the variables this call set."""
    environ = os.environ if environ is None else environ
    work = Path(work).resolve()
    wanted: dict[str, str] = {}
    if "tensorboard" in chosen:
        wanted["TENSORBOARD_LOGGING_DIR"] = str(work / LOGS["tensorboard"])
    if "wandb" in chosen:
        wanted.update(WANDB_MODE="offline", WANDB_DIR=str(work), WANDB_PROJECT=PROJECT)
    if "mlflow" in chosen:
        wanted["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / LOGS['mlflow']}"
        wanted["MLFLOW_EXPERIMENT_NAME"] = PROJECT
    done = {}
    for name, value in wanted.items():
        if name in environ and environ[name] != _SET.get(name):
            continue  # the user's own
        environ[name] = value
        _SET[name] = value
        done[name] = value
    return done


def trainer_kwargs(params: dict, work: str | Path) -> dict:
    """transformers' TrainingArguments for the node's trackers: `report_to` ("none" when
    off) and `run_name`; with trackers, the environment prepared (`prepare_env`)."""
    chosen = trackers(params)
    if not chosen:
        return {"report_to": "none"}
    prepare_env(chosen, work)
    return {"report_to": chosen, "run_name": params.get("run_name") or params.get("name")}


def save_logs(work: str | Path, folder: str | Path, trainer=None) -> list[str]:
    """Close the trackers' writers (the trainer's TensorBoard writer, the W&B and MLflow
    runs) and copy their local logs from the work folder into the model `folder`.
    Returns the names copied."""
    if trainer is not None:
        for callback in trainer.callback_handler.callbacks:
            writer = getattr(callback, "tb_writer", None)
            if writer is not None:
                writer.close()
                callback.tb_writer = None
    _end_runs()
    copied = []
    for name in LOGS.values():
        source, target = Path(work) / name, Path(folder) / name
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True, ignore_dangling_symlinks=True)
        elif source.is_file():
            shutil.copy2(source, target)
        else:
            continue
        copied.append(name)
    return copied


def _end_runs() -> None:
    """End the W&B and MLflow runs still open (only if this process imported them)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and mlflow.active_run() is not None:
        mlflow.end_run()


def tag(key: str) -> str:
    """A logged key's name in the trackers, as transformers names the Trainer's:
    `eval/<key>` for held-out values (`eval_` or `dev_`), else `train/<key>`."""
    for prefix in ("eval_", "dev_"):
        if key.startswith(prefix):
            return f"eval/{key[len(prefix) :]}"
    return f"train/{key}"


class Tracker:
    """Our own loops' metrics to the node's trackers: `log({key: value}, step)` writes
    the numbers (named by `tag`), `close()` ends the runs. Off (no tracker): a no-op."""

    def __init__(self, params: dict, work: str | Path, config: dict | None = None):
        self.chosen = trackers(params)
        self._writer = self._wandb = self._mlflow = None
        if not self.chosen:
            return
        prepare_env(self.chosen, work)
        name = params.get("run_name") or params.get("name")
        if "tensorboard" in self.chosen:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=os.environ["TENSORBOARD_LOGGING_DIR"])
        if "wandb" in self.chosen:
            import wandb

            # The folder given, not only through WANDB_DIR: W&B reads its environment
            # once per process.
            self._wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", PROJECT),
                name=name,
                config=config,
                dir=os.environ.get("WANDB_DIR"),
            )
        if "mlflow" in self.chosen:
            import mlflow

            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT))
            self._mlflow = mlflow
            mlflow.start_run(run_name=name)
            if config:
                mlflow.log_params({k: str(v)[:250] for k, v in config.items()})

    def log(self, values: dict, step: int) -> None:
        numbers = {
            tag(k): float(v)
            for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in STEP_KEYS
        }
        if not numbers:
            return
        if self._writer is not None:
            for name, value in numbers.items():
                self._writer.add_scalar(name, value, step)
            self._writer.flush()
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)
        if self._mlflow is not None:
            self._mlflow.log_metrics(numbers, step=step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if self._mlflow is not None:
            self._mlflow.end_run()
            self._mlflow = None
