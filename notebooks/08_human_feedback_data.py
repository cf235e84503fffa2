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
# # 8. Human feedback data: ratings, rankings, pairs, and how far annotators agree
#
# **What this notebook is.** Every reward model in this course is fitted to human judgements. This notebook looks
# at the judgements themselves: the three formats people give them in (a 1–7 rating, a ranking of $K$ responses, a
# pairwise choice), how a ranking becomes $\binom K2$ training pairs and why InstructGPT keeps those pairs together,
# and how to measure whether annotators agree (Cohen's $\kappa$, Krippendorff's $\alpha$, pairwise agreement), each
# with a 95% interval. It uses three real data sets and the workbench's feedback studio.
#
# **Learning goals.** After this notebook you can
# 1. name the three feedback formats, what each costs an annotator, and why pairwise comparisons are the most
#    reliable of the three;
# 2. expand a ranking with ties into its strictly ordered pairs, and explain why InstructGPT puts all
#    $\binom K2$ pairs of a prompt in one batch element ($K$ forward passes instead of $K(K-1)$; no
#    overfitting from correlated pairs);
# 3. compute Cohen's $\kappa$ and Krippendorff's $\alpha$, say what "chance-corrected" means, and put a bootstrap
#    interval on them;
# 4. read agreement figures of real data: QA-Feedback's holistic preferences against its own fine-grained error
#    marks, HH-RLHF's labels against simple heuristics, crowd labels of the Davidson tweets;
# 5. build a feedback-studio store through `core.feedback`, export it and read every export back with `core`'s
#    loaders, up to a reward model trained on the labels.
#
# **What it leaves out.** Collecting labels in the app (see `docs/feedback.md`), active learning, annotator
# training and quality control beyond agreement statistics.
#
# **How to run.** `.venv/bin/jupyter lab notebooks/` from the project root. The real data is read from
# `../shared/data/` (`qa_feedback/`, `hh_rlhf/`, `davidson_tweets/`; see its README). Without it the notebook uses
# the built-in demo set, says so, and skips the statistics that need the real data. Runs in well under a minute on
# a CPU; the only model is `tiny-random-llama`. *Content warning:* HH-RLHF and the Davidson tweets contain offensive
# text by design; this notebook prints none of the tweets.

# %%
import os

SOLUTIONS = os.environ.get("RLHF_WORKBENCH_SOLUTIONS", "0") == "1"  # True: the exercises use the reference solutions
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import itertools
import json
import math
import random
import tempfile
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from sklearn.metrics import cohen_kappa_score
from torch.testing import assert_close

from core import data
from core.feedback.agreement import krippendorff_alpha, pairwise_ranking_agreement, rating_alpha, ranking_agreement
from core.feedback.export import export_project, import_qa_feedback, ordered_pairs, ranks_from_judgements
from core.feedback.store import FeedbackStore
from core.feedback.train import FeedbackRMConfig, ranking_loss_with_ties, train_feedback_reward_model
from core.losses import bradley_terry_loss, ranking_loss
from core.paths import shared_data_dir

torch.manual_seed(0)
rng = np.random.default_rng(0)
QA_DIR = shared_data_dir() / "qa_feedback"
HH_FILE = shared_data_dir() / "hh_rlhf" / "harmless_base.jsonl.gz"
DAVIDSON_FILE = shared_data_dir() / "davidson_tweets" / "labeled_data.csv"
HAVE_QA, HAVE_HH, HAVE_DAVIDSON = (QA_DIR / "feedback.json").is_file(), HH_FILE.is_file(), DAVIDSON_FILE.is_file()
print(f"real data in {shared_data_dir()}: QA-Feedback {HAVE_QA}, HH-RLHF {HAVE_HH}, Davidson {HAVE_DAVIDSON}")
if not (HAVE_QA and HAVE_HH and HAVE_DAVIDSON):
    print("SOME REAL DATA IS MISSING: those sections fall back to the built-in demo set (core/demo_data) or are skipped")


def bootstrap_interval(statistic, n_units, n_resamples=400, seed=0):
    """95% percentile interval of statistic(indices) over resamples of whole units (questions, tweets, items)."""
    g = np.random.default_rng(seed)
    values = [statistic(g.integers(0, n_units, n_units)) for _ in range(n_resamples)]
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


