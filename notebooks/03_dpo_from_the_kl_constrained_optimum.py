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
# # 3. DPO from the KL-constrained optimum
#
# **What this notebook is.** A derivation of Direct Preference Optimisation (Rafailov et al. 2023,
# "Direct Preference Optimization: Your Language Model is Secretly a Reward Model") from the
# objective that PPO-RLHF maximises, checked on a problem small enough to solve exactly.
#
# **Learning goals.** After this notebook you can
# 1. derive the closed-form maximiser $\pi^*(y\mid x) \propto \pi_{\text{ref}}(y\mid x)\, e^{r(x,y)/\beta}$
#    of the KL-regularised reward, and say what the partition function $Z(x)$ is;
# 2. invert it into $r = \beta \log \frac{\pi^*}{\pi_{\text{ref}}} + \beta \log Z(x)$ and show that $Z$
#    cancels inside the Bradley–Terry model, which gives the DPO loss (DPO eq. 7);
# 3. read the DPO gradient: a weight $\sigma(\hat r_{\text{rejected}} - \hat r_{\text{chosen}})$ times
#    "push chosen up, push rejected down";
# 4. check on a tabular toy (3 prompts x 4 responses, known reward) that minimising
#    `core.losses.dpo_loss` recovers $\pi^*$ exactly with infinite data and approximately with samples;
# 5. trace the exact reward–KL frontier that $\beta$ sweeps out, and see DPO trained on sampled pairs land on it;
# 6. extend Bradley–Terry to $K$-way rankings (Plackett–Luce; $K = 2$ is Bradley–Terry) and tell it apart from
#    InstructGPT's $\binom K2$ pairwise loss;
# 7. show that preferences pin the reward down only along the comparisons made: with a comparison graph in two pieces,
#    two different rewards (and two different optimal policies) fit the data equally well;
# 8. explain why the "chosen reward" logged by DPO trainers can fall while the margin grows.
#
# **Exercises.** 3.1 the optimal policy $\pi^*$; 3.2 the DPO loss; 3.3 a reward the data cannot tell apart.
# Each is graded by the cell after it. Set `SOLUTIONS = True` below to fill them in with the reference solutions
# (`notebooks/solutions/nb03.py`).
#
# **What it leaves out.** Language models (the toy policy is a table of logits: the maths is the same,
# since DPO only ever sees $\log\pi(y\mid x)$ of whole responses), IPO/cDPO variants, and the
# `DPOTrainer` plumbing. Everything runs in float64 in a few seconds.
#
# **How to run.** `.venv/bin/jupyter lab notebooks/` from the project root (see `notebooks/README.md`).

# %%
import os

SOLUTIONS = os.environ.get("RLHF_WORKBENCH_SOLUTIONS", "0") == "1"  # True: the exercises use the reference solutions
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import itertools
import math

import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from core.losses import bradley_terry_loss, dpo_loss, ranking_loss

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)  # exact maths on a toy: float64 lets us assert tight tolerances

# %% [markdown]
# ## 1. The objective RLHF maximises, and its closed-form maximiser
#
# PPO-RLHF (notebook 2) maximises, for every prompt $x$, the expected reward minus a KL penalty to a
# reference policy (the SFT model):
#
# $$
# J_x(\pi) = \mathbb{E}_{y\sim\pi(\cdot\mid x)}\big[r(x,y)\big] - \beta\,\mathrm{KL}\big(\pi(\cdot\mid x)\,\|\,\pi_{\text{ref}}(\cdot\mid x)\big)
#          = \sum_y \pi(y\mid x)\Big[r(x,y) - \beta\log\frac{\pi(y\mid x)}{\pi_{\text{ref}}(y\mid x)}\Big].
# $$
#
# Define the **partition function** $Z(x) = \sum_y \pi_{\text{ref}}(y\mid x)\, e^{r(x,y)/\beta}$ and the
# distribution
#
# $$
# \pi^*(y\mid x) = \frac{1}{Z(x)}\,\pi_{\text{ref}}(y\mid x)\,\exp\!\Big(\frac{r(x,y)}{\beta}\Big).
# $$
#
# Then $r(x,y) = \beta\log\frac{\pi^*(y\mid x)}{\pi_{\text{ref}}(y\mid x)} + \beta\log Z(x)$, and substituting
# this into $J_x$:
#
# $$
# J_x(\pi) = \sum_y \pi(y\mid x)\Big[\beta\log\frac{\pi^*(y\mid x)}{\pi(y\mid x)} + \beta\log Z(x)\Big]
#          = \beta\log Z(x) - \beta\,\mathrm{KL}\big(\pi\,\|\,\pi^*\big).
# $$
#
# The KL is $\ge 0$ and is $0$ only at $\pi = \pi^*$: so $\pi^*$ is the **unique** maximiser and the maximum
# value is $\beta\log Z(x)$ (DPO appendix A.1). With an LM, $Z(x)$ sums over every possible response and
# cannot be computed, which is why nobody samples from $\pi^*$ directly. On a table we can.
#
# The toy: 3 prompts, 4 responses each, a random reference policy and a known reward.

# %%
n_prompts, n_responses, beta = 3, 4, 0.5
ref_logits = torch.randn(n_prompts, n_responses)  # (X, Y)
log_pi_ref = torch.log_softmax(ref_logits, dim=-1)  # (X, Y)
reward = torch.tensor([[2.0, 1.0, 0.0, -1.0],
                       [0.5, -0.5, 1.5, 0.0],
                       [3.0, 1.0, -2.0, 0.0]])  # (X, Y), the "true" r(x, y), unknown to DPO


