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
# # 7. Reward over-optimisation and KL control
#
# **What this notebook is.** The reason RLHF keeps a KL leash on the policy. A reward model is a *proxy* for what
# people want, fitted on a limited number of noisy comparisons; optimising it hard moves the policy to where the proxy
# is wrong, and the true ("gold") reward first rises, then falls. Gao, Schulman and Hilton (2022), "Scaling Laws for
# Reward Model Overoptimization", measured this shape; we reproduce it exactly on a synthetic problem small enough to
# compute every expectation and every KL in closed form, then control the KL with the adaptive controller of
# Ziegler et al. (2019) from `core.rl`.
#
# **Learning goals.** After this notebook you can
# 1. explain the proxy/gold set-up of Gao et al. and why a proxy fitted on few labels is over-optimised;
# 2. derive the KL of best-of-$N$ sampling, $\mathrm{KL}_{\text{BoN}} = \log N - \frac{N-1}{N}$, and compute the
#    exact best-of-$N$ distribution;
# 3. plot gold and proxy reward against $\sqrt{\mathrm{KL}}$ for best-of-$N$ and for PPO (proxy rising monotonically,
#    gold rising then falling) and fit Gao et al.'s functional forms;
# 4. run the adaptive KL controller, $\beta \leftarrow \beta\,(1 + K_\beta\,\mathrm{clip}(\mathrm{KL}/\mathrm{KL}_{\text{target}} - 1, \pm 0.2))$,
#    and see $\beta$ and the KL settle on the target;
# 5. read a $\beta$ sweep: the KL coefficient chooses a point on the gold curve, and the best point depends on how
#    good the proxy is;
# 6. recognise reward hacking in the workbench's own recorded runs (shorter answers, drifting fluency).
#
# **What it leaves out.** Language models: the "policy" is a distribution over a fixed pool of 100,000 candidate
# responses described by four features, which is what makes every KL exact. Proxy reward models of several sizes
# (Gao et al. vary the RM from 3M to 3B parameters), the dependence on the number of labels, and iterated RLHF.
# Everything runs in float64 in well under a minute on a CPU.
#
# **How to run.** `.venv/bin/jupyter lab notebooks/` from the project root (see `notebooks/README.md`).
#
# **Exercises.** 7.1 the Bradley–Terry loss of the proxy; 7.2 the best-of-$N$ KL; 7.3 the adaptive KL update. Each
# is graded by the cell after it. Set `SOLUTIONS = True` below to fill them in with the reference solutions
# (`notebooks/solutions/nb07.py`).

# %%
import os

SOLUTIONS = os.environ.get("RLHF_WORKBENCH_SOLUTIONS", "0") == "1"  # True: the exercises use the reference solutions

import math

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch.testing import assert_close

from core.losses import bradley_terry_loss, ppo_policy_loss
from core.rl import AdaptiveKLController, FixedKLController, kl_penalized_rewards, masked_whiten

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)  # vectors of 100,000 numbers: threads cost more than they save
np.set_printoptions(suppress=True, precision=4)

# %% [markdown]
# ## 1. The set-up of Gao et al. (2022)
#
# Human labels are expensive, so Gao et al. replace the human with a large **gold** reward model (6B parameters) and
# treat it as the ground truth: it labels synthetic comparisons, **proxy** reward models (3M–3B) are trained on those
# labels, and a policy is optimised against the proxy, by best-of-$N$ sampling or by PPO. Because the gold model is
# cheap to query, they can watch the *true* reward while the proxy is being optimised. Their findings:
#
# * plotted against the distance $d = \sqrt{\mathrm{KL}(\pi\,\|\,\pi_{\text{init}})}$, the proxy reward rises
#   monotonically while the gold reward rises, peaks, and falls: **over-optimisation** (Goodhart's law);
# * the gold curves follow simple forms, $R_{\text{BoN}}(d) = d\,(\alpha_{\text{bon}} - \beta_{\text{bon}}\, d)$ and
#   $R_{\text{RL}}(d) = d\,(\alpha_{\text{RL}} - \beta_{\text{RL}}\log d)$ ($R$ measured from the
#   initial policy's reward; these $\alpha, \beta$ are fitted coefficients, not the KL coefficient);
# * larger proxies and more labels push the peak to larger KL and higher gold reward; a KL penalty in PPO does not
#   improve the gold-versus-KL frontier, it mostly acts like early stopping.
#
# ## 2. A world where every number is exact
#
# One prompt, and a pool of $M$ = 100,000 candidate responses sampled from the SFT model: $\pi_{\text{ref}}$ puts
# $1/M$ on each. Each response $y$ has three quality features $q(y) \in \mathbb R^3$ (say correctness, relevance,
# tone) and a standardised length $z(y)$, all standard normal across the pool. The **gold** reward knows that length
# helps up to a point and then becomes padding:
#
# $$ r^*(y) = a^\top q(y) + z(y) - z(y)^2, \qquad a = (0.6, 0.4, 0.3). $$
#
# The **proxy** is a smaller model: linear in $\phi(y) = (q(y), z(y))$, $\hat r(y) = w^\top\phi(y)$, so it cannot
# represent the turnover in length, and it is fitted on only 300 comparisons of pairs drawn from $\pi_{\text{ref}}$,
# each labelled by the gold model with Bradley–Terry noise: $P(y_1 \succ y_2) = \sigma(r^*(y_1) - r^*(y_2))$. Where
# the labels live (ordinary lengths) the proxy is good; beyond them it extrapolates "longer is better".

