"""PPO with per-token rewards, on torch + accelerate (TRL no longer has PPO).

One iteration:
1. rollouts: `samples_per_prompt` sampled answers per prompt, from the policy through
   the generation interface (HF, in process);
2. rewards: every reward source's (character offset, value) pairs placed on the tokens
   that hold those characters (holistic mode: their sum on the last token), minus
   `kl_coef * (logp - logp_ref)` on every token; the reference is the init model, i.e.
   the policy with its LoRA adapter disabled;
3. advantages by GAE over the value head's estimates, whitened;
4. `ppo_epochs` passes over the rollouts in minibatches: clipped policy loss, clipped
   value loss, optional entropy bonus, gradient accumulation.

The policy is a LoRA adapter on the init model. The value function is either a second
LoRA adapter with a scalar head (`value_model: separate`, the published setting) or a
scalar head on the policy's trunk (`shared`, one forward pass). Several processes
(`accelerate launch`) each roll out their share of the prompts; gradients are averaged
across processes before each step.

Checkpoints (adapters, head, optimizer, scheduler, random state, logs) go to the
node's work folder and a rerun resumes from the last one; the model folder holds the
merged policy of the iteration with the best mean dev reward.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from ragtrain.core.security import folder_trusts_remote_code, inherit_model_meta
from ragtrain.core.seeds import DEFAULT_SEED, stable_seed
from ragtrain.training.rewards import Rewards, combine, place_rewards, token_char_ends, total

log = logging.getLogger(__name__)

PPO_DEFAULTS = {
    # LoRA without dropout: dropout would make the policy differ between the rollout's
    # log-probs and the update's, so the ratio would not start at 1.
    "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": "all-linear"},
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
    # evaluate (greedy, mean dev reward) and checkpoint every this many iterations
    "eval_every": 5,
    "save_every": 5,
    "dtype": "auto",
    "seed": DEFAULT_SEED,
    "rewards": [{"kind": "correctness"}],
}


# ---------------------------------------------------------------- the pieces of the loss
# Tensors are [batch, response tokens]; `mask` is 1 on response tokens, 0 on padding.


def masked_mean(x, mask, dim=None):
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x, mask):
    """Unbiased variance of the unmasked entries."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = (((x - mean) ** 2) * mask).sum() / n.clamp(min=1)
    return var * n / (n - 1) if n > 1 else var


def whiten(x, mask, shift_mean: bool = True):
    """Zero mean (unless `shift_mean` is off: the mean is kept), unit variance over the
    unmasked entries; padding stays 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) / (var + 1e-8).sqrt()
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_per_token(logp, logp_ref, mask):
    """The per-token KL estimate log p(a) - log p_ref(a) of the sampled tokens."""
    return (logp - logp_ref) * mask


def gae(rewards, values, mask, gamma: float, lam: float):
    """Generalised advantage estimates and returns (advantages + values).

    The value after a response's last token is 0 (the episode ends), so with gamma =
    lambda = 1 an advantage is the sum of the rewards still to come minus the value.
    """
    import torch

    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        if t + 1 < length:
            next_value = values[:, t + 1] * mask[:, t + 1]
            running = running * mask[:, t + 1]
        else:
            next_value = torch.zeros_like(running)
            running = torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(logp, old_logp, advantages, mask, clip: float):
    """PPO's clipped surrogate; returns (loss, share of tokens where the clip bound)."""
    import torch

    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_fraction


def value_loss(values, old_values, returns, mask, clip: float):
    """Clipped value loss (the larger of the clipped and unclipped squared errors)."""
    import torch

    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    clip_fraction = masked_mean((clipped_error > unclipped_error).float(), mask)
    return loss, clip_fraction


def entropy_from_logits(logits):
    import torch

    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


# ---------------------------------------------------------------- policy and value model


