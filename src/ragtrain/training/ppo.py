"""PPO with per-token rewards, on torch + accelerate (TRL no longer has PPO).

One iteration:
1. rollouts: `samples_per_prompt` sampled answers per prompt, from the policy through
   the generation interface: HF generate on the training model itself, or (`rollouts:
   vllm`, the default where a GPU and vLLM are) a vLLM engine on the init model serving
   the policy's current LoRA adapter, saved after each update. Either way the log-probs
   PPO trains with are the training model's own, computed on the sampled tokens;
2. rewards: every reward source's (character offset, value) pairs placed on the tokens
   that hold those characters (holistic mode: their sum on the last token), minus
   `kl_coef * (logp - logp_ref)` on every token; the reference is the init model, i.e.
   the policy with its LoRA adapter disabled;
3. advantages by GAE over the value head's estimates, whitened;
4. `ppo_epochs` passes over the rollouts in minibatches: clipped policy loss, clipped
   value loss, optional entropy bonus, gradient accumulation.

The policy is a LoRA adapter on the init model (`quantization`: on a 4-bit or 8-bit
quantized init model, QLoRA; the saved policy is merged onto the unquantized one). The
value function is either a second
LoRA adapter with a scalar head (`value_model: separate`, the published setting) or a
scalar head on the policy's trunk (`shared`, one forward pass). Several processes
(`accelerate launch`) each roll out their share of the prompts; gradients are averaged
across processes before each step.

Checkpoints (adapters, head, optimizer, scheduler, random state, logs) go to the
node's work folder and a rerun resumes from the last one; the model folder holds the
merged policy of the iteration with the best mean dev reward.

The arithmetic (GAE, whitening, the clipped losses, the KL per token) is in
`ragtrain.training.ppo_math`, the policy and value model in `.ppo_model`; this module
runs the loop.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import tempfile
import time
import weakref
from pathlib import Path

from ragtrain.core.records import atomic_dir, write_json
from ragtrain.core.seeds import DEFAULT_SEED, stable_seed
from ragtrain.core.settings import with_defaults
from ragtrain.training.ppo_math import (
    gae,
    kl_per_token,
    masked_mean,
    policy_loss,
    value_loss,
    whiten,
)
from ragtrain.training.ppo_model import ActorCritic, Batch
from ragtrain.training.rewards import Rewards, combine, place_rewards, token_char_ends, total
from ragtrain.training.toolkit import (
    ROLLOUT_DEFAULTS,
    check_quantization,
    check_rollouts,
    last_checkpoint,
    load_tokenizer,
    plot_curves,
    resolve_dtype,
    rollout_backend,
    save_model,
)
from ragtrain.training.tracking import Tracker, save_logs

log = logging.getLogger(__name__)

PPO_DEFAULTS = {
    # LoRA without dropout: dropout would make the policy differ between the rollout's
    # log-probs and the update's, so the ratio would not start at 1.
    "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": "all-linear"},
    # QLoRA: the frozen init model quantized under the adapters, `4bit` (NF4) or `8bit`
    # (bitsandbytes, on a GPU); null: not quantized.
    "quantization": None,
    # separate: a second LoRA adapter with a scalar head; shared: a head on the policy.
    "value_model": "separate",
    "iterations": 20,
    "prompts_per_iteration": 8,
    "samples_per_prompt": 4,
    "ppo_epochs": 4,
    # rollouts per optimizer step, split into grad_accum micro-batches
    "minibatch_size": 8,
    "grad_accum": 1,
    "learning_rate": 1.0e-5,
    "lr_scheduler": "constant",
    "warmup": 0,
    "max_grad_norm": 1.0,
    "kl_coef": 0.3,
    "gamma": 1.0,
    "lam": 0.95,
    "clip": 0.2,
    "value_clip": 0.2,
    "vf_coef": 1.0,
    "entropy_coef": 0.0,
    "whiten_rewards": False,
    # the whole reward on the last token instead of at each source's offsets
    "holistic": False,
    "max_new_tokens": 32,
    "temperature": 0.7,
    "top_k": 20,
    "top_p": 1.0,
    "generation_batch_size": 16,
    # Who samples the rollouts (HF generate or a vLLM engine beside the training model).
    **ROLLOUT_DEFAULTS,
    # evaluate (greedy, mean dev reward) and checkpoint every this many iterations
    "eval_every": 5,
    "save_every": 5,
    "dtype": "auto",
    "seed": DEFAULT_SEED,
    "rewards": [{"kind": "correctness"}],
    # Experiment trackers (ragtrain.training.tracking); empty: off.
    "tracking": [],
}


# ---------------------------------------------------------------- the trainer


def check(params: dict) -> None:
    """Raise ValueError naming the key for settings the loop cannot run with."""
    if params["value_model"] not in ("separate", "shared"):
        raise ValueError(
            f"value_model: expected 'separate' or 'shared', got {params['value_model']!r}"
        )
    if params["minibatch_size"] % params["grad_accum"]:
        raise ValueError(
            f"minibatch_size ({params['minibatch_size']}) must be a multiple of "
            f"grad_accum ({params['grad_accum']})"
        )
    check_quantization(params)
    check_rollouts(params)


class PPOTrainer:
    """The PPO loop over prompt records ({id, prompt: conversation, answers, ...})."""

    def __init__(self, params: dict, init_dir, rewards: Rewards, accelerator=None):
        import torch
        from accelerate import Accelerator
        from transformers import get_scheduler

        from ragtrain.generation.engine import HFGenerator, Sampling

        self.params = params = with_defaults(params, PPO_DEFAULTS, kinds=False)
        check(params)
        # cpu=True without a GPU: several CPU processes (torchrun) then form a gloo group;
        # otherwise accelerate would treat each as a lone process.
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        self.rewards = rewards
        torch.manual_seed(params["seed"] + self.accelerator.process_index)
        self.tokenizer = load_tokenizer(init_dir)
        self.dtype = resolve_dtype(params["dtype"])
        self.ac = ActorCritic(init_dir, params, self.accelerator.device, self.dtype)
        self.optimizer = torch.optim.AdamW(self.ac.trainable().values(), lr=params["learning_rate"])
        rollouts = params["prompts_per_iteration"] * params["samples_per_prompt"]
        steps = (
            params["iterations"]
            * params["ppo_epochs"]
            * math.ceil(rollouts / params["minibatch_size"])
        )
        warmup = params["warmup"]
        self.scheduler = get_scheduler(
            params["lr_scheduler"],
            self.optimizer,
            num_warmup_steps=round(warmup * steps) if 0 < warmup < 1 else int(warmup),
            num_training_steps=steps,
        )
        self.backend = rollout_backend(params)
        if self.backend == "vllm":
            self.generator = _rollout_engine(init_dir, params, self.dtype)
            self._adapters = Path(tempfile.mkdtemp(prefix="ragtrain-ppo-policy-"))
            # Removed with the trainer, or at exit after an error.
            self.close = weakref.finalize(self, shutil.rmtree, self._adapters, True)
        else:
            self.generator = HFGenerator.from_model(
                self.ac.model, self.tokenizer, {"batch_size": params["generation_batch_size"]}
            )
        # The policy's weights change with each step and checkpoint load; vLLM serves the
        # adapter saved at `_served` (a version behind: saved again before sampling).
        self._version, self._served = 0, None
        self.sampling = Sampling(
            max_new_tokens=params["max_new_tokens"],
            temperature=params["temperature"],
            top_p=params["top_p"],
            top_k=params["top_k"],
            n=params["samples_per_prompt"],
        )
        self.greedy = Sampling(max_new_tokens=params["max_new_tokens"])
        self.timings: dict[str, float] = {}

    # -- rollouts

    def _prompt_ids(self, conversation) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _response_ids(self, completion) -> list[int]:
        ids = list(completion.token_ids)
        eos = self.tokenizer.eos_token_id
        # The HF backend drops padding, and EOS is often the pad token: an answer the
        # model ended gets its EOS back, so the policy learns where to stop.
        if completion.finish_reason == "eos" and eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        return ids or [eos]

    def generate(self, examples: list[dict], sampling, seed_salt: str) -> list[dict]:
        """One rollout per sample: {example, prompt_ids, response_ids, text}."""
        seeds = [stable_seed(self.params["seed"], ex["id"], seed_salt) for ex in examples]
        began = time.perf_counter()
        served = {"adapter": self._policy_adapter()} if self.backend == "vllm" else {}
        outputs = self.generator.chat([ex["prompt"] for ex in examples], sampling, seeds, **served)
        self._time("generation", began)
        rollouts = []
        for example, completions in zip(examples, outputs, strict=True):
            prompt_ids = self._prompt_ids(example["prompt"])
            for c in completions:
                response_ids = self._response_ids(c)
                text = self.tokenizer.decode(response_ids, skip_special_tokens=True)
                rollouts.append(
                    {
                        "example": example,
                        "prompt_ids": prompt_ids,
                        "response_ids": response_ids,
                        "text": text,
                    }
                )
        return rollouts

    def _policy_adapter(self) -> Path:
        """The policy's LoRA adapter as it is now, in a folder vLLM can load (saved once
        per version of the weights)."""
        if self._served != self._version:
            folder = self._adapters / f"v{self._version}"
            # The policy adapter ("default") alone: at the folder's top, as vLLM reads it.
            self.accelerator.unwrap_model(self.ac.model).save_pretrained(
                folder, selected_adapters=["default"]
            )
            self._served = self._version
        return self._adapters / f"v{self._version}"

    def _time(self, phase: str, began: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - began

    # -- rewards, values, advantages

    def score(self, rollouts: list[dict]) -> dict:
        """Everything the updates need, computed once per rollout batch."""
        import torch

        p = self.params
        began = time.perf_counter()
        examples = [r["example"] for r in rollouts]
        texts = [r["text"] for r in rollouts]
        per_source = self.rewards.per_source(examples, texts)
        placed = combine(per_source, len(rollouts))
        batch = Batch.build(
            [r["prompt_ids"] for r in rollouts],
            [r["response_ids"] for r in rollouts],
            self.tokenizer.pad_token_id,
            self.accelerator.device,
        )
        scores = torch.zeros_like(batch.mask)
        for i, (r, pl) in enumerate(zip(rollouts, placed, strict=True)):
            if p["holistic"]:
                # the last token, EOS included: the answer is judged once it is finished
                scores[i, len(r["response_ids"]) - 1] = total(pl)
            else:
                ends = token_char_ends(self.tokenizer, r["response_ids"])
                scores[i, : len(ends)] = torch.tensor(place_rewards(pl, ends))
        self._time("reward", began)
        began = time.perf_counter()
        with torch.no_grad():
            logp, values, _ = self.ac.forward(batch)
            ref_logp = self.ac.reference_logprobs(batch)
        self._time("forward", began)
        kl = kl_per_token(logp, ref_logp, batch.mask)
        if p["whiten_rewards"]:
            scores = whiten(scores, batch.mask, shift_mean=False)
        token_rewards = scores - p["kl_coef"] * kl
        advantages, returns = gae(token_rewards, values, batch.mask, p["gamma"], p["lam"])
        advantages = whiten(advantages, batch.mask)
        return {
            "batch": batch,
            "logp": logp,
            "values": values,
            "advantages": advantages,
            "returns": returns,
            "stats": {
                "reward": sum(total(pl) for pl in placed) / len(placed),
                **{
                    f"reward/{name}": sum(total(pl) for pl in lists) / len(lists)
                    for name, lists in per_source.items()
                },
                "kl": (kl.sum(1)).mean().item(),
                "response_length": batch.mask.sum(1).mean().item(),
            },
        }

    # -- updates

    def optimize(self, scored: dict, rng: random.Random) -> dict:
        import torch

        p = self.params
        began = time.perf_counter()
        batch = scored["batch"]
        n = batch.mask.shape[0]
        micro = p["minibatch_size"] // p["grad_accum"]
        totals: dict[str, float] = {}
        updates = 0
        for _ in range(p["ppo_epochs"]):
            order = list(range(n))
            rng.shuffle(order)
            for start in range(0, n, p["minibatch_size"]):
                chosen = order[start : start + p["minibatch_size"]]
                for m in range(0, len(chosen), micro):
                    index = torch.tensor(chosen[m : m + micro], device=batch.mask.device)
                    part = batch.select(index)
                    logp, values, entropy = self.ac.forward(part, with_entropy=True)
                    pg, pg_clip = policy_loss(
                        logp,
                        scored["logp"][index],
                        scored["advantages"][index],
                        part.mask,
                        p["clip"],
                    )
                    vf, vf_clip = value_loss(
                        values,
                        scored["values"][index],
                        scored["returns"][index],
                        part.mask,
                        p["value_clip"],
                    )
                    ent = masked_mean(entropy, part.mask)
                    loss = pg + p["vf_coef"] * vf - p["entropy_coef"] * ent
                    (loss * len(index) / len(chosen)).backward()
                    with torch.no_grad():
                        approx_kl = masked_mean(
                            0.5 * (logp - scored["logp"][index]) ** 2, part.mask
                        )
                    for key, value in (
                        ("policy_loss", pg),
                        ("value_loss", vf),
                        ("entropy", ent),
                        ("clip_fraction", pg_clip),
                        ("value_clip_fraction", vf_clip),
                        ("approx_kl", approx_kl),
                    ):
                        totals[key] = totals.get(key, 0.0) + value.item() * len(index)
                self._step()
                updates += 1
        self._time("optimization", began)
        count = p["ppo_epochs"] * n
        return {key: value / count for key, value in totals.items()} | {"updates": updates}

    def _step(self) -> None:
        import torch

        params = list(self.ac.trainable().values())
        if self.accelerator.num_processes > 1:
            for param in params:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                param.grad = self.accelerator.reduce(param.grad, reduction="mean")
        torch.nn.utils.clip_grad_norm_(params, self.params["max_grad_norm"])
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._version += 1

    # -- evaluation

    def dev_reward(self, examples: list[dict]) -> float:
        """Mean total reward of greedy answers over all processes' dev examples."""
        import torch

        mine = examples[self.accelerator.process_index :: self.accelerator.num_processes]
        totals = []
        if mine:
            rollouts = self.generate(mine, self.greedy, "dev")
            totals = self.rewards.totals(
                [r["example"] for r in rollouts], [r["text"] for r in rollouts]
            )
        summed = torch.tensor([sum(totals), len(totals)], device=self.accelerator.device)
        summed = self.accelerator.reduce(summed, reduction="sum")
        return (summed[0] / summed[1].clamp(min=1)).item()

    # -- state

    def state_dict(self) -> dict:
        return {n: p.detach().cpu().clone() for n, p in self.ac.trainable().items()}

    def load_state_dict(self, state: dict) -> None:
        import torch

        params = self.ac.trainable()
        missing = set(params) - set(state)
        if missing:
            raise ValueError(f"checkpoint lacks {sorted(missing)[:3]}")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state[name])
        self._version += 1


