"""Tests for core.logprobs: equality with a naive log_softmax + gather loop, masking, padding layouts, entropy."""
import math

import torch
from torch.testing import assert_close

from core.logprobs import (
    build_completion_mask,
    completion_entropy,
    completion_logprobs,
    entropy_from_logits,
    selective_log_softmax,
    sequence_logprobs,
)

B, T, V = 3, 8, 11
PROMPT_LENGTHS = torch.tensor([2, 3, 1])
REAL_LENGTHS = torch.tensor([8, 6, 4])  # prompt + completion tokens per row


def _batch(padding_side, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 3
    input_ids = torch.randint(0, V, (B, T), generator=g)
    attention_mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(REAL_LENGTHS.tolist()):
        if padding_side == "right":
            attention_mask[b, :n] = 1
        else:
            attention_mask[b, T - n:] = 1
    return logits, input_ids, attention_mask


def _expected_completion_mask(padding_side):
    mask = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        start = 0 if padding_side == "right" else T - int(REAL_LENGTHS[b])
        for t in range(start + int(PROMPT_LENGTHS[b]), start + int(REAL_LENGTHS[b])):
            mask[b, t] = 1
    return mask


def _naive_logprobs(logits, input_ids, mask):
    out = torch.zeros(B, T)
    for b in range(B):
        for t in range(1, T):
            if mask[b, t]:
                out[b, t] = torch.log_softmax(logits[b, t - 1].double(), -1)[input_ids[b, t]].float()
    return out


def test_build_completion_mask_right_and_left_padding():
    for side in ("right", "left"):
        _, _, attention_mask = _batch(side)
        assert torch.equal(build_completion_mask(PROMPT_LENGTHS, attention_mask), _expected_completion_mask(side))


def test_build_completion_mask_trl_layout():
    # [pad, prompt, prompt, completion, completion, pad]
    attention_mask = torch.tensor([[0, 1, 1, 1, 1, 0]])
    expected = torch.tensor([[0, 0, 0, 1, 1, 0]])
    assert torch.equal(build_completion_mask(torch.tensor([2]), attention_mask), expected)


def test_completion_logprobs_equal_naive_loop_right_and_left_padding():
    for side in ("right", "left"):
        logits, input_ids, attention_mask = _batch(side)
        mask = build_completion_mask(PROMPT_LENGTHS, attention_mask)
        got = completion_logprobs(logits, input_ids, mask)
        assert_close(got, _naive_logprobs(logits, input_ids, mask))
        assert torch.all(got[mask == 0] == 0)  # prompt and padding exactly zero
        assert torch.all(got[mask == 1] < 0)


def test_logprobs_independent_of_padding_side():
    logits_r, ids_r, am_r = _batch("right")
    logits_l, ids_l, am_l = torch.zeros_like(logits_r), torch.zeros_like(ids_r), torch.zeros_like(am_r)
    for b, n in enumerate(REAL_LENGTHS.tolist()):  # move each row's real tokens to the right end
        logits_l[b, T - n:], ids_l[b, T - n:], am_l[b, T - n:] = logits_r[b, :n], ids_r[b, :n], 1
    mask_r = build_completion_mask(PROMPT_LENGTHS, am_r)
    seq_r = sequence_logprobs(completion_logprobs(logits_r, ids_r, mask_r), mask_r)
    mask_l = build_completion_mask(PROMPT_LENGTHS, am_l)
    seq_l = sequence_logprobs(completion_logprobs(logits_l, ids_l, mask_l), mask_l)
    assert_close(seq_r, seq_l)


def test_selective_log_softmax_matches_full_log_softmax_and_gradients():
    logits = torch.randn(2, 5, 7, requires_grad=True)
    index = torch.randint(0, 7, (2, 5))
    got = selective_log_softmax(logits, index)
    expected = torch.log_softmax(logits, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    assert_close(got, expected)
    (grad_got,) = torch.autograd.grad(got.sum(), logits)
    (grad_expected,) = torch.autograd.grad(expected.sum(), logits)
    assert_close(grad_got, grad_expected)


def test_bfloat16_logits_are_upcast():
    logits = (torch.randn(2, 5, 7) * 4).bfloat16()
    index = torch.randint(0, 7, (2, 5))
    got = selective_log_softmax(logits, index)
    assert got.dtype == torch.float32
    assert_close(got, torch.log_softmax(logits.float(), -1).gather(-1, index.unsqueeze(-1)).squeeze(-1))


def test_sequence_logprobs_summed_and_averaged():
    per_token = torch.tensor([[0.0, -1.0, -2.0, 0.0], [0.0, 0.0, -3.0, -5.0]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])
    per_token_with_junk = per_token + 100.0 * (1 - mask)  # masked entries must be ignored
    assert_close(sequence_logprobs(per_token_with_junk, mask), torch.tensor([-3.0, -8.0]))
    assert_close(sequence_logprobs(per_token_with_junk, mask, average=True), torch.tensor([-1.5, -4.0]))
    assert_close(sequence_logprobs(per_token, torch.zeros_like(mask), average=True), torch.zeros(2))


def test_entropy_equals_naive_formula():
    logits = torch.randn(2, 5, 7) * 2
    expected = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    assert_close(entropy_from_logits(logits), expected)


def test_entropy_of_uniform_logits_is_log_vocab():
    assert_close(entropy_from_logits(torch.zeros(2, 3, V)), torch.full((2, 3), math.log(V)))


def test_entropy_handles_minus_inf_logits():
    logits = torch.tensor([[[0.0, 0.0, float("-inf")]]])
    assert_close(entropy_from_logits(logits), torch.tensor([[math.log(2)]]))


def test_completion_entropy_aligned_and_masked():
    logits, input_ids, attention_mask = _batch("left")
    mask = build_completion_mask(PROMPT_LENGTHS, attention_mask)
    got = completion_entropy(logits, mask)
    full = entropy_from_logits(logits)
    for b in range(B):
        for t in range(T):
            assert_close(got[b, t], full[b, t - 1] if mask[b, t] else torch.tensor(0.0))
