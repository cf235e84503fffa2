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
# # 6. Token-level reward redistribution (R3HF / RED)
#
# **What this notebook is.** Reward redistribution (Li et al. 2024, "R3HF: Reward Redistribution for Enhancing
# Reinforcement Learning from Human Feedback", arXiv 2411.08302, later "RED"): turn the single score of a holistic
# reward model into a reward on every token, without new labels, by reading the reward model on every prefix of the
# response. Derived, shown to be **potential-based reward shaping** (Ng et al. 1999), computed by you on a synthetic
# reward model whose per-token effects are known, checked against `core.rewards.redistribution`, applied to the
# project's shipped HH-RLHF reward model, and then the question that matters for training: when does per-token
# credit change what PPO learns?
#
# **Learning goals.** After this notebook you can
# 1. derive $r_t = R(x, y_{\le t}) - R(x, y_{<t})$ and show by telescoping that the token rewards sum to the holistic
#    score minus the prompt-only score $R(x)$ (at any length, with windowed scoring);
# 2. show that this is potential-based shaping of the sparse reward with $\Phi(s_t) = R(x, y_{<t})$, so the return
#    changes only by $\Phi$ of the start state and the optimal policy is unchanged;
# 3. explain why one forward pass of a causal reward model gives all prefix scores, and move token rewards onto the
#    policy's tokens keeping the sum;
# 4. predict when redistribution changes learning: with $\gamma = \lambda = 1$ it only changes the baseline, with
#    $\lambda < 1$ (a critic, GAE) the advantages differ, and RED with critic $V$ is sparse with critic $V + \Phi$.
#
# **Exercises.** 6.1 RED rewards from prefix scores; 6.2 potential-based shaping; 6.3 GAE with $\lambda$. Each is
# graded in the cell after it (against `core`, or against the known per-token effects).
#
# **What it leaves out.** Training a reward model and a PPO run with RED rewards (`python -m core.trainers.ppo
# --rewards NAME=redistributed:FOLDER`), and the paper's optional reshaping of $r_t$. Two reward models are used:
# a **synthetic causal** one whose score is a sum of known per-token values (so every redistributed reward can be
# checked exactly, through `core`'s one-pass and windowed code), and the **shipped HH-RLHF holistic head**
# (`core/reward_heads/hh-holistic`, a Bradley–Terry head on the answer's words and a few lexical and profanity
# features, 0.654 held-out pairwise accuracy, see `docs/reward_models.md`), in domain for the HH-RLHF reply it
# scores, for realistic numbers. Runs in seconds on CPU; no model weights are loaded (only the SmolLM2 tokenizer).
#
# **How to run.** `.venv/bin/jupyter lab notebooks/` from the project root (see `notebooks/README.md`). The HH-RLHF
# pair is read from `../shared/data/hh_rlhf/`, the QA-Feedback answer of section 8 from `../shared/data/qa_feedback/`;
# without them the notebook uses an inline pair and the built-in demo set and says so. *Content warning:* HH-RLHF
# contains harmful text by design.

# %%
import os

SOLUTIONS = os.environ.get("RLHF_WORKBENCH_SOLUTIONS", "0") == "1"  # True: the exercises use the reference solutions

# %%
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import html
import operator
import re
from types import SimpleNamespace

import pandas as pd
import plotly.graph_objects as go
import torch
import transformers
from IPython.display import HTML, display
from plotly.subplots import make_subplots
from torch.testing import assert_close

from core.data import DataError, load_demo_set, load_hh_rlhf, load_qa_feedback_spans
from core.models import TINY_MODEL, load_tokenizer
from core.rewards.align import char_to_token_index, response_token_char_spans
from core.rewards.preference_rm import encode, format_pair, score_texts
from core.rewards.redistribution import map_to_tokens, rm_token_rewards, slow_redistribution
from core.rewards.segments import sentence_spans, subsentence_spans
from core.rewards.store import load_reward_component, shipped_models_dir
from core.rewards.tensor import compute_token_rewards
from core.rl import gae

transformers.logging.set_verbosity_error()
pd.set_option("display.width", 160, "display.max_rows", 80, "display.float_format", "{:.4f}".format)
torch.manual_seed(0)

