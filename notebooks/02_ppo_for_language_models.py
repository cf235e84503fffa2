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
# built up from the MDP and the policy gradient, then one PPO iteration computed by hand on a tiny model and checked,
# number by number, against `core.logprobs`, `core.rl` and `core.losses`, and finally a short PPO run of the
# workbench's trainer (`core.trainers.ppo`) that visibly learns.
#
# **Learning goals.** After this notebook you can
# 1. write text generation as an MDP: state = prompt + prefix, action = next token, reward = a reward-model
#    score at the last token minus a per-token KL penalty;
# 2. tell "KL in the reward" (PPO-RLHF) from "KL in the loss" (GRPO), and the k1 / k2 / k3 KL estimators;
# 3. derive GAE: the TD error $\delta_t$, the $\lambda$-return, and the backward recursion, and see they agree;
# 4. derive the policy gradient $\nabla J = \mathbb E[\nabla\log\pi\cdot A]$ (log-derivative trick, baseline) and go
#    from the importance-sampled surrogate $L^{\text{CPI}}$ to PPO's clipped $L^{\text{CLIP}}$;
# 5. explain the (clipped) value loss and why its target is built from the *old* (lagging) value model;
# 6. motivate the ptx term of InstructGPT eq. 2 by the alignment tax, and keep the two $\gamma$'s apart;
# 7. compute one PPO iteration by hand (sample, log-probs, KL-shaped rewards, GAE, clipped loss with the clip
#    active, value loss) and show it equals `core`;
# 8. run the trainer on a toy reward and read its curves (reward, KL, clip fraction, length).
#
# **What it leaves out.** Training a real model (the toy run uses a random 2-layer model and a programmatic
# reward; docs/training.md has the real detoxification runs), minibatching details, and the adaptive KL controller
# (notebook 7). Runs in well under a minute on CPU.
#
# **Exercises.** 2.1 the $k_3$ KL estimator; 2.2 GAE by the backward recursion; 2.3 the clipped surrogate loss.
# Each is graded by the cell after it. Set `SOLUTIONS = True` below to fill them in with the reference solutions
# (`notebooks/solutions/nb02.py`).
#
# **How to run.** `.venv/bin/jupyter lab notebooks/` from the project root (see `notebooks/README.md`).

# %%
import os

SOLUTIONS = os.environ.get("RLHF_WORKBENCH_SOLUTIONS", "0") == "1"  # True: the exercises use the reference solutions
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy
import tempfile

