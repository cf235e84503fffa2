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
# response. Derived, computed by hand with a slow prefix-by-prefix loop, checked against the one-pass batched
# version in `core.rewards.redistribution`, and set beside the fine-grained sentence rewards of notebook 5.
#
# **Learning goals.** After this notebook you can
# 1. derive $r_t = R(x, y_{\le t}) - R(x, y_{<t})$ and show by telescoping that the token rewards sum to the holistic
#    score (minus the prompt-only score $R(x)$, a baseline that does not change the policy gradient);
# 2. explain why one forward pass of a causal reward model, with its score head read at every position, gives all
#    prefix scores at once, and check it against the slow loop;
# 3. move token rewards from the reward model's tokens to the policy's through character spans, keeping the sum;
# 4. compare RED's dense, learned-from-holistic credit with fine-grained rewards (one per sentence, from span labels),
#    and see that summing RED over a sentence gives a sentence-level "difference of prefix scores" reward, the same
#    construction as the sentence-level detox reward of notebook 5.
#
# **What it leaves out.** Training the reward model and the PPO run with RED rewards (`core.trainers.ppo` with a
# redistributed reward component), and the paper's optional reshaping of $r_t$. By default the reward model is the
# random `tiny-random-llama` with a random score head: its numbers are **arbitrary**, but every identity below is
# exact. Set `USE_TRAINED_RM = True` to use a trained holistic reward model from `core.rewards.store` instead (much
# slower on a CPU: one forward pass of SmolLM2-135M per response token). Runs in seconds on CPU with the default.
#
# **How to run.** `.venv/bin/jupyter lab notebooks/` from the project root (see `notebooks/README.md`). The answer is
# read from `../shared/data/qa_feedback/`; without it the notebook uses the built-in demo set and says so.

# %%
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import html
import time

import pandas as pd
import torch
import transformers
from IPython.display import HTML, display
from torch.testing import assert_close

from core.data import DataError, load_demo_set, load_qa_feedback_spans
from core.models import TINY_MODEL, load_reward_model, load_tokenizer
from core.paths import shared_data_dir
from core.rewards.align import char_to_token_index, response_token_char_spans
from core.rewards.preference_rm import PreferenceReward, encode, format_pair, score_texts
from core.rewards.redistribution import RedistributedReward, map_to_tokens, rm_token_rewards, slow_redistribution
from core.rewards.segments import sentence_spans, subsentence_spans
from core.rewards.store import list_reward_models, load_reward_component
from core.rewards.tensor import compute_token_rewards

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
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
# With $\gamma = 1$ the return from token $t$ is $G_t = \sum_{t' \ge t} r_{t'} = R(x, y) - R(x, y_{<t})$: what is
# still to be gained from here. The episode's total is as before; what changes is that each token's advantage now
# sees its own contribution directly, instead of a share of one delayed number. The assumption behind it: a
# reward model trained on complete responses gives meaningful scores to prefixes.
#
# **One pass instead of $T$.** A causal transformer's hidden state at position $t$ depends only on tokens
# $\le t$. A sequence-classification head reads one position (the last token) of that state, so applying the same
# head at **every** position of one forward pass over $(x, y)$ gives $R(x, y_{\le t})$ for all $t$ at once: $T + 1$
# scores for the price of one. The slow way, one forward pass per prefix, is the definition; below we compute both.
#
# ## 2. The reward model and the answer

# %%
USE_TRAINED_RM = False  # True: the newest trained holistic ("preference") RM in core.rewards.store, if any

trained = [m for m in list_reward_models() if m.get("kind") == "preference"] if USE_TRAINED_RM else []
if trained:
    component = load_reward_component(trained[0]["path"], device="cpu")  # a PreferenceReward
    model, rm_tokenizer = component.model, component.tokenizer
    fmt, separator, max_length = component.fmt, component.separator, component.max_length
    print(f"trained reward model {trained[0]['name']!r} from {trained[0]['path']}")