# %% [markdown]
# ## 1. From a sequence score to per-token credit
#
# A holistic reward model $R(x, y)$ scores a complete response. In PPO-RLHF (notebook 2) it becomes a sparse
# reward: $r_t = \mathbb 1[t = T]\,R(x, y)$, all on the last token, and the critic has to learn which tokens
# deserved it. RED asks the reward model itself. Read it on every prefix $y_{\le t} = (y_1, \dots, y_t)$ of the
# response; the score moves as tokens are appended, and token $t$ gets the move it causes:
#
# $$
# r_t = R(x, y_{\le t}) - R(x, y_{<t}), \qquad t = 1, \dots, T, \qquad y_{<1} = \text{the empty response}.
# $$
#
# **Sum preservation.** The sum telescopes:
#
# $$
# \sum_{t=1}^{T} r_t = \big[R(x, y_{\le 1}) - R(x, y_{<1})\big] + \big[R(x, y_{\le 2}) - R(x, y_{\le 1})\big] + \dots
# + \big[R(x, y_{\le T}) - R(x, y_{\le T-1})\big] = R(x, y) - R(x, y_{<1}).
# $$
#
# Two choices for the starting value $R(x, y_{<1})$, both in `core` (`first_token=`):
#
# * `"prompt"` (default): the score of the prompt alone, $R(x)$. Then $\sum_t r_t = R(x, y) - R(x)$. $R(x)$ depends
#   only on the prompt, so it is a **baseline**: $\mathbb E_{y\sim\pi}[\nabla_\theta\log\pi_\theta(y\mid x)\,R(x)] = 0$, the
#   expected policy gradient is unchanged, and responses to the same prompt are ranked exactly as by $R(x, y)$.
# * `"zero"`: $R(x, y_{<1}) = 0$, so $\sum_t r_t = R(x, y)$ exactly (the first token also carries $R(x)$).
#
# **A caveat on $R(x)$.** Subtracting the prompt-only score is **this project's reading of the paper**: we could not
# retrieve the method section of the R3HF preprint verbatim, and the prompt-alone baseline is the reading we
# followed (`docs/reward_models.md`, `core/rewards/redistribution.py`). The alternative, `"zero"`, is one argument
# away, and section 2 shows the two differ only in the potential of the start state, which changes no gradient.
#
# **One pass instead of $T$.** A causal transformer's hidden state at position $t$ depends only on tokens
# $\le t$. A sequence-classification head reads one position (the last token) of that state, so applying the same
# head at **every** position of one forward pass over $(x, y)$ gives $R(x, y_{\le t})$ for all $t$ at once.
#
# **At any length.** A reward model reads at most `max_length` tokens; its holistic score of a longer text is read
# on the last `max_length` tokens. `core` reads every prefix score the same way (`windowed_prefix_scores`), so
# $\sum_t r_t = R(x, y) - R(x)$ holds at any length, each $R$ being what the model reads. Section 4 checks it.
#
# ## 2. RED is potential-based reward shaping
#
# Generation is an MDP (notebook 2): the state before token $t$ is $s_t = (x, y_{<t})$, the action is $y_t$, the
# episode ends after $y_T$ (EOS) in a terminal state. Take the **potential** of a state to be the reward model's score
# of it, and zero at the end:
#
# $$
# \Phi(s_t) = R(x, y_{<t}) \quad (t = 1..T;\ \Phi(s_1) = R(x)), \qquad \Phi(s_{\text{end}}) = 0 .
# $$
#
# Ng, Harada and Russell (1999) shape a reward by adding $F(s, s') = \gamma\Phi(s') - \Phi(s)$. With $\gamma = 1$,
# on the sparse reward $r^{\text{sparse}}_t = \mathbb 1[t = T]\,R(x, y)$:
#
# $$
# r^{\text{sparse}}_t + \Phi(s_{t+1}) - \Phi(s_t) =
# \begin{cases}
# R(x, y_{\le t}) - R(x, y_{<t}) & t < T \\
# R(x, y) + 0 - R(x, y_{<T}) & t = T
# \end{cases}
# \;=\; r^{\text{RED}}_t .
# $$
#
# **RED is exactly the sparse reward shaped with $\Phi$ = the prefix score.** Consequences, from Ng et al.'s theorem:
#
# * the return from any state changes by minus its potential: $G^{\text{RED}}_t = \sum_{t' \ge t} r^{\text{RED}}_{t'}
#   = R(x, y) - \Phi(s_t) = G^{\text{sparse}}_t - \Phi(s_t)$; from the start, $R(x, y) - R(x)$;
# * so $Q^{\text{RED}}(s, a) = Q(s, a) - \Phi(s)$ and $V^{\text{RED}}(s) = V(s) - \Phi(s)$ for every policy: the
#   **advantage** $Q - V$ is unchanged, and so is the optimal policy. Redistribution cannot make the policy prefer a
#   response the holistic model ranks lower;
# * `first_token="zero"` is the same shaping with $\Phi(s_1) = 0$: the two differ only in the potential of the start
#   state, a function of the prompt alone.
#
# What shaping *can* change is how fast and how reliably a learner with a **critic** finds that optimum (sections 6
# and 7).

# %% [markdown]
# ## 3. A synthetic reward model with known per-token effects
#
# To check redistribution *exactly* we need a reward model whose per-token credit we know. The simplest causal one:
# every token id $v$ has a value $c_v$, and the score of a text is the sum of the values of its (last `max_length`)
# tokens, $R(z_{1..n}) = \sum_{i \le n} c_{z_i}$. For it, RED must return $r_t = c_{y_t}$: each token's own value.
# It is built like a Hugging Face sequence-classification model (a causal "backbone" whose hidden state at position
# $t$ is the running sum up to $t$, and a linear `score` head), so `core`'s reward-model code reads it unchanged.
#
# The values: a small harm lexicon costs $-1$ per word, refusal and care words earn $+0.5$, every other token costs
# $0.01$ (a mild length cost). Only words that are a single token of the SmolLM2 tokenizer are used, so each value
# belongs to exactly one word.

# %%
class RunningSumBackbone(torch.nn.Module):
    """Causal 'backbone': hidden state at position t = sum of the values of tokens <= t (hidden size 1)."""

    def __init__(self, token_values):
        super().__init__()
        self.values = torch.nn.Embedding.from_pretrained(token_values.float().unsqueeze(1))  # (V, 1), frozen

    def forward(self, input_ids, attention_mask=None, **kwargs):
        v = self.values(input_ids)  # (B, T, 1)
        if attention_mask is not None:
            v = v * attention_mask.unsqueeze(-1)  # padding adds nothing
        return SimpleNamespace(last_hidden_state=v.cumsum(dim=1))  # (B, T, 1): causal by construction


class SyntheticRewardModel(torch.nn.Module):
    """A scalar-head 'reward model' with known per-token effects: R(tokens) = sum of token values."""

    base_model_prefix = "model"

    def __init__(self, token_values):
        super().__init__()
        self.model = RunningSumBackbone(token_values)
        self.score = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.ones_(self.score.weight)


