# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. PPO for language models
#
# **What this notebook is.** The RL step of RLHF (InstructGPT step 3; Ziegler et al. 2019; Ouyang et al. 2022)
# built up from the MDP, then one PPO iteration computed by hand on a tiny model and checked, number by number,
# against `core.logprobs`, `core.rl` and `core.losses`.
#
# **Learning goals.** After this notebook you can
# 1. write text generation as an MDP: state = prompt + prefix, action = next token, reward = a reward-model
#    score at the last token minus a per-token KL penalty;
# 2. tell "KL in the reward" (PPO-RLHF) from "KL in the loss" (GRPO), and the k1 / k2 / k3 KL estimators;
# 3. derive GAE: the TD error $\delta_t$, the $\lambda$-return, and the backward recursion, and see they agree;
# 4. explain the clipped surrogate, the (clipped) value loss and the ptx term of InstructGPT eq. 2;
# 5. compute one PPO iteration by hand (sample, log-probs, KL-shaped rewards, GAE, clipped loss, value loss)
#    and show it equals `core`.
#
# **What it leaves out.** Training to convergence (a random tiny model and a random reward model have nothing to
# learn: the point is the plumbing and the maths), minibatching, the adaptive KL controller, and the trainer.
# Runs in a few seconds on CPU.
#
# **How to run.** `.venv/bin/jupyter lab notebooks/` from the project root (see `notebooks/README.md`).

# %%
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy

import numpy as np
import torch
import transformers
from torch.testing import assert_close

from core.logprobs import build_completion_mask, completion_logprobs
from core.losses import ppo_policy_loss, ppo_value_loss, ptx_loss
from core.models import TINY_MODEL, load_causal_lm, load_reward_model, load_tokenizer
from core.rl import gae, kl_penalized_rewards, kl_per_token, masked_mean, masked_whiten, place_at_last_token
from core.value_head import CausalLMWithValueHead

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
np.set_printoptions(suppress=True)
torch.manual_seed(0)

