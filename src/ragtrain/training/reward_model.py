"""Reward models: a scalar head on a causal LM, trained on preference pairs with TRL.

A reward model starts from a causal-LM folder (its `init`), loaded as a sequence
classifier with one output, and learns from a pair product (records `{id, prompt, chosen,
rejected}` in TRL's conversational format) that score(prompt + chosen) > score(prompt +
rejected) (Bradley-Terry loss). It writes, like `ragtrain.training.sft_dpo`, the merged weights and
tokenizer (what `RewardModelScorer` loads), `adapter/` (LoRA only),
`trainer_state.json`, `metrics.json` and `loss.png`; checkpoints go to the node's work
folder, so an interrupted run resumes from the last one.

The held-out pair accuracy in the metrics is measured on the saved model with
`RewardModelScorer`, the same code that later scores responses for RL.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

from ragtrain.core.records import atomic_dir, write_json
from ragtrain.core.security import folder_trusts_remote_code
from ragtrain.core.settings import with_defaults
from ragtrain.core.workdir import finish
from ragtrain.training.toolkit import (
    ON_RECORDS,
    check_finetune,
    kept_examples,
    last_checkpoint,
    load_dtype,
    load_tokenizer,
    lora_config,
    plot_curves,
    record_kwargs,
    save_model,
    shared_work_dir,
    trainer_metrics,
    training_dtype,
    trl_kwargs,
)
from ragtrain.training.tracking import save_logs

log = logging.getLogger(__name__)

REWARD_MODEL_DEFAULTS = {
    **ON_RECORDS,
    "learning_rate": 1e-4,
    # TRL's `center_rewards_coefficient`: a penalty on (r_chosen + r_rejected)^2 that keeps
    # rewards near zero (0.01 is the usual value); null: none.
    "center_rewards_coefficient": None,
}
FIELDS = ("prompt", "chosen", "rejected")


def _pairs(path: str | Path) -> list[dict]:
    """The pair records' conversations: `prompt` a list of messages, `chosen` and
    `rejected` non-empty lists of (assistant) messages."""
    from ragtrain.core.records import RecordError, iter_jsonl, require

    rows = []
    for lineno, record in iter_jsonl(path):
        for field in FIELDS:
            messages = require(record, field, list, path, lineno)
            if field != "prompt" and not messages:
                raise RecordError(path, lineno, f"field {field!r} has no message")
            for message in messages:
                if not (
                    isinstance(message, dict)
                    and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str)
                ):
                    raise RecordError(
                        path,
                        lineno,
                        f"field {field!r}: expected messages {{role, content}}, got {message!r}",
                    )
        rows.append({field: record[field] for field in FIELDS})
    return rows


def trl_config(params: dict, output_dir: Path, has_dev: bool, n_train: int, dtype):
    """TRL's RewardConfig for a node."""
    from trl import RewardConfig

    return RewardConfig(
        **trl_kwargs(params, output_dir, dtype),
        **record_kwargs(params, n_train, has_dev),
        center_rewards_coefficient=params["center_rewards_coefficient"],
    )


def _quiet_head_swap():
    """TRL's filter for the expected load report of a causal LM read as a classifier
    (`score.weight` new, `lm_head.weight` unused); a no-op if TRL moved it."""
    try:
        from trl.trainer.reward_trainer import suppress_seqcls_warning
    except ImportError:
        return contextlib.nullcontext()
    return suppress_seqcls_warning()


