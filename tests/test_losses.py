"""Tests for core.losses: closed forms, hand-computed values and gradient signs."""
import itertools
import math

import torch
from torch.testing import assert_close

from core.losses import (
    bradley_terry_loss,
    dpo_loss,
    ipo_loss,
    ppo_policy_loss,
    ppo_value_loss,
    ptx_loss,
    ranking_loss,
    simpo_loss,
)


def _logsig(x):
    return -math.log1p(math.exp(-x))


# ---------------------------------------------------------------------------- reward modelling

def test_bradley_terry_closed_form_and_margin():
    r = torch.tensor([0.3, -1.0])
    assert_close(bradley_terry_loss(r, r), torch.full((2,), math.log(2)))
    chosen, rejected = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5])
    assert_close(bradley_terry_loss(chosen, rejected), torch.tensor([-_logsig(1.0), -_logsig(-1.0)]))
    # a margin m shifts the gap: loss(r_c, r_r, m) == loss(r_c - m, r_r)
    margin = torch.tensor([1.0, 0.25])
    assert_close(bradley_terry_loss(chosen, rejected, margin), torch.tensor([math.log(2), -_logsig(-1.25)]))


def _explicit_ranking(rewards_row):
    pairs = list(itertools.combinations(range(len(rewards_row)), 2))  # i ranked above j
    return sum(-_logsig(rewards_row[i] - rewards_row[j]) for i, j in pairs) / len(pairs)


def test_ranking_loss_equals_pairwise_average_k4():
    rewards = torch.tensor([[1.0, 0.5, -0.2, 0.7], [0.0, 0.0, 0.0, 0.0], [-1.0, 2.0, 0.3, 0.1]])
    expected = torch.tensor([_explicit_ranking(row) for row in rewards.tolist()])
    assert_close(ranking_loss(rewards), expected)
    assert_close(ranking_loss(rewards)[1], torch.tensor(math.log(2)))


def test_ranking_loss_with_mask():
    rewards = torch.tensor([[1.0, 0.5, -0.2, 9.0], [0.4, 9.0, -0.3, 9.0], [2.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 0], [1, 0, 0, 0]])
    expected = torch.tensor([_explicit_ranking([1.0, 0.5, -0.2]), _explicit_ranking([0.4, -0.3]), 0.0])
    assert_close(ranking_loss(rewards, mask), expected)


def test_ranking_loss_k2_is_bradley_terry():
    rewards = torch.randn(5, 2)
    assert_close(ranking_loss(rewards), bradley_terry_loss(rewards[:, 0], rewards[:, 1]))


# ---------------------------------------------------------------------------- DPO / IPO / SimPO

def test_dpo_policy_equal_reference_gives_log2_and_zero_rewards():
    logps = torch.tensor([-10.0, -3.5, -42.0])
    other = torch.tensor([-12.0, -1.0, -40.0])
    losses, chosen_rewards, rejected_rewards = dpo_loss(logps, other, logps, other, beta=0.1)
    assert_close(losses, torch.full((3,), math.log(2)))
    assert_close(chosen_rewards, torch.zeros(3))
    assert_close(rejected_rewards, torch.zeros(3))


def test_dpo_hand_computed_and_rewards():
    beta = 0.5
    # h = (-1 - -2) - (-3 - -2) = 2, logits = 1
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=beta)
    assert_close(losses, torch.tensor([-_logsig(1.0)]))
    assert_close(chosen_rewards, torch.tensor([0.5]))
    assert_close(rejected_rewards, torch.tensor([-0.5]))


def test_dpo_label_smoothing():
    eps, beta = 0.2, 0.5
    args = torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0])
    losses, _, _ = dpo_loss(*args, beta=beta, label_smoothing=eps)
    assert_close(losses, torch.tensor([-(1 - eps) * _logsig(1.0) - eps * _logsig(-1.0)]))
    # eps = 0.5 makes the loss symmetric in chosen / rejected; still log 2 at policy = reference
    swapped, _, _ = dpo_loss(args[1], args[0], args[3], args[2], beta=beta, label_smoothing=0.5)
    straight, _, _ = dpo_loss(*args, beta=beta, label_smoothing=0.5)
    assert_close(swapped, straight)


def test_dpo_gradient_signs():
    policy_chosen = torch.tensor([-5.0, -2.0], requires_grad=True)
    policy_rejected = torch.tensor([-4.0, -6.0], requires_grad=True)
    ref_chosen, ref_rejected = torch.tensor([-5.5, -2.0]), torch.tensor([-3.0, -6.5])
    losses, chosen_rewards, _ = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    losses.sum().backward()
    assert torch.all(policy_chosen.grad < 0)  # raising the chosen log-prob lowers the loss
    assert torch.all(policy_rejected.grad > 0)
    assert not chosen_rewards.requires_grad


