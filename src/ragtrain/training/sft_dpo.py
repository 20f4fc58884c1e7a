"""Training: SFT and DPO with TRL, LoRA (PEFT) by default or full fine-tuning.

A model starts from its `init` model's folder and writes `results/<run>/models/<name>/`:
the merged weights and tokenizer (what evaluation loads), `adapter/` (LoRA only),
`trainer_state.json`, `metrics.json` and `loss.png`. Checkpoints go to the node's work
folder, so an interrupted run resumes from the last one; the model folder appears,
complete, only at the end.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from ragtrain.core.records import atomic_dir, write_json
from ragtrain.core.security import folder_trusts_remote_code, inherit_model_meta
from ragtrain.core.seeds import DEFAULT_SEED
from ragtrain.core.workdir import finish, work_dir

log = logging.getLogger(__name__)

COMMON_DEFAULTS = {
    "finetune": "lora",
    "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "targets": "all-linear"},
    "epochs": 1,
    "batch_size": 8,
    "grad_accum": 1,
    "max_length": 1024,
    # Steps of linear warm-up; a float below 1 is a share of all steps.
    "warmup": 0,
    "lr_scheduler": "linear",
    "weight_decay": 0.0,
    "logging_steps": 5,
    "save_steps": 50,
    "gradient_checkpointing": False,
    # random, or sequential: the data's own order (a curriculum, e.g. easy to hard)
    "sampling": "random",
    # auto: bfloat16 on GPU, float32 on CPU (bf16 matmuls crawl on CPUs without AVX512-BF16).
    "dtype": "auto",
    "seed": DEFAULT_SEED,
}
TRAIN_DEFAULTS = {
    "sft": {**COMMON_DEFAULTS, "learning_rate": 2e-4},
    "dpo": {**COMMON_DEFAULTS, "learning_rate": 5e-5, "beta": 0.1, "loss_type": "sigmoid"},
}
# DeepSpeed configs a training node can name (`deepspeed: zero2`); they live beside the
# prompts in the checkout's resources/.
DEEPSPEED_CONFIGS = Path(__file__).resolve().parents[2] / "resources" / "deepspeed"
DEEPSPEED_STAGES = ("zero2", "zero3")
# The record fields each trainer reads (TRL's conversational formats).
FIELDS = {"sft": ("prompt", "completion"), "dpo": ("prompt", "chosen", "rejected")}


def with_defaults(params: dict) -> dict:
    kind = params.get("kind")
    if kind not in TRAIN_DEFAULTS:
        raise ValueError(f"kind: expected one of {sorted(TRAIN_DEFAULTS)}, got {kind!r}")
    defaults = TRAIN_DEFAULTS[kind]
    return {**defaults, **params, "lora": {**defaults["lora"], **(params.get("lora") or {})}}


def lora_config(lora: dict, task_type: str = "CAUSAL_LM"):
    """PEFT's LoraConfig from a node's `lora` settings (r, alpha, dropout, targets)."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["targets"],
        task_type=task_type,
    )


def _dataset(path: str | Path, kind: str):
    from datasets import Dataset

    from ragtrain.core.records import iter_jsonl, require

    rows = []
    for lineno, record in iter_jsonl(path):
        for field in FIELDS[kind]:
            require(record, field, list, path, lineno)
        rows.append({field: record[field] for field in FIELDS[kind]})
    return Dataset.from_list(rows)


def deepspeed_config(name: str) -> Path:
    """resources/deepspeed/<name>.json: ZeRO-2 or ZeRO-3, its sizes left to the Trainer."""
    import importlib.util

    path = DEEPSPEED_CONFIGS / f"{name}.json"
    if name not in DEEPSPEED_STAGES or not path.is_file():
        raise ValueError(f"deepspeed: expected one of {list(DEEPSPEED_STAGES)}, got {name!r}")
    if importlib.util.find_spec("deepspeed") is None:
        raise ValueError(
            f"deepspeed: {name} needs the deepspeed package (the `gpu` extra or envs/train.yaml)"
        )
    return path