def train_reward_model(
    params: dict,
    init_dir: str | Path,
    train_path: str | Path,
    dev_path: str | Path | None,
    out_dir: str | Path,
    work_root: str | Path,
) -> dict:
    """Train one reward model node; return its metrics record."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, set_seed
    from trl import RewardTrainer

    params = with_defaults(params, REWARD_MODEL_DEFAULTS, kinds=False)
    check_finetune(params)
    train_rows = _pairs(train_path)
    dev_rows = _pairs(dev_path) if dev_path else []
    if not train_rows:
        raise ValueError(f"{train_path}: no training records")
    inputs = [init_dir, train_path, *([dev_path] if dev_path else [])]
    work = shared_work_dir(work_root, params, inputs)

    dtype = training_dtype(params["dtype"])
    trust = folder_trusts_remote_code(init_dir)
    tokenizer = load_tokenizer(init_dir)
    # The score head is new and random: seed it.
    set_seed(params["seed"])
    with _quiet_head_swap():
        model = AutoModelForSequenceClassification.from_pretrained(
            init_dir,
            num_labels=1,
            dtype=load_dtype(params["finetune"], dtype),
            trust_remote_code=trust,
        )
    # The classifier reads the score at the last token that is not padding.
    model.config.pad_token_id = tokenizer.pad_token_id
    peft_config = None
    if params["finetune"] == "lora":
        # SEQ_CLS: PEFT trains (and saves) a full copy of the `score` head beside the
        # adapters and leaves it out of `all-linear`'s targets.
        peft_config = lora_config(params["lora"], task_type="SEQ_CLS")
        # The head is trained whole, like full fine-tuning: keep float32 master weights
        # (bf16 autocast computes), or small updates round away.
        if getattr(model, "score", None) is not None:
            model.score.to(torch.float32)
    args = trl_config(params, work / "checkpoints", bool(dev_rows), len(train_rows), dtype)
    args.trust_remote_code = trust
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(dev_rows) if dev_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    # TRL drops pairs with a side longer than max_length.
    kept = kept_examples(trainer, len(train_rows), "pair", train_path)
    resume = last_checkpoint(work / "checkpoints")
    if resume:
        log.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    # The final evaluation goes into the state too, so the curves end at the last step.
    dev_metrics = trainer.evaluate() if dev_rows else {}
    metrics = trainer_metrics(
        params, "reward_model", result.metrics, dev_metrics, kept, len(dev_rows), trainer, DEV_NAMES
    )

    if not trainer.is_world_process_zero():
        # Launched as several processes: the first one alone writes the model.
        return {}
    with atomic_dir(out_dir) as tmp:
        trained = save_model(
            trainer.model, tokenizer, tmp, dtype, init_dir, adapter=peft_config is not None
        )
        trainer.state.save_to_json(str(tmp / "trainer_state.json"))
        save_logs(work, tmp, trainer)  # the trackers' (tracking), if any
        del trainer, trained, model
        if dev_rows:
            scorer = RewardModelScorer(tmp, batch_size=params["batch_size"])
            metrics.update(pair_metrics(scorer, dev_rows, prefix="dev_"))
            del scorer
        write_json(tmp / "metrics.json", metrics)
        plot_curves(
            _log_history(tmp / "trainer_state.json"),
            CURVES,
            tmp / "loss.png",
            title=f"{metrics['model']} (reward model)",
        )
    finish(work)
    log.info("metrics: %s", metrics)
    return metrics


def _log_history(state_path: Path) -> list[dict]:
    import json

    return json.loads(state_path.read_text())["log_history"]


# Logged keys plotted per step (held-out values as points): loss, pair accuracy, and the
# chosen - rejected margin.
CURVES = (("loss", "loss"), ("accuracy", "pair accuracy"), ("margin", "reward margin"))
# TRL's own held-out numbers: means of per-batch means over the pairs within max_length.
DEV_NAMES = {"eval_loss": "dev_loss", "eval_accuracy": "dev_accuracy", "eval_margin": "dev_margin"}


def pair_metrics(scorer: RewardModelScorer, rows: Sequence[dict], prefix: str = "") -> dict:
    """Share of pairs whose chosen side scores strictly above the rejected one, and the
    mean score difference, over all `rows` ({prompt, chosen, rejected})."""
    chosen = scorer.score_messages([r["prompt"] + r["chosen"] for r in rows])
    rejected = scorer.score_messages([r["prompt"] + r["rejected"] for r in rows])
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    n = max(1, len(margins))
    return {
        f"{prefix}pair_accuracy": round(sum(m > 0 for m in margins) / n, 4),
        f"{prefix}mean_margin": round(sum(margins) / n, 4),
    }


class RewardModelScorer:
    """Scores (prompt, response) with a trained reward model folder.

    A conversation is tokenized as TRL's RewardTrainer tokenized the training pairs:
    the tokenizer's chat template over prompt + assistant message (no generation prompt,
    nothing added), right-padded in batches; the score is the classifier's logit at the
    last token that is not padding.
    """

    def __init__(self, model_dir: str | Path, batch_size: int = 8, device: str | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification

        self.batch_size = max(1, int(batch_size))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        trust = folder_trusts_remote_code(model_dir)
        self.tokenizer = load_tokenizer(model_dir)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, dtype=dtype, trust_remote_code=trust
        )
        if self.model.config.num_labels != 1:
            raise ValueError(f"{model_dir}: not a reward model (num_labels != 1)")
        # Padding is found by id: it has to be the id the batches are padded with.
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()

    def score(self, conversations: Sequence[list[dict]], responses: Sequence[str]) -> list[float]:
        """The reward of each response (assistant text) to its conversation (the prompt's
        chat messages)."""
        if len(conversations) != len(responses):
            raise ValueError(
                f"score: {len(conversations)} conversations but {len(responses)} responses"
            )
        return self.score_messages(
            [
                [*prompt, {"role": "assistant", "content": text}]
                for prompt, text in zip(conversations, responses, strict=True)
            ]
        )

    def score_messages(self, conversations: Sequence[list[dict]]) -> list[float]:
        """The reward of each whole conversation (ending with the scored response)."""
        import torch

        ids = [
            list(
                self.tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=True)[
                    "input_ids"
                ]
            )
            for messages in conversations
        ]
        # Batches of similar lengths pad less; scores come back in the given order.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        scores = [0.0] * len(ids)
        pad_id = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                width = max(len(ids[i]) for i in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                logits = self.model(
                    input_ids=input_ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    use_cache=False,
                ).logits
                for i, value in zip(batch, logits[:, 0].float().tolist(), strict=True):
                    scores[i] = float(value)
        return scores