import numpy as np
import plotly.graph_objects as go
import torch
import transformers
from plotly.subplots import make_subplots
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
torch.set_num_threads(1)  # a 2-layer model gains little from threads; one thread also makes the toy run reproducible

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
# (InstructGPT's $\phi$ is the policy and $\theta$ the reward model; we use $\theta$ for the policy everywhere else.
# Its $\gamma$ is the ptx coefficient, not the discount: see section 5.)
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
# ## 4. From the policy gradient to the clipped surrogate
#
# **The policy gradient.** We maximise $J(\theta) = \mathbb E_{y\sim\pi_\theta}[R(y)]$. The **log-derivative trick**,
# $\nabla_\theta\pi_\theta(y) = \pi_\theta(y)\,\nabla_\theta\log\pi_\theta(y)$, moves the gradient inside the
# expectation, where it can be estimated from samples:
#
# $$
# \nabla_\theta J = \sum_y R(y)\,\nabla_\theta\pi_\theta(y) = \mathbb E_{y\sim\pi_\theta}\big[R(y)\,\nabla_\theta\log\pi_\theta(y)\big],
# \qquad \log\pi_\theta(y\mid x) = \sum_t \log\pi_\theta(y_t\mid s_t).
# $$
#
# Two variance reductions keep it unbiased. *Causality*: the token $y_t$ cannot change rewards paid before it, so
# $R$ may be replaced by the reward-to-go $G_t = \sum_{k\ge t}\gamma^{k-t}r_k$. *A baseline*: for any $b(s_t)$ that
# does not depend on the action,
# $\mathbb E_{a\sim\pi(\cdot\mid s)}\big[\nabla\log\pi(a\mid s)\,b(s)\big] = b(s)\,\nabla\sum_a\pi(a\mid s) = b(s)\,\nabla 1 = 0$,
# so subtracting $b(s_t) = V(s_t)$ changes nothing in expectation and leaves the **advantage** $G_t - V(s_t)$, which
# GAE estimates with less variance:
#
# $$
# \nabla_\theta J = \mathbb E\Big[\sum_t \nabla_\theta\log\pi_\theta(y_t\mid s_t)\,\hat A_t\Big].
# $$
#
# **Reusing a batch: $L^{\text{CPI}}$.** The batch was sampled by $\pi_{\theta_{\text{old}}}$. With the ratio
# $\rho_t(\theta) = \pi_\theta(y_t\mid s_t)/\pi_{\theta_{\text{old}}}(y_t\mid s_t)$ and $\nabla_\theta\rho_t = \rho_t\,\nabla_\theta\log\pi_\theta$,
# the importance-sampled surrogate of conservative policy iteration (Kakade & Langford 2002; PPO eq. 6)
#
# $$
# L^{\text{CPI}}(\theta) = \mathbb E_t\big[\rho_t(\theta)\,\hat A_t\big], \qquad
# \nabla_\theta L^{\text{CPI}}\big|_{\theta=\theta_{\text{old}}} = \mathbb E_t\big[\nabla_\theta\log\pi_\theta(y_t\mid s_t)\,\hat A_t\big]
# $$
#
# has exactly the policy gradient at $\theta_{\text{old}}$ (where $\rho = 1$). Away from $\theta_{\text{old}}$ it is only
# an approximation (the states still come from the old policy, and the advantages were estimated for it), and
# maximising it over several epochs drives $\rho_t$ as far as the advantage's sign asks: a large, destructive step.
# TRPO bounds the step with a KL constraint; **PPO clips the ratio** (PPO eq. 7):
#
# $$
# L^{\text{CLIP}}(\theta) = \mathbb E_t\Big[\min\big(\rho_t\hat A_t,\ \mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\hat A_t\big)\Big].
# $$
#
# It equals $L^{\text{CPI}}$ near $\rho = 1$ and is a pessimistic bound away from it: for $\hat A_t > 0$ the objective
# stops growing once $\rho_t > 1+\epsilon$; for $\hat A_t < 0$ once $\rho_t < 1-\epsilon$. Where the clipped term is the
# active one its gradient is 0: no incentive to move the policy further from the one that collected the data. The
# `clipfrac` metric is the fraction of tokens where this happens. The $\min$ never clips a move that makes the
# objective *worse* (a ratio below $1-\epsilon$ with $\hat A > 0$ keeps its full gradient back towards 1).
#
# **The value loss and its lagging target.** The critic is regressed on the target $R_t = \hat A_t + V_{\text{old}}(s_t)$,
# computed **once per batch, from the values the old model predicted at rollout time**. Unrolling GAE
# ($\hat A_t = \delta_t + \gamma\lambda\hat A_{t+1}$, $\delta_t = r_t + \gamma V_{\text{old}}(s_{t+1}) - V_{\text{old}}(s_t)$):
#
# $$
# R_t = r_t + \gamma V_{\text{old}}(s_{t+1}) + \gamma\lambda\big(R_{t+1} - V_{\text{old}}(s_{t+1})\big)
#     = r_t + \gamma\big[(1-\lambda)\,V_{\text{old}}(s_{t+1}) + \lambda R_{t+1}\big],
# $$
#
# the $\lambda$-return bootstrapped from the *old* values. With $\lambda = 1$ it is the Monte-Carlo return and no value
# enters; with $\lambda < 1$ it leans on $V_{\text{old}}$. Keeping it fixed while $V_\theta$ is trained for several
# epochs makes the value update a regression on a constant target (the role of the target network in DQN): were the
# target recomputed from the model being trained, the regression would chase its own predictions. The same idea
# limits the step (OpenAI baselines): $\tfrac12\max\big((V - R)^2, (V_{\text{clip}} - R)^2\big)$,
# $V_{\text{clip}} = V_{\text{old}} + \mathrm{clip}(V - V_{\text{old}}, -\epsilon_v, \epsilon_v)$.
#
# Two numerical checks of the derivation, exact on a 5-action softmax: the log-derivative form equals the true
# gradient, and a baseline adds nothing in expectation.

