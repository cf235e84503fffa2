"""SFT trainer: supervised fine-tuning on demonstrations, the first step of InstructGPT.

Paper: Ouyang et al. 2022, "Training language models to follow instructions with human
feedback", https://arxiv.org/abs/2203.02155, sec. 3.5 (SFT). The loss is the negative
log-likelihood of the demonstration given the prompt, on COMPLETION tokens only:

    L_SFT = − (1 / Σ_b |y_b|) Σ_b Σ_t log π(y_b,t | x_b, y_b,<t)      (prompt tokens masked)

i.e. a token-level mean over every completion token of the micro-batch, and
``sft/perplexity`` = exp(L_SFT).

Data: QA-Feedback ``sft.json`` (``text`` → ``answer``, as Wu et al. 2023 train their
SFT policy), the chosen responses of a preference set ("hh-rlhf", "demo", a TRL
.jsonl), or a .jsonl of {prompt, completion}.

Phases of ``train_sft``: 1 setup (run, accelerator) → 2 data → 3 policy → 4 optimizer (and
resume) → 5 loop: batch → forward → loss → update → log → evaluate → checkpoint.

Deviations from InstructGPT, all deliberate:
- Examples whose prompt + completion does not fit ``max_length`` are dropped, not cut;
  prompts are cut from the left to ``max_prompt_length`` first.
- Prompt tokens carry no loss (InstructGPT does not say; TRL's completion_only_loss does the same).
- With gradient accumulation the loss is a mean of per-micro-batch token means (not
  one mean over all tokens of the step); learning rate: warm-up then constant.
- LoRA is offered; InstructGPT fine-tunes all weights for 16 epochs.

What it leaves out: multi-turn conversations (only the last answer is trained), packing.

Run it:
    python -m core.trainers.sft --help
    python -m core.trainers.sft --dataset qa-feedback --num-steps 50
    accelerate launch -m core.trainers.sft --no-lora           # several GPUs (DDP)
    from core.trainers.sft import SFTConfig, train_sft; run = train_sft(SFTConfig(), on_log=print)
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass

from core.models import DEFAULT_MODEL
from core.runstore import Run
from core.trainers.common import (Logger, OnLog, adamw, check_finite, open_run, resumed_config, run_guard, seed_everything,
                                  stop_honoured, stop_requested)


@dataclass
class SFTConfig:
    model_name_or_path: str = DEFAULT_MODEL
    """model to fine-tune: an alias, a local folder or a hub id"""
    dataset: str = "qa-feedback"
    """'qa-feedback' (sft.json), 'hh-rlhf' or 'demo' (chosen responses), or a .jsonl of {prompt, completion} or {prompt, chosen, rejected}"""
    train_size: int = 256
    """training examples (0: every example that fits max_length)"""
    eval_size: int = 32
    """held-out examples for eval/ metrics (taken before train_size, with a seeded shuffle)"""
    max_length: int = 512
    """longest prompt + completion in tokens; longer examples are dropped"""
    max_prompt_length: int = 384
    """prompts are cut from the left (their beginning) to this many tokens"""
    learning_rate: float = 1e-4
    """peak learning rate (1e-4 suits LoRA; use ~1e-5 to 2e-5 for a full fine-tune)"""
    warmup_steps: int = 0
    """linear warm-up steps, then constant"""
    max_grad_norm: float = 1.0
    """clip the global gradient norm to this (0: no clipping)"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    batch_size: int = 4
    """examples per micro-batch per process"""
    gradient_accumulation_steps: int = 2
    """micro-batches per optimizer step"""
    num_steps: int = 50
    """optimizer steps"""
    num_epochs: float = 0.0
    """if > 0, train for this many passes over the training examples instead of num_steps"""
    eval_every: int = 10
    """evaluate on the held-out examples every this many steps, and at step 0 and at the end (0: only those two)"""
    eval_batch_size: int = 8
    """examples per no-grad forward pass (evaluation)"""
    num_samples: int = 2
    """held-out prompts answered greedily and written to samples.jsonl at each evaluation"""
    sample_max_new_tokens: int = 48
    """length of those greedy answers (0: write per-token log-probs of the target only)"""
    save_every: int = 25
    """checkpoint every this many steps (and at the end); 0: only at the end"""
    seed: int = 0
    """seed of the split, the data order and torch"""
    lora: bool = True
    """train LoRA adapters instead of all weights"""
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


