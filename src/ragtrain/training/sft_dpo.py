"""Training: SFT and DPO with TRL, and KTO, ORPO and SimPO (their own parts in
`ragtrain.training.preference`), LoRA (PEFT) by default or full fine-tuning; with
`quantization`, LoRA on a 4-bit or 8-bit frozen base (QLoRA, on a GPU).

A model starts from its `init` model's folder and writes `results/<run>/models/<name>/`:
the merged weights and tokenizer (what evaluation loads), `adapter/` (LoRA only),
`trainer_state.json`, `metrics.json` and `loss.png`. Checkpoints go to the node's work
folder, so an interrupted run resumes from the last one; the model folder appears,
complete, only at the end; a quantized base's adapter is merged onto the init model
loaded unquantized, so the folder is a plain model either way. What it shares with the
other trainers (TRL's arguments, defaults, dtype, LoRA, checkpoints, the model folder,
curves) is in `ragtrain.training.toolkit`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ragtrain.core.records import atomic_dir, write_json
from ragtrain.core.security import folder_trusts_remote_code
from ragtrain.core.settings import with_defaults
from ragtrain.core.workdir import finish
from ragtrain.training import preference
from ragtrain.training.preference import PREFERENCE_DEFAULTS, PREFERENCE_KINDS

# DEEPSPEED_*, deepspeed_config and lora_config stay importable from here too.
from ragtrain.training.toolkit import (
    ON_RECORDS,
    check_finetune,
    check_max_steps,
    check_schedule,
    kept_examples,
    last_checkpoint,
    load_dtype,
    load_tokenizer,
    lora_config,
    model_record,
    plot_curves,
    quantization_kwargs,
    record_kwargs,
    save_model,
    shared_work_dir,
    train_or_finish,
    trainer_metrics,
    training_dtype,
    trl_kwargs,
)
from ragtrain.training.tracking import save_logs

log = logging.getLogger(__name__)

# QLoRA: the frozen base quantized under LoRA, `4bit` (NF4) or `8bit`; null: not quantized.
QUANTIZATION_DEFAULT = {"quantization": None}
TRAIN_DEFAULTS = {
    "sft": {
        **ON_RECORDS,
        **QUANTIZATION_DEFAULT,
        "learning_rate": 2e-4,
        # packing: examples packed best-fit into rows of max_length tokens (TRL's `bfd`),
        # each attending to itself only; padding_free: each batch one row, no padding.
        "packing": False,
        "padding_free": False,
    },
    "dpo": {
        **ON_RECORDS,
        **QUANTIZATION_DEFAULT,
        "learning_rate": 5e-5,
        "beta": 0.1,
        "loss_type": "sigmoid",
        # Weight of an NLL term on the chosen answers (RPO); null: none, plain DPO.
        "rpo_alpha": None,
    },
    # KTO, ORPO, SimPO (ragtrain.training.preference).
    **{
        kind: {**ON_RECORDS, **QUANTIZATION_DEFAULT, **own}
        for kind, own in PREFERENCE_DEFAULTS.items()
    },
}
# The record fields each trainer reads (TRL's conversational or standard formats); KTO
# reads pairs or judged samples (preference.kto_rows).
FIELDS = {"sft": ("prompt", "completion"), "dpo": ("prompt", "chosen", "rejected")}
FIELDS |= {"orpo": FIELDS["dpo"], "simpo": FIELDS["dpo"]}


def _dataset(path: str | Path, kind: str, params: dict | None = None, split: str = "train"):
    from datasets import Dataset

    if kind == "kto":
        return Dataset.from_list(preference.kto_rows(path, split, params or {}))
    return Dataset.from_list(_rows(path, kind))


def _rows(path: str | Path, kind: str) -> list[dict]:
    """The trainer's rows of a record file: message lists (TRL's conversational format,
    chat-templated by TRL), or plain text that already holds the chat template (TRL's
    standard format, used as is): the record says so with `meta.chat_template_applied`.
    One format per file, as TRL takes one per dataset."""
    from ragtrain.core.records import RecordError, iter_jsonl, require

    rows, first = [], None
    for lineno, record in iter_jsonl(path):
        text = prompt_is_text(record, path, lineno)
        who = f"record {record.get('id')!r}"
        for field in FIELDS[kind]:
            require(record, field, str if text else list, path, lineno)
        if first is None:
            first = (text, lineno)
        elif text != first[0]:
            forms = {True: "plain text", False: "message lists"}
            raise RecordError(
                path,
                lineno,
                f"{who} holds {forms[text]} but line {first[1]} holds {forms[first[0]]}:"
                " one format per file",
            )
        rows.append({field: record[field] for field in FIELDS[kind]})
    return rows


def prompt_is_text(record: dict, path: str | Path, lineno: int) -> bool:
    """Whether a record's prompt is plain text (used as is: it must say it holds the chat
    template already) rather than a message list."""
    from ragtrain.core.records import RecordError

    text = isinstance(record.get("prompt"), str)
    if text and (record.get("meta") or {}).get("chat_template_applied") is not True:
        raise RecordError(
            path,
            lineno,
            f"record {record.get('id')!r}: a str 'prompt' is used as is, with no chat template,"
            " so 'meta.chat_template_applied' must be true (else give message lists)",
        )
    return text


def trl_config(kind: str, params: dict, output_dir: Path, has_dev: bool, n_train: int, dtype):
    """TRL's SFTConfig or DPOConfig for a node."""
    common = {
        **trl_kwargs(params, output_dir, dtype),
        **record_kwargs(params, n_train, has_dev),
        # Several processes (DDP): every trainable weight gets a gradient each step.
        "ddp_find_unused_parameters": False,
    }
    if kind == "sft":
        from trl import SFTConfig

        check_packing(params)
        # packing: TRL's best-fit decreasing (`bfd`), which is padding-free itself: the
        # rows' position_ids restart at each example, which keeps its attention to itself
        # (transformers' masks under sdpa/eager; flash attention's varlen kernels).
        # padding_free alone is set on the collator (train()): TRL would stop cutting
        # examples at max_length.
        packing = {"packing": True, "packing_strategy": "bfd"} if params.get("packing") else {}
        # Loss on the completion only: the prompt (documents, question) is given.
        return SFTConfig(**common, completion_only_loss=True, **packing)
    if kind in PREFERENCE_KINDS:
        return preference.trl_config(kind, params, common)
    losses = _dpo_losses(params)
    from trl import DPOConfig

    return DPOConfig(**common, beta=params["beta"], **losses)


