"""Reference solutions of notebook 07 (reward over-optimisation and KL control). Try the exercises first."""
import numpy as np
import torch.nn.functional as F


def proxy_bt_loss(w, phi_chosen, phi_rejected):
    """Exercise 7.1: per-pair Bradley-Terry loss of the linear proxy r(y) = phi(y) . w.

    w: (D,); phi_chosen, phi_rejected: (P, D). Returns (P,) = -log sigmoid(r(chosen) - r(rejected)).
    """
    return -F.logsigmoid((phi_chosen - phi_rejected) @ w)


def best_of_n_kl(n):
    """Exercise 7.2: KL(best-of-n || pi_ref) = log n - (n - 1) / n, for an int or a numpy array of n."""
    n = np.asarray(n, dtype=np.float64)
    return np.log(n) - (n - 1) / n


def adaptive_kl_update(beta, current_kl, target, horizon, n_steps):
    """Exercise 7.3: one step of Ziegler et al.'s proportional controller; returns the new beta (float)."""
    error = min(max(current_kl / target - 1.0, -0.2), 0.2)
    return beta * (1.0 + error * n_steps / horizon)