# %%
logits5 = torch.randn(5, dtype=torch.float64, requires_grad=True)
reward5 = torch.tensor([1.0, -0.5, 2.0, 0.0, 0.3], dtype=torch.float64)
pi5 = torch.softmax(logits5, dim=0)
true_grad, = torch.autograd.grad((pi5 * reward5).sum(), logits5, retain_graph=True)  # d/dtheta sum_y pi(y) R(y)
score = torch.stack([torch.autograd.grad(torch.log(pi5[y]), logits5, retain_graph=True)[0] for y in range(5)])  # (5, 5)
pi5 = pi5.detach()
assert_close((pi5[:, None] * reward5[:, None] * score).sum(0), true_grad)  # E[R grad log pi]
assert_close((pi5[:, None] * 3.7 * score).sum(0), torch.zeros(5, dtype=torch.float64))  # E[b grad log pi] = 0
print("log-derivative trick and zero-mean baseline: exact")

# %% [markdown]
# **The clipped objective as a function of the ratio**, for one token with $\hat A = +1$ and one with $\hat A = -1$
# ($\epsilon = 0.2$). Dashed: $L^{\text{CPI}} = \rho\hat A$. Where the solid line is flat the gradient is zero.

# %%
rho = torch.linspace(0.0, 2.0, 401)
fig = make_subplots(rows=1, cols=2, subplot_titles=("advantage A > 0 (A = +1)", "advantage A < 0 (A = −1)"),
                    shared_yaxes=False)
for col, adv in ((1, 1.0), (2, -1.0)):
    clip_obj = torch.min(rho * adv, torch.clamp(rho, 0.8, 1.2) * adv)
    fig.add_scatter(x=rho.numpy(), y=(rho * adv).numpy(), name="L^CPI = ρA", line=dict(dash="dash", color="#888"),
                    showlegend=col == 1, row=1, col=col)
    fig.add_scatter(x=rho.numpy(), y=clip_obj.numpy(), name="L^CLIP", line=dict(color="#d62728", width=3),
                    showlegend=col == 1, row=1, col=col)
    flat = (1.2, 2.0) if adv > 0 else (0.0, 0.8)
    fig.add_vrect(x0=flat[0], x1=flat[1], fillcolor="#d62728", opacity=0.08, line_width=0,
                  annotation_text="clipped: gradient 0", annotation_position="top left", row=1, col=col)
    fig.add_vline(x=1.0, line_dash="dot", row=1, col=col)
fig.update_xaxes(title_text="ratio ρ = π_θ / π_θold")
fig.update_yaxes(title_text="objective (to maximise)", col=1)
fig.update_layout(title="PPO's clipped surrogate (ε = 0.2): a pessimistic bound on L^CPI", height=380)
fig.show()

# %% [markdown]
# ## 5. PPO-ptx: the alignment tax, and the two $\gamma$'s
#
# InstructGPT found that PPO on the reward model made the model *worse* on public NLP benchmarks it had been good at
# (SQuAD, DROP, HellaSwag, WMT'15 French→English): the **alignment tax** of RLHF (Ouyang et al. 2022, sec. 4.2).
# Raising the KL coefficient did not fully remove it; mixing the pretraining objective back into the update did. The
# PPO-ptx objective (eq. 2 above) adds $\gamma\,\mathbb E_{x\sim D_{\text{pretrain}}}[\log\pi(x)]$: a language-modelling
# gradient on pretraining text at every step, which keeps the capabilities the reward model does not measure from
# drifting away, at little cost in labeller preference. In `core` it is `ptx_loss` (a token mean of
# $-\gamma\log\pi$ on a small text set, `PPOConfig.ptx_coef`, `ptx_dataset`).
#
# **Two different $\gamma$'s.** In InstructGPT eq. 2, $\gamma$ is the *pretraining-loss coefficient*; in GAE,
# $\gamma$ is the *discount*. They have nothing to do with each other. The workbench names them apart:
# `PPOConfig.gamma` is the discount (1.0, as in RLHF practice: an episode is one short response) and
# `PPOConfig.ptx_coef` is InstructGPT's $\gamma$. Below, `gamma` is the discount and `ptx_coef` the ptx weight.
#
# ## 6. One PPO iteration by hand
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
# ### Exercise 2.1 — the $k_3$ KL estimator
#
# Write `k3_kl(logprobs, ref_logprobs)`: the per-token estimate $k_3 = (u - 1) - \log u$ with
# $u = \pi_{\text{ref}}/\pi_\theta = e^{\log\pi_{\text{ref}} - \log\pi_\theta}$, for tokens sampled from $\pi_\theta$.
# Shapes: (N,) → (N,). **Graded** against `core.rl.kl_per_token(..., "k3")` on 20,000 sampled tokens, and by
# its two defining properties: it is never negative, and its mean is the exact KL (within 5 standard errors).