tokenizer = load_tokenizer(TINY_MODEL)  # SmolLM2's tokenizer (no weights needed)
HARM = ["kill", "stupid", "idiot", "hate", "dumb", "steal", "drugs", "gun", "illegal", "hurt", "crash"]
CARE = ["sorry", "cannot", "can't", "safe", "respect", "help", "understand", "careful"]
token_values = torch.full((len(tokenizer),), -0.01)
lexicon = {}
for words, value in ((HARM, -1.0), (CARE, 0.5)):
    for word in words:
        for form in (word, " " + word, word.capitalize(), " " + word.capitalize()):
            ids = tokenizer(form, add_special_tokens=False).input_ids
            if len(ids) == 1:
                token_values[ids[0]] = value
                lexicon[form] = value
synthetic = SyntheticRewardModel(token_values).requires_grad_(False)
print(f"{len(lexicon)} single-token forms have a value:")
print("  -1.0:", sorted({k.strip().lower() for k, v in lexicon.items() if v < 0}))
print("  +0.5:", sorted({k.strip().lower() for k, v in lexicon.items() if v > 0}))

# %% [markdown]
# **The reply.** An HH-RLHF harmless-base pair (prompt = the dialogue up to the last `Assistant:`): the first pair in
# file order whose rejected reply has 15–45 words and a harm word, whose chosen reply declines or refuses, and that
# the shipped HH head of section 5 ranks correctly.

# %%
hh_head = load_reward_component(shipped_models_dir() / "hh-holistic")  # HeadPreferenceReward, sequence level
DECLINES = re.compile(r"\b(sorry|can't|cannot|won't|not able|i don't)\b")
try:
    pairs = load_hh_rlhf()
    candidates = (p for p in pairs if 15 <= len(p["rejected"].split()) <= 45 and DECLINES.search(p["chosen"].lower())
                  and any(re.search(rf"\b{w}", p["rejected"].lower()) for w in HARM))
    ranked_right = lambda p: operator.gt(*hh_head.score_texts([p["prompt"]] * 2, [p["chosen"], p["rejected"]]))  # noqa: E731
    pair = next(p for p in candidates if ranked_right(p))
    print(f"HH-RLHF harmless-base pair {pair['index']} (of {len(pairs)})")
except (DataError, OSError, StopIteration) as err:
    pair = {"prompt": "\n\nHuman: How do I get back at my noisy neighbour?\n\nAssistant:",
            "rejected": "Egg his car at night, he is a stupid idiot who deserves it, and you could steal his mail too.",
            "chosen": "I'm sorry, I can't help with getting back at someone. Talking to him calmly usually works better."}
    print(f"FALLING BACK to an inline pair: {err!r}")
prompt, response = pair["prompt"], pair["rejected"]
print(f"prompt ...{prompt[-160:]!r}\nrejected {pair['rejected']!r}\nchosen   {pair['chosen']!r}")

# %% [markdown]
# ## 4. By you: RED from prefix scores
#
# Tokenise the reward model's input once (`core.rewards.preference_rm.encode`, which also returns each token's
# character span); the reward model reads `prompt + " " + response`. Response tokens are those that end after the
# response starts. For each response position $t$, run the model on the prefix `input_ids[:t+1]` alone and read the
# score at its last position: that is $R(x, y_{\le t})$. The prompt score $R(x)$ is the same on the tokens before the
# response. This is the definition, one forward pass per prefix.

# %%
fmt, separator, max_length = "text", " ", 1024
rm_text, response_start = format_pair(tokenizer, prompt, response, fmt, separator)
enc = encode(tokenizer, [rm_text], max_length)
input_ids = enc["input_ids"]  # (1, L): prompt, separator, response
token_ends = enc["offset_mapping"][0, :, 1]  # (L,) character end of each token in rm_text
response_cols = [t for t in range(input_ids.shape[1]) if token_ends[t] > response_start]  # columns of y_1..y_T


def my_prefix_score(model, t):
    """R(x, y_<=t): a fresh forward pass over input_ids[:, :t+1], score head on the last hidden state."""
    hidden = model.model(input_ids=input_ids[:, : t + 1]).last_hidden_state  # (1, t+1, H)
    return model.score(hidden[:, -1]).squeeze().item()


with torch.no_grad():
    prompt_score = my_prefix_score(synthetic, response_cols[0] - 1)  # R(x): the prompt only
    prefix_scores = [my_prefix_score(synthetic, t) for t in response_cols]  # R(x, y_<=t), t = 1..T
print(f"{len(response_cols)} response tokens; R(x) = {prompt_score:+.3f}, R(x, y) = {prefix_scores[-1]:+.3f}")

# %% [markdown]
# ### Exercise 6.1 — RED rewards from prefix scores
#
# Write `red_rewards(prefix_scores, prompt_score)`: given the list $[R(x, y_{\le 1}), \dots, R(x, y_{\le T})]$ and
# $R(x)$, return the list $[r_1, \dots, r_T]$ with $r_t = R(x, y_{\le t}) - R(x, y_{<t})$ and $R(x, y_{<1}) = R(x)$.
# **Graded** three ways: against the known per-token effects ($r_t = c_{y_t}$ for the synthetic model), against
# `core`'s reference loop `slow_redistribution`, and against `core`'s one-pass `rm_token_rewards`.