# %% [markdown]
# ### Exercise 3.1 — the optimal policy $\pi^*$
#
# Write `optimal_log_policy(log_pi_ref, reward, beta)`: $\log\pi^*(y\mid x) = \log\pi_{\text{ref}}(y\mid x) + r(x,y)/\beta - \log Z(x)$
# for every prompt (row). Shapes: (X, Y), (X, Y), float → (X, Y). Compute $\log Z$ with `torch.logsumexp`, not
# `log(sum(exp(...)))` (it overflows at small $\beta$). **Graded** by the next cell: each row must be a distribution, its
# objective must equal $\beta\log Z(x)$ and beat 1,000 random policies, and it must survive $\beta = 10^{-3}$.
# Section 5 sweeps $\beta$ with it.

# %%
def optimal_log_policy(log_pi_ref, reward, beta):
    """log pi*(y|x) of the KL-regularised objective, one row per prompt. (X, Y), (X, Y), float -> (X, Y)."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 3.1: log pi_ref + r / beta, normalised per row in log space")


if SOLUTIONS:
    from solutions.nb03 import optimal_log_policy  # noqa: F811

# %%
log_Z = torch.logsumexp(log_pi_ref + reward / beta, dim=-1)  # (X,)
log_pi_star = optimal_log_policy(log_pi_ref, reward, beta)  # (X, Y), Exercise 3.1
pi_star = log_pi_star.exp()
assert_close(pi_star.sum(-1), torch.ones(n_prompts))
assert torch.isfinite(optimal_log_policy(log_pi_ref, reward, 1e-3)).all()
print("pi_ref :\n", log_pi_ref.exp().numpy().round(3))
print("pi*    :\n", pi_star.numpy().round(3))
print("log Z(x):", log_Z.numpy().round(3))


# %% [markdown]
# Check the identity $J_x(\pi) = \beta\log Z(x) - \beta\,\mathrm{KL}(\pi\,\|\,\pi^*)$ on random policies, and that
# none of them beats $\pi^*$:

# %%
def objective(log_pi):
    """J_x(pi) for every prompt: E_pi[r] - beta * KL(pi || pi_ref). log_pi: (..., X, Y) -> (..., X)."""
    return (log_pi.exp() * (reward - beta * (log_pi - log_pi_ref))).sum(-1)


random_log_pi = torch.log_softmax(3 * torch.randn(1000, n_prompts, n_responses), dim=-1)  # (N, X, Y)
kl_to_star = (random_log_pi.exp() * (random_log_pi - log_pi_star)).sum(-1)  # (N, X)
assert_close(objective(random_log_pi), beta * log_Z - beta * kl_to_star)
assert_close(objective(log_pi_star), beta * log_Z)
assert (objective(random_log_pi) <= objective(log_pi_star) + 1e-12).all()
print("Exercise 3.1: pi* is normalised and attains the maximum beta log Z")
print("J(pi*) = beta log Z =", objective(log_pi_star).numpy().round(4),
      "| best of 1000 random policies:", objective(random_log_pi).max(0).values.numpy().round(4))

# %% [markdown]
# ## 2. Reparameterise the reward, substitute into Bradley–Terry: $Z$ cancels
#
# The Bradley–Terry model (notebook 1) says a labeller prefers $y_w$ to $y_l$ with probability
# $p(y_w \succ y_l\mid x) = \sigma\big(r(x,y_w) - r(x,y_l)\big)$. Write $r$ through *any* policy $\pi_\theta$,
# pretending it is the optimum of its own reward: $r_\theta(x,y) = \beta\log\frac{\pi_\theta(y\mid x)}{\pi_{\text{ref}}(y\mid x)} + \beta\log Z(x)$.
# Only differences of rewards for the **same prompt** enter Bradley–Terry, so $\beta\log Z(x)$ cancels:
#
# $$
# p_\theta(y_w \succ y_l\mid x) = \sigma\Big(\underbrace{\beta\log\frac{\pi_\theta(y_w\mid x)}{\pi_{\text{ref}}(y_w\mid x)}}_{\hat r_\theta(x,y_w)}
#   - \underbrace{\beta\log\frac{\pi_\theta(y_l\mid x)}{\pi_{\text{ref}}(y_l\mid x)}}_{\hat r_\theta(x,y_l)}\Big).
# $$
#
# Maximum likelihood on a preference data set $\mathcal D$ is the DPO loss (DPO eq. 7):
#
# $$
# \mathcal L_{\text{DPO}}(\theta) = -\,\mathbb E_{(x,y_w,y_l)\sim\mathcal D}\Big[\log\sigma\big(\hat r_\theta(x,y_w) - \hat r_\theta(x,y_l)\big)\Big].
# $$
#
# $\hat r_\theta$ is the **implicit reward** that DPO trainers log as `rewards/chosen` and `rewards/rejected`.
# It equals the true reward only up to the per-prompt constant $\beta\log Z(x)$; that shift is exactly the
# freedom Bradley–Terry cannot see. Numerically, at $\pi_\theta = \pi^*$:

# %%
implicit_star = beta * (log_pi_star - log_pi_ref)  # (X, Y), r_hat at the optimum
assert_close(implicit_star + beta * log_Z[:, None], reward)  # r = beta log pi*/pi_ref + beta log Z
for x, i, j in [(0, 0, 1), (1, 2, 3), (2, 3, 1)]:
    assert_close(torch.sigmoid(reward[x, i] - reward[x, j]), torch.sigmoid(implicit_star[x, i] - implicit_star[x, j]))
print("r_hat at pi* minus r (a constant per prompt, -beta log Z):\n", (implicit_star - reward).numpy().round(4))

# %% [markdown]
# ### Exercise 3.2 — the DPO loss
#
# `core.losses.dpo_loss` takes the four summed log-probabilities that a DPO step computes
# (`policy_chosen_logps`, `policy_rejected_logps`, `ref_chosen_logps`, `ref_rejected_logps`).
# Write `my_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)`: DPO
# eq. 7 per pair, shapes (B,) × 4 → (B,). **Graded** against `core.losses.dpo_loss` (and the Bradley–Terry loss on the
# implicit rewards), including a pair with a log-ratio gap of 400 nats where a naive `log(sigmoid(...))` returns `inf`.

# %%
def my_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """DPO eq. 7 per pair from summed log-probs under the policy and the reference. (B,) x 4 -> (B,)."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 3.2: -log sigmoid(beta * (log-ratio chosen - log-ratio rejected))")