# %%
def k3_kl(logprobs, ref_logprobs):
    """Per-token k3 estimate of KL(pi || pi_ref) from tokens sampled from pi. (N,), (N,) -> (N,)."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 2.1: (u - 1) - log u with u = pi_ref / pi")


if SOLUTIONS:
    from solutions.nb02 import k3_kl  # noqa: F811

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
mine = k3_kl(log_p[samples], log_q[samples])  # Exercise 2.1, graded
assert_close(mine, kl_per_token(log_p[samples], log_q[samples], "k3"))
assert (mine >= 0).all() and abs(mine.mean() - exact_kl) < 5 * mine.std() / len(samples) ** 0.5
print("Exercise 2.1: k3 matches core.rl.kl_per_token")

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
# ### Exercise 2.2 — GAE by the backward recursion
#
# Write `gae_backward(rewards, values, gamma, lam)` for **one episode** (one row's valid tokens): compute
# $\delta_t = r_t + \gamma V(s_{t+1}) - V(s_t)$ with $V = 0$ after the last token, and $\hat A_t = \delta_t + \gamma\lambda\hat A_{t+1}$
# in one pass from the last token back. Shapes: (n,), (n,) → (n,). **Graded** against `core.rl.gae` on every row of the
# batch, and against two other loops that follow the other two definitions: (b) the discounted sum of TD errors,
# (c) the $\lambda$-return minus the value.

# %%
def gae_backward(rewards, values, gamma, lam):
    """GAE advantages of one episode. rewards, values: (n,) r_t and V(s_t); V after the last token is 0. -> (n,)."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 2.2: delta_t, then A_t = delta_t + gamma * lam * A_{t+1}, backwards")


if SOLUTIONS:
    from solutions.nb02 import gae_backward  # noqa: F811

# %%
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
    mine = gae_backward(shaped_rewards[b, keep], values[b, keep], gamma, lam)
    assert_close(mine, advantages[b, keep])  # Exercise 2.2, graded
    for method in (row_gae_sum, row_gae_lambda_return):
        assert_close(torch.tensor(method(r, v)), advantages[b, keep])
assert_close(returns, (advantages + values) * completion_mask)
print("Exercise 2.2: the backward recursion equals core.rl.gae and the two other definitions")
print("advantages:\n", advantages[:, P:].numpy().round(4))

# %% [markdown]
# **The lagging value target.** The targets `returns` satisfy the $\lambda$-return recursion of section 4 with the
# rollout's (old) values, $R_t = r_t + \gamma[(1-\lambda)V_{\text{old}}(s_{t+1}) + \lambda R_{t+1}]$; they are computed
# here, once, and stay fixed through the update epochs below.

# %%
for b in range(B):
    keep_b = completion_mask[b].bool()
    r, v = shaped_rewards[b, keep_b].tolist(), values[b, keep_b].tolist()
    target, next_target = [0.0] * len(r), 0.0
    for t in reversed(range(len(r))):
        next_v = v[t + 1] if t + 1 < len(r) else 0.0
        next_target = r[t] + gamma * ((1 - lam) * next_v + lam * next_target)
        target[t] = next_target
    assert_close(torch.tensor(target), returns[b, keep_b])
print("value targets = lambda-returns bootstrapped from the old values")

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
# the policy has moved (the learning rate is large on purpose) and the clip bites on some tokens. We compute the
# second step's losses by hand and compare with core. The ptx term uses one "pretraining" sentence, with $\log\pi$ on
# every token after the first. The value targets `returns` are the ones computed above from the old values, for
# both epochs.

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

# %% [markdown]
# ### Exercise 2.3 — the clipped surrogate loss
#
# Write `clipped_surrogate_loss(logprobs, old_logprobs, advantages, mask, cliprange)`: the loss $-L^{\text{CLIP}}$
# averaged over the tokens where `mask` is 1, and `clipfrac`, the fraction of those tokens where the clipped term is
# the active one (strictly smaller objective than the unclipped one). Shapes: (B, T) each → two scalars. **Graded**
# against `core.losses.ppo_policy_loss` on the second epoch above, where some ratios have left $[1-\epsilon, 1+\epsilon]$:
# the check also asserts that the clip branch is exercised (clipfrac > 0), so a loss without the clip fails it.

