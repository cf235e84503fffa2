"""PPO for language models with dense multi-component rewards, per-token KL, GAE and the ptx term.

Papers: PPO (Schulman et al. 2017, "Proximal Policy Optimization Algorithms"); PPO for
LMs with a per-token KL penalty (Ziegler et al. 2019, "Fine-Tuning Language Models from
Human Preferences"); PPO-ptx (Ouyang et al. 2022, "Training language models to follow
instructions with human feedback", eq. 2); dense fine-grained rewards (Wu et al. 2023,
"Fine-Grained Human Feedback Gives Better Rewards for Language Model Training", eq. 1).

The objective (InstructGPT eq. 2, with Wu et al.'s dense reward):

    maximise  E_{x, y ~ pi}[ sum_t ( sum_k w_k r^k_t  -  beta * KL_t ) ]  +  gamma_ptx * E_{x ~ D_ptx}[ log pi(x) ]
    KL_t = log pi(y_t | s_t) - log pi_ref(y_t | s_t)    (k1; or k3, Schulman 2020)

optimised with PPO's clipped surrogate on GAE advantages of that shaped reward:

    L = -mean_t min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)  +  vf_coef * L_value  -  gamma_ptx * mean log pi(x_ptx)

Models (core.value_head): the policy with a value head (or a separate critic), every
trainable weight in fp32 (bf16 autocast on CUDA) and dropout off, so that the old
log-probs and the update see the same policy (the first ratio is exactly 1).

One iteration, the phases below in `train_ppo`:
    1 rollout     prompts as chat turns (instruct models) or raw text, KV-cached sampling,
                  one pass for old log-probs + values, one for reference log-probs   (core.rollout)
    2 score       every reward component -> TokenRewards; r_t = sum_k w_k r^k_t   (core.rewards.tensor)
    3 shape       r_t - beta * KL_t, fixed or adaptive beta, optional whitening   (core.rl)
    4 advantages  GAE + whitening                                                  (core.rl)
    5 update      epochs x minibatches of the clipped losses (+ ptx)              (core.losses)
    6 log         TRL metric names (core/metrics.py) + per-token samples for the app (core.trainers.ppo_logging)
    7 eval/save   held-out evaluation (core.evaluation), checkpoint

Deviations from the papers: the ptx term uses a small text set (QA-Feedback answers,
the demo set or your file) instead of the pretraining mix; the reference policy is the
LoRA backbone with adapters disabled (one model in memory) when lora=True; a response
that reaches max_new_tokens without EOS is kept (flagged in `ppo/no_eos_rate`, not
penalised); the value head shares the policy backbone by default (InstructGPT uses a
separate value model initialised from the RM: value_model="separate" gives a separate
scalar-head model initialised from the policy's weights); under DDP each process
logs its own batch and only the main one writes.

What it leaves out: reward models themselves (core.rewards), LR schedules, vLLM.

Run it:
    python -m core.trainers.ppo --help
    python -m core.trainers.ppo --prompts davidson --rewards toxicity_sentence --num-iterations 20
    accelerate launch -m core.trainers.ppo ...           # DDP, bf16 on GPU, no code change
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from dataclasses import asdict, dataclass, replace

import torch

from core.cli import entry_point
from core.checkpoint import load_optimizer_tensors, load_trainable_state_dict, rng_state, set_rng_state, trainable_state_dict
from core.data import load_prompts, load_ptx_texts
from core.evaluation import evaluate_policy
from core.losses import ppo_policy_loss, ppo_value_loss, ptx_loss
from core.models import DEFAULT_MODEL
from core.rl import AdaptiveKLController, FixedKLController, compute_advantages, masked_mean, shape_rewards
from core.rollout import generate, score_tokens
from core.runstore import Run
from core.trainers.batching import iteration_generator, iteration_prompts, ptx_batch
from core.trainers.common import (Logger, TrainingError, adamw, available_trackers, check_finite, open_run, resumed_config,
                                  progress, run_guard, seed_everything, set_phase, stop_honoured, stop_requested)
from core.trainers.ppo_logging import UPDATE_STATS, iteration_metrics, sample_records
from core.value_head import build_policy_with_value, reference_policy


@dataclass
class PPOConfig:
    model_name_or_path: str = DEFAULT_MODEL
    """policy model: an alias, a local folder or a Hugging Face id"""
    prompts: str = "davidson"
    """prompt set: 'davidson' (openings of offensive tweets), 'provocative' (requests inviting rudeness), 'rude-openings' (finish a profane sentence), 'qa-feedback' (questions, passages trimmed), 'demo', 'hh-rlhf', or a .txt (one per line) / .jsonl ('prompt') path"""
    num_prompts: int = 32
    """training prompts"""
    eval_prompts: int = 16
    """held-out prompts for evaluation (taken after the training ones; 0 = no evaluation)"""
    rewards: str = "toxicity_sentence"
    """comma list of reward components: toxicity | toxicity_sentence | NAME=RM_FOLDER | NAME=redistributed:RM_FOLDER | module:function"""
    weights: str = ""
    """comma list name=w of reward weights, e.g. 'toxicity_sentence=1.0,holistic=0.5' (unnamed = 1.0)"""
    kl_coef: float = 0.05
    """beta, the per-token KL penalty coefficient (initial value if adaptive_kl)"""
    kl_estimator: str = "k1"
    """per-token KL estimator in the reward: 'k1' (log ratio) or 'k3' ((r - 1) - log r)"""
    adaptive_kl: bool = False
    """adapt beta towards kl_target (Ziegler et al. 2019)"""
    kl_target: float = 6.0
    """target of the adaptive controller: KL per sequence (nats)"""
    kl_horizon: int = 10000
    """horizon of the adaptive controller (samples)"""
    whiten_rewards: bool = False
    """whiten the shaped rewards over the batch (scale only, mean kept; as TRL)"""
    whiten_advantages: bool = True
    """whiten the advantages over the batch"""
    gamma: float = 1.0
    """discount"""
    lam: float = 0.95
    """GAE lambda"""
    cliprange: float = 0.2
    """PPO ratio clip epsilon"""
    cliprange_value: float = 0.2
    """value clip epsilon"""
    vf_coef: float = 0.1
    """weight of the value loss"""
    ppo_epochs: int = 4
    """update epochs over each batch of rollouts"""
    batch_size: int = 8
    """rollouts (prompts) per iteration, per process"""
    minibatch_size: int = 4
    """rollouts per optimizer step"""
    gradient_accumulation_steps: int = 1
    """micro-batches per minibatch (minibatch_size must be divisible by it)"""
    learning_rate: float = 1e-4
    """Adam learning rate (constant)"""
    max_grad_norm: float = 1.0
    """gradient clipping norm"""
    max_new_tokens: int = 24
    """response length limit"""
    min_new_tokens: int = 0
    """EOS cannot end a response before this many tokens (= max_new_tokens: fixed-length responses, as TRL's PPO without a stop token)"""
    max_prompt_tokens: int = 64
    """prompts are cut to their last max_prompt_tokens tokens (before chat formatting)"""
    chat_template: bool = True
    """format each prompt as one user turn with the tokenizer's chat template (instruct models; no effect when the tokenizer has none); False: the policy continues the raw prompt text"""
    temperature: float = 1.0
    """sampling temperature (log-probs are of the tempered distribution)"""
    top_k: int = 0
    """top-k sampling (0 = off)"""
    top_p: float = 1.0
    """nucleus sampling (1.0 = off)"""
    num_iterations: int = 10
    """PPO iterations (rollout + update)"""
    kl_stop: float | None = None
    """stop the update epochs early once policy/approxkl passes this (None = off)"""
    value_model: str = "shared"
    """'shared' value head on the policy backbone, or 'separate' scalar-head model"""
    ptx_coef: float = 0.0
    """gamma of PPO-ptx (0 = plain PPO, the ptx data is then not even loaded)"""
    ptx_dataset: str = "qa-feedback"
    """text for the ptx term: 'qa-feedback' (SFT answers), 'demo', or a .txt / .jsonl ('text') path"""
    ptx_batch_size: int = 4
    """texts per ptx term, per micro-batch"""
    ptx_max_tokens: int = 64
    """ptx texts are cut to this many tokens"""
    lora: bool = True
    """train LoRA adapters (reference = adapters disabled); False trains all weights and keeps a frozen copy"""
    lora_r: int = 16
    """LoRA rank"""
    lora_alpha: int = 32
    """LoRA alpha"""
    lora_layers: int = 0
    """LoRA adapters in the last N transformer blocks only (0: all); backprop stops below them, fast on CPU"""
    eval_every: int = 5
    """evaluate on the held-out prompts every N iterations and before training (0 = off)"""
    eval_samples_k: int = 2
    """samples per held-out prompt (average-max toxicity over k)"""
    samples_per_log: int = 4
    """rollouts per iteration written to samples.jsonl with their per-token decomposition"""
    seed: int = 0
    """random seed"""
    save_every: int = 5
    """checkpoint every N iterations (and at the end; 0 = only at the end)"""
    resume_from: str = ""
    """run folder to continue from its latest checkpoint"""
    run_name: str = ""
    """name of the run folder (default 'ppo')"""
    trackers: str = ""
    """comma list of accelerate trackers: tensorboard, wandb, trackio"""
    cpu: bool = False
    """force CPU"""
    cpu_bf16: bool = False
    """on CPU: bf16 autocast for every forward pass (fp32 trainable weights and optimizer state); docs/benchmarks.md"""
    export_merged: bool = False
    """LoRA runs: besides the adapter in RUN_FOLDER/model, write the merged full model to RUN_FOLDER/model-merged"""


def short_ppo_config(**overrides) -> PPOConfig:
    """The "short PPO" of the app's reward-weight lab: default model, LoRA, 3 iterations on 8 prompts, 24 tokens
    sampled at temperature 0.7 with top-p 0.9 (at temperature 1 a 135M instruct model drifts off topic);
    held-out toxicity/perplexity on 4 prompts x 2 samples before and after (< 60 s on 2 idle CPU cores).
    A checkpoint after every iteration (the LoRA adapter, value head and optimizer: a few MB), so a run whose
    process dies resumes from its last iteration. The lab's presets (``workbench.lab.PRESETS``) change more."""
    short = PPOConfig(num_prompts=8, eval_prompts=4, eval_every=3, batch_size=8, minibatch_size=8,
                      ppo_epochs=2, num_iterations=3, max_new_tokens=24, save_every=1, learning_rate=3e-4,
                      temperature=0.7, top_p=0.9)
    return replace(short, **overrides)


# ---------------------------------------------------------------------------- models


def build_models(config: PPOConfig, device):
    """(PolicyWithValue, frozen reference or None): fp32 trainable weights, dropout off (core.value_head)."""
    from core.models import LoraSettings

    lora = LoraSettings(r=config.lora_r, alpha=config.lora_alpha, layers=config.lora_layers) if config.lora else None
    try:
        return build_policy_with_value(config.model_name_or_path, device, lora=lora, value_model=config.value_model)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None


# ---------------------------------------------------------------------------- the algorithm


def train_ppo(config: PPOConfig, on_log=None, *, run: Run | None = None, extra_rewards: dict | None = None) -> Run:
    """Train with PPO; returns the Run (metrics, samples, checkpoints). extra_rewards: name -> RewardComponent objects."""
    from tqdm.auto import tqdm

    from core.devices import make_accelerator
    from core.models import load_tokenizer
    from core.rewards.tensor import compute_token_rewards
    from core.trainers.rewards_setup import build_reward_components, parse_weights

    config = resumed_config(config, keep=("num_iterations", "trackers", "cpu"))  # a resumed run keeps its settings
    if config.minibatch_size % config.gradient_accumulation_steps or config.batch_size % config.minibatch_size:
        raise TrainingError("batch_size must be a multiple of minibatch_size, and minibatch_size of gradient_accumulation_steps")
    if not 0 <= config.min_new_tokens <= config.max_new_tokens:
        raise TrainingError(f"min_new_tokens must be in [0, max_new_tokens={config.max_new_tokens}], got {config.min_new_tokens}")
    if not config.temperature > 0:
        raise TrainingError(f"temperature must be > 0 (PPO's log-probs are of the tempered sampling distribution), "
                            f"got {config.temperature}")
    if config.lora_layers < 0:
        raise TrainingError(f"lora_layers must be >= 0 (0: adapters in every block), got {config.lora_layers}")
    trackers = available_trackers(config.trackers)
    accelerator = make_accelerator(config.gradient_accumulation_steps, cpu=config.cpu, log_with=trackers or None,
                                   cpu_bf16=config.cpu_bf16)
    main = accelerator.is_main_process
    run, resumed_step, checkpoint_folder = open_run("ppo", config, main, run=run)
    log = Logger(run if main else None, on_log if main else None, accelerator)

    with run_guard(run) if main else contextlib.nullcontext():
        # ---- 0. setup: data, rewards, models, optimizer, resume
        set_phase("loading the data and the models")
        seed_everything(config.seed + accelerator.process_index)
        prompts = load_prompts(config.prompts, config.num_prompts + config.eval_prompts, config.seed)
        train_prompts, eval_prompts = prompts[:config.num_prompts], prompts[config.num_prompts:]
        if not train_prompts:
            raise TrainingError(f"the prompt set {config.prompts!r} is empty: give at least one prompt")
        components = build_reward_components(config.rewards, extra_rewards)
        weights = parse_weights(config.weights, components)
        ptx_texts = load_ptx_texts(config.ptx_dataset) if config.ptx_coef > 0 else None
        tokenizer = load_tokenizer(config.model_name_or_path)
        model, frozen_reference = build_models(config, accelerator.device)
        optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
        model, optimizer = accelerator.prepare(model, optimizer)
        unwrapped = accelerator.unwrap_model(model)
        policy = unwrapped.policy  # generate() and the reference pass use the unwrapped policy
        kl_ctl = (AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon) if config.adaptive_kl
                  else FixedKLController(config.kl_coef))

        reference = functools.partial(reference_policy, policy, frozen_reference)  # adapters off, or the frozen copy

        start = resumed_step + 1
        # a fresh LoRA run before its first update: the adapters start at B = 0, so the policy computes exactly what
        # the reference does (KL 0 without a reference pass at step 0 and in iteration 1's rollout)
        policy_is_reference = checkpoint_folder is None and frozen_reference is None
        if checkpoint_folder is not None:
            load_trainable_state_dict(unwrapped, checkpoint_folder)
            load_optimizer_tensors(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, checkpoint_folder)
            state = json.loads((checkpoint_folder / "trainer_state.json").read_text())
            kl_ctl.value = state["kl_coef"]
            set_rng_state(state["rng"])

        def evaluate(step: int) -> dict:  # held-out metrics; the samples go to eval_samples.jsonl (paired by core.paired)
            with accelerator.autocast():  # sampled in the same precision as the training rollouts
                metrics, samples = evaluate_policy(
                    policy, tokenizer, eval_prompts, components, reference=reference, k=config.eval_samples_k,
                    max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_k=config.top_k,
                    top_p=config.top_p, seed=config.seed, chat_template=config.chat_template,
                    max_prompt_tokens=config.max_prompt_tokens, policy_is_reference=policy_is_reference and step == 0)
            run.log_eval_samples(step, samples)
            return metrics

        if main and start == 1 and config.eval_every and eval_prompts:
            set_phase("held-out evaluation")
            t0 = time.perf_counter()
            log(0, {**evaluate(0), "time/eval_s": time.perf_counter() - t0})

        bar = tqdm(range(start, config.num_iterations + 1), desc="ppo", disable=not main,
                   initial=start - 1, total=config.num_iterations)
        for iteration in bar:
            t_step = time.perf_counter()
            # fixed per-iteration generator: the prompt batch, minibatch order and ptx texts do not depend on the global RNG
            g = iteration_generator(config.seed, iteration, accelerator.process_index)

            # ---- 1. rollout: sample, then ONE pass for old log-probs + values, ONE for reference log-probs
            batch_prompts = iteration_prompts(train_prompts, config.batch_size, g)
            set_phase(f"iteration {iteration}: generating responses")
            t0 = time.perf_counter()
            with accelerator.autocast():  # bf16 compute on CUDA for the unwrapped policy too, as in the prepared model
                rollout = generate(policy, tokenizer, batch_prompts, max_new_tokens=config.max_new_tokens,
                                   temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                                   max_prompt_tokens=config.max_prompt_tokens, min_new_tokens=config.min_new_tokens,
                                   chat_template=config.chat_template, device=accelerator.device)
            t_generation = time.perf_counter() - t0
            t0 = time.perf_counter()
            set_phase(f"iteration {iteration}: old and reference log-probs, rewards")
            mask = rollout.response_mask  # (B, R)
            model.train()  # old log-probs and the update in the same mode (and dropout is off: build_models)
            old = score_tokens(model, rollout, config.temperature, with_entropy=True, no_grad=True)
            rollout.logprobs, rollout.values, rollout.entropy = old.logprobs, old.values, old.entropy
            if policy_is_reference and iteration == 1:
                rollout.ref_logprobs = old.logprobs.clone()
            else:
                with reference() as ref_model, accelerator.autocast():
                    rollout.ref_logprobs = score_tokens(ref_model, rollout, config.temperature, with_values=False,
                                                        no_grad=True).logprobs
            t_forward = time.perf_counter() - t0

            # ---- 2. score: every component on the response tokens; r_t = sum_k w_k r^k_t  (Wu et al. eq. 1)
            t0 = time.perf_counter()
            token_rewards = compute_token_rewards(batch_prompts, rollout.response_ids.cpu(), tokenizer, components,
                                                  response_mask=mask.cpu())
            scores = token_rewards.combined(weights).to(mask.device)  # (B, R)
            t_scoring = time.perf_counter() - t0

            # ---- 3. shape: r_t - beta * KL_t (Ziegler et al. eq. 2)
            beta = kl_ctl.value
            shaped_rewards, per_token_kl = shape_rewards(scores, rollout.logprobs, rollout.ref_logprobs, mask, beta,
                                                         config.kl_estimator, config.whiten_rewards)

            # ---- 4. advantages: GAE (Schulman et al. 2016), whitened over the batch
            advantages, raw_advantages, returns = compute_advantages(
                shaped_rewards, rollout.values, mask, config.gamma, config.lam, config.whiten_advantages)

            # ---- 5. update: epochs x minibatches of clipped policy + value loss (+ ptx)
            t0 = time.perf_counter()
            stats = {k: [] for k in UPDATE_STATS}
            early_stopped = False
            micro_size = config.minibatch_size // config.gradient_accumulation_steps
            set_phase(f"iteration {iteration}: PPO update (epochs)")
            for epoch in progress(range(config.ppo_epochs)):
                permutation = torch.randperm(len(rollout), generator=g)
                for mb_start in range(0, len(rollout), config.minibatch_size):
                    for micro in permutation[mb_start:mb_start + config.minibatch_size].split(micro_size):
                        with accelerator.accumulate(model):
                            mb = rollout.rows(micro)
                            ptx = None
                            if config.ptx_coef > 0:
                                ptx = ptx_batch(tokenizer, ptx_texts, config.ptx_batch_size, config.ptx_max_tokens, g, accelerator.device)
                            out = score_tokens(model, mb, config.temperature, with_entropy=True, ptx=ptx)
                            pg_loss, pg_stats = ppo_policy_loss(out.logprobs, mb.logprobs, advantages[micro], mb.response_mask, config.cliprange)
                            vf_loss, vf_stats = ppo_value_loss(out.values, mb.values, returns[micro], mb.response_mask, config.cliprange_value)
                            pt_loss = ptx_loss(out.ptx_logprobs, ptx[2], config.ptx_coef) if ptx is not None else out.logprobs.new_zeros(())
                            loss = pg_loss + config.vf_coef * vf_loss + pt_loss  # InstructGPT eq. 2, as a loss
                            check_finite(loss, iteration)
                            accelerator.backward(loss)
                            if accelerator.sync_gradients and config.max_grad_norm:
                                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                            optimizer.step()
                            optimizer.zero_grad()
                        for k, v in (("pg_loss", pg_loss), ("vf_loss", vf_loss), ("ptx_loss", pt_loss),
                                     ("clipfrac", pg_stats["clipfrac"]), ("approxkl", pg_stats["approxkl"]),
                                     ("entropy", masked_mean(out.entropy, mb.response_mask)),
                                     ("vf_clipfrac", vf_stats["clipfrac"]), ("ratio", pg_stats["ratio_mean"]),
                                     ("value", vf_stats["value_mean"])):
                            stats[k].append(float(v.detach()))
                    # decided on the mean over processes, so that under DDP they all stop together
                    if config.kl_stop is not None and accelerator.reduce(pg_stats["approxkl"].detach(), "mean") > config.kl_stop:
                        early_stopped = True
                        break
                if early_stopped:
                    break
            model.eval()
            t_update = time.perf_counter() - t0
            kl_per_sequence = per_token_kl.sum(-1)  # (B,)
            # beta follows the KL of the global batch: every process makes the same update (and saves the same beta)
            kl_ctl.update(accelerator.reduce(kl_per_sequence.mean(), "mean"), n_steps=len(rollout) * accelerator.num_processes)
            stop = stop_requested(accelerator)  # asked to stop: checkpoint this iteration, then leave the loop

            # ---- 6. log: TRL names (core/metrics.py) and per-token samples for the app's heatmaps
            if main:
                metrics = iteration_metrics(stats, scores, kl_per_sequence, beta, rollout, raw_advantages, returns,
                                            token_rewards, weights, early_stopped, config.learning_rate)
                run.log_samples(iteration, sample_records(tokenizer, rollout, token_rewards, per_token_kl, raw_advantages,
                                                          returns, config.samples_per_log))

                # ---- 7. evaluate on held-out prompts, then checkpoint
                if config.eval_every and eval_prompts and iteration % config.eval_every == 0:
                    set_phase("held-out evaluation")
                    t0 = time.perf_counter()
                    metrics.update(evaluate(iteration))
                    metrics["time/eval_s"] = time.perf_counter() - t0
                metrics.update({"time/generation_s": t_generation, "time/forward_s": t_forward, "time/scoring_s": t_scoring,
                                "time/update_s": t_update, "time/step_s": time.perf_counter() - t_step})
                log(iteration, metrics)
                bar.set_postfix(scores=f"{float(metrics['objective/scores']):.3f}", kl=f"{float(kl_per_sequence.mean()):.3f}")
                if (config.save_every and iteration % config.save_every == 0) or iteration == config.num_iterations or stop:
                    run.save_checkpoint(iteration, trainable_state_dict(unwrapped), optimizer=optimizer.optimizer
                                        if hasattr(optimizer, "optimizer") else optimizer,
                                        state={"kl_coef": kl_ctl.value, "rng": rng_state(), "config": asdict(config)})
            accelerator.wait_for_everyone()
            if stop:
                break
        if not stop_honoured():  # a stopped run is exported when it finishes (resume_from)
            from core.export import export_model  # 8. export the policy only (no value head/critic) on the main process
            export_model(run if main else None, policy, tokenizer, merge=config.export_merged)
    accelerator.end_training()
    return run


@entry_point
def main() -> None:
    import tyro

    from core.trainers.rewards_setup import function_rewards

    config = tyro.cli(PPOConfig)
    run = train_ppo(config, extra_rewards=function_rewards(config.rewards))  # code only from what was typed here
    if run is not None:
        print(f"run folder: {run.path}")


if __name__ == "__main__":
    main()
