"""PPO's policy and value model (`ActorCritic`) and its batches of rollouts (`Batch`).

The policy is a LoRA adapter on the init model (with `quantization`, on the init model
quantized by bitsandbytes: QLoRA); the value function is a scalar head on
either a second LoRA adapter (`separate`) or the policy's own trunk (`shared`); the
reference is the init model itself, i.e. the same model with its adapters disabled, so
it costs no copy. `ragtrain.training.ppo` trains them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ragtrain.core.security import folder_trusts_remote_code
from ragtrain.training.ppo_math import entropy_from_logits
from ragtrain.training.toolkit import lora_config, quantization_kwargs


class ActorCritic:
    """The init model with a policy LoRA adapter, a value head and (separate mode) a value
    adapter; the reference is the same model with adapters disabled."""

    def __init__(self, init_dir: str | Path, params: dict, device, dtype):
        import torch
        from peft import get_peft_model
        from transformers import AutoModelForCausalLM

        # {} unless quantized; else checked before the load (a CUDA GPU, bitsandbytes).
        quantized = quantization_kwargs(params, dtype)
        self.quantized = bool(quantized)
        base = AutoModelForCausalLM.from_pretrained(
            init_dir,
            dtype=dtype,
            trust_remote_code=folder_trusts_remote_code(init_dir),
            # bitsandbytes places the quantized weights at load: on this process's GPU.
            **({"device_map": device} if quantized else {}),
            **quantized,
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
        if not self.quantized:  # a quantized base and its adapters are on `device` already
            self.model.to(device)
        self.model.eval()
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
