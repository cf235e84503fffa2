"""Reference solutions of notebook 06 (token-level reward redistribution). Try each exercise before reading its solution."""

from __future__ import annotations

import torch


def red_rewards(prefix_scores, prompt_score):
    """r_t = R(x, y_<=t) - R(x, y_<t) with R(x, y_<1) = prompt_score; prefix_scores: [R(x, y_<=t) for t = 1..T]."""
    previous = [prompt_score] + list(prefix_scores[:-1])
    return [s - p for s, p in zip(prefix_scores, previous)]


def shaped_rewards(rewards, potentials):
    """r'_t = r_t + Phi(s_{t+1}) - Phi(s_t), Phi(s_{T+1}) = 0 (the episode ends). rewards, potentials: (T,) tensors."""
    next_potentials = torch.cat([potentials[1:], potentials.new_zeros(1)])
    return rewards + next_potentials - potentials


def gae_loop(rewards, values, gamma, lam):
    """GAE for one episode of T steps: rewards, values (T,) tensors -> advantages (T,); V after the last step is 0
    (notebook 02's exercise 2.2 again: the same backward recursion)."""
    from solutions.nb02 import gae_backward

    return gae_backward(rewards, values, gamma, lam)