def completion_nll(model, batch):
    """(summed NLL over completion tokens (), number of completion tokens ()) of one (B, T) batch."""
    from core.trainers.batching import completion_forward

    per_token_logps, mask = completion_forward(model, batch)  # (B, K), (B, K)
    return -(per_token_logps * mask).sum(), mask.sum()


def evaluate(model, examples, config: SFTConfig, tokenizer, accelerator=None):
    """Held-out ``eval/loss`` (token mean) and ``eval/sft/perplexity``, and sample rows with greedy answers."""
    import torch

    from core.trainers.batching import collate_sft, completion_forward, row_values, token_strings

    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    mine = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt_ids) + len(examples[i].completion_ids))[rank::world]
    model.eval()
    nll, count = torch.zeros(()), torch.zeros(())
    autocast = accelerator.autocast() if accelerator else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for start in range(0, len(mine), config.eval_batch_size):
            batch = collate_sft([examples[i] for i in mine[start:start + config.eval_batch_size]], tokenizer.pad_token_id)
            s, n = completion_nll(model, batch)
            nll, count = nll + s.float().cpu(), count + n.cpu()
        if accelerator is not None and world > 1:
            nll, count = (accelerator.reduce(t.to(accelerator.device), "sum").cpu() for t in (nll, count))
        loss = nll / count.clamp(min=1)
        samples = []
        for i in range(min(config.num_samples, len(examples))):
            e = examples[i]
            batch = collate_sft([e], tokenizer.pad_token_id)
            per_token, _ = completion_forward(model, batch)
            row = {"pair": i, "prompt": e.prompt, "completion": e.completion,
                   "tokens": token_strings(tokenizer, e.completion_ids),
                   "per_token": {"logps": row_values(per_token.cpu(), batch["completion_lengths"])[0]}}
            if config.sample_max_new_tokens:
                device = next(model.parameters()).device
                prompt = torch.tensor([e.prompt_ids], device=device)
                out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                     max_new_tokens=config.sample_max_new_tokens, use_cache=True,
                                     pad_token_id=tokenizer.pad_token_id)
                row["response"] = tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)
            samples.append(row)
    return {"eval/loss": float(loss), "eval/sft/perplexity": math.exp(float(loss))}, samples


