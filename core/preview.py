"""Best-of-N preview of reward weights: which of N pre-sampled responses each weighting prefers, without training.

What it is: the reward-weight lab's instant answer while the sliders move. Once, N
responses are sampled per held-out prompt (``core.rollout.generate``, a fixed seed) and
every reward component scores each of them once, as its sequence total
``S[p, n, k] = Σ_t r_k,t`` (``core.rewards.tensor.TokenRewards.totals``). After that a
weighting only needs

    score[p, n] = Σ_k w_k S[p, n, k]          (Wu et al. 2023, eq. 1, summed over t)
    best[p]     = argmax_n score[p, n]        (best-of-N re-ranking)

a (P, N, K) x (K,) product: microseconds, no model runs. Best-of-N is what PPO's
objective would choose among these samples (Nakano et al. 2021, WebGPT, sec. 3.4,
"rejection sampling against the reward model"); it shows the direction a weighting
pushes, not what a trained policy would write.

What it leaves out: the KL term (every candidate comes from the same, untrained
policy), ties (argmax takes the first best response).

    bank = sample_candidates(policy, tokenizer, prompts, components, n=4, seed=0)
    best, scores = bank.rank({"toxicity": 1.0, "c3": 0.5})    # (P,), (P, N)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class CandidateBank:
    """N scored responses per prompt.

    prompts: P raw prompts; responses[p]: its N decoded responses; names: the K component
    names; totals: (P, N, K) float64 sequence totals Σ_t r_k,t; lengths: (P, N) response tokens.
    """

    prompts: list[str]
    responses: list[list[str]]
    names: list[str]
    totals: torch.Tensor
    lengths: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))

    def scores(self, weights: dict[str, float]) -> torch.Tensor:
        """(P, N) Σ_k w_k S[p, n, k]; a component without a weight counts 0, an unknown name is a KeyError."""
        unknown = sorted(set(weights) - set(self.names))
        if unknown:
            raise KeyError(f"unknown reward component(s) {unknown}; available: {self.names}")
        w = torch.tensor([float(weights.get(n, 0.0)) for n in self.names], dtype=self.totals.dtype)  # (K,)
        return self.totals @ w  # (P, N)

    def rank(self, weights: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """(best (P,) index of the preferred response per prompt, scores (P, N)) under ``weights``."""
        scores = self.scores(weights)
        return scores.argmax(dim=1), scores


@torch.no_grad()
def sample_candidates(policy, tokenizer, prompts: list[str], components: dict, *, n: int = 4, seed: int = 0,
                      max_new_tokens: int = 24, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                      chat_template: bool = True, max_prompt_tokens: int | None = 64,
                      on_progress: Callable[[int, int], None] | None = None) -> CandidateBank:
    """Sample n responses per prompt (one prompt per batch of n rows, seed + prompt index) and score them once.

    The RNG is forked (``core.evaluation.rng_devices``), so this leaves the caller's random
    stream as it was and the same (policy, prompts, seed) always gives the same bank.
    on_progress(done, total) is called after each prompt (e.g. a progress bar).
    """
    from core.evaluation import rng_devices
    from core.rewards.tensor import compute_token_rewards
    from core.rollout import generate

    names = list(components)
    responses, totals, lengths = [], [], []
    devices, device_type = rng_devices(policy)
    with torch.random.fork_rng(devices=devices, device_type=device_type):
        for i, prompt in enumerate(prompts):
            torch.manual_seed(seed + i)  # a prompt's candidates do not depend on the others
            ro = generate(policy, tokenizer, [prompt] * n, max_new_tokens=max_new_tokens, temperature=temperature,
                          top_k=top_k, top_p=top_p, chat_template=chat_template, max_prompt_tokens=max_prompt_tokens)
            tr = compute_token_rewards([prompt] * n, ro.response_ids.cpu(), tokenizer, components,
                                       response_mask=ro.response_mask.cpu())
            responses.append(list(tr.texts))
            totals.append(torch.stack([tr.totals()[k].double() for k in names], dim=-1))  # (n, K)
            lengths.append(ro.response_mask.sum(1).cpu())
            if on_progress is not None:
                on_progress(i + 1, len(prompts))
    return CandidateBank(list(prompts), responses, names, torch.stack(totals), torch.stack(lengths))