class ActorCritic:
    """The init model with a policy LoRA adapter, a value head and (separate mode) a value
    adapter; the reference is the same model with adapters disabled."""

    def __init__(self, init_dir: str | Path, params: dict, device, dtype):
        import torch
        from peft import get_peft_model
        from transformers import AutoModelForCausalLM

        from ragtrain.training.sft_dpo import lora_config

        base = AutoModelForCausalLM.from_pretrained(
            init_dir, dtype=dtype, trust_remote_code=folder_trusts_remote_code(init_dir)
        )
        config = lora_config(params["lora"])
        self.model = get_peft_model(
            base, config, adapter_name="default"
        )  # "default": saved at the top of adapter/
        self.separate = params["value_model"] == "separate"
        if self.separate:
            self.model.add_adapter("value", config)
        hidden = base.config.hidden_size
        self.value_head = torch.nn.Linear(hidden, 1, dtype=torch.float32)
        # A zero head starts every value at 0: the first advantages are the returns.
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        self.model.to(device).eval()
        self.value_head.to(device)
        self._use("default")

    def _use(self, adapter: str) -> None:
        self.model.set_adapter(adapter)
        # PEFT freezes the inactive adapter; both are trained.
        for name, p in self.model.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)

    def trainable(self) -> dict:
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        params.update({f"value_head.{n}": p for n, p in self.value_head.named_parameters()})
        return params

    def _hidden(self, batch):
        # The decoder's last hidden states (adapters applied), without the LM head over
        # every position: the head runs only on the response positions.
        inner = self.model.base_model.model.model
        out = inner(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        h = out.last_hidden_state
        index = batch.positions.unsqueeze(-1).expand(-1, -1, h.shape[-1])
        return h.gather(1, index)

    def _logprobs(self, h, batch, with_entropy: bool):
        import torch

        logits = self.model.base_model.model.lm_head(h).float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, batch.targets.unsqueeze(-1))
        entropy = entropy_from_logits(logits) if with_entropy else None
        return logp.squeeze(-1) * batch.mask, entropy

    def forward(self, batch, with_entropy: bool = False):
        """(log-probs of the response tokens, values, entropies) under the current weights."""
        h = self._hidden(batch)
        logp, entropy = self._logprobs(h, batch, with_entropy)
        if self.separate:
            self._use("value")
            try:
                h = self._hidden(batch)
            finally:
                self._use("default")
        values = self.value_head(h.float()).squeeze(-1) * batch.mask
        return logp, values, entropy

    def reference_logprobs(self, batch):
        with self.model.disable_adapter():
            h = self._hidden(batch)
            return self._logprobs(h, batch, False)[0]