def _rollout_engine(init_dir: str | Path, params: dict, dtype):
    """A vLLM engine on the init model that serves LoRA adapters of the policy's rank.
    Beside the training model on one GPU, it takes `rollout_gpu_memory` of it."""
    import torch

    from ragtrain.generation.engine import VLLMGenerator, device_defaults

    settings = device_defaults(
        {
            "backend": "vllm",
            "dtype": str(dtype).removeprefix("torch."),
            "seed": params["seed"],
            "max_model_len": params["rollout_max_model_len"],
            "gpu_memory_utilization": (
                params["rollout_gpu_memory"] if torch.cuda.is_available() else None
            ),
            "enforce_eager": None,
            "tensor_parallel_size": 1,
            "max_lora_rank": params["lora"]["r"],
        }
    )
    return VLLMGenerator(str(init_dir), settings)


def iteration_prompts(examples: list[dict], iteration: int, per_iteration: int, seed: int):
    """The prompts of one iteration: consecutive slices of a seeded shuffle, reshuffled
    each pass over the data (a function of the iteration, so a resumed run takes the same)."""
    n = len(examples)
    out = []
    for k in range(iteration * per_iteration, (iteration + 1) * per_iteration):
        epoch, pos = divmod(k, n)
        order = list(range(n))
        random.Random(stable_seed(seed, "epoch", epoch)).shuffle(order)
        out.append(examples[order[pos]])
    return out