else:
    rm_tokenizer = load_tokenizer(TINY_MODEL)
    model = load_reward_model(TINY_MODEL, device="cpu")  # 2-layer random Llama + a fresh scalar head
    torch.nn.init.normal_(model.score.weight, std=1.0, generator=torch.Generator().manual_seed(0))  # visible numbers
    fmt, separator, max_length = "text", " answer: ", 1024
    print(f"random reward model {TINY_MODEL!r} (numbers arbitrary, identities exact); "
          f"{sum(p.numel() for p in model.parameters()):,} parameters")
model.requires_grad_(False)

# %% [markdown]
# The answer is notebook 5's: the shortest QA-Feedback answer with both C1 and C2 human error spans, at least two
# sentences and more sub-sentences than sentences. The reward model reads `question: Q answer: Y` (FineGrainedRLHF's
# C1 reward model input; a trained RM reads the full prompt with passages, as it was trained).

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
    print(f"QA-Feedback: {len(records)} answers from {shared_data_dir() / 'qa_feedback'}")
except DataError as err:
    records = load_demo_set().spans
    print(f"FALLING BACK to the built-in demo set ({len(records)} records): {err}")
record = pick_record(records)
response, spans = record["response"], record["spans"]
prompt = record["prompt"] if trained else f"question: {record['question']}"
rm_text, response_start = format_pair(rm_tokenizer, prompt, response, fmt, separator)
print(f"prompt {prompt[:100]!r}{'...' if len(prompt) > 100 else ''}\nresponse {response!r}")

# %% [markdown]
# ## 3. By hand: the slow prefix-by-prefix loop
#
# Tokenise the reward model's input once (`core.rewards.preference_rm.encode`, which also returns each token's
# character span). Response tokens are those that end after the response starts. For each response position $t$,
# run the backbone on the prefix `input_ids[:t+1]` alone and apply the score head to the last hidden state: that is
# $R(x, y_{\le t})$. The baseline $R(x)$ is the same on the prompt tokens alone.

# %%
enc = encode(rm_tokenizer, [rm_text], max_length)
input_ids = enc["input_ids"]  # (1, L): prompt, separator, response
token_ends = enc["offset_mapping"][0, :, 1]  # (L,) character end of each token in rm_text
response_cols = [t for t in range(input_ids.shape[1]) if token_ends[t] > response_start]  # columns of y_1..y_T


def my_prefix_score(t):
    """R(x, y_<=t): a fresh forward pass over input_ids[:, :t+1], score head on the last hidden state."""
    hidden = model.model(input_ids=input_ids[:, : t + 1]).last_hidden_state  # (1, t+1, H)
    return model.score(hidden[:, -1]).squeeze().item()  # the head is a (H -> 1) linear layer


start = time.perf_counter()
with torch.no_grad():
    prompt_score = my_prefix_score(response_cols[0] - 1)  # R(x): prompt (and separator) only
    prefix_scores = [my_prefix_score(t) for t in response_cols]  # R(x, y_<=t), t = 1..T
slow_seconds = time.perf_counter() - start
my_rewards = [s - prev for s, prev in zip(prefix_scores, [prompt_score] + prefix_scores[:-1])]  # r_t
print(f"{len(response_cols)} response tokens -> {len(response_cols) + 1} forward passes in {slow_seconds:.2f} s")
print(f"R(x) = {prompt_score:+.4f}   R(x, y) = {prefix_scores[-1]:+.4f}   sum_t r_t = {sum(my_rewards):+.4f}")

# %% [markdown]
# **The same in one pass.** Run the backbone once over the whole input, apply the head at every position and take
# differences of neighbours.

# %%
start = time.perf_counter()
with torch.no_grad():
    all_scores = model.score(model.model(input_ids=input_ids).last_hidden_state).squeeze(-1)[0]  # (L,): R at every prefix
