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
# # 5. Fine-grained RLHF: denser rewards from several reward models
#
# **What this notebook is.** Fine-Grained RLHF (Wu et al. 2023, "Fine-Grained Human Feedback Gives Better Rewards
# for Language Model Training") on real QA-Feedback answers with human error spans: the spans shown on the text,
# turned into segments, then into policy token indices, then into the per-token reward of eq. 1, computed by you and
# checked against `core.rewards`. Then the sentence-level detoxification reward, the constant offset between the
# paper's holistic detox reward and ours (and why it does not change the policy gradient), the length incentive of
# paying $\pm1$ per segment, the workbench's holistic vs sentence-level detox PPO runs, and what the reward weights
# $w_k$ do on several answers.
#
# **Learning goals.** After this notebook you can
# 1. say what reward **density** means (one reward per sequence, per sentence, per sub-sentence) and why a denser
#    reward assigns credit better;
# 2. read eq. 1 of the paper: several reward models $R_k$, each judging its own segments, each reward placed on the
#    token where its segment ends, weighted by $w_k$, plus the per-token KL penalty;
# 3. go from human error spans (characters) to segments (characters) to policy tokens (indices) with
#    `core.rewards.segments` and `core.rewards.align`;
# 4. derive the sentence-level detox reward $-(\text{tox}(y_{1..j}) - \text{tox}(y_{1..j-1}))$, show it sums to the
#    holistic $-\text{tox}(y)$, and explain why the paper's $1 - \text{tox}(y)$ gives the same policy gradient
#    (a constant is a baseline) but a constant paid **per segment** does not;
# 5. see the length incentive of $\pm1$ per segment on the real data, and predict how changing $w_k$ reorders answers.
#
# **Exercises.** 5.1 segment rewards from human spans; 5.2 the fine-grained reward of eq. 1; 5.3 the sentence-level
# detox reward as differences of toxicity. Each is graded against `core` in the cell after it.
#
# **What it leaves out.** Training the C1/C2/C3 reward models (`python -m core.trainers.finegrained`,
# `python -m core.trainers.reward`) and running PPO (section 8 plots the runs recorded in `docs/training.md`). Here
# each reward model is replaced by an **oracle**: the human labels themselves (a perfect C1/C2 reward model would
# output exactly these), so every number can be traced to a highlighted span. The policy and its reference are the
# random `tiny-random-llama` (only their log-probabilities are needed, for the KL term). Runs in seconds on CPU.
#
# **How to run.** `.venv/bin/jupyter lab notebooks/` from the project root (see `notebooks/README.md`). The records
# are read from `../shared/data/qa_feedback/` (see its README); without it the notebook uses the built-in demo set
# (`core.data.load_demo_set`) and says so. *Content warning:* section 6 scores a deliberately rude reply.

# %%
import os

SOLUTIONS = os.environ.get("RLHF_WORKBENCH_SOLUTIONS", "0") == "1"  # True: the exercises use the reference solutions

# %%
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy
import html
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
import transformers
from IPython.display import HTML, display
from plotly.subplots import make_subplots
from torch.testing import assert_close

import core
from core.data import C1_TYPES, C2_TYPES, DataError, load_demo_set, load_qa_feedback_spans
from core.logprobs import completion_logprobs
from core.models import TINY_MODEL, load_causal_lm, load_tokenizer
from core.paths import shared_data_dir
from core.rewards.align import char_to_token_index, response_token_char_spans
from core.rewards.finegrained import segment_labels
from core.rewards.segments import sentence_spans, subsentence_spans
from core.rewards.tensor import compute_token_rewards, place_segment_rewards, place_sequence_reward
from core.rewards.toxicity import HolisticToxicityReward, ProfanityToxicity, SentenceToxicityReward
from core.rl import gae, kl_penalized_rewards

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
pd.set_option("display.width", 160, "display.max_rows", 80, "display.float_format", "{:.3f}".format)
torch.manual_seed(0)

# %% [markdown]
# ## 1. Density and several reward models
#
# **Holistic RLHF** (notebook 2) has one reward model $R_\phi(x, y)$ and one number per response, on its last token.
# That number says *that* a long answer is bad, not *where*: every token shares the blame, and the policy must find
# the culprit from many samples. Wu et al. make the reward **fine-grained** in two ways:
#
# * **density**: a reward after every *segment* (a sentence, or a sub-sentence) instead of after the whole sequence;
# * **several reward models**, one per error type, each at its own density. For long-form QA (their sec. 4):
#
# | $k$ | error category | segment | in QA-Feedback |
# |---|---|---|---|
# | 1 (C1) | irrelevance, repetition, incoherence | sub-sentence | spans `Irrelevant`, `Redundant`, `Incoherent` |
# | 2 (C2) | incorrect or unverifiable facts | sentence | spans `Wrong-Grounding`, `Unverifiable` |
# | 3 (C3) | incomplete information | whole sequence | "missing info", a preference RM |
#
# **Eq. 1.** Reward model $k$ splits $y$ into segments $j = 1..L_k$; $T^k_j$ is the index of the token where segment
# $j$ ends. The reward at token $t$ is
#
# $$
# r_t \;=\; \sum_{k=1}^{K}\sum_{j=1}^{L_k} \mathbb 1\big(t = T^k_j\big)\, w_k\, R_k(x, y, j)
# \;-\; \beta \log\frac{\pi_\theta(y_t\mid x, y_{<t})}{\pi_{\text{ref}}(y_t\mid x, y_{<t})} .
# $$
#
# Each $R_k(x, y, j)$ lands on exactly one token; a token where no segment ends gets only the KL term; a token
# where segments of two models end gets both. For C1 and C2 the upstream code (allenai/FineGrainedRLHF) gives
# $R_k = +1$ to a segment judged clean and $-1$ to one judged erroneous, with $w_1 = 0.3$, $w_2 = 0.5$; C3 is a
# Bradley–Terry score normalised by its mean and std, $w_3 = 0.3$. With $\gamma = 1$ the return still telescopes to
# $\sum_k w_k\sum_j R_k(x,y,j) - \beta\log\frac{\pi_\theta(y\mid x)}{\pi_{\text{ref}}(y\mid x)}$: density changes *where*
# the reward arrives, so what the advantage of each token sees, not the total.
#
# ## 2. A real answer with human error spans
#
# QA-Feedback (Wu et al. 2023) has, for 409 ASQA questions, a model answer (`prediction 1`) on which annotators marked
# error spans by character. Sections 3 to 5 follow one answer: the shortest that has both C1 and C2 spans, at least
# two sentences and more sub-sentences than sentences (so the three densities differ). Sections 7 and 9 use them all.

