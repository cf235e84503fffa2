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
# for Language Model Training") on one real QA-Feedback answer with human error spans: the spans shown on the
# text, turned into segments, then into policy token indices, then into the per-token reward of eq. 1, computed by
# hand and checked against `core.rewards`. Then the sentence-level detoxification reward, and what the reward
# weights $w_k$ do to the per-token rewards and to the GAE advantages.
#
# **Learning goals.** After this notebook you can
# 1. say what reward **density** means (one reward per sequence, per sentence, per sub-sentence) and why a denser
#    reward assigns credit better;
# 2. read eq. 1 of the paper: several reward models $R_k$, each judging its own segments, each reward placed on the
#    token where its segment ends, weighted by $w_k$, plus the per-token KL penalty;
# 3. go from human error spans (characters) to segments (characters) to policy tokens (indices) with
#    `core.rewards.segments` and `core.rewards.align`;
# 4. derive the sentence-level detox reward $-(\text{tox}(y_{1..j}) - \text{tox}(y_{1..j-1}))$ and show it sums to the
#    holistic $-\text{tox}(y)$;
# 5. predict how changing $w_k$ moves the per-token rewards and the advantages, and check that the reward is linear
#    in $w$.
#
# **What it leaves out.** Training the C1/C2/C3 reward models (`python -m core.trainers.finegrained`,
# `python -m core.trainers.reward`) and the PPO loop. Here each reward model is replaced by an **oracle**: the human
# labels themselves (a perfect C1/C2 reward model would output exactly these), so every number can be traced to a
# highlighted span. The policy and its reference are the random `tiny-random-llama` (only their log-probabilities are
# needed, for the KL term). Runs in seconds on CPU.
#
# **How to run.** `.venv/bin/jupyter lab notebooks/` from the project root (see `notebooks/README.md`). The real
# record is read from `../shared/data/qa_feedback/` (see its README); without it the notebook uses the built-in demo
# set (`core.data.load_demo_set`) and says so. *Content warning:* section 5 scores a deliberately rude sentence.

# %%
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy
import html

import pandas as pd
import torch
import transformers
from IPython.display import HTML, display
from torch.testing import assert_close

from core.data import C1_TYPES, C2_TYPES, DataError, load_demo_set, load_qa_feedback_spans
from core.logprobs import completion_logprobs
from core.models import TINY_MODEL, load_causal_lm, load_tokenizer
from core.paths import shared_data_dir
from core.rewards.align import char_to_token_index, response_token_char_spans
from core.rewards.finegrained import segment_labels
from core.rewards.segments import segment_spans, sentence_spans, subsentence_spans
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
# error spans by character. We pick the shortest answer that has both C1 and C2 spans, at least two sentences and
# more sub-sentences than sentences (so the three densities differ).

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
# category $k$: the labels the C1 / C2 reward models are trained on. By hand, then with
# `core.rewards.finegrained.segment_labels`:

# %%
def my_labels(text, spans, category, level):
    """[((start, end), 1 if the segment overlaps a span of the category else 0)] for each segment."""
    marked = [(s["start"], s["end"]) for s in spans if s["category"] == category]
    return [((a, b), int(any(s < b and a < e for s, e in marked))) for a, b in segment_spans(text, level)]


c1_labels = my_labels(response, spans, "C1", "subsentence")  # C1 is judged per sub-sentence
c2_labels = my_labels(response, spans, "C2", "sentence")  # C2 per sentence
assert c1_labels == segment_labels(response, spans, "C1")
assert c2_labels == segment_labels(response, spans, "C2")
for name, labels in (("C1 / sub-sentences", c1_labels), ("C2 / sentences", c2_labels)):
    print(name)
    for (a, b), y in labels:
        print(f"   [{a:3d}, {b:3d}) {'ERROR' if y else 'clean'}  {response[a:b]!r}")

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
for category, labels in (("C1", c1_labels), ("C2", c2_labels)):
    for j, ((a, b), y) in enumerate(labels):
        k = my_token_index(token_spans, b)
        assert k == char_to_token_index(token_spans, b)
        rows.append({"category": category, "segment": j, "chars": (a, b), "label": "ERROR" if y else "clean",
                     "T_j (token)": k, "token text": response[slice(*token_spans[k])], "segment ends with": response[b - 12:b]})
n_tokens = len(response_ids)
print(f"{n_tokens} response tokens (the last is EOS, span {token_spans[-1]})")
pd.DataFrame(rows)

# %% [markdown]
# ## 4. Eq. 1 by hand, and with `core`
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


span_table, missing_table = {response: spans}, {response: record["has_missing_info"]}
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
print(f"{input_ids.shape[1]} tokens in all; log pi/pi_ref on the response: "
      f"{(logprobs - ref_logprobs).numpy().round(3)[0, :8]} ...")

