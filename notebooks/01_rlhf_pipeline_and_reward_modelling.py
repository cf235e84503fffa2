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
# # 1. The RLHF pipeline and reward modelling
#
# **What this notebook is.** The three steps of InstructGPT (Ouyang et al. 2022, "Training language models to
# follow instructions with human feedback"), then a close look at step 2: what form human feedback takes, the
# Bradley–Terry model of pairwise preferences, the $\binom K2$ ranking loss (InstructGPT eq. 1), a synthetic data
# set whose true reward is known (and recovered), and the workbench's own reward model, a linear head on the
# last-token features of SmolLM2-135M-Instruct, trained on 500 real Anthropic HH-RLHF pairs and tested on 200 others.
#
# **Learning goals.** After this notebook you can
# 1. name the data, the loss and the model of each step: SFT → reward model → RL;
# 2. say why InstructGPT asks for 1–7 ratings *and* a $K$-way ranking but trains on comparisons, and why pairwise
#    comparisons are the more reliable signal;
# 3. derive the Bradley–Terry probability $\sigma(r_w - r_l)$ from a pairwise choice, and its loss and gradient
#    (exercise 1.1); go from one pair to the $\binom K2$ loss of a ranking (exercise 1.2);
# 4. fit a Bradley–Terry reward by maximum likelihood and check that it recovers a known reward, up to what noisy
#    labels allow (exercise 1.3);
# 5. train `core`'s reward model (frozen backbone, last-token features, linear score head), with the trainer's
#    defaults and with an L2 penalty chosen by cross-validation, and read its held-out accuracy against the number of
#    training pairs and a "longer response wins" baseline, with 95% intervals, honestly.
#
# **What it leaves out.** Fine-tuning the backbone (a few hours on a CPU; `python -m core.trainers.reward
# --no-freeze-backbone` on a GPU), reward normalisation, and the RL step (notebook 2). Notebook 8 looks at the human
# feedback data itself (formats, agreement between annotators).
#
# **How to run.** `.venv/bin/jupyter lab notebooks/` from the project root (see `notebooks/README.md`). The real pairs
# are read from `../shared/data/hh_rlhf/` (see its README); without it the notebook uses the 10 pairs of the built-in
# demo set and says so. The cost is one forward pass of SmolLM2-135M over 1,400 texts of at most 64 tokens (a few
# minutes on two CPU cores); the features are then kept in `cache_dir()/reward_features/` so that later runs take
# seconds (delete the file to recompute). *Content warning:* HH-RLHF "harmless" dialogues contain offensive and
# harmful requests by design.

# %%
import os

SOLUTIONS = os.environ.get("RLHF_WORKBENCH_SOLUTIONS", "0") == "1"  # True: the exercises use the reference solutions
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math
import random
import time

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
import transformers
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from torch.testing import assert_close

from core import data
from core.feedback.train import load_features, response_features, save_features
from core.logprobs import build_completion_mask, completion_logprobs, sequence_logprobs
from core.losses import bradley_terry_loss, ranking_loss
from core.models import DEFAULT_MODEL, load_causal_lm, load_reward_model, load_tokenizer
from core.paths import cache_dir, shared_data_dir
from core.rewards.preference_rm import backbone_and_head, encode, format_pair, sequence_scores
from core.trainers.reward import RewardConfig, batch_schedule

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
torch.manual_seed(0)

# %% [markdown]
# ## 1. Three steps: SFT → reward model → RL
#
# | step | data | model | loss | in `core` |
# |---|---|---|---|---|
# | 1. supervised fine-tuning (SFT) | prompts with human-written demonstrations $(x, y)$ | the pretrained LM $\pi$ | $-\frac{1}{\lvert y\rvert}\sum_t\log\pi(y_t\mid x, y_{<t})$ | `completion_logprobs`, `sequence_logprobs` |
# | 2. reward model (RM) | prompts with $K$ responses ranked by labellers | the SFT model with a scalar head, $r_\theta(x, y)$ | eq. 1 below | `bradley_terry_loss`, `ranking_loss`, `core.trainers.reward` |
# | 3. RL (PPO-ptx) | prompts only; responses are sampled | the policy, initialised from SFT | eq. 2 (notebook 2) | `core.rl`, `ppo_policy_loss`, ... |
#
# The reward model turns thousands of human comparisons into a function that can score any number of new
# samples; the RL step then maximises that score while a KL penalty keeps the policy near the SFT model, where
# the reward model is trustworthy.
#
# **Loading the real pairs.** `core.data.load_hh_rlhf` reads the HH-RLHF harmless-base pairs: each line holds two
# whole dialogues that share everything up to the last `"\n\nAssistant:"`; the prompt is the text up to and
# including it, the response the rest. Pairs whose two dialogues differ before that point, or with an empty response,
# are dropped and counted. The split is `core.data.split`, the one every trainer uses: grouped by prompt (no prompt on
# both sides), deterministic by seed; 200 held-out pairs, then the first 500 training pairs.

