"""Token log-probabilities, sequence log-probabilities and entropies from LM logits.

What it is: the glue between a causal LM's output `logits` (B, T, V) and every
objective in `core.losses` / `core.rl`. A causal LM's logits at position t-1 predict
the token at position t, so every function here either works on already-shifted
tensors (`selective_log_softmax`) or does the shift for you and returns results
aligned to `input_ids` positions (`completion_logprobs`, `completion_entropy`), which
is what a `completion_mask` (B, T) is written against.

What it leaves out: running the model, tokenisation and padding (done by the data
collators), sampling temperature (divide the logits by the temperature *before*
calling these, as TRL does, if the completions were sampled with one).

Memory: a full `log_softmax` over (B, T, V) in fp32 is the largest tensor in a
preference-tuning step (e.g. 8 x 512 x 150k x 4 bytes = 2.4 GB). We upcast and
normalise one sequence at a time, `log p(x_t) = logit[x_t] - logsumexp(logits)`,
which is the same number as `log_softmax(logits).gather(...)` (the tests check it)
while never holding more than one (T, V) fp32 row.

Usage:
    logits = model(input_ids, attention_mask=attention_mask).logits      # (B, T, V)
    completion_mask = build_completion_mask(prompt_lengths, attention_mask)
    per_token_logps = completion_logprobs(logits, input_ids, completion_mask)  # (B, T)
    policy_chosen_logps = sequence_logprobs(per_token_logps, completion_mask)  # (B,)
"""
import torch


def selective_log_softmax(logits, index):
    """log_softmax(logits)[..., index] for already-shifted tensors, without the full log_softmax.

    logits: (B, T, V), any float dtype; index: (B, T) token ids that `logits[:, t]` predicts.
    Returns (B, T) float32 (float64 if the logits are float64). Differentiable.
    Equal to `torch.log_softmax(logits.float(), -1).gather(-1, index[..., None])[..., 0]`.
    """
    out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    rows = []
    for row_logits, row_index in zip(logits, index):  # one (T, V) row at a time
        row_logits = row_logits.to(out_dtype)
        selected = row_logits.gather(-1, row_index.unsqueeze(-1)).squeeze(-1)  # (T,)
        rows.append(selected - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(rows)  # (B, T)


def _align_to_targets(per_position):
    """Shift a (B, T-1) quantity about predictions of tokens 1..T-1 onto positions 1..T-1 of a (B, T) tensor."""
    first = per_position.new_zeros(per_position.shape[0], 1)  # token 0 has no prediction
    return torch.cat([first, per_position], dim=1)


def completion_logprobs(logits, input_ids, completion_mask):
    """Log-probability of each completion token given everything before it.

    logits: (B, T, V) from a causal LM run on input_ids (logits[:, t-1] predicts input_ids[:, t]).
    input_ids: (B, T). completion_mask: (B, T), 1 on completion tokens, 0 on prompt and
    padding; left, right, or mixed padding all work since the output is position-aligned.
    Returns per_token_logps (B, T) float32, aligned to input_ids positions:
    per_token_logps[b, t] = log p(input_ids[b, t] | input_ids[b, :t]), and exactly 0
    where completion_mask is 0. Position 0 has no prediction and is always 0 (a prompt
    has at least one token, e.g. BOS).
    """
    shifted = selective_log_softmax(logits[:, :-1], input_ids[:, 1:])  # (B, T-1)
    per_token_logps = _align_to_targets(shifted)  # (B, T)
    return torch.where(completion_mask.bool(), per_token_logps, torch.zeros_like(per_token_logps))


def sequence_logprobs(per_token_logps, completion_mask, average=False):
    """Sum (DPO, IPO-with-sum, PPO sequence scores) or length-average (SimPO) of token log-probs.

    per_token_logps: (B, T); completion_mask: (B, T). Returns (B,).
    average=True divides by the number of completion tokens: SimPO eq. 4 uses
    (1/|y|) log pi(y|x) as the implicit reward, and TRL's IPO also averages.
    An empty completion gives 0 either way.
    """
    keep = completion_mask.bool()
    summed = torch.where(keep, per_token_logps, torch.zeros_like(per_token_logps)).sum(-1)  # (B,)
    if not average:
        return summed
    return summed / keep.sum(-1).clamp(min=1).to(summed.dtype)


def entropy_from_logits(logits):
    """Entropy H = -sum_v p_v log p_v of the next-token distribution at every position.

    logits: (B, T, V). Returns (B, T) float32 (float64 for float64 input), entropy of the
    distribution that logits[:, t] defines, i.e. of the prediction for token t+1.
    Equal to -(softmax(logits) * log_softmax(logits)).sum(-1), but computed one sequence
    at a time. Tokens with probability 0 (logit -inf) contribute 0.
    Uniform logits give log(V), the maximum.
    """
    out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    rows = []
    for row_logits in logits:  # (T, V)
        logp = torch.log_softmax(row_logits.to(out_dtype), dim=-1)
        p = logp.exp()
        plogp = torch.where(p > 0, p * logp, torch.zeros_like(p))
        rows.append(-plogp.sum(-1))
    return torch.stack(rows)  # (B, T)


def completion_entropy(logits, completion_mask):
    """Entropy of the distribution each completion token was drawn from, aligned like completion_logprobs.

    logits: (B, T, V); completion_mask: (B, T). Returns (B, T), where entry [b, t] is the
    entropy of p(. | input_ids[b, :t]) and 0 outside the mask. Average it with
    `core.rl.masked_mean(entropy, completion_mask)` for the usual `policy/entropy` metric.
    """
    entropy = _align_to_targets(entropy_from_logits(logits[:, :-1]))  # (B, T)
    return torch.where(completion_mask.bool(), entropy, torch.zeros_like(entropy))


def build_completion_mask(prompt_lengths, attention_mask):
    """(B, T) completion mask from the number of real prompt tokens in each row.

    prompt_lengths: (B,) ints, prompt tokens per row (not counting padding).
    attention_mask: (B, T), 1 on real tokens (prompt and completion), 0 on padding.
    Works for right padding ([prompt, completion, pad]), left padding
    ([pad, prompt, completion]) and the TRL layout ([pad, prompt, completion, pad]):
    the sequence starts at the first real token, the completion starts prompt_lengths
    tokens later, and padding is never part of it.
    Returns a mask with attention_mask's dtype.
    """
    real = attention_mask.bool()
    T = attention_mask.shape[1]
    positions = torch.arange(T, device=attention_mask.device).unsqueeze(0)  # (1, T)
    first_real = real.int().argmax(dim=1, keepdim=True)  # (B, 1), 0 for an all-padding row
    prompt_end = first_real + torch.as_tensor(prompt_lengths, device=attention_mask.device).view(-1, 1)
    completion = (positions >= prompt_end) & real  # (B, T)
    return completion.to(attention_mask.dtype)