# %% [markdown]
# **Eq. 1 by hand**: a plain loop over models $k$ and segments $j$, writing $w_k R_k(x,y,j)$ at $T^k_j$, then the KL
# term at every token. `core` computes the same thing as `TokenRewards.combined(w)` (the weighted sum over
# components) followed by `core.rl.kl_penalized_rewards` (the KL term).

# %%
beta = 0.05
w_paper = {"c1_relevance": 0.3, "c2_factuality": 0.5, "c3_completeness": 0.3}  # FineGrainedRLHF's QA weights

human_values = {  # R_k(x, y, j) for each model k, in segment order, and each segment's character end
    "c1_relevance": [(-1.0 if y else 1.0, b) for (a, b), y in c1_labels],
    "c2_factuality": [(-1.0 if y else 1.0, b) for (a, b), y in c2_labels],
    "c3_completeness": [(-1.0 if record["has_missing_info"] else 1.0, None)],  # sequence level: the last token
}


def my_eq1(weights, beta):
    r = torch.zeros(1, n_tokens)
    for k, w_k in weights.items():
        for value, char_end in human_values[k]:
            T_j = n_tokens - 1 if char_end is None else my_token_index(token_spans, char_end)
            r[0, T_j] += w_k * value
    return r - beta * (logprobs - ref_logprobs)


core_eq1, per_token_kl = kl_penalized_rewards(token_rewards.combined(w_paper), logprobs, ref_logprobs,
                                              token_rewards.mask, beta)
assert_close(my_eq1(w_paper, beta), core_eq1)
assert_close(token_rewards.combined(w_paper), my_eq1(w_paper, 0.0))
total = sum(w * v for k, w in w_paper.items() for v, _ in human_values[k])
assert_close(core_eq1.sum(), torch.tensor(total) - beta * (logprobs - ref_logprobs).sum())  # the return telescopes
print(f"sum_t r_t = {core_eq1.sum().item():+.4f} = sum_k w_k sum_j R_k ({total:+.2f}) - beta * log-ratio of y "
      f"({beta * (logprobs - ref_logprobs).sum().item():+.4f})")

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
# policy which clause to drop. In this answer both sentences contain an irrelevant clause, so at sentence level both
# get $-1$ and every clause, clean or not, is blamed. Per sub-sentence, the mean advantage:

# %%
summary = table.groupby("sub-sentence")[[f"A {lv}" for lv in density.components]].mean()
summary.insert(0, "C1 label", ["ERROR" if y else "clean" for _, y in c1_labels])
summary

# %% [markdown]
# ## 6. Sentence-level detoxification: differences of toxicity
#
# For detoxification (their sec. 3) there is one scorer, $\text{tox}(\cdot) \in [0, 1]$ (Perspective API in the paper;
# here `alt-profanity-check`, `core.rewards.toxicity.ProfanityToxicity`). The **holistic** reward is $-\text{tox}(y)$
# on the last token. The **fine-grained** one gives sentence $j$ (ending at token $T_j$) the change in toxicity it
# causes:
#
# $$
# r_{T_j} = -\big(\text{tox}(y_{1..j}) - \text{tox}(y_{1..j-1})\big), \qquad \text{tox}(y_{1..0}) = 0,
# \qquad \sum_{j=1}^{m} r_{T_j} = -\text{tox}(y_{1..m}) = -\text{tox}(y).
# $$
#
# The sum telescopes: both rewards have the same return from the first token, but the fine-grained one says which
# sentence made the answer toxic, and credits a sentence that makes it *less* toxic. A deliberately rude reply:

# %%
detox_prompt = "Tell me what you really think of people who chew loudly."
rude = ("Sure, chewing noises bother a lot of people. Honestly, people who chew like that are disgusting pigs and "
        "total idiots. A polite word usually works better than a glare.")
scorer = ProfanityToxicity()
sentences = sentence_spans(rude)
prefix_tox = scorer.probability([rude[:e] for _, e in sentences])  # tox(y_1..j), j = 1..m
my_sentence_rewards = [-(t - prev) for t, prev in zip(prefix_tox, [0.0] + prefix_tox[:-1])]
whole_tox = scorer.probability([rude])[0]
for (a, b), t, r in zip(sentences, prefix_tox, my_sentence_rewards):
    print(f"tox(y_1..j) = {t:.4f}   r_j = {r:+.4f}   {rude[a:b]!r}")
print(f"sum_j r_j = {sum(my_sentence_rewards):+.4f};  holistic -tox(y) = {-whole_tox:+.4f}")
assert abs(sum(my_sentence_rewards) + whole_tox) < 1e-6

# %% [markdown]
# The same with `core`'s components on the policy's tokens: `SentenceToxicityReward` must give our numbers, at the
# tokens where the sentences end, and sum to `HolisticToxicityReward`'s single value on the last token.

