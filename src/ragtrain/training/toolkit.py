"""What the trainers share: SFT/DPO (`ragtrain.training.sft_dpo`), reward models
(`.reward_model`) and GRPO/RLOO (`.group_rl`) on TRL, and our own PPO (`.ppo`).

- defaults: `COMMON`, the settings every TRL trainer has, and `ON_RECORDS`, those of the
  trainers that learn from a fixed set of records (SFT, DPO, reward models);
- TRL's arguments: `trl_kwargs` maps a node's settings to the TrainingArguments every
  trainer sets alike (the learning-rate schedule by `schedule_kwargs`), `record_kwargs`
  adds the step budget and held-out schedule of the record trainers; each trainer adds
  its own and builds its TRL config;
- model set-up: the training dtype, the dtype to load weights in, the tokenizer, LoRA's
  config, DeepSpeed's config files, a quantized (QLoRA) base's load arguments;
- a run's life: the node's work folder shared by processes, the newest complete
  checkpoint to resume from (`train_or_finish` trains on from it), the model folder's
  weights (adapter, merged model, tokenizer; a quantized base's adapter merged onto the
  unquantized init model), the common metrics record, and the curves (`loss.png`).

Not for: a trainer's algorithm, its data or its own metrics (those stay in its module),
nor for defaults outside training (`ragtrain.core.settings` applies every kind's).
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from ragtrain.core.security import folder_trusts_remote_code, inherit_model_meta
from ragtrain.core.seeds import DEFAULT_SEED
from ragtrain.core.workdir import work_dir
from ragtrain.training.tracking import trainer_kwargs

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- defaults

# The settings every TRL trainer (SFT, DPO, reward model, GRPO, RLOO) has.
COMMON = {
    "finetune": "lora",
    "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "targets": "all-linear"},
    "epochs": 1,
    "batch_size": 8,
    # Steps of linear warm-up; a float below 1 is a share of all steps.
    "warmup": 0,
    "lr_scheduler": "linear",
    "weight_decay": 0.0,
    "logging_steps": 5,
    "save_steps": 50,
    "gradient_checkpointing": False,
    # auto: bfloat16 on GPU, float32 on CPU (bf16 matmuls crawl on CPUs without AVX512-BF16).
    "dtype": "auto",
    "seed": DEFAULT_SEED,
    # Experiment trackers (tensorboard, wandb, mlflow; ragtrain.training.tracking): the
    # top-level `tracking` unless the node sets its own; empty: off.
    "tracking": [],
}
# Trainers that learn from a fixed set of records (SFT, DPO, reward models), not from
# answers they sample.
ON_RECORDS = {
    **COMMON,
    "grad_accum": 1,
    "max_length": 1024,
    # random, or sequential: the data's own order (a curriculum, e.g. easy to hard)
    "sampling": "random",
    # Optimizer steps in all, overriding epochs; null: the epochs decide.
    "max_steps": None,
    # The rate a cosine schedule ends at (transformers' cosine_with_min_lr); null: the
    # schedule's own end (0 for cosine).
    "min_learning_rate": None,
}
FINETUNE = ("lora", "full")

# DeepSpeed configs a training node can name (`deepspeed: zero2`); they live beside the
# prompts in the checkout's resources/ (src/ragtrain/training/ is three folders down).
DEEPSPEED_CONFIGS = Path(__file__).resolve().parents[3] / "resources" / "deepspeed"
DEEPSPEED_STAGES = ("zero2", "zero3")


def check_finetune(params: dict) -> None:
    if params["finetune"] not in FINETUNE:
        raise ValueError(f"finetune: expected 'lora' or 'full', got {params['finetune']!r}")


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_max_steps(params: dict) -> None:
    """`max_steps`, if the node has it: null or a positive integer."""
    max_steps = params.get("max_steps")
    if max_steps is not None and (
        not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1
    ):
        raise ValueError(f"max_steps: expected a positive integer or null, got {max_steps!r}")


# The schedules `min_learning_rate` ends: both become transformers' cosine_with_min_lr.
COSINE = ("cosine", "cosine_with_min_lr")


def check_schedule(params: dict) -> None:
    """`min_learning_rate` (null, or a rate from 0 to `learning_rate`) ends a cosine
    schedule, and transformers' cosine_with_min_lr needs it."""
    min_lr, scheduler = params.get("min_learning_rate"), params["lr_scheduler"]
    if min_lr is None:
        if scheduler == "cosine_with_min_lr":
            raise ValueError(
                "lr_scheduler cosine_with_min_lr needs min_learning_rate (the rate it ends at)"
            )
        return
    if scheduler not in COSINE:
        raise ValueError(
            f"min_learning_rate needs lr_scheduler cosine or cosine_with_min_lr (it is the"
            f" final rate of a cosine schedule), got lr_scheduler {scheduler!r}"
        )
    peak = params["learning_rate"]
    if not _number(min_lr) or min_lr < 0 or (_number(peak) and min_lr > peak):
        raise ValueError(
            f"min_learning_rate: expected a number from 0 to learning_rate ({peak!r}),"
            f" got {min_lr!r}"
        )