# %% [markdown]
# ## 1. Three formats of human feedback
#
# | format | the annotator gives | used by | cost and reliability |
# |---|---|---|---|
# | **rating** (Likert) | a score per response, e.g. 1–7, plus yes/no flags | InstructGPT's labelling interface (Ouyang et al. 2022, App. B): a 1–7 overall score and eight metadata flags per response | one response at a time, cheap; but each annotator uses the scale differently (one's 5 is another's 3), and the same annotator drifts over a session |
# | **ranking** of $K$ | an order of $K$ responses to one prompt (ties allowed) | InstructGPT: $K = 4$ to $9$ responses ranked after rating them | one decision per prompt yields $\binom K2$ comparisons; harder as $K$ grows |
# | **pairwise** | which of two responses is better (or a tie) | Anthropic HH-RLHF (Bai et al. 2022), QA-Feedback's six judgements among four answers (Wu et al. 2023) | the easiest judgement to make and the most repeatable; only a difference is asked for |
#
# **Why pairwise comparisons are more reliable.** A rating asks for an *absolute* number on a scale nobody has
# calibrated: annotators differ by an offset (lenient vs harsh) and a spread (some use 1 and 7, others stay at 3–5),
# and these differences are noise for a reward model. A comparison asks only which response is better, a judgement
# every annotator's own offset and spread cancel out of: if annotator $a$ reports $s_a(y) = \mu_a + \sigma_a\,u(y)$,
# then $s_a(y_1) > s_a(y_2) \iff u(y_1) > u(y_2)$ for any $\mu_a$ and any $\sigma_a > 0$. People are also better at
# relative than at absolute judgements, and a comparison matches the Bradley–Terry model the reward model is trained
# with (notebook 1). InstructGPT collects ratings *and* a ranking, but trains the reward model on the ranking only.
# Section 4 measures this on simulated annotators in the feedback studio.
#
# The three formats in the data: QA-Feedback gives six pairwise judgements among four answers (1 = the first is
# preferred, 2 = the second, 0 = no preference), in the order 1v2, 1v3, 1v4, 2v3, 2v4, 3v4; HH-RLHF gives one
# pairwise choice; the studio stores ratings and rankings.

# %%
if HAVE_QA:
    qa_raw = json.loads((QA_DIR / "feedback.json").read_text(encoding="utf-8"))
    qa_spans = data.load_qa_feedback_spans(QA_DIR)  # checked records: fine-grained spans on answer 1
    judgements = [r["preference"] for r in qa_raw]
else:
    print("QA-Feedback not found: FALLING BACK to the demo set's 10 pairs (K = 2, one judgement each)")
    demo = data.load_demo_set()
    qa_raw, qa_spans = [], demo.spans
    judgements = [[1] for _ in demo.preferences]  # the demo's chosen answer is preferred
K_QA = 4 if HAVE_QA else 2
print(f"{len(judgements)} prompts; the judgements of the first: {judgements[0]}")
print(f"as a ranking of its {K_QA} answers (1 = best): {ranks_from_judgements(judgements[0], K_QA)}")

# Pairwise judgements need not be transitive (a > b, b > c, c > a). Count cyclic triads among strictly judged triples.
n_triads = n_cyclic = 0
for js in judgements:
    beats = {}
    for (a, b), p in zip(itertools.combinations(range(K_QA), 2), js):
        if p:
            beats[(a, b)], beats[(b, a)] = p == 1, p == 2
    for a, b, c in itertools.combinations(range(K_QA), 3):
        if all((x, y) in beats for x, y in ((a, b), (b, c), (a, c))):
            n_triads += 1
            n_cyclic += (beats[(a, b)] and beats[(b, c)] and beats[(c, a)]) or (beats[(b, a)] and beats[(c, b)] and beats[(a, c)])
print(f"strictly judged triads: {n_triads}, cyclic (intransitive) ones: {n_cyclic}")

# %% [markdown]
# None of QA-Feedback's strictly judged triads is cyclic: its six judgements per question behave like a ranking
# with ties (consistent with an interface that asked for an order of the four answers). That is why the studio can
# import them as rankings (`core.feedback.export.ranks_from_judgements`: answers ordered by wins, a tie counting one
# half). Independent pairwise judgements by different people would not be guaranteed to be transitive.
#
# ## 2. From a ranking to pairs: the $\binom K2$ expansion
#
# A ranking of $K$ responses without ties implies $\binom K2 = K(K-1)/2$ pairwise comparisons; with ties, only the
# strictly ordered pairs count (a tie says nothing about which is better). InstructGPT eq. 1 averages the
# Bradley–Terry loss over them:
#
# $$
# \text{loss}(\theta) = -\frac{1}{\binom K2}\,\mathbb E_{(x, y_w, y_l)\sim D}\Big[\log\sigma\big(r_\theta(x,y_w) - r_\theta(x,y_l)\big)\Big].
# $$
#
# ### Exercise 8.1 — the $\binom K2$ expansion with ties
#
# Write `ranking_to_pairs(ranks)`: `ranks[i]` is response $i$'s rank (1 = best, equal ranks are ties); return the
# list of `(winner, loser)` index pairs of every strictly ordered pair, enumerating $i < j$ in order. Graded against
# `core.feedback.export.ordered_pairs` on 500 random rankings with ties, and on a hand-made example.