fast_seconds = time.perf_counter() - start
cols = torch.tensor(response_cols)
my_batched_rewards = all_scores[cols] - all_scores[cols - 1]  # (T,) r_t = R(x, y_<=t) - R(x, y_<t)
assert_close(all_scores[cols], torch.tensor(prefix_scores))  # the causal trick: position t == the prefix alone
assert_close(my_batched_rewards, torch.tensor(my_rewards))
print(f"one pass: {fast_seconds:.3f} s (vs {slow_seconds:.2f} s for the loop)")

# %% [markdown]
# **And with `core`.** `slow_redistribution` is `core`'s reference loop; `rm_token_rewards` the batched version used
# in training (it also returns each reward-model token's character span in the response, and the holistic
# $R(x, y)$). Both must equal our numbers, and the sums must telescope, for both choices of the first baseline.

# %%
core_slow = slow_redistribution(model, rm_tokenizer, prompt, response, fmt, separator, max_length)
(core_rewards,), (rm_spans,), (core_total,) = rm_token_rewards(model, rm_tokenizer, [prompt], [response], fmt, separator,
                                                               max_length)
assert_close(torch.tensor(core_slow), torch.tensor(my_rewards))
assert_close(torch.tensor(core_rewards), torch.tensor(my_rewards))

holistic = score_texts(model, rm_tokenizer, [rm_text], max_length)[0]  # R(x, y), read at the last token only
assert_close(torch.tensor(core_total), torch.tensor(holistic))
assert_close(torch.tensor(sum(core_rewards)), torch.tensor(holistic - prompt_score))  # first_token="prompt"
(zero_rewards,), _, _ = rm_token_rewards(model, rm_tokenizer, [prompt], [response], fmt, separator, max_length,
                                         first_token="zero")
assert_close(torch.tensor(sum(zero_rewards)), torch.tensor(holistic))  # first_token="zero": exactly R(x, y)
assert_close(torch.tensor(zero_rewards[1:]), torch.tensor(core_rewards[1:]))  # only the first token differs
print(f"holistic R(x, y) = {holistic:+.4f}")
print(f'first_token="prompt": sum r_t = {sum(core_rewards):+.4f} = R(x, y) - R(x) = {holistic - prompt_score:+.4f}')
print(f'first_token="zero"  : sum r_t = {sum(zero_rewards):+.4f} = R(x, y)')

# %% [markdown]
# A caveat on $R(x)$: here it is the score at the last token before the response, i.e. of the prompt *plus the
# separator's tokens* (`... answer:`). Any fixed text before the response works as the baseline, since it does not
# depend on $y$.
#
# ## 4. Onto the policy's tokens
#
# Redistribution happens on the reward model's tokens; PPO needs the policy's. `map_to_tokens` gives each reward-model
# token's reward to the policy token holding its last character, so the sum is kept. `RedistributedReward` is the
# token-level `RewardComponent` that does all of this, so `compute_token_rewards` can place RED rewards next to any
# other component. (It divides by the RM's training-set std, and `PreferenceReward` normalises the holistic score
# with the training-set mean and std; we pass no normalisation, i.e. mean 0 and std 1, to compare raw numbers.) The policy here shares the reward
# model's tokenizer (SmolLM2's), but it tokenises the response *alone*, so the boundary token differs (`" The"` for
# the RM, `"The"` for the policy).

# %%
policy_tokenizer = load_tokenizer(TINY_MODEL)
response_ids = policy_tokenizer(response, add_special_tokens=False).input_ids + [policy_tokenizer.eos_token_id]
_, policy_spans = response_token_char_spans(policy_tokenizer, response_ids)
my_mapped = [0.0] * len(policy_spans)
for r, (s, e) in zip(core_rewards, rm_spans):
    my_mapped[char_to_token_index(policy_spans, max(e, 1))] += r  # the policy token with the RM token's last character
assert_close(torch.tensor(my_mapped), torch.tensor(map_to_tokens(core_rewards, rm_spans, policy_spans)))