# ---------------------------------------------------------------- model set-up


def resolve_dtype(name: str):
    """The torch dtype a `dtype` setting names; auto: bfloat16 on GPU, float32 on CPU."""
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def training_dtype(name: str):
    """`resolve_dtype`, refusing float16 on CPU (no fp16 autocast there to train with)."""
    import torch

    dtype = resolve_dtype(name)
    if dtype == torch.float16 and not torch.cuda.is_available():
        raise ValueError("dtype: float16 training needs a GPU; use float32 or auto on CPU")
    return dtype


def load_dtype(finetune: str, dtype):
    """The dtype to load the init weights in. Full fine-tuning keeps float32 master
    weights (bf16/fp16 autocast computes): updates smaller than a bf16 weight's
    resolution would otherwise be rounded away. LoRA's adapters are kept in float32 by
    PEFT, so the frozen weights can stay in `dtype`."""
    import torch

    return torch.float32 if finetune == "full" else dtype


def load_tokenizer(model_dir: str | Path):
    """The model folder's tokenizer, padding with EOS where it has no pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        model_dir, trust_remote_code=folder_trusts_remote_code(model_dir)
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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


def deepspeed_config(name: str) -> Path:
    """resources/deepspeed/<name>.json: ZeRO-2 or ZeRO-3, its sizes left to the Trainer."""
    path = DEEPSPEED_CONFIGS / f"{name}.json"
    if name not in DEEPSPEED_STAGES or not path.is_file():
        raise ValueError(f"deepspeed: expected one of {list(DEEPSPEED_STAGES)}, got {name!r}")
    if importlib.util.find_spec("deepspeed") is None:
        raise ValueError(
            f"deepspeed: {name} needs the deepspeed package (the `gpu` extra or envs/train.yaml)"
        )
    return path


# The `quantization` of a frozen base under LoRA (QLoRA): bitsandbytes' 4-bit NF4 or
# 8-bit weights; null: the base in its load dtype.
QUANTIZATION = ("4bit", "8bit")


def check_quantization(params: dict) -> None:
    """`quantization`'s checks that need no GPU, so a misconfigured node fails early: a
    known value, LoRA (a quantized base cannot be fully fine-tuned), and no ZeRO-3."""
    quantization, key = params.get("quantization"), _quantization_key(params)
    if quantization is None:
        return
    if quantization not in QUANTIZATION:
        raise ValueError(f"{key}: expected null, '4bit' or '8bit', got {quantization!r}")
    finetune = params.get("finetune", "lora")
    if finetune != "lora":
        raise ValueError(
            f"{key}: {quantization} needs finetune: lora (a quantized base cannot be"
            f" fully fine-tuned), got finetune: {finetune!r}"
        )
    if params.get("deepspeed") == "zero3":
        raise ValueError(
            f"{key}: {quantization} is not supported with deepspeed: zero3 (use zero2,"
            " or no DeepSpeed)"
        )


def _quantization_key(params: dict) -> str:
    """The key an error names: `models.<node>.quantization` where the stage knows its node
    (the config check names it itself)."""
    name = params.get("name")
    return f"models.{name}.quantization" if name else "quantization"


def quantization_kwargs(params: dict, dtype) -> dict:
    """The `from_pretrained` arguments that load a node's base quantized: {} for null; for
    `4bit` QLoRA's NF4 with double quantization, computing in `dtype`; for `8bit`
    LLM.int8(). Checked before anything loads: LoRA, no ZeRO-3, a CUDA GPU and the
    bitsandbytes package. bitsandbytes places the weights on the current GPU (the
    process's own, which accelerate sets)."""
    check_quantization(params)
    quantization = params.get("quantization")
    if quantization is None:
        return {}
    import importlib.util

    import torch

    key = _quantization_key(params)
    if not torch.cuda.is_available():
        raise ValueError(
            f"{key}: {quantization} needs a CUDA GPU (bitsandbytes' kernels); none is visible"
            " to this job (run it where one is, e.g. --profile slurm, or set quantization: null)"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(
            f"{key}: {quantization} needs the bitsandbytes package: pip install -e '.[gpu]'"
        )
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": config}


# ---------------------------------------------------------------- RL rollouts

# Who samples an RL node's rollouts: `hf` (generate on the training model), `vllm` (a vLLM
# engine beside it: ours serves PPO's policy adapter, TRL's colocate mode GRPO's and
# RLOO's synced weights), `auto` (vllm with a CUDA GPU and the vllm package, else hf).
# vllm: the engine's share of GPU memory (the rest trains) and its context length.
ROLLOUT_DEFAULTS = {"rollouts": "auto", "rollout_gpu_memory": 0.3, "rollout_max_model_len": 2048}
ROLLOUT_BACKENDS = ("auto", "hf", "vllm")


def check_rollouts(params: dict) -> None:
    if params["rollouts"] not in ROLLOUT_BACKENDS:
        raise ValueError(
            f"rollouts: expected one of {', '.join(ROLLOUT_BACKENDS)}, got {params['rollouts']!r}"
        )


def rollout_backend(params: dict) -> str:
    """`hf` or `vllm`: the node's `rollouts`, with `auto` resolved for this machine."""
    import torch

    check_rollouts(params)
    choice = params["rollouts"]
    has_vllm = importlib.util.find_spec("vllm") is not None
    if choice == "auto":
        return "vllm" if torch.cuda.is_available() and has_vllm else "hf"
    if choice == "vllm" and not has_vllm:
        raise ValueError("rollouts: vllm needs the vllm package (the `generate` env), or use hf")
    return choice


# ---------------------------------------------------------------- TRL's arguments


def trl_kwargs(params: dict, output_dir: Path, dtype) -> dict:
    """The TrainingArguments every TRL trainer here sets alike, from a node's settings
    (COMMON's, plus learning_rate, grad_accum and, if set, deepspeed)."""
    import torch

    kwargs = {
        "output_dir": str(output_dir),
        "num_train_epochs": params["epochs"],
        "per_device_train_batch_size": params["batch_size"],
        "gradient_accumulation_steps": params["grad_accum"],
        "learning_rate": params["learning_rate"],
        **schedule_kwargs(params),
        "warmup_steps": params["warmup"],
        "weight_decay": params["weight_decay"],
        "logging_steps": params["logging_steps"],
        "save_strategy": "steps",
        "save_steps": params["save_steps"],
        "save_total_limit": 1,
        "seed": params["seed"],
        "data_seed": params["seed"],
        # "none" unless the node names trackers (its work folder holds their logs).
        **trainer_kwargs(params, Path(output_dir).parent),
        # TRL defaults bf16 on, even on CPU: follow the dtype instead.
        "bf16": dtype == torch.bfloat16,
        "fp16": dtype == torch.float16,
        "gradient_checkpointing": params["gradient_checkpointing"],
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": torch.cuda.is_available(),
        "disable_tqdm": False,
    }
    if params.get("deepspeed"):
        kwargs["deepspeed"] = str(deepspeed_config(params["deepspeed"]))
    return kwargs


def schedule_kwargs(params: dict) -> dict:
    """The learning-rate schedule's TrainingArguments: the node's `lr_scheduler`, or, with
    `min_learning_rate`, a cosine annealed to that rate (transformers' cosine_with_min_lr,
    warm-up included)."""
    check_schedule(params)
    min_lr = params.get("min_learning_rate")
    if min_lr is None:
        return {"lr_scheduler_type": params["lr_scheduler"]}
    return {
        "lr_scheduler_type": "cosine_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr": float(min_lr)},
    }


def record_kwargs(params: dict, n_train: int, has_dev: bool) -> dict:
    """What the record trainers (ON_RECORDS) add: the step budget, cut length, data order,
    held-out set."""
    check_max_steps(params)
    max_steps = params.get("max_steps")
    steps_per_epoch = max(1, math.ceil(n_train / (params["batch_size"] * params["grad_accum"])))
    total = max_steps or steps_per_epoch * params["epochs"]
    halfway = total // 2 + 1
    return {
        # TRL's -1: the epochs decide.
        "max_steps": max_steps or -1,
        "per_device_eval_batch_size": params["batch_size"],
        # One held-out point just past halfway; the trainer adds the final one (so none
        # when halfway is the last step: it would be evaluated twice).
        "eval_strategy": "steps" if has_dev and halfway < total else "no",
        "eval_steps": halfway,
        "train_sampling_strategy": params["sampling"],
        "max_length": params["max_length"],
    }


class _NothingLeft(Exception):
    """Raised at the start of training from a checkpoint at the last step."""


def train_or_finish(trainer, resume: Path | None) -> dict:
    """Run `trainer.train`, from the checkpoint `resume` if any; return its metrics. From a
    checkpoint at the last step (a run stopped after training: the Trainer saves a
    checkpoint there) the Trainer loads the checkpoint and state, but trains no step, and
    the metrics are {}: resumed at `max_steps` within an epoch, it would train one more."""
    from transformers import TrainerCallback

    class StopIfDone(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            # Weights, optimizer and state are loaded by now (DeepSpeed's too).
            if 0 < state.max_steps <= state.global_step:
                raise _NothingLeft

    stop = StopIfDone()
    trainer.add_callback(stop)
    try:
        return trainer.train(resume_from_checkpoint=str(resume) if resume else None).metrics
    except _NothingLeft:
        trainer.is_in_train = False
        return {}
    finally:
        trainer.remove_callback(stop)


def kept_examples(trainer, n_given: int, noun: str, path: str | Path) -> int:
    """How many training examples TRL kept: it drops those longer than max_length. Say
    so, and stop if none is left. Packed (SFT's `packing`), a row holds several examples:
    its `seq_lengths` count them."""
    dataset = trainer.train_dataset
    if "seq_lengths" in (dataset.column_names or ()):
        kept = sum(len(lengths) for lengths in dataset["seq_lengths"])
    else:
        kept = len(dataset)
    max_length = trainer.args.max_length
    if kept == 0:
        raise ValueError(f"{path}: every {noun} is longer than max_length ({max_length})")
    if kept < n_given:
        log.warning(
            "%d of %d %ss dropped: longer than max_length (%d)",
            n_given - kept,
            n_given,
            noun,
            max_length,
        )
    return kept


# ---------------------------------------------------------------- work folder, checkpoints


def shared_work_dir(root: str | Path, params: dict, inputs: list) -> Path:
    """The node's work folder (ragtrain.core.workdir) for a stage that may run as several
    processes (ragtrain.launch): the first process alone decides whether its state is
    resumed or cleared, and the others then find it ready."""
    from accelerate import PartialState

    with PartialState().main_process_first():
        return work_dir(root, params, inputs)


def last_checkpoint(
    folder: Path, prefix: str = "checkpoint", complete: str = "trainer_state.json"
) -> Path | None:
    """The newest complete checkpoint `<prefix>-<step>` in `folder`: one cut short while
    saving lacks its `complete` file (the Trainer's state, written last)."""
    steps = [
        (int(d.name.split("-")[1]), d)
        for d in Path(folder).glob(f"{prefix}-*")
        if d.name.split("-")[1].isdigit()
    ]
    for _, path in sorted(steps, reverse=True):
        if (path / complete).is_file():
            return path
        log.warning("skipping incomplete checkpoint %s", path)
    return None


# ---------------------------------------------------------------- the model folder


def save_model(
    model,
    tokenizer,
    folder: Path,
    dtype,
    init_dir: str | Path,
    adapter: bool,
    quantized: bool = False,
):
    """Write a trained model into `folder` as evaluation loads it: `adapter/` first (with
    `adapter`: a PEFT model), then the weights merged and cast to `dtype`, the tokenizer,
    and the init model's trust setting. Returns the merged model. With `quantized` (a
    LoRA adapter on a quantized base) the adapter is merged onto the init model loaded
    unquantized (`merge_onto_init`), never into the quantized weights: the folder is a
    plain model. The first process alone calls it, inside `atomic_dir`."""
    if quantized and not adapter:
        raise ValueError("quantization: a quantized base is trained with LoRA only")
    if adapter:
        model.save_pretrained(folder / "adapter")
        if quantized:
            model = merge_onto_init(init_dir, folder / "adapter", dtype)
        else:
            model = model.merge_and_unload()
    model = model.to(dtype)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    inherit_model_meta(init_dir, folder)
    return model


def merge_onto_init(init_dir: str | Path, adapter_dir: str | Path, dtype):
    """The init model, loaded unquantized in `dtype` (on the CPU), with the LoRA adapter
    saved in `adapter_dir` merged into its weights: how a model trained on a quantized
    base (QLoRA) is saved as a plain, full-precision model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        init_dir, dtype=dtype, trust_remote_code=folder_trusts_remote_code(init_dir)
    )
    # An adapter is weights (safetensors) and a config: no code of its own.
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()


def model_record(params: dict, kind: str, n_train: int, n_dev: int) -> dict:
    """The head of a trained model's metrics record: what it is and what it learned from."""
    return {
        "model": params.get("name", ""),
        "kind": kind,
        "init": params.get("init"),
        "finetune": params["finetune"],
        "n_train": n_train,
        "n_dev": n_dev,
    }


def trainer_metrics(
    params, kind, train_metrics, dev_metrics, n_train, n_dev, trainer, dev_names
) -> dict:
    """A trained model's metrics record from a transformers Trainer's results; the
    held-out values in `dev_metrics` are renamed by `dev_names`."""
    out = {
        **model_record(params, kind, n_train, n_dev),
        "epochs": params["epochs"],
        "steps": trainer.state.global_step,
        # Training processes (GPUs): the global batch is batch_size x grad_accum x this.
        "processes": trainer.args.world_size,
        # None: no step trained in this run (resumed from the last step's checkpoint).
        "train_loss": (
            round(train_metrics["train_loss"], 4) if "train_loss" in train_metrics else None
        ),
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


# ---------------------------------------------------------------- curves

# Up to this many points a curve marks them: a short run's or a rare value's (PPO's dev
# reward) points would otherwise be a line too short to see, or none.
FEW_POINTS = 30


def plot_curves(
    log_history: list[dict],
    curves: Sequence[tuple[str, str]],
    path: Path,
    title: str = "",
    x: str = "step",
    columns: int | None = None,
    parts: dict[str, dict[str, str]] | None = None,
) -> None:
    """One panel per (logged key, label) in `curves`, over `x` (LLaMA-Factory's
    `--plot_loss`, a panel per metric): the key's logged values as a line, its held-out
    values (`eval_<key>`) as points. `parts[key]` ({logged key: legend}) are drawn thin
    beneath the key's line, e.g. each reward source under GRPO's total reward. Panels
    fill rows of `columns` (default: one row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = columns or len(curves)
    rows = math.ceil(len(curves) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, curves, strict=False):
        below = (parts or {}).get(key, {})
        dev = _points(log_history, x, f"eval_{key}")
        lines = [(name, legend, {"lw": 1, "alpha": 0.8}) for name, legend in below.items()]
        main = "total" if below else "train" if dev else None
        style = {"color": "black", "lw": 1.8} if below else {"color": "tab:blue"}
        lines.append((key, main, style))
        for name, legend, line_style in lines:
            points = _points(log_history, x, name)
            if points:
                marker = "o" if len(points) <= FEW_POINTS else None
                ax.plot(*zip(*points, strict=True), label=legend, marker=marker, ms=3, **line_style)
        if dev:
            ax.plot(*zip(*dev, strict=True), "o--", label="dev", color="tab:orange")
        ax.set_xlabel(x)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        if len(ax.get_lines()) > 1:
            ax.legend()
    for ax in list(axes.flat)[len(curves) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _points(log_history: list[dict], x: str, key: str) -> list[tuple]:
    return [(h[x], h[key]) for h in log_history if h.get(key) is not None and x in h]