# ---------------------------------------------------------------- checkpoints and the stage


def _save_checkpoint(trainer: PPOTrainer, folder: Path, state: dict) -> None:
    import torch
    from safetensors.torch import save_file

    with atomic_dir(folder) as tmp:
        save_file(trainer.state_dict(), str(tmp / "weights.safetensors"))
        torch.save(
            {
                "optimizer": trainer.optimizer.state_dict(),
                "scheduler": trainer.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
            },
            tmp / "optimizer.pt",
        )
        write_json(tmp / "state.json", state)


def _load_checkpoint(trainer: PPOTrainer, folder: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    trainer.load_state_dict(load_file(str(folder / "weights.safetensors")))
    extra = torch.load(folder / "optimizer.pt", weights_only=True)
    trainer.optimizer.load_state_dict(extra["optimizer"])
    trainer.scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["torch_rng"])
    return json.loads((folder / "state.json").read_text())


def train_ppo(
    params: dict,
    init_dir: str | Path,
    train_examples: list[dict],
    dev_examples: list[dict],
    rewards: Rewards,
    out_dir: str | Path,
    work: Path,
) -> dict:
    """Run PPO; write the best policy (merged), its adapter, logs and curves to `out_dir`."""
    from safetensors.torch import load_file, save_file

    trainer = PPOTrainer(params, init_dir, rewards)
    p, acc = trainer.params, trainer.accelerator
    # The node's trackers (none: a no-op), written by the main process only.
    tracker = Tracker(p if acc.is_main_process else {}, work, config=p)
    log.info("PPO process %d of %d on %s", acc.process_index, acc.num_processes, acc.device)
    if not train_examples:
        raise ValueError("PPO: no training prompts")
    work.mkdir(parents=True, exist_ok=True)
    checkpoints = work / "checkpoints"
    best_path = work / "best.safetensors"
    state = {"iteration": 0, "log_history": [], "best_dev_reward": None, "best_iteration": None}
    resume = last_checkpoint(checkpoints, prefix="iteration", complete="state.json")
    if resume is not None:
        state = _load_checkpoint(trainer, resume)
        log.info("resuming from %s (iteration %d)", resume, state["iteration"])

    def evaluate(iteration: int) -> None:
        if not dev_examples:
            return
        reward = trainer.dev_reward(dev_examples)
        state["log_history"].append({"iteration": iteration, "dev_reward": round(reward, 4)})
        tracker.log(state["log_history"][-1], iteration)
        log.info("iteration %d: mean dev reward %.4f", iteration, reward)
        best = state["best_dev_reward"]
        # A tie goes to the later checkpoint: trained longer, no worse on dev (the init
        # model stays only if every trained checkpoint does worse).
        if best is None or reward > best or (reward == best and iteration > 0):
            state["best_dev_reward"], state["best_iteration"] = reward, iteration
            if acc.is_main_process:
                # written whole, then renamed: a kill mid-write leaves the old best
                save_file(trainer.state_dict(), str(best_path.with_suffix(".tmp")))
                best_path.with_suffix(".tmp").replace(best_path)

    if state["iteration"] == 0 and not state["log_history"]:
        evaluate(0)  # the init model (adapters start as the identity)
    began = time.perf_counter()
    while state["iteration"] < p["iterations"]:
        it = state["iteration"]
        prompts = iteration_prompts(train_examples, it, p["prompts_per_iteration"], p["seed"])
        mine = prompts[acc.process_index :: acc.num_processes]
        trainer.timings = {}
        rollouts = trainer.generate(mine, trainer.sampling, f"iteration-{it}")
        scored = trainer.score(rollouts)
        rng = random.Random(stable_seed(p["seed"], "minibatches", it, acc.process_index))
        losses = trainer.optimize(scored, rng)
        stats = {**scored["stats"], **losses}
        stats = {k: _mean_over_processes(acc, v) for k, v in stats.items()}
        tokens = sum(len(r["response_ids"]) for r in rollouts)
        entry = {
            "iteration": it + 1,
            **{k: round(v, 5) for k, v in stats.items()},
            "learning_rate": trainer.scheduler.get_last_lr()[0],
            "generated_tokens": tokens,
            **{f"time/{k}": round(v, 2) for k, v in trainer.timings.items()},
        }
        state["log_history"].append(entry)
        tracker.log(entry, it + 1)
        log.info(
            "iteration %d/%d: reward %.4f kl %.4f entropy %.3f value loss %.4f clip %.3f",
            it + 1,
            p["iterations"],
            entry["reward"],
            entry["kl"],
            entry["entropy"],
            entry["value_loss"],
            entry["clip_fraction"],
        )
        state["iteration"] = it + 1
        if state["iteration"] % p["eval_every"] == 0 or state["iteration"] == p["iterations"]:
            evaluate(state["iteration"])
        if state["iteration"] % p["save_every"] == 0 and state["iteration"] < p["iterations"]:
            acc.wait_for_everyone()
            if acc.is_main_process:
                _save_checkpoint(trainer, checkpoints / f"iteration-{state['iteration']}", state)
                for old in checkpoints.glob("iteration-*"):
                    if old.name != f"iteration-{state['iteration']}":
                        _remove(old)
    runtime = time.perf_counter() - began
    if trainer.backend == "vllm":
        trainer.close()  # the adapters it served
    acc.wait_for_everyone()  # the main process has written the best weights
    if dev_examples and best_path.is_file():
        trainer.load_state_dict(load_file(str(best_path)))
    metrics = _metrics(p, state, train_examples, dev_examples, runtime, trainer)
    if acc.is_main_process:
        model = trainer.ac.model
        with atomic_dir(out_dir) as tmp:
            if trainer.ac.separate:
                model.delete_adapter("value")
            save_model(
                model,
                trainer.tokenizer,
                tmp,
                trainer.dtype,
                init_dir,
                adapter=True,
                quantized=trainer.ac.quantized,
            )
            save_file(
                {k: v.detach().cpu() for k, v in trainer.ac.value_head.state_dict().items()},
                str(tmp / "adapter" / "value_head.safetensors"),
            )
            write_json(tmp / "trainer_state.json", {"log_history": state["log_history"]})
            tracker.close()
            save_logs(work, tmp)
            write_json(tmp / "metrics.json", metrics)
            plot_curves(
                state["log_history"],
                CURVES,
                tmp / "loss.png",
                title=f"{metrics['model']} (PPO)",
                x="iteration",
                columns=3,
            )
    return metrics


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _mean_over_processes(acc, value: float) -> float:
    if acc.num_processes == 1:
        return float(value)
    import torch

    return acc.reduce(torch.tensor(float(value), device=acc.device), reduction="mean").item()