rm_meta = {"format": fmt, "separator": separator, "max_length": max_length}  # no "normalisation": mean 0, std 1
token_rewards = compute_token_rewards([prompt], [response_ids], policy_tokenizer, {
    "red": RedistributedReward(model, rm_tokenizer, rm_meta, name="red"),
    "holistic": PreferenceReward(model, rm_tokenizer, rm_meta, name="holistic"),
})
assert_close(token_rewards.components["red"][0], torch.tensor(my_mapped))
assert_close(token_rewards.totals()["red"], token_rewards.totals()["holistic"] - prompt_score)  # R(x, y) - R(x)
print(f"{len(rm_spans)} RM tokens -> {len(policy_spans)} policy tokens (incl. EOS); "
      f"sum kept: {token_rewards.totals()['red'].item():+.4f}; holistic on the last token "
      f"{token_rewards.totals()['holistic'].item():+.4f}")

# %% [markdown]
# ## 5. RED beside fine-grained sentence rewards
#
# Notebook 5's fine-grained rewards come from reward models trained on *span labels*, one judgement per segment
# (here: the human labels themselves, $\pm1$ per sentence for C2 and per sub-sentence for C1). RED's come from a model
# trained on *whole-response preferences*, one value per token. Sum RED over the tokens of sentence $j$ (ending at RM
# token $T_j$) and it telescopes again:
#
# $$
# \sum_{t = T_{j-1}+1}^{T_j} r_t = R(x, y_{\le T_j}) - R(x, y_{\le T_{j-1}}),
# $$
#
# a sentence-level reward made of **differences of prefix scores**: exactly the construction of the sentence-level
# detox reward of notebook 5, $-(\text{tox}(y_{1..j}) - \text{tox}(y_{1..j-1}))$, with $-\text{tox}$ replaced by $R$.
#
# First the tokens, coloured by $r_t$ (green positive, red negative; with the random default RM the pattern is
# noise), with the human error spans underlined (orange C1, red C2):

# %%
def token_heat_html(text, token_spans, values, spans):
    """HTML: each token's text on a background whose colour and strength follow its value; error spans underlined."""
    top = max(abs(v) for v in values) or 1.0
    underline = {"C1": "#f76707", "C2": "#e03131"}
    out = []
    for (s, e), v in zip(token_spans, values):
        if e <= s:
            continue
        alpha = abs(v) / top
        colour = f"rgba(47,158,68,{alpha:.2f})" if v > 0 else f"rgba(224,49,49,{alpha:.2f})"
        cats = sorted({sp["category"] for sp in spans if sp["start"] < e and s < sp["end"]})
        border = f"border-bottom:3px solid {underline[cats[0]]};" if cats else ""
        out.append(f'<span style="background:{colour};{border}" title="r_t = {v:+.4f}">{html.escape(text[s:e])}</span>')
    return f'<div style="line-height:2.0;font-size:15px;font-family:monospace">{"".join(out)}</div>'


display(HTML(token_heat_html(response, rm_spans, core_rewards, spans)))

# %% [markdown]
# Per token: the RED reward, the sentence and sub-sentence it belongs to, and the fine-grained rewards (human
# oracle) on the token where each segment ends. Tokens are the reward model's; a segment's reward goes on the token
# holding its last character (`char_to_token_index`).

# %%
def segment_of(char_index, segments):
    return next((n for n, (a, b) in enumerate(segments) if a <= char_index < b), None)


def human_value(segment, category):
    a, b = segment
    return -1.0 if any(sp["category"] == category and sp["start"] < b and a < sp["end"] for sp in spans) else 1.0


sentences, subsentences = sentence_spans(response), subsentence_spans(response)
sentence_end_token = [char_to_token_index(rm_spans, b) for _, b in sentences]  # T_j, in RM response tokens
sub_end_token = [char_to_token_index(rm_spans, b) for _, b in subsentences]
table = pd.DataFrame({
    "token": [response[s:e] for s, e in rm_spans],
    "RED r_t": core_rewards,
    "R(x, y<=t)": prefix_scores,
    "sentence": pd.array([segment_of(e - 1, sentences) for _, e in rm_spans], dtype="Int64"),
    "sub-sentence": pd.array([segment_of(e - 1, subsentences) for _, e in rm_spans], dtype="Int64"),
    "C2 (sentence)": 0.0, "C1 (sub-sentence)": 0.0,
})
for j, k in enumerate(sentence_end_token):
    table.loc[k, "C2 (sentence)"] = human_value(sentences[j], "C2")