# %%
def ranking_to_pairs(ranks):
    """ranks: list of K ints (1 = best, equal = tie) -> list of (winner, loser) index pairs, at most K(K-1)/2."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 8.1: write ranking_to_pairs")


if SOLUTIONS:
    from solutions.nb08 import ranking_to_pairs  # noqa: F811

# %%
assert ranking_to_pairs([2, 1, 3, 2]) == [(1, 0), (0, 2), (1, 2), (1, 3), (3, 2)]  # responses 0 and 3 tie: no pair
g = random.Random(0)
for _ in range(500):
    k = g.randint(2, 9)
    ranks = [g.randint(1, k) for _ in range(k)]
    assert ranking_to_pairs(ranks) == ordered_pairs(ranks, "all"), ranks
    assert len(ranking_to_pairs(sorted(set(ranks)))) == math.comb(len(set(ranks)), 2)  # no ties: all C(K, 2)
print("Exercise 8.1: ranking_to_pairs equals core's ordered_pairs on 500 random rankings")

qa_rankings = [r for r in (ranks_from_judgements(js, K_QA) for js in judgements) if r is not None]
n_pairs = sum(len(ranking_to_pairs(r)) for r in qa_rankings)
print(f"{len(qa_rankings)} rankings of {K_QA} answers give {n_pairs} training pairs "
      f"(at most {math.comb(K_QA, 2)} per ranking; ties give none)")

# %% [markdown]
# **Why InstructGPT puts all pairs of a prompt in one batch element.** Each response of a $K$-ranking appears in
# $K - 1$ of its pairs. Shuffled into the data set as independent examples, the pairs of one prompt spread over an
# epoch, so the reward model sees every response $K - 1$ times per epoch and its pairs are strongly correlated:
# Ouyang et al. report that this made the reward model overfit within a single epoch. Treating the ranking as one
# batch element fixes that (every response is seen once per epoch), and it is cheaper: the $K$ responses need $K$
# forward passes, and all $\binom K2$ differences come from those $K$ scalars, instead of $2\binom K2 = K(K-1)$ passes
# if every pair were scored on its own (for $K = 9$: 9 instead of 72).
#
# `core.losses.ranking_loss` takes the `(P, K)` rewards ordered best first and averages the pair losses of each
# prompt; `core.feedback.train.ranking_loss_with_ties` does the same for rankings with ties. The check below builds
# the pairs with your `ranking_to_pairs` and compares: the per-prompt average of Bradley–Terry losses over the
# expanded pairs equals both.

# %%
K, P = 9, 5
rewards = torch.randn(P, K, dtype=torch.float64)  # (P, K): one forward pass per response
ranks = torch.stack([torch.randperm(K) + 1 for _ in range(P)])  # (P, K): a ranking per prompt, no ties
per_pair = []
for p in range(P):
    pairs = ranking_to_pairs(ranks[p].tolist())  # C(K, 2) = 36 (winner, loser) pairs
    w, l = torch.tensor(pairs).T
    per_pair.append(bradley_terry_loss(rewards[p, w], rewards[p, l]).mean())
order = ranks.argsort(dim=1)  # response indices best first
assert_close(torch.stack(per_pair), ranking_loss(rewards.gather(1, order)))
assert_close(torch.stack(per_pair), ranking_loss_with_ties(rewards, ranks))
print(f"K = {K}: {K} forward passes give all {math.comb(K, 2)} pair losses; scored pair by pair: {K * (K - 1)} passes")
print(f"times each response enters the loss per epoch: {K - 1} as separate pairs, 1 as one batch element")

# %% [markdown]
# **Correlated pairs also shrink the effective sample size.** The same correlation misleads evaluation: the six
# pairs of a QA-Feedback question are not six independent observations. Below, the accuracy of a reward-free rule
# ("the answer with fewer words wins") on the strictly judged pairs, with two 95% intervals: one that resamples
# pairs as if they were independent, and one that resamples whole questions (the honest one, as the held-out
# figures in `docs/reward_models.md` do). The ratio of their variances is the *design effect*.

# %%
if HAVE_QA:
    rows = []  # (question, rule agrees with the annotator)
    for q, r in enumerate(qa_raw):
        for (a, b), p in zip(data.PAIR_ORDER, r["preference"]):
            la, lb = len(r[f"prediction {a}"].split()), len(r[f"prediction {b}"].split())
            if p and la != lb:
                rows.append((q, (la < lb) == (p == 1)))
    question_of = np.array([q for q, _ in rows])
    hit = np.array([h for _, h in rows], dtype=float)
    by_question = [np.flatnonzero(question_of == q) for q in range(len(qa_raw))]
    pair_ci = bootstrap_interval(lambda idx: hit[idx].mean(), len(hit))
    question_ci = bootstrap_interval(lambda idx: hit[np.concatenate([by_question[q] for q in idx])].mean(), len(qa_raw))
    design_effect = ((question_ci[1] - question_ci[0]) / (pair_ci[1] - pair_ci[0])) ** 2
    print(f"'fewer words wins' on {len(hit)} QA-Feedback pairs of {len(qa_raw)} questions: {hit.mean():.3f}")
    print(f"  95% interval resampling pairs:     {pair_ci[0]:.3f} to {pair_ci[1]:.3f}")
    print(f"  95% interval resampling questions: {question_ci[0]:.3f} to {question_ci[1]:.3f}  (design effect {design_effect:.1f})")
    assert design_effect > 1.2, "pairs of one question should be correlated"
else:
    print("QA-Feedback not found: the design-effect check needs its six pairs per question (skipped)")

# %% [markdown]
# ## 3. Agreement: chance-corrected, with an interval
#
# Two annotators who label 90% of items "fine" agree on 82% of items by chance alone ($0.9^2 + 0.1^2$). Raw agreement
# is therefore not comparable across tasks; chance-corrected statistics are:
#
# $$
# \kappa = \frac{p_o - p_e}{1 - p_e}, \qquad p_e = \sum_c p_a(c)\,p_b(c) \qquad\text{(Cohen's } \kappa\text{, two annotators)},
# $$
#
# where $p_o$ is the observed agreement and $p_e$ the agreement of two annotators labelling at random with their own
# label frequencies $p_a(c), p_b(c)$. $\kappa = 1$ is perfect agreement, $0$ is chance, negative is worse than
# chance. **Krippendorff's $\alpha = 1 - D_o / D_e$** generalises it to any number of annotators, missing labels and
# a distance between labels (nominal, ordinal, interval); `core.feedback.agreement.krippendorff_alpha` implements it
# and the studio reports it on the 1–7 ratings. **Pairwise ranking agreement** (the fraction of response pairs two
# annotators order the same way) is what InstructGPT reports: 72.6 ± 1.5% between its training labellers.
#
# ### Exercise 8.2 — Cohen's $\kappa$
#
# Write `cohens_kappa(labels_a, labels_b)` for two equal-length sequences of labels (any hashable values). Graded
# against the textbook example (50 items: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no, $\kappa = 0.4$) and against
# `sklearn.metrics.cohen_kappa_score` on random labels.

# %%
def cohens_kappa(labels_a, labels_b):
    """labels_a, labels_b: N labels each -> Cohen's kappa, (p_o - p_e) / (1 - p_e)."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 8.2: write cohens_kappa")


