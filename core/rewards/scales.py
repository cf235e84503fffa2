"""Stated colour scales of reward components: how large a per-token value must be to be drawn at full colour.

What it is: a small table, read by the app's token views (``workbench.charts``), so that a
colour means the same thing on every response. Stretching the scale to the data makes
noise look like signal: a toxicity of -0.01 on a harmless sentence would be drawn in the
darkest red because it is the largest value on the page. Each component gets a symmetric
scale [-s, s] fixed by what its values mean:

    toxicity             -p(toxic) in [-1, 0]: s = 1 (its probability range)
    toxicity_sentence    change of p(toxic) per sentence, in [-1, 1]: s = 1
    toxicity_token       change of p(toxic) per token, in [-1, 1]: s = 1
    fine-grained C1/C2   +-1 per segment (positive_reward / negative_reward): s = max(|pos|, |neg|)
    holistic (preference) (R - mu) / sigma, a z-score over the model's training scores: s = 2
                         (about 95 % of training responses fall within +-2)
    redistributed (RED)  r_t / sigma, summing to (R(x,y) - R(x)) / sigma over the response:
                         s = 0.5 (a quarter of the holistic scale: the credit is spread over tokens)
    weighted total       sum_k |w_k| s_k over the components in the sum

A component with no stated scale (a user's function) has None: the caller scales it to
the data and says so.

What it leaves out: per-prompt or per-dataset calibration (a scale is a property of the
component, not of the text on screen).
"""

from __future__ import annotations

TOXICITY_SCALE = 1.0
FINEGRAINED_DEFAULT = 1.0
HOLISTIC_Z_SCALE = 2.0
REDISTRIBUTED_SCALE = 0.5
NAMED = {"toxicity": TOXICITY_SCALE, "toxicity_sentence": TOXICITY_SCALE, "toxicity_token": TOXICITY_SCALE}


def colour_scale(name: str, meta: dict | None = None, redistributed: bool = False) -> float | None:
    """The stated symmetric scale s of a component (values drawn on [-s, s]), None when none is known.

    name: the component's name; meta: a stored reward model's metadata (``core.rewards.store``),
    None for the built-in components; redistributed: the RED view of a holistic model.
    """
    if meta is None:
        return NAMED.get(name)
    if redistributed:
        return REDISTRIBUTED_SCALE
    if meta.get("kind") == "finegrained":
        return max(abs(float(meta.get("positive_reward", 1.0))), abs(float(meta.get("negative_reward", -1.0)))) or FINEGRAINED_DEFAULT
    if meta.get("kind") == "preference":
        return HOLISTIC_Z_SCALE
    return None


def weighted_scale(weights: dict[str, float], scales: dict[str, float | None]) -> float | None:
    """sum_k |w_k| s_k over the weighted components; None when a weighted one has no scale or the sum is 0."""
    total = 0.0
    for name, w in weights.items():
        if w == 0:
            continue
        s = scales.get(name)
        if s is None:
            return None
        total += abs(float(w)) * s
    return total or None