# %%
N_TRAIN, N_HELD_OUT, MAX_LENGTH = 500, 200, 64  # pairs; tokens per prompt + response (the end is kept)
HAVE_HH = (shared_data_dir() / "hh_rlhf" / "harmless_base.jsonl.gz").is_file()
if HAVE_HH:
    records = data.load_hh_rlhf()
    print(f"read {len(records)} HH-RLHF pairs from {shared_data_dir() / 'hh_rlhf'} (dropped: {records.skipped})")
    train_all, held_out = data.split(records, eval_size=N_HELD_OUT, seed=0)  # grouped by "prompt"
    train = train_all[:N_TRAIN]
else:
    records = data.load_demo_set().preferences
    print(f"{shared_data_dir() / 'hh_rlhf'} not found: FALLING BACK to the {len(records)} pairs of the built-in demo "
          "set (core/demo_data). The held-out figures below are then far too small to mean anything.")
    train, held_out = data.split(records, eval_size=3, seed=0)
assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}  # grouped: no prompt on both sides
print(f"{len(train)} training pairs, {len(held_out)} held-out pairs")
example = held_out[0]
print(f"example prompt (last 200 characters): {example['prompt'][-200:]!r}\n"
      f"chosen:   {example['chosen'][:160]!r}\nrejected: {example['rejected'][:160]!r}")

# %% [markdown]
# Step 1 is ordinary next-token prediction on the response only. As a first check of the plumbing, the SFT loss of
# SmolLM2-135M-Instruct on one real response computed with `core.logprobs` equals the loss Hugging Face computes
# when the prompt tokens are labelled `-100` (ignored).

