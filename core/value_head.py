"""A causal LM with a scalar value head on its last hidden state (the PPO critic on a shared backbone).

The head is zero-initialised, so the first value estimates are 0 (as in TRL's PPO).
A separate critic is simply ``core.models.load_reward_model`` (a scalar-head model)
read at every position; this module covers the shared-backbone case.

    model = CausalLMWithValueHead(policy)
    logits, values = model(input_ids, attention_mask)   # (B, T, V), (B, T)
    logits, values = model(input_ids, attention_mask, start, stop)   # only columns [start, stop)

The pass is padding-free when the policy allows it (``core.packing``).
"""

from __future__ import annotations

import torch
from torch import nn


class CausalLMWithValueHead(nn.Module):
    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        self.v_head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.zeros_(self.v_head.weight)
        nn.init.zeros_(self.v_head.bias)
        param = next(policy.parameters())
        self.v_head.to(device=param.device, dtype=param.dtype)

    @property
    def config(self):
        return self.policy.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int = 0,
                stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, W, V), values (B, W)) at columns [start, stop) (W = stop - start; default all T)."""
        from core.packing import windowed_outputs

        stop = input_ids.shape[1] if stop is None else stop
        return windowed_outputs(self.policy, input_ids, attention_mask, start, stop, self.v_head)