# %%
def red_rewards(prefix_scores, prompt_score):
    """prefix_scores: T floats, R(x, y_<=t) for t = 1..T; prompt_score: R(x). Returns T floats r_t."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 6.1: write red_rewards")


if SOLUTIONS:
    from solutions.nb06 import red_rewards  # noqa: F811

# %%
my_rewards = torch.tensor(red_rewards(prefix_scores, prompt_score))  # (T,)
known = token_values[input_ids[0, response_cols]]  # (T,) c_{y_t}: the effects we built in
assert_close(my_rewards, known)  # RED recovers each token's own value
core_slow = slow_redistribution(synthetic, tokenizer, prompt, response, fmt, separator, max_length)
(core_rewards,), (rm_spans,), (core_total,) = rm_token_rewards(synthetic, tokenizer, [prompt], [response], fmt, separator,
                                                               max_length)
assert_close(torch.tensor(core_slow), my_rewards)
assert_close(torch.tensor(core_rewards), my_rewards)
assert_close(my_rewards.sum(), torch.tensor(core_total - prompt_score))  # sum_t r_t = R(x, y) - R(x)
(zero_rewards,), _, _ = rm_token_rewards(synthetic, tokenizer, [prompt], [response], fmt, separator, max_length,
                                         first_token="zero")
assert_close(torch.tensor(sum(zero_rewards)), torch.tensor(core_total))  # first_token="zero": exactly R(x, y)
assert_close(torch.tensor(zero_rewards[1:]), torch.tensor(core_rewards[1:]))  # only the first token differs
print("Exercise 6.1: r_t = c_(y_t) for every token, equal to core's loop and one-pass versions")
pd.DataFrame({"token": [rm_text[response_start:][s:e] for s, e in rm_spans], "c_(y_t) built in": known.numpy(),
              "R(x, y<=t)": prefix_scores, "RED r_t": my_rewards.numpy()}).T

# %% [markdown]
# **At any length.** Now let the reward model read at most 32 tokens, fewer than prompt and reply together. Its
# holistic score is read on the last 16 tokens (`score_texts` truncates from the left), and so is every prefix score,
# so $r_t = c_{y_t} - c_{z_{t-32}}$ (the token that just left the window) and the sum still telescopes to
# $R(x, y) - R(x)$, each read on its own window: `core`'s windowed code against the definition.

# %%
L = 32
ids = input_ids[0]
window_score = lambda t: token_values[ids[max(0, t - L + 1): t + 1]].sum().item()  # noqa: E731  R(prefix ending at t)
windowed_by_hand = red_rewards([window_score(t) for t in response_cols], window_score(response_cols[0] - 1))
(windowed_core,), _, (windowed_total,) = rm_token_rewards(synthetic, tokenizer, [prompt], [response], fmt, separator, L)
assert_close(torch.tensor(windowed_core), torch.tensor(windowed_by_hand))
assert_close(torch.tensor(slow_redistribution(synthetic, tokenizer, prompt, response, fmt, separator, L)),
             torch.tensor(windowed_by_hand))
assert_close(torch.tensor(windowed_total), torch.tensor(score_texts(synthetic, tokenizer, [rm_text], L)[0]))
assert_close(torch.tensor(sum(windowed_core)), torch.tensor(windowed_total - window_score(response_cols[0] - 1)))
print(f"max_length {L}: {len(windowed_core)} token rewards, sum {sum(windowed_core):+.3f} = R(x, y) - R(x) "
      f"= {windowed_total:+.3f} - ({window_score(response_cols[0] - 1):+.3f})")

# %% [markdown]
# ### Exercise 6.2 — potential-based shaping
#
# Write `shaped_rewards(rewards, potentials)`: for one episode, `rewards` $(T,)$ and `potentials` $(T,)$ with
# `potentials[t]` $= \Phi(s_t)$, the potential of the state before token $t$, return $(T,)$
# $r'_t = r_t + \Phi(s_{t+1}) - \Phi(s_t)$ with $\Phi(s_{T+1}) = 0$ (the episode ends). **Graded**: shaping the sparse
# reward $\mathbb 1[t = T]\,R(x, y)$ with $\Phi(s_t) = R(x, y_{<t})$ must give exactly `core`'s RED rewards, and the
# shaped return from every token must be the sparse return minus $\Phi(s_t)$.

# %%
def shaped_rewards(rewards, potentials):
    """rewards, potentials: (T,) tensors (potentials[t] = Phi(s_t)). Returns (T,) r_t + Phi(s_{t+1}) - Phi(s_t)."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 6.2: write shaped_rewards")


if SOLUTIONS:
    from solutions.nb06 import shaped_rewards  # noqa: F811

# %%
T = len(response_cols)
sparse = torch.zeros(T)
sparse[-1] = core_total  # R(x, y) on the last token
potentials = torch.tensor([prompt_score] + prefix_scores[:-1])  # Phi(s_t) = R(x, y_<t)
shaped = shaped_rewards(sparse, potentials)
assert_close(shaped, torch.tensor(core_rewards))  # RED == sparse + potential-based shaping
reward_to_go = lambda r: r.flip(0).cumsum(0).flip(0)  # G_t = sum_{t' >= t} r_t'  # noqa: E731
assert_close(reward_to_go(shaped), reward_to_go(sparse) - potentials)  # G^RED_t = G_t - Phi(s_t)
assert_close(shaped_rewards(sparse, torch.zeros(T)), sparse)  # Phi = 0: nothing changes
print(f"Exercise 6.2: shaping the sparse reward with Phi = prefix score gives RED; return from the start "
      f"{reward_to_go(shaped)[0]:+.3f} = R(x, y) - Phi(s_1) = {core_total:+.3f} - ({prompt_score:+.3f})")

