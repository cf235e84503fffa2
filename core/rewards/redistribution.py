"""RED / R3HF: token-level rewards from a holistic reward model by reward redistribution.

Paper: Li et al. 2024, "R3HF: Reward Redistribution for Enhancing Reinforcement Learning
from Human Feedback" (arXiv 2411.08302; published as "RED: Unleashing Token-Level
Rewards from Holistic Feedback via Reward Redistribution", EMNLP 2025). The reward
model R, trained on whole responses, is read on every prefix of the response, and
token t gets the change it causes:

    r_t = R(x, y_<=t) - R(x, y_<t),        t = 1..|y|
    R(x, y_<1) = R(x)   the score of the prompt alone (first_token="prompt", default)

so the sum telescopes: sum_t r_t = R(x, y) - R(x). The subtracted R(x) does not depend
on the response, so the redistributed rewards rank responses exactly as the holistic
score does (the policy-gradient optimum is unchanged). first_token="zero" takes
R(x, y_<1) = 0 instead, so sum_t r_t = R(x, y) exactly. We could not retrieve the
paper's method section verbatim while writing this; the prompt-alone baseline is the
reading of the R3HF preprint we followed, and both options are offered.

Fast path: with a causal backbone the hidden state at position t sees only tokens
<= t, so ONE forward pass with the score head applied at every position
(``preference_rm.score_all_positions``) gives R(x, y_<=t) for all t at once.
``slow_redistribution`` recomputes every prefix separately; the tests check that both
agree (left and right padding, batches of several).

Tokenizers: redistribution happens on the REWARD MODEL's tokens.
``map_to_tokens`` moves the values onto any other tokenisation of the same response
(the policy's) through character spans (``core.rewards.align``): each RM token's reward
goes to the policy token holding its last character, so the sum is preserved.
Tokens after the response (a chat template's end-of-turn marker) belong to the last
response character.

What it leaves out: the paper's optional reward shaping/clipping of r_t, any training.

    rm = load_reward_component(folder, redistribute=True)      # RedistributedReward
    tr = compute_token_rewards(prompts, response_ids, policy_tok, {"redistributed": rm})
"""

from __future__ import annotations

import torch

from core.rewards.align import Span, char_to_token_index
from core.rewards.preference_rm import PreferenceReward, encode, format_pair, score_all_positions, sequence_scores


def redistribute(prefix_scores: torch.Tensor, response_mask: torch.Tensor, attention_mask: torch.Tensor,
                 first_token: str = "prompt") -> torch.Tensor:
    """Token rewards r_t = s_t - s_{t-1} on response tokens (pure function).

    prefix_scores: (B, T) score of the prefix ending at each position.
    response_mask: (B, T) 1 on response tokens (one contiguous run per row, after the prompt).
    attention_mask: (B, T) 1 on real tokens (left or right padding).
    first_token: "prompt" -> the first response token's baseline is the score at the
    previous real token (the prompt alone; 0 if there is no prompt); "zero" -> 0.
    Returns (B, T), 0 outside response_mask; each row sums to s_last - baseline.
    """
    if first_token not in ("prompt", "zero"):
        raise ValueError(f"first_token must be 'prompt' or 'zero', got {first_token!r}")
    B = prefix_scores.shape[0]
    resp, attn = response_mask.bool(), attention_mask.bool()
    shift = lambda x, fill: torch.cat([torch.full((B, 1), fill, dtype=x.dtype, device=x.device), x[:, :-1]], dim=1)  # noqa: E731
    prev = torch.where(shift(attn, False), shift(prefix_scores, 0.0), torch.zeros_like(prefix_scores))  # (B, T)
    if first_token == "zero":
        first = resp & ~shift(resp, False)
        prev = torch.where(first, torch.zeros_like(prev), prev)
    return torch.where(resp, prefix_scores - prev, torch.zeros_like(prefix_scores))


def _response_mask(enc: dict, starts: list[int]) -> torch.Tensor:
    """(B, T) 1 on real tokens that end after the response start (boundary-straddling tokens included)."""
    ends = enc["offset_mapping"][..., 1]  # (B, T)
    starts_t = torch.tensor(starts).unsqueeze(1)
    return (enc["attention_mask"].bool() & (ends > starts_t)).long()


