"""Paired before/after statistics: did a training run change a metric beyond the sampling noise?

What it is: the reward-weight lab's verdict on a short PPO. The same held-out prompts are
sampled before and after training with the same seed (``core.evaluation.evaluate_policy``),
so each prompt i gives a pair (b_i, a_i) and the question is about the mean of

    d_i = a_i - b_i,                       i = 1..n prompts (k samples per prompt averaged first)

The 95 % interval is Student's t interval of the paired mean difference:

    mean(d) ± t_{0.975, n-1} · sd(d) / sqrt(n),      sd with n - 1 in the denominator

and the change is "beyond the noise" when that interval excludes 0 (a paired t-test at
5 %). Pairing by prompt removes the prompt-to-prompt spread, which is most of the
variance of a reward. Units are prompts, not samples: the k samples of one prompt are not
independent pieces of evidence about the policy.

What it leaves out: corrections for testing several components at once (each row is its
own 5 % test), bootstrap intervals (with 4-16 prompts a bootstrap of the mean is too
narrow; the t interval is exact for normal differences and conservative enough here).

    rows = paired_table(before_samples, after_samples, ["toxicity", "c3"])
    describe(rows)   # one sentence in words
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass


@dataclass
class PairedChange:
    """The paired change of one metric. low/high: the 95 % t interval (NaN with < 2 pairs)."""

    metric: str
    before: float  # mean over prompts
    after: float
    diff: float  # mean of after - before
    low: float
    high: float
    n: int  # prompts paired

    @property
    def beyond_noise(self) -> bool:
        """The interval excludes 0."""
        return self.n >= 2 and (self.low > 0 or self.high < 0)


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile (scipy.stats.t.ppf)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def paired_change(metric: str, before: list[float], after: list[float], confidence: float = 0.95) -> PairedChange:
    """Mean of after[i] - before[i] with its t interval (pairs in the same order)."""
    if len(before) != len(after):
        raise ValueError(f"{metric}: {len(before)} values before but {len(after)} after; pairs must match")
    n = len(before)
    if n == 0:
        raise ValueError(f"{metric}: no pairs")
    d = [a - b for a, b in zip(after, before)]
    mean = sum(d) / n
    if n < 2:
        low = high = float("nan")
    else:
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
        half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
    return PairedChange(metric, sum(before) / n, sum(after) / n, mean, low, high, n)


def per_prompt_means(samples: list[dict], metric: str) -> dict[str, float]:
    """prompt -> mean of ``metric`` over its samples; metric is a key of ``totals``, or "kl" / "length"."""
    acc = defaultdict(list)
    for s in samples:
        value = s.get(metric) if metric in ("kl", "length") else (s.get("totals") or {}).get(metric)
        if value is not None:
            acc[s["prompt"]].append(float(value))
    return {p: sum(v) / len(v) for p, v in acc.items()}


def paired_table(before: list[dict], after: list[dict], components: list[str],
                 extra: tuple[str, ...] = ("kl", "length")) -> list[PairedChange]:
    """One PairedChange per component and per extra metric, pairing samples by prompt.

    before, after: evaluation samples ({prompt, totals: {name: Σ_t r_t}, kl, length}) of the
    same held-out prompts; a prompt missing on either side is left out. KL before
    training is 0 by definition (the policy is the reference) when the sample has none.
    """
    rows = []
    for metric in list(components) + list(extra):
        b, a = per_prompt_means(before, metric), per_prompt_means(after, metric)
        if metric == "kl" and not b:
            b = {p: 0.0 for p in a}
        common = [p for p in b if p in a]
        if common:
            rows.append(paired_change(metric, [b[p] for p in common], [a[p] for p in common]))
    return rows


def describe(rows: list[PairedChange], components: list[str] | None = None) -> str:
    """The table in one or two sentences: which weighted components moved beyond the noise, and which direction."""
    focus = [r for r in rows if components is None or r.metric in components]
    if not focus:
        return "No held-out samples to compare."
    n = focus[0].n
    if n < 2:
        return f"Only {n} held-out prompt: no interval, so no verdict on whether anything changed."
    moved = [r for r in focus if r.beyond_noise]
    still = [r.metric for r in focus if not r.beyond_noise]
    parts = [f"{r.metric} {'rose' if r.diff > 0 else 'fell'} by {abs(r.diff):.3g} (95 % interval {r.low:+.3g} to {r.high:+.3g})"
             for r in moved]
    text = f"On {n} held-out prompts, "
    if parts:
        text += "; ".join(parts) + ": beyond the noise."
    else:
        text += "no weighted component changed beyond the noise: every 95 % interval includes 0."
    if parts and still:
        text += f" {', '.join(still)}: within the noise (the interval includes 0)."
    return text