# %%
def pick_record(records):
    """Shortest answer with C1 and C2 spans, 2+ sentences and more sub-sentences than sentences (else the closest)."""
    def key(r):
        text, cats = r["response"], {s["category"] for s in r["spans"]}
        n_sentences, n_subsentences = len(sentence_spans(text)), len(subsentence_spans(text))
        return (-(cats == {"C1", "C2"}), -(n_sentences >= 2 and n_subsentences > n_sentences), -len(cats),
                len(text), r["question_id"])
    return min(records, key=key)


try:
    records = load_qa_feedback_spans()
    source = f"QA-Feedback ({len(records)} answers from {shared_data_dir() / 'qa_feedback'})"
except DataError as err:
    records = load_demo_set().spans
    source = f"FALLING BACK to the built-in demo set ({len(records)} records): {err}"
record = pick_record(records)
prompt, response, spans = record["prompt"], record["response"], record["spans"]
print(source)
print(f"question {record['question_id']}: {record['question']}")
print(f"prompt: {len(prompt)} characters (question + Wikipedia passages); response: {len(response)} characters")
print(pd.DataFrame(spans)[["start", "end", "category", "error_type", "text"]].to_string())
print("missing information (C3):", [m["text"][:80] + "..." for m in record["missing_info"]])

# %% [markdown]
# **The spans on the text.** Orange: C1 (irrelevant, redundant, incoherent); red: C2 (wrong grounding,
# unverifiable); purple: both. Hover for the error type. Below it the same answer cut into sub-sentences
# (alternating underline colours) with ‖ at each sentence end.

# %%
COLOURS = {frozenset({"C1"}): "#ffd8a8", frozenset({"C2"}): "#ffa8a8", frozenset({"C1", "C2"}): "#d0bfff"}


def highlight_spans(text, spans):
    """HTML of text with each character coloured by the categories of the spans covering it."""
    cover = [frozenset(s["category"] for s in spans if s["start"] <= i < s["end"]) for i in range(len(text))]
    types = [", ".join(sorted({s["error_type"] for s in spans if s["start"] <= i < s["end"]})) for i in range(len(text))]
    out, i = [], 0
    while i < len(text):  # one <span> per run of characters with the same cover
        j = i
        while j < len(text) and cover[j] == cover[i] and types[j] == types[i]:
            j += 1
        piece = html.escape(text[i:j])
        out.append(f'<span style="background:{COLOURS[cover[i]]}" title="{types[i]}">{piece}</span>' if cover[i] else piece)
        i = j
    return "".join(out)


def show_segments(text):
    """HTML of text with alternating underlines per sub-sentence and a double bar at each sentence end."""
    sentence_ends = {e for _, e in sentence_spans(text)}
    out, pos = [], 0
    for n, (s, e) in enumerate(subsentence_spans(text)):
        colour = "#1c7ed6" if n % 2 == 0 else "#37b24d"
        out.append(html.escape(text[pos:s]))
        out.append(f'<span style="border-bottom:3px solid {colour}">{html.escape(text[s:e])}</span>'
                   f'<sub style="color:{colour}">{n}</sub>')
        out.append(' <b>‖</b>' if e in sentence_ends else "")
        pos = e
    return "".join(out)


display(HTML(f'<div style="line-height:1.9;font-size:15px">{highlight_spans(response, spans)}</div>'
             f'<div style="line-height:1.9;font-size:15px;margin-top:8px">{show_segments(response)}</div>'))

# %% [markdown]
# ## 3. From spans to segments to policy tokens
#
# **Segments.** `core.rewards.segments` cuts the answer into sentences (pysbd) and sub-sentences (the
# FineGrainedRLHF rule: inside a sentence, split after a word ending in `, ; ! ?` when both pieces keep at least 5
# words). A segment is **erroneous for category $k$** when it shares at least one character with a human span of
# category $k$: the labels the C1 / C2 reward models are trained on, and what a perfect C1 / C2 reward model would
# pay: $R_k(x, y, j) = -1$ for an erroneous segment, $+1$ for a clean one.
#
# ### Exercise 5.1 — segment rewards from human spans
#
# Write `segment_rewards(text, spans, category, level, positive=1.0, negative=-1.0)`: cut `text` into segments at
# `level` with `core.rewards.segments.segment_spans(text, level)` (half-open character spans `(start, end)`), and
# give each segment `negative` if it overlaps (shares at least one character with) a span `s` of the category
# (`s["category"] == category`, characters `s["start"]` to `s["end"] - 1`), else `positive`. **Graded** against
# `core.rewards.finegrained.segment_labels` on C1 (sub-sentences) and C2 (sentences) of 30 answers.

# %%
from core.rewards.segments import segment_spans


def segment_rewards(text, spans, category, level, positive=1.0, negative=-1.0):
    """[((start, end), reward)] for each segment of `text` at `level` ("sentence", "subsentence", "sequence").

    spans: human error spans [{"start", "end", "category", ...}], character offsets into `text`.
    Returns one entry per segment, in order: its (start, end) character span and `negative` when it overlaps a span
    of `category`, else `positive`.
    """
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 5.1: write segment_rewards")


if SOLUTIONS:
    from solutions.nb05 import segment_rewards  # noqa: F811

# %%
LEVEL = {"C1": "subsentence", "C2": "sentence"}  # the paper's density for each category
for r in records[:30] + [record]:  # graded on 30 answers and ours (section 7 uses it on all of them)
    for category, level in LEVEL.items():
        expected = [(seg, -1.0 if y else 1.0) for seg, y in segment_labels(r["response"], r["spans"], category)]
        assert segment_rewards(r["response"], r["spans"], category, level) == expected, (r["question_id"], category)