if SOLUTIONS:
    from solutions.nb03 import my_dpo_loss  # noqa: F811

# %%
pol_c, pol_r = torch.tensor([-3.0, -10.0, -1.2]), torch.tensor([-4.0, -7.5, -1.1])
ref_c, ref_r = torch.tensor([-3.5, -9.0, -1.0]), torch.tensor([-3.5, -8.0, -1.5])
core_losses, core_chosen_rewards, core_rejected_rewards = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=beta)
assert_close(my_dpo_loss(pol_c, pol_r, ref_c, ref_r, beta), core_losses)
assert_close(core_chosen_rewards, beta * (pol_c - ref_c))
assert_close(bradley_terry_loss(core_chosen_rewards, core_rejected_rewards), core_losses)
far = torch.tensor([-500.0, -100.0])  # a pair mis-ordered by 400 nats, and the reverse
assert_close(my_dpo_loss(far, far.flip(0), torch.zeros(2), torch.zeros(2), 1.0),
             dpo_loss(far, far.flip(0), torch.zeros(2), torch.zeros(2), beta=1.0)[0])
print("Exercise 3.2: my_dpo_loss matches core.losses.dpo_loss")
print("DPO losses:", core_losses.numpy().round(4))

# %% [markdown]
# ## 3. The gradient and its weighting term
#
# With $u = \hat r_\theta(x,y_w) - \hat r_\theta(x,y_l)$ and $\frac{d}{du}\big[-\log\sigma(u)\big] = -\sigma(-u)$:
#
# $$
# \nabla_\theta\mathcal L_{\text{DPO}} = -\beta\,\mathbb E\Big[\underbrace{\sigma\big(\hat r_\theta(x,y_l) - \hat r_\theta(x,y_w)\big)}_{\text{weight}}
# \big(\nabla_\theta\log\pi_\theta(y_w\mid x) - \nabla_\theta\log\pi_\theta(y_l\mid x)\big)\Big].
# $$
#
# The weight is the model's probability of getting the pair **wrong**: pairs the implicit reward model already
# orders correctly by a wide margin barely move the policy; mis-ordered pairs get a weight near 1. DPO's
# ablation (sec. 4) shows that dropping the weight ("unlikelihood") makes the policy degenerate.
# Check with autograd: $\partial\mathcal L/\partial\log\pi(y_w) = -\beta\sigma(\hat r_l - \hat r_w)$ and
# $\partial\mathcal L/\partial\log\pi(y_l) = +\beta\sigma(\hat r_l - \hat r_w)$.

# %%
pc, pr = pol_c.clone().requires_grad_(), pol_r.clone().requires_grad_()
losses, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, ref_c, ref_r, beta=beta)
losses.sum().backward()
weight = torch.sigmoid(rejected_rewards - chosen_rewards)
assert_close(pc.grad, -beta * weight)
assert_close(pr.grad, beta * weight)
print("weight sigma(r_hat_l - r_hat_w):", weight.numpy().round(4))

# %% [markdown]
# ## 4. Minimising the DPO loss recovers $\pi^*$ (infinite data)
#
# The tabular policy is $\pi_\theta(\cdot\mid x) = \mathrm{softmax}(\theta_x)$ with $\theta\in\mathbb R^{3\times4}$,
# initialised at the reference. "Infinite data" means: for every prompt, every unordered pair $\{i,j\}$ is
# shown equally often, and the label is drawn from Bradley–Terry with the true reward. The expected loss is
#
# $$
# \mathcal L(\theta) = \frac{1}{|X|\binom{|Y|}{2}}\sum_x\sum_{i<j}\Big[p_{ij}\,\ell_\theta(x; i\succ j) + p_{ji}\,\ell_\theta(x; j\succ i)\Big],
# \qquad p_{ij} = \sigma\big(r(x,i) - r(x,j)\big),
# $$
#
# where $\ell_\theta(x; i\succ j)$ is `dpo_loss` with chosen $i$ and rejected $j$. Per pair this is a cross-entropy
# between $p_{ij}$ and $\sigma(\hat r_i - \hat r_j)$, minimised exactly when $\hat r_i - \hat r_j = r_i - r_j$.
# Since every pair of a prompt is compared, that pins $\hat r_\theta(x,\cdot) = r(x,\cdot) + c(x)$, and the
# normalisation of the softmax then forces $\pi_\theta = \pi^*$. We minimise with L-BFGS in float64.