# %% [markdown]
# ## 1. Generation as a Markov decision process
#
# For a prompt $x$ and a response $y = (y_1,\dots,y_T)$ sampled from the policy $\pi_\theta$:
#
# | MDP | language model |
# |---|---|
# | state $s_t$ | the prompt and the prefix, $(x, y_{<t})$ |
# | action $a_t$ | the next token $y_t$, one of $\lvert V\rvert$ choices |
# | policy $\pi_\theta(a_t\mid s_t)$ | the softmax of the LM's logits at the last position of $s_t$ |
# | transition | deterministic: $s_{t+1} = (x, y_{\le t})$ |
# | episode end | EOS, or the token budget |
#
# The reward model $r_\phi(x, y)$ scores only complete responses, so the task reward is **sparse**: it arrives at
# the last token. RLHF adds a **per-token KL penalty** to a frozen reference $\pi_{\text{ref}}$ (the SFT model), so
# that the policy cannot drift into text the reward model was never trained on (reward hacking):
#
# $$
# r_t = -\beta\,\log\frac{\pi_\theta(y_t\mid s_t)}{\pi_{\text{ref}}(y_t\mid s_t)} + \mathbb 1[t = T]\; r_\phi(x, y).
# $$
#
# With $\gamma = 1$ the return is $\sum_t r_t = r_\phi(x,y) - \beta\log\frac{\pi_\theta(y\mid x)}{\pi_{\text{ref}}(y\mid x)}$,
# whose expectation over $y\sim\pi_\theta$ is exactly the KL-regularised objective of notebook 3,
# $\mathbb E[r_\phi] - \beta\,\mathrm{KL}(\pi_\theta\,\|\,\pi_{\text{ref}})$. InstructGPT eq. 2 adds a pretraining term
# (ptx, section 5):
#
# $$
# \text{objective}(\phi) = \mathbb E_{(x,y)\sim\pi^{RL}_\phi}\Big[r_\theta(x,y) - \beta\log\frac{\pi^{RL}_\phi(y\mid x)}{\pi^{SFT}(y\mid x)}\Big]
#   + \gamma\,\mathbb E_{x\sim D_{\text{pretrain}}}\big[\log\pi^{RL}_\phi(x)\big].
# $$
#
# (InstructGPT's $\phi$ is the policy and $\theta$ the reward model; we use $\theta$ for the policy everywhere else.)
#
# ## 2. KL in the reward vs KL in the loss, and the three estimators
#
# We never compute $\mathrm{KL}(\pi_\theta\,\|\,\pi_{\text{ref}})$ over all $|V|^T$ responses; we estimate it from the
# sampled tokens, with $\log\rho_t = \log\pi_\theta(y_t\mid s_t) - \log\pi_{\text{ref}}(y_t\mid s_t)$ and
# $u = \pi_{\text{ref}}/\pi_\theta = e^{-\log\rho}$ (Schulman 2020, "Approximating KL divergence"):
#
# $$
# k_1 = \log\rho \quad(\text{unbiased, can be} < 0),\qquad
# k_2 = \tfrac12(\log\rho)^2 \quad(\text{biased, low variance}),\qquad
# k_3 = (u - 1) - \log u \quad(\text{unbiased}, \ge 0).
# $$
#
# * **KL in the reward** (InstructGPT, TRL's `PPOTrainer`): $-\beta k_1$ is added to $r_t$ as above. It becomes part
#   of the return, flows through the value function and the advantages, so a token is also charged for the KL of the
#   tokens it leads to. The shaped reward is a constant for the update (no gradient flows through it).
# * **KL in the loss** (GRPO, DeepSeekMath): the reward is only the task reward; $\beta$ times the mean of $k_3$ over response tokens is
#   added to the loss and differentiated directly, $\partial k_3/\partial\log\pi_\theta = 1 - \pi_{\text{ref}}/\pi_\theta$.
#   It regularises each token's own distribution but is not credited through time.
#
# We check the estimators on one real next-token distribution below, once we have a model.
#
# ## 3. Advantages: from TD errors to GAE
#
# The policy gradient needs an advantage $A_t$: how much better token $y_t$ was than the policy's average at $s_t$.
# A value function $V(s_t)$ (the critic, here a linear head on the policy's last hidden state) gives the **TD error**
#
# $$
# \delta_t = r_t + \gamma V(s_{t+1}) - V(s_t), \qquad V(s_{T+1}) = 0 \text{ (the episode has ended)}.
# $$
#
# The $n$-step advantage uses $n$ real rewards and then bootstraps: $\hat A^{(n)}_t = \sum_{k=0}^{n-1}\gamma^k r_{t+k} + \gamma^n V(s_{t+n}) - V(s_t)
# = \sum_{k=0}^{n-1}\gamma^k\delta_{t+k}$ (the values telescope). Small $n$: low variance, biased by $V$; large $n$:
# unbiased, high variance. **GAE** (Schulman et al. 2016, eq. 16) averages all of them with weights $(1-\lambda)\lambda^{n-1}$:
#
# $$
# \hat A^{\text{GAE}(\gamma,\lambda)}_t = (1-\lambda)\sum_{n\ge1}\lambda^{n-1}\hat A^{(n)}_t = \sum_{l\ge0}(\gamma\lambda)^l\,\delta_{t+l}.
# $$
#
# Equivalently $\hat A_t = G^\lambda_t - V(s_t)$ with the **$\lambda$-return** $G^\lambda_t = (1-\lambda)\sum_{n\ge1}\lambda^{n-1}G^{(n)}_t$
# (in a finite episode the leftover weight $\lambda^{N-1}$ goes to the full Monte-Carlo return). The sum obeys the
# **backward recursion** $\hat A_t = \delta_t + \gamma\lambda\,\hat A_{t+1}$, which is how it is computed: one pass from
# the last token back. $\lambda = 0$ is one-step TD; $\lambda = 1$ is the Monte-Carlo return minus the baseline. The value
# target is $R_t = \hat A_t + V(s_t)$ (equal to $G^\lambda_t$).
#
# ## 4. The clipped surrogate and the value loss
#
# PPO reuses a batch for a few gradient steps. With $\rho_t(\theta) = \pi_\theta(y_t\mid s_t)/\pi_{\theta_{\text{old}}}(y_t\mid s_t)$,
# the clipped objective (PPO eq. 7) is
#
# $$
# L^{\text{CLIP}}(\theta) = \mathbb E_t\Big[\min\big(\rho_t\hat A_t,\ \mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\hat A_t\big)\Big].
# $$
#
# For $\hat A_t > 0$ the objective stops growing once $\rho_t > 1+\epsilon$; for $\hat A_t < 0$ once $\rho_t < 1-\epsilon$.
# Where the clipped term is the active one its gradient is 0: no incentive to move the policy further from the one
# that collected the data. The `clipfrac` metric is the fraction of tokens where this happens. The value head is
# regressed on $R_t$ with the same idea (OpenAI baselines): $\tfrac12\max\big((V - R)^2, (V_{\text{clip}} - R)^2\big)$,
# $V_{\text{clip}} = V_{\text{old}} + \mathrm{clip}(V - V_{\text{old}}, -\epsilon_v, \epsilon_v)$.
#
# ## 5. One PPO iteration by hand
#
# The models: the random 2-layer `tiny-random-llama` (with SmolLM2's tokenizer) as the reference; the policy is a copy
# nudged away from it (as if it had already taken a few PPO steps, so that the KL is not 0), with a value head; the
# "reward model" is the same backbone with a freshly initialised scalar head. Their outputs are meaningless, which is
# fine: every number below is checked against `core`.