# %%
M = 100_000
g = torch.Generator().manual_seed(0)
quality = torch.randn(M, 3, generator=g)  # (M, 3) q(y)
length = torch.randn(M, generator=g)  # (M,) z(y), standardised length
a = torch.tensor([0.6, 0.4, 0.3])
gold = quality @ a + length - length**2  # (M,) r*(y)
phi = torch.cat([quality, length[:, None]], dim=1)  # (M, 4) the proxy's (and the policy's) features
log_ref = torch.full((M,), -math.log(M))  # (M,) log pi_ref: uniform over the pool


def gold_labelled_pairs(n, generator):
    """n pairs drawn from pi_ref, the winner picked by the gold model with BT noise. -> chosen, rejected (n,)."""
    i = torch.randint(M, (n,), generator=generator)
    j = torch.randint(M, (n,), generator=generator)
    i_wins = torch.rand(n, generator=generator) < torch.sigmoid(gold[i] - gold[j])
    return torch.where(i_wins, i, j), torch.where(i_wins, j, i)


train_chosen, train_rejected = gold_labelled_pairs(300, g)
print(f"pool {M} responses; gold reward under pi_ref: mean {gold.mean().item():.3f}, std {gold.std().item():.3f}")

# %% [markdown]
# ### Exercise 7.1 — the proxy's Bradley–Terry loss
#
# Write `proxy_bt_loss(w, phi_chosen, phi_rejected)`: the per-pair negative log-likelihood of the linear proxy
# $\hat r = \phi^\top w$ under Bradley–Terry, $-\log\sigma\big(\hat r(y_c) - \hat r(y_r)\big)$ (InstructGPT eq. 1 with
# $K = 2$). Shapes: `w` (4,), `phi_chosen`, `phi_rejected` (P, 4) → (P,). **Graded** against
# `core.losses.bradley_terry_loss` on random weights; then the notebook fits the proxy with it.