def train_sft(config: SFTConfig, on_log: OnLog | None = None, *, run: Run | None = None):
    """Supervised fine-tuning with a completion-only loss; returns the ``Run`` (None on non-main DDP processes)."""
    import torch

    from core.data import load_sft_records
    from core.devices import make_accelerator
    from core.models import LoraSettings, load_tokenizer, load_trainable_model, train_only_last_layers
    from core.trainers.batching import batch_indices, collate_sft, epoch_at, tokenize_sft, train_eval_examples
    from core.trainers.common import available_trackers, learning_rate_at, restore_checkpoint, save_checkpoint

    # ---- 1. setup: config (a resumed run keeps its own), accelerator, run folder
    config = resumed_config(config)
    accelerator = make_accelerator(config.gradient_accumulation_steps, cpu=config.cpu,
                                   log_with=available_trackers(config.trackers) or None)
    run, start_step, checkpoint = open_run("sft", config, accelerator.is_main_process, run=run)
    with run_guard(run) if run is not None else contextlib.nullcontext():
        if config.trackers:
            accelerator.init_trackers("rlhf-workbench-sft", config=asdict(config))
        log = Logger(run, on_log if accelerator.is_main_process else None, accelerator)
        seed_everything(config.seed)

        # ---- 2. data: records -> (train, held-out) by prompt -> token ids, drops counted; the order is f(seed, step)
        tokenizer = load_tokenizer(config.model_name_or_path)
        train, held_out, dropped = train_eval_examples(tokenize_sft, tokenizer, load_sft_records(config.dataset), config)
        B, accum, world = config.batch_size, config.gradient_accumulation_steps, accelerator.num_processes
        num_steps = config.num_steps
        if config.num_epochs > 0:
            num_steps = math.ceil(config.num_epochs * len(train) / (B * accum * world))

        # ---- 3. policy: fp32 trainable weights (bf16 autocast on GPU): full fine-tune, or LoRA on a bf16/fp32 backbone;
        #      the model's own dropout is kept (a regulariser here)
        lora = LoraSettings(r=config.lora_r, alpha=config.lora_alpha) if config.lora else None
        model = load_trainable_model(config.model_name_or_path, lora=lora, device=accelerator.device, keep_dropout=True)
        model.config.use_cache = False

        # ---- 4. optimizer; resume weights, optimizer and RNG from the latest checkpoint
        if config.lora:  # after the reference pass: leaving peft's disable_adapter() re-enables every adapter
            train_only_last_layers(model, config.lora_layers)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = adamw(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        if checkpoint is not None:
            restore_checkpoint(checkpoint, model, optimizer)
        model, optimizer = accelerator.prepare(model, optimizer)

        if start_step == 0:
            metrics, samples = evaluate(accelerator.unwrap_model(model), held_out, config, tokenizer, accelerator)
            log(0, {**dropped, **metrics})  # with data/dropped_train, data/dropped_eval
            if run is not None:
                run.log_samples(0, samples)

        # ---- 5. training loop
        for step in range(start_step + 1, num_steps + 1):
            t0 = time.perf_counter()
            model.train()
            lr = learning_rate_at(step, config.learning_rate, config.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            losses, non_pad, grad_norm = [], 0, torch.zeros(())
            for micro in range(accum):
                # 5a. batch: B examples, left-padded to this batch's longest row
                idx = batch_indices(len(train), config.seed, step, micro, B, accum, accelerator.process_index, world)
                batch = collate_sft([train[i] for i in idx], tokenizer.pad_token_id)
                non_pad += int(batch["attention_mask"].sum())
                with accelerator.accumulate(model):
                    # 5b. forward: completion-token NLL; 5c. loss: the token-level mean (the reduction)
                    nll, n_tokens = completion_nll(model, batch)
                    loss = nll / n_tokens.clamp(min=1)
                    check_finite(loss, step)
                    # 5d. update (accelerate scales by 1/accum and syncs DDP gradients on the last micro-batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(params, config.max_grad_norm or float("inf"))
                    optimizer.step()
                    optimizer.zero_grad()
                losses.append(loss.detach())

            # 5e. log: mean over micro-batches and processes
            loss = accelerator.reduce(torch.stack(losses).mean(), "mean")
            non_pad = int(accelerator.reduce(torch.tensor(non_pad, device=accelerator.device), "sum"))
            step_s = time.perf_counter() - t0
            log(step, {"loss": float(loss), "sft/perplexity": math.exp(float(loss)), "grad_norm": float(grad_norm), "lr": lr,
                       "epoch": epoch_at(step, len(train), B, accum, world),
                       "time/step_s": step_s, "tokens/non_pad": non_pad, "tokens/per_second": non_pad / step_s})

            # 5f. evaluate on held-out examples; 5g. checkpoint
            if (config.eval_every and step % config.eval_every == 0) or step == num_steps:
                metrics, samples = evaluate(accelerator.unwrap_model(model), held_out, config, tokenizer, accelerator)
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
            from core.export import export_model  # 6. export RUN_FOLDER/model (run is None off the main process)
            export_model(run, accelerator.unwrap_model(model), tokenizer, merge=config.export_merged)
        if config.trackers:
            accelerator.end_training()
    return run


def main() -> None:
    from core.trainers.common import cli_main

    cli_main(SFTConfig, train_sft, desc=lambda c: "sft", shown=("loss", "eval/loss"))


if __name__ == "__main__":
    main()