for j, k in enumerate(sub_end_token):
    table.loc[k, "C1 (sub-sentence)"] = human_value(subsentences[j], "C1")
table

# %% [markdown]
# Per sentence: RED summed over the sentence's tokens (from the token after the previous sentence's end to this
# one's end), checked against the difference of prefix scores, beside the human C2 judgement.

# %%
rows, prev_end, prev_score = [], -1, prompt_score
for j, ((a, b), k) in enumerate(zip(sentences, sentence_end_token)):
    red_sum = sum(core_rewards[prev_end + 1 : k + 1])
    assert_close(torch.tensor(red_sum), torch.tensor(prefix_scores[k] - prev_score))  # telescoping within a sentence
    rows.append({"sentence": j, "text": response[a:b][:60] + ("..." if b - a > 60 else ""), "RED tokens": k - prev_end,
                 "sum of RED r_t": red_sum, "R(x, y<=T_j) - R(x, y<=T_j-1)": prefix_scores[k] - prev_score,
                 "C2 human": human_value((a, b), "C2"),
                 "C1 human (its sub-sentences)": [human_value(sub, "C1") for sub in subsentences if a <= sub[0] < b]})
    prev_end, prev_score = k, prefix_scores[k]
per_sentence = pd.DataFrame(rows)
assert_close(torch.tensor(float(per_sentence["sum of RED r_t"].sum())), torch.tensor(holistic - prompt_score))
per_sentence

# %% [markdown]
# **How to read the comparison.** Both give the policy credit *inside* the response, but from different information.
#
# | | fine-grained (notebook 5) | RED |
# |---|---|---|
# | labels needed | error spans per category (expensive) | whole-response preferences (cheap) |
# | density | one value per segment of each category | one value per token |
# | what a value means | "this segment has error $k$" | "this token moved the holistic score by $r_t$" |
# | sum over the response | $\sum_k w_k \sum_j R_k$, no holistic score behind it | the holistic score minus $R(x)$ |
#
# RED is only as good as the holistic model's prefix scores: a model that scores prefixes sensibly should push the
# tokens of the irrelevant clauses and of the wrong fact down (the underlined tokens above). With the random default
# model the colours are noise, which is why the checks below are identities, not behaviour. With a trained model
# (`USE_TRAINED_RM = True`) the same cells show what it credits.
#
# ## Summary: the derivation equals `core`
#
# The slow prefix-by-prefix loop, our one-pass version, `core`'s `slow_redistribution` and batched
# `rm_token_rewards` all give the same $r_t$; the sums telescope to $R(x, y) - R(x)$ (`first_token="prompt"`) or
# $R(x, y)$ (`"zero"`); moving the rewards onto the policy's tokens keeps the sum (`map_to_tokens`,
# `RedistributedReward` through `compute_token_rewards`); and RED summed over a sentence is that sentence's
# difference of prefix scores.

# %%
assert_close(torch.tensor(core_slow), torch.tensor(my_rewards))
assert_close(torch.tensor(core_rewards), my_batched_rewards)
assert_close(torch.tensor(sum(core_rewards)), torch.tensor(holistic - prompt_score))
assert_close(torch.tensor(sum(zero_rewards)), torch.tensor(holistic))
assert_close(torch.tensor(map_to_tokens(core_rewards, rm_spans, policy_spans)).sum(), torch.tensor(sum(core_rewards)))
assert_close(token_rewards.totals()["red"], token_rewards.totals()["holistic"] - prompt_score)
assert_close(torch.tensor(per_sentence["sum of RED r_t"].to_list()),
             torch.tensor(per_sentence["R(x, y<=T_j) - R(x, y<=T_j-1)"].to_list()))
print("all checks passed")