# %% [markdown]
# ## 5. A shipped, in-domain reward model: the HH-RLHF holistic head
#
# The synthetic model makes every number checkable; the shipped HH head makes them realistic. It is a Bradley–Terry
# model trained on HH-RLHF harmless-base pairs: a linear score on the tf-idf of the answer's words (a weight per
# word of a 1,648-word vocabulary) plus standardised answer features (log number of words and sentences, asks a
# question, declines — "sorry", "can't", "I don't" —, repeated trigrams, and the answer's profanity probability),
# 0.654 pairwise accuracy on 471 held-out pairs (`docs/reward_models.md`). Its RED component
# (`load_reward_component(folder, redistribute=True)`, `core.rewards.heads.HeadRedistributedReward`) reads $R$ on the
# response prefix ending at each **policy** token: $r_k = (R(x, y_{\le e_k}) - R(x, y_{\le e_{k-1}}))/\sigma$ with
# $R(x, y_{\le e_0}) = R(x, \text{""})$ and $\sigma$ the training-set std of its scores. No tokenizer of its own, so
# no mapping between tokenisations is needed; the sum is $(R(x, y) - R(x, \text{""}))/\sigma$.
#
# Your `red_rewards` on the head's prefix scores must give the component's values:

# %%
hh_red = load_reward_component(shipped_models_dir() / "hh-holistic", redistribute=True)  # token level
replies = {"rejected": pair["rejected"], "chosen": pair["chosen"]}
head_red, head_phi, head_spans, head_sparse = {}, {}, {}, {}
for which, reply in replies.items():
    reply_ids = tokenizer(reply, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    _, spans = response_token_char_spans(tokenizer, reply_ids)  # each policy token's characters (EOS: empty)
    tr = compute_token_rewards([prompt], [reply_ids], tokenizer, {"red": hh_red, "holistic": hh_head})
    raw = hh_head.score_texts([prompt] * (len(spans) + 1), [""] + [reply[:e] for _, e in spans])  # R(x, ""), R(x, y<=e_k)
    scores = [(v - hh_head.mean) / hh_head.std for v in raw]  # normalised as the holistic component is
    assert_close(torch.tensor(red_rewards(scores[1:], scores[0])), tr.components["red"][0])
    assert_close(tr.totals()["red"], tr.totals()["holistic"] - scores[0])  # sum = R(x, y) - R(x, "") (normalised)
    head_red[which], head_phi[which], head_spans[which] = tr.components["red"][0], torch.tensor(scores[:-1]), spans
    head_sparse[which] = tr.components["holistic"][0]  # the normalised R(x, y) on the last token
    print(f"{which:8s}: {len(spans)} policy tokens, holistic {tr.totals()['holistic'].item():+.3f}, "
          f"R(x, '') {scores[0]:+.3f}, sum of RED {tr.totals()['red'].item():+.3f}")


def token_heat_html(text, token_spans, values):
    """HTML: each token's text on a background whose colour and strength follow its value (green +, red -)."""
    top = max(abs(float(v)) for v in values) or 1.0
    out = []
    for (s, e), v in zip(token_spans, values):
        if e > s:
            colour = f"rgba(47,158,68,{abs(v) / top:.2f})" if v > 0 else f"rgba(224,49,49,{abs(v) / top:.2f})"
            out.append(f'<span style="background:{colour}" title="r = {float(v):+.4f}">{html.escape(text[s:e])}</span>')
    return f'<div style="line-height:2.0;font-size:15px;font-family:monospace">{"".join(out)}</div>'


display(HTML("".join(f"<p><b>{which}</b></p>" + token_heat_html(replies[which], head_spans[which], head_red[which].tolist())
                     for which in replies)))

# %% [markdown]
# Read the colours against the features: each word moves the score by its own learned weight (words annotators
# preferred, such as declining or redirecting ones, earn; words of complying answers cost), diluted as the answer
# grows (the tf-idf row has unit length), a full stop moves the log of the sentence count, and " sorry" also switches
# on the "declines" feature; a word that raised the profanity probability would cost. That is what a linear head on
# words and answer-level features *can* credit; it cannot say which fact is harmful. RED is only
# as good as the holistic model's prefix scores.
#
# ## 6. When per-token credit changes learning: GAE, $\lambda$ and the critic
#
# PPO does not use returns directly but GAE advantages from a critic $V$ (notebook 2):
# $\delta_t = r_t + \gamma V(s_{t+1}) - V(s_t)$, $\hat A_t = \sum_{l \ge 0} (\gamma\lambda)^l \delta_{t+l}$.
#
# ### Exercise 6.3 — GAE with $\lambda$
#
# Write `gae_loop(rewards, values, gamma, lam)` for one episode: `rewards` and `values` are $(T,)$ tensors, the value
# after the last step is 0. Return the $(T,)$ advantages with a plain backward loop
# ($\hat A_t = \delta_t + \gamma\lambda \hat A_{t+1}$). **Graded** against `core.rl.gae` on random rewards and values for
# four $(\gamma, \lambda)$.

# %%
def gae_loop(rewards, values, gamma, lam):
    """rewards, values: (T,) tensors; gamma, lam: floats. Returns (T,) GAE advantages (V after the last step = 0)."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 6.3: write gae_loop")


if SOLUTIONS:
    from solutions.nb06 import gae_loop  # noqa: F811

# %%
g = torch.Generator().manual_seed(3)
r_test, v_test = torch.randn(1, 9, generator=g), torch.randn(1, 9, generator=g)
for gamma_, lam_ in ((1.0, 1.0), (1.0, 0.95), (0.99, 0.5), (1.0, 0.0)):
    assert_close(gae_loop(r_test[0], v_test[0], gamma_, lam_), gae(r_test, v_test, torch.ones(1, 9), gamma_, lam_)[0][0])
print("Exercise 6.3: equal to core.rl.gae")

# %% [markdown]
# **RED with critic $V$ is sparse with critic $V + \Phi$.** Write the TD error of the shaped reward:
# $\delta^{\text{RED}}_t = r^{\text{sparse}}_t + \Phi(s_{t+1}) - \Phi(s_t) + V(s_{t+1}) - V(s_t)$ ($\gamma = 1$,
# $\Phi = V = 0$ after the end). That is the sparse TD error with the critic $V + \Phi$. So for **every** $\lambda$:
#
# $$
# \hat A^{\text{RED}}_t(V) = \hat A^{\text{sparse}}_t(V + \Phi) .
# $$
#
# Redistribution hands the critic the reward model's prefix score for free. What that changes depends on $\lambda$:
#
# * $\lambda = 1$: $\hat A_t = G_t - V(s_t)$, so $\hat A^{\text{RED}}_t = \hat A^{\text{sparse}}_t - \Phi(s_t)$: only the
#   **baseline** moves, by a function of the state. The expected gradient is the same; the variance may differ.
# * $\lambda < 1$: $\hat A^{\text{RED}}_t = \hat A^{\text{sparse}}_t - \Phi(s_t) + (1 - \lambda)\sum_{l \ge 1}
#   \lambda^{l-1}\Phi(s_{t+l})$. The last term depends on the tokens sampled **after** $t$: GAE bootstraps from the
#   critic, and part of the critic is now the reward model's opinion of the prefixes. The advantages, and what a
#   finite number of PPO updates learns, differ; only with a perfect critic do both lead to the same place.
#
# Checked on the HH head's numbers (the rejected reply, with a fresh critic $V \equiv 0$ and with a random one), with
# `core.rl.gae` and your `gae_loop`:

# %%
red, phi, sparse_hh = head_red["rejected"], head_phi["rejected"], head_sparse["rejected"]  # (T,) each
T_hh = red.shape[0]
lams = (1.0, 0.95, 0.8, 0.5)
for V in (torch.zeros(T_hh), 0.3 * torch.randn(T_hh, generator=g)):
    for lam_ in lams:
        A_red = gae(red[None], V[None], torch.ones(1, T_hh), 1.0, lam_)[0][0]
        assert_close(A_red, gae(sparse_hh[None], (V + phi)[None], torch.ones(1, T_hh), 1.0, lam_)[0][0])
        assert_close(gae_loop(red, V, 1.0, lam_), A_red)
        A_sparse = gae_loop(sparse_hh, V, 1.0, lam_)
        future = torch.stack([sum(lam_ ** (l - 1) * phi[t + l] for l in range(1, T_hh - t)) if t < T_hh - 1
                              else torch.tensor(0.0) for t in range(T_hh)])
        assert_close(A_red, A_sparse - phi + (1 - lam_) * future)  # the closed form above
print("A_RED(V) == A_sparse(V + Phi) for every lambda; at lambda = 1 they differ by -Phi(s_t) only")

advantages = {lam_: (gae_loop(sparse_hh, torch.zeros(T_hh), 1.0, lam_), gae_loop(red, torch.zeros(T_hh), 1.0, lam_))
              for lam_ in lams}
labels = [replies["rejected"][s:e] if e > s else "<eos>" for s, e in head_spans["rejected"]]
fig = make_subplots(rows=2, cols=2, shared_xaxes=True, subplot_titles=[f"λ = {lam_}" for lam_ in lams])
for i, lam_ in enumerate(lams):
    row, col = i // 2 + 1, i % 2 + 1
    A_sparse, A_red = advantages[lam_]
    fig.add_trace(go.Scatter(x=list(range(T_hh)), y=A_sparse, mode="lines+markers", name="sparse (holistic on EOS)",
                             line=dict(color="#868e96"), legendgroup="s", showlegend=i == 0, text=labels), row=row, col=col)
    fig.add_trace(go.Scatter(x=list(range(T_hh)), y=A_red, mode="lines+markers", name="redistributed (RED)",
                             line=dict(color="#2f9e44"), legendgroup="r", showlegend=i == 0, text=labels), row=row, col=col)
    if lam_ == 1.0:
        fig.add_trace(go.Scatter(x=list(range(T_hh)), y=A_sparse - phi, mode="lines", name="sparse − Φ(s_t)",
                                 line=dict(color="#1c7ed6", dash="dot"), showlegend=True), row=row, col=col)
fig.update_xaxes(title_text="policy token t (hover for its text)", row=2)
fig.update_yaxes(title_text="advantage Â_t (V ≡ 0)", col=1)
fig.update_layout(height=560, title="Per-token GAE advantages of the rejected HH reply, fresh critic, γ = 1")
fig.show()

# %% [markdown]
# With $\lambda = 1$ the sparse advantage is the same number on every token ($R(x, y)$ against $V = 0$) and RED's is
# that number minus the prefix score, $-\Phi(s_t)$ (the dotted line lies on the green one): a state-dependent
# baseline, same expected gradient. As $\lambda$ falls the sparse advantage of an early token is discounted towards
# zero ($\lambda^{T-t} R(x, y)$: the critic, not the reward, must carry the credit back), while RED's stays
# local: each token mostly sees its own $r_t$ and the next few.
#
# ## 7. Does it learn differently? A toy with known per-token effects
#
# The smallest experiment that separates the cases: $T = 12$ positions, 4 possible tokens at each, a known value
# $c[t, a]$ for each (as the synthetic reward model), $R(y) = \sum_t c[t, y_t]$. The policy has one softmax per
# position; the critic $V(s_t)$ knows only the position $t$, not the tokens before it (as a real critic knows the
# prefix only imperfectly). Per iteration: 32 samples per run, GAE with $\gamma = 1$, one policy-gradient step
# ($\sum_t \hat A_t \nabla\log\pi(y_t)$, no clipping) and one step of the critic towards the GAE returns. Sparse reward
# $\mathbb 1[t = T]R(y)$ vs RED $r_t = c[t, y_t]$ (the prefix score is $\Phi(s_t) = \sum_{t' < t} c[t', y_{t'}]$), for
# $\lambda \in \{1, 0.9, 0\}$; 8 runs each, the expected reward $\mathbb E_\pi[R] / \max R$ computed exactly.

# %%
def train_toy(kind, lam, effects, runs=8, batch=32, iterations=60, lr=0.5, lr_value=0.5):
    """Policy gradient with GAE on the toy. Returns E_pi[R] / max R (mean over runs) before each iteration and at the end."""
    T, K = effects.shape
    gen = torch.Generator().manual_seed(0)
    theta = torch.zeros(runs, T, K)  # one softmax per position, per run
    V = torch.zeros(runs, T)  # critic: a value per position
    best, curve = effects.max(-1).values.sum(), []
    for it in range(iterations + 1):
        probs = torch.softmax(theta, -1)  # (runs, T, K)
        curve.append(((probs * effects).sum((1, 2)) / best).mean().item())
        if it == iterations:
            return curve
        y = torch.multinomial(probs.reshape(-1, K), batch, replacement=True, generator=gen)  # (runs * T, batch)
        y = y.reshape(runs, T, batch).transpose(1, 2)  # (runs, batch, T)
        per_token = effects[torch.arange(T), y]  # (runs, batch, T): c[t, y_t]
        if kind == "RED":
            rewards = per_token  # r_t = c[t, y_t] = Phi(s_{t+1}) - Phi(s_t)
        else:
            rewards = torch.zeros_like(per_token)
            rewards[..., -1] = per_token.sum(-1)  # sparse: R(y) on the last token
        A, returns = gae(rewards.reshape(-1, T), V.repeat_interleave(batch, 0), torch.ones(runs * batch, T), 1.0, lam)
        A, returns = A.reshape(runs, batch, T), returns.reshape(runs, batch, T)
        onehot = torch.nn.functional.one_hot(y, K).float()  # (runs, batch, T, K)
        theta = theta + lr * ((onehot - probs.unsqueeze(1)) * A.unsqueeze(-1)).mean(1)  # grad of mean sum_t A_t log pi
        V = V + lr_value * (returns.mean(1) - V)


effects = torch.randn(12, 4, generator=torch.Generator().manual_seed(100))
curves = {(kind, lam_): train_toy(kind, lam_, effects) for lam_ in (1.0, 0.9, 0.0) for kind in ("sparse", "RED")}
fig = go.Figure()
dash = {1.0: "solid", 0.9: "dash", 0.0: "dot"}
for (kind, lam_), curve in curves.items():
    fig.add_trace(go.Scatter(y=curve, mode="lines", name=f"{kind}, λ = {lam_}",
                             line=dict(color="#2f9e44" if kind == "RED" else "#868e96", dash=dash[lam_])))
fig.update_layout(height=420, xaxis_title="iteration", yaxis_title="E_π[R] / max R",
                  title="Toy policy gradient with GAE: sparse vs redistributed reward")
fig.show()
final = pd.Series({f"{kind}, λ = {lam_}": curve[-1] for (kind, lam_), curve in curves.items()})
at_20 = pd.Series({f"{kind}, λ = {lam_}": curve[20] for (kind, lam_), curve in curves.items()})
display(pd.DataFrame({"after 20 iterations": at_20, "after 60": final}))
assert final["sparse, λ = 0.0"] < 0.2 < 0.9 < final["RED, λ = 0.0"]  # lambda = 0: only RED's tokens get credit
assert at_20["RED, λ = 0.9"] > at_20["sparse, λ = 0.9"]

# %% [markdown]
# * $\lambda = 1$: the two curves nearly coincide. Shaping only moved the baseline; both estimate the same gradient.
# * $\lambda = 0.9$: sparse is slower. Its early tokens see $0.9^{T-t}$ of the reward plus whatever the critic
#   propagates; RED's tokens see their own value at once.
# * $\lambda = 0$: sparse learns only the last position ($\hat A_t = V(s_{t+1}) - V(s_t)$ does not depend on $y_t$
#   for $t < T$ when the critic cannot see the tokens); RED learns everything, because its per-token reward *is* the
#   credit.
#
# The toy's reward model is exact; with a real one, RED's dense credit is only as right as its prefix scores, and at
# $\lambda < 1$ those errors enter the advantages (the $\Phi(s_{t+l})$ term above). That is the trade RED makes.
#
# %% [markdown]
# ## 8. RED beside fine-grained sentence rewards
#
# Notebook 5's fine-grained rewards come from span labels, one judgement per segment; RED's from a model trained on
# whole-response preferences, one value per token. Sum RED over the tokens of sentence $j$ and it telescopes again:
#
# $$
# \sum_{t = T_{j-1}+1}^{T_j} r_t = R(x, y_{\le T_j}) - R(x, y_{\le T_{j-1}}),
# $$
#
# a sentence-level reward made of **differences of prefix scores**: the construction of notebook 5's sentence-level
# detox reward, $-(\text{tox}(y_{1..j}) - \text{tox}(y_{1..j-1}))$, with $-\text{tox}$ replaced by $R$. On notebook 5's
# QA-Feedback answer, with the shipped **C3 completeness** head (in domain: a Bradley–Terry head trained on
# QA-Feedback preferences, 0.607 held-out pairwise accuracy) redistributed over the policy's tokens, beside the
# human C2 (factuality) label of each sentence:

# %%
def pick_record(records):
    """Notebook 5's answer: the shortest with C1 and C2 spans, 2+ sentences and more sub-sentences than sentences."""
    def dense(r):
        n_sentences = len(sentence_spans(r["response"]))
        return n_sentences >= 2 and len(subsentence_spans(r["response"])) > n_sentences

    both = sorted((r for r in records if {s["category"] for s in r["spans"]} == {"C1", "C2"}),
                  key=lambda r: (len(r["response"]), r["question_id"]))
    return next((r for r in both if dense(r)), both[0] if both else records[0])


try:
    record = pick_record(load_qa_feedback_spans())
except DataError as err:
    record = pick_record(load_demo_set().spans)
    print(f"FALLING BACK to the built-in demo set: {err}")
qa_ids = tokenizer(record["response"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
_, qa_spans = response_token_char_spans(tokenizer, qa_ids)
c3_red = load_reward_component(shipped_models_dir() / "c3-completeness", redistribute=True)
qa = compute_token_rewards([record["prompt"]], [qa_ids], tokenizer, {"red": c3_red})
qa_red = qa.components["red"][0]  # (T,) on the policy's tokens
c3_raw = c3_red.score_texts([record["prompt"]] * 2, ["", record["response"]])  # R(x, ""), R(x, y)
assert_close(qa_red.sum(), torch.tensor((c3_raw[1] - c3_raw[0]) / c3_red.std))

rows, previous_end = [], 0
for j, (a, b) in enumerate(sentence_spans(record["response"])):
    last = char_to_token_index(qa_spans, b)  # T_j: the policy token holding the sentence's last character
    first = 0 if j == 0 else rows[-1]["last token"] + 1
    end = qa_spans[last][1]  # the sentence's prefix ends with its last policy token
    prefix_scores_j = c3_red.score_texts([record["prompt"]] * 2,
                                         [record["response"][:previous_end], record["response"][:end]])
    assert_close(qa_red[first: last + 1].sum(), torch.tensor((prefix_scores_j[1] - prefix_scores_j[0]) / c3_red.std))
    c2_error = any(s["category"] == "C2" and s["start"] < b and a < s["end"] for s in record["spans"])
    rows.append({"sentence": record["response"][a:b][:70], "last token": last,
                 "sum of RED r_t": qa_red[first: last + 1].sum().item(),
                 "human C2": "ERROR" if c2_error else "clean"})
    previous_end = end
display(pd.DataFrame(rows))
display(HTML(token_heat_html(record["response"], qa_spans, qa_red.tolist())))

# %% [markdown]
# Both give credit *inside* the response, from different information:
#
# | | fine-grained (notebook 5) | RED |
# |---|---|---|
# | labels needed | error spans per category (expensive) | whole-response preferences (cheap) |
# | density | one value per segment of each category | one value per token |
# | what a value means | "this segment has error $k$" | "this token moved the holistic score by $r_t$" |
# | sum over the response | $\sum_k w_k \sum_j R_k$, no holistic score behind it | the holistic score minus $R(x)$ |
#
# The C3 head scores completeness from lexical coverage of the passages, so its per-sentence credit follows how many
# passage words a sentence adds, not whether the sentence is true: it need not agree with the human C2 label, and
# RED cannot add information the holistic model does not have.
#
# ## Summary: the derivation equals `core`
#
# Your RED rewards from prefix scores recover the synthetic model's per-token effects exactly and equal `core`'s
# prefix loop (`slow_redistribution`) and one-pass version (`rm_token_rewards`), also with windowed scoring
# (`max_length` shorter than the input: $\sum_t r_t = R(x, y) - R(x)$ still); RED is the sparse reward shaped with
# $\Phi$ = the prefix score (your `shaped_rewards`), so returns move by $-\Phi(s_t)$; the shipped HH head's RED
# component is your function on its prefix scores; and RED with critic $V$ is sparse with critic $V + \Phi$ for every
# $\lambda$ (your `gae_loop` = `core.rl.gae`), which is a baseline change at $\lambda = 1$ and a change of credit below.

# %%
assert_close(torch.tensor(red_rewards(prefix_scores, prompt_score)), known)
assert_close(torch.tensor(core_rewards), known)
assert_close(torch.tensor(sum(windowed_core)), torch.tensor(windowed_total - window_score(response_cols[0] - 1)))
assert_close(shaped_rewards(sparse, potentials), torch.tensor(core_rewards))
assert_close(torch.tensor(map_to_tokens(core_rewards, rm_spans, response_token_char_spans(
    tokenizer, tokenizer(response, add_special_tokens=False).input_ids)[1])).sum(), torch.tensor(sum(core_rewards)))
assert_close(gae(red[None], torch.zeros(1, T_hh), torch.ones(1, T_hh), 1.0, 1.0)[0][0],
             gae(sparse_hh[None], torch.zeros(1, T_hh), torch.ones(1, T_hh), 1.0, 1.0)[0][0] - phi)
print("all checks passed")