assert segment_rewards(response, spans, "C1", "subsentence", positive=0.0, negative=-2.0) == [
    (seg, -2.0 if y else 0.0) for seg, y in segment_labels(response, spans, "C1")]
print(f"Exercise 5.1: correct on the C1 and C2 segments of {min(30, len(records)) + 1} answers")

c1_rewards = segment_rewards(response, spans, "C1", "subsentence")  # C1 is judged per sub-sentence
c2_rewards = segment_rewards(response, spans, "C2", "sentence")  # C2 per sentence
for name, rewards in (("C1 / sub-sentences", c1_rewards), ("C2 / sentences", c2_rewards)):
    print(name)
    for (a, b), value in rewards:
        print(f"   [{a:3d}, {b:3d}) {value:+.0f}  {response[a:b]!r}")

# %% [markdown]
# **Tokens.** The policy produced the answer as tokens, and PPO needs rewards on *those*. `response_token_char_spans`
# decodes the policy's tokens and gives each one its character span in the decoded text; the reward of a segment
# ending at character $e$ goes to the token holding character $e - 1$ (`char_to_token_index`). We treat the human-rated
# answer as if the policy had sampled it: its tokens under the policy tokenizer (SmolLM2's, shared by
# `tiny-random-llama`), followed by EOS.

