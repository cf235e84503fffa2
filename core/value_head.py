"""PPO's models: a policy with a critic, as one module, and the builder that loads them for training.

- ``CausalLMWithValueHead``: a causal LM with a scalar value head on its last hidden
  state (the critic on a shared backbone). The head is zero-initialised, so the first
  value estimates are 0 (as in TRL's PPO), and it is fp32 whatever the backbone's dtype.
- ``PolicyWithValue``: policy and critic as one ``nn.Module`` (shared head, or a separate
  scalar-head model read at every position), so accelerate (DDP), the optimizer and
  checkpoints see one model.
- ``build_policy_with_value``: loads both through ``core.models.load_trainable_model``
  (fp32 trainable weights, dropout off) plus the frozen reference when there is no LoRA.

    model, reference = build_policy_with_value("tiny-random-llama", "cpu", lora=LoraSettings())
    logits, values = model(input_ids, attention_mask)                # (B, T, V), (B, T)
    logits, values = model(input_ids, attention_mask, start, stop)   # only columns [start, stop)

Every pass is padding-free when the models allow it (``core.packing``). What it leaves
out: value models other than a linear head or a sequence-classification model.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn


class CausalLMWithValueHead(nn.Module):
    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        self.v_head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.zeros_(self.v_head.weight)
        nn.init.zeros_(self.v_head.bias)
        # fp32 even on a bf16 backbone: a trained weight (core.models.fp32_trainable)
        self.v_head.to(device=next(policy.parameters()).device, dtype=torch.float32)

    @property
    def config(self):
        return self.policy.config

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, W, 1) values of hidden states (B, W, H) of any dtype (bf16 under autocast on CUDA)."""
        return self.v_head(hidden.to(self.v_head.weight.dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int = 0,
                stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, W, V), values (B, W)) at columns [start, stop) (W = stop - start; default all T)."""
        from core.packing import windowed_outputs

        stop = input_ids.shape[1] if stop is None else stop
        return windowed_outputs(self.policy, input_ids, attention_mask, start, stop, self.values)


class PolicyWithValue(nn.Module):
    """Policy and critic as one module, so accelerate (DDP), the optimizer and checkpoints see one model.

    forward(input_ids, attention_mask, start, stop) -> (logits (B, W, V), values (B, W)) at columns [start, stop).
    shared: `CausalLMWithValueHead` on the policy backbone; separate: a scalar-head model
    (`load_reward_model`) whose score head is read at every position.
    """

    def __init__(self, policy, critic=None):
        super().__init__()
        self.shared = critic is None
        self.body = CausalLMWithValueHead(policy) if self.shared else policy
        self.critic = critic

    @property
    def policy(self):
        return self.body.policy if self.shared else self.body

    def forward(self, input_ids, attention_mask, start: int = 0, stop: int | None = None):
        """(logits (B, W, V), values (B, W)) at columns [start, stop); padding-free when the models allow it."""
        from core.packing import windowed_outputs

        stop = input_ids.shape[1] if stop is None else stop
        if self.shared:
            return self.body(input_ids, attention_mask, start, stop)
        return windowed_outputs(self.body, input_ids, attention_mask, start, stop, critic=self.critic)


def build_policy_with_value(model_name_or_path: str, device, *, lora=None, value_model: str = "shared", dtype=None):
    """(PolicyWithValue, frozen reference or None), every trainable weight fp32 and dropout off.

    lora: ``core.models.LoraSettings`` for adapters on a frozen backbone in ``dtype``
    (default bf16 on CUDA, fp32 on CPU); the reference is then the policy with adapters
    disabled (None is returned). lora=None trains all weights (fp32) and returns a frozen
    copy of the initial policy as reference, in ``dtype`` (it is never trained).
    value_model: 'shared' (a value head on the policy) or 'separate' (a scalar-head model
    initialised from the same weights, with its own adapters when lora is given).
    """
    from core.devices import default_dtype
    from core.models import load_trainable_model

    if value_model not in ("shared", "separate"):
        raise ValueError(f"value_model must be 'shared' or 'separate', got {value_model!r}")
    policy = load_trainable_model(model_name_or_path, lora=lora, device=device, dtype=dtype)
    reference = None
    if lora is None:
        reference = copy.deepcopy(policy).to(dtype or default_dtype(device)).eval().requires_grad_(False)
    critic = None
    if value_model == "separate":
        critic = load_trainable_model(model_name_or_path, head="score", lora=lora, device=device, dtype=dtype)
    return PolicyWithValue(policy, critic), reference


@contextlib.contextmanager
def reference_policy(policy, frozen_reference=None):
    """Context yielding the frozen reference policy: ``frozen_reference`` when given, else the
    peft ``policy`` with its adapters disabled (no gradients). One copy in memory with LoRA."""
    from core.models import reference_mode

    if frozen_reference is not None:
        yield frozen_reference
        return
    with torch.no_grad(), reference_mode(policy):
        yield policy