# %%
pairs = torch.tensor(list(itertools.combinations(range(n_responses), 2)))  # (P, 2), i < j
x_idx = torch.arange(n_prompts).repeat_interleave(len(pairs))  # (X*P,)
i_idx, j_idx = pairs[:, 0].repeat(n_prompts), pairs[:, 1].repeat(n_prompts)  # (X*P,)
p_i_wins = torch.sigmoid(reward[x_idx, i_idx] - reward[x_idx, j_idx])  # (X*P,) BT probability that i is chosen


def expected_dpo_loss(theta):
    log_pi = torch.log_softmax(theta, dim=-1)  # (X, Y)
    lp_i, lp_j = log_pi[x_idx, i_idx], log_pi[x_idx, j_idx]
    ref_i, ref_j = log_pi_ref[x_idx, i_idx], log_pi_ref[x_idx, j_idx]
    loss_i_chosen, _, _ = dpo_loss(lp_i, lp_j, ref_i, ref_j, beta=beta)
    loss_j_chosen, _, _ = dpo_loss(lp_j, lp_i, ref_j, ref_i, beta=beta)
    return (p_i_wins * loss_i_chosen + (1 - p_i_wins) * loss_j_chosen).mean()


theta = ref_logits.clone().requires_grad_()
optimizer = torch.optim.LBFGS([theta], lr=1.0, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                              line_search_fn="strong_wolfe")


def closure():
    optimizer.zero_grad()
    loss = expected_dpo_loss(theta)
    loss.backward()
    return loss


for _ in range(3):
    optimizer.step(closure)
pi_learned = torch.softmax(theta.detach(), dim=-1)
print("learned pi_theta:\n", pi_learned.numpy().round(4))
print("max |pi_theta - pi*| =", f"{(pi_learned - pi_star).abs().max().item():.2e}")
assert_close(pi_learned, pi_star, atol=1e-6, rtol=0)

# %% [markdown]
# The minimum of the expected loss is the entropy of the Bradley–Terry labels, not 0: the labels are noisy,
# and a policy that drove every margin to infinity would be penalised for the pairs where the worse response
# was (correctly, per the model) sometimes chosen. This is also why deterministic preferences are a problem
# for DPO: with $p_{ij} = 1$ the optimum is at $\hat r_i - \hat r_j = \infty$, far from $\pi_{\text{ref}}$ (IPO's motivation).

# %%
label_entropy = -(p_i_wins * p_i_wins.log() + (1 - p_i_wins) * (1 - p_i_wins).log()).mean()
assert_close(expected_dpo_loss(theta.detach()), label_entropy)
print(f"expected DPO loss at the optimum {expected_dpo_loss(theta.detach()).item():.6f} = label entropy {label_entropy.item():.6f}")

# %% [markdown]
# ## 5. Finite data: sampled preferences give an approximate $\pi^*$
#
# A real data set is a finite sample. Draw 4,000 comparisons per prompt (uniform pair, label from
# Bradley–Terry), minimise the mean `dpo_loss` over the sample, and compare with $\pi^*$: close, not exact,
# and the error shrinks like $1/\sqrt n$.

# %%
g = torch.Generator().manual_seed(1)
n_samples = 4000 * n_prompts
s_x = torch.arange(n_prompts).repeat_interleave(4000)
s_pair = pairs[torch.randint(len(pairs), (n_samples,), generator=g)]
s_i_wins = torch.rand(n_samples, generator=g) < torch.sigmoid(reward[s_x, s_pair[:, 0]] - reward[s_x, s_pair[:, 1]])
s_chosen = torch.where(s_i_wins, s_pair[:, 0], s_pair[:, 1])
s_rejected = torch.where(s_i_wins, s_pair[:, 1], s_pair[:, 0])


def sampled_dpo_loss(theta):
    log_pi = torch.log_softmax(theta, dim=-1)
    losses, _, _ = dpo_loss(log_pi[s_x, s_chosen], log_pi[s_x, s_rejected],
                            log_pi_ref[s_x, s_chosen], log_pi_ref[s_x, s_rejected], beta=beta)
    return losses.mean()


theta_s = ref_logits.clone().requires_grad_()
optimizer = torch.optim.LBFGS([theta_s], lr=1.0, max_iter=500, line_search_fn="strong_wolfe")


def closure_s():
    optimizer.zero_grad()
    loss = sampled_dpo_loss(theta_s)
    loss.backward()
    return loss


optimizer.step(closure_s)
pi_sampled = torch.softmax(theta_s.detach(), dim=-1)
finite_error = (pi_sampled - pi_star).abs().max().item()
print("pi_theta from 4,000 sampled comparisons per prompt:\n", pi_sampled.numpy().round(3))
print(f"max |pi_theta - pi*| = {finite_error:.3f}")
assert finite_error < 0.05

