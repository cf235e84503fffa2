"""What a PPO iteration logs: its metrics (names and formulas in ``core/metrics.py``) and per-token samples.

    metrics = iteration_metrics(stats, scores, kl_per_sequence, beta, rollout, raw_advantages, returns,
                                token_rewards, weights, early_stopped, lr)
    run.log_samples(iteration, sample_records(tokenizer, rollout, token_rewards, per_token_kl, raw_advantages,
                                              returns, n))

Phase 6 of ``core.trainers.ppo``, kept out of the loop so that the loop reads as the
algorithm. Nothing here changes training.
"""

from __future__ import annotations

from core.rl import masked_mean
from core.rollout import Rollout

UPDATE_STATS = ("pg_loss", "vf_loss", "ptx_loss", "clipfrac", "approxkl", "entropy", "vf_clipfrac", "ratio", "value")
"""Per-minibatch statistics of the update, averaged by ``iteration_metrics``."""


def iteration_metrics(stats: dict[str, list[float]], scores, kl_per_sequence, beta: float, rollout: Rollout,
                      raw_advantages, returns, token_rewards, weights: dict[str, float], early_stopped: bool,
                      lr: float) -> dict:
    """The TRL-named metrics of one iteration.

    stats: UPDATE_STATS name -> one float per minibatch; scores: (B, R) weighted reward per
    token; kl_per_sequence: (B,) Σ_t KL_t; raw_advantages, returns: (B, R) before whitening.
    """
    avg = lambda k: sum(stats[k]) / max(len(stats[k]), 1)  # noqa: E731
    mask = rollout.response_mask
    score_total = scores.sum(-1).mean()
    kl = kl_per_sequence.mean()
    metrics = {
        "objective/kl": kl,
        "objective/entropy": rollout.entropy.sum(-1).mean(),
        "objective/non_score_reward": -beta * kl,
        "objective/scores": score_total,
        "objective/rlhf_reward": score_total - beta * kl,
        "objective/kl_coef": beta,
        "policy/clipfrac_avg": avg("clipfrac"), "policy/approxkl_avg": avg("approxkl"),
        "policy/entropy_avg": avg("entropy"), "loss/policy_avg": avg("pg_loss"),
        "loss/value_avg": avg("vf_loss"), "loss/ptx_avg": avg("ptx_loss"),
        "val/clipfrac_avg": avg("vf_clipfrac"), "val/ratio": avg("ratio"), "val/mean": avg("value"),
        "ppo/early_stopped": float(early_stopped), "ppo/no_eos_rate": (~rollout.ended).float().mean(),
        "ppo/returns_mean": masked_mean(returns, mask), "ppo/advantages_mean": masked_mean(raw_advantages, mask),
        "lr": lr,
    }
    for name, total in token_rewards.totals().items():
        metrics[f"rewards/{name}"] = total.mean()
        metrics[f"rewards/{name}_weight"] = weights[name]
    return metrics


def sample_records(tokenizer, rollout: Rollout, token_rewards, per_token_kl, advantages, returns, n: int) -> list[dict]:
    """The first n rollouts with every per-token field the app draws (lists as long as the response)."""
    records = token_rewards.to_records()
    out = []
    for b in range(min(n, len(rollout))):
        keep = rollout.response_mask[b].bool()
        text = records[b]["text"]
        row = lambda t: [round(float(x), 6) for x in t[b][keep].tolist()]  # noqa: E731
        per_token = {f"reward/{name}": values for name, values in records[b]["rewards"].items()}
        per_token.update({"kl": row(per_token_kl), "value": row(rollout.values), "advantage": row(advantages),
                          "return": row(returns), "logprob": row(rollout.logprobs), "ref_logprob": row(rollout.ref_logprobs)})
        out.append({
            "prompt": rollout.prompts[b], "response": text, "ended": bool(rollout.ended[b]),
            "tokens": [text[s:e] for s, e in records[b]["token_spans"]],
            "token_ids": rollout.response_ids[b][keep].tolist(),
            "per_token": per_token, "segments": records[b]["segments"], "totals": records[b]["totals"],
        })
    return out
