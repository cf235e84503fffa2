"""TokenRewards: the one representation of rewards that trainers and the app consume.

What it is: every reward signal - a holistic reward model score, fine-grained
relevance / factuality / completeness rewards (Wu et al. 2023, "Fine-Grained Human
Feedback Gives Better Rewards for Language Model Training"), a redistributed reward,
a toxicity penalty, a user's Python function - ends up as a named (B, T) tensor
aligned to the POLICY's response tokens, plus the list of ``Segment`` s saying which
text span produced which value on which token. PPO then uses

    r_t = sum_k w_k r^k_t                                    (Wu et al. 2023, eq. 1)

where a segment-level reward r^k sits on the token where its segment ends and is 0
elsewhere; ``TokenRewards.combined(weights)`` computes exactly this sum (the KL
penalty is added by ``core.rl.kl_penalized_rewards``, not here).

A reward component is anything with ``name``, ``level``, ``category`` and ``score``
(``RewardComponent``); ``compute_token_rewards`` segments each response at the
component's level (``core.rewards.segments``), asks the component for one value per
segment (on TEXT, so its own tokenizer does not matter) and places each value on the
policy token where the segment ends (``core.rewards.align``).

What it leaves out: the reward models themselves (other modules), normalisation and
whitening of rewards (trainer choices), the KL term.

    tr = compute_token_rewards(prompts, response_ids, policy_tokenizer,
                               {"toxicity": HolisticToxicityReward()}, response_mask=mask)
    rewards = tr.combined({"toxicity": 1.0})    # (B, T), 0 where mask is 0
    tr.totals()["toxicity"]                     # (B,)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Protocol, runtime_checkable

import torch

from core.rewards.align import char_to_token_index, response_token_char_spans
from core.rewards.segments import segment_spans
from core.rl import place_at_last_token

LEVELS = ("sequence", "sentence", "subsentence", "token")


@dataclass
class Segment:
    """One reward value and what produced it."""

    component: str  # e.g. "holistic", "c1_relevance", "c2_factuality", "c3_completeness", "redistributed", "toxicity"
    value: float
    char_start: int  # span in the response text
    char_end: int
    token_index: int  # policy response-token index (0 = first response token) where the value is placed
    category: str | None  # "C1" | "C2" | "C3" | "toxicity" | None
    level: str  # "sequence" | "sentence" | "subsentence" | "token"


@dataclass
class TokenRewards:
    """Named per-token rewards on the policy's response tokens.

    components: name -> (B, T) float, aligned to the policy's response tokens, 0 where mask is 0.
    mask: (B, T), 1 on response tokens (left, right or no padding).
    segments: per example, the Segments behind the values (all components).
    token_spans: per example, the char span of each response token (len = mask[b].sum()).
    texts: the decoded responses.
    """

    components: dict[str, torch.Tensor]
    mask: torch.Tensor
    segments: list[list[Segment]] = field(default_factory=list)
    token_spans: list[list[tuple[int, int]]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def combined(self, weights: dict[str, float]) -> torch.Tensor:
        """sum_k w_k r^k_t, (B, T). A component without a weight counts 0; an unknown name is a KeyError."""
        unknown = sorted(set(weights) - set(self.components))
        if unknown:
            raise KeyError(f"unknown reward component(s) {unknown}; available: {sorted(self.components)}")
        total = torch.zeros(self.mask.shape, dtype=torch.float32, device=self.mask.device)
        for name, w in weights.items():
            total = total + float(w) * self.components[name].to(total.dtype)
        return total

    def totals(self) -> dict[str, torch.Tensor]:
        """Per-component sum over tokens, (B,) each."""
        return {name: r.sum(-1) for name, r in self.components.items()}

    def to_records(self) -> list[dict]:
        """JSON-able dicts, one per example: text, token spans, segments, totals and per-token values.

        ``rewards[name]`` lists the values on the response tokens only (padding dropped),
        in the same order as ``token_spans``.
        """
        totals = {k: v.tolist() for k, v in self.totals().items()}
        records = []
        for b in range(self.mask.shape[0]):
            keep = self.mask[b].bool()
            records.append({
                "text": self.texts[b] if b < len(self.texts) else "",
                "token_spans": [list(s) for s in self.token_spans[b]] if b < len(self.token_spans) else [],
                "segments": [asdict(s) for s in self.segments[b]] if b < len(self.segments) else [],
                "totals": {k: float(v[b]) for k, v in totals.items()},
                "rewards": {k: [float(x) for x in r[b][keep].tolist()] for k, r in self.components.items()},
            })
        return records


@runtime_checkable
class RewardComponent(Protocol):
    """What ``compute_token_rewards`` needs from a reward source.

    name: key in ``TokenRewards.components``; level: "sequence" | "sentence" |
    "subsentence" | "token"; category: "C1" | "C2" | "C3" | "toxicity" | None.
    score(prompts, responses, segments) -> one list of floats per response, one value
    per segment: segments[b] lists (start, end) char spans of responses[b] at this
    component's level ([(0, len)] for "sequence", the policy tokens' spans for
    "token"). Values are placed on the policy token where each segment ends.
    """

    name: str
    level: str
    category: str | None

    def score(self, prompts: list[str], responses: list[str], segments: list[list[tuple[int, int]]]) -> list[list[float]]: ...


class FunctionReward:
    """A user's ``fn(prompt, response) -> float`` as a sequence-level reward component."""

    level = "sequence"

    def __init__(self, fn: Callable[[str, str], float], name: str | None = None, category: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "function")
        self.category = category

    def score(self, prompts, responses, segments):
        return [[float(self.fn(p, r))] for p, r in zip(prompts, responses)]