# %% [markdown]
# ## 6. Sweeping $\beta$: the exact reward–KL frontier, and where DPO lands on it
#
# $\beta$ is the price of one nat of KL. Each $\beta$ gives one optimal policy $\pi^*_\beta$, with an expected reward
# $\mathbb E_{\pi^*_\beta}[r]$ and a divergence $\mathrm{KL}(\pi^*_\beta\,\|\,\pi_{\text{ref}})$. Because $\mathbb E_\pi[r]$ is linear in
# $\pi$ and the KL is convex, the curve these trace as $\beta$ runs from $\infty$ (stay at $\pi_{\text{ref}}$) to $0$ (put
# all mass on the best response) is the **frontier**: no policy has a higher expected reward at the same KL, and
# $\beta$ is the slope's inverse there ($d\,\mathbb E[r] / d\,\mathrm{KL} = \beta$). We compute it exactly with your
# `optimal_log_policy` (averaging both coordinates over the 3 prompts), and train DPO on the *same* 12,000 sampled
# comparisons of section 5 at five values of $\beta$. DPO never sees $r$, only the labels, yet each run should land
# close to the frontier at its own $\beta$, and can never land above it: for every policy
# $J_\beta(\pi) = \beta\log Z_\beta - \beta\,\mathrm{KL}(\pi\,\|\,\pi^*_\beta) \le \beta\log Z_\beta$ (section 1).

# %%
def reward_and_kl(log_pi):
    """Mean over prompts of E_pi[r] and of KL(pi || pi_ref). log_pi: (X, Y) -> (float, float)."""
    pi = log_pi.exp()
    return (pi * reward).sum(-1).mean().item(), (pi * (log_pi - log_pi_ref)).sum(-1).mean().item()


def fit_dpo_on_samples(beta_):
    """Minimise the mean dpo_loss over the sampled comparisons of section 5 at this beta; returns log pi_theta (X, Y)."""
    theta_b = ref_logits.clone().requires_grad_()
    lbfgs = torch.optim.LBFGS([theta_b], lr=1.0, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14,
                              line_search_fn="strong_wolfe")

    def closure_b():
        lbfgs.zero_grad()
        log_pi = torch.log_softmax(theta_b, dim=-1)
        losses, _, _ = dpo_loss(log_pi[s_x, s_chosen], log_pi[s_x, s_rejected],
                                log_pi_ref[s_x, s_chosen], log_pi_ref[s_x, s_rejected], beta=beta_)
        losses.mean().backward()
        return losses.mean()

    lbfgs.step(closure_b)
    return torch.log_softmax(theta_b.detach(), dim=-1)


sweep_betas = torch.logspace(-1.3, 1.3, 60).tolist()  # 0.05 .. 20
frontier = [reward_and_kl(optimal_log_policy(log_pi_ref, reward, b)) for b in sweep_betas]  # [(E r, KL)]
dpo_betas = [0.25, 0.5, 1.0, 2.0, 4.0]
print("  beta   E_pi*[r]  KL(pi*||ref) |  DPO on samples: E[r]   KL   beta*KL(pi_dpo||pi*)")
dpo_points = []
for b in dpo_betas:
    log_pi_b = fit_dpo_on_samples(b)
    log_star_b = optimal_log_policy(log_pi_ref, reward, b)
    r_star, kl_star = reward_and_kl(log_star_b)
    r_dpo, kl_dpo = reward_and_kl(log_pi_b)
    J_dpo = (log_pi_b.exp() * (reward - b * (log_pi_b - log_pi_ref))).sum(-1)  # (X,) J_beta(pi_dpo)
    bound = b * torch.logsumexp(log_pi_ref + reward / b, dim=-1)  # (X,) beta log Z_beta = J_beta(pi*_beta)
    gap = (bound - J_dpo).mean().item()  # = beta * KL(pi_dpo || pi*_beta), averaged over prompts
    assert (J_dpo <= bound + 1e-9).all()  # nothing beats the optimum of its own beta
    assert gap < 0.02 and abs(r_dpo - r_star) < 0.1  # DPO on 12,000 noisy labels lands next to pi*_beta
    dpo_points.append((b, r_dpo, kl_dpo, r_star, kl_star))
    print(f"{b:6.2f}  {r_star:8.3f}  {kl_star:12.3f} |  {r_dpo:21.3f}  {kl_dpo:5.3f}  {gap:.5f}")
r_ref, _ = reward_and_kl(log_pi_ref)
r_best = reward.max(-1).values.mean().item()
assert frontier[0][0] > frontier[-1][0] and r_ref < frontier[-1][0] + 0.1 and frontier[0][0] < r_best

fig = go.Figure()
fig.add_trace(go.Scatter(x=[kl for _, kl in frontier], y=[r for r, _ in frontier], mode="lines", name="exact pi*_beta",
                         text=[f"beta = {b:.3g}" for b in sweep_betas], hovertemplate="%{text}<br>KL %{x:.3f}<br>E[r] %{y:.3f}"))
fig.add_trace(go.Scatter(x=[p[4] for p in dpo_points], y=[p[3] for p in dpo_points], mode="markers",
                         marker=dict(symbol="circle-open", size=14, color="black"), name="pi*_beta at the DPO betas"))
fig.add_trace(go.Scatter(x=[p[2] for p in dpo_points], y=[p[1] for p in dpo_points], mode="markers+text",
                         marker=dict(size=8, color="firebrick"), text=[f"beta={p[0]}" for p in dpo_points],
                         textposition="bottom right", name="DPO on 12,000 sampled comparisons"))
fig.add_trace(go.Scatter(x=[0.0], y=[r_ref], mode="markers", marker=dict(symbol="x", size=10), name="pi_ref"))
fig.add_hline(y=r_best, line_dash="dot", annotation_text="always pick the best response (beta -> 0)")
fig.update_layout(title="The reward-KL frontier traced by beta, and DPO trained on samples at five betas",
                  xaxis_title="KL(pi || pi_ref), mean over prompts [nats]", yaxis_title="expected true reward E_pi[r]",
                  height=450)
fig.show()