def check_packing(params: dict) -> None:
    """`packing` and `padding_free` (SFT): booleans; packing reorders the examples (best
    fit by length), so it cannot keep `sampling: sequential`'s order."""
    name = params.get("name")
    for key in ("packing", "padding_free"):
        if not isinstance(params.get(key, False), bool):
            where = f"models.{name}.{key}" if name else key
            raise ValueError(f"{where}: expected true or false, got {params[key]!r}")
    if params.get("packing") and params.get("sampling") == "sequential":
        where = f"models.{name}.packing" if name else "packing"
        raise ValueError(
            f"{where}: packing puts examples together by length (best fit), so the data's"
            " own order (sampling: sequential) would be lost; use sampling: random, or"
            " padding_free: true (no padding, order kept) instead of packing"
        )


def _dpo_losses(params: dict) -> dict:
    """DPOConfig's losses: the node's `loss_type`, plus with `rpo_alpha` TRL's `sft` loss
    (the mean NLL of the chosen answers' tokens) at that weight. TRL >= 1.0 has no
    `rpo_alpha` of its own: RPO's loss is this sum."""
    check_rpo_alpha(params)
    alpha = params.get("rpo_alpha")
    if alpha is None:
        return {"loss_type": [params["loss_type"]]}
    return {"loss_type": [params["loss_type"], "sft"], "loss_weights": [1.0, float(alpha)]}


def check_rpo_alpha(params: dict) -> None:
    alpha = params.get("rpo_alpha")
    if alpha is not None and (
        not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha < 0
    ):
        raise ValueError(f"rpo_alpha: expected a number >= 0 or null, got {alpha!r}")


def _steps_trained():
    """A Trainer callback that keeps the first and last optimizer step this process ran
    (`first`, `last`): a resumed run starts after its checkpoint's step, not at 1."""
    from transformers import TrainerCallback

    class StepsTrained(TrainerCallback):
        first: int | None = None
        last: int | None = None

        def on_step_end(self, args, state, control, **kwargs):
            if self.first is None:
                self.first = state.global_step
            self.last = state.global_step

    return StepsTrained()