# %%
rude_ids = tokenizer(rude, add_special_tokens=False).input_ids
detox = compute_token_rewards([detox_prompt], [rude_ids], tokenizer,
                              {"holistic": HolisticToxicityReward(scorer), "sentence": SentenceToxicityReward(scorer)})
_, rude_spans = response_token_char_spans(tokenizer, rude_ids)
my_sentence_tensor = place_segment_rewards([my_sentence_rewards], [[my_token_index(rude_spans, e) for _, e in sentences]],
                                           detox.mask)
assert_close(detox.components["sentence"], my_sentence_tensor)
assert_close(detox.components["holistic"], place_sequence_reward(torch.tensor([-whole_tox]), detox.mask))
assert_close(detox.totals()["sentence"], detox.totals()["holistic"])
nonzero = detox.components["sentence"][0].nonzero().squeeze(-1).tolist()
print("sentence rewards on tokens", nonzero, detox.components["sentence"][0, nonzero].numpy().round(4))
print("holistic reward on token", len(rude_ids) - 1, detox.components["holistic"][0, -1].item())

# %% [markdown]
# ## 7. Changing the weights $w_k$
#
# The weights decide which error the policy is pushed hardest to avoid. Wu et al. report that they can steer
# behaviour this way: a larger relevance weight $w_1$ favours short, to-the-point answers (every irrelevant or
# redundant clause costs more), while more weight on factuality and completeness favours answers that include more
# verified information. Here, on our one answer, compare the paper's weights $w^{(1)}$ with a relevance-heavy
# $w^{(2)}$: the per-token reward of eq. 1 (same $\beta$) and the advantages of a fresh critic.

# %%
w_relevance = {"c1_relevance": 0.8, "c2_factuality": 0.1, "c3_completeness": 0.1}
settings = {"w1 (paper)": w_paper, "w2 (relevance-heavy)": w_relevance}
weights_table = pd.DataFrame({"token": table["token"], "sub-sentence": table["sub-sentence"]})
for label, w in settings.items():
    r = kl_penalized_rewards(token_rewards.combined(w), logprobs, ref_logprobs, token_rewards.mask, beta)[0]
    assert_close(r, my_eq1(w, beta))
    weights_table[f"r {label}"] = r[0].numpy()
    weights_table[f"A {label}"] = gae(r, zeros, token_rewards.mask, gamma=1.0, lam=lam)[0][0].numpy()
print(pd.DataFrame(settings).T.to_string())
display(weights_table)
by_clause = weights_table.groupby("sub-sentence")[[c for c in weights_table if c.startswith("A ")]].mean()
by_clause.insert(0, "C1 label", ["ERROR" if y else "clean" for _, y in c1_labels])
by_clause.insert(1, "C2 label (its sentence)", [next("ERROR" if y else "clean" for (a, b), y in c2_labels if a <= s < b)
                                                for s, _ in subsentence_spans(response)])
by_clause

# %% [markdown]
# Under the paper's weights the C2 reward ($\pm0.5$) outweighs the C1 reward ($\pm0.3$) wherever they land on the same
# token (a sentence's last sub-sentence): a redundant clause in a factually clean sentence is barely penalised, and a
# clean clause in a factually wrong sentence is not rewarded. With the relevance-heavy $w^{(2)}$ the C1 rewards
# dominate: clean clauses get positive advantages, irrelevant or redundant ones clearly negative ones, while the
# factual error (C2) and the missing information (C3, on EOS) barely register.
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
# Segment labels from human spans (`segment_labels`), segment ends to policy tokens (`char_to_token_index`), eq. 1
# with three reward models and the KL term (`compute_token_rewards` + `TokenRewards.combined` +
# `kl_penalized_rewards`), the sentence-level detox reward as differences of toxicity summing to the holistic one
# (`SentenceToxicityReward`, `HolisticToxicityReward`), and the linearity of the reward in $w$ all match.

# %%
assert c1_labels == segment_labels(response, spans, "C1") and c2_labels == segment_labels(response, spans, "C2")
assert all(my_token_index(token_spans, b) == char_to_token_index(token_spans, b) for (_, b), _ in c1_labels + c2_labels)
assert_close(my_eq1(w_paper, beta), core_eq1)
assert_close(my_eq1(w_relevance, beta),
             kl_penalized_rewards(token_rewards.combined(w_relevance), logprobs, ref_logprobs, token_rewards.mask, beta)[0])
assert_close(detox.components["sentence"], my_sentence_tensor)
assert_close(detox.totals()["sentence"], torch.tensor([-whole_tox]))
assert_close(token_rewards.combined(w_paper) + token_rewards.combined(w_relevance), token_rewards.combined(w_sum))
assert set(C1_TYPES) | set(C2_TYPES) >= {s["error_type"] for s in spans}
print("all checks passed")
