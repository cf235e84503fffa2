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
# 5. explain why the "chosen reward" logged by DPO trainers can fall while the margin grows.
#
# **What it leaves out.** Language models (the toy policy is a table of logits: the maths is the same,
# since DPO only ever sees $\log\pi(y\mid x)$ of whole responses), IPO/cDPO variants, and the
# `DPOTrainer` plumbing. Everything runs in float64 in a few seconds.
#
# **How to run.** `.venv/bin/jupyter lab notebooks/` from the project root (see `notebooks/README.md`).

# %%
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import itertools

import torch
import torch.nn.functional as F
from torch.testing import assert_close

from core.losses import bradley_terry_loss, dpo_loss

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

log_Z = torch.logsumexp(log_pi_ref + reward / beta, dim=-1)  # (X,)
log_pi_star = log_pi_ref + reward / beta - log_Z[:, None]  # (X, Y)
pi_star = log_pi_star.exp()
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
# `core.losses.dpo_loss` takes the four summed log-probabilities that a DPO step computes
# (`policy_chosen_logps`, `policy_rejected_logps`, `ref_chosen_logps`, `ref_rejected_logps`).
# Our hand-written loss is one line; it must equal core's, and also equal the Bradley–Terry loss on the
# implicit rewards:

# %%
def my_dpo_loss(pol_c, pol_r, ref_c, ref_r, beta):
    return -F.logsigmoid(beta * (pol_c - ref_c) - beta * (pol_r - ref_r))


pol_c, pol_r = torch.tensor([-3.0, -10.0, -1.2]), torch.tensor([-4.0, -7.5, -1.1])
ref_c, ref_r = torch.tensor([-3.5, -9.0, -1.0]), torch.tensor([-3.5, -8.0, -1.5])
core_losses, core_chosen_rewards, core_rejected_rewards = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=beta)
assert_close(my_dpo_loss(pol_c, pol_r, ref_c, ref_r, beta), core_losses)
assert_close(core_chosen_rewards, beta * (pol_c - ref_c))
assert_close(bradley_terry_loss(core_chosen_rewards, core_rejected_rewards), core_losses)
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
# ## 6. Why the chosen reward can go down while the margin grows
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
# * the chosen implicit reward can fall while the margin rises.

# %%
assert_close(my_dpo_loss(pol_c, pol_r, ref_c, ref_r, beta), dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=beta)[0])
assert_close(pi_learned, pi_star, atol=1e-6, rtol=0)
assert_close(objective(log_pi_star), beta * log_Z)
print("all checks passed")
