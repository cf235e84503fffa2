"""Loss functions for reward modelling, direct preference optimisation and PPO, one function per objective.

What it is: pure functions, tensors in and tensors out. Preference losses return
unreduced per-example losses (B,) plus detached implicit rewards; the trainer writes
the reduction (`losses.mean()`) as a visible line. PPO losses act on (B, T) token
tensors with a mask, return the masked-mean loss and a dict of detached scalar stats.

    reward model   bradley_terry_loss, ranking_loss      InstructGPT eq. 1
    offline prefs  dpo_loss, ipo_loss, simpo_loss        DPO eq. 7, IPO eq. 17, SimPO eq. 6
    online RL      ppo_policy_loss, ppo_value_loss       PPO eq. 7 (+ value clipping)
                   ptx_loss                              InstructGPT eq. 2 (PPO-ptx)

What it leaves out: computing log-probabilities (`core.logprobs`), advantages and KL
shaping (`core.rl`), and any model or optimiser code.

Usage:
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1)
    loss = losses.mean()
    metrics["rewards/margins"] = (chosen_rewards - rejected_rewards).mean().item()
"""
import torch
import torch.nn.functional as F

from core.rl import masked_mean


# ---------------------------------------------------------------------------- reward modelling

def bradley_terry_loss(chosen_rewards, rejected_rewards, margin=None):
    """Bradley-Terry pairwise loss, -log sigmoid(r_c - r_r - m) (InstructGPT eq. 1 with K = 2).

    chosen_rewards, rejected_rewards: (B,) scalar rewards of the preferred / dispreferred
    response. margin: optional (B,) or float, the Llama-2 style margin m that asks for
    a larger reward gap on strongly preferred pairs. Returns losses (B,).
    """
    logits = chosen_rewards - rejected_rewards
    if margin is not None:
        logits = logits - margin
    return -F.logsigmoid(logits)


def ranking_loss(rewards, mask=None):
    """InstructGPT reward-model loss over K ranked responses per prompt (Ouyang et al. 2022, eq. 1):

        loss(x) = -1 / C(K, 2) * sum_{w ranked above l} log sigmoid(r(x, y_w) - r(x, y_l))

    rewards: (P, K), the K responses of each prompt ordered best first.
    mask: optional (P, K), 1 on present responses, for prompts with fewer than K
    (order is still best first among the present ones). Each prompt's pairs are
    averaged, so a prompt counts once however many responses it has; InstructGPT does
    this to avoid overfitting to prompts whose C(K, 2) correlated pairs would otherwise
    appear as separate examples. A prompt with fewer than 2 responses has loss 0.
    Returns losses (P,).
    """
    P, K = rewards.shape
    present = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.bool()
    diffs = rewards.unsqueeze(2) - rewards.unsqueeze(1)  # (P, K, K): r_i - r_j
    above = torch.ones(K, K, dtype=torch.bool, device=rewards.device).triu(diagonal=1)  # i ranked above j
    pairs = above & present.unsqueeze(2) & present.unsqueeze(1)  # (P, K, K)
    pair_losses = torch.where(pairs, -F.logsigmoid(diffs), torch.zeros_like(diffs))
    n_pairs = pairs.sum(dim=(1, 2)).clamp(min=1)
    return pair_losses.sum(dim=(1, 2)) / n_pairs


# ---------------------------------------------------------------------------- offline preference optimisation

