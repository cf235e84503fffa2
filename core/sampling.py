"""Sampling the next token: temperature, top-k and nucleus (top-p) without sorting the vocabulary.

What it is: the sampler behind ``core.rollout.generate``. transformers' sampling path
sorts every row of the (B, V) logits for top-p and draws with ``torch.multinomial`` over
the whole vocabulary; with SmolLM2's 49,152-token vocabulary on a CPU that costs more
than the model's own decoding step (measured: 16 rows, top-p 0.9, ≈ 180 ms of sampling
against ≈ 100 ms of forward pass). ``sample_next`` draws from exactly the same
distribution (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration",
sec. 3.1, with transformers' boundary rule) from a few hundred candidates:

    p = softmax(z / T)                                 (B, V)  tempered distribution
    top-k:  keep the k largest, renormalise            (transformers' order: temperature, top-k, top-p)
    top-p:  keep token i iff the mass of the tokens ranked above it is < top_p
            (transformers' TopPLogitsWarper: drop i when the cumulative mass up to i,
            ascending, is <= 1 - top_p; the top token is always kept)

The nucleus is found among the ``candidates`` most likely tokens; a row whose
candidates hold less than top_p of the mass falls back to the whole sorted vocabulary,
so the result never depends on ``candidates``. Without top-k and top-p the draw is an
inverse-CDF lookup over the full distribution (one uniform per row). Every draw uses
the global torch RNG (or ``generator``): seed it for reproducible samples.

``SamplingProcessor`` plugs it into ``model.generate(do_sample=False, ...)``: the
processor draws the token and leaves it the only finite score, so generate's argmax
returns it; generate's other processors (``min_new_tokens`` masking EOS) run before it.

What it leaves out: typical / min-p / eta sampling, repetition penalties.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

CANDIDATES = 256
"""tokens searched for the nucleus before falling back to a full sort"""


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Index (B,) drawn from each row of unnormalised non-negative weights probs (B, N), by inverse CDF."""
    cdf = probs.cumsum(-1)  # (B, N)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp(max=probs.shape[1] - 1)


def nucleus_keep(probs_desc: torch.Tensor, top_p: float) -> torch.Tensor:
    """(B, N) bool: which of the descending-sorted probabilities probs_desc (B, N) top-p keeps (the first always)."""
    above = probs_desc.cumsum(-1) - probs_desc  # mass strictly above each token
    keep = above < top_p
    keep[:, 0] = True
    return keep


def sample_next(scores: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                candidates: int = CANDIDATES, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) sampled from scores (B, V) with temperature, then top-k, then top-p (the module docstring)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    logits = scores.float() / temperature  # (B, V)
    V = logits.shape[-1]
    if top_k <= 0 and top_p >= 1:
        return _draw(torch.softmax(logits, -1), generator)
    k = min(top_k, V) if top_k > 0 else min(candidates, V)
    values, index = logits.topk(k, dim=-1)  # (B, k), descending
    if top_k > 0:  # top-p acts on the renormalised top-k distribution, as in transformers
        probs = torch.softmax(values, -1)
    else:
        probs = (values - logits.logsumexp(-1, keepdim=True)).exp()  # full-vocabulary probabilities of the candidates
        if top_p < 1 and bool((probs.sum(-1) < top_p).any()):  # the nucleus may reach past the candidates: sort it all
            values, index = logits.sort(dim=-1, descending=True)
            probs = torch.softmax(values, -1)
    if top_p < 1:
        probs = torch.where(nucleus_keep(probs, top_p), probs, torch.zeros_like(probs))
    return index.gather(1, _draw(probs, generator)[:, None]).squeeze(1)


class SamplingProcessor(LogitsProcessor):
    """A logits processor that samples: every score but the drawn token's becomes -inf (use with do_sample=False)."""

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | None = None):
        self.temperature, self.top_k, self.top_p, self.generator = temperature, top_k, top_p, generator

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        token = sample_next(scores, self.temperature, self.top_k, self.top_p, generator=self.generator)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, token[:, None], 0.0)