# %% [markdown]
# Small $\beta$ buys reward with KL at a falling rate: the last nats of KL buy little reward (the slope of the frontier
# is $\beta$). In RLHF the true reward is not available, only a learned one, and the KL is what keeps the policy in the
# region where that learned reward can be trusted (notebook 7 measures the over-optimisation). DPO's points sit next to
# the frontier because with 4,000 comparisons per prompt the maximum-likelihood reward differences are close to the true
# ones; with fewer comparisons they would scatter below it, never above.
#
# ## 7. Rankings of $K$ responses: Plackett–Luce
#
# InstructGPT's labellers ranked $K = 4$ to $9$ responses at once. The probabilistic model behind a ranking
# $\tau$ (best first) is **Plackett–Luce**: the best response is chosen with a softmax over all $K$ rewards, the second
# with a softmax over the remaining ones, and so on,
#
# $$
# p(\tau\mid x) = \prod_{k=1}^{K}\frac{\exp r(x, y_{\tau(k)})}{\sum_{j=k}^{K}\exp r(x, y_{\tau(j)})}.
# $$
#
# For $K = 2$ it is $\frac{e^{r_1}}{e^{r_1} + e^{r_2}} = \sigma(r_1 - r_2)$: Bradley–Terry. Every factor is a softmax over
# responses of the **same** prompt, so adding $\beta\log Z(x)$ to every reward changes nothing, and substituting DPO's
# implicit reward gives the DPO loss for rankings (DPO appendix A.3):
# $-\log\prod_k \frac{\exp\hat r_\theta(x,y_{\tau(k)})}{\sum_{j\ge k}\exp\hat r_\theta(x,y_{\tau(j)})}$. Two properties we check by
# enumerating all $K!$ rankings: the probabilities sum to 1, and the probability that $y_i$ is ranked above $y_j$ is
# exactly $\sigma(r_i - r_j)$ (the Gumbel-race view: ranking by $r + $ Gumbel noise is Plackett–Luce, and a difference of
# two Gumbels is logistic). InstructGPT's reward-model loss (`core.losses.ranking_loss`, eq. 1) instead averages the
# Bradley–Terry losses of the $\binom K2$ pairs a ranking implies: it uses the right pairwise marginals but treats the
# pairs as independent, so for $K > 2$ it is not the log-likelihood of the ranking; for $K = 2$ the two coincide.

# %%
def plackett_luce_nll(rewards):
    """-log p(ranking) under Plackett-Luce. rewards: (P, K), each row ordered best first. Returns (P,)."""
    suffix_logsumexp = torch.logcumsumexp(rewards.flip(-1), dim=-1).flip(-1)  # (P, K): log sum_{j >= k} exp r_j
    return -(rewards - suffix_logsumexp).sum(-1)


def plackett_luce_naive(r, ranking):
    """p(ranking) by the sequential softmax, one pick at a time. r: (K,), ranking: best-first indices."""
    prob, remaining = 1.0, list(ranking)
    for pick in ranking:
        prob *= (r[pick].exp() / r[remaining].exp().sum()).item()
        remaining.remove(pick)
    return prob


K = n_responses
r_rank = reward[2]  # prompt 2's rewards (3, 1, -2, 0)
rankings = list(itertools.permutations(range(K)))  # all 24 rankings
probs = {tau: math.exp(-plackett_luce_nll(r_rank[list(tau)][None]).item()) for tau in rankings}
for tau in rankings[::5]:
    assert abs(probs[tau] - plackett_luce_naive(r_rank, tau)) < 1e-12
assert abs(sum(probs.values()) - 1.0) < 1e-12
for i, j in itertools.permutations(range(K), 2):  # pairwise marginals are Bradley-Terry
    p_above = sum(p for tau, p in probs.items() if tau.index(i) < tau.index(j))
    assert abs(p_above - torch.sigmoid(r_rank[i] - r_rank[j]).item()) < 1e-12
# Z cancels: pi*'s implicit rewards r_hat = r - beta log Z(x), shifted by any constant, give the same likelihood
best_first = torch.argsort(r_rank, descending=True)
assert_close(plackett_luce_nll(r_rank[best_first][None]),
             plackett_luce_nll((implicit_star[2] + 7.0)[best_first][None]))
# K = 2: Plackett-Luce = Bradley-Terry = InstructGPT's ranking loss
two = torch.randn(5, 2)
assert_close(plackett_luce_nll(two), bradley_terry_loss(two[:, 0], two[:, 1]))
assert_close(plackett_luce_nll(two), ranking_loss(two))
# K = 4 at equal rewards: Plackett-Luce says every one of the 4! rankings has probability 1/24; the sum of the
# C(4,2) = 6 pairwise losses would be the log-likelihood of 6 independent coin flips, 1/64: not a model of rankings
ties = torch.zeros(1, K)
assert_close(plackett_luce_nll(ties), torch.tensor([math.log(math.factorial(K))]))
assert_close(math.comb(K, 2) * ranking_loss(ties), torch.tensor([math.comb(K, 2) * math.log(2)]))
pl_nll, pairwise = plackett_luce_nll(r_rank[best_first][None]).item(), ranking_loss(r_rank[best_first][None]).item()
print(f"the most likely ranking {tuple(best_first.tolist())} has probability {probs[tuple(best_first.tolist())]:.3f}; "
      f"PL NLL {pl_nll:.4f} vs C(4,2) x ranking_loss {math.comb(K, 2) * pairwise:.4f}; at equal rewards "
      f"log 4! = {math.log(24):.4f} vs 6 log 2 = {6 * math.log(2):.4f}")