if SOLUTIONS:
    from solutions.nb08 import cohens_kappa  # noqa: F811

# %%
a = ["yes"] * 25 + ["no"] * 25
b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
assert abs(cohens_kappa(a, b) - 0.4) < 1e-12
for seed in range(20):
    g = np.random.default_rng(seed)
    x = g.integers(0, 4, 200)
    y = np.where(g.random(200) < 0.6, x, g.integers(0, 4, 200))  # agrees 60% of the time by design, plus chance
    assert abs(cohens_kappa(x, y) - cohen_kappa_score(x, y)) < 1e-9
print("Exercise 8.2: cohens_kappa matches the textbook example and scikit-learn")

# %% [markdown]
# **QA-Feedback: does the holistic preference agree with the fine-grained marks?** The same annotators gave, for
# every question, a preference among four answers and fine-grained error marks on answer 1 (C1/C2 spans and C3
# missing information). If both measure "quality", an answer 1 with few marks should win its comparisons. Two binary
# labels per question: *holistic*: answer 1 wins at least 2 of its 3 comparisons (a tie counts one half); *fine-grained*:
# answer 1 has at most the median number of marks. $\kappa$ between them, with a 95% interval from resampling
# questions, and the rank correlation of wins and marks.

# %%
if HAVE_QA:
    wins = np.array([sum({1: 1.0, 0: 0.5, 2: 0.0}[p] for p in r["preference"][:3]) for r in qa_raw])  # 1v2, 1v3, 1v4
    marks = np.array([len(s["spans"]) + len(s["missing_info"]) for s in qa_spans])
    holistic_good, fine_good = wins >= 2, marks <= np.median(marks)
    qa_kappa = cohens_kappa(holistic_good, fine_good)
    qa_kappa_ci = bootstrap_interval(lambda idx: cohens_kappa(holistic_good[idx], fine_good[idx]), len(wins))
    rank_corr = float(np.corrcoef(np.argsort(np.argsort(wins)), np.argsort(np.argsort(marks)))[0, 1])
    print(f"{len(wins)} questions: answer 1 wins >= 2 of 3 in {holistic_good.mean():.2f}, has <= {np.median(marks):.0f} "
          f"marks in {fine_good.mean():.2f}")
    print(f"Cohen's kappa(holistic, fine-grained) = {qa_kappa:.3f}  (95% interval {qa_kappa_ci[0]:.3f} to {qa_kappa_ci[1]:.3f})")
    print(f"rank correlation of wins with marks: {rank_corr:.3f}")
