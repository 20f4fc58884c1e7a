"""PPO's arithmetic: pure functions on tensors, each checked against hand-computed cases
(tests/test_ppo.py). `ragtrain.training.ppo` puts them together into the loop.

Tensors are [batch, response tokens]; `mask` is 1 on response tokens, 0 on padding.

- `kl_per_token`: log p(a) - log p_ref(a) of each sampled token, the per-token penalty
  that keeps the policy near the reference;
- `gae`: generalised advantage estimates (Schulman et al., 2016) over the value head's
  estimates, the episode ending after each response's last token;
- `whiten`: zero mean, unit variance over the response tokens (advantages; rewards,
  keeping their mean, with `whiten_rewards`);
- `policy_loss`: PPO's clipped surrogate, `value_loss`: the clipped value loss, and
  `entropy_from_logits` for the optional entropy bonus.
"""

from __future__ import annotations


def masked_mean(x, mask, dim=None):
    """Mean of the unmasked entries (along `dim`, if given)."""
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