@torch.no_grad()
def rm_token_rewards(model, tokenizer, prompts, responses, fmt: str = "text", separator: str = " ",
                     max_length: int = 1024, first_token: str = "prompt", padding_side: str = "right"):
    """Redistributed rewards on the reward model's own response tokens, one batched forward pass.

    Returns (rewards, spans, totals): per example a list of r_t, the (start, end) char
    span of each of those RM tokens in the RESPONSE text (clamped to it), and the
    holistic score R(x, y) read at the last token.
    """
    texts = [format_pair(tokenizer, p, r, fmt, separator) for p, r in zip(prompts, responses)]
    enc = encode(tokenizer, [t for t, _ in texts], max_length, padding_side)
    device = next(model.parameters()).device
    ids, attn = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    scores = score_all_positions(model, ids, attn).float()  # (B, T): R(x, y_<=t)
    resp = _response_mask(enc, [s for _, s in texts]).to(device)
    rewards = redistribute(scores, resp, attn, first_token)  # (B, T)
    totals = scores.gather(1, ((torch.arange(ids.shape[1], device=device) * attn).argmax(-1)).unsqueeze(1)).squeeze(1)
    out_r, out_s = [], []
    for b, (_, start) in enumerate(texts):
        n = len(responses[b]) if isinstance(responses[b], str) else None
        cols = torch.nonzero(resp[b]).squeeze(-1).tolist()
        spans = []
        for c in cols:
            s, e = (int(v) - start for v in enc["offset_mapping"][b, c].tolist())
            s, e = max(s, 0), max(e, 0)
            if n is not None:
                s, e = min(s, n), min(e, n)
            spans.append((s, e))
        out_r.append(rewards[b, cols].cpu().tolist())
        out_s.append(spans)
    return out_r, out_s, totals.cpu().tolist()


@torch.no_grad()
def slow_redistribution(model, tokenizer, prompt, response, fmt: str = "text", separator: str = " ",
                        max_length: int = 1024, first_token: str = "prompt") -> list[float]:
    """Reference: one full forward pass per response prefix (and one for the prompt alone).

    Same tokens as ``rm_token_rewards`` (prefixes of one tokenisation, not re-tokenised
    text); O(|y|) forward passes, for tests and teaching only.
    """
    text, start = format_pair(tokenizer, prompt, response, fmt, separator)
    enc = encode(tokenizer, [text], max_length)
    device = next(model.parameters()).device
    ids = enc["input_ids"].to(device)
    resp = _response_mask(enc, [start])[0]
    cols = torch.nonzero(resp).squeeze(-1).tolist()
    score = lambda t: sequence_scores(model, ids[:, : t + 1], torch.ones_like(ids[:, : t + 1])).item()  # noqa: E731
    prev = score(cols[0] - 1) if cols and cols[0] > 0 and first_token == "prompt" else 0.0
    out = []
    for t in cols:
        s = score(t)
        out.append(s - prev)
        prev = s
    return out


def map_to_tokens(rewards: list[float], rm_spans: list[Span], target_spans: list[Span]) -> list[float]:
    """Move per-RM-token rewards onto another tokenisation of the same text, preserving the sum.

    rm_spans / target_spans: (start, end) char spans of the RM tokens and of the target
    (policy) tokens in the same response text. Each RM token's reward goes to the
    target token holding its last character (``align.char_to_token_index``); an RM
    token with an empty span (nothing of the response) goes to the target token at its
    position, or the first non-empty one. If the target has no non-empty token
    (empty response) everything is dropped. Returns one value per target token.
    """
    out = [0.0] * len(target_spans)
    nonempty = [k for k, (s, e) in enumerate(target_spans) if e > s]
    if not nonempty:
        return out
    for r, (s, e) in zip(rewards, rm_spans):
        k = char_to_token_index(target_spans, e) if e > target_spans[nonempty[0]][0] else nonempty[0]
        out[k] += float(r)
    return out


class RedistributedReward(PreferenceReward):
    """A holistic reward model redistributed over tokens (RED): a token-level ``RewardComponent``.

    Values are r_t / std (the model's training-set std from its metadata), so they sum
    to (R(x, y) - R(x)) / std, the normalised holistic score minus the normalised
    prompt score (the mean cancels).
    """

    level = "token"

    def __init__(self, model, tokenizer, meta=None, name: str | None = "redistributed", first_token: str = "prompt", **kwargs):
        super().__init__(model, tokenizer, meta, name=name, **kwargs)
        self.first_token = first_token

    def rm_token_rewards(self, prompts, responses):
        return rm_token_rewards(self.model, self.tokenizer, prompts, responses, self.fmt, self.separator,
                                self.max_length, self.first_token)

    def score(self, prompts, responses, segments):
        """segments[b]: the policy's token spans of responses[b]; one value per policy token."""
        out = []
        for i in range(0, len(prompts), self.batch_size):
            rewards, spans, _ = self.rm_token_rewards(prompts[i : i + self.batch_size], responses[i : i + self.batch_size])
            for r, s, target in zip(rewards, spans, segments[i : i + self.batch_size]):
                out.append([v / self.std for v in map_to_tokens(r, s, target)])
        return out
