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
        stop = input_ids.shape[1] if stop is None else stop
        return windowed_outputs(self.policy, input_ids, attention_mask, start, stop, self.v_head)


def windowed_outputs(policy, input_ids, attention_mask, start: int, stop: int, value_head=None, critic=None):
    """Logits of ``policy`` and values at columns [start, stop) of a padded batch, in one pass per model.

    value_head: a head on the policy's last hidden state (shared backbone); critic: a separate
    scalar-head model (``AutoModelForSequenceClassification``) read at every position. Returns
    (logits (B, W, V), values (B, W) or None); 0 at unattended positions when padding-free.
    """
    from core.packing import Packing, can_pack, packed_pass, row_cap

    base = getattr(policy, "module", policy)
    want_hidden = value_head is not None
    if can_pack(base) and (critic is None or can_pack(critic)):
        packing = Packing.of(input_ids, attention_mask, row_cap(base))
        keep = packing.window_columns(start, stop)
        with packed_pass(base, packing):
            out = policy(**packing.model_inputs(), logits_to_keep=keep, output_hidden_states=want_hidden)
        logits = packing.unpack(out.logits, start, stop, kept_columns=keep)  # (B, W, V)
        values = None
        if value_head is not None:
            values = value_head(packing.unpack(out.hidden_states[-1], start, stop)).squeeze(-1)  # (B, W)
        elif critic is not None:
            with packed_pass(critic, packing):
                hidden = critic(**packing.model_inputs(), output_hidden_states=True).hidden_states[-1]
            values = critic.score(packing.unpack(hidden, start, stop)).squeeze(-1)
        return logits, values
    T = input_ids.shape[1]
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    kw = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    out = policy(**kw, logits_to_keep=T - start, output_hidden_states=want_hidden)
    logits = out.logits[:, : stop - start]
    values = None
    if value_head is not None:
        values = value_head(out.hidden_states[-1][:, start:stop]).squeeze(-1)
    elif critic is not None:
        values = critic.score(critic(**kw, output_hidden_states=True).hidden_states[-1][:, start:stop]).squeeze(-1)
    return logits, values