else:
    qa_kappa, qa_kappa_ci = None, None
    print("QA-Feedback not found: the holistic vs fine-grained comparison needs it (skipped)")

# %% [markdown]
# The agreement is weak: $\kappa$ around 0.1, and the rank correlation of wins with marks is small and negative (more
# marks, slightly fewer wins). The two kinds of feedback do not measure the same thing: a holistic preference folds
# relevance, factuality, completeness and style into one bit, and the fine-grained marks count errors without
# weighing them. This is the observation behind fine-grained RLHF (notebook 5): separate reward models for separate
# error types carry information a single preference loses.
#
# **HH-RLHF: one label per pair.** HH-RLHF has a single crowdworker's choice per pair, so annotator–annotator
# agreement cannot be measured on it; what we can measure is how far a simple rule agrees with the label. Shown in a
# random order (as the studio's `import_hh_rlhf` shows them), the label becomes "A or B", and $\kappa$ compares the
# annotator with a rule that is not told which response was chosen.

# %%
if HAVE_HH:
    hh = data.load_hh_rlhf(limit=1000)
    g = random.Random(0)
    hh_first_is_chosen = np.array([g.random() < 0.5 for _ in hh])  # position A holds the chosen response
    hh_label = np.where(hh_first_is_chosen, "A", "B")
    resp_a = [r["chosen"] if f else r["rejected"] for r, f in zip(hh, hh_first_is_chosen)]
    resp_b = [r["rejected"] if f else r["chosen"] for r, f in zip(hh, hh_first_is_chosen)]
    declines = ("sorry", "can't", "cannot", "i won't", "not able", "i don't think")  # both or neither: A wins
    rules = {
        "the shorter response wins": np.where([len(x) <= len(y) for x, y in zip(resp_a, resp_b)], "A", "B"),
        "the response that declines wins": np.where(
            [any(d in x.lower() for d in declines) >= any(d in y.lower() for d in declines) for x, y in zip(resp_a, resp_b)],
            "A", "B"),
    }
    hh_kappas = {}
    for name, rule in rules.items():
        k_ = cohens_kappa(hh_label, rule)
        ci = bootstrap_interval(lambda idx, rule=rule: cohens_kappa(hh_label[idx], rule[idx]), len(hh_label))
        hh_kappas[name] = (k_, ci)
        print(f"HH-RLHF label vs '{name}': agreement {np.mean(hh_label == rule):.3f}, "
              f"kappa {k_:.3f} (95% interval {ci[0]:.3f} to {ci[1]:.3f}), {len(hh)} pairs")
else:
    hh_kappas = {}
    print("HH-RLHF not found: the label-vs-rule agreement needs it (skipped)")

# %% [markdown]
# **The Davidson tweets: real inter-annotator agreement.** Davidson et al. (2017) had 3 or more crowdworkers label
# each of 24,783 tweets as hate speech, offensive, or neither, and publish the counts per tweet. That is exactly what
# Krippendorff's $\alpha$ (nominal) needs: per unit, how many annotators chose each category. The coincidence matrix
# of unit $u$ with $m_u$ labels is $o_{u,ck} = n_{uc}(n_{uk} - [c = k])/(m_u - 1)$; summed over units it gives
# $n_c = \sum_k o_{ck}$, $n = \sum_c n_c$, and
#
# $$
# \alpha = 1 - \frac{D_o}{D_e},\qquad D_o = \frac{1}{n}\sum_{c \ne k} o_{ck},\qquad D_e = \frac{n^2 - \sum_c n_c^2}{n(n-1)}.
# $$
#
# ### Exercise 8.3 — Krippendorff's $\alpha$ from category counts
#
# Write `alpha_nominal_from_counts(counts)` for a `(U, C)` array of counts (units with fewer than two labels are
# left out). Graded against `core.feedback.agreement.krippendorff_alpha` on random data with missing labels; then it
# is vectorised enough to bootstrap $\alpha$ over all 24,783 tweets.

# %%
def alpha_nominal_from_counts(counts):
    """counts: (U, C) labels per unit and category -> Krippendorff's alpha, nominal metric."""
    # YOUR CODE HERE
    raise NotImplementedError("Exercise 8.3: write alpha_nominal_from_counts")


if SOLUTIONS:
    from solutions.nb08 import alpha_nominal_from_counts  # noqa: F811

# %%
g = np.random.default_rng(1)
truth = g.integers(0, 3, 60)
labels = [[int(t) if g.random() < 0.7 else int(g.integers(0, 3)) for t in truth] for _ in range(4)]  # 4 coders
for coder in labels:  # some labels missing
    for u in g.choice(60, 15, replace=False):
        coder[u] = None