# %% [markdown]
# ## 8. Preferences identify the reward only along the comparisons made
#
# Bradley–Terry sees reward *differences* between compared responses. Section 2 showed one freedom it cannot see, a
# constant per prompt, harmless because $\pi^*$ does not depend on it. Section 4 used *every* pair of a prompt, which
# pins all differences. Now take prompt 1's four responses, rewards $(0.5, -0.5, 1.5, 0)$, and a data set that only ever
# compares $y_0$ with $y_1$ and $y_2$ with $y_3$ (with $\beta = 1$ here): two groups that are never compared with each other. Then the
# difference between the groups is invisible, and it is **not** harmless: it moves probability between the groups of
# $\pi^*$.
#
# ### Exercise 3.3 — a reward the data cannot tell apart
#
# Write `indistinguishable_reward(reward, comparisons)`: return a reward $r'$ (shape (Y,)) that gives **every** compared
# pair in `comparisons` (shape (C, 2), index pairs) the same Bradley–Terry probability as `reward`, but is **not**
# `reward` plus a constant: $r' - r$ must vary by at least 1 across responses. Hint: what can you add to a whole group of responses? **Graded**: equal probabilities on
# every comparison, $r' - r$ not constant; then the notebook shows that the DPO loss on these comparisons cannot tell
# $\pi^*_r$ from $\pi^*_{r'}$, and that one bridging comparison can.