# %%
def clipped_surrogate_loss(logprobs, old_logprobs, advantages, mask, cliprange):
    """-L^CLIP over the masked tokens, and the fraction of them that are clipped. (B, T) x 4 -> (loss, clipfrac)."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 2.3: -mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A)) and the clip fraction")


if SOLUTIONS:
    from solutions.nb02 import clipped_surrogate_loss  # noqa: F811

# %%
keep = completion_mask.bool()
ratio = torch.exp(new_logprobs - old_logprobs)[keep]  # (N,) one entry per response token
my_pg_loss, my_clipfrac = clipped_surrogate_loss(new_logprobs, old_logprobs, whitened, completion_mask, cliprange)
assert my_clipfrac > 0, "the clip branch is not exercised: no ratio left [1 - eps, 1 + eps] on the side that clips"

v, v_old, R = new_values[keep], old_values[keep], returns[keep]
v_clipped = v_old + torch.clamp(v - v_old, -cliprange_value, cliprange_value)
my_vf_loss = 0.5 * torch.max((v - R) ** 2, (v_clipped - R) ** 2).mean()
my_ptx = -ptx_coef * ptx_logps[ptx_mask.bool()].mean()

assert_close(my_pg_loss, pg_loss.detach())  # Exercise 2.3, graded
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
# ## 7. A short PPO run that learns
#
# Everything above is one iteration. The trainer, `core.trainers.ppo.train_ppo`, chains the same functions in its
# numbered phases (rollout → score → shape → advantages → update → log) over many iterations. To *see* it
# learn in seconds we need a reward that the random 2-layer model can improve on quickly, so we use a Python
# function as the
# reward, the mechanism `core.trainers.rewards_setup` provides for `module:function` rewards (from Python, a
# `FunctionReward` passed as `extra_rewards`): the fraction of the response's words that start with a capital
# letter. PPO can raise it by making capitalised tokens more likely; the KL penalty ($\beta$ = 0.05, per-token $k_1$)
# charges it for moving away from the reference.
#
# One trick makes this learnable in 20 iterations: **sampling temperature 0.05**. The random model's logits are
# nearly flat (a spread of about 0.1 over 49,152 tokens), so at temperature 1 every token has probability ≈ 1/49,152
# and PPO would have to raise thousands of tokens one sample at a time. Dividing the logits by 0.05 gives a peaked
# distribution over a few hundred tokens per context, which a few updates can reshape. The trainer uses the
# log-probabilities of the *tempered* distribution everywhere (old, new and reference), so PPO's ratios and the KL are
# those of the distribution actually sampled. The run: 8 raw-text prompts, 16 rollouts of 16 tokens per iteration,
# 2 epochs of 2 minibatches, all weights trained (no LoRA), Adam at 1e-3, 20 iterations. The run folder goes to a
# temporary run store.

# %%
from core.rewards.tensor import FunctionReward  # noqa: E402
from core.trainers.ppo import PPOConfig, train_ppo  # noqa: E402


def title_case(prompt, response):
    """Fraction of the response's words that start with a capital letter (0 for an empty response)."""
    words = response.split()
    return sum(word[0].isupper() for word in words) / max(len(words), 1)


os.environ["RLHF_WORKBENCH_RUNS"] = tempfile.mkdtemp(prefix="nb02-runs-")  # a throw-away run store
prompt_file = os.path.join(os.environ["RLHF_WORKBENCH_RUNS"], "prompts.txt")
with open(prompt_file, "w") as f:
    f.write("\n".join(["You are a", "I think that the", "The weather today is", "My friend said", "Why do people",
                       "Tell me about", "Once upon a time", "The best way to"]) + "\n")
toy_config = PPOConfig(model_name_or_path=TINY_MODEL, prompts=prompt_file, num_prompts=8, eval_prompts=0, rewards="",
                       batch_size=16, minibatch_size=8, ppo_epochs=2, num_iterations=20, max_new_tokens=16,
                       temperature=0.05, learning_rate=1e-3, lora=False, kl_coef=0.05, chat_template=False,
                       eval_every=0, save_every=0, samples_per_log=16, cpu=True, seed=0)
