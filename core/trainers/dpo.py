"""DPO trainer: Direct Preference Optimization (Rafailov et al. 2023), with conservative DPO and IPO.

Paper: "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
https://arxiv.org/abs/2305.18290. With h = (log π(y_c|x) − log π_ref(y_c|x)) − (log π(y_r|x) − log π_ref(y_r|x)),

    L_DPO = −log σ(β h)                                               (eq. 7)
    L_cDPO = −(1−ε) log σ(β h) − ε log σ(−β h)     label_smoothing = ε > 0 (Mitchell 2023)
    L_IPO = (h − 1/(2β))²                          loss_type = "ipo" (Azar et al. 2023, eq. 17)

and the implicit reward of a response is β (log π − log π_ref). The maths is in
``core.losses`` (dpo_loss, ipo_loss); the objective is picked from a two-entry dict.

Phases of ``train_dpo``: 1 setup (run, accelerator) → 2 data → 3 policy → 4 reference
log-probs, ONCE for the whole train and eval set → 5 optimizer (and resume) → 6 loop:
batch → one concatenated forward pass (chosen + rejected, (2B, T)) → loss → update → log →
evaluate → checkpoint.

Deviations from the paper / TRL, all deliberate:
- The reference is never kept as a second model: its log-probs are precomputed in one
  no-grad pass before training (the reference is frozen, so they never change). Without
  LoRA the policy before its first update IS the reference; with LoRA it is the same
  backbone with adapters disabled (``core.models.reference_mode``).
- Pairs whose prompt + response does not fit ``max_length`` are dropped, not truncated;
  prompts are cut from the left to ``max_prompt_length`` first.
- IPO uses length-averaged log-probs, as TRL's DPOTrainer(loss_type="ipo") does (the
  paper writes sums); β therefore needs retuning between the two.
- Learning rate: linear warm-up then constant (no decay), so a run can be extended.
- The SFT step the paper starts from is a separate trainer (``core.trainers.sft``).

What it leaves out: online / iterative DPO, reference-model syncing (TR-DPO), RPO's NLL
term, and packing.

Run it:
    python -m core.trainers.dpo --help
    python -m core.trainers.dpo --dataset hh-rlhf --num-steps 50
    accelerate launch -m core.trainers.dpo --no-lora           # several GPUs (DDP)
    from core.trainers.dpo import DPOConfig, train_dpo; run = train_dpo(DPOConfig(), on_log=print)
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Literal

from core.models import DEFAULT_MODEL
from core.runstore import Run
from core.trainers.common import (Logger, OnLog, TrainingError, adamw, check_finite, open_run, resumed_config, run_guard,
                                  seed_everything, set_phase, stop_honoured, stop_requested)


@dataclass
class DPOConfig:
    model_name_or_path: str = DEFAULT_MODEL
    """policy to fine-tune (and, frozen, the reference): an alias, a local folder or a hub id"""
    dataset: str = "hh-rlhf"
    """'hh-rlhf', 'qa-feedback', 'demo', or a .jsonl file in TRL schema {prompt, chosen, rejected}"""
    train_size: int = 256
    """training pairs (0: every pair that fits max_length)"""
    eval_size: int = 64
    """held-out pairs for eval/ metrics (taken before train_size, with a seeded shuffle)"""
    max_length: int = 256
    """longest prompt + response in tokens; longer pairs are dropped"""
    max_prompt_length: int = 128
    """prompts are cut from the left (their beginning) to this many tokens"""
    loss_type: Literal["dpo", "ipo"] = "dpo"
    """'dpo' (sigmoid loss, eq. 7) or 'ipo' (squared loss on length-averaged log-probs)"""
    beta: float = 0.1
    """β: strength of the implicit KL constraint to the reference (IPO: the paper's τ)"""
    label_smoothing: float = 0.0
    """ε > 0 gives conservative DPO: labels assumed flipped with probability ε (DPO only)"""
    learning_rate: float = 5e-5
    """peak learning rate (5e-5 suits LoRA; use ~5e-7 to 5e-6 for a full fine-tune)"""
    warmup_steps: int = 0
    """linear warm-up steps, then constant"""
    max_grad_norm: float = 10.0
    """clip the global gradient norm to this (0: no clipping)"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    batch_size: int = 4
    """pairs per micro-batch per process (the forward pass sees 2 × batch_size rows)"""
    gradient_accumulation_steps: int = 2
    """micro-batches per optimizer step"""
    num_steps: int = 50
    """optimizer steps"""
    num_epochs: float = 0.0
    """if > 0, train for this many passes over the training pairs instead of num_steps"""
    eval_every: int = 10
    """evaluate on the held-out pairs every this many steps, and at step 0 and at the end (0: only those two)"""
    eval_batch_size: int = 16
    """pairs per no-grad forward pass (reference log-probs and evaluation)"""
    num_samples: int = 4
    """held-out pairs written to samples.jsonl, with per-token log-ratios, at each evaluation"""
    save_every: int = 25
    """checkpoint every this many steps (and at the end); 0: only at the end"""
    seed: int = 0
    """seed of the split, the data order and torch"""
    lora: bool = True
    """train LoRA adapters (the reference is then the adapter-disabled model) instead of all weights"""
    lora_r: int = 16
    """LoRA rank"""
    lora_alpha: int = 32
    """LoRA alpha (the update is scaled by alpha / r)"""
    lora_layers: int = 0
    """train adapters in the last N transformer blocks only (0: all); backprop stops below them, fast on CPU"""
    resume_from: str = ""
    """a run folder to continue from its latest checkpoint (its saved config is used)"""
    run_name: str = ""
    """name of the run folder (default: the trainer's name)"""
    trackers: str = ""
    """'' or a comma list of tensorboard, wandb, trackio"""
    cpu: bool = False
    """train on the CPU even when a GPU is present"""
    export_merged: bool = False
    """LoRA runs: besides the adapter in RUN_FOLDER/model, write the merged full model to RUN_FOLDER/model-merged"""


def dpo_objective(config: DPOConfig):
    """The per-pair loss function chosen by ``loss_type``: (pc, pr, rc, rr) -> (losses, chosen_rewards, rejected_rewards)."""
    from functools import partial

    from core.losses import dpo_loss, ipo_loss

    objectives = {
        "dpo": partial(dpo_loss, beta=config.beta, label_smoothing=config.label_smoothing),
        "ipo": partial(ipo_loss, beta=config.beta),
    }
    return objectives[config.loss_type]


def _check(config: DPOConfig) -> None:
    if config.loss_type == "ipo" and config.label_smoothing:
        raise TrainingError("label_smoothing applies to the DPO loss only; set it to 0 with loss_type='ipo'")
    if not 0.0 <= config.label_smoothing < 0.5:
        raise TrainingError(f"label_smoothing must be in [0, 0.5), got {config.label_smoothing}")


def reference_logps(model, examples, config: DPOConfig, pad_id: int, accelerator=None, keep=()):
    """Summed reference log-probs of every pair (chosen (N,), rejected (N,), per-token rows of ``keep``), no grad.

    Called before the first update: without LoRA the policy is then the reference; with
    LoRA the adapters are switched off for the pass.
    """
    from core.models import reference_mode
    from core.trainers.batching import pair_logps

    model.eval()
    with reference_mode(model) if config.lora else contextlib.nullcontext():
        return pair_logps(model, examples, config.eval_batch_size, pad_id, accelerator, keep)


def _pair_metrics(losses, chosen_rewards, rejected_rewards, policy_chosen_logps, policy_rejected_logps, prefix=""):
    return {
        f"{prefix}loss": losses.mean(),
        f"{prefix}rewards/chosen": chosen_rewards.mean(),
        f"{prefix}rewards/rejected": rejected_rewards.mean(),
        f"{prefix}rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        f"{prefix}rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        f"{prefix}logps/chosen": policy_chosen_logps.mean(),
        f"{prefix}logps/rejected": policy_rejected_logps.mean(),
    }


def evaluate(model, examples, ref, config: DPOConfig, tokenizer, accelerator=None):
    """Held-out metrics (``eval/...``) and the sample rows for samples.jsonl."""
    from core.trainers.batching import pair_logps, token_strings

    set_phase("held-out evaluation")
    average = config.loss_type == "ipo"
    keep = range(min(config.num_samples, len(examples)))
    model.eval()
    chosen, rejected, per_token = pair_logps(model, examples, config.eval_batch_size, tokenizer.pad_token_id, accelerator, keep)
    ref_chosen, ref_rejected, ref_per_token = ref
    chosen_len, rejected_len = _lengths(examples, average)
    losses, chosen_rewards, rejected_rewards = dpo_objective(config)(
        chosen / chosen_len, rejected / rejected_len, ref_chosen / chosen_len, ref_rejected / rejected_len)
    metrics = _pair_metrics(losses, chosen_rewards, rejected_rewards, chosen / chosen_len, rejected / rejected_len, "eval/")
    samples = []
    for i in keep:
        e, (pc, pr), (rc, rr) = examples[i], per_token[i], ref_per_token[i]
        samples.append({
            "pair": i, "prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected,
            "chosen_tokens": token_strings(tokenizer, e.chosen_ids), "rejected_tokens": token_strings(tokenizer, e.rejected_ids),
            "chosen_reward": float(chosen_rewards[i]), "rejected_reward": float(rejected_rewards[i]),
            "per_token": {  # β (log π − log π_ref) per response token: sums to the implicit reward (DPO)
                "chosen_logratio": [config.beta * (a - b) for a, b in zip(pc, rc)],
                "rejected_logratio": [config.beta * (a - b) for a, b in zip(pr, rr)],
                "chosen_logps": pc, "rejected_logps": pr,
            },
        })
    return {k: float(v) for k, v in metrics.items()}, samples


def _lengths(examples, average: bool):
    """Divisors turning summed log-probs into the ones the loss uses: 1 (sums) or the response lengths (averages)."""
    import torch

    if not average:
        return 1.0, 1.0
    return (torch.tensor([float(len(e.chosen_ids)) for e in examples]),
            torch.tensor([float(len(e.rejected_ids)) for e in examples]))


def train_dpo(config: DPOConfig, on_log: OnLog | None = None, *, run: Run | None = None):
    """Train with DPO / cDPO / IPO; returns the ``Run`` (None on non-main DDP processes)."""
    import torch

    from core.data import load_preference_records
    from core.devices import make_accelerator
    from core.logprobs import sequence_logprobs
    from core.models import LoraSettings, load_tokenizer, load_trainable_model, train_only_last_layers
    from core.trainers.batching import (batch_indices, collate_preferences, completion_forward, epoch_at, tokenize_preferences,
                                        train_eval_examples)
    from core.trainers.common import available_trackers, learning_rate_at, restore_checkpoint, save_checkpoint

    # ---- 1. setup: config (a resumed run keeps its own), accelerator, run folder
    config = resumed_config(config)
    _check(config)
    accelerator = make_accelerator(config.gradient_accumulation_steps, cpu=config.cpu,
                                   log_with=available_trackers(config.trackers) or None)
    run, start_step, checkpoint = open_run("dpo", config, accelerator.is_main_process, run=run)
    with run_guard(run) if run is not None else contextlib.nullcontext():
        if config.trackers:
            accelerator.init_trackers("rlhf-workbench-dpo", config=asdict(config))
        log = Logger(run, on_log if accelerator.is_main_process else None, accelerator)
        seed_everything(config.seed)

        # ---- 2. data: records -> (train, held-out) by prompt -> token ids, drops counted; the order is f(seed, step)
        set_phase("loading and tokenising the data")
        tokenizer = load_tokenizer(config.model_name_or_path)
        records = load_preference_records(config.dataset)
        train, held_out, dropped = train_eval_examples(tokenize_preferences, tokenizer, records, config)
        B, accum, world = config.batch_size, config.gradient_accumulation_steps, accelerator.num_processes
        num_steps = config.num_steps
        if config.num_epochs > 0:
            num_steps = math.ceil(config.num_epochs * len(train) / (B * accum * world))

        # ---- 3. policy: fp32 trainable weights (bf16 autocast on GPU): full fine-tune, or LoRA on a bf16/fp32 backbone;
        #      dropout off (policy and reference log-probs must come from the same deterministic model)
        set_phase("loading the model")
        lora = LoraSettings(r=config.lora_r, alpha=config.lora_alpha) if config.lora else None
        model = load_trainable_model(config.model_name_or_path, lora=lora, device=accelerator.device)
        model.config.use_cache = False

        # ---- 4. reference log-probs, once, for every train and held-out pair (the reference is frozen)
        set_phase("reference pass")  # the page shows "reference pass 37/120" (batches)
        ref_train = reference_logps(model, train, config, tokenizer.pad_token_id, accelerator)
        set_phase("reference pass, held-out pairs")
        ref_eval = reference_logps(model, held_out, config, tokenizer.pad_token_id, accelerator,
                                   keep=range(min(config.num_samples, len(held_out))))
        ref_chosen_all, ref_rejected_all = ref_train[0], ref_train[1]

        # ---- 5. optimizer; resume weights, optimizer and RNG from the latest checkpoint
        if config.lora:  # after the reference pass: leaving peft's disable_adapter() re-enables every adapter
            train_only_last_layers(model, config.lora_layers)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = adamw(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        if checkpoint is not None:
            restore_checkpoint(checkpoint, model, optimizer)
        model, optimizer = accelerator.prepare(model, optimizer)
        objective = dpo_objective(config)
        average = config.loss_type == "ipo"

        if start_step == 0:
            metrics, samples = evaluate(accelerator.unwrap_model(model), held_out, ref_eval, config, tokenizer, accelerator)
            log(0, {**dropped, **metrics})  # with data/dropped_train, data/dropped_eval
            if run is not None:
                run.log_samples(0, samples)

        # ---- 6. training loop
        for step in range(start_step + 1, num_steps + 1):
            t0 = time.perf_counter()
            model.train()
            lr = learning_rate_at(step, config.learning_rate, config.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            stats, non_pad, grad_norm = [], 0, torch.zeros(())
            for micro in range(accum):
                # 6a. batch: B pairs -> one (2B, T) batch, left-padded to its own longest row
                idx = batch_indices(len(train), config.seed, step, micro, B, accum, accelerator.process_index, world)
                batch = collate_preferences([train[i] for i in idx], tokenizer.pad_token_id)
                non_pad += int(batch["attention_mask"].sum())
                with accelerator.accumulate(model):
                    # 6b. one forward pass for chosen and rejected together
                    per_token_logps, mask = completion_forward(model, batch)  # (2B, K)
                    logps = sequence_logprobs(per_token_logps, mask, average=average)  # (2B,)
                    policy_chosen_logps, policy_rejected_logps = logps[:B], logps[B:]
                    n_c, n_r = _lengths([train[i] for i in idx], average)
                    ref_chosen_logps = (ref_chosen_all[idx] / n_c).to(logps.device)
                    ref_rejected_logps = (ref_rejected_all[idx] / n_r).to(logps.device)
                    # 6c. loss: per-pair losses, then the reduction
                    losses, chosen_rewards, rejected_rewards = objective(
                        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
                    loss = losses.mean()
                    check_finite(loss, step)
                    # 6d. update (accelerate scales by 1/accum and syncs DDP gradients on the last micro-batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(params, config.max_grad_norm or float("inf"))
                    optimizer.step()
                    optimizer.zero_grad()
                stats.append(torch.stack([losses.detach(), chosen_rewards, rejected_rewards,
                                          policy_chosen_logps.detach(), policy_rejected_logps.detach()]).cpu())

            # 6e. log: means over every pair of the step, on all processes
            stats = accelerator.gather(torch.cat(stats, dim=1).to(accelerator.device)).cpu()  # (5, pairs)
            if world > 1:
                stats = stats.view(world, 5, -1).transpose(0, 1).reshape(5, -1)
            non_pad = int(accelerator.reduce(torch.tensor(non_pad, device=accelerator.device), "sum"))
            step_s = time.perf_counter() - t0
            metrics = _pair_metrics(*stats)
            metrics.update({"grad_norm": float(grad_norm), "lr": lr, "epoch": epoch_at(step, len(train), B, accum, world),
                            "time/step_s": step_s, "tokens/non_pad": non_pad, "tokens/per_second": non_pad / step_s})
            log(step, metrics)

            # 6f. evaluate on held-out pairs; 6g. checkpoint
            if (config.eval_every and step % config.eval_every == 0) or step == num_steps:
                metrics, samples = evaluate(accelerator.unwrap_model(model), held_out, ref_eval, config, tokenizer, accelerator)
                log(step, metrics)
                if run is not None:
                    run.log_samples(step, samples)
            stop = stop_requested(accelerator)  # asked to stop: checkpoint now, then leave the loop
            if (config.save_every and step % config.save_every == 0) or step == num_steps or stop:
                accelerator.wait_for_everyone()
                save_checkpoint(run, step, accelerator.unwrap_model(model), optimizer)
            if stop:
                break
        if not stop_honoured():  # a stopped run is exported when it finishes (resume_from)
            from core.export import export_model  # 7. export RUN_FOLDER/model (run is None off the main process)
            export_model(run, accelerator.unwrap_model(model), tokenizer, merge=config.export_merged)
        if config.trackers:
            accelerator.end_training()
    return run


def main() -> None:
    from core.trainers.common import cli_main

    cli_main(DPOConfig, train_dpo, desc=lambda c: c.loss_type, shown=("loss", "eval/rewards/accuracies"))


if __name__ == "__main__":
    main()
