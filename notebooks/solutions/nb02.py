"""Reference solutions of notebook 02 (PPO for language models). Try the exercises first."""
import torch


def k3_kl(logprobs, ref_logprobs):
    """Exercise 2.1: per-token k3 estimate of KL(pi || pi_ref), (r - 1) - log r with r = pi_ref / pi. (N,) -> (N,)."""
    log_r = ref_logprobs - logprobs
    return torch.exp(log_r) - 1 - log_r


def gae_backward(rewards, values, gamma, lam):
    """Exercise 2.2: GAE of one episode by the backward recursion; V after the last token is 0. (n,), (n,) -> (n,)."""
    n = len(rewards)
    advantages = torch.zeros(n, dtype=rewards.dtype)
    next_value, next_advantage = 0.0, 0.0
    for t in reversed(range(n)):
        delta = rewards[t] + gamma * next_value - values[t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[t] = next_advantage
        next_value = values[t]
    return advantages


def clipped_surrogate_loss(logprobs, old_logprobs, advantages, mask, cliprange):
    """Exercise 2.3: -L^CLIP averaged over the masked tokens, and the fraction of them where the clip is active.

    logprobs, old_logprobs, advantages, mask: (B, T). Returns (loss, clipfrac), two scalars.
    """
    keep = mask.bool()
    ratio = torch.exp(logprobs - old_logprobs)[keep]
    A = advantages[keep]
    unclipped = ratio * A
    clipped = torch.clamp(ratio, 1 - cliprange, 1 + cliprange) * A
    loss = -torch.min(unclipped, clipped).mean()
    clipfrac = (clipped < unclipped).float().mean()
    return loss, clipfrac
