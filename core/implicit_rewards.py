"""Implicit rewards of a preference-trained policy, computed exactly as its trainer computes them.

What it is: the reward a DPO or SimPO policy implicitly assigns to a response,
read through the trainers' own tokenising (``tokenize_preferences``), log-prob pass
(``pair_logps`` -> ``completion_forward``) and objective, so the numbers equal the
``eval/rewards/*`` metrics the trainer logs for the same pairs.

    DPO   (Rafailov et al. 2023, eq. 5):  r(x, y) = β (log π_θ(y|x) − log π_ref(y|x))   summed over y's tokens
          (IPO: the same with length-averaged log-probs)
    SimPO (Meng et al. 2024, eq. 4):      r(x, y) = (β/|y|) log π_θ(y|x)                 no reference

For an untrained policy (π_θ = π_ref) the DPO reward is 0 for every response by
definition; it measures how far training moved the policy from its reference, not the
log-probability itself. |y| counts the response tokens including the closing EOS.

What it leaves out: SFT runs (no implicit reward), the margin γ of SimPO's loss.

    run = Run.open(folder)                                  # a finished or stopped DPO / SimPO run
    config = run_config(run); tokenizer = load_tokenizer(config.model_name_or_path)
    examples = held_out_examples(config, tokenizer)
    policy = trained_policy(run)
    chosen, rejected = implicit_rewards(config, examples, policy, tokenizer.pad_token_id)   # (N,), (N,)
"""

from __future__ import annotations

from contextlib import nullcontext

from core.runstore import Run
from core.trainers.common import TrainingError


def run_config(run: Run):
    """The run's trainer config, rebuilt through the trainer's own config class."""
    from core.trainers.launch import build_config, config_class

    return build_config(config_class(run.kind), run.config)


def held_out_examples(config, tokenizer) -> list:
    """The held-out pairs of a DPO/SimPO config, tokenised and split exactly as its trainer does."""
    from core.data import load_preference_records
    from core.trainers.batching import tokenize_preferences, train_eval_examples

    return train_eval_examples(tokenize_preferences, tokenizer, load_preference_records(config.dataset), config)[1]


def trained_policy(run: Run, device=None):
    """The run's policy: its base model with the latest checkpoint's trainable weights (LoRA adapters as in training)."""
    import torch

    from core.checkpoint import load_trainable_state_dict
    from core.models import LoraSettings, apply_lora, load_causal_lm

    config = run_config(run)
    latest = run.latest_checkpoint()
    if latest is None:
        raise TrainingError(f"{run.path} has no checkpoint yet: wait for its first save, or pick a finished run")
    model = load_causal_lm(config.model_name_or_path, device=device, dtype=None if config.lora else torch.float32)
    if config.lora:
        model = apply_lora(model, LoraSettings(r=config.lora_r, alpha=config.lora_alpha))
    load_trainable_state_dict(model, latest[1])
    return model.eval()


def implicit_rewards(config, examples: list, policy, pad_id: int, reference=None, batch_size: int = 8):
    """(chosen_rewards (N,), rejected_rewards (N,)) of ``examples`` under ``policy``, by the objective of ``config``.

    config: a ``DPOConfig`` (needs a reference: ``reference``, or ``policy``'s own base model
    with its LoRA adapters disabled when ``reference`` is None) or a ``SimPOConfig`` (none).
    """
    from core.models import is_peft_model, reference_mode
    from core.trainers.batching import pair_logps

    lengths_c = _lengths(examples, "chosen_ids")
    lengths_r = _lengths(examples, "rejected_ids")
    policy.eval()
    chosen, rejected, _ = pair_logps(policy, examples, batch_size, pad_id)
    name = type(config).__name__
    if name == "SimPOConfig":
        from core.trainers.simpo import simpo_objective

        _, chosen_rewards, rejected_rewards = simpo_objective(config)(chosen / lengths_c, rejected / lengths_r)
        return chosen_rewards, rejected_rewards
    if name != "DPOConfig":
        raise TrainingError(f"{name} has no implicit reward (only DPO and SimPO runs do)")
    from core.trainers.dpo import dpo_objective

    if reference is None and not is_peft_model(policy):
        raise TrainingError("DPO's implicit reward needs the reference model: pass reference= (a full fine-tune keeps no base copy)")
    with reference_mode(policy) if reference is None else nullcontext():
        ref_chosen, ref_rejected, _ = pair_logps(policy if reference is None else reference.eval(), examples, batch_size, pad_id)
    if config.loss_type != "ipo":  # DPO sums log-probs; IPO averages them
        lengths_c = lengths_r = 1.0
    _, chosen_rewards, rejected_rewards = dpo_objective(config)(
        chosen / lengths_c, rejected / lengths_r, ref_chosen / lengths_c, ref_rejected / lengths_r)
    return chosen_rewards, rejected_rewards


def _lengths(examples, field: str):
    import torch

    return torch.tensor([float(len(getattr(e, field))) for e in examples])