# %%
def indistinguishable_reward(reward, comparisons):
    """A reward with the same Bradley-Terry probability on every listed comparison, not a constant shift of `reward`.
    reward: (Y,); comparisons: (C, 2) index pairs. Returns (Y,)."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 3.3: shift one group of compared responses, not the other")


if SOLUTIONS:
    from solutions.nb03 import indistinguishable_reward  # noqa: F811

# %%
r0, log_ref0 = reward[1], log_pi_ref[1]  # (Y,), (Y,) prompt 1
beta_id = 1.0  # a weaker pull than beta = 0.5, so that pi* keeps visible mass on both groups
comparisons = torch.tensor([[0, 1], [2, 3]])  # two groups, never compared with each other


def expected_dpo_loss_on(comparisons, log_pi, true_reward):
    """Expected DPO loss of a policy log_pi (Y,) on these comparisons, labels from Bradley-Terry with true_reward."""
    i, j = comparisons[:, 0], comparisons[:, 1]
    p_i = torch.sigmoid(true_reward[i] - true_reward[j])
    loss_i, _, _ = dpo_loss(log_pi[i], log_pi[j], log_ref0[i], log_ref0[j], beta=beta_id)
    loss_j, _, _ = dpo_loss(log_pi[j], log_pi[i], log_ref0[j], log_ref0[i], beta=beta_id)
    return (p_i * loss_i + (1 - p_i) * loss_j).mean()


r_other = indistinguishable_reward(r0, comparisons)  # Exercise 3.3, graded
i, j = comparisons[:, 0], comparisons[:, 1]
assert_close(torch.sigmoid(r_other[i] - r_other[j]), torch.sigmoid(r0[i] - r0[j]))  # the same likelihood for every label
assert (r_other - r0).max() - (r_other - r0).min() >= 1.0  # ... yet not r + constant
print("Exercise 3.3: r' =", r_other.numpy().round(3), "fits every comparison exactly as r =", r0.numpy())

pi_r = optimal_log_policy(log_ref0[None], r0[None], beta_id)[0]  # (Y,) log pi* under r
pi_r_other = optimal_log_policy(log_ref0[None], r_other[None], beta_id)[0]  # (Y,) log pi* under r'
loss_r, loss_other = expected_dpo_loss_on(comparisons, pi_r, r0), expected_dpo_loss_on(comparisons, pi_r_other, r0)
assert_close(loss_r, loss_other)  # DPO's loss cannot tell the two optimal policies apart ...
assert (pi_r.exp() - pi_r_other.exp()).abs().max() > 0.05  # ... and they are different policies
bridged = torch.tensor([[0, 1], [2, 3], [1, 2]])  # one comparison across the groups
loss_r_b, loss_other_b = expected_dpo_loss_on(bridged, pi_r, r0), expected_dpo_loss_on(bridged, pi_r_other, r0)
assert loss_other_b > loss_r_b + 1e-3  # with it, the data prefer pi*_r
print(f"pi*_r  = {pi_r.exp().numpy().round(3)}   pi*_r' = {pi_r_other.exp().numpy().round(3)}")
print(f"expected DPO loss, comparisons (0,1),(2,3):       pi*_r {loss_r.item():.5f}   pi*_r' {loss_other.item():.5f}")
print(f"expected DPO loss, plus the bridge (1,2):         pi*_r {loss_r_b.item():.5f}   pi*_r' {loss_other_b.item():.5f}")

# %% [markdown]
# Identifiability is a property of the **comparison graph** (responses as nodes, compared pairs as edges): Bradley–Terry
# (and Plackett–Luce) determine the reward up to one constant *per connected component*. With one component per prompt
# the constant is the harmless $\beta\log Z(x)$; with several, DPO's loss has a whole family of minimisers and which one
# training reaches depends on the initialisation and the optimiser, not on the data. Real preference data for a
# language model compare two samples per prompt, so the graph is extremely sparse: the model's inductive bias (similar
# responses get similar log-probabilities) is what fills the gaps.
#
# ## 9. Why the chosen reward can go down while the margin grows
#
# The DPO loss only sees the **difference** $\hat r(y_w) - \hat r(y_l)$. Nothing stops both implicit rewards
# from falling, as long as the rejected one falls faster. A numeric example with $\beta = 0.1$: over training,
# $\log\pi(y_w)$ goes from $-10$ to $-11$ and $\log\pi(y_l)$ from $-12$ to $-15$ (the reference is the start):
#
# | | $\hat r(y_w) = \beta(\log\pi - \log\pi_{\text{ref}})$ | $\hat r(y_l)$ | margin |
# |---|---|---|---|
# | start | 0 | 0 | 0 |
# | later | $0.1\cdot(-1) = -0.1$ | $0.1\cdot(-3) = -0.3$ | $+0.2$ |
#
# The loss fell from $\log 2 \approx 0.693$ to $-\log\sigma(0.2) \approx 0.598$, the chosen reward fell, the
# chosen response got **less** likely. For an LM the probability mass has to go somewhere: often to responses
# in neither the chosen nor the rejected set.

# %%
# two rows: [start, later]; the reference log-probs are the starting ones
losses, chosen_rewards, rejected_rewards = dpo_loss(
    torch.tensor([-10.0, -11.0]), torch.tensor([-12.0, -15.0]),  # policy_chosen_logps, policy_rejected_logps
    torch.tensor([-10.0, -10.0]), torch.tensor([-12.0, -12.0]),  # ref_chosen_logps, ref_rejected_logps
    beta=0.1)
assert_close(chosen_rewards, torch.tensor([0.0, -0.1]))
assert_close(rejected_rewards, torch.tensor([0.0, -0.3]))
assert_close(losses, torch.tensor([torch.log(torch.tensor(2.0)).item(), -F.logsigmoid(torch.tensor(0.2)).item()]))
print("losses", losses.numpy().round(4), "| rewards/chosen", chosen_rewards.numpy(), "| margins",
      (chosen_rewards - rejected_rewards).numpy())

# %% [markdown]
# The toy shows it happening for a reason, not by accident. Prompt 2 has rewards $(3, 1, -2, 0)$. Take the
# pair "response 1 preferred to response 3". At the optimum $\hat r(x, y) = r(x,y) - \beta\log Z(x)$, and
# $\beta\log Z(x)$ is large here because response 0 has a much higher reward and absorbs most of the mass. So
# the implicit reward of the *chosen* response 1 ends negative: $\pi^*$ gives it less probability than the
# reference, although it beats response 3. Follow a plain gradient descent on the expected loss and log
# what a DPO trainer would log for that pair:

# %%
theta_gd = ref_logits.clone().requires_grad_()
adam = torch.optim.Adam([theta_gd], lr=0.05)
trace = []
for step in range(301):
    log_pi = torch.log_softmax(theta_gd, dim=-1)
    chosen_reward = beta * (log_pi[2, 1] - log_pi_ref[2, 1]).item()
    rejected_reward = beta * (log_pi[2, 3] - log_pi_ref[2, 3]).item()
    if step % 50 == 0:
        trace.append((step, chosen_reward, rejected_reward, chosen_reward - rejected_reward))
    loss = expected_dpo_loss(theta_gd)
    adam.zero_grad()
    loss.backward()
    adam.step()
print(" step  rewards/chosen  rewards/rejected  rewards/margins")
for step, c, r, m in trace:
    print(f"{step:5d}  {c:14.3f}  {r:16.3f}  {m:15.3f}")
final_chosen, final_margin = trace[-1][1], trace[-1][3]
assert final_chosen < 0 < final_margin
assert_close(torch.tensor(final_margin), reward[2, 1] - reward[2, 3], atol=0.05, rtol=0)
assert implicit_star[2, 1] < 0 and pi_star[2, 1] < log_pi_ref[2, 1].exp()

# %% [markdown]
# ## Summary: the derivation equals `core`
#
# * $\pi^* \propto \pi_{\text{ref}}e^{r/\beta}$ maximises $J_x$, with maximum $\beta\log Z(x)$;
# * $r = \beta\log\frac{\pi^*}{\pi_{\text{ref}}} + \beta\log Z$, and $Z$ cancels in Bradley–Terry, giving DPO;
# * the gradient weight is $\sigma(\hat r_l - \hat r_w)$;
# * minimising `core.losses.dpo_loss` under infinite Bradley–Terry data recovers $\pi^*$ (to $10^{-6}$);
#   a finite sample gets close;
# * sweeping $\beta$ traces the exact reward–KL frontier; DPO on sampled comparisons lands next to it, never above;
# * Plackett–Luce extends Bradley–Terry to rankings ($K = 2$ is Bradley–Terry, pairwise marginals are Bradley–Terry),
#   and differs from InstructGPT's $\binom K2$ loss for $K > 2$;
# * the reward is identified only up to a constant per connected component of the comparison graph;
# * the chosen implicit reward can fall while the margin rises.

# %%
assert_close(my_dpo_loss(pol_c, pol_r, ref_c, ref_r, beta), dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=beta)[0])
assert_close(pi_learned, pi_star, atol=1e-6, rtol=0)
assert_close(objective(log_pi_star), beta * log_Z)
assert all(abs(r_dpo - r_star) < 0.1 for _, r_dpo, _, r_star, _ in dpo_points)
assert_close(plackett_luce_nll(two), ranking_loss(two))
assert_close(loss_r, loss_other) and loss_other_b > loss_r_b + 1e-3
print("all checks passed")
