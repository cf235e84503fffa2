"""Agreement among annotators, and between annotators and a reward model. Pure Python, no torch.

What it is:
- ``pairwise_ranking_agreement``: for two annotators, over the items both ranked, the
  fraction of response pairs that both order strictly (no tie from either) and on which
  they agree. This is the statistic InstructGPT reports (Ouyang et al. 2022: training
  labellers agree with each other 72.6 +- 1.5% of the time). Pairs either annotator tied
  are left out and counted in ``n_tied``.
- ``krippendorff_alpha``: Krippendorff's alpha (Krippendorff 2011, "Computing
  Krippendorff's Alpha-Reliability") by the coincidence-matrix method, with missing
  values allowed:

      alpha = 1 - D_o / D_e
      o_ck  = sum_u (number of ordered c-k value pairs in unit u) / (m_u - 1)
      n_c   = sum_k o_ck,  n = sum_c n_c
      D_o   = sum_ck o_ck delta^2(c, k) / n
      D_e   = sum_ck n_c n_k delta^2(c, k) / (n (n - 1))

  metric "interval" (delta^2 = (c - k)^2; what the studio reports for the 1-7 ratings,
  which are meant to be equally spaced), "ordinal" (delta^2 = (sum_{g=c..k} n_g - (n_c + n_k)/2)^2)
  or "nominal" (delta = 0 if c == k else 1). A unit is one (item, response); the coders
  are the annotators. Units with fewer than two values are not pairable and are dropped.
- ``reward_model_agreement``: per annotator, the fraction of their strictly ordered pairs
  that a reward model's scores order the same way (equal scores count one half).

What it leaves out: confidence intervals (bootstrap), Fleiss' kappa on the flags.

    from core.feedback.agreement import krippendorff_alpha
    krippendorff_alpha([[1, 2, 3], [1, 2, 4]], "interval")   # units = columns, coders = rows
"""

from __future__ import annotations

import itertools
import math

METRICS = ("interval", "ordinal", "nominal")


# ----------------------------------------------------------------------------- rankings


def _strict_pairs(ranks: list[int]) -> dict[tuple[int, int], int]:
    """(i, j) with i < j -> +1 if i is ranked above j, -1 if below, 0 if tied."""
    return {(i, j): (ranks[i] < ranks[j]) - (ranks[i] > ranks[j]) for i, j in itertools.combinations(range(len(ranks)), 2)}


def pairwise_ranking_agreement(ranks_a: dict, ranks_b: dict) -> dict:
    """Agreement of two annotators' rankings. ranks_x: item -> ranks (1 = best, equal = tie).

    Returns {agreement (None when no pair is comparable), n_pairs, n_agree, n_tied, n_items}.
    """
    agree = n = tied = 0
    common = sorted(set(ranks_a) & set(ranks_b), key=str)
    for item in common:
        a, b = _strict_pairs(ranks_a[item]), _strict_pairs(ranks_b[item])
        for pair, da in a.items():
            db = b.get(pair, 0)
            if da == 0 or db == 0:
                tied += 1
                continue
            n += 1
            agree += da == db
    return {"agreement": agree / n if n else None, "n_pairs": n, "n_agree": agree, "n_tied": tied, "n_items": len(common)}


def ranking_agreement(rankings: list[dict]) -> dict:
    """Inter-annotator agreement from ``store.labels(p)["rankings"]``: every pair of annotators, and overall
    (pooled over all annotator pairs: total agreeing pairs / total comparable pairs)."""
    by_annotator: dict[str, dict] = {}
    for r in rankings:
        by_annotator.setdefault(r["annotator"], {})[r["item_id"]] = r["ranks"]
    pairs = []
    for a, b in itertools.combinations(sorted(by_annotator), 2):
        res = pairwise_ranking_agreement(by_annotator[a], by_annotator[b])
        if res["n_items"]:
            pairs.append({"annotators": [a, b], **res})
    n = sum(p["n_pairs"] for p in pairs)
    agree = sum(p["n_agree"] for p in pairs)
    return {"pairs": pairs, "overall": agree / n if n else None, "n_pairs": n}


# ----------------------------------------------------------------------------- Krippendorff's alpha