counts = np.array([[sum(coder[u] == c for coder in labels) for c in range(3)] for u in range(60)])
assert abs(alpha_nominal_from_counts(counts) - krippendorff_alpha(labels, "nominal")) < 1e-9
print(f"Exercise 8.3: alpha from counts = {alpha_nominal_from_counts(counts):.4f} = core's krippendorff_alpha")

if HAVE_DAVIDSON:
    tweets = data.load_davidson(DAVIDSON_FILE)
    tweet_counts = np.array([[t["hate_speech"], t["offensive_language"], t["neither"]] for t in tweets])
    davidson_alpha = alpha_nominal_from_counts(tweet_counts)
    davidson_ci = bootstrap_interval(lambda idx: alpha_nominal_from_counts(tweet_counts[idx]), len(tweet_counts), 200)
    m = tweet_counts.sum(1)
    pair_agree = ((tweet_counts * (tweet_counts - 1)).sum(1) / (m * (m - 1))).mean()  # P(two labels of a tweet agree)
    sub = tweet_counts[:500]  # core's pure-Python alpha on a subset, as a second check on real data
    coders = [[c for c in range(3) for _ in range(row[c])] for row in sub]
    matrix = [[u[i] if i < len(u) else None for u in coders] for i in range(max(map(len, coders)))]
    assert abs(alpha_nominal_from_counts(sub) - krippendorff_alpha(matrix, "nominal")) < 1e-9
    print(f"{len(tweets)} tweets, {m.sum()} labels ({m.min()} to {m.max()} per tweet): two labels of a tweet agree "
          f"{pair_agree:.3f} of the time")
    print(f"Krippendorff's alpha (nominal) = {davidson_alpha:.3f}  (95% interval {davidson_ci[0]:.3f} to {davidson_ci[1]:.3f})")
    assert pair_agree - davidson_alpha > 0.2  # much of the raw agreement is chance: 'offensive' dominates the labels
else:
    davidson_alpha, davidson_ci = None, None
    print("Davidson tweets not found: the crowd-agreement example needs them (skipped)")

# %% [markdown]
# Two labels of the same tweet agree about 80% of the time, yet $\alpha$ is only about 0.54: most tweets in the set
# are labelled offensive, so two random labels already agree more often than not. Raw agreement rewards a skewed label
# distribution; $\alpha$ and $\kappa$ do not. (Davidson et al. report 92% agreement from their crowdsourcing platform,
# a different, uncorrected figure.)
#
# ## 4. The feedback studio's data: build, label, agree, export, train
#
# The studio keeps labels in one SQLite file (`core.feedback.store.FeedbackStore`). Below, a store in a temporary
# folder gets a project of QA-Feedback questions with their four answers, pre-labelled by the data set's own
# annotator (`import_qa_feedback`: spans and correction of answer 1, a ranking from the six judgements); without the
# real data, a K = 2 project of the demo pairs.
#
# Two **simulated** annotators (not people: a model of people) then rate every answer 1–7 and rank the answers. Both
# perceive the same latent quality (from the real annotator's ranking) plus their own noise; *ana* is lenient and uses
# the whole scale, *ben* is harsh and cautious ($s = \mu_a + \sigma_a u$, rounded and clipped to 1–7). The question:
# which format shows that they agree?

# %%
workdir = Path(tempfile.mkdtemp(prefix="nb08-"))
store = FeedbackStore(workdir / "feedback.sqlite")
if HAVE_QA:
    pid, counts = import_qa_feedback(store, "qa-feedback-40", QA_DIR, limit=40)
else:
    demo = data.load_demo_set()
    pid = store.create_project("demo-pairs", policy="demo set", k=2, seed=0,
                               items=[{"prompt": p["prompt"], "responses": [p["chosen"], p["rejected"]]} for p in demo.preferences])
    for it in store.items(pid):
        store.submit_ranking(f"demo:{it['id']}", "demo-set", it["id"], [1, 2])
    counts = {"items": len(demo.preferences), "rankings": len(demo.preferences)}
project = store.project(pid)
items = store.items(pid)
print(f"store {store.path.name}: project {project['name']!r}, K = {project['k']}, {counts}")

source = {r["item_id"]: r["ranks"] for r in store.labels(pid)["rankings"]}  # the data set's own annotator
annotators = {"ana": (5.0, 1.5), "ben": (2.5, 0.7)}  # name -> (offset mu_a, spread sigma_a) on the 1-7 scale
g = np.random.default_rng(0)
for it in items:
    k = len(it["responses"])
    ranks = source.get(it["id"], [1] * k)
    quality = -(np.array(ranks) - np.mean(ranks))  # latent quality: better rank, higher quality
    for name, (mu, sigma) in annotators.items():
        u = quality + g.normal(0.0, 0.6, k)  # what this annotator perceives
        scores = np.clip(np.round(mu + sigma * u), 1, 7).astype(int)
        for i in range(k):
            store.submit_rating(f"{name}:{it['id']}:{i}", name, it["id"], i, int(scores[i]))
        own_ranks = (np.argsort(np.argsort(-u)) + 1).tolist()  # no ties: u is continuous
        store.submit_ranking(f"{name}:{it['id']}:ranking", name, it["id"], own_ranks)