# %%
def proxy_bt_loss(w, phi_chosen, phi_rejected):
    """Per-pair BT loss of r(y) = phi(y) . w. w: (D,); phi_chosen, phi_rejected: (P, D) -> (P,)."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 7.1: -log sigmoid(r(chosen) - r(rejected)) for the linear proxy")


if SOLUTIONS:
    from solutions.nb07 import proxy_bt_loss  # noqa: F811

# %%
w_random = torch.randn(4, generator=torch.Generator().manual_seed(1))
mine = proxy_bt_loss(w_random, phi[train_chosen], phi[train_rejected])
assert mine.shape == (300,)
assert_close(mine, bradley_terry_loss(phi[train_chosen] @ w_random, phi[train_rejected] @ w_random))
print("Exercise 7.1: matches core.losses.bradley_terry_loss")

# %% [markdown]
# **Fitting the proxy** (maximum likelihood, a small L2 term, L-BFGS). We then compare it with the gold model on 5,000
# fresh pairs: how often does the proxy prefer the response the gold model scores higher?

# %%
w = torch.zeros(4, requires_grad=True)
optimizer = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")


def closure():
    optimizer.zero_grad()
    loss = proxy_bt_loss(w, phi[train_chosen], phi[train_rejected]).mean() + 1e-3 * (w**2).sum()
    loss.backward()
    return loss


optimizer.step(closure)
w = w.detach()
proxy = phi @ w  # (M,) r_hat(y)
test_i, test_j = torch.randint(M, (2, 5000), generator=torch.Generator().manual_seed(2))
agreement = ((proxy[test_i] > proxy[test_j]) == (gold[test_i] > gold[test_j])).double().mean().item()
corr = torch.corrcoef(torch.stack([proxy, gold]))[0, 1].item()
print(f"proxy weights w = {w.numpy()}  (the gold's linear part: {a.numpy()} and length slope 1)")
print(f"proxy agrees with gold on {agreement:.3f} of fresh pairs; correlation over the pool {corr:.3f}")
assert agreement > 0.7 and w[3] > 0.3  # a decent proxy that believes "longer is better"

# %% [markdown]
# The proxy looks good on data like its training data (about four pairs in five ordered as the gold model orders them).
# The figure shows where it is wrong: among the responses with the **highest proxy scores**, the long ones have low
# gold reward. Optimising the proxy means moving probability to the right edge of this cloud.

# %%
show = torch.randperm(M, generator=torch.Generator().manual_seed(3))[:2500]  # a sample keeps the figure small
fig = go.Figure(go.Scatter(x=proxy[show].numpy(), y=gold[show].numpy(), mode="markers",
                           marker=dict(size=4, color=length[show].numpy(), colorscale="Viridis",
                                       colorbar=dict(title="length z")),
                           hovertemplate="proxy %{x:.2f}<br>gold %{y:.2f}<extra></extra>"))
fig.update_layout(title="Proxy vs gold reward over the pool (2,500 of the 100,000 responses)",
                  xaxis_title="proxy reward r̂(y)", yaxis_title="gold reward r*(y)", height=420)
fig.show()

# %% [markdown]
# ## 3. Best-of-$N$ and its KL
#
# Best-of-$N$ (BoN, rejection sampling) draws $N$ responses from $\pi_{\text{ref}}$ and returns the one the proxy
# scores highest. With $F$ the CDF of the proxy score under $\pi_{\text{ref}}$ and $u = F(\hat r(y))$, the maximum of
# $N$ draws has $P(U \le u) = u^N$, so the BoN density is $N u^{N-1}$ times $\pi_{\text{ref}}$ (for a continuous
# score). Hence
#
# $$
# \mathrm{KL}(\pi_{\text{BoN}}\,\|\,\pi_{\text{ref}}) = \mathbb E\big[\log N u^{N-1}\big]
#   = \log N + (N-1)\int_0^1 N u^{N-1}\log u\,du = \log N - \frac{N-1}{N},
# $$
#
# since $\int_0^1 N u^{N-1}\log u\,du = -1/N$. (Gao et al. use this formula; for a discrete distribution with ties it
# is an upper bound, Beirami et al. 2024.) On our pool we can compute the BoN distribution exactly: sort the responses
# by proxy score, ranks $i = 1..M$; the best of $N$ has rank $i$ with probability $(i/M)^N - ((i-1)/M)^N$.

# %%
order = torch.argsort(proxy)  # ranks ascending by proxy score
ranks = torch.arange(1, M + 1, dtype=torch.float64)


def best_of_n_distribution(n):
    """Exact pi_BoN over the pool, (M,), for a uniform pi_ref and a proxy with no ties."""
    p_sorted = torch.exp(n * torch.log(ranks / M)) - torch.exp(n * torch.log((ranks - 1) / M))
    p = torch.empty(M)
    p[order] = p_sorted
    return p


def kl_to_ref(p):
    """Exact KL(p || pi_ref) over the pool. p: (M,)."""
    keep = p > 0
    return (p[keep] * (torch.log(p[keep]) - log_ref[keep])).sum().item()


# %% [markdown]
# ### Exercise 7.2 — the KL of best-of-$N$
#
# Write `best_of_n_kl(n)`: $\log n - (n-1)/n$, for an int or a numpy array of $n$. **Graded** two ways: against the
# exact KL of the BoN distribution on the pool (`best_of_n_distribution`, `kl_to_ref`) for $N = 1 \dots 4096$, and
# against a Monte-Carlo simulation of the derivation ($U$ = the largest of $N$ uniforms,
# $\mathrm{KL} = \mathbb E[\log N + (N-1)\log U]$). The notebook then uses it for the x-axis of the BoN curves.

# %%
def best_of_n_kl(n):
    """KL(best-of-n || pi_ref) in nats. n: int or numpy array -> float or numpy array."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 7.2: the closed-form KL of best-of-n sampling")


if SOLUTIONS:
    from solutions.nb07 import best_of_n_kl  # noqa: F811

# %%
Ns = 2 ** np.arange(11)  # 1 .. 1024
bon = [best_of_n_distribution(int(n)) for n in Ns]
exact_kl = np.array([kl_to_ref(p) for p in bon])
np.testing.assert_allclose(best_of_n_kl(Ns), exact_kl, rtol=2e-3, atol=1e-9)  # the pool is big enough to be ~continuous
assert np.all(exact_kl <= best_of_n_kl(Ns) + 1e-9)  # and on a finite pool the formula is an upper bound
u_max = torch.rand(20_000, 64, generator=torch.Generator().manual_seed(4)).max(dim=1).values  # largest of N = 64
simulated = (math.log(64) + 63 * torch.log(u_max)).numpy()
assert abs(simulated.mean() - best_of_n_kl(64)) < 5 * simulated.std() / len(simulated) ** 0.5
print("N:         ", Ns)
print("formula:   ", np.round(best_of_n_kl(Ns), 4))
print("exact pool:", np.round(exact_kl, 4))