history = []
toy_run = train_ppo(toy_config, extra_rewards={"title_case": FunctionReward(title_case)},
                    on_log=lambda step, metrics: history.append({"step": step, **{k: float(v) for k, v in
                                                                                 metrics.items()}}))
steps = [h["step"] for h in history]
curves = {
    "reward (objective/scores)": [h["objective/scores"] for h in history],
    "KL to the reference, nats (objective/kl)": [h["objective/kl"] for h in history],
    "clip fraction (policy/clipfrac_avg)": [h["policy/clipfrac_avg"] for h in history],
    "response length, characters": [np.mean([len(r["response"]) for r in toy_run.samples(step)]) for step in steps],
}
rewards_curve = curves["reward (objective/scores)"]
reward_first, reward_last = np.mean(rewards_curve[:5]), np.mean(rewards_curve[-5:])
print(f"mean reward, first 5 iterations {reward_first:.3f}, last 5 {reward_last:.3f}; "
      f"final KL {history[-1]['objective/kl']:.3f}")
for sample in toy_run.samples(steps[-1])[:3]:
    print(repr(sample["prompt"]), "->", repr(sample["response"]))
assert reward_last > reward_first + 0.15, "PPO did not raise the reward"

# %%
fig = make_subplots(rows=2, cols=2, subplot_titles=list(curves))
for k, (name, series) in enumerate(curves.items()):
    fig.add_scatter(x=steps, y=series, mode="lines+markers", name=name, showlegend=False,
                    row=k // 2 + 1, col=k % 2 + 1)
fig.update_xaxes(title_text="PPO iteration", row=2)
fig.update_layout(title="A short PPO run on the tiny model: reward title-cased words", height=520)
fig.show()

# %% [markdown]
# How to read the four curves, the ones the app's training page shows for every PPO run:
#
# * **reward** rises: the policy finds capitalised tokens. It is noisy: 16 samples per iteration.
# * **KL** rises from 0 (policy = reference at the start) and keeps rising: at $\beta$ = 0.05 the penalty is small
#   next to what the reward pays, and the tempered reference is so peaked that leaving it costs many nats. The
#   samples show where that leads: the policy collapses onto a few tokens, often repeated. A reward that can be
#   satisfied by degenerate text, a small $\beta$ and nothing else watching is how reward hacking starts
#   (notebook 7); raising $\beta$ slows both the reward and the drift.
# * **clip fraction**: in the first epoch of each iteration nothing is clipped ($\rho = 1$); in the second, some
#   ratios leave $[0.8, 1.2]$. It falls as the policy becomes confident (its probabilities, near 1 for the tokens it
#   samples, cannot grow by 20 %). Near 0 from the start means the update barely moves the policy; near 1, that the
#   epochs are wasted.
# * **response length** (characters; the token count is fixed, since the tiny model almost never samples EOS) is not
#   rewarded, so it only drifts with the tokens the policy prefers. In real runs it is a curve to watch for reward
#   hacking: a reward model that likes long answers makes it climb.

# %% [markdown]
# ## Summary: the derivation equals `core`
#
# Per-token log-probs (`completion_logprobs`), the $k_3$ estimator (Exercise 2.1, `kl_per_token`), KL-shaped rewards
# (`kl_penalized_rewards` + `place_at_last_token`), GAE three ways (Exercise 2.2, `gae`), the value targets as
# $\lambda$-returns of the old values, whitening (`masked_whiten`), the clipped policy loss and clipfrac with the clip
# active (Exercise 2.3, `ppo_policy_loss`), the clipped value loss (`ppo_value_loss`), the ptx term (`ptx_loss`) and
# the k3 gradient all match; and the trainer that chains them learns the toy reward.

# %%
assert_close(logprobs, completion_logprobs(logits, input_ids, completion_mask))
assert_close(my_rewards, shaped_rewards)
assert_close(torch.tensor(row_gae_lambda_return(shaped_rewards[0, keep[0]].tolist(), values[0, keep[0]].tolist())),
             advantages[0, keep[0]])
assert_close(my_pg_loss, ppo_policy_loss(new_logprobs, old_logprobs, whitened, completion_mask, cliprange)[0])
assert_close(my_vf_loss, ppo_value_loss(new_values, old_values, returns, completion_mask, cliprange_value)[0])
assert_close(my_ptx, ptx_loss(ptx_logps, ptx_mask, ptx_coef))
print("all checks passed")