def train(
    params: dict,
    init_dir: str | Path,
    train_path: str | Path,
    dev_path: str | Path | None,
    out_dir: str | Path,
    work_root: str | Path,
) -> dict:
    """Train one model node; return its metrics record."""
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer, SFTTrainer

    params = with_defaults(params, TRAIN_DEFAULTS)
    kind = params["kind"]
    check_finetune(params)
    # Before the model loads: settings TRL's config reads.
    check_max_steps(params)
    check_schedule(params)
    if kind == "dpo":
        check_rpo_alpha(params)
    if kind == "sft":
        check_packing(params)
    if kind in PREFERENCE_KINDS:
        preference.check(params)
    dtype = training_dtype(params["dtype"])
    # {} unless quantized; else checked here, before anything loads (LoRA, no ZeRO-3, a
    # CUDA GPU, bitsandbytes).
    quantized = quantization_kwargs(params, dtype)
    train_ds = _dataset(train_path, kind, params)
    dev_ds = _dataset(dev_path, kind, params, "dev") if dev_path else None
    if dev_ds is not None and len(dev_ds) == 0:
        dev_ds = None
    if len(train_ds) == 0:
        if kind == "dpo":
            return _unchanged(params, init_dir, out_dir, len(dev_ds) if dev_ds else 0)
        raise ValueError(f"{train_path}: no training records")
    inputs = [init_dir, train_path, *([dev_path] if dev_path else [])]
    work = shared_work_dir(work_root, params, inputs)

    trust = folder_trusts_remote_code(init_dir)
    tokenizer = load_tokenizer(init_dir)
    weights_dtype = load_dtype(params["finetune"], dtype)
    model = AutoModelForCausalLM.from_pretrained(
        init_dir, dtype=weights_dtype, trust_remote_code=trust, **quantized
    )
    if quantized:
        model = _prepared_for_kbit(model, params)
    peft_config = None
    if params["finetune"] == "lora":
        peft_config = lora_config(params["lora"])
    if kind == "kto":
        params = preference.with_class_weights(params, train_ds)
    args = trl_config(kind, params, work / "checkpoints", dev_ds is not None, len(train_ds), dtype)
    # TRL loads a reference model from the init folder's name: with the same setting.
    args.trust_remote_code = trust
    trainers = {"sft": SFTTrainer, "dpo": DPOTrainer}
    trainer_cls = trainers[kind] if kind in trainers else preference.trainer_class(kind)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=dev_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if kind == "sft" and params.get("padding_free") and not params.get("packing"):
        # TRL cuts examples at max_length only when the config says padding_free is off
        # (or packs): cut as unpacked, then each batch is flattened into one row.
        trainer.data_collator.padding_free = True
    kept = kept_examples(trainer, len(train_ds), "example", train_path)
    resume = last_checkpoint(work / "checkpoints")
    if resume:
        log.info("resuming from %s", resume)
    steps = _steps_trained()
    trainer.add_callback(steps)
    train_metrics = train_or_finish(trainer, resume)
    if steps.first is None:
        log.info("no step left to train: the checkpoint ends at step %d", trainer.state.global_step)
    else:
        log.info("trained steps %d to %d of %d", steps.first, steps.last, trainer.state.max_steps)
    dev_metrics = trainer.evaluate() if dev_ds is not None else {}
    # The final evaluation goes into the state too, so the curves end at the last step.
    n_dev = len(dev_ds) if dev_ds is not None else 0
    metrics = trainer_metrics(
        params, kind, train_metrics, dev_metrics, kept, n_dev, trainer, DEV_NAMES
    )
    metrics |= preference.metrics(kind, params)
    if quantized:
        metrics["quantization"] = params["quantization"]

    trained = _gathered_model(trainer, params, init_dir, work, weights_dtype)
    if trainer.is_world_process_zero():
        with atomic_dir(out_dir) as tmp:
            save_model(
                trained,
                tokenizer,
                tmp,
                dtype,
                init_dir,
                adapter=peft_config is not None,
                quantized=bool(quantized),
            )
            trainer.state.save_to_json(str(tmp / "trainer_state.json"))
            save_logs(work, tmp, trainer)  # the trackers' (tracking), if any
            write_json(tmp / "metrics.json", metrics)
            title = f"{metrics['model']} ({'SimPO' if kind == 'simpo' else kind.upper()})"
            plot_curves(trainer.state.log_history, CURVES[kind], tmp / "loss.png", title=title)
        finish(work)
        log.info("metrics: %s", metrics)
    return metrics