# %%
tokenizer = load_tokenizer(DEFAULT_MODEL)
lm = load_causal_lm(DEFAULT_MODEL, device="cpu")  # the real SmolLM2-135M-Instruct, fp32
lm.requires_grad_(False)
prompt_ids = tokenizer(example["prompt"], add_special_tokens=False).input_ids[-48:]  # keep the end of a long dialogue
response_ids = tokenizer(" " + example["chosen"], add_special_tokens=False).input_ids[:48]
input_ids = torch.tensor([prompt_ids + response_ids])  # (1, T)
attention_mask = torch.ones_like(input_ids)
completion_mask = build_completion_mask(torch.tensor([len(prompt_ids)]), attention_mask)  # (1, T)
labels = input_ids.masked_fill(completion_mask == 0, -100)  # HF ignores -100 in its loss
with torch.no_grad():
    out = lm(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
per_token_logps = completion_logprobs(out.logits, input_ids, completion_mask)  # (1, T)
sft_loss = -sequence_logprobs(per_token_logps, completion_mask, average=True)  # (1,)
assert_close(sft_loss[0], out.loss)
print(f"SFT loss on the chosen response: {sft_loss.item():.4f} nats/token (Hugging Face: {out.loss.item():.4f})")
del lm, out

# %% [markdown]
# ## 2. What form does human feedback take? Ratings, rankings, comparisons
#
# InstructGPT's labellers do two things for each prompt (Ouyang et al. 2022, sec. 3.4 and Appendix B): they **rate**
# each of the $K$ responses on a 1–7 Likert scale (with yes/no flags such as "fails to follow the instruction" or
# "contains sexual content"), and then **rank** the $K = 4$ to $9$ responses from best to worst. Only the ranking
# trains the reward model. Anthropic's HH-RLHF (Bai et al. 2022) goes further and asks for a single **pairwise**
# choice between two responses.
#
# Why comparisons rather than ratings:
# * **No shared scale is needed.** One labeller's 5 is another's 3, and a labeller's own scale drifts over a session.
#   If labeller $a$ reports $s_a(y) = \mu_a + \sigma_a\,u(y)$ for a true quality $u$, then any offset $\mu_a$ and
#   spread $\sigma_a > 0$ cancel from "is $y_1$ better than $y_2$?", but not from the rating itself.
# * **Relative judgements are easier and more repeatable** than absolute ones: people agree more on which of two
#   answers is better than on how good one answer is (notebook 8 measures this).
# * **It is exactly what the model needs.** Only reward *differences* are identified (section 3), and the
#   Bradley–Terry likelihood of a comparison is a clean, well-posed loss.
#
# A $K$-way ranking is the efficient middle ground: one judgement per prompt yields $\binom K2$ comparisons (6 for
# $K = 4$, 36 for $K = 9$), though with correlated pairs (section 4).
#
# ## 3. Bradley–Terry: from a pairwise choice to a loss
#
# A labeller sees a prompt $x$ and two responses and picks one. Model that choice with a latent scalar "quality"
# per response, the reward $r(x, y)$, and say each response wins with probability proportional to $e^{r}$
# (Bradley & Terry 1952):
#
# $$
# p(y_w \succ y_l \mid x) = \frac{e^{r(x,y_w)}}{e^{r(x,y_w)} + e^{r(x,y_l)}} = \frac{1}{1 + e^{-(r(x,y_w) - r(x,y_l))}} = \sigma\big(r(x,y_w) - r(x,y_l)\big).
# $$
#
# The same formula follows from a random-utility story: the labeller perceives $u = r + \varepsilon$ with independent
# standard Gumbel noise $\varepsilon$ and picks the larger $u$; the difference of two Gumbels is logistic, so
# $p(u_w > u_l) = \sigma(r_w - r_l)$ (checked by simulation below). Only **differences** of rewards matter: adding any
# constant $c(x)$ to all responses of a prompt changes nothing. A reward model is identified only up to that shift,
# which is why InstructGPT normalises the RM so that demonstrations score 0 on average before RL.
#
# Fitting $r_\theta$ by maximum likelihood on comparisons $(x, y_w, y_l)$ gives the loss
#
# $$
# \ell(\theta) = -\log\sigma\big(r_\theta(x,y_w) - r_\theta(x,y_l)\big), \qquad
# \frac{\partial\ell}{\partial r_w} = -\sigma(r_l - r_w) = -\frac{\partial\ell}{\partial r_l}.
# $$
#
# The gradient is large when the model orders the pair wrongly and vanishes as the margin grows.

# %%
g = torch.Generator().manual_seed(0)
r_w, r_l, n = 1.3, 0.4, 400_000
gumbel = -torch.log(-torch.log(torch.rand(2, n, generator=g)))  # (2, n) standard Gumbel noise
simulated = ((r_w + gumbel[0]) > (r_l + gumbel[1])).double().mean().item()
print(f"simulated p(y_w wins) = {simulated:.4f}   sigma(r_w - r_l) = {torch.sigmoid(torch.tensor(r_w - r_l)).item():.4f}")
assert abs(simulated - torch.sigmoid(torch.tensor(r_w - r_l)).item()) < 0.005

# %% [markdown]
# ### Exercise 1.1 — the Bradley–Terry loss
#
# Write `bt_loss(chosen_rewards, rejected_rewards)`: the per-pair loss $-\log\sigma(r_w - r_l)$ for `(B,)` tensors.
# It must stay finite when the model is very wrong (a margin of $-100$: use `F.logsigmoid`, not `log(sigmoid(.))`).
# Graded against `core.losses.bradley_terry_loss`, the value $\log 2$ for a tie, shift invariance and the gradient
# formula above.

# %%
def bt_loss(chosen_rewards, rejected_rewards):
    """chosen_rewards, rejected_rewards: (B,) -> (B,) losses -log sigmoid(r_w - r_l)."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 1.1: write bt_loss")


if SOLUTIONS:
    from solutions.nb01 import bt_loss  # noqa: F811

# %%
chosen_rewards = torch.tensor([1.3, 0.0, -2.0, 5.0, -60.0], requires_grad=True)
rejected_rewards = torch.tensor([0.4, 0.0, 1.0, -5.0, 40.0], requires_grad=True)
losses = bt_loss(chosen_rewards, rejected_rewards)
assert_close(losses, bradley_terry_loss(chosen_rewards, rejected_rewards))
assert_close(losses[1], torch.tensor(math.log(2)))  # a tie costs log 2
assert_close(losses[4], torch.tensor(100.0))  # very wrong: the loss is the margin, not inf
assert_close(bt_loss(chosen_rewards + 7.0, rejected_rewards + 7.0), losses)  # shift invariance
losses.sum().backward()
assert_close(chosen_rewards.grad, -torch.sigmoid(rejected_rewards - chosen_rewards).detach())
assert_close(rejected_rewards.grad, torch.sigmoid(rejected_rewards - chosen_rewards).detach())
print("Exercise 1.1 passed. losses:", losses.detach().numpy().round(4), " dloss/dr_w:", chosen_rewards.grad.numpy().round(4))

# %% [markdown]
# ## 4. From pairs to rankings: the $\binom K2$ loss (InstructGPT eq. 1)
#
# A ranking $y_1 \succ y_2 \succ \dots \succ y_K$ implies $\binom K2$ pairwise comparisons, all of which the reward
# model is trained on:
#
# $$
# \text{loss}(\theta) = -\frac{1}{\binom K2}\,\mathbb E_{(x, y_w, y_l)\sim D}\Big[\log\sigma\big(r_\theta(x,y_w) - r_\theta(x,y_l)\big)\Big].
# $$
#
# The comparisons from one prompt are strongly correlated (each response appears in $K-1$ of them). Shuffled into
# the data set as separate examples, they made the reward model overfit within one epoch; InstructGPT instead puts
# all $\binom K2$ comparisons of a prompt in **one** batch element, with one forward pass per response ($K$ instead of
# $2\binom K2$), averaged with weight $1/\binom K2$. (The full likelihood of a ranking would be the Plackett–Luce
# model, notebook 3; the pairwise average is what InstructGPT uses.) For $K = 2$ it is Bradley–Terry.
#
# ### Exercise 1.2 — the $\binom K2$ ranking loss
#
# Write `k_choose_2_loss(rewards, mask=None)`: `rewards` is `(P, K)`, each row ordered best first; `mask` (optional,
# `(P, K)`) marks the responses present (a prompt may have fewer than $K$; the present ones are still best first).
# Return the `(P,)` mean of $-\log\sigma(r_i - r_j)$ over the present pairs $i$ above $j$ (0 for a prompt with fewer
# than two). A loop over pairs is fine. Graded against `core.losses.ranking_loss`, and for $K = 2$ against
# Bradley–Terry.

# %%
def k_choose_2_loss(rewards, mask=None):
    """rewards: (P, K) best first; mask: optional (P, K) -> (P,) mean pair loss per prompt."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 1.2: write k_choose_2_loss")


