"""Tests for core.rl: GAE against a plain Python loop, KL estimators, reward shaping, KL controllers, masked stats."""
import math

import pytest
import torch
from torch.testing import assert_close

from core.rl import (
    AdaptiveKLController,
    FixedKLController,
    gae,
    kl_penalized_rewards,
    kl_per_token,
    masked_mean,
    masked_var,
    masked_whiten,
    place_at_last_token,
)


# ---------------------------------------------------------------------------- masked statistics

def test_masked_mean_var_whiten():
    x = torch.tensor([[1.0, 2.0, float("nan")], [3.0, 6.0, float("inf")]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert_close(masked_mean(x, mask), torch.tensor(3.0))
    assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 4.5]))
    assert_close(masked_mean(x, torch.zeros_like(mask)), torch.tensor(0.0))
    values = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert_close(masked_var(x, mask), values.var(unbiased=True))
    assert_close(masked_var(x, mask, unbiased=False), values.var(unbiased=False))
    whitened = masked_whiten(x, mask)
    assert_close(whitened[mask.bool()], (values - values.mean()) / values.std())
    assert torch.all(whitened[~mask.bool()] == 0)
    assert_close(masked_whiten(x, mask, shift_mean=False)[mask.bool()], (values - 3.0) / values.std() + 3.0)
    with pytest.raises(ValueError):
        masked_var(x, torch.tensor([[1, 0, 0], [0, 0, 0]]))


# ---------------------------------------------------------------------------- GAE

def _reference_gae(rewards, values, mask, gamma, lam):
    """Plain Python GAE, one sequence at a time, over that sequence's valid tokens only."""
    B, T = len(rewards), len(rewards[0])
    advantages = [[0.0] * T for _ in range(B)]
    returns = [[0.0] * T for _ in range(B)]
    for b in range(B):
        steps = [t for t in range(T) if mask[b][t]]
        last_advantage = 0.0
        for i in reversed(range(len(steps))):
            t = steps[i]
            next_value = values[b][steps[i + 1]] if i + 1 < len(steps) else 0.0
            delta = rewards[b][t] + gamma * next_value - values[b][t]
            last_advantage = delta + gamma * lam * last_advantage
            advantages[b][t] = last_advantage
            returns[b][t] = last_advantage + values[b][t]
    return torch.tensor(advantages, dtype=torch.float64), torch.tensor(returns, dtype=torch.float64)


def _random_rollout(seed, B=4, T=9):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = [T, 5, 1, 0]  # full, trailing padding, single token, empty
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return rewards, values, mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (1.0, 0.95), (0.99, 0.95), (0.9, 0.0), (0.5, 0.7)])
def test_gae_equals_reference_loop(gamma, lam):
    for seed in range(3):
        rewards, values, mask = _random_rollout(seed)
        advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
        ref_advantages, ref_returns = _reference_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
        assert_close(advantages, ref_advantages)
        assert_close(returns, ref_returns)
        assert_close(returns, (advantages + values) * mask)
        assert torch.all(advantages[mask == 0] == 0) and torch.all(returns[mask == 0] == 0)


def test_gae_skips_masked_gaps():
    rewards, values, _ = _random_rollout(7)
    mask = torch.tensor([[0, 1, 1, 0, 1, 0, 0, 1, 0]] * 4)  # left padding and holes
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    ref_advantages, ref_returns = _reference_gae(rewards.tolist(), values.tolist(), mask.tolist(), 0.9, 0.8)
    assert_close(advantages, ref_advantages)
    assert_close(returns, ref_returns)


def test_gae_reward_only_affects_earlier_tokens():
    _, values, mask = _random_rollout(1)
    base_rewards = torch.zeros_like(values)
    base, _ = gae(base_rewards, values, mask, gamma=1.0, lam=1.0)
    t = 3
    bumped_rewards = base_rewards.clone()
    bumped_rewards[:2, t] = 1.0  # rows 0 and 1 have a valid token at t
    bumped, _ = gae(bumped_rewards, values, mask, gamma=1.0, lam=1.0)
    change = bumped - base
    assert_close(change[:2, : t + 1], torch.ones(2, t + 1, dtype=torch.float64))  # gamma = lam = 1: +1 at every s <= t
    assert torch.all(change[:, t + 1:] == 0)
    assert torch.all(change[2:] == 0)


