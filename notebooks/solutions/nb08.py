"""Reference solutions of notebook 08 (human feedback data). Try the exercises before reading these."""

from __future__ import annotations

import itertools

import numpy as np


def ranking_to_pairs(ranks):
    """Exercise 8.1: the K-choose-2 expansion of a ranking with ties.

    ranks: list of K ints, ranks[i] is response i's rank (1 = best, equal ranks = a tie).
    Returns the (winner, loser) index pairs of every strictly ordered pair, i < j order of enumeration.
    """
    pairs = []
    for i, j in itertools.combinations(range(len(ranks)), 2):
        if ranks[i] < ranks[j]:
            pairs.append((i, j))
        elif ranks[j] < ranks[i]:
            pairs.append((j, i))
    return pairs


def cohens_kappa(labels_a, labels_b):
    """Exercise 8.2: Cohen's kappa of two annotators' labels of the same N items.

    labels_a, labels_b: sequences of N hashable labels. Returns (p_o - p_e) / (1 - p_e), where p_o is the observed
    agreement and p_e the agreement expected if each annotator labelled at random with their own label frequencies.
    """
    a, b = np.asarray(labels_a), np.asarray(labels_b)
    p_o = float(np.mean(a == b))
    p_e = sum(float(np.mean(a == c)) * float(np.mean(b == c)) for c in np.union1d(a, b))
    return (p_o - p_e) / (1 - p_e)


def alpha_nominal_from_counts(counts):
    """Exercise 8.3: Krippendorff's alpha (nominal) from per-unit category counts.

    counts: (U, C) array, counts[u, c] = how many annotators put unit u in category c. Units with fewer than two
    labels are not pairable and are left out. Returns 1 - D_o / D_e.
    """
    counts = np.asarray(counts, dtype=float)
    m = counts.sum(1)
    counts = counts[m >= 2]
    m = m[m >= 2]
    # coincidences of unit u: o_u[c, k] = n_uc (n_uk - [c == k]) / (m_u - 1)
    o = (counts[:, :, None] * counts[:, None, :] - counts[:, :, None] * np.eye(counts.shape[1])) / (m - 1)[:, None, None]
    o = o.sum(0)  # (C, C)
    n_c = o.sum(1)
    n = n_c.sum()
    observed_disagreement = (o.sum() - np.trace(o)) / n
    expected_disagreement = (n * n - (n_c ** 2).sum()) / (n * (n - 1))
    return 1 - observed_disagreement / expected_disagreement