def _resolve_dtype(name: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def _args(kind: str, params: dict, output_dir: Path, has_dev: bool, n_train: int, dtype):
    import torch
    from trl import DPOConfig, SFTConfig

    steps_per_epoch = max(1, math.ceil(n_train / (params["batch_size"] * params["grad_accum"])))
    total = steps_per_epoch * params["epochs"]
    common = {
        "output_dir": str(output_dir),
        "num_train_epochs": params["epochs"],
        "per_device_train_batch_size": params["batch_size"],
        "per_device_eval_batch_size": params["batch_size"],
        "gradient_accumulation_steps": params["grad_accum"],
        "learning_rate": params["learning_rate"],
        "lr_scheduler_type": params["lr_scheduler"],
        "warmup_steps": params["warmup"],
        "weight_decay": params["weight_decay"],
        "logging_steps": params["logging_steps"],
        "save_strategy": "steps",
        "save_steps": params["save_steps"],
        "save_total_limit": 1,
        # One held-out point just past halfway; train() adds the final one.
        "eval_strategy": "steps" if has_dev and total > 1 else "no",
        "eval_steps": total // 2 + 1,
        "seed": params["seed"],
        "data_seed": params["seed"],
        "train_sampling_strategy": params["sampling"],
        "report_to": "none",
        "bf16": dtype == torch.bfloat16,
        "fp16": dtype == torch.float16,
        "gradient_checkpointing": params["gradient_checkpointing"],
        "max_length": params["max_length"],
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": torch.cuda.is_available(),
        # Several processes (DDP): every trainable weight gets a gradient each step.
        "ddp_find_unused_parameters": False,
        "disable_tqdm": False,
    }
    if params.get("deepspeed"):
        common["deepspeed"] = str(deepspeed_config(params["deepspeed"]))
    if kind == "sft":
        # Loss on the completion only: the prompt (documents, question) is given.
        return SFTConfig(**common, completion_only_loss=True)
    return DPOConfig(**common, beta=params["beta"], loss_type=[params["loss_type"]])


def shared_work_dir(root: str | Path, params: dict, inputs: list) -> Path:
    """The node's work folder (ragtrain.core.workdir) for a stage that may run as several
    processes (ragtrain.launch): the first process alone decides whether its state is
    resumed or cleared, and the others then find it ready."""
    from accelerate import PartialState

    with PartialState().main_process_first():
        return work_dir(root, params, inputs)


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


def _last_checkpoint(folder: Path) -> str | None:
    """The newest complete checkpoint: one cut short while saving has no trainer state."""
    if not folder.is_dir():
        return None
    steps = [
        (int(d.name.split("-")[1]), d)
        for d in folder.glob("checkpoint-*")
        if d.name.split("-")[1].isdigit()
    ]
    for _, path in sorted(steps, reverse=True):
        if (path / "trainer_state.json").is_file():
            return str(path)
        log.warning("skipping incomplete checkpoint %s", path)
    return None


def train(
    params: dict,
    init_dir: str | Path,
    train_path: str | Path,
    dev_path: str | Path | None,
    out_dir: str | Path,
    work_root: str | Path,
) -> dict:
    """Train one model node; return its metrics record."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer, SFTTrainer

    params = with_defaults(params)
    kind = params["kind"]
    if params["finetune"] not in ("lora", "full"):
        raise ValueError(f"finetune: expected 'lora' or 'full', got {params['finetune']!r}")
    train_ds = _dataset(train_path, kind)
    dev_ds = _dataset(dev_path, kind) if dev_path else None
    if len(train_ds) == 0:
        raise ValueError(f"{train_path}: no training records")
    if dev_ds is not None and len(dev_ds) == 0:
        dev_ds = None
    inputs = [init_dir, train_path, *([dev_path] if dev_path else [])]
    work = shared_work_dir(work_root, params, inputs)

    dtype = _resolve_dtype(params["dtype"])
    if dtype == torch.float16 and not torch.cuda.is_available():
        raise ValueError("dtype: float16 training needs a GPU; use float32 or auto on CPU")
    trust = folder_trusts_remote_code(init_dir)
    tokenizer = AutoTokenizer.from_pretrained(init_dir, trust_remote_code=trust)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Full fine-tuning keeps float32 master weights (bf16/fp16 autocast computes): updates
    # smaller than a bf16 weight's resolution would otherwise be rounded away. LoRA's
    # adapters are kept in float32 by PEFT, so the frozen weights can stay in `dtype`.
    load_dtype = torch.float32 if params["finetune"] == "full" else dtype
    model = AutoModelForCausalLM.from_pretrained(
        init_dir, dtype=load_dtype, trust_remote_code=trust
    )
    peft_config = None
    if params["finetune"] == "lora":
        peft_config = lora_config(params["lora"])
    args = _args(kind, params, work / "checkpoints", dev_ds is not None, len(train_ds), dtype)
    # TRL loads a reference model from the init folder's name: with the same setting.
    args.trust_remote_code = trust
    trainer_cls = SFTTrainer if kind == "sft" else DPOTrainer
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=dev_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    # TRL drops examples whose prompt alone fills max_length: say so, and stop if none is left.
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise ValueError(
            f"{train_path}: every example is longer than max_length ({args.max_length})"
        )
    if kept < len(train_ds):
        log.warning(
            "%d of %d examples dropped: longer than max_length (%d)",
            len(train_ds) - kept,
            len(train_ds),
            args.max_length,
        )
    resume = _last_checkpoint(work / "checkpoints")
    if resume:
        log.info("resuming from %s", resume)
    steps = _steps_trained()
    trainer.add_callback(steps)
    result = trainer.train(resume_from_checkpoint=resume)
    if steps.first is None:
        log.info("no step left to train: the checkpoint ends at step %d", trainer.state.global_step)
    else:
        log.info("trained steps %d to %d of %d", steps.first, steps.last, trainer.state.max_steps)
    dev_metrics = trainer.evaluate() if dev_ds is not None else {}
    # The final evaluation goes into the state too, so the curves end at the last step.
    n_dev = len(dev_ds) if dev_ds is not None else 0
    metrics = trainer_metrics(
        params, kind, result.metrics, dev_metrics, kept, n_dev, trainer, DEV_NAMES
    )

    trained = _gathered_model(trainer, params, init_dir, work, load_dtype)
    if trainer.is_world_process_zero():
        with atomic_dir(out_dir) as tmp:
            if peft_config is not None:
                trained.save_pretrained(tmp / "adapter")
                trained = trained.merge_and_unload()
            trained.to(dtype).save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            trainer.state.save_to_json(str(tmp / "trainer_state.json"))
            write_json(tmp / "metrics.json", metrics)
            inherit_model_meta(init_dir, tmp)
            plot_loss(trainer.state.log_history, kind, tmp / "loss.png", title=metrics["model"])
        finish(work)
        log.info("metrics: %s", metrics)
    return metrics


def _gathered_model(trainer, params: dict, init_dir, work: Path, load_dtype):
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
            gathered, dtype=load_dtype, trust_remote_code=trust
        )
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(init_dir, dtype=load_dtype, trust_remote_code=trust)
    # An adapter is weights (safetensors) and a config: no code of its own.
    return PeftModel.from_pretrained(base, gathered)


# TRL's held-out metric names -> ours.
DEV_NAMES = {
    "eval_loss": "dev_loss",
    "eval_mean_token_accuracy": "dev_token_accuracy",
    "eval_rewards/accuracies": "dev_reward_accuracy",
    "eval_rewards/margins": "dev_reward_margin",
}


def trainer_metrics(
    params, kind, train_metrics, dev_metrics, n_train, n_dev, trainer, dev_names
) -> dict:
    """A trained model's metrics record from a transformers Trainer's results; the
    held-out values in `dev_metrics` are renamed by `dev_names`."""
    out = {
        "model": params.get("name", ""),
        "kind": kind,
        "init": params.get("init"),
        "finetune": params["finetune"],
        "n_train": n_train,
        "n_dev": n_dev,
        "epochs": params["epochs"],
        "steps": trainer.state.global_step,
        # Training processes (GPUs): the global batch is batch_size x grad_accum x this.
        "processes": trainer.args.world_size,
        "train_loss": round(train_metrics.get("train_loss", float("nan")), 4),
        "train_runtime_s": round(train_metrics.get("train_runtime", 0.0), 1),
        "train_samples_per_second": round(train_metrics.get("train_samples_per_second", 0.0), 3),
        "trainable_parameters": sum(
            p.numel() for p in trainer.model.parameters() if p.requires_grad
        ),
    }
    for key, name in dev_names.items():
        if key in dev_metrics:
            out[name] = round(float(dev_metrics[key]), 4)
    return out


CURVES = {
    "sft": (("loss", "loss"), ("mean_token_accuracy", "token accuracy")),
    "dpo": (
        ("loss", "loss"),
        ("rewards/accuracies", "reward accuracy"),
        ("rewards/margins", "reward margin"),
    ),
}


def plot_loss(log_history: list[dict], kind: str, path: Path, title: str = "") -> None:
    """Training curves per logged step, held-out values as points (LLaMA-Factory's
    `--plot_loss`, plus reward accuracy and margins for DPO)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = CURVES[kind]
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], curves, strict=True):
        train = [(h["step"], h[key]) for h in log_history if key in h]
        dev = [(h["step"], h[f"eval_{key}"]) for h in log_history if f"eval_{key}" in h]
        if train:
            ax.plot(*zip(*train, strict=True), label="train", color="tab:blue")
        if dev:
            ax.plot(*zip(*dev, strict=True), "o--", label="dev", color="tab:orange")
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        if train or dev:
            ax.legend()
    if title:
        fig.suptitle(f"{title} ({kind.upper()})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