# ----------------------------------------------------------------------------- builders


def _positions(mask: torch.Tensor) -> list[torch.Tensor]:
    """Per row, the (B, T) column of each response token: positions[b][k] for token k."""
    return [torch.nonzero(row.bool()).squeeze(-1) for row in mask]


def place_sequence_reward(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) rewards with each score (B,) on its row's last response token (mask == 1).

    Works for left and right padding; a row with an empty mask gets nothing
    (Ziegler et al. 2019, sec. 2.2: the RM score is the reward of the final token).
    """
    return place_at_last_token(torch.as_tensor(scores, dtype=torch.float32, device=mask.device), mask)


def place_segment_rewards(values: list[list[float]], token_indices: list[list[int]], mask: torch.Tensor) -> torch.Tensor:
    """(B, T) rewards with values[b][j] on response token token_indices[b][j] (Wu et al. 2023, eq. 1).

    token_indices count response tokens (0 = the row's first token with mask 1), so the
    same indices work for left and right padding. Two segments ending on one token add up.
    """
    rewards = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    for b, (row_values, row_idx, pos) in enumerate(zip(values, token_indices, _positions(mask))):
        if len(row_values) != len(row_idx):
            raise ValueError(f"example {b}: {len(row_values)} values for {len(row_idx)} token indices")
        for v, k in zip(row_values, row_idx):
            if not 0 <= k < len(pos):
                raise IndexError(f"example {b}: token index {k} outside its {len(pos)} response tokens")
            rewards[b, pos[k]] += float(v)
    return rewards


def _as_rows(response_token_ids, response_mask) -> tuple[list[list[int]], torch.Tensor]:
    """Token id lists per row and the (B, T) mask they sit under."""
    if isinstance(response_token_ids, torch.Tensor):
        ids = response_token_ids
        mask = torch.ones_like(ids) if response_mask is None else torch.as_tensor(response_mask).to(ids.device)
        rows = [ids[b][mask[b].bool()].tolist() for b in range(ids.shape[0])]
        return rows, mask.long()
    rows = [list(map(int, r)) for r in response_token_ids]
    if response_mask is not None:
        raise ValueError("response_mask is only for a (B, T) tensor of ids; pass lists without padding")
    T = max((len(r) for r in rows), default=0)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for b, r in enumerate(rows):
        mask[b, : len(r)] = 1  # right padding
    return rows, mask


def compute_token_rewards(
    prompts: list[str],
    response_token_ids,
    tokenizer,
    components: dict[str, RewardComponent],
    response_mask: torch.Tensor | None = None,
) -> TokenRewards:
    """Score responses with every component and place the values on the policy's response tokens.

    prompts: B prompt strings (passed to the components as they are).
    response_token_ids: (B, T) tensor of generated ids with ``response_mask`` (B, T) 1 on
    response tokens (any padding side), or B lists of ids without padding (the result
    is then right-padded). tokenizer: the POLICY's tokenizer.
    components: output name -> component (the dict key names the (B, T) tensor).
    Sequence-level values go on the last response token (EOS included); segment
    values on the token holding the segment's last character; token-level values on
    their token.
    """
    rows, mask = _as_rows(response_token_ids, response_mask)
    if len(prompts) != len(rows):
        raise ValueError(f"{len(prompts)} prompts for {len(rows)} responses")
    decoded = [response_token_char_spans(tokenizer, r) for r in rows]
    texts = [t for t, _ in decoded]
    token_spans = [s for _, s in decoded]
    out: dict[str, torch.Tensor] = {}
    segments: list[list[Segment]] = [[] for _ in rows]
    cache: dict[str, list[list[tuple[int, int]]]] = {}
    for name, comp in components.items():
        if comp.level not in LEVELS:
            raise ValueError(f"component {name!r} has level {comp.level!r}; expected one of {LEVELS}")
        if comp.level not in cache:
            cache[comp.level] = [segment_spans(t, comp.level, s) for t, s in zip(texts, token_spans)]
        spans = cache[comp.level]
        values = [list(v) for v in comp.score(list(prompts), texts, spans)]
        if len(values) != len(rows):
            raise ValueError(f"component {name!r} returned {len(values)} rows for {len(rows)} responses")
        indices = []
        for b, (row_vals, row_spans) in enumerate(zip(values, spans)):
            if len(row_vals) != len(row_spans):
                raise ValueError(f"component {name!r}, example {b}: {len(row_vals)} values for {len(row_spans)} {comp.level} segments")
            n_tok = len(rows[b])
            if comp.level == "sequence":
                idx = [n_tok - 1] if n_tok else []
            elif comp.level == "token":
                idx = list(range(len(row_spans)))
            else:
                idx = [char_to_token_index(token_spans[b], e) for _, e in row_spans]
            if len(idx) < len(row_vals):  # an empty response: its sequence value has no token
                row_vals = row_vals[: len(idx)]
            indices.append(idx)
            values[b] = row_vals
            segments[b] += [
                Segment(name, float(v), s, e, k, comp.category, comp.level) for v, (s, e), k in zip(row_vals, row_spans, idx)
            ]
        out[name] = place_segment_rewards(values, indices, mask)
    return TokenRewards(components=out, mask=mask, segments=segments, token_spans=token_spans, texts=texts)