@dataclass
class Batch:
    """Prompt + response sequences, right-padded, with the response tokens' positions."""

    input_ids: object
    attention_mask: object
    # positions[b, t]: the position whose output predicts response token t
    positions: object
    targets: object
    mask: object

    @classmethod
    def build(cls, prompts: list[list[int]], responses: list[list[int]], pad_id: int, device):
        import torch

        longest = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
        n_resp = max(len(r) for r in responses)
        ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        positions = torch.zeros((len(prompts), n_resp), dtype=torch.long)
        targets = torch.full((len(prompts), n_resp), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), n_resp))
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            attention[i, : len(p) + len(r)] = 1
            positions[i, : len(r)] = torch.arange(len(p) - 1, len(p) + len(r) - 1)
            targets[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return cls(*(t.to(device) for t in (ids, attention, positions, targets, mask)))

    def select(self, index):
        return Batch(*(t[index] for t in self._tensors()))

    def _tensors(self):
        return (self.input_ids, self.attention_mask, self.positions, self.targets, self.mask)


# ---------------------------------------------------------------- the trainer


def with_defaults(params: dict) -> dict:
    merged = {**PPO_DEFAULTS, **params}
    merged["lora"] = {**PPO_DEFAULTS["lora"], **(params.get("lora") or {})}
    if merged["value_model"] not in ("separate", "shared"):
        raise ValueError(
            f"value_model: expected 'separate' or 'shared', got {merged['value_model']!r}"
        )
    if merged["minibatch_size"] % merged["grad_accum"]:
        raise ValueError(
            f"minibatch_size ({merged['minibatch_size']}) must be a multiple of "
            f"grad_accum ({merged['grad_accum']})"
        )
    return merged


class PPOTrainer:
    """The PPO loop over prompt records ({id, prompt: conversation, answers, ...})."""

    def __init__(self, params: dict, init_dir, rewards: Rewards, accelerator=None):
        import torch
        from accelerate import Accelerator
        from transformers import AutoTokenizer, get_scheduler

        from ragtrain.generation.engine import HFGenerator, Sampling
        from ragtrain.training.sft_dpo import _resolve_dtype

        self.params = params = with_defaults(params)
        # cpu=True without a GPU: several CPU processes (torchrun) then form a gloo group;
        # otherwise accelerate would treat each as a lone process.
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        self.rewards = rewards
        torch.manual_seed(params["seed"] + self.accelerator.process_index)
        self.tokenizer = AutoTokenizer.from_pretrained(
            init_dir, trust_remote_code=folder_trusts_remote_code(init_dir)
        )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.ac = ActorCritic(
            init_dir, params, self.accelerator.device, _resolve_dtype(params["dtype"])
        )
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
        self.generator = HFGenerator.from_model(
            self.ac.model, self.tokenizer, {"batch_size": params["generation_batch_size"]}
        )
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
        outputs = self.generator.chat([ex["prompt"] for ex in examples], sampling, seeds)
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

    from ragtrain.core.records import atomic_dir, write_json

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


def _last_checkpoint(root: Path) -> Path | None:
    done = [
        d
        for d in root.glob("iteration-*")
        if d.name.split("-")[1].isdigit() and (d / "state.json").is_file()
    ]
    return max(done, key=lambda d: int(d.name.split("-")[1]), default=None)


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

    from ragtrain.core.records import atomic_dir, write_json

    trainer = PPOTrainer(params, init_dir, rewards)
    p, acc = trainer.params, trainer.accelerator
    log.info("PPO process %d of %d on %s", acc.process_index, acc.num_processes, acc.device)
    if not train_examples:
        raise ValueError("PPO: no training prompts")
    work.mkdir(parents=True, exist_ok=True)
    checkpoints = work / "checkpoints"
    best_path = work / "best.safetensors"
    state = {"iteration": 0, "log_history": [], "best_dev_reward": None, "best_iteration": None}
    resume = _last_checkpoint(checkpoints)
    if resume is not None:
        state = _load_checkpoint(trainer, resume)
        log.info("resuming from %s (iteration %d)", resume, state["iteration"])

    def evaluate(iteration: int) -> None:
        if not dev_examples:
            return
        reward = trainer.dev_reward(dev_examples)
        state["log_history"].append({"iteration": iteration, "dev_reward": round(reward, 4)})
        log.info("iteration %d: mean dev reward %.4f", iteration, reward)
        if state["best_dev_reward"] is None or reward > state["best_dev_reward"]:
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
    acc.wait_for_everyone()  # the main process has written the best weights
    if dev_examples and best_path.is_file():
        trainer.load_state_dict(load_file(str(best_path)))
    metrics = _metrics(p, state, train_examples, dev_examples, runtime, trainer)
    if acc.is_main_process:
        model = trainer.ac.model
        with atomic_dir(out_dir) as tmp:
            if trainer.ac.separate:
                model.delete_adapter("value")
            model.save_pretrained(tmp / "adapter")
            save_file(
                {k: v.detach().cpu() for k, v in trainer.ac.value_head.state_dict().items()},
                str(tmp / "adapter" / "value_head.safetensors"),
            )
            merged = model.merge_and_unload()
            merged.save_pretrained(tmp, safe_serialization=True)
            trainer.tokenizer.save_pretrained(tmp)
            inherit_model_meta(init_dir, tmp)
            write_json(tmp / "trainer_state.json", {"log_history": state["log_history"]})
            write_json(tmp / "metrics.json", metrics)
            plot_curves(state["log_history"], tmp / "loss.png", title=metrics["model"])
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


CURVES = (
    ("reward", "reward (train rollouts)"),
    ("kl", "KL to reference (per answer)"),
    ("dev_reward", "mean dev reward (greedy)"),
    ("value_loss", "value loss"),
    ("entropy", "entropy"),
    ("clip_fraction", "clip fraction"),
)


def plot_curves(history: list[dict], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    for ax, (key, label) in zip(axes.flat, CURVES, strict=True):
        points = [(h["iteration"], h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points, strict=True), "o-" if key == "dev_reward" else "-")
        ax.set_title(label)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(f"{title} (PPO)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