if SOLUTIONS:
    from solutions.nb01 import k_choose_2_loss  # noqa: F811

# %%
ranked_rewards = torch.tensor([[2.0, 1.1, 0.3, -0.5],   # a ranking the RM agrees with
                               [0.0, 0.5, 1.0, 1.5],    # a ranking the RM has backwards
                               [1.0, -1.0, 0.7, 9.9],   # only 3 responses (the 4th is padding)
                               [0.3, 5.0, 0.0, 0.0]])   # only 1 response: no pair
present = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]])
assert_close(k_choose_2_loss(ranked_rewards, present), ranking_loss(ranked_rewards, present))
assert_close(k_choose_2_loss(ranked_rewards), ranking_loss(ranked_rewards))
assert_close(k_choose_2_loss(ranked_rewards[:, :2]), bradley_terry_loss(ranked_rewards[:, 0], ranked_rewards[:, 1]))
big = torch.randn(6, 9, dtype=torch.float64)
assert_close(k_choose_2_loss(big), ranking_loss(big))
print("Exercise 1.2 passed. ranking losses per prompt:", k_choose_2_loss(ranked_rewards, present).numpy().round(4))

# %% [markdown]
# ## 5. A synthetic data set with a known reward
#
# Before fitting real data, check that maximum likelihood does what it promises. Give every response a feature
# vector $\phi(y) \in \mathbb R^{d}$ and a **true** linear reward $r^*(y) = w^{*\top}\phi(y)$; draw pairs and let a
# simulated labeller prefer $y_a$ with probability $\sigma(r^*(y_a) - r^*(y_b))$, exactly the Bradley–Terry model.
# Then the maximum-likelihood $\hat w$ must approach $w^*$ as the number of pairs grows (the model is correctly
# specified, and the loss is convex in $w$: a logistic regression on $\phi(y_w) - \phi(y_l)$ without intercept).
#
# Two things to notice. Labels are **noisy by construction**: even the true reward predicts only the fraction
# $\mathbb E[\sigma(\lvert r^*_a - r^*_b\rvert)]$ of the labels, well below 1; held-out accuracy of any reward model is
# bounded by that, as it is for human labels. And at the maximum the gradient vanishes,
# $\sum_i \big(1 - \sigma(\hat w^\top \Delta_i)\big)\Delta_i = 0$ with $\Delta_i = \phi(y_{w,i}) - \phi(y_{l,i})$: a closed-form
# condition we can check.
#
# ### Exercise 1.3 — fit a Bradley–Terry reward
#
# Write `fit_bradley_terry(x_chosen, x_rejected)`: given `(N, d)` features of preferred and dispreferred responses,
# return the maximum-likelihood `w` (`(d,)`) of the linear reward $r(y) = w^\top\phi(y)$ (full-batch gradient
# descent, Adam or L-BFGS; mind convergence). Graded by the stationarity condition above and by recovery of $w^*$:
# cosine similarity above 0.98 and relative error below 0.15 with 20,000 pairs.