# %%
tokenizer = load_tokenizer(TINY_MODEL, padding_side="left")
reference = load_causal_lm(TINY_MODEL, device="cpu")  # frozen pi_ref (the "SFT model")
policy = copy.deepcopy(reference)
with torch.no_grad():  # move the policy away from the reference, as a few PPO steps would
    for p in policy.parameters():
        p.add_(0.02 * torch.randn_like(p))
model = CausalLMWithValueHead(policy)  # pi_theta and V on a shared backbone
torch.nn.init.normal_(model.v_head.weight, std=0.1)  # core zero-initialises the head; random values make GAE visible
reward_model = load_reward_model(TINY_MODEL, device="cpu")  # random scalar head: a stand-in r_phi
for m in (reference, reward_model):
    m.requires_grad_(False)

kl_coef, gamma, lam, cliprange, cliprange_value, vf_coef, ptx_coef = 0.1, 1.0, 0.95, 0.2, 0.2, 0.5, 0.05

# %% [markdown]
# **Rollout.** Sample 6 tokens for each of 3 prompts (temperature 1, no top-k, so the sampling distribution is
# exactly $\pi_\theta$). Prompts are left-padded; the completion mask marks the sampled tokens up to and including a
# first EOS, if one was sampled.

# %%
prompts = ["Human: How do I boil an egg?\n\nAssistant:",
           "Human: Name a colour.\n\nAssistant:",
           "Human: Write a haiku about rain.\n\nAssistant:"]
encoded = tokenizer(prompts, return_tensors="pt", padding=True)
with torch.no_grad():
    input_ids = model.policy.generate(**encoded, do_sample=True, max_new_tokens=6, top_k=0, top_p=1.0,
                                      temperature=1.0, pad_token_id=tokenizer.pad_token_id)  # (B, T)
B, T = input_ids.shape
P = encoded.input_ids.shape[1]  # width of the left-padded prompt block
attention_mask = torch.cat([encoded.attention_mask, torch.ones(B, T - P, dtype=torch.long)], dim=1)  # (B, T)
completion_mask = build_completion_mask(encoded.attention_mask.sum(1), attention_mask)  # (B, T)
is_eos = (input_ids == tokenizer.eos_token_id) & completion_mask.bool()
after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # tokens after the first EOS are not part of the response
completion_mask = completion_mask * ~after_eos
attention_mask = attention_mask * ~after_eos
for row in range(B):
    print(repr(tokenizer.decode(input_ids[row][completion_mask[row].bool()])))