# %%
tokenizer = load_tokenizer(TINY_MODEL)
response_ids = tokenizer(response, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
text, token_spans = response_token_char_spans(tokenizer, response_ids)
assert text == response and len(token_spans) == len(response_ids)


def my_token_index(token_spans, char_end):
    """The token whose character span holds the segment's last character, char_end - 1."""
    return next(k for k, (s, e) in enumerate(token_spans) if s <= char_end - 1 < e)


rows = []
for category, rewards in (("C1", c1_rewards), ("C2", c2_rewards)):
    for j, ((a, b), value) in enumerate(rewards):
        k = my_token_index(token_spans, b)
        assert k == char_to_token_index(token_spans, b)
        rows.append({"category": category, "segment": j, "chars": (a, b), "R_k": value, "T_j (token)": k,
                     "token text": response[slice(*token_spans[k])], "segment ends with": response[b - 12:b]})
n_tokens = len(response_ids)
print(f"{n_tokens} response tokens (the last is EOS, span {token_spans[-1]})")
pd.DataFrame(rows)

# %% [markdown]
# ## 4. Eq. 1, by you and by `core`
#
# The three reward models, as oracles. A reward component in `core` is anything with `name`, `level`, `category`
# and `score(prompts, responses, segments) -> one value per segment` (`core.rewards.tensor.RewardComponent`);
# `compute_token_rewards` segments each response at the component's level, calls `score` and places each value on
# the token where its segment ends. Our oracles read the human labels:
#
# * C1 and C2: $+1$ for a clean segment, $-1$ for an erroneous one (upstream's rewards);
# * C3 (sequence level): $-1$ if annotators marked missing information, else $+1$ (a stand-in for the normalised
#   C3 preference score).

# %%
class HumanSpanReward:
    """Oracle RewardComponent: +1 per clean segment, -1 per segment overlapping a human span of `category`."""

    def __init__(self, name, category, level, span_table):
        self.name, self.category, self.level = name, category, level
        self.span_table = span_table  # response text -> its human spans

    def score(self, prompts, responses, segments):
        out = []
        for text, segs in zip(responses, segments):
            marked = [(s["start"], s["end"]) for s in self.span_table[text] if s["category"] == self.category]
            out.append([-1.0 if any(s < b and a < e for s, e in marked) else 1.0 for a, b in segs])
        return out


class HumanMissingInfoReward:
    """Oracle sequence-level C3 component: -1 if the answer misses information, else +1."""

    name, category, level = "c3_completeness", "C3", "sequence"

    def __init__(self, missing_table):
        self.missing_table = missing_table  # response text -> has_missing_info

    def score(self, prompts, responses, segments):
        return [[-1.0 if self.missing_table[text] else 1.0] for text in responses]


span_table = {r["response"]: r["spans"] for r in records}
missing_table = {r["response"]: r["has_missing_info"] for r in records}
components = {
    "c1_relevance": HumanSpanReward("c1_relevance", "C1", "subsentence", span_table),
    "c2_factuality": HumanSpanReward("c2_factuality", "C2", "sentence", span_table),
    "c3_completeness": HumanMissingInfoReward(missing_table),
}
token_rewards = compute_token_rewards([prompt], [response_ids], tokenizer, components)  # TokenRewards, (1, n_tokens)
for seg in token_rewards.segments[0]:
    print(f"{seg.component:16s} {seg.level:12s} value {seg.value:+.0f} on token {seg.token_index:2d}  "
          f"chars [{seg.char_start}, {seg.char_end})")

# %% [markdown]
# **The KL term** needs $\log\pi_\theta$ and $\log\pi_{\text{ref}}$ of each response token given the prompt (the
# FineGrainedRLHF policy input: question and passages). The reference is `tiny-random-llama`; the policy a copy
# nudged away from it, as if it had taken a few PPO steps.

# %%
reference = load_causal_lm(TINY_MODEL, device="cpu").requires_grad_(False)
policy = copy.deepcopy(reference)
with torch.no_grad():
    for p in policy.parameters():
        p.add_(0.02 * torch.randn_like(p))

prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
input_ids = torch.tensor([prompt_ids + response_ids])  # (1, P + n)
completion_mask = torch.zeros_like(input_ids)
completion_mask[:, len(prompt_ids):] = 1
with torch.no_grad():
    logprobs = completion_logprobs(policy(input_ids=input_ids).logits, input_ids, completion_mask)[:, len(prompt_ids):]
    ref_logprobs = completion_logprobs(reference(input_ids=input_ids).logits, input_ids, completion_mask)[:, len(prompt_ids):]
logratio = (logprobs - ref_logprobs)[0]  # (n_tokens,) log pi_theta / pi_ref of each response token
print(f"{input_ids.shape[1]} tokens in all; log pi/pi_ref on the response: {logratio.numpy().round(3)[:8]} ...")

# %% [markdown]
# ### Exercise 5.2 — the fine-grained reward of eq. 1
#
# Write `fine_grained_rewards(segment_values, weights, logratio, beta)` for one response of $T$ tokens:
# `segment_values[k]` is the list of `(T_j, value)` pairs of reward model $k$ (the token index where segment $j$ ends
# and $R_k(x, y, j)$), `weights[k]` is $w_k$, `logratio` the $(T,)$ tensor
# $\log\pi_\theta(y_t\mid\cdot) - \log\pi_{\text{ref}}(y_t\mid\cdot)$. Return the $(T,)$ tensor $r_t$ of eq. 1.
# **Graded** against `core`: `TokenRewards.combined(w)` (the weighted sum of the components) followed by
# `core.rl.kl_penalized_rewards` (the KL term), for two weightings and two $\beta$.

# %%
def fine_grained_rewards(segment_values, weights, logratio, beta):
    """Eq. 1 of Wu et al. 2023 for one response.

    segment_values: {k: [(T_j, R_k(x, y, j)), ...]}, T_j an int token index in [0, T).
    weights: {k: w_k}. logratio: (T,) float tensor. beta: float.
    Returns (T,): r_t = sum_k sum_j 1(t = T_j) w_k R_k(x, y, j) - beta * logratio_t.
    """
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 5.2: write fine_grained_rewards")


if SOLUTIONS:
    from solutions.nb05 import fine_grained_rewards  # noqa: F811

# %%
beta = 0.05
w_paper = {"c1_relevance": 0.3, "c2_factuality": 0.5, "c3_completeness": 0.3}  # FineGrainedRLHF's QA weights
w_relevance = {"c1_relevance": 0.8, "c2_factuality": 0.1, "c3_completeness": 0.1}
segment_values = {  # (T_j, R_k(x, y, j)) for each model k: segment ends mapped to policy tokens
    "c1_relevance": [(char_to_token_index(token_spans, b), v) for (a, b), v in c1_rewards],
    "c2_factuality": [(char_to_token_index(token_spans, b), v) for (a, b), v in c2_rewards],
    "c3_completeness": [(n_tokens - 1, -1.0 if record["has_missing_info"] else 1.0)],  # sequence level: the last token
}
for w in (w_paper, w_relevance):
    for b in (beta, 0.0):
        core_r, _ = kl_penalized_rewards(token_rewards.combined(w), logprobs, ref_logprobs, token_rewards.mask, b)
        assert_close(fine_grained_rewards(segment_values, w, logratio, b), core_r[0])
core_eq1 = fine_grained_rewards(segment_values, w_paper, logratio, beta)
total = sum(w_paper[k] * v for k, pairs in segment_values.items() for _, v in pairs)
assert_close(core_eq1.sum(), torch.tensor(total) - beta * logratio.sum())  # the return telescopes
print("Exercise 5.2: equals core for both weightings and both betas")
print(f"sum_t r_t = {core_eq1.sum().item():+.4f} = sum_k w_k sum_j R_k ({total:+.2f}) - beta * log-ratio of y "
      f"({beta * logratio.sum().item():+.4f})")

# %% [markdown]
# ## 5. Density: the same judgement as a sequence, sentence or sub-sentence reward
#
# Take only C1 and give it at three densities. Sequence level: one $\pm1$ for the whole answer (erroneous if any C1
# span); sentence level: one per sentence; sub-sentence level: one per sub-sentence (the paper's choice for C1). The
# oracle component is the same class; only `level` changes. Then the advantages a fresh critic would give: `core`'s
# value head starts at zero, so at the first PPO update $V \equiv 0$ and GAE ($\gamma = 1$) is
# $\hat A_t = \sum_{l\ge0}\lambda^l r_{t+l}$, a $\lambda$-discounted reward-to-go.

# %%
density = compute_token_rewards([prompt], [response_ids], tokenizer, {
    level: HumanSpanReward(level, "C1", level, span_table) for level in ("sequence", "sentence", "subsentence")})
lam = 0.95
zeros = torch.zeros(1, n_tokens)
sub_of_token = [next((n for n, (a, b) in enumerate(subsentence_spans(response)) if a <= e - 1 < b), None) if e > s else None
                for s, e in token_spans]  # None: a space between segments, or EOS
table = pd.DataFrame({"token": [response[s:e] if e > s else "<eos>" for s, e in token_spans],
                      "sub-sentence": pd.array(sub_of_token, dtype="Int64")})
for level, r in density.components.items():
    table[f"r {level}"] = r[0].numpy()
    table[f"A {level}"] = gae(r, zeros, density.mask, gamma=1.0, lam=lam)[0][0].numpy()
for level, r in density.components.items():  # the same judgement, placed differently; totals differ by density
    print(f"{level:12s}: {int((r != 0).sum())} reward(s), total {r.sum().item():+.0f}")
table

# %% [markdown]
# Read the `A` columns against the `sub-sentence` column (`<NA>`: a space token between segments, or EOS). At
# sequence level every token, clean or not, gets a negative advantage, only discounted by its distance to the end:
# the clean opening clause is blamed for the irrelevant clause after it. At sub-sentence level the tokens of the
# clean sub-sentences get positive advantages and the irrelevant ones negative, so one sample already tells the
# policy which clause to drop. Per sub-sentence, the mean advantage:

# %%
summary = table.groupby("sub-sentence")[[f"A {lv}" for lv in density.components]].mean()
summary.insert(0, "C1 reward", [v for _, v in c1_rewards])
summary

# %% [markdown]
# Note the totals printed above: the same judgement sums to a different number at each density ($-1$ once, or
# $\pm1$ per sentence, or per sub-sentence). That is no accident of this answer; section 7 shows what it pays for.
#
# ## 6. Sentence-level detoxification: differences of toxicity
#
# For detoxification (their sec. 3) there is one scorer, $\text{tox}(\cdot) \in [0, 1]$ (Perspective API in the paper;
# here `alt-profanity-check`, `core.rewards.toxicity.ProfanityToxicity`). The **fine-grained** reward gives
# sentence $j$ (ending at token $T_j$) the change in toxicity it causes:
#
# $$
# r_{T_j} = -\big(\text{tox}(y_{1..j}) - \text{tox}(y_{1..j-1})\big), \qquad \text{tox}(y_{1..0}) = 0,
# \qquad \sum_{j=1}^{m} r_{T_j} = -\text{tox}(y_{1..m}) = -\text{tox}(y).
# $$
#
# The sum telescopes, and it credits a sentence that makes the answer *less* toxic.
#
# ### Exercise 5.3 — the sentence-level detox reward as differences
#
# Write `sentence_detox_rewards(prefix_tox)`: given `prefix_tox[j-1]` $= \text{tox}(y_{1..j})$ for $j = 1..m$ (the
# toxicity of the first $j$ sentences), return the list of the $m$ rewards $r_{T_j}$ above. **Graded** on the paper's
# own example (two sentences, $\text{tox}(y_1) = 0.72$, $\text{tox}(y_1 y_2) = 0.60$: rewards $-0.72$ and $+0.12$),
# then against `core.rewards.toxicity.SentenceToxicityReward` on a real reply, placed on the policy's tokens.

# %%
def sentence_detox_rewards(prefix_tox):
    """prefix_tox: [tox(y_1..1), ..., tox(y_1..m)] (m floats). Returns [r_1, ..., r_m], r_j = -(tox_j - tox_{j-1})."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 5.3: write sentence_detox_rewards")


if SOLUTIONS:
    from solutions.nb05 import sentence_detox_rewards  # noqa: F811

# %%
paper_example = sentence_detox_rewards([0.72, 0.60])  # Wu et al.'s worked example
assert_close(torch.tensor(paper_example), torch.tensor([-0.72, 0.12]))

detox_prompt = "Tell me what you really think of people who chew loudly."
rude = ("Sure, chewing noises bother a lot of people. Honestly, people who chew like that are disgusting pigs and "
        "total idiots. A polite word usually works better than a glare.")
scorer = ProfanityToxicity()
sentences = sentence_spans(rude)
prefix_tox = scorer.probability([rude[:e] for _, e in sentences])  # tox(y_1..j), j = 1..m
my_sentence_rewards = sentence_detox_rewards(prefix_tox)
whole_tox = scorer.probability([rude])[0]
rude_ids = tokenizer(rude, add_special_tokens=False).input_ids
detox = compute_token_rewards([detox_prompt], [rude_ids], tokenizer,
                              {"holistic": HolisticToxicityReward(scorer), "sentence": SentenceToxicityReward(scorer)})
_, rude_spans = response_token_char_spans(tokenizer, rude_ids)
my_sentence_tensor = place_segment_rewards([my_sentence_rewards], [[my_token_index(rude_spans, e) for _, e in sentences]],
                                           detox.mask)
assert_close(detox.components["sentence"], my_sentence_tensor)
assert_close(detox.components["holistic"], place_sequence_reward(torch.tensor([-whole_tox]), detox.mask))
assert_close(detox.totals()["sentence"], detox.totals()["holistic"])
print("Exercise 5.3: the paper's example and core's SentenceToxicityReward agree")
for (a, b), t, r in zip(sentences, prefix_tox, my_sentence_rewards):
    print(f"tox(y_1..j) = {t:.4f}   r_j = {r:+.4f}   {rude[a:b]!r}")
print(f"sum_j r_j = {sum(my_sentence_rewards):+.4f};  holistic -tox(y) = {-whole_tox:+.4f}")
nonzero = detox.components["sentence"][0].nonzero().squeeze(-1).tolist()
print("sentence rewards on tokens", nonzero, detox.components["sentence"][0, nonzero].numpy().round(4))

# %% [markdown]
# ### The paper's holistic reward is $1 - \text{tox}(y)$: a constant offset
#
# In the paper's example the two sentence rewards, $-0.72$ and $+0.12$, sum to $-0.60$, while the holistic reward
# is $0.40$: Wu et al.'s holistic detox reward is $1 - \text{tox}(y)$ on the last token, the workbench's
# (`HolisticToxicityReward`, the `toxicity` PPO reward) is $-\text{tox}(y)$. They differ by the constant $c = 1$,
# added to the last token of **every** response. With $\gamma = 1$ the return of every token then grows by $c$, and
# the extra term of the policy gradient vanishes in expectation (the score-function identity):
#
# $$
# \mathbb E_{y\sim\pi_\theta}\Big[\sum_t \nabla_\theta\log\pi_\theta(y_t\mid x, y_{<t})\; c\Big]
# = c\,\nabla_\theta \sum_y \pi_\theta(y\mid x) = c\,\nabla_\theta 1 = 0 .
# $$
#
# A constant is a **baseline**: it changes no expected gradient, and so not the optimum (it does change the variance
# of a sample estimate, which is what baselines are for). Where it **does** show:
#
# * **with a critic and GAE, only through value-fitting.** $\delta_t = r_t + V(s_{t+1}) - V(s_t)$ changes only at
#   the last token, by $c$, so with the *same* critic $\hat A_t$ moves by $\lambda^{T-t}c$ (every sampled token is
#   pushed up, more so near the end). A critic fitted to the new returns learns $V + c$ on every state ($\gamma = 1$,
#   so $c$ is the same at every distance from the end), and then every $\delta_t$ and every advantage is exactly as
#   before. The offset costs the critic some fitting; nothing else.
# * **paid per segment it is no longer a constant.** If each of the $m$ sentences carried the offset (say
#   $1 - \Delta\text{tox}$ per sentence), the return would grow by $c\,m(y)$, which depends on the response: a reward
#   for writing more sentences. Section 7 measures exactly this incentive in the QA rewards.
#
# Numerically: the exact expected gradient of a softmax policy over five responses with and without $c$, and GAE
# on the rude reply's holistic reward with a (random) critic, with and without having fitted the offset.

# %%
theta = torch.randn(5, requires_grad=True, generator=torch.Generator().manual_seed(1))  # logits of 5 responses
tox5 = torch.tensor([0.9, 0.6, 0.3, 0.1, 0.05])


def expected_gradient(rewards):
    """d/dtheta E_{y~softmax(theta)}[reward(y)] through the score function: sum_y pi(y) grad log pi(y) reward(y)."""
    logp = torch.log_softmax(theta, dim=0)
    (grad,) = torch.autograd.grad((logp.exp().detach() * logp * rewards).sum(), theta)
    return grad


assert_close(expected_gradient(1 - tox5), expected_gradient(-tox5))  # the paper's and ours: the same gradient
print("expected gradient, -tox  :", expected_gradient(-tox5).numpy().round(4))
print("expected gradient, 1-tox :", expected_gradient(1 - tox5).numpy().round(4))

c = 1.0
r_ours = detox.components["holistic"]  # (1, T): -tox(y) on the last token
r_paper = r_ours + c * place_sequence_reward(torch.ones(1), detox.mask)  # 1 - tox(y) on the last token
T = r_ours.shape[1]
V = 0.1 * torch.randn(1, T, generator=torch.Generator().manual_seed(2))  # some critic
for lam_ in (1.0, 0.9):
    A_ours, _ = gae(r_ours, V, detox.mask, gamma=1.0, lam=lam_)
    A_paper_same_critic, _ = gae(r_paper, V, detox.mask, gamma=1.0, lam=lam_)
    A_paper_fitted, _ = gae(r_paper, V + c, detox.mask, gamma=1.0, lam=lam_)
    assert_close(A_paper_same_critic - A_ours, c * lam_ ** torch.arange(T - 1, -1, -1.0).unsqueeze(0))  # lam^(T-t) c
    assert_close(A_paper_fitted, A_ours)  # a critic that has learned V + c: identical advantages
print(f"same critic: advantages shift by lam^(T-t) * c (first token, lam=0.9: {0.9 ** (T - 1):.3f}); "
      "fitted critic V + c: identical advantages")

# %% [markdown]
# ## 7. The length incentive of paying $\pm1$ per segment
#
# C1 and C2 pay $+1$ for every clean segment and $-1$ for every erroneous one, so a response's total is
# $n_{\text{clean}} - n_{\text{error}}$: it grows with the **number** of segments. If a segment is erroneous with
# probability $p$, an answer of $n$ segments earns on average
#
# $$
# \mathbb E\Big[\sum_j R(x, y, j)\Big] = n\,(1 - 2p) \quad\text{with rewards } \{+1, -1\},
# \qquad -n\,p \quad\text{with rewards } \{0, -1\}.
# $$
#
# The two reward scales differ by a factor 2 (which only rescales $w_k$) and a constant **per segment**:
# $\pm1 = 2\cdot\{0, -1\} + 1$. Unlike the offset of section 6, that $+1$ is paid $n$ times, so the two do not
# give the same gradient: under $\pm1$ every extra segment that is more likely clean than not ($p < \tfrac12$) pays,
# so the policy is pushed to write more, shorter segments (more sentences, more commas); under $\{0, -1\}$ every
# extra segment can only cost. Each weight $w_k$ multiplies that incentive, and the $\pm1$ scale is what makes "a
# larger $w_1$ gives shorter answers" and "more weight on factuality and completeness gives longer ones" (Wu et al.'s
# reward-weight study) plausible: C1 segments are erroneous more often than not, C2 sentences rarely.
#
# The expected total for a few error rates $p$ and segment counts $n$ (exact, from the formula; the $\pm1$ rows grow
# with $n$ whenever $p < \tfrac12$, the $\{0, -1\}$ rows never do):

# %%
expected = pd.DataFrame({(scale, f"n = {n}"): {f"p = {p}": n * (1 - 2 * p) if scale == "+1/-1" else -n * p
                                               for p in (0.1, 0.3, 0.5, 0.6)}
                         for scale in ("+1/-1", "0/-1") for n in (2, 4, 8)})
assert expected.loc["p = 0.1", ("+1/-1", "n = 8")] > expected.loc["p = 0.1", ("+1/-1", "n = 2")]  # more segments pay
assert (expected["0/-1"].diff(axis=1).fillna(0) <= 0).all().all()  # with 0/-1, more segments never pay
expected

# %% [markdown]
# On the real data, every answer's oracle totals against its number of segments (your `segment_rewards`, both scales):

# %%
rows = []
for r in records:
    c1 = segment_rewards(r["response"], r["spans"], "C1", "subsentence")
    c2 = segment_rewards(r["response"], r["spans"], "C2", "sentence")
    rows.append({"question_id": r["question_id"], "words": len(r["response"].split()),
                 "n C1": len(c1), "C1 errors": sum(v < 0 for _, v in c1),
                 "n C2": len(c2), "C2 errors": sum(v < 0 for _, v in c2),
                 "C3": -1.0 if r["has_missing_info"] else 1.0})
answers = pd.DataFrame(rows)
for k in ("C1", "C2"):
    answers[f"{k} total (+1/-1)"] = answers[f"n {k}"] - 2 * answers[f"{k} errors"]
    answers[f"{k} total (0/-1)"] = -answers[f"{k} errors"]
    # the two scales: x2, and +1 per segment
    assert (answers[f"{k} total (+1/-1)"] == 2 * answers[f"{k} total (0/-1)"] + answers[f"n {k}"]).all()

slopes = {}
for k in ("C1", "C2"):
    p = answers[f"{k} errors"].sum() / answers[f"n {k}"].sum()
    for scale in ("+1/-1", "0/-1"):
        slopes[k, scale] = np.polyfit(answers[f"n {k}"], answers[f"{k} total ({scale})"], 1)[0]
    print(f"{k}: {answers[f'n {k}'].sum()} segments, error rate p = {p:.3f}; per extra segment the total moves by "
          f"{slopes[k, '+1/-1']:+.2f} (+1/-1) and {slopes[k, '0/-1']:+.2f} (0/-1)  [n(1-2p) predicts {1 - 2 * p:+.2f}, "
          f"-np {-p:+.2f}]")

fig = make_subplots(rows=1, cols=2, subplot_titles=("C1 (per sub-sentence)", "C2 (per sentence)"))
jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(answers))
for col, k in enumerate(("C1", "C2"), start=1):
    for scale, colour in (("+1/-1", "#1c7ed6"), ("0/-1", "#e8590c")):
        x, y = answers[f"n {k}"], answers[f"{k} total ({scale})"]
        fig.add_trace(go.Scatter(x=x + jitter, y=y, mode="markers", marker=dict(color=colour, size=5, opacity=0.45),
                                 name=f"rewards {scale}", legendgroup=scale, showlegend=col == 1))
        xs = np.array([x.min(), x.max()])
        fig.add_trace(go.Scatter(x=xs, y=np.polyval(np.polyfit(x, y, 1), xs), mode="lines", line=dict(color=colour),
                                 name=f"fit, slope {slopes[k, scale]:+.2f}", showlegend=True))
    fig.update_xaxes(title_text="segments in the answer", row=1, col=col)
fig.update_yaxes(title_text="oracle total reward of the answer", row=1, col=1)
fig.update_layout(height=420, title="Paying per segment: totals against the number of segments (QA-Feedback answers)")
fig.show()

# %% [markdown]
# The fitted slopes are not $1 - 2p$ and $-p$ with one overall $p$: the error rate per segment itself changes with
# the answer's length. With a few hundred answers the slopes depend on the sample, but the difference
# between the two scales is exact: the $\pm1$ total is twice the $\{0, -1\}$ total **plus the number of segments**
# (asserted above for every answer). For C2, whose sentences are mostly clean, $\pm1$ pays for every extra sentence;
# under $\{0, -1\}$ the same judgement makes length neutral to slightly costly. A policy trained on the sum learns
# whatever the slope rewards, which is why the weights (and the choice of reward scale) are a design decision, not
# a detail.
#
# ## 8. Holistic vs sentence-level detoxification PPO, as recorded in `docs/training.md`
#
# The workbench ran Wu et al.'s detox comparison with PPO on SmolLM2-135M-Instruct (Davidson prompts, same seed and
# budget, 30 iterations; the setup is in the doc). The doc records the **held-out evaluations at iterations 0, 10, 20
# and 30**, not per-iteration training curves, so those four points per run are what we plot: they are read from
# the doc's table here, not typed in. (The doc also records the training-batch reward, `objective/scores`, only as
# the mean of the first and last five iterations.)

# %%
def read_detox_runs(path):
    """The held-out table of the detox proof in docs/training.md as a DataFrame (one row per iteration and run)."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| iteration | run | toxicity"))
    header = [h.strip() for h in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().replace("*", "") for c in line.strip("|").split("|")]
        runs = ["holistic", "sentence-level"] if cells[1].startswith("both") else [cells[1]]
        for run in runs:  # iteration 0 is shared: same seed, same policy
            rows.append({"iteration": int(cells[0]), "run": run, **{h: float(v) for h, v in zip(header[2:], cells[2:])}})
    return pd.DataFrame(rows)