def _delta2(values: list, counts: dict, metric: str):
    """delta^2(c, k) for every pair of observed values."""
    if metric == "nominal":
        return lambda c, k: 0.0 if c == k else 1.0
    if metric == "interval":
        return lambda c, k: float(c - k) ** 2
    if metric == "ordinal":
        order = sorted(values)
        pos = {v: i for i, v in enumerate(order)}

        def d(c, k):
            if c == k:
                return 0.0
            lo, hi = sorted((pos[c], pos[k]))
            between = sum(counts[order[g]] for g in range(lo, hi + 1))
            return (between - (counts[c] + counts[k]) / 2) ** 2
        return d
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def krippendorff_alpha(data, metric: str = "interval") -> float | None:
    """Krippendorff's alpha of a reliability matrix: ``data[coder][unit]`` (None or NaN = missing).

    Returns None when there is nothing to compare (fewer than two pairable values, or no
    variation at all, where D_e = 0).
    """
    n_units = max((len(row) for row in data), default=0)
    units = []
    for u in range(n_units):
        vals = [row[u] for row in data if u < len(row) and row[u] is not None and not (isinstance(row[u], float) and math.isnan(row[u]))]
        if len(vals) >= 2:
            units.append(vals)
    coincid: dict[tuple, float] = {}
    for vals in units:
        m = len(vals)
        for i, j in itertools.permutations(range(m), 2):
            key = (vals[i], vals[j])
            coincid[key] = coincid.get(key, 0.0) + 1.0 / (m - 1)
    counts: dict = {}
    for (c, _), o in coincid.items():
        counts[c] = counts.get(c, 0.0) + o
    n = sum(counts.values())
    if n < 2:
        return None
    d2 = _delta2(list(counts), counts, metric)
    observed = sum(o * d2(c, k) for (c, k), o in coincid.items()) / n
    expected = sum(counts[c] * counts[k] * d2(c, k) for c in counts for k in counts) / (n * (n - 1))
    if expected == 0:
        return None
    return 1.0 - observed / expected


def rating_alpha(ratings: list[dict], metric: str = "interval") -> dict:
    """Krippendorff's alpha of ``store.labels(p)["ratings"]``: units (item, response), coders annotators."""
    coders = sorted({r["annotator"] for r in ratings})
    units = sorted({(r["item_id"], r["response_idx"]) for r in ratings})
    col = {u: i for i, u in enumerate(units)}
    data = [[None] * len(units) for _ in coders]
    for r in ratings:
        data[coders.index(r["annotator"])][col[(r["item_id"], r["response_idx"])]] = r["score"]
    pairable = sum(1 for i in range(len(units)) if sum(row[i] is not None for row in data) >= 2)
    return {"alpha": krippendorff_alpha(data, metric), "metric": metric, "n_units": pairable, "n_annotators": len(coders)}


# ----------------------------------------------------------------------------- reward model


def reward_model_agreement(rankings: list[dict], scores: dict) -> dict:
    """Per annotator, how often a reward model orders their strictly ranked pairs the same way.

    scores: item_id -> [K scores]; items without scores are left out. Returns
    annotator -> {agreement, n_pairs}, plus "all" pooled over annotators.
    """
    out: dict[str, dict] = {}
    total = [0.0, 0]
    for r in rankings:
        s = scores.get(r["item_id"])
        if s is None:
            continue
        acc = out.setdefault(r["annotator"], {"agree": 0.0, "n_pairs": 0})
        for (i, j), d in _strict_pairs(r["ranks"]).items():
            if d == 0:
                continue
            w, l = (i, j) if d > 0 else (j, i)
            hit = 1.0 if s[w] > s[l] else 0.5 if s[w] == s[l] else 0.0
            acc["agree"] += hit
            acc["n_pairs"] += 1
            total[0] += hit
            total[1] += 1
    res = {a: {"agreement": v["agree"] / v["n_pairs"] if v["n_pairs"] else None, "n_pairs": v["n_pairs"]} for a, v in out.items()}
    res["all"] = {"agreement": total[0] / total[1] if total[1] else None, "n_pairs": total[1]}
    return res


def reward_model_scores(rm, items: list[dict], batch: int = 64) -> dict:
    """item_id -> [K raw scores] of a reward component with ``score_texts(prompts, responses)``
    (e.g. ``core.rewards.store.load_reward_component(folder)``), for items that have responses."""
    pairs = [(it["id"], it["prompt"], r) for it in items for r in it["responses"]]
    raw: list[float] = []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i : i + batch]
        raw += rm.score_texts([p for _, p, _ in chunk], [r for _, _, r in chunk])
    out: dict = {}
    for (item_id, _, _), s in zip(pairs, raw):
        out.setdefault(item_id, []).append(float(s))
    return out


def project_agreement(store, project_id: int, scores: dict | None = None) -> dict:
    """Everything the page and the export show: ranking agreement, alpha (interval and ordinal) on the
    ratings, and (given a reward model's ``scores``) each annotator's agreement with it."""
    labels = store.labels(project_id)
    out = {"rankings": ranking_agreement(labels["rankings"]),
           "ratings": {"interval": rating_alpha(labels["ratings"], "interval"),
                       "ordinal": rating_alpha(labels["ratings"], "ordinal")}}
    if scores is not None:
        out["reward_model"] = reward_model_agreement(labels["rankings"], scores)
    return out