def test_ipo_zero_at_target_and_closed_form():
    beta = 0.25  # target h = 1 / (2 beta) = 2
    ref = torch.tensor([-4.0, -4.0])
    losses, chosen_rewards, rejected_rewards = ipo_loss(torch.tensor([-3.0, -3.0]), torch.tensor([-5.0, -5.0]),
                                                        ref, ref, beta=beta)
    assert_close(losses, torch.zeros(2))
    assert_close(chosen_rewards, torch.full((2,), 0.25))
    assert_close(rejected_rewards, torch.full((2,), -0.25))
    losses, _, _ = ipo_loss(ref, ref, ref, ref, beta=beta)  # h = 0
    assert_close(losses, torch.full((2,), 4.0))


def test_simpo_equal_average_logps():
    beta, ratio = 2.0, 0.5
    avg = torch.tensor([-1.3, -0.2])
    losses, chosen_rewards, rejected_rewards = simpo_loss(avg, avg, beta=beta, gamma_beta_ratio=ratio)
    gamma = ratio * beta
    assert_close(losses, torch.full((2,), math.log1p(math.exp(gamma))))
    assert_close(chosen_rewards, beta * avg)
    assert_close(rejected_rewards, beta * avg)


def test_simpo_hand_computed_with_label_smoothing():
    beta, ratio, eps = 2.5, 0.4, 0.1
    losses, _, _ = simpo_loss(torch.tensor([-0.5]), torch.tensor([-1.5]), beta=beta, gamma_beta_ratio=ratio,
                              label_smoothing=eps)
    logits = beta * 1.0 - ratio * beta  # 1.5
    assert_close(losses, torch.tensor([-(1 - eps) * _logsig(logits) - eps * _logsig(-logits)]))


# ---------------------------------------------------------------------------- PPO

def test_ppo_policy_loss_at_ratio_one():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]])
    advantages = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.25, 100.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, stats = ppo_policy_loss(logprobs, logprobs.clone(), advantages, mask)
    assert_close(loss, -torch.tensor(1.0 - 2.0 + 0.5 + 3.0 + 0.25) / 5)
    assert_close(stats["clipfrac"], torch.tensor(0.0))
    assert_close(stats["approxkl"], torch.tensor(0.0))
    assert_close(stats["ratio_mean"], torch.tensor(1.0))


def test_ppo_policy_loss_clipped_hand_computed():
    eps = 0.2
    old = torch.zeros(1, 4)
    # ratios 1.5 (A>0: clipped to 1.2), 0.5 (A>0: unclipped is the larger loss), 1.5 (A<0: unclipped), masked
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 1.5, 3.0]]))
    advantages = torch.tensor([[2.0, 1.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = ppo_policy_loss(logprobs, old, advantages, mask, cliprange=eps)
    per_token = [max(-2.0 * 1.5, -2.0 * 1.2), max(-1.0 * 0.5, -1.0 * 0.8), max(1.0 * 1.5, 1.0 * 1.2)]
    assert_close(loss, torch.tensor(sum(per_token) / 3))
    assert_close(stats["clipfrac"], torch.tensor(1 / 3))
    log_ratios = [math.log(1.5), math.log(0.5), math.log(1.5)]
    assert_close(stats["approxkl"], torch.tensor(0.5 * sum(x * x for x in log_ratios) / 3))
    assert_close(stats["ratio_mean"], torch.tensor((1.5 + 0.5 + 1.5) / 3))


def test_ppo_policy_loss_no_gradient_through_clipped_tokens():
    logprobs = torch.log(torch.tensor([[1.5, 1.1]])).requires_grad_()
    loss, _ = ppo_policy_loss(logprobs, torch.zeros(1, 2), torch.tensor([[1.0, 1.0]]), torch.ones(1, 2))
    loss.backward()
    assert logprobs.grad[0, 0] == 0 and logprobs.grad[0, 1] < 0


def test_ppo_value_loss_closed_form():
    values = torch.tensor([[1.0, 0.5, 2.0, 7.0]])
    old_values = torch.tensor([[0.0, 0.4, 1.0, 0.0]])
    returns = torch.tensor([[0.0, 1.0, 3.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = ppo_value_loss(values, old_values, returns, mask, cliprange_value=0.2)
    # clipped values: 0.2, 0.5, 1.2
    unclipped = [1.0, 0.25, 1.0]
    clipped = [0.04, 0.25, 3.24]
    expected = 0.5 * sum(max(u, c) for u, c in zip(unclipped, clipped)) / 3
    assert_close(loss, torch.tensor(expected))
    assert_close(stats["clipfrac"], torch.tensor(1 / 3))
    assert_close(stats["value_mean"], torch.tensor(3.5 / 3))


def test_ptx_loss():
    logps = torch.tensor([[-1.0, -3.0, float("-inf")]])
    mask = torch.tensor([[1, 1, 0]])
    assert ptx_loss(logps, mask, ptx_coef=0.0) == 0
    assert_close(ptx_loss(logps, mask, ptx_coef=0.5), torch.tensor(1.0))