bon_gold = np.array([(p * gold).sum().item() for p in bon])
bon_proxy = np.array([(p * proxy).sum().item() for p in bon])
bon_d = np.sqrt(best_of_n_kl(Ns))  # the x-axis: sqrt(KL), from the student's formula
print("gold under BoN: ", np.round(bon_gold, 3))
print("proxy under BoN:", np.round(bon_proxy, 3))
assert np.all(np.diff(bon_proxy) > 0)  # the proxy only goes up: BoN is what it asks for
peak = int(np.argmax(bon_gold))
assert 0 < peak < len(Ns) - 1 and bon_gold[peak] - bon_gold[-1] > 0.5  # gold rises, peaks, then falls clearly
print(f"gold peaks at N = {Ns[peak]} (sqrt KL = {bon_d[peak]:.2f}); at N = {Ns[-1]} it is {bon_gold[-1]:.3f}")

# %% [markdown]
# ## 4. PPO against the proxy
#
# The RL side of Gao et al. runs PPO on the proxy and records the gold reward and the KL as training proceeds. Our
# policy is **log-linear** in the same features, $\pi_\theta(y) \propto \pi_{\text{ref}}(y)\, e^{\theta^\top\phi(y)}$ —
# the smallest family that contains the KL-regularised optimum $\pi_\beta \propto \pi_{\text{ref}}\,e^{\hat r/\beta}$
# (notebook 3): it is $\theta = w/\beta$. Each iteration samples 256 responses, shapes the reward with the KL penalty
# exactly as the trainer does (`core.rl.kl_penalized_rewards`, here a "sequence" of one token, mask (B, 1)), whitens
# the advantages (`masked_whiten`) and takes 4 epochs of `core.losses.ppo_policy_loss` (clip 0.2) with plain SGD
# (the features have unit covariance under $\pi_{\text{ref}}$, so SGD's steps follow the proxy's direction; Adam's
# per-coordinate scaling would move the policy along another path). A response is one action, so the advantage
# is the whitened shaped reward (GAE with one step). The same loop serves three experiments: no KL penalty (this section), the adaptive controller (section 5), fixed coefficients (section 6).

