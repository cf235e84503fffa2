"""RL maths for RLHF: masked statistics, GAE, per-token KL estimators, KL reward shaping, KL controllers.

What it is: the pure, model-free pieces of PPO-style RLHF (Ziegler et al. 2019;
Ouyang et al. 2022). Every function takes (B, T) tensors over sampled response
tokens plus a `mask` (B, T) that is 1 on real response tokens and 0 elsewhere, and
returns (B, T) tensors that are 0 where the mask is 0.

What it leaves out: sampling, running the policy / value / reward models, and the
PPO losses themselves (those are in `core.losses`). The trainer chains them:

    per_token_rewards = place_at_last_token(scores, mask)                    # (B, T)
    shaped_rewards, per_token_kl = kl_penalized_rewards(
        per_token_rewards, logprobs, ref_logprobs, mask, kl_ctl.value)      # (B, T)
    advantages, returns = gae(shaped_rewards, values, mask, gamma=1.0, lam=0.95)
    advantages = masked_whiten(advantages, mask)
    ...
    kl_ctl.update(masked_mean(per_token_kl.sum(-1)), n_steps=batch_size)

Masks are 0/1 tensors of any dtype (bool, long, float); they select, they do not weight.
"""
import torch


# ---------------------------------------------------------------------------- masked statistics

def masked_mean(x, mask, dim=None):
    """Mean of x over positions where mask is 1. x, mask: same shape, e.g. (B, T).

    dim=None reduces everything to a scalar; dim=k reduces that dimension. Masked-out
    values never reach the sum (even inf or NaN ones, e.g. log-probs of padding), and an
    all-zero mask gives 0, not NaN.
    """
    keep = mask.bool()
    kept = torch.where(keep, x, torch.zeros_like(x))
    if dim is None:
        return kept.sum() / keep.sum().clamp(min=1).to(x.dtype)
    return kept.sum(dim) / keep.sum(dim).clamp(min=1).to(x.dtype)


def masked_var(x, mask, unbiased=True):
    """Variance of x over masked positions (scalar). unbiased=True uses Bessel's n/(n-1) correction."""
    centered = x - masked_mean(x, mask)
    variance = masked_mean(centered**2, mask)
    if unbiased:
        n = mask.bool().sum()
        if n < 2:
            raise ValueError(f"unbiased masked_var needs at least 2 unmasked values, got {int(n)}")
        variance = variance * n / (n - 1)
    return variance


def masked_whiten(x, mask, shift_mean=True):
    """(x - mean) / std over masked positions; with shift_mean=False the mean is added back.

    Used to normalise advantages across a batch (as TRL / OpenAI lm-human-preferences do).
    Masked-out positions are 0 in the output.

    Fewer than 2 masked positions (batch size 1 with an immediate EOS) have no spread to
    divide by: whitening is skipped and x is returned as is (masked). Centring alone would
    set a lone advantage to 0 and silently drop that sample's only learning signal; the
    unwhitened value keeps its sign and size.
    """
    if int(mask.bool().sum()) < 2:
        return torch.where(mask.bool(), x, torch.zeros_like(x))
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


# ---------------------------------------------------------------------------- advantages