# %%
def fit_bradley_terry(x_chosen, x_rejected):
    """x_chosen, x_rejected: (N, d) features -> (d,) maximum-likelihood weights of r(y) = w . phi(y)."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 1.3: write fit_bradley_terry")


if SOLUTIONS:
    from solutions.nb01 import fit_bradley_terry  # noqa: F811

# %%
g = torch.Generator().manual_seed(1)
d, n_pairs = 8, 20_000
w_true = torch.randn(d, generator=g, dtype=torch.float64)  # the known reward r*(y) = w_true . phi(y)
phi_a, phi_b = torch.randn(n_pairs, d, generator=g, dtype=torch.float64), torch.randn(n_pairs, d, generator=g, dtype=torch.float64)
a_wins = torch.rand(n_pairs, generator=g, dtype=torch.float64) < torch.sigmoid((phi_a - phi_b) @ w_true)  # BT labels
x_w, x_l = torch.where(a_wins[:, None], phi_a, phi_b), torch.where(a_wins[:, None], phi_b, phi_a)

w_hat = fit_bradley_terry(x_w, x_l).double()
delta = x_w - x_l
stationarity = ((1 - torch.sigmoid(delta @ w_hat))[:, None] * delta).mean(0)  # gradient of the mean loss, (d,)
cosine = F.cosine_similarity(w_hat, w_true, dim=0).item()
relative_error = ((w_hat - w_true).norm() / w_true.norm()).item()
print(f"|gradient| at w_hat = {stationarity.norm().item():.2e}; cosine(w_hat, w*) = {cosine:.4f}; "
      f"|w_hat - w*| / |w*| = {relative_error:.3f}")
assert stationarity.norm() < 1e-3, "not at the maximum of the likelihood: fit longer"
assert cosine > 0.98 and relative_error < 0.15, "the known reward was not recovered"

# recovery against the number of pairs, and the accuracy ceiling that noisy labels set
ceiling = torch.sigmoid(((phi_a - phi_b) @ w_true).abs()).mean().item()  # expected accuracy of the TRUE reward
true_acc = ((delta @ w_true) > 0).double().mean().item()
recovery = [(n, F.cosine_similarity(fit_bradley_terry(x_w[:n], x_l[:n]).double(), w_true, dim=0).item())
            for n in (50, 200, 1000, 5000, 20_000)]
print("pairs -> cosine(w_hat, w*):", ", ".join(f"{n}: {c:.3f}" for n, c in recovery))
print(f"accuracy of the TRUE reward on its own labels: {true_acc:.3f} (expected {ceiling:.3f}): the ceiling for any model")
assert recovery[0][1] < recovery[-1][1]  # more pairs, better recovery
assert abs(true_acc - ceiling) < 0.01 and ceiling < 0.95

# %% [markdown]
# ## 6. The workbench's reward model on real HH-RLHF pairs
#
# `core.trainers.reward` builds the reward model the way InstructGPT does, from a language model with a scalar
# head: $r_\theta(x, y) = w^\top h_T(x \oplus y)$, where $h_T$ is the backbone's last hidden state at the **last
# token** of prompt + response (`core.rewards.preference_rm.sequence_scores`; a causal model's last token has seen the
# whole text). With the default `freeze_backbone=True` only the head $w$ (576 numbers for SmolLM2-135M) is trained,
# on features computed once: exactly what this section does, with the trainer's own pieces:
#
# 1. texts: `format_pair(tokenizer, prompt, response, "text", " ")`, tokenised by `encode` with truncation from the
#    **left** to `MAX_LENGTH` tokens (the end of the response, where the score is read, survives);
# 2. features: `core.feedback.train.response_features`, the last-token hidden state of the frozen backbone, batched
#    by length; kept on disk so a rerun does not repeat the forward passes;
# 3. training: the model's own score head, `bradley_terry_loss` on minibatches of 32 pairs from
#    `core.trainers.reward.batch_schedule`, AdamW with the trainer's defaults (`RewardConfig`), and a regularised fit;
# 4. evaluation: held-out pairwise accuracy with a 95% Wilson interval, against the "longer response wins" rule.
#
# `docs/reward_models.md` reports 0.650 ± 0.085 for this set-up (480 training / 120 held-out pairs, 96 tokens); here
# the texts are cut to 64 tokens, which keeps the one forward pass over 1,400 texts to a few minutes on a CPU.

# %%
reward_model = load_reward_model(DEFAULT_MODEL, device="cpu", dtype=torch.float32)  # backbone + a fresh score head
reward_model.requires_grad_(False)
_, score_head = backbone_and_head(reward_model)  # nn.Linear(576, 1, bias=False)


def texts_of(pairs, side):
    return [format_pair(tokenizer, r["prompt"], r[side], "text", " ")[0] for r in pairs]


feature_file = cache_dir() / "reward_features" / f"nb01-{DEFAULT_MODEL.replace('/', '_')}-{MAX_LENGTH}.safetensors"


def cached_features(texts):
    """(N, 576) last-token features of texts (core's response_features), read from and written to feature_file with
    core's feature cache (`load_features` / `save_features`: keyed by each text's sha256, written atomically)."""
    cache = {}
    load_features(feature_file, texts, cache)
    n_new = len(set(texts) - set(cache))
    t0 = time.perf_counter()
    feats, _ = response_features(reward_model, tokenizer, texts, MAX_LENGTH, 32, "cpu", cache)
    if n_new:
        try:
            save_features(feature_file, cache)
        except OSError as exc:  # a read-only cache: keep going without it
            print(f"(features not saved: {exc})")
    print(f"features of {len(texts)} texts: {n_new} computed in {time.perf_counter() - t0:.1f} s, "
          f"{len(set(texts)) - n_new} read from {feature_file}")
    return feats


held_texts_c, held_texts_r = texts_of(held_out, "chosen"), texts_of(held_out, "rejected")
feats = cached_features(held_texts_c + held_texts_r + texts_of(train, "chosen") + texts_of(train, "rejected"))
m, n = len(held_out), len(train)
held_c, held_r, train_c, train_r = feats[:m], feats[m:2 * m], feats[2 * m:2 * m + n], feats[2 * m + n:]
print(f"features: train {tuple(train_c.shape)} x 2, held-out {tuple(held_c.shape)} x 2")

# %% [markdown]
# The features are what `core`'s scorer sees: for a few held-out texts, the score head applied to the cached feature
# equals `sequence_scores` on a fresh forward pass of the whole reward model (this would catch a stale cache, a wrong
# truncation side, or a feature read at a padding position).

# %%
check = encode(tokenizer, held_texts_c[:4], MAX_LENGTH)
with torch.no_grad():
    fresh = sequence_scores(reward_model, check["input_ids"], check["attention_mask"])  # (4,), core's scoring path
    assert_close(score_head(held_c[:4]).squeeze(-1), fresh, atol=1e-4, rtol=1e-4)
print("cached features reproduce core's sequence_scores:", fresh.numpy().round(4))

# %% [markdown]
# **Training the head, and accuracy against the number of training pairs.** One head per training-set size (nested
# subsets of the 500 pairs), held-out accuracy on the same 200 pairs, two ways:
#
# * **the trainer's defaults**: AdamW on raw features with `RewardConfig`'s learning rate, weight decay, batch size
#   and gradient clipping, for the 320 optimizer steps of a default run on 500 pairs (smaller sets get more epochs);
# * **regularised maximum likelihood**: the features standardised with training statistics, and the Bradley–Terry
#   likelihood with an L2 penalty (a logistic regression on feature differences, both orders, no intercept), its
#   strength chosen by 5-fold cross-validation **on the training pairs only**, as the shipped heads of
#   `docs/reward_models.md` are built. The fitted weights are folded back into the score head ($w / s$, for feature
#   standard deviations $s$; the mean shift cancels in every difference), so it is still `core`'s reward model.
#
# (We added the penalised fit after seeing the trainer's defaults overfit on small sets; the choice of the penalty
# never sees the held-out pairs.)

# %%
config = RewardConfig()  # the trainer's defaults: learning rate, weight decay, batch size, max_grad_norm
STEPS = config.num_epochs * math.ceil(500 / config.batch_size)  # 320 optimizer steps
C_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # inverse L2 strengths tried by cross-validation


def train_head(x_c, x_r, seed=0):
    """A fresh score head trained with the Bradley-Terry loss on (x_c, x_r) for STEPS minibatches, like core.trainers.reward."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(x_c.shape[1], 1, bias=False)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    epochs = math.ceil(STEPS / math.ceil(len(x_c) / config.batch_size))
    for idx in batch_schedule(len(x_c), config.batch_size, epochs, seed)[:STEPS]:
        loss = bradley_terry_loss(head(x_c[idx]).squeeze(-1), head(x_r[idx]).squeeze(-1)).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), config.max_grad_norm)
        optimizer.step()
    return head