labels = store.labels(pid)
print({kind: len(rows) for kind, rows in labels.items()})

# %% [markdown]
# Agreement between *ana* and *ben*, three ways: Krippendorff's $\alpha$ (interval metric) on their raw ratings, as
# the studio reports it; $\alpha$ after removing each annotator's own offset and spread (z-scoring their ratings);
# and the pairwise agreement of their rankings (`core.feedback.agreement.ranking_agreement`), each with an interval
# from resampling items.

# %%
item_ids = [it["id"] for it in items]
score_of = {(r["annotator"], r["item_id"], r["response_idx"]): r["score"] for r in labels["ratings"]}
rank_of = {(r["annotator"], r["item_id"]): r["ranks"] for r in labels["rankings"]}


def z(x):
    x = np.asarray(x, dtype=float)
    return (x - x.mean()) / x.std()


def studio_agreement(idx):
    """(alpha on raw ratings, alpha on z-scored ratings, pairwise ranking agreement) over the items idx."""
    chosen = [item_ids[i] for i in idx]
    units = [(item, j) for n, item in enumerate(chosen) for j in range(project["k"])]
    raw = [[score_of[(a, item, j)] for item, j in units] for a in annotators]
    ranking = pairwise_ranking_agreement({n: rank_of[("ana", item)] for n, item in enumerate(chosen)},
                                         {n: rank_of[("ben", item)] for n, item in enumerate(chosen)})
    return (krippendorff_alpha(raw, "interval"), krippendorff_alpha([z(row).tolist() for row in raw], "interval"),
            ranking["agreement"])


everything = range(len(item_ids))
alpha_raw, alpha_z, rank_agree = studio_agreement(everything)
assert_close(alpha_raw, rating_alpha([r for r in labels["ratings"] if r["annotator"] in annotators])["alpha"])
overall = ranking_agreement([r for r in labels["rankings"] if r["annotator"] in annotators])
assert_close(rank_agree, overall["overall"])
intervals = [bootstrap_interval(lambda idx, s=s: studio_agreement(idx)[s], len(item_ids), 200) for s in range(3)]
for label, value, ci in zip(["alpha, raw 1-7 ratings", "alpha, z-scored ratings", "pairwise ranking agreement"],
                            (alpha_raw, alpha_z, rank_agree), intervals):
    print(f"ana vs ben, {label:28s} {value:.3f}  (95% interval {ci[0]:.3f} to {ci[1]:.3f})")
print(f"ana vs ben mean rating: {np.mean([s for (a, *_), s in score_of.items() if a == 'ana']):.2f} vs "
      f"{np.mean([s for (a, *_), s in score_of.items() if a == 'ben']):.2f}")
if len(item_ids) >= 30:
    assert alpha_z - alpha_raw > 0.2  # the offsets, not the judgements, make the raw ratings disagree
    assert rank_agree > 0.7

# %% [markdown]
# The raw ratings look unreliable ($\alpha$ far below the z-scored one) although ana and ben perceive the same
# qualities: their offsets and spreads differ, and $\alpha$ on raw scores counts that as disagreement. Their
# rankings agree on most pairs because a comparison does not depend on where an annotator sits on the scale. That is
# the argument of section 1 in numbers (on simulated annotators; with real ones, drift within a session adds to it).
#
# **The figure.** Left: the two annotators' rating distributions. Right: the chance-corrected agreement figures of
# this notebook with their 95% intervals (the studio pair is simulated; the rest is real data).

# %%
fig = make_subplots(rows=1, cols=2, column_widths=[0.4, 0.6],
                    subplot_titles=("simulated annotators' 1-7 ratings", "agreement (95% bootstrap intervals)"))
for name, colour in zip(annotators, ("#1f77b4", "#d62728")):
    s = [v for (a, *_), v in score_of.items() if a == name]
    fig.add_trace(go.Histogram(x=s, name=name, marker_color=colour, opacity=0.7, xbins=dict(start=0.5, end=7.5, size=1)),
                  row=1, col=1)
bars = [("studio: alpha, raw ratings", alpha_raw, intervals[0]), ("studio: alpha, z-scored", alpha_z, intervals[1]),
        ("studio: ranking agreement", rank_agree, intervals[2])]
if qa_kappa is not None:
    bars.append(("QA-Feedback: kappa holistic vs fine-grained", qa_kappa, qa_kappa_ci))
for name, (k_, ci) in hh_kappas.items():
    bars.append((f"HH-RLHF: kappa label vs '{name}'", k_, ci))