def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalised Advantage Estimation (Schulman et al. 2016, eqs. 11-16).

    rewards, values: (B, T) per-token rewards r_t and value estimates V(s_t).
    mask: (B, T), 1 on valid response tokens. The valid tokens of a row are treated as
    one episode in order; masked positions are skipped entirely (they contribute
    nothing, and the episode continues across them), and the value after the last
    valid token is 0 (the episode ends there).

        delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)                  (eq. 12)
        A_t     = delta_t + gamma * lam * A_{t+1}                     (eq. 16, recursive form)
        R_t     = A_t + V(s_t)                                        (the value target)

    Returns (advantages, returns), both (B, T), detached, 0 where mask is 0.
    The loop is over time only; all rows advance together.
    """
    rewards, values = rewards.detach(), values.detach()
    valid = mask.bool()
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = rewards.new_zeros(B)  # V of the next valid token; 0 after the last one
    next_advantage = rewards.new_zeros(B)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        advantage = delta + gamma * lam * next_advantage
        is_valid = valid[:, t]
        advantages[:, t] = torch.where(is_valid, advantage, torch.zeros_like(advantage))
        # a masked position leaves the carried state untouched, so it is skipped
        next_value = torch.where(is_valid, values[:, t], next_value)
        next_advantage = torch.where(is_valid, advantage, next_advantage)
    returns = torch.where(valid, advantages + values, torch.zeros_like(values))
    return advantages, returns


# ---------------------------------------------------------------------------- KL

def kl_per_token(logprobs, ref_logprobs, estimator="k1"):
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi (Schulman 2020,
    "Approximating KL divergence", http://joschu.net/blog/kl-approx.html).

    logprobs, ref_logprobs: (B, T) log pi(x_t) and log pi_ref(x_t) of the sampled tokens.
    With log_ratio = logprobs - ref_logprobs and r = pi_ref / pi = exp(-log_ratio):
        k1 = log_ratio                 unbiased, high variance, can be negative
        k2 = 0.5 * log_ratio**2        biased, low variance, >= 0
        k3 = (r - 1) - log r           unbiased, low variance, >= 0
    Returns (B, T), differentiable (GRPO uses k3 as a loss term). The caller masks.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio  # (r - 1) - log r, accurate near r = 1
    raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1', 'k2' or 'k3'")


def place_at_last_token(scores, mask):
    """Dense (B, T) rewards with each sequence-level score (B,) on its last valid token.

    This is how a reward-model score enters the per-token reward of PPO-RLHF
    (Ziegler et al. 2019, sec. 2.2). A row with no valid token gets no reward.
    """
    valid = mask.bool()
    T = mask.shape[1]
    positions = torch.arange(T, device=mask.device).expand_as(valid)
    last = torch.where(valid, positions, -1).max(dim=1).values  # (B,), -1 if empty
    rewards = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
    rows = torch.nonzero(last >= 0).squeeze(-1)
    rewards[rows, last[rows]] = scores[rows]
    return rewards


def kl_penalized_rewards(rewards, logprobs, ref_logprobs, mask, kl_coef, estimator="k1"):
    """Shaped reward r_t - kl_coef * KL_t at every response token (Ziegler et al. 2019, eq. 2;
    InstructGPT eq. 2's beta * log(pi / pi_ref) term).

    rewards: (B, T) dense task rewards (usually `place_at_last_token(scores, mask)`).
    logprobs, ref_logprobs: (B, T); mask: (B, T); kl_coef: float.
    Returns (shaped_rewards, per_token_kl), both (B, T), detached (rewards are constants
    for the PPO update), 0 where mask is 0.
    """
    keep = mask.bool()
    per_token_kl = kl_per_token(logprobs.detach(), ref_logprobs.detach(), estimator)
    per_token_kl = torch.where(keep, per_token_kl, torch.zeros_like(per_token_kl))
    shaped_rewards = torch.where(keep, rewards.detach() - kl_coef * per_token_kl, torch.zeros_like(per_token_kl))
    return shaped_rewards, per_token_kl


class FixedKLController:
    """A constant KL coefficient, with the same interface as AdaptiveKLController."""

    def __init__(self, kl_coef):
        self.value = float(kl_coef)

    def update(self, current_kl, n_steps):
        return self.value


class AdaptiveKLController:
    """Proportional controller steering the observed KL towards a target (Ziegler et al. 2019, sec. 2.2).

        e_t  = clip(KL_t / target - 1, -0.2, 0.2)
        beta <- beta * (1 + K_beta * e_t),  K_beta = n_steps / horizon

    current_kl is the mean per-sequence KL of the last batch (sum over tokens, mean
    over sequences); n_steps is how many samples it came from.
    """

    def __init__(self, init_kl_coef, target, horizon):
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl, n_steps):
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value


# ---------------------------------------------------------------------------- PPO phases 3-4


def shape_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, estimator="k1", whiten=False):
    """PPO phase 3. scores: (B, T) weighted task reward per token. Returns (shaped_rewards, per_token_kl), (B, T).

    shaped_rewards = scores - kl_coef * KL_t (``kl_penalized_rewards``), then optionally
    whitened over the batch (scale only, mean kept; as TRL's whiten_rewards).
    """
    shaped_rewards, per_token_kl = kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, estimator)
    if whiten:
        shaped_rewards = masked_whiten(shaped_rewards, mask, shift_mean=False)
    return shaped_rewards, per_token_kl


def compute_advantages(shaped_rewards, values, mask, gamma=1.0, lam=0.95, whiten=True):
    """PPO phase 4. GAE on (B, T) rewards and values. Returns (advantages (whitened if asked), raw_advantages, returns)."""
    raw_advantages, returns = gae(shaped_rewards, values, mask, gamma=gamma, lam=lam)
    advantages = masked_whiten(raw_advantages, mask) if whiten else raw_advantages
    return advantages, raw_advantages, returns