def fit_regularised_head(x_c, x_r):
    """A score head from L2-regularised Bradley-Terry on standardised features, C chosen by 5-fold CV; (head, C)."""
    sd = torch.cat([x_c, x_r]).std(0) + 1e-6  # (576,)
    diff = ((x_c - x_r) / sd).double().numpy()  # (N, 576)
    X, y = np.concatenate([diff, -diff]), np.r_[np.ones(len(diff)), np.zeros(len(diff))]
    groups = np.r_[np.arange(len(diff)), np.arange(len(diff))]  # both orders of a pair in the same fold
    folds = GroupKFold(n_splits=5)
    cv = {C: cross_val_score(LogisticRegression(C=C, fit_intercept=False, max_iter=5000), X, y, groups=groups, cv=folds).mean()
          for C in C_GRID}
    best = max(C_GRID, key=lambda C: (round(cv[C], 6), -C))  # the strongest penalty among the best
    w = LogisticRegression(C=best, fit_intercept=False, max_iter=5000).fit(X, y).coef_[0]
    head = torch.nn.Linear(x_c.shape[1], 1, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w).float()[None] / sd)  # r = (w / sd) . h
    return head, best


def wilson(k, n, z=1.96):
    """95% Wilson interval of a proportion k / n."""
    p = k / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def accuracies(head, idx):
    with torch.no_grad():
        train_acc = (head(train_c[idx]) > head(train_r[idx])).float().mean().item()
        hits = int((head(held_c) > head(held_r)).sum())
    return train_acc, hits / len(held_out), *wilson(hits, len(held_out))


