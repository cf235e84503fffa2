"""core.sampling draws from the same distribution as transformers' temperature / top-k / top-p warpers."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from core.sampling import sample_next

DRAWS = 40_000


def transformers_distribution(scores: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """(B, V) probabilities of transformers' sampler: its warpers in its order, then softmax."""
    scores = TemperatureLogitsWarper(temperature)(None, scores.clone())
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.softmax(scores, -1)


def empirical(row: torch.Tensor, candidates: int, **settings) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    tokens = sample_next(row.expand(DRAWS, -1), candidates=candidates, generator=g, **settings)
    return torch.bincount(tokens, minlength=row.shape[-1]).double() / DRAWS


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 0.9), (1.3, 0, 0.5), (0.7, 5, 1.0),
                                                     (1.0, 6, 0.8), (0.5, 0, 0.99)])
@pytest.mark.parametrize("candidates", [3, 256])  # 3: the nucleus often reaches past the candidates (full-sort path)
def test_frequencies_match_transformers_and_nothing_outside_its_support_is_drawn(temperature, top_k, top_p, candidates):
    g = torch.Generator().manual_seed(1)
    row = torch.randn(1, 24, generator=g) * 2.0  # (1, V)
    expected = transformers_distribution(row, temperature, top_k, top_p)[0].double()
    freq = empirical(row, candidates, temperature=temperature, top_k=top_k, top_p=top_p)
    assert torch.all(freq[expected == 0] == 0)  # never outside the top-k / nucleus
    se = (expected * (1 - expected) / DRAWS).sqrt()
    assert torch.all((freq - expected).abs() <= 5 * se + 1e-4), (freq, expected)


def test_the_nucleus_boundary_is_transformers_on_many_rows():
    """Support only (no draws): on 200 random rows the kept set equals TopPLogitsWarper's, both paths."""
    from core.sampling import nucleus_keep

    g = torch.Generator().manual_seed(2)
    scores = torch.randn(200, 300, generator=g) * torch.rand(200, 1, generator=g) * 4  # peaked and flat rows
    for top_p in (0.3, 0.9, 0.95):
        hf_kept = torch.isfinite(TopPLogitsWarper(top_p)(None, scores.clone()))
        values, index = scores.sort(dim=-1, descending=True)
        keep = nucleus_keep(torch.softmax(values, -1), top_p)
        ours = torch.zeros_like(hf_kept).scatter_(1, index, keep)
        assert torch.equal(ours, hf_kept)


def test_masked_tokens_are_never_drawn_and_bad_settings_are_refused():
    scores = torch.zeros(500, 10)
    scores[:, 3] = float("-inf")  # as generate's min_new_tokens processor masks EOS
    for settings in ({}, {"top_p": 0.9}, {"top_k": 4}):
        assert not (sample_next(scores, **settings) == 3).any()
    with pytest.raises(ValueError, match="temperature"):
        sample_next(scores, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        sample_next(scores, top_p=0.0)


def test_generate_is_reproducible_and_keeps_min_new_tokens(tiny_model, tokenizer):
    from core.rollout import generate

    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        outs.append(generate(tiny_model, tokenizer, ["Hello there", "A cat"], max_new_tokens=6, min_new_tokens=6,
                             temperature=0.7, top_p=0.9))
    assert torch.equal(outs[0].response_ids, outs[1].response_ids)
    assert outs[0].response_mask.sum(1).tolist() == [6, 6]  # EOS suppressed until 6 tokens