def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             beta=0.1, label_smoothing=0.0):
    """Direct Preference Optimisation (Rafailov et al. 2023, eq. 7), optionally conservative.

    All inputs: (B,) summed log-probabilities of the chosen / rejected completions under
    the policy and the frozen reference model. With
        h = (log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r))
        loss = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
    eps = label_smoothing = 0 is DPO; eps > 0 is conservative DPO (Mitchell 2023,
    "A note on DPO with noisy preferences"): it assumes each label is flipped with
    probability eps, so the loss stops pushing once the margin is large enough.
    Returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,)); the implicit
    rewards beta * (log pi - log ref) are detached.
    """
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    logits = beta * h
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1):
    """Identity Preference Optimisation (Azar et al. 2023, eq. 17): (h - 1 / (2 beta))^2.

    Same inputs and h as dpo_loss. Instead of pushing h to infinity, IPO regresses it
    onto the fixed target 1/(2 beta), which keeps the policy near the reference even
    when preferences are deterministic. Here beta is the paper's tau.
    Which log-probs to pass is the caller's choice: the paper uses sums, while TRL's
    DPOTrainer(loss_type="ipo") passes length-averaged log-probs
    (`sequence_logprobs(..., average=True)`), which keeps the target 1/(2 beta)
    on a sensible scale; beta needs retuning between the two.
    Returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,)), rewards
    beta * (log pi - log ref) detached.
    """
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    losses = (h - 1 / (2 * beta)) ** 2
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def simpo_loss(policy_chosen_logps, policy_rejected_logps, beta=2.0, gamma_beta_ratio=0.5, label_smoothing=0.0):
    """Simple Preference Optimisation (Meng et al. 2024, eq. 6): reference-free, length-normalised.

    policy_chosen_logps, policy_rejected_logps: (B,) length-AVERAGED log-probs,
    (1/|y|) log pi(y|x), i.e. `sequence_logprobs(..., average=True)`. With
        logits = beta * (avg_c - avg_r) - gamma,   gamma = gamma_beta_ratio * beta
        loss = -(1 - eps) log sigmoid(logits) - eps log sigmoid(-logits)
    the target reward margin gamma is set through gamma_beta_ratio, the knob the
    SimPO reference repo (princeton-nlp/SimPO) exposes. Beware: TRL's
    CPOTrainer(loss_type="simpo") takes `simpo_gamma` as the absolute gamma (its logits
    are beta * delta - simpo_gamma), so TRL's simpo_gamma = gamma_beta_ratio * beta here.
    Returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,)); rewards are
    beta * averaged log-probs, detached.
    """
    gamma = gamma_beta_ratio * beta
    logits = beta * (policy_chosen_logps - policy_rejected_logps) - gamma
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    chosen_rewards = beta * policy_chosen_logps.detach()
    rejected_rewards = beta * policy_rejected_logps.detach()
    return losses, chosen_rewards, rejected_rewards


# ---------------------------------------------------------------------------- PPO

def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, cliprange=0.2):
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), negated to a loss, per token.

    logprobs: (B, T) log-probs of the sampled tokens under the current policy (with grad).
    old_logprobs: (B, T) the same under the policy that sampled them (no grad).
    advantages: (B, T), usually whitened GAE. mask: (B, T) response tokens.
    With ratio = exp(logprobs - old_logprobs):
        loss = masked_mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))
    Returns (loss scalar, stats) with detached scalar stats:
        clipfrac   fraction of masked tokens where the clipped term is the larger loss
                   (the gradient is cut there)
        approxkl   0.5 * masked_mean((logprobs - old_logprobs)^2), the k2 estimate of
                   KL(old || new) that TRL logs as `policy/approxkl_avg`
        ratio_mean masked_mean(ratio)
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    stats = {
        "clipfrac": masked_mean((unclipped < clipped).to(logprobs.dtype), mask).detach(),
        "approxkl": (0.5 * masked_mean(log_ratio**2, mask)).detach(),
        "ratio_mean": masked_mean(ratio, mask).detach(),
    }
    return loss, stats


def ppo_value_loss(values, old_values, returns, mask, cliprange_value=0.2):
    """Clipped value loss of PPO as implemented by OpenAI baselines / lm-human-preferences.

    values: (B, T) current value predictions (with grad); old_values: (B, T) predictions
    at rollout time; returns: (B, T) GAE targets; mask: (B, T).
        v_clip = old_values + clip(values - old_values, -eps, eps)
        loss   = 0.5 * masked_mean(max((values - R)^2, (v_clip - R)^2))
    Returns (loss scalar, stats) with detached scalar stats:
        clipfrac    fraction of masked tokens where the clipped error is the larger one
        value_mean  masked_mean(values)
    """
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped = (values - returns) ** 2
    clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped, clipped), mask)
    stats = {
        "clipfrac": masked_mean((unclipped < clipped).to(values.dtype), mask).detach(),
        "value_mean": masked_mean(values, mask).detach(),
    }
    return loss, stats


def ptx_loss(ptx_logps_per_token, mask, ptx_coef):
    """Pretraining-mix term of PPO-ptx (InstructGPT eq. 2): -gamma * E_{x ~ D_pretrain}[log pi(x)].

    ptx_logps_per_token: (B, T) log-probs of pretraining tokens under the policy
    (e.g. `completion_logprobs` with the mask covering the whole text after the first
    token); mask: (B, T); ptx_coef: gamma. The expectation is a mean over tokens.
    Returns a scalar loss to add to the PPO loss; ptx_coef = 0 gives exactly 0.
    """
    if ptx_coef == 0:
        return ptx_logps_per_token.new_zeros(())
    return -ptx_coef * masked_mean(ptx_logps_per_token, mask)