order = list(range(len(train)))
random.Random(0).shuffle(order)
sizes = [s for s in (25, 50, 100, 200, 350, 500) if s <= len(train)] or [len(train)]
curve, default_curve = [], []  # (size, train accuracy, held-out accuracy, low, high)
for size in sizes:
    idx = torch.tensor(order[:size])
    default_curve.append((size, *accuracies(train_head(train_c[idx], train_r[idx]), idx)))
    if size >= 10:
        head, C = fit_regularised_head(train_c[idx], train_r[idx])
        curve.append((size, *accuracies(head, idx)))
    else:  # too few pairs for 5-fold cross-validation
        head, C = train_head(train_c[idx], train_r[idx]), None
        curve.append(default_curve[-1])
    print(f"{size:4d} training pairs: held-out {curve[-1][2]:.3f} (95% interval {curve[-1][3]:.3f} to {curve[-1][4]:.3f}), "
          f"train {curve[-1][1]:.3f}, C = {C}; trainer defaults: held-out {default_curve[-1][2]:.3f}, train {default_curve[-1][1]:.3f}")

length = lambda t: len(tokenizer(t, add_special_tokens=False).input_ids)  # noqa: E731
longer_hits = sum(length(r["chosen"]) > length(r["rejected"]) for r in held_out)
longer_acc, longer_ci = longer_hits / len(held_out), wilson(longer_hits, len(held_out))
print(f"baseline 'the longer response wins' on the held-out pairs: {longer_acc:.3f} "
      f"(95% interval {longer_ci[0]:.3f} to {longer_ci[1]:.3f})")

# %%
fig = go.Figure()
fig.add_trace(go.Scatter(x=[c[0] for c in curve], y=[c[2] for c in curve], mode="lines+markers",
                         name="held-out, L2 by cross-validation (95% Wilson interval)",
                         error_y=dict(type="data", symmetric=False, array=[c[4] - c[2] for c in curve],
                                      arrayminus=[c[2] - c[3] for c in curve])))
fig.add_trace(go.Scatter(x=[c[0] for c in curve], y=[c[1] for c in curve], mode="lines+markers",
                         name="training, L2 by cross-validation", line=dict(dash="dot")))
fig.add_trace(go.Scatter(x=[c[0] for c in default_curve], y=[c[2] for c in default_curve], mode="lines+markers",
                         name="held-out, trainer defaults", line=dict(color="firebrick")))