def test_gae_monte_carlo_return_when_gamma_lam_one():
    rewards, values, mask = _random_rollout(2)
    _, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    rewards_to_go = (rewards * mask).flip(1).cumsum(1).flip(1) * mask
    assert_close(returns, rewards_to_go)


# ---------------------------------------------------------------------------- KL

def test_kl_estimators_closed_forms():
    logprobs = torch.tensor([[-1.0, -2.0, -0.1]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.1]])
    d = logprobs - ref_logprobs
    r = torch.exp(ref_logprobs - logprobs)
    assert_close(kl_per_token(logprobs, ref_logprobs, "k1"), d)
    assert_close(kl_per_token(logprobs, ref_logprobs, "k2"), 0.5 * d**2)
    assert_close(kl_per_token(logprobs, ref_logprobs, "k3"), (r - 1) - torch.log(r))
    assert kl_per_token(logprobs, ref_logprobs, "k3")[0, 2] == 0
    with pytest.raises(ValueError):
        kl_per_token(logprobs, ref_logprobs, "k4")


def test_k3_nonnegative():
    g = torch.Generator().manual_seed(0)
    logprobs, ref_logprobs = -torch.rand(64, 32, generator=g) * 10, -torch.rand(64, 32, generator=g) * 10
    assert torch.all(kl_per_token(logprobs, ref_logprobs, "k3") >= 0)
    assert torch.all(kl_per_token(logprobs, ref_logprobs, "k2") >= 0)


def test_kl_penalized_rewards_subtracts_exactly():
    rewards = torch.tensor([[0.0, 0.0, 2.0, 0.0], [0.0, 5.0, 0.0, 0.0]])
    logprobs = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-0.5, -0.5, -9.0, -9.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -3.0, -1.0], [-0.25, -1.5, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    for estimator in ("k1", "k3"):
        shaped, per_token_kl = kl_penalized_rewards(rewards, logprobs, ref_logprobs, mask, 0.1, estimator)
        expected_kl = kl_per_token(logprobs, ref_logprobs, estimator) * mask
        assert_close(per_token_kl, expected_kl)
        assert_close(shaped, (rewards - 0.1 * expected_kl) * mask)
    shaped, _ = kl_penalized_rewards(rewards, logprobs, ref_logprobs, mask, 0.1)
    assert_close(shaped, torch.tensor([[-0.05, 0.1, 2.0, 0.0], [0.025, 5.0 - 0.1, 0.0, 0.0]]))


def test_place_at_last_token():
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    rewards = place_at_last_token(torch.tensor([1.5, -2.0, 7.0]), mask)
    assert_close(rewards, torch.tensor([[0.0, 0.0, 1.5, 0.0], [0.0, 0.0, 0.0, -2.0], [0.0, 0.0, 0.0, 0.0]]))


def test_fixed_kl_controller():
    ctl = FixedKLController(0.05)
    assert ctl.update(current_kl=100.0, n_steps=64) == 0.05 and ctl.value == 0.05


def test_adaptive_kl_controller_hand_computed():
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    ctl.update(current_kl=7.5, n_steps=256)  # error 0.25 clipped to 0.2
    assert math.isclose(ctl.value, 0.2 * (1 + 0.2 * 256 / 10000))
    previous = ctl.value
    ctl.update(current_kl=torch.tensor(5.4), n_steps=100)  # error -0.1
    assert math.isclose(ctl.value, previous * (1 - 0.1 * 100 / 10000), rel_tol=1e-6)
    previous = ctl.value
    ctl.update(current_kl=0.0, n_steps=50)  # error -1 clipped to -0.2
    assert math.isclose(ctl.value, previous * (1 - 0.2 * 50 / 10000))


def test_masked_whiten_skips_whitening_below_two_valid_tokens():
    # batch size 1 with an immediate EOS: one valid token, no spread to divide by
    x = torch.tensor([[0.7, 5.0, -3.0]])
    mask = torch.tensor([[1, 0, 0]])
    assert masked_whiten(x, mask).tolist() == [[pytest.approx(0.7), 0.0, 0.0]]
    assert masked_whiten(x, mask, shift_mean=False).tolist() == [[pytest.approx(0.7), 0.0, 0.0]]
    assert masked_whiten(x, torch.zeros_like(mask)).tolist() == [[0.0, 0.0, 0.0]]
    from core.rl import compute_advantages

    advantages, raw, _ = compute_advantages(x * mask, torch.zeros_like(x), mask)  # PPO phase 4 on that batch
    assert torch.equal(advantages, raw) and torch.isfinite(advantages).all()