if davidson_alpha is not None:
    bars.append(("Davidson tweets: alpha (nominal)", davidson_alpha, davidson_ci))
fig.add_trace(go.Bar(y=[b[0] for b in bars], x=[b[1] for b in bars], orientation="h", showlegend=False,
                     marker_color="#7f7f7f",
                     error_x=dict(type="data", symmetric=False, array=[b[2][1] - b[1] for b in bars],
                                  arrayminus=[b[1] - b[2][0] for b in bars])), row=1, col=2)
fig.update_layout(barmode="overlay", height=420, width=1000, margin=dict(l=10, r=10, t=40, b=10))
fig.update_xaxes(title_text="rating", row=1, col=1)
fig.update_xaxes(title_text="agreement (0 = chance for kappa and alpha)", row=1, col=2)
fig.show()

# %% [markdown]
# **Export and read back.** `export_project` writes every format the studio offers; each one is read by a `core`
# loader that a trainer uses: TRL preference pairs (`core.data.load_preference_file`, what the reward, DPO and SimPO
# trainers read), K-wise rankings, QA-Feedback JSON (`core.data.load_qa_feedback_spans`, what the fine-grained
# trainer reads), SFT records from the corrections (`core.data.load_sft_records`), and a Hugging Face data set. The
# number of exported pairs must equal the $\binom K2$ expansion of every stored ranking by your `ranking_to_pairs`.

# %%
paths = export_project(store, pid, workdir / "export")
print("exported:", ", ".join(f"{name} ({p.name})" for name, p in paths.items()))
prefs = data.load_preference_file(paths["preferences"])
expected_pairs = sum(len(ranking_to_pairs(r["ranks"])) for r in labels["rankings"])
assert len(prefs) == expected_pairs
print(f"preferences.jsonl: {len(prefs)} pairs = the C(K, 2) expansion of {len(labels['rankings'])} rankings; keys {sorted(prefs[0])}")
first = prefs[0]
item = next(it for it in items if it["id"] == first["item_id"])
assert first["chosen"] == item["responses"][first["chosen_index"]] and first["rejected"] == item["responses"][first["rejected_index"]]
rankings_rows = data.load_rows(paths["rankings"])
print(f"rankings.jsonl: {len(rankings_rows)} K-wise records, e.g. ranks {rankings_rows[0]['ranks']}")
qa_back = data.load_qa_feedback_spans(paths["qa_feedback"])
print(f"qa_feedback/: {len(qa_back)} records with {sum(len(r['spans']) for r in qa_back)} C1/C2 spans, read by load_qa_feedback_spans")
if HAVE_QA:
    assert sum(len(r["spans"]) for r in qa_back) == sum(len(s["spans"]) for s in qa_spans[:len(qa_back)])
sft_path = paths["sft"]
if sft_path.stat().st_size:
    print(f"sft.jsonl: {len(data.load_sft_records(str(sft_path)))} prompt-completion records from the corrections")

# %% [markdown]
# **Train on the labels.** `core.feedback.train.train_feedback_reward_model` fits a linear reward head on frozen
# features with the ranking loss with ties, every (item, annotator) ranking one batch element, as InstructGPT does.
# Here with the 2-layer `tiny-random-llama`, so it takes seconds and its features are random: the point is the path
# from the studio's store to a trained model, not the number (notebook 1 trains a real one).

# %%
result = train_feedback_reward_model(
    FeedbackRMConfig(project=project["name"], model_name_or_path="tiny-random-llama", save_model=False),
    store)
f = result["figures"]
print(f"trained on {f['train_rankings']} rankings of {f['train_items']} items; held out {f['eval_rankings']} rankings; "
      f"final loss {f['final_loss']:.3f}; training agreement {f['train_agreement']:.3f}, held-out {f['eval_agreement']:.3f}")
assert f["final_loss"] < math.log(2)  # below the loss of a constant reward: the head learnt the training rankings
assert result["model_path"] is None

# %% [markdown]
# ## Summary
#
# * Ratings, rankings and pairwise choices carry the same preference at very different reliability: absolute scales
#   differ between annotators, comparisons do not. InstructGPT collects 1–7 ratings but trains on rankings.
# * A ranking expands into its strictly ordered pairs (ties give none); InstructGPT keeps all $\binom K2$ pairs of a
#   prompt in one batch element: $K$ forward passes, each response once per epoch, no overfitting to correlated
#   pairs. The same correlation makes a pair-level bootstrap interval too narrow; resample prompts.
# * Agreement must be chance-corrected ($\kappa$, $\alpha$) and reported with an interval. QA-Feedback's holistic
#   preferences and fine-grained marks agree only weakly; two Davidson crowd labels agree 81% of the time raw but
#   $\alpha \approx 0.54$.
# * The studio's store exports TRL pairs, K-wise rankings, QA-Feedback JSON, SFT records and a `datasets` table, each
#   read back by the loaders the trainers use.
