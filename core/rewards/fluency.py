"""Fluency and diversity metrics for generated text: perplexity and distinct-n.

What it is: the two side metrics the fine-grained RLHF paper reports next to
toxicity (Wu et al. 2023, sec. 3, following Liu et al. 2021 / Lu et al. 2022):
- ``perplexity``: exp of the mean negative log-likelihood of the response tokens
  given the prompt under a frozen reference LM (lower = more fluent to that LM):
      PPL(y | x) = exp( -(1/|y|) sum_t log p_ref(y_t | x, y_<t) );
- ``distinct_n``: number of distinct n-grams / number of n-grams over the whole
  set of texts (Li et al. 2016), higher = more diverse.

Tokenisation: the prompt and the response are tokenised separately and concatenated
(prompt with the tokenizer's special tokens, response without), so the response
tokens are the same whatever the prompt; an empty prompt is replaced by the BOS (or
EOS) token so the first response token has a context. distinct-n splits on whitespace
and keeps case and punctuation.

What it leaves out: corpus-level perplexity (we average per response), chat templates
(pass the prompt already formatted).

    ppl = perplexity(ref_model, tokenizer, prompts, responses, batch_size=8)   # (B,)
    distinct_n(responses, 2)                                                     # float
"""

from __future__ import annotations

import torch

from core.logprobs import completion_logprobs


def _encode_pairs(tokenizer, prompts, responses):
    """[(input_ids, n_prompt_tokens)] per example, plain Python lists."""
    out = []
    for p, r in zip(prompts, responses):
        p_ids = tokenizer(p)["input_ids"] if p else []
        if not p_ids:
            start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            p_ids = [start]
        r_ids = tokenizer(r, add_special_tokens=False)["input_ids"]
        out.append((list(p_ids) + list(r_ids), len(p_ids)))
    return out


def perplexity(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 8):
    """Per-response perplexity under ``model`` (frozen; no gradients). Returns (B,) float32.

    An empty response has no tokens and gets NaN.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pairs = _encode_pairs(tokenizer, prompts, responses)
    result = torch.full((len(pairs),), float("nan"))
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        T = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), T), pad, dtype=torch.long)
        attention_mask = torch.zeros(len(chunk), T, dtype=torch.long)
        completion_mask = torch.zeros(len(chunk), T, dtype=torch.long)
        for b, (ids, n_prompt) in enumerate(chunk):  # right padding
            input_ids[b, : len(ids)] = torch.tensor(ids)
            attention_mask[b, : len(ids)] = 1
            completion_mask[b, n_prompt : len(ids)] = 1
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits  # (b, T, V)
        logps = completion_logprobs(logits.float().cpu(), input_ids, completion_mask)  # (b, T)
        n = completion_mask.sum(-1)  # (b,)
        mean_nll = -logps.sum(-1) / n.clamp(min=1)
        result[i : i + len(chunk)] = torch.where(n > 0, mean_nll.exp(), torch.full_like(mean_nll, float("nan")))
    return result


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / total n-grams over all texts (whitespace words). 0.0 if there are no n-grams."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen, total = set(), 0
    for t in texts:
        words = t.split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 0.0

