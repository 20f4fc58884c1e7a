"""Security helpers: whose code a model load may run, and secrets kept out of logs.

Remote code: a model folder whose config.json has an `auto_map` ships its own Python
code, which transformers (and vLLM, sentence-transformers, PyLate) run only with
`trust_remote_code=True`. ragtrain passes that flag on every load, False unless the
config turns it on for the named model (`models.<name>.trust_remote_code`, or the
setting beside an `encoder`). A model folder the workflow writes records the setting in
`ragtrain_model.json`; a model trained from it (SFT, DPO, reward model, PPO, GRPO,
RLOO) inherits it, so that turning it on for a base model is enough.

Secrets: tokens (HF_TOKEN, ...) come from the environment only, never from the
config; `RedactSecrets` replaces their values in every log record.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

# What a model folder carries about itself (beside config.json).
MODEL_META = "ragtrain_model.json"
# Environment variables whose values must never reach a log or an output.
# The trackers' (ragtrain.training.tracking) included: W&B's key, MLflow's token and
# password (basic auth).
SECRET_ENV = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "WANDB_API_KEY",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
)
REDACTED = "[REDACTED]"
# Shorter values (a stray "1") would redact unrelated text.
_MIN_SECRET = 6


def folder_trusts_remote_code(folder: str | Path) -> bool:
    """The setting recorded in a workflow model folder; False for any other folder."""
    meta = Path(folder) / MODEL_META
    if not meta.is_file():
        return False
    try:
        value = json.loads(meta.read_text(encoding="utf-8")).get("trust_remote_code", False)
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"{meta}: unreadable model metadata ({e})") from None
    return value is True


def trust_remote_code(source: str | Path, setting: bool | None = None) -> bool:
    """Whether loading `source` may run the model's own code: the config's `setting` for
    a model the config names (a base model's path or hub id, an encoder), else what the
    model folder records (False when it records nothing)."""
    if setting is not None:
        if not isinstance(setting, bool):
            raise ValueError(f"trust_remote_code: expected true or false, got {setting!r}")
        return setting
    return folder_trusts_remote_code(source)


def write_model_meta(folder: str | Path, trust: bool) -> None:
    """Record a model folder's remote-code setting (called on the folder being written)."""
    meta = {"trust_remote_code": trust is True}
    (Path(folder) / MODEL_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def inherit_model_meta(init_dir: str | Path, folder: str | Path) -> None:
    """A trained model keeps the remote-code setting of the model it started from."""
    write_model_meta(folder, folder_trusts_remote_code(init_dir))


def secrets(environ=None) -> list[str]:
    """The values of the secret environment variables that are set, longest first."""
    environ = os.environ if environ is None else environ
    values = {environ.get(name, "") for name in SECRET_ENV}
    return sorted((v for v in values if len(v) >= _MIN_SECRET), key=len, reverse=True)


def redact(text: str, values: list[str] | None = None) -> str:
    for value in secrets() if values is None else values:
        text = text.replace(value, REDACTED)
    return text


class RedactSecrets(logging.Filter):
    """Replace the values of SECRET_ENV in a record's message, arguments and traceback.

    Installed on handlers (a logger's filters do not see records of its children)."""

    def filter(self, record: logging.LogRecord) -> bool:
        values = secrets()
        if not values:
            return True
        message = record.getMessage()
        clean = redact(message, values)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, values)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, values)
        return True


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Add RedactSecrets to every handler of `logger` (the root logger by default)."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())