# What a model folder holds of its own training, not copied to a model left unchanged.
TRAINING_RECORDS = ("metrics.json", "trainer_state.json", "loss.png")


def _unchanged(params: dict, init_dir: str | Path, out_dir: str | Path, n_dev: int) -> dict:
    """A DPO node with no pair to train on (backtracking: a step where no sample was
    wrong) is its init model as it is: the chain goes on from the same weights. Its
    metrics say so; it has no curves."""
    import shutil

    from accelerate import PartialState

    metrics = {
        **model_record(params, "dpo", 0, n_dev),
        "steps": 0,
        "unchanged": "no pairs to train on: the init model's weights",
    }
    log.warning("%s: no pairs to train on; the model is its init model, unchanged", out_dir)
    if PartialState().is_main_process:
        with atomic_dir(out_dir) as tmp:
            for file in Path(init_dir).iterdir():
                if file.is_file() and file.name not in TRAINING_RECORDS:
                    shutil.copy2(file, tmp / file.name)
            write_json(tmp / "metrics.json", metrics)
    return metrics


def _prepared_for_kbit(model, params: dict):
    """A quantized base made ready for LoRA training (PEFT's prepare_model_for_kbit_training):
    its weights frozen, the unquantized ones (norms, embeddings, head) in float32, and with
    `gradient_checkpointing` the inputs' gradients on. TRL 1.x does not do it itself; its
    trainers add the LoRA adapter (`peft_config`) to the model this returns."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=params["gradient_checkpointing"]
    )


def _gathered_model(trainer, params: dict, init_dir, work: Path, weights_dtype):
    """The trained model, whole, on the main process. Under ZeRO-3 every process holds a
    slice of the weights: the Trainer gathers them into a saved model (adapter, for
    LoRA), which the main process loads back onto the init model."""
    if params.get("deepspeed") != "zero3":
        return trainer.model
    from transformers import AutoModelForCausalLM

    gathered = work / "gathered"
    trainer.save_model(str(gathered))  # collective: every process takes part
    if not trainer.is_world_process_zero():
        return None
    trust = folder_trusts_remote_code(init_dir)
    if params["finetune"] == "full":
        return AutoModelForCausalLM.from_pretrained(
            gathered, dtype=weights_dtype, trust_remote_code=trust
        )
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(
        init_dir, dtype=weights_dtype, trust_remote_code=trust
    )
    # An adapter is weights (safetensors) and a config: no code of its own.
    return PeftModel.from_pretrained(base, gathered)


# TRL's held-out metric names -> ours.
DEV_NAMES = {
    "eval_loss": "dev_loss",
    "eval_mean_token_accuracy": "dev_token_accuracy",
    "eval_rewards/accuracies": "dev_reward_accuracy",
    "eval_rewards/margins": "dev_reward_margin",
    # KTO's KL estimate (its reference point); ORPO's log odds ratio.
    "eval_kl": "dev_kl",
    "eval_log_odds_ratio": "dev_log_odds_ratio",
}


# Logged keys plotted per step (held-out values as points): LLaMA-Factory's
# `--plot_loss`, plus reward accuracy and margins for DPO.
CURVES = {
    "sft": (("loss", "loss"), ("mean_token_accuracy", "token accuracy")),
    "dpo": (
        ("loss", "loss"),
        ("rewards/accuracies", "reward accuracy"),
        ("rewards/margins", "reward margin"),
    ),
    "kto": (("loss", "loss"), ("rewards/margins", "reward margin"), ("kl", "KL estimate")),
    "orpo": (
        ("loss", "loss"),
        ("rewards/accuracies", "reward accuracy"),
        ("log_odds_ratio", "log odds ratio"),
    ),
    "simpo": (
        ("loss", "loss"),
        ("rewards/accuracies", "reward accuracy"),
        ("rewards/margins", "reward margin"),
    ),
}
