"""Every logged metric, defined once with its formula.

Names follow TRL's vocabulary (``objective/kl``, ``policy/clipfrac_avg``,
``rewards/margins``, ...) plus the workbench's own (each reward component,
toxicity, perplexity, length). Trainers log only names listed here; a name with
``{component}`` stands for one entry per reward component. ``describe(name)``
returns the definition of any logged name; ``markdown_table()`` renders them all
for the docs (docs/metrics.md is generated from it).

Notation: B sequences in a batch, t response tokens, KL_t the per-token KL
estimate (k1 = log π − log π_ref unless the run says otherwise), β the KL
coefficient, r_k,t reward component k on token t, w_k its weight.
"""

from __future__ import annotations

import re

METRICS: dict[str, str] = {
    # --- PPO (core/trainers/ppo.py)
    "objective/kl": "mean over sequences of Σ_t KL_t (the per-token KL estimate, summed over the response)",
    "objective/entropy": "mean over sequences of Σ_t H(π(·|s_t)) on the sampled responses",
    "objective/non_score_reward": "mean over sequences of −β·Σ_t KL_t",
    "objective/scores": "mean over sequences of Σ_k w_k Σ_t r_k,t (the weighted reward before the KL penalty)",
    "objective/rlhf_reward": "objective/scores + objective/non_score_reward",
    "objective/kl_coef": "β, the KL coefficient used for this batch (fixed or adaptive, Ziegler et al. 2019)",
    "policy/clipfrac_avg": "fraction of response tokens where the clipped surrogate is active, averaged over minibatches",
    "policy/approxkl_avg": "0.5·mean_t (log π_new − log π_old)², averaged over minibatches",
    "policy/entropy_avg": "mean per-token entropy of the policy during the update",
    "loss/policy_avg": "clipped PPO policy loss (Schulman et al. 2017, eq. 7), averaged over minibatches",
    "loss/value_avg": "clipped value loss 0.5·max((V−R)², (clip(V)−R)²), averaged over minibatches",
    "loss/ptx_avg": "γ_ptx · (−mean log-likelihood of pretraining tokens) (InstructGPT eq. 2), averaged",
    "val/clipfrac_avg": "fraction of response tokens where the value clip is active",
    "val/ratio": "mean of π_new/π_old over response tokens during the update",
    "val/mean": "mean value estimate V(s_t) over response tokens",
    "ppo/early_stopped": "1 if the update epochs stopped early because approx KL passed the threshold",
    "ppo/returns_mean": "mean GAE return over response tokens",
    "ppo/no_eos_rate": "fraction of rollouts that reached max_new_tokens without an EOS (kept, not penalised)",
    "ppo/advantages_mean": "mean GAE advantage over response tokens (before whitening)",
    "rewards/{component}": "mean over sequences of Σ_t r_k,t for reward component k (unweighted)",
    "rewards/{component}_weight": "w_k, the weight of component k in the total reward",
    # --- DPO / IPO / SimPO (core/trainers/dpo.py, core/trainers/simpo.py)
    "rewards/chosen": "mean implicit reward of chosen responses: β·(log π − log π_ref) (DPO) or β·avg log π (SimPO)",
    "rewards/rejected": "mean implicit reward of rejected responses, as rewards/chosen",
    "rewards/margins": "mean of rewards/chosen − rewards/rejected per pair",
    "rewards/accuracies": "fraction of pairs where the chosen implicit reward exceeds the rejected one",
    "logps/chosen": "mean log π(chosen | prompt) (summed for DPO, length-averaged for SimPO)",
    "logps/rejected": "mean log π(rejected | prompt), as logps/chosen",
    # --- reward model (core/trainers/reward.py)
    "rm/accuracy": "fraction of pairs with r(chosen) > r(rejected)",
    "rm/margin": "mean of r(chosen) − r(rejected)",
    # --- fine-grained C1/C2 reward models (core/trainers/finegrained.py)
    "fg/accuracy": "fraction of segments whose predicted label (error iff P(error) ≥ threshold) equals the human label",
    "fg/f1": "F1 of the erroneous class: 2·TP / (2·TP + FP + FN) over segments",
    # --- data (core/trainers/batching.py), logged once at step 0
    "data/dropped_train": "training records left out because len(prompt tokens, cut to max_prompt_length) + "
                          "len(longest response tokens + EOS) > max_length, or a response is empty",
    "data/dropped_eval": "held-out records left out, as data/dropped_train",
    # --- shared
    "loss": "the optimised loss for this step (mean over the batch)",
    "lr": "learning rate at this step",
    "epoch": "fraction of passes over the training data so far",
    "grad_norm": "global L2 norm of the gradients before clipping",
    "time/step_s": "wall-clock seconds for this optimizer step (or PPO iteration)",
    "time/{phase}_s": "seconds spent in one phase of the step (generation, scoring, update, ...)",
    "tokens/non_pad": "non-padding tokens processed by forward passes in this step",
    "tokens/per_second": "tokens/non_pad ÷ time/step_s",
    # --- evaluation on held-out prompts (every N steps)
    "eval/{metric}": "the same metric computed on the held-out set",
    "eval/toxicity_avg_max": "average over prompts of the maximum toxicity over k samples (Gehman et al. 2020)",
    "eval/toxic_rate": "fraction of prompts with at least one of k samples of toxicity ≥ 0.5",
    "eval/toxicity": "mean toxicity of the sampled responses",
    "eval/perplexity": "exp(mean NLL per token) of the responses under the frozen reference model",
    "eval/distinct_{n}": "distinct n-grams ÷ total n-grams over all sampled responses (Li et al. 2016)",
    "eval/length": "mean response length in tokens",
    "eval/kl": "mean over held-out samples of Σ_t log π(y_t|·) − log π_ref(y_t|·) (k1, per sequence)",
    "eval/reward/{component}": "mean Σ_t r_k,t of component k on held-out samples",
    # --- SFT
    "sft/perplexity": "exp(mean NLL per completion token) on the batch",
}

_PATTERNS = [(re.compile("^" + re.sub(r"\\\{\w+\\\}", r"[^/]+", re.escape(k)) + "$"), k) for k in METRICS if "{" in k]


def describe(name: str) -> str:
    """The definition of a logged metric name; ``KeyError`` for a name nobody defined."""
    if name in METRICS:
        return METRICS[name]
    if name.startswith("eval/") and name[5:] in METRICS:
        return "held-out: " + METRICS[name[5:]]
    for pattern, key in _PATTERNS:
        if pattern.match(name):
            return METRICS[key]
    raise KeyError(f"metric '{name}' is not defined in core/metrics.py")


def is_defined(name: str) -> bool:
    try:
        describe(name)
    except KeyError:
        return False
    return True


def markdown_table() -> str:
    lines = ["| metric | definition |", "| --- | --- |"]
    lines += [f"| `{k}` | {v} |" for k, v in METRICS.items()]
    return "\n".join(lines) + "\n"