# %% [markdown]
# **Log-probabilities and values.** Logits at position $t-1$ predict the token at $t$, so the log-prob of
# token $y_t$ and the value of the state *before* it ($s_t$) are both read at position $t-1$ and written at $t$, the
# token's own position (the layout `core.logprobs.completion_logprobs` uses).

# %%
with torch.no_grad():
    logits, hidden_values = model(input_ids, attention_mask)  # (B, T, V), (B, T)
    ref_logits = reference(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
    scores = reward_model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]  # (B,) r_phi(x, y)


def my_token_logprobs(logits, input_ids, mask):
    """log pi(x_t | x_<t) at position t, 0 outside the mask. (B, T, V), (B, T) -> (B, T)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, input_ids[:, 1:, None])[..., 0]  # (B, T-1)
    logp = torch.cat([torch.zeros(logp.shape[0], 1), logp], dim=1)  # shift onto the token's own position
    return logp * mask


logprobs = my_token_logprobs(logits, input_ids, completion_mask)  # (B, T), = pi_theta_old
ref_logprobs = my_token_logprobs(ref_logits, input_ids, completion_mask)  # (B, T)
values = torch.cat([torch.zeros(B, 1), hidden_values[:, :-1]], dim=1) * completion_mask  # (B, T) V(s_t)
assert_close(logprobs, completion_logprobs(logits, input_ids, completion_mask))
assert_close(ref_logprobs, completion_logprobs(ref_logits, input_ids, completion_mask))
print("scores r_phi:", scores.numpy().round(4))
print("per-token log-ratio log pi/pi_ref:\n", (logprobs - ref_logprobs)[:, P:].numpy().round(3))

# %% [markdown]
# **The KL estimators on one real distribution.** At the first response position of row 0 we know both full
# next-token distributions, so we can compute the exact $\mathrm{KL}(\pi_\theta\,\|\,\pi_{\text{ref}})$ and compare
# with the average of each estimator over 20,000 tokens sampled from $\pi_\theta$: $k_1$ and $k_3$ are unbiased,
# $k_3$ with a much smaller spread; $k_2$ is biased (slightly, when the two policies are close).

# %%
log_p = torch.log_softmax(logits[0, P - 1], dim=-1)  # (V,) pi_theta at s_1 of row 0
log_q = torch.log_softmax(ref_logits[0, P - 1], dim=-1)  # (V,) pi_ref
exact_kl = (log_p.exp() * (log_p - log_q)).sum()
samples = torch.multinomial(log_p.exp(), 20_000, replacement=True, generator=torch.Generator().manual_seed(0))
print(f"exact KL = {exact_kl.item():.5f}")
for name in ("k1", "k2", "k3"):
    est = kl_per_token(log_p[samples], log_q[samples], estimator=name)
    print(f"{name}: mean {est.mean().item():.5f}  std {est.std().item():.5f}")
    if name != "k2":  # unbiased: within 5 standard errors
        assert abs(est.mean() - exact_kl) < 5 * est.std() / len(samples) ** 0.5
log_ratio = log_p[samples] - log_q[samples]
assert_close(kl_per_token(log_p[samples], log_q[samples], "k3"), torch.exp(-log_ratio) - 1 + log_ratio)

# %% [markdown]
# **KL-shaped rewards.** $r_t = -\beta k_1(t)$ on every response token, plus the score on the last one.

# %%
my_rewards = torch.zeros(B, T)
for b in range(B):
    positions = completion_mask[b].nonzero().squeeze(-1)
    for t in positions:
        my_rewards[b, t] = -kl_coef * (logprobs[b, t] - ref_logprobs[b, t])
    my_rewards[b, positions[-1]] += scores[b]

shaped_rewards, per_token_kl = kl_penalized_rewards(place_at_last_token(scores, completion_mask), logprobs, ref_logprobs,
                                                    completion_mask, kl_coef)
assert_close(my_rewards, shaped_rewards)
print("shaped rewards r_t:\n", shaped_rewards[:, P:].numpy().round(4))

# %% [markdown]
# **GAE three ways.** (a) the backward recursion, (b) the discounted sum of TD errors, (c) the $\lambda$-return minus the
# value, each a plain loop over one row's valid tokens. All three must equal `core.rl.gae`.

# %%
def row_gae_recursion(r, v):
    n, adv, next_adv = len(r), [0.0] * len(r), 0.0
    for t in reversed(range(n)):
        next_v = v[t + 1] if t + 1 < n else 0.0
        delta = r[t] + gamma * next_v - v[t]
        next_adv = delta + gamma * lam * next_adv
        adv[t] = next_adv
    return adv


def row_gae_sum(r, v):
    n = len(r)
    deltas = [r[t] + gamma * (v[t + 1] if t + 1 < n else 0.0) - v[t] for t in range(n)]
    return [sum((gamma * lam) ** l * deltas[t + l] for l in range(n - t)) for t in range(n)]


def row_gae_lambda_return(r, v):
    n, adv = len(r), []
    for t in range(n):
        def n_step_return(k):  # G^(k)_t: k real rewards, then bootstrap (V = 0 after the end)
            boot = v[t + k] if t + k < n else 0.0
            return sum(gamma**i * r[t + i] for i in range(min(k, n - t))) + gamma**k * boot
        horizon = n - t  # G^(horizon) is the full Monte-Carlo return
        g_lambda = (1 - lam) * sum(lam ** (k - 1) * n_step_return(k) for k in range(1, horizon)) \
            + lam ** (horizon - 1) * n_step_return(horizon)
        adv.append(g_lambda - v[t])
    return adv


advantages, returns = gae(shaped_rewards, values, completion_mask, gamma=gamma, lam=lam)
for b in range(B):
    keep = completion_mask[b].bool()
    r, v = shaped_rewards[b, keep].tolist(), values[b, keep].tolist()
    for method in (row_gae_recursion, row_gae_sum, row_gae_lambda_return):
        assert_close(torch.tensor(method(r, v)), advantages[b, keep])
assert_close(returns, (advantages + values) * completion_mask)
print("advantages:\n", advantages[:, P:].numpy().round(4))

# %% [markdown]
# Advantages are whitened over the batch (mean 0, std 1 over response tokens) before the update, as TRL and
# OpenAI's lm-human-preferences do; the value targets stay unwhitened.

# %%
flat = advantages[completion_mask.bool()]
my_whitened = ((advantages - flat.mean()) / flat.std(unbiased=True)) * completion_mask  # std ~ sqrt(var + 1e-8)
whitened = masked_whiten(advantages, completion_mask)
assert_close(my_whitened, whitened, atol=1e-5, rtol=1e-5)

# %% [markdown]
# **The update.** The batch is reused for two optimisation steps (PPO "epochs"). In the first step $\rho = 1$ everywhere,
# so nothing is clipped and, with whitened advantages, the policy loss is 0 (its gradient is not). In the second step
# the policy has moved and the clip starts to bite. We compute the second step's losses by hand and compare with core.
# The ptx term uses one "pretraining" sentence, with $\log\pi$ on every token after the first.

# %%
old_logprobs, old_values = logprobs, values
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

ptx_ids = tokenizer(["The capital of France is Paris, and the river through it is the Seine."],
                    return_tensors="pt").input_ids  # (1, L)
ptx_mask = torch.ones_like(ptx_ids)
ptx_mask[:, 0] = 0  # the first token has no prediction


def ppo_step():
    new_logits, new_hidden_values = model(input_ids, attention_mask)
    new_logprobs = completion_logprobs(new_logits, input_ids, completion_mask)  # (B, T), with grad
    new_values = torch.cat([torch.zeros(B, 1), new_hidden_values[:, :-1]], dim=1) * completion_mask
    pg_loss, pg_stats = ppo_policy_loss(new_logprobs, old_logprobs, whitened, completion_mask, cliprange)
    vf_loss, vf_stats = ppo_value_loss(new_values, old_values, returns, completion_mask, cliprange_value)
    ptx_logps = completion_logprobs(model.policy(input_ids=ptx_ids).logits, ptx_ids, ptx_mask)
    ptx = ptx_loss(ptx_logps, ptx_mask, ptx_coef)
    loss = pg_loss + vf_coef * vf_loss + ptx
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return new_logprobs.detach(), new_values.detach(), ptx_logps.detach(), pg_loss, pg_stats, vf_loss, vf_stats, ptx


first = ppo_step()
assert_close(first[4]["ratio_mean"], torch.tensor(1.0))
assert_close(first[3], torch.tensor(0.0), atol=1e-6, rtol=0)
new_logprobs, new_values, ptx_logps, pg_loss, pg_stats, vf_loss, vf_stats, ptx = ppo_step()  # second epoch

# %%
keep = completion_mask.bool()
ratio = torch.exp(new_logprobs - old_logprobs)[keep]  # (N,) one entry per response token
A = whitened[keep]
my_pg_loss = torch.min(ratio * A, torch.clamp(ratio, 1 - cliprange, 1 + cliprange) * A).mean().neg()  # -L^CLIP
my_clipfrac = ((torch.clamp(ratio, 1 - cliprange, 1 + cliprange) * A) < (ratio * A)).float().mean()

v, v_old, R = new_values[keep], old_values[keep], returns[keep]
v_clipped = v_old + torch.clamp(v - v_old, -cliprange_value, cliprange_value)
my_vf_loss = 0.5 * torch.max((v - R) ** 2, (v_clipped - R) ** 2).mean()
my_ptx = -ptx_coef * ptx_logps[ptx_mask.bool()].mean()

assert_close(my_pg_loss, pg_loss.detach())
assert_close(my_clipfrac, pg_stats["clipfrac"])
assert_close(my_vf_loss, vf_loss.detach())
assert_close(my_ptx, ptx.detach())
print(f"ratio range [{ratio.min().item():.3f}, {ratio.max().item():.3f}]  clipfrac {pg_stats['clipfrac'].item():.3f}"
      f"  approxkl {pg_stats['approxkl'].item():.5f}")
print(f"policy loss {pg_loss.item():.4f}  value loss {vf_loss.item():.4f}  ptx {ptx.item():.4f}")

# %% [markdown]
# **KL in the loss instead (GRPO).** Had we left the KL out of the reward, the loss would carry
# $\beta$ times the mean of $k_3$ over response tokens (`masked_mean`), whose gradient per token is $\beta(1 - \pi_{\text{ref}}/\pi_\theta)$ divided by the
# number of tokens: pulling $\log\pi_\theta$ down where the policy is above the reference, up where it is below.

# %%
lp = new_logprobs.clone().requires_grad_()
kl_term = kl_coef * masked_mean(kl_per_token(lp, ref_logprobs, "k3"), completion_mask)
kl_term.backward()
n_tokens = completion_mask.sum()
my_grad = kl_coef * (1 - torch.exp(ref_logprobs - new_logprobs)) / n_tokens * completion_mask
assert_close(lp.grad, my_grad)
print(f"KL-in-loss term {kl_term.item():.5f} (k3 mean over {int(n_tokens)} tokens)")

# %% [markdown]
# ## Summary: the derivation equals `core`
#
# Per-token log-probs (`completion_logprobs`), KL-shaped rewards (`kl_penalized_rewards` + `place_at_last_token`),
# GAE three ways (`gae`), whitening (`masked_whiten`), the clipped policy loss and clipfrac (`ppo_policy_loss`), the
# clipped value loss (`ppo_value_loss`), the ptx term (`ptx_loss`) and the k3 gradient (`kl_per_token`) all match.

# %%
assert_close(logprobs, completion_logprobs(logits, input_ids, completion_mask))
assert_close(my_rewards, shaped_rewards)
assert_close(torch.tensor(row_gae_lambda_return(shaped_rewards[0, keep[0]].tolist(), values[0, keep[0]].tolist())),
             advantages[0, keep[0]])
assert_close(my_pg_loss, ppo_policy_loss(new_logprobs, old_logprobs, whitened, completion_mask, cliprange)[0])
assert_close(my_vf_loss, ppo_value_loss(new_values, old_values, returns, completion_mask, cliprange_value)[0])
assert_close(my_ptx, ptx_loss(ptx_logps, ptx_mask, ptx_coef))
print("all checks passed")
