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

Long inputs: a reward model reads at most ``max_length`` tokens, and its holistic score of
a longer text is read on the last ``max_length`` of them (truncation from the left). Every
prefix score s_t is read the same way (``windowed_prefix_scores``: the first ``max_length``
prefixes in one pass, then one ``max_length``-token window per later position), so the
identity sum_t r_t = R(x, y) - R(x) holds at any length and every response token gets its
credit; what remains is that the model no longer sees the start of the prompt
(``context_cut`` says when, for the explorer to show). Long inputs cost one window pass per
token beyond ``max_length``: a larger max_length is faster when the model allows it.

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
from core.rewards.preference_rm import PreferenceReward, format_pair, score_all_positions, sequence_scores


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


def _encode_full(tokenizer, texts: list[str], padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Tokenise without truncation: input_ids, attention_mask (B, T) and offset_mapping (B, T, 2)."""
    old = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        enc = tokenizer(texts, padding=True, return_tensors="pt", return_offsets_mapping=True)
    finally:
        tokenizer.padding_side = old
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "offset_mapping": enc["offset_mapping"]}


def windowed_prefix_scores(model, rows: list[torch.Tensor], needed_from: list[int], max_length: int,
                           batch_size: int = 16) -> list[torch.Tensor]:
    """Score of every prefix of each token row, each read on at most its last ``max_length`` tokens.

    rows[b]: (n_b,) token ids (no padding); needed_from[b]: the first position whose score is
    needed. Entry t of the result is s_t = R(row[max(0, t - L + 1) : t + 1]) with L = max_length,
    which is exactly what ``score_texts`` (truncation from the left) returns for the prefix ending
    at t. Rows of at most L tokens take one causal pass (all prefixes at once); a longer row takes
    one pass over its first L tokens and one L-token window per later position, batched.
    Returns one (n_b,) float tensor per row (positions before needed_from may be 0).
    """
    device = next(model.parameters()).device
    L = max_length
    out = [torch.zeros(len(r)) for r in rows]
    short = [b for b, r in enumerate(rows) if len(r) <= L]
    for i in range(0, len(short), batch_size):
        group = short[i : i + batch_size]
        T = max(len(rows[b]) for b in group)
        ids = torch.zeros(len(group), T, dtype=torch.long)
        attn = torch.zeros(len(group), T, dtype=torch.long)
        for k, b in enumerate(group):
            ids[k, : len(rows[b])], attn[k, : len(rows[b])] = rows[b], 1
        s = score_all_positions(model, ids.to(device), attn.to(device)).float().cpu()  # (b, T)
        for k, b in enumerate(group):
            out[b] = s[k, : len(rows[b])]
    windows, where = [], []
    for b, r in enumerate(rows):
        if len(r) <= L:
            continue
        if needed_from[b] < L:  # the first L prefixes: one causal pass
            ids = r[:L].unsqueeze(0).to(device)
            out[b][:L] = score_all_positions(model, ids, torch.ones_like(ids))[0].float().cpu()
        for t in range(max(L, needed_from[b]), len(r)):
            windows.append(r[t - L + 1 : t + 1])
            where.append((b, t))
    for i in range(0, len(windows), batch_size):
        ids = torch.stack(windows[i : i + batch_size]).to(device)  # (b, L)
        s = sequence_scores(model, ids, torch.ones_like(ids)).float().cpu()
        for (b, t), v in zip(where[i : i + batch_size], s.tolist()):
            out[b][t] = v
    return out


def context_cut(tokenizer, prompts, responses, fmt: str = "text", separator: str = " ", max_length: int = 1024) -> list[bool]:
    """Per example: True when prompt + response exceed ``max_length`` reward-model tokens, so that the
    scores (holistic and redistributed) are read on windows of the last ``max_length`` tokens and the
    start of the prompt is out of the model's view. Every response token still gets its credit."""
    texts = [format_pair(tokenizer, p, r, fmt, separator)[0] for p, r in zip(prompts, responses)]
    return [len(ids) > max_length for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]


@torch.no_grad()
def rm_token_rewards(model, tokenizer, prompts, responses, fmt: str = "text", separator: str = " ",
                     max_length: int = 1024, first_token: str = "prompt", padding_side: str = "right",
                     batch_size: int = 16):
    """Redistributed rewards on the reward model's own response tokens, at any length.

    Every prefix score is read on at most the last ``max_length`` tokens
    (``windowed_prefix_scores``), exactly as the holistic score ``score_texts`` reads a
    long text, so sum_t r_t = R(x, y) - R(x) holds for inputs of any length and every
    response token gets its credit; short inputs take a single forward pass.
    Returns (rewards, spans, totals): per example a list of r_t, the (start, end) char
    span of each of those RM tokens in the RESPONSE text (clamped to it), and the
    holistic score R(x, y) read at the last token.
    """
    texts = [format_pair(tokenizer, p, r, fmt, separator) for p, r in zip(prompts, responses)]
    enc = _encode_full(tokenizer, [t for t, _ in texts], padding_side)
    attn = enc["attention_mask"]
    resp = _response_mask(enc, [s for _, s in texts])  # (B, T)
    rows, needed, positions = [], [], []
    for b in range(len(texts)):
        pos = attn[b].nonzero().squeeze(-1)  # where the real tokens are in the padded row
        first_resp = int(resp[b, pos].nonzero()[0]) if resp[b].any() else len(pos)
        rows.append(enc["input_ids"][b, pos])
        needed.append(max(first_resp - 1, 0))
        positions.append(pos)
    scores = torch.zeros(attn.shape, dtype=torch.float32)  # (B, T): R(x, y_<=t), windowed
    for b, s in enumerate(windowed_prefix_scores(model, rows, needed, max_length, batch_size)):
        scores[b, positions[b]] = s
    rewards = redistribute(scores, resp, attn, first_token)  # (B, T)
    totals = [float(scores[b, positions[b][-1]]) if len(positions[b]) else 0.0 for b in range(len(texts))]
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
        out_r.append(rewards[b, cols].tolist())
        out_s.append(spans)
    return out_r, out_s, totals


@torch.no_grad()
def slow_redistribution(model, tokenizer, prompt, response, fmt: str = "text", separator: str = " ",
                        max_length: int = 1024, first_token: str = "prompt") -> list[float]:
    """Reference: one full forward pass per response prefix (and one for the prompt alone).

    Same tokens as ``rm_token_rewards`` (prefixes of one tokenisation, not re-tokenised
    text), each prefix cut from the left to its last ``max_length`` tokens as ``score_texts``
    would; O(|y|) forward passes, for tests and teaching only.
    """
    text, start = format_pair(tokenizer, prompt, response, fmt, separator)
    enc = _encode_full(tokenizer, [text])
    device = next(model.parameters()).device
    ids = enc["input_ids"].to(device)
    resp = _response_mask(enc, [start])[0]
    cols = torch.nonzero(resp).squeeze(-1).tolist()

    def score(t):  # R of the prefix ending at t, on its last max_length tokens
        window = ids[:, max(0, t - max_length + 1) : t + 1]
        return sequence_scores(model, window, torch.ones_like(window)).item()

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
        return rm_token_rewards(self.model, self.tokenizer, self.fitted_prompts(prompts, responses), responses, self.fmt,
                                self.separator, self.max_length, self.first_token)

    def context_cut(self, prompts, responses) -> list[bool]:
        """Per example: True when the input exceeds the model's max_length (windows of its last tokens are read)."""
        return context_cut(self.tokenizer, self.fitted_prompts(prompts, responses), responses, self.fmt, self.separator,
                           self.max_length)

    def score(self, prompts, responses, segments):
        """segments[b]: the policy's token spans of responses[b]; one value per policy token."""
        out = []
        for i in range(0, len(prompts), self.batch_size):
            rewards, spans, _ = self.rm_token_rewards(prompts[i : i + self.batch_size], responses[i : i + self.batch_size])
            for r, s, target in zip(rewards, spans, segments[i : i + self.batch_size]):
                out.append([v / self.std for v in map_to_tokens(r, s, target)])
        return out
