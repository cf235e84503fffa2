"""Reference solutions of notebook 05 (fine-grained RLHF). Try each exercise before reading its solution."""

from __future__ import annotations

import torch

from core.rewards.segments import segment_spans


def segment_rewards(text, spans, category, level, positive=1.0, negative=-1.0):
    """[((start, end), reward)] per segment of `text` at `level`: `negative` when the segment shares at least one
    character with a human span of `category`, else `positive`."""
    marked = [(s["start"], s["end"]) for s in spans if s["category"] == category]
    return [((a, b), negative if any(s < b and a < e for s, e in marked) else positive)
            for a, b in segment_spans(text, level)]


def fine_grained_rewards(segment_values, weights, logratio, beta):
    """Wu et al. eq. 1 for one response of T tokens.

    segment_values: {k: [(T_j, R_k(x, y, j)), ...]} the token index where each segment of model k ends and its reward.
    weights: {k: w_k}. logratio: (T,) log pi_theta - log pi_ref of each response token. Returns (T,) r_t.
    """
    r = -beta * logratio.detach().clone().float()  # (T,) the KL term at every token
    for k, pairs in segment_values.items():
        for t, value in pairs:
            r[t] += weights[k] * value
    return r


def sentence_detox_rewards(prefix_tox):
    """r_j = -(tox(y_1..j) - tox(y_1..j-1)), tox(y_1..0) = 0; prefix_tox: [tox(y_1..j) for j = 1..m]."""
    return [-(t - prev) for t, prev in zip(prefix_tox, [0.0] + list(prefix_tox[:-1]))]