def _metrics(p, state, train_examples, dev_examples, runtime, trainer) -> dict:
    history = [h for h in state["log_history"] if "reward" in h]
    dev = [h for h in state["log_history"] if "dev_reward" in h]
    first, last = (history[0], history[-1]) if history else ({}, {})
    return {
        "model": p.get("name", ""),
        "kind": "ppo",
        "init": p.get("init"),
        "finetune": "lora",
        **({"quantization": p["quantization"]} if p.get("quantization") else {}),
        "value_model": p["value_model"],
        "n_train": len(train_examples),
        "n_dev": len(dev_examples),
        "iterations": state["iteration"],
        "steps": int(sum(h.get("updates", 0) for h in history)),
        "rollouts": state["iteration"] * p["prompts_per_iteration"] * p["samples_per_prompt"],
        "reward_first": first.get("reward"),
        "reward_last": last.get("reward"),
        "kl_last": last.get("kl"),
        "dev_reward_init": dev[0]["dev_reward"] if dev and dev[0]["iteration"] == 0 else None,
        "dev_reward": _rounded(state["best_dev_reward"]),
        "best_iteration": state["best_iteration"],
        "train_runtime_s": round(runtime, 1),
        "trainable_parameters": sum(v.numel() for v in trainer.ac.trainable().values()),
    }


# Logged keys plotted per iteration, in two rows of three panels.
CURVES = (
    ("reward", "reward (train rollouts)"),
    ("kl", "KL to reference (per answer)"),
    ("dev_reward", "mean dev reward (greedy)"),
    ("value_loss", "value loss"),
    ("entropy", "entropy"),
    ("clip_fraction", "clip fraction"),
)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