# %%
def train_policy(kl_ctl, iterations, lr=0.03, batch_size=256, epochs=4, seed=1):
    """PPO on the proxy with a log-linear policy. kl_ctl: core.rl Fixed/AdaptiveKLController (or the same interface).

    Returns a dict of per-iteration lists: exact KL(pi || pi_ref), the KL the controller saw (mean k1 of the batch),
    beta, the exact expected gold and proxy rewards, the clip fraction; and the final theta (4,).
    """
    gen = torch.Generator().manual_seed(seed)
    theta = torch.zeros(4, requires_grad=True)
    opt = torch.optim.SGD([theta], lr=lr)
    mask = torch.ones(batch_size, 1)
    log = {k: [] for k in ("kl", "kl_sampled", "beta", "gold", "proxy", "clipfrac")}
    for _ in range(iterations):
        with torch.no_grad():  # 1. rollout from the current policy; exact statistics of that policy
            logp_all = torch.log_softmax(log_ref + phi @ theta, dim=0)  # (M,)
            pi = logp_all.exp()
            log["kl"].append((pi * (logp_all - log_ref)).sum().item())
            log["gold"].append((pi * gold).sum().item())
            log["proxy"].append((pi * proxy).sum().item())
            idx = torch.multinomial(pi, batch_size, replacement=True, generator=gen)  # (B,)
            old_logprobs = logp_all[idx][:, None]  # (B, 1)
        beta = kl_ctl.value  # 2-4. score, shape with the KL penalty, advantages
        shaped, per_token_kl = kl_penalized_rewards(proxy[idx][:, None], old_logprobs, log_ref[idx][:, None], mask,
                                                    beta)
        advantages = masked_whiten(shaped, mask)
        clipfracs = []
        for _ in range(epochs):  # 5. update: clipped surrogate
            logprobs = torch.log_softmax(log_ref + phi @ theta, dim=0)[idx][:, None]
            loss, stats = ppo_policy_loss(logprobs, old_logprobs, advantages, mask, cliprange=0.2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            clipfracs.append(stats["clipfrac"].item())
        kl_sampled = per_token_kl.sum(-1).mean().item()  # what the trainer gives the controller
        kl_ctl.update(kl_sampled, n_steps=batch_size)
        log["kl_sampled"].append(kl_sampled)
        log["beta"].append(beta)
        log["clipfrac"].append(float(np.mean(clipfracs)))
    return {k: np.array(v) for k, v in log.items()}, theta.detach()


no_penalty, _ = train_policy(FixedKLController(0.0), iterations=30)
rl_d = np.sqrt(no_penalty["kl"])
peak_rl = int(np.argmax(no_penalty["gold"]))
print(f"gold peaks at iteration {peak_rl} (sqrt KL {rl_d[peak_rl]:.2f}, gold {no_penalty['gold'][peak_rl]:.3f}); "
      f"after 30 iterations sqrt KL {rl_d[-1]:.2f}, gold {no_penalty['gold'][-1]:.3f}, "
      f"proxy {no_penalty['proxy'][-1]:.3f}")
assert no_penalty["proxy"][-1] > no_penalty["proxy"][peak_rl] + 0.5  # the proxy kept climbing after the gold peak
assert no_penalty["gold"][peak_rl] - no_penalty["gold"][-1] > 0.2  # while the gold reward fell

# %% [markdown]
# **Gao et al.'s functional forms.** With $R$ the reward gain over $\pi_{\text{ref}}$, both forms are linear in their
# coefficients, so ordinary least squares fits them: BoN on the regressors $(d, -d^2)$, RL on $(d, -d\log d)$.

# %%
def fit(d, gain, second):
    """Least squares gain ~ alpha * d - beta * second(d) over d > 0; returns (alpha, beta, R^2)."""
    keep = d > 0
    X = np.stack([d[keep], -second(d[keep])], axis=1)
    coef, *_ = np.linalg.lstsq(X, gain[keep], rcond=None)
    residual = gain[keep] - X @ coef
    return coef[0], coef[1], 1 - residual.var() / gain[keep].var()


gold_0 = gold.mean().item()  # gold reward of pi_ref (every curve starts there)
alpha_bon, beta_bon, r2_bon = fit(bon_d, bon_gold - gold_0, lambda d: d**2)
alpha_rl, beta_rl, r2_rl = fit(rl_d, no_penalty["gold"] - gold_0, lambda d: d * np.log(d))
print(f"BoN: R(d) = d ({alpha_bon:.3f} - {beta_bon:.3f} d),      R^2 = {r2_bon:.3f}")
print(f"RL:  R(d) = d ({alpha_rl:.3f} - {beta_rl:.3f} log d),  R^2 = {r2_rl:.3f}")

# %%
fig = go.Figure()
fig.add_scatter(x=bon_d, y=bon_proxy - proxy.mean().item(), mode="lines+markers", name="BoN: proxy",
                line=dict(color="#1f77b4", dash="dot"), text=[f"N = {n}" for n in Ns])
fig.add_scatter(x=bon_d, y=bon_gold - gold_0, mode="lines+markers", name="BoN: gold", line=dict(color="#1f77b4"),
                text=[f"N = {n}" for n in Ns])
fig.add_scatter(x=rl_d, y=no_penalty["proxy"] - proxy.mean().item(), mode="lines", name="PPO: proxy",
                line=dict(color="#d62728", dash="dot"))
fig.add_scatter(x=rl_d, y=no_penalty["gold"] - gold_0, mode="lines", name="PPO: gold", line=dict(color="#d62728"))
d_grid = np.linspace(0.01, max(bon_d.max(), rl_d.max()), 100)
fig.add_scatter(x=d_grid, y=d_grid * (alpha_bon - beta_bon * d_grid), mode="lines", name="fit d(α − β d)",
                line=dict(color="#1f77b4", width=1, dash="dash"))
fig.add_scatter(x=d_grid, y=d_grid * (alpha_rl - beta_rl * np.log(d_grid)), mode="lines", name="fit d(α − β log d)",
                line=dict(color="#d62728", width=1, dash="dash"))
fig.update_layout(title="Over-optimisation: reward gain against √KL (the shape Gao et al. 2022 report)",
                  xaxis_title="d = √KL(π ‖ π_ref)  (√nats)", yaxis_title="reward − reward under π_ref",
                  height=460)
fig.show()

# %% [markdown]
# Both methods show the shape Gao et al. report: the proxy (dotted) climbs without end, the gold reward (solid)
# peaks and then falls below where it started. Here the cause is visible: the proxy never saw how bad very long
# answers are, so the more KL we spend on it, the more of it goes into length. As in Gao et al.'s runs, best-of-$N$
# gets more gold reward out of a given KL than RL does: BoN only reweights $\pi_{\text{ref}}$ by the proxy's *rank*,
# while the policy tilts $\pi_{\text{ref}}$ along the proxy's *direction*, which puts more of its KL into length.
# The fitted functional forms (dashed) describe both curves over this range; the pool is large enough for the
# best-of-1024 and for the PPO run's 5 nats (beyond about 6 nats the policy would sit on a handful of the 100,000
# candidates, and the numbers would describe those few, not the shape).
#
# ## 5. The adaptive KL controller
#
# The KL penalty $-\beta\log\frac{\pi}{\pi_{\text{ref}}}$ in the reward (notebook 2) limits how far the policy goes,
# but the KL a given $\beta$ produces depends on the reward scale and changes during training. Ziegler et al. (2019,
# sec. 2.2) steer $\beta$ so that the KL tracks a **target**:
#
# $$ e_t = \mathrm{clip}\Big(\frac{\mathrm{KL}_t}{\mathrm{KL}_{\text{target}}} - 1,\ -0.2,\ 0.2\Big), \qquad
#    \beta_{t+1} = \beta_t\,(1 + K_\beta\, e_t), \quad K_\beta = \frac{n_{\text{steps}}}{\text{horizon}}, $$
#
# where $\mathrm{KL}_t$ is the batch's mean per-sequence KL (sum over tokens of $k_1$) and $n_{\text{steps}}$ the number
# of samples it came from. Too much KL raises $\beta$, too little lowers it; the clip bounds a step to
# $\pm 0.2\,K_\beta$, so $\beta$ moves geometrically and never changes sign. In the trainer: `PPOConfig(adaptive_kl=True,
# kl_target=..., kl_horizon=...)`, implemented by `core.rl.AdaptiveKLController`.
#
# ### Exercise 7.3 — the adaptive KL update
#
# Write `adaptive_kl_update(beta, current_kl, target, horizon, n_steps)` returning the new $\beta$ (a float).
# **Graded** against `core.rl.AdaptiveKLController` on a sequence of KLs that exercises both clips; then the PPO run
# below is steered by *your* function.

# %%
def adaptive_kl_update(beta, current_kl, target, horizon, n_steps):
    """New beta after one batch whose mean per-sequence KL was current_kl (floats in, float out)."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 7.3: beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon)")


if SOLUTIONS:
    from solutions.nb07 import adaptive_kl_update  # noqa: F811

# %%
reference_ctl = AdaptiveKLController(init_kl_coef=0.1, target=2.0, horizon=1000)
beta_mine = 0.1
for kl_seen in [0.1, 1.0, 1.9, 2.0, 2.2, 2.5, 6.0, 40.0, 0.0]:
    beta_mine = adaptive_kl_update(beta_mine, kl_seen, 2.0, 1000, 64)
    assert_close(beta_mine, reference_ctl.update(kl_seen, n_steps=64), rtol=1e-12, atol=0)
print("Exercise 7.3: matches core.rl.AdaptiveKLController")


class MyAdaptiveKLController:
    """The controller interface the loop expects (value, update), driven by the exercise's function."""

    def __init__(self, init_kl_coef, target, horizon):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl, n_steps):
        self.value = adaptive_kl_update(self.value, current_kl, self.target, self.horizon, n_steps)
        return self.value


