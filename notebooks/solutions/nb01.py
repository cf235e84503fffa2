"""Reference solutions of notebook 01 (the RLHF pipeline and reward modelling). Try the exercises first."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bt_loss(chosen_rewards, rejected_rewards):
    """Exercise 1.1: Bradley-Terry loss -log sigmoid(r_w - r_l), per pair.

    chosen_rewards, rejected_rewards: (B,) rewards of the preferred / dispreferred response. Returns (B,).
    """
    return -F.logsigmoid(chosen_rewards - rejected_rewards)  # logsigmoid: no overflow for large negative margins


def k_choose_2_loss(rewards, mask=None):
    """Exercise 1.2: InstructGPT eq. 1 per prompt, the mean of -log sigmoid(r_i - r_j) over pairs i ranked above j.

    rewards: (P, K), each row ordered best first; mask: optional (P, K), 1 where a response is present.
    Returns (P,); a prompt with fewer than two responses has loss 0.
    """
    P, K = rewards.shape
    mask = torch.ones_like(rewards) if mask is None else mask.to(rewards.dtype)
    losses = []
    for p in range(P):
        present = [i for i in range(K) if mask[p, i] > 0]
        terms = [-F.logsigmoid(rewards[p, i] - rewards[p, j]) for a, i in enumerate(present) for j in present[a + 1:]]
        losses.append(torch.stack(terms).mean() if terms else rewards.new_zeros(()))
    return torch.stack(losses)


def fit_bradley_terry(x_chosen, x_rejected, steps=200):
    """Exercise 1.3: maximum-likelihood linear reward r(x) = w . x from pairs (no intercept: it cancels).

    x_chosen, x_rejected: (N, d) features of the preferred / dispreferred response. Returns w (d,).
    The loss mean(-log sigmoid(w . (x_c - x_r))) is convex; L-BFGS reaches its minimum in a few dozen steps.
    """
    diff = (x_chosen - x_rejected).double()  # (N, d)
    w = torch.zeros(diff.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -F.logsigmoid(diff @ w).mean()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().to(x_chosen.dtype)
