"""Reference solutions of notebook 04 (SimPO). Try the exercises first."""
import torch
import torch.nn.functional as F


def simpo_logps(per_token_logps, completion_mask, length_normalise=True):
    """Exercise 4.1: (1/|y|) sum_t log pi(y_t | x, y_<t) over the completion tokens, or the plain sum.

    per_token_logps, completion_mask: (B, T). Returns (B,).
    """
    keep = completion_mask.bool()
    summed = torch.where(keep, per_token_logps, torch.zeros_like(per_token_logps)).sum(-1)
    if not length_normalise:
        return summed
    return summed / keep.sum(-1).clamp(min=1).to(summed.dtype)


def my_simpo_loss(policy_chosen_logps, policy_rejected_logps, beta, gamma_beta_ratio):
    """Exercise 4.2: SimPO eq. 6, -log sigmoid(beta * (avg_c - avg_r) - gamma) with gamma = gamma_beta_ratio * beta.

    policy_chosen_logps, policy_rejected_logps: (B,) length-averaged log-probs. Returns losses (B,).
    """
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps) - gamma_beta_ratio * beta)


def simpo_gradient_weight(delta, beta, gamma_beta_ratio):
    """Exercise 4.3: the weight w in dL/dDelta = -beta * w, w = sigmoid(-beta * (Delta - gamma_beta_ratio)). (N,) -> (N,)."""
    return torch.sigmoid(-beta * (delta - gamma_beta_ratio))