# %% [markdown]
# Now PPO with the KL in the reward, $\beta$ starting far too low (0.05) and a target of 1.5 nats, horizon 1,280
# samples ($K_\beta = 0.2$ per batch of 256, so $\beta$ moves by at most 4 % per iteration). Because the optimum of
# each $\beta$ is known in closed form, we can also compute the $\beta^\star$ whose optimum $\pi_{\beta^\star}$ has
# exactly the target KL, and check that the controller finds it.

# %%
def tilted(beta):
    """The KL-regularised optimum pi_beta = pi_ref exp(r_hat / beta) / Z over the pool, (M,)."""
    return torch.softmax(log_ref + proxy / beta, dim=0)


def beta_for_kl(target, lo=1e-3, hi=1e3):
    """The beta whose optimum pi_beta has KL(pi_beta || pi_ref) = target (bisection in log beta; KL falls with beta)."""
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if kl_to_ref(tilted(mid)) > target else (lo, mid)
    return math.sqrt(lo * hi)


kl_target = 1.5
beta_star = beta_for_kl(kl_target)
controlled, _ = train_policy(MyAdaptiveKLController(0.05, kl_target, horizon=1280), iterations=150)
replay = AdaptiveKLController(0.05, kl_target, 1280)  # core's controller fed the same KLs gives the same betas
assert_close(controlled["beta"][1:], np.array([replay.update(k, 256) for k in controlled["kl_sampled"][:-1]]))
late = slice(110, 150)
print(f"beta*: {beta_star:.3f}; controller's beta over the last 40 iterations {controlled['beta'][late].mean():.3f}; "
      f"exact KL {controlled['kl'][late].mean():.3f} (target {kl_target})")
assert abs(controlled["kl"][late].mean() / kl_target - 1) < 0.2
assert abs(controlled["beta"][late].mean() / beta_star - 1) < 0.2