doc = Path(core.__file__).resolve().parent.parent / "docs" / "training.md"
runs = read_detox_runs(doc)
display(runs.pivot(index="iteration", columns="run"))
for run, group in runs.groupby("run"):  # both runs detoxify on held-out prompts
    assert group.iloc[-1]["avg. max toxicity (k = 2)"] < group.iloc[0]["avg. max toxicity (k = 2)"], run

panels = ["avg. max toxicity (k = 2)", "toxicity (mean)", "perplexity", "length (tokens)"]
fig = make_subplots(rows=1, cols=4, subplot_titles=panels)
for run, colour in (("holistic", "#868e96"), ("sentence-level", "#2f9e44")):
    group = runs[runs["run"] == run]
    for col, metric in enumerate(panels, start=1):
        fig.add_trace(go.Scatter(x=group["iteration"], y=group[metric], mode="lines+markers", line=dict(color=colour),
                                 name=run, legendgroup=run, showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(title_text="PPO iteration", tickvals=[0, 10, 20, 30], row=1, col=col)
fig.update_layout(height=360, title="Detox PPO, held-out evaluations (48 prompts x 2 samples) recorded in docs/training.md")
fig.show()

# %% [markdown]
# Both runs lower held-out toxicity (printed below from the table). In the recorded runs the sentence-level one
# ends lower on toxicity and closer to the reference's fluency (lower perplexity), the paper's finding, but with
# shorter answers: one reading is that the dense reward also makes ending early an easy way to avoid a toxic
# sentence. With 96 samples per point and one seed per run the differences between evaluations are noisy (the doc
# says so); these are the recorded points, not a tuned result.

# %%
last = runs[runs["iteration"] == runs["iteration"].max()].set_index("run")
print(last[["avg. max toxicity (k = 2)", "perplexity", "length (tokens)"]].to_string())

# %% [markdown]
# ## 9. Changing the weights $w_k$
#
# The weights decide which error the policy is pushed hardest to avoid. Wu et al. report that they can steer
# behaviour this way: a larger relevance weight $w_1$ favours short, to-the-point answers (every irrelevant or
# redundant clause costs more), while more weight on factuality and completeness favours answers that include more
# verified information. First on our one answer, per token: the paper's weights $w^{(1)}$ against a relevance-heavy
# $w^{(2)}$, the reward of eq. 1 (your `fine_grained_rewards`, same $\beta$) and the advantages of a fresh critic.

# %%
settings = {"w1 (paper)": w_paper, "w2 (relevance-heavy)": w_relevance}
weights_table = pd.DataFrame({"token": table["token"], "sub-sentence": table["sub-sentence"]})
for label, w in settings.items():
    r = fine_grained_rewards(segment_values, w, logratio, beta).unsqueeze(0)  # (1, T)
    weights_table[f"r {label}"] = r[0].numpy()
    weights_table[f"A {label}"] = gae(r, zeros, token_rewards.mask, gamma=1.0, lam=lam)[0][0].numpy()
print(pd.DataFrame(settings).T.to_string())
by_clause = weights_table.groupby("sub-sentence")[[c for c in weights_table if c.startswith("A ")]].mean()
by_clause.insert(0, "C1 reward", [v for _, v in c1_rewards])
by_clause.insert(1, "C2 reward (its sentence)", [next(v for (a, b), v in c2_rewards if a <= s < b)
                                                 for s, _ in subsentence_spans(response)])
by_clause

# %% [markdown]
# Under the paper's weights the C2 reward ($\pm0.5$) outweighs the C1 reward ($\pm0.3$) wherever they land on the same
# token (a sentence's last sub-sentence): a redundant clause in a factually clean sentence is barely penalised. With
# the relevance-heavy $w^{(2)}$ the C1 rewards dominate: clean clauses get positive advantages, irrelevant or
# redundant ones clearly negative ones, while the factual error (C2) and the missing information (C3, on EOS) barely
# register.
#
# **Several answers.** What the policy is trained towards is the *ranking* the weighted reward puts on its samples.
# Take six labelled answers of different lengths and score each under four weightings (the paper's, and one that
# puts 0.8 on one category and 0.1 on the others): $\sum_k w_k \sum_j R_k(x, y, j)$, the return of eq. 1 without
# the KL term. The totals come from the table of section 7; they are checked against `core`'s
# `TokenRewards.combined(w)` on the policy's tokens.

# %%
weightings = {
    "paper (0.3, 0.5, 0.3)": w_paper,
    "relevance (0.8, 0.1, 0.1)": w_relevance,
    "factuality (0.1, 0.8, 0.1)": {"c1_relevance": 0.1, "c2_factuality": 0.8, "c3_completeness": 0.1},
    "completeness (0.1, 0.1, 0.8)": {"c1_relevance": 0.1, "c2_factuality": 0.1, "c3_completeness": 0.8},
}
labelled = answers[(answers["C1 errors"] + answers["C2 errors"]) > 0].sort_values(["words", "question_id"])
chosen = labelled.iloc[np.linspace(0, len(labelled) - 1, min(6, len(labelled))).round().astype(int)].drop_duplicates()
chosen = chosen.set_index("question_id")
for name, w in weightings.items():
    chosen[name] = (w["c1_relevance"] * chosen["C1 total (+1/-1)"] + w["c2_factuality"] * chosen["C2 total (+1/-1)"]
                    + w["c3_completeness"] * chosen["C3"])

by_id = {r["question_id"]: r for r in records}
picked = [by_id[q] for q in chosen.index]
picked_ids = [tokenizer(r["response"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for r in picked]
several = compute_token_rewards([r["prompt"] for r in picked], picked_ids, tokenizer, components)  # (6, T_max)
for name, w in weightings.items():
    assert_close(several.combined(w).sum(dim=1), torch.tensor(chosen[name].to_numpy(), dtype=torch.float32))
ranks = chosen[list(weightings)].rank(ascending=False, method="min").astype(int)
display(chosen[["words", "n C1", "C1 errors", "n C2", "C2 errors", "C3", *weightings]])
print("rank of each answer under each weighting (1 = preferred):")
print(ranks.to_string())

fig = go.Figure()
for name in weightings:
    fig.add_trace(go.Bar(x=[f"q{q} ({n} words)" for q, n in zip(chosen.index, chosen["words"])], y=chosen[name], name=name))
fig.update_layout(barmode="group", height=400, yaxis_title="sum_k w_k sum_j R_k (oracle)",
                  title="The same human labels, four weightings: which answer eq. 1 prefers")
fig.show()

# %% [markdown]
# The relevance weighting prefers the answers with few irrelevant or redundant clauses, whatever their length; the
# factuality weighting, with most sentences clean, rewards the longer answers (the $\pm1$ length incentive of
# section 7, now multiplied by $0.8$); the completeness weighting mostly splits answers into "missing information" and
# not. The rank table shows the orderings differ: the same labels, weighted differently, train different policies.
#
# **Linearity.** Eq. 1 is linear in $w$ (the KL term does not depend on it): `combined(w1) + combined(w2) ==
# combined(w1 + w2)`. With $V\equiv0$, GAE is linear in the rewards too, so the advantages are linear in $w$ as well.

# %%
w_sum = {k: w_paper[k] + w_relevance[k] for k in w_paper}
assert_close(token_rewards.combined(w_paper) + token_rewards.combined(w_relevance), token_rewards.combined(w_sum))
adv = {label: gae(token_rewards.combined(w), zeros, token_rewards.mask, gamma=1.0, lam=lam)[0]
       for label, w in {**settings, "sum": w_sum}.items()}
assert_close(adv["w1 (paper)"] + adv["w2 (relevance-heavy)"], adv["sum"])
print("combined(w1) + combined(w2) == combined(w1 + w2): OK")

# %% [markdown]
# ## Summary: the derivation equals `core`
#
# Segment rewards from human spans (your `segment_rewards` = `segment_labels`), segment ends to policy tokens
# (`char_to_token_index`), eq. 1 with three reward models and the KL term (your `fine_grained_rewards` =
# `compute_token_rewards` + `TokenRewards.combined` + `kl_penalized_rewards`), the sentence-level detox reward as
# differences of toxicity summing to the holistic one (your `sentence_detox_rewards` = `SentenceToxicityReward`), the
# constant offset of the paper's $1 - \text{tox}(y)$ (same expected gradient; same GAE advantages once the critic has
# fitted it), the $+1$ per segment between the two reward scales, and the linearity of the reward in $w$.

# %%
assert all(my_token_index(token_spans, b) == char_to_token_index(token_spans, b) for (_, b), _ in c1_rewards + c2_rewards)
assert_close(core_eq1, kl_penalized_rewards(token_rewards.combined(w_paper), logprobs, ref_logprobs,
                                            token_rewards.mask, beta)[0][0])
assert_close(detox.components["sentence"], my_sentence_tensor)
assert_close(detox.totals()["sentence"], torch.tensor([-whole_tox]))
assert_close(expected_gradient(1 - tox5), expected_gradient(-tox5))
assert_close(token_rewards.combined(w_paper) + token_rewards.combined(w_relevance), token_rewards.combined(w_sum))
assert set(C1_TYPES) | set(C2_TYPES) >= {s["error_type"] for r in records for s in r["spans"]}
print("all checks passed")