fig.add_trace(go.Scatter(x=[c[0] for c in default_curve], y=[c[1] for c in default_curve], mode="lines+markers",
                         name="training, trainer defaults", line=dict(color="firebrick", dash="dot")))
fig.add_hrect(y0=longer_ci[0], y1=longer_ci[1], fillcolor="grey", opacity=0.15, line_width=0)
fig.add_hline(y=longer_acc, line_dash="dash", line_color="grey", annotation_text="'the longer response wins'")
fig.add_hline(y=0.5, line_color="black", line_width=1, annotation_text="chance", annotation_position="bottom right")
fig.update_layout(title=f"Reward model on frozen SmolLM2-135M last-token features: {len(held_out)} held-out HH-RLHF pairs",
                  xaxis_title="training pairs", yaxis_title="pairwise accuracy", xaxis_type="log",
                  yaxis_range=[0.3, 1.02], width=900, height=480)
fig.show()

# %% [markdown]
# **Reading the result honestly.** On small sets both heads fit their training pairs (almost) perfectly and stay
# near chance on the held-out pairs: 576 weights overfit a few hundred pairs (in our run, the trainer's defaults at
# 200 pairs: training 0.985, held-out 0.525). With 500 pairs both are above chance and above the "longer response
# wins" rule (no help here: on harmlessness the chosen response is often the shorter one, a refusal; over the whole
# file the longer response wins only 43% of the pairs): in our run 0.600 [0.53–0.67] with the trainer's defaults and
# 0.545 [0.48–0.61] with the cross-validated penalty. Regularisation did **not** reliably help: with a few hundred pairs
# the cross-validation's choice of the penalty is itself noisy (it jumps between $10^{-4}$ and $10^{-1}$ along the
# curve), and so is every point (each interval is about ±0.07 wide, and a different subset of the same size can move
# a point by as much). These numbers are below the 0.650 ± 0.085 of `docs/reward_models.md` (96 tokens, 120 held-out
# pairs; the intervals overlap). Why the reward model stays far from 1:
#
# * **500 training pairs**: InstructGPT trains its reward model on about 33k prompts' rankings;
# * **frozen features of a 135M model, cut to 64 tokens**: a real reward model fine-tunes the whole backbone
#   (InstructGPT: 6B) and reads the whole dialogue;
# * **noisy labels**: section 5 showed that even the true reward cannot predict noisy Bradley–Terry labels perfectly,
#   and harmlessness judgements are noisy (notebook 8 measures how far annotators agree).

# %%
final, final_default = curve[-1], default_curve[-1]
if HAVE_HH:
    assert len(train) >= 500 and len(held_out) >= 200
    assert final_default[3] > 0.5, "the reward model on 500 pairs should be above chance on 200 held-out pairs"
    assert min(final[2], final_default[2]) > max(longer_acc, 0.5), "both heads should beat chance and the length rule"
    at_200 = default_curve[sizes.index(200)]
    assert at_200[1] - at_200[2] > 0.3, "with 200 pairs the head should overfit: training far above held-out accuracy"
else:
    print("demo data: too few pairs for the held-out checks; they run with ../shared/data/hh_rlhf present")

# %% [markdown]
# ## Summary: the derivation equals `core`
#
# The trained head's scores of the held-out pairs, put through your Bradley–Terry and $\binom K2$ losses, equal
# `core.losses`; for $K = 2$ the ranking loss is Bradley–Terry; and the head, written into the reward model, scores a
# fresh text exactly as `core`'s `sequence_scores` does.

# %%
with torch.no_grad():
    score_head.weight.copy_(head.weight)  # the 500-pair head into the reward model
    held_rewards_c, held_rewards_r = score_head(held_c).squeeze(-1), score_head(held_r).squeeze(-1)
    fresh = sequence_scores(reward_model, check["input_ids"], check["attention_mask"])
assert_close(fresh, held_rewards_c[:4], atol=1e-4, rtol=1e-4)
assert_close(bt_loss(held_rewards_c, held_rewards_r), bradley_terry_loss(held_rewards_c, held_rewards_r))
pair_matrix = torch.stack([held_rewards_c, held_rewards_r], dim=1)  # (N, 2), chosen first
assert_close(k_choose_2_loss(pair_matrix), ranking_loss(pair_matrix))
assert_close(ranking_loss(pair_matrix), bradley_terry_loss(held_rewards_c, held_rewards_r))
print(f"held-out mean BT loss {bradley_terry_loss(held_rewards_c, held_rewards_r).mean().item():.4f}, "
      f"accuracy {(held_rewards_c > held_rewards_r).float().mean().item():.3f}; all checks passed")