# %%
fig = make_subplots(rows=1, cols=2, subplot_titles=("KL coefficient β", "KL(π ‖ π_ref) in nats"))
it = np.arange(len(controlled["beta"]))
fig.add_scatter(x=it, y=controlled["beta"], name="β (controller)", line=dict(color="#9467bd"), row=1, col=1)
fig.add_hline(y=beta_star, line_dash="dash", annotation_text="β* (closed form)", row=1, col=1)
fig.add_scatter(x=it, y=controlled["kl_sampled"], name="KL seen (batch mean k1)", line=dict(color="#bbbbbb"),
                row=1, col=2)
fig.add_scatter(x=it, y=controlled["kl"], name="KL (exact)", line=dict(color="#2ca02c"), row=1, col=2)
fig.add_hline(y=kl_target, line_dash="dash", annotation_text="target", row=1, col=2)
fig.update_xaxes(title_text="PPO iteration")
fig.update_layout(title="The adaptive KL controller (Ziegler et al. 2019) steering PPO to a KL target", height=400)
fig.show()

# %% [markdown]
# At first $\beta$ is so small that the policy races past the target (the KL overshoots while $\beta$ can only grow
# 4 % per step); then $\beta$ catches up, the policy is pulled back, and both settle: the KL on the target, $\beta$
# near the $\beta^\star$ computed in closed form. Note what the controller does **not** know: whether the target is a
# good KL. It holds the policy at a chosen distance from $\pi_{\text{ref}}$; picking that distance is the question
# of the next section.
#
# ## 6. A $\beta$ sweep
#
# For a fixed $\beta$ PPO converges to $\pi_\beta$, so a sweep over $\beta$ traces a curve of (KL, gold, proxy) that we
# can compute exactly. Three PPO runs with fixed $\beta$ (`FixedKLController`) check that training lands on it.

# %%
betas = np.geomspace(0.2, 5.0, 41)
sweep = {"kl": [], "gold": [], "proxy": []}
for beta in betas:
    p = tilted(float(beta))
    sweep["kl"].append(kl_to_ref(p))
    sweep["gold"].append((p * gold).sum().item())
    sweep["proxy"].append((p * proxy).sum().item())
sweep = {k: np.array(v) for k, v in sweep.items()}
best = int(np.argmax(sweep["gold"]))
print(f"best beta {betas[best]:.3f}: KL {sweep['kl'][best]:.2f}, gold {sweep['gold'][best]:.3f} "
      f"(pi_ref {gold_0:.3f}; beta = {betas[0]}: gold {sweep['gold'][0]:.3f}, proxy {sweep['proxy'][0]:.3f})")

ppo_points = {}
for beta in (0.3, 0.6, 1.5):
    run, theta = train_policy(FixedKLController(beta), iterations=80)
    ppo_points[beta] = (run["kl"][-20:].mean(), run["gold"][-20:].mean(), run["proxy"][-20:].mean())
    p = tilted(beta)
    exact = (kl_to_ref(p), (p * gold).sum().item())
    print(f"beta {beta}: PPO KL {ppo_points[beta][0]:.3f} gold {ppo_points[beta][1]:.3f}   "
          f"exact KL {exact[0]:.3f} gold {exact[1]:.3f}   theta {theta.numpy()} vs w/beta {(w / beta).numpy()}")
    assert abs(ppo_points[beta][1] - exact[1]) < 0.1 and abs(ppo_points[beta][0] - exact[0]) < 0.1 + 0.1 * exact[0]
assert 0 < best < len(betas) - 1  # an interior best beta: too small over-optimises, too large does not optimise

# %%
fig = make_subplots(rows=1, cols=2, subplot_titles=("reward against β", "the same points against √KL"))
for name, color in (("gold", "#2ca02c"), ("proxy", "#ff7f0e")):
    fig.add_scatter(x=betas, y=sweep[name], name=f"{name} (π_β, exact)", line=dict(color=color), row=1, col=1)
    fig.add_scatter(x=np.sqrt(sweep["kl"]), y=sweep[name], name=f"{name} (π_β)", line=dict(color=color),
                    showlegend=False, row=1, col=2)
    fig.add_scatter(x=list(ppo_points), y=[v[1 if name == "gold" else 2] for v in ppo_points.values()],
                    mode="markers", marker=dict(color=color, size=10, symbol="x"), name=f"{name} (PPO, fixed β)",
                    row=1, col=1)
fig.add_scatter(x=rl_d, y=no_penalty["gold"], name="gold (PPO, no penalty)", line=dict(color="#2ca02c", dash="dot"),
                row=1, col=2)
fig.add_vline(x=betas[best], line_dash="dash", annotation_text="best β", row=1, col=1)
fig.update_xaxes(type="log", title_text="β (log scale)", row=1, col=1)
fig.update_xaxes(title_text="√KL", row=1, col=2)
fig.update_yaxes(title_text="expected reward")
fig.update_layout(title="A β sweep: the KL coefficient picks a point on the gold curve", height=420)
fig.show()

# %% [markdown]
# Reading the sweep:
#
# * **Small $\beta$** (left) buys proxy reward with KL and loses gold reward: over-optimisation. **Large $\beta$**
#   keeps the policy at $\pi_{\text{ref}}$ and gains nothing. The best $\beta$ is in between, and where it lies
#   depends on how far the proxy can be trusted — which the proxy itself cannot tell you: its own reward (orange) is
#   best at the smallest $\beta$.
# * On the right, the converged $\pi_\beta$ and the *unpenalised* PPO trajectory trace nearly the same gold-vs-KL
#   curve. This is Gao et al.'s observation that the KL penalty behaves like early stopping: it chooses where on the
#   frontier training ends, it does not move the frontier.
# * In practice the gold reward is not available, so RLHF practitioners watch held-out human or stronger-model
#   evaluations and the KL, set $\beta$ (or a KL target) conservatively, and retrain the reward model on samples of
#   the current policy (InstructGPT's iterated data collection) so that the proxy is accurate where the policy now is.
#
# ## 7. Reward hacking in the workbench's own runs
#
# Over-optimisation is not a toy phenomenon; the runs recorded in `docs/` show its first signs.
#
# | run (recorded in) | what the proxy rewarded | what else moved |
# |---|---|---|
# | PPO detox, sentence-level toxicity reward (`docs/training.md`, "Proof that it learns") | held-out average max toxicity 0.199 → 0.072 | answers shrank from 23.6 to 11.9 tokens: a response that says less has fewer chances to be toxic, and the sentence-level reward pays per sentence |
# | PPO detox, holistic toxicity reward (same table) | 0.199 → 0.084 | perplexity under the reference rose from 50.8 to 74.6: the policy drifted towards text the bag-of-words toxicity classifier scores as clean but that reads less like the reference model |
# | shipped HH-RLHF reward model `hh-holistic` (`docs/reward_models.md`) | held-out pairwise accuracy 0.654 | a proxy that orders about one pair in three the wrong way; optimised hard it would be followed into exactly the regions where it is wrong |
# | notebook 4 (SimPO) | the length-normalised implicit reward | the length bias of the preference data; without normalisation the reward favours longer responses |
#
# Typical exploits, and the safeguards the workbench provides:
#
# * **Length.** Reward models often prefer longer answers (a correlate of quality in the labels); policies then pad.
#   Watch `eval/length` (PPO evaluation) and the "longer answer wins" baseline reported for every shipped reward
#   model; a length-controlled comparison (reward at equal length) separates quality from padding.
# * **Repetition and degenerate text.** A classifier that scores words, not meaning, can be satisfied by repeating
#   safe words. `eval/distinct_{1,2,3}` falls when it happens; `eval/perplexity` under the reference rises.
# * **Saying nothing.** With a penalty-only reward (toxicity), the empty or shortest answer is optimal; the KL term
#   and a minimum length (`min_new_tokens`) are the guards, and the fine-grained notebook (5) discusses how paying
#   per segment changes the incentive.
#
# The common thread: the reward model is trustworthy only near the data it was trained on, and the KL to
# $\pi_{\text{ref}}$ measures how far the policy has left it.
#
# ## Summary
#
# The proxy fitted with the exercise's BT loss equals `core.losses.bradley_terry_loss`; best-of-$N$'s KL is
# $\log N - (N-1)/N$, exactly what the pool gives; PPO (`core.losses.ppo_policy_loss`, `core.rl.kl_penalized_rewards`)
# and BoN both over-optimise the proxy, with gold reward rising then falling against $\sqrt{\mathrm{KL}}$; the
# exercise's adaptive update equals `core.rl.AdaptiveKLController` and drives $\beta$ to the closed-form $\beta^\star$
# of the target KL; fixed-$\beta$ PPO lands on the closed-form $\pi_\beta$.

# %%
assert_close(proxy_bt_loss(w, phi[train_chosen], phi[train_rejected]),
             bradley_terry_loss(phi[train_chosen] @ w, phi[train_rejected] @ w))
np.testing.assert_allclose(best_of_n_kl(Ns), exact_kl, rtol=2e-3, atol=1e-9)
assert bon_gold[peak] > bon_gold[-1] + 0.5 and no_penalty["gold"][peak_rl] > no_penalty["gold"][-1] + 0.2
assert abs(controlled["kl"][late].mean() / kl_target - 1) < 0.2
print("all checks passed")
