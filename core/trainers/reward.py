"""Reward-model trainer: a scalar-head model fitted to human preference pairs with the Bradley-Terry loss.

Paper: Ouyang et al. 2022, "Training language models to follow instructions with human
feedback" (InstructGPT), sec. 3.5, eq. 1 with K = 2 (Stiennon et al. 2020 before them):

    loss(r) = -E_{(x, y_c, y_r) ~ D} [ log sigmoid( r(x, y_c) - r(x, y_r) ) ]

where r(x, y) is the score head read at the last token of prompt + response. The same
trainer makes the C3 (incompleteness) reward model of Wu et al. 2023 (``dataset=
"qa-feedback"``): their completeness RM is also a preference RM, trained on the
QA-Feedback comparisons.

Phases of ``train_reward_model``:
    1. data      load {prompt, chosen, rejected} pairs, split train / held-out by prompt
    2. model     scalar-head model; frozen backbone (head only), LoRA, or full fine-tuning
    3. features  frozen backbone only: one pass caches the last-token hidden state of
                 every chosen and rejected text, so training touches only the head
    4. train     chosen and rejected of a batch in ONE forward pass, Bradley-Terry loss
    5. evaluate  held-out pairwise accuracy and margin (every eval_every steps and at the end)
    6. save      normalisation (mean/std of training scores) + the model folder via
                 ``core.rewards.store`` so PPO and the app can load it

Under DDP (``accelerate launch``) the processes split every batch and the held-out
set: N processes train the same model as one, with the same batches and the same
metrics; only the main process writes the run and saves the model.

Deviations from the papers: InstructGPT trains a 6B RM from the SFT model with all K
responses of a prompt in one batch; here the default is a frozen 135M backbone with a
linear head on cached features (minutes on a laptop CPU) and pairs are independent.
No reward normalisation inside the loss; the mean/std are stored instead (InstructGPT
normalises the RM so demonstrations score 0 on average; FineGrainedRLHF stores
mean/std for the C3 model the same way). Inputs longer than max_length are truncated
from the LEFT so the response end, where the score is read, survives; QA-Feedback prompts
first lose the middle of their passages (``preference_rm.fit_passages``), so the question
always reaches the model (counted in the figures as ``trimmed_passages``).

What it leaves out: K-wise ranking batches (``core.losses.ranking_loss`` exists),
margins from preference strength, reward-model ensembles.

    python -m core.trainers.reward --help
    python -m core.trainers.reward --dataset hh-rlhf --limit 300
    python -m core.trainers.reward --dataset qa-feedback --category C3
    accelerate launch -m core.trainers.reward --no-freeze-backbone --use-lora     # DDP
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from core.cli import entry_point
from core.models import DEFAULT_MODEL
from core.runstore import Run
from core.trainers.common import (Logger, OnLog, TrainingError, adamw, available_trackers, check_finite, resumed_config, run_guard,
                                  progress, seed_everything, set_phase, stop_requested)


@dataclass
class RewardConfig:
    """Train a holistic (Bradley-Terry) reward model. Defaults run in a few minutes on a laptop CPU."""

    model_name_or_path: str = DEFAULT_MODEL
    """backbone: an alias, a local folder or a Hugging Face id"""
    dataset: str = "hh-rlhf"
    """'hh-rlhf' (Anthropic harmless-base), 'qa-feedback' (QA-Feedback comparisons, ties dropped) or a TRL .jsonl path"""
    limit: int = 300
    """read at most this many preference pairs (0 = all)"""
    eval_fraction: float = 0.2
    """fraction of prompts held out for evaluation (grouped by prompt, never on both sides)"""
    max_length: int = 128
    """tokens per prompt + response; longer inputs are truncated from the left"""
    freeze_backbone: bool = True
    """train only the score head on cached last-token features (fast on CPU)"""
    use_lora: bool = False
    """train LoRA adapters + head instead of all weights (ignored when freeze_backbone)"""
    lora_r: int = 16
    """LoRA rank"""
    num_epochs: int = 20
    """passes over the training pairs (cheap with a frozen backbone; use 1-2 when fine-tuning)"""
    batch_size: int = 32
    """pairs per optimizer step (under DDP split across the processes)"""
    learning_rate: float = 1e-3
    """AdamW learning rate (1e-3 for a head on frozen features, ~1e-4 for LoRA, ~1e-5 for full fine-tuning)"""
    weight_decay: float = 1e-3
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient clipping norm"""
    feature_batch_size: int = 8
    """texts per forward pass when caching features or evaluating"""
    eval_every: int = 50
    """evaluate on the held-out pairs every N steps (and at the end)"""
    save_every: int = 100
    """save a resumable checkpoint every N steps (0 = only at the end)"""
    seed: int = 0
    """random seed (split, shuffling, head initialisation)"""
    category: str = ""
    """'C3' marks a completeness RM (QA-Feedback); empty for a plain holistic RM"""
    name: str = ""
    """model / run name (default: 'holistic-<dataset>', or 'c3-completeness')"""
    save_model: bool = True
    """save the final model with core.rewards.store"""
    save_dir: str = ""
    """where to save the model (default: cache_dir()/reward_models/<name>; a taken default name gets a time stamp)"""
    overwrite: bool = False
    """replace a saved model at the same name / save_dir (a folder that is not a saved reward model: never)"""
    resume_from: str = ""
    """path of a run folder to continue from its latest checkpoint (its saved config is used; num_epochs may change)"""
    trackers: str = ""
    """accelerate trackers, comma separated: tensorboard, wandb, trackio"""
    cpu: bool = False
    """force CPU even when a GPU is present"""
    progress: bool = True
    """show tqdm progress bars"""


# ----------------------------------------------------------------------------- data


def _load_pairs(config: RewardConfig) -> tuple[list[dict], str]:
    """(records, separator) for config.dataset."""
    from core.data import dataset_name, load_preference_records

    records = load_preference_records(config.dataset, limit=config.limit or None)
    # FineGrainedRLHF's RM input for QA-Feedback: "{prompt} answer: {y}"
    return records, " answer: " if dataset_name(config.dataset) == "qa-feedback" else " "


def _default_name(config: RewardConfig) -> str:
    if config.name:
        return config.name
    if config.category == "C3":
        return "c3-completeness"
    from core.data import dataset_name

    dataset = dataset_name(config.dataset)
    stem = Path(config.dataset).stem if dataset not in ("hh-rlhf", "qa-feedback") else dataset.replace("-", "_")
    return "holistic-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip(".-") or "data")  # one plain folder name


def _texts(tokenizer, records, separator, max_length: int | None = None):
    """Formatted chosen and rejected texts (preference_rm.format_pair), the format used and how many prompts
    had their QA passages cut in the middle to fit max_length (``fit_passages``: the question always stays)."""
    from core.rewards.preference_rm import fit_passages, format_pair

    fmt = "chat" if records and (isinstance(records[0]["prompt"], list) or isinstance(records[0]["chosen"], list)) else "text"
    texts, trimmed = {"chosen": [], "rejected": []}, 0
    for r in records:
        for side in texts:
            prompt, cut = fit_passages(tokenizer, r["prompt"], r[side], max_length, separator) if max_length else (r["prompt"], False)
            trimmed += cut
            texts[side].append(format_pair(tokenizer, prompt, r[side], fmt, separator)[0])
    return texts["chosen"], texts["rejected"], fmt, trimmed


# ----------------------------------------------------------------------------- features and scores


def _cache_features(model, tokenizer, texts: list[str], config, device, desc: str, accelerator=None):
    """(N, H) last-token hidden states of a frozen backbone, batched by length to save padding.

    Under DDP each process encodes every world-th text (in length order) and all of them get every feature.
    """
    import torch
    from tqdm.auto import tqdm

    from core.rewards.preference_rm import encode, gather_last, hidden_states

    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    # QA-Feedback pairs reuse each answer up to 3 times; (length, text) is an order every process agrees on
    unique = sorted(set(texts), key=lambda t: (len(t), t))[rank::world]
    feats: dict[str, torch.Tensor] = {}
    bs = config.feature_batch_size
    with torch.no_grad():
        for i in progress(tqdm(range(0, len(unique), bs), desc=desc, disable=not config.progress or rank > 0, leave=False)):
            batch = unique[i : i + bs]
            enc = encode(tokenizer, batch, config.max_length)
            mask = enc["attention_mask"].to(device)
            h = gather_last(hidden_states(model, enc["input_ids"].to(device), mask), mask)  # (b, H)
            feats.update(zip(batch, h.float().cpu()))
    if world > 1:
        from accelerate.utils import gather_object

        feats = dict(gather_object(list(feats.items())))
    return torch.stack([feats[t] for t in texts]) if texts else torch.zeros(0)


def _pair_scores(scorer, tokenizer, chosen: list[str], rejected: list[str], config, device, feats=None, idx=None):
    """(r_chosen, r_rejected, non-pad tokens). scorer: the score head, applied to cached features (0 tokens),
    or a ``SequenceScorer`` making ONE forward pass over chosen + rejected, padding-free when the backbone
    allows it (``core.packing``); either may be wrapped for DDP."""
    from core.rewards.preference_rm import encode

    if feats is not None:
        dtype = next(scorer.parameters()).dtype  # features are cached in fp32; the head may be bf16 on GPU
        return scorer(feats[0][idx].to(device, dtype)).squeeze(-1), scorer(feats[1][idx].to(device, dtype)).squeeze(-1), 0
    b = len(chosen)
    enc = encode(tokenizer, chosen + rejected, config.max_length)  # (2b, T): chosen rows first
    scores = scorer(enc["input_ids"].to(device), enc["attention_mask"].to(device))
    return scores[:b], scores[b:], int(enc["attention_mask"].sum())


def _evaluate(scorer, tokenizer, chosen, rejected, config, device, feats=None, accelerator=None) -> dict:
    """Held-out loss, pairwise accuracy and margin; under DDP each process scores every world-th pair."""
    import torch

    from core.losses import bradley_terry_loss

    if not chosen:
        return {}
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    mine = list(range(rank, len(chosen), world))
    set_phase("held-out evaluation")
    scorer.eval()
    rows = []
    with torch.no_grad():
        bs = config.feature_batch_size if feats is None else 4096
        for i in progress(range(0, len(mine), bs)):
            idx = mine[i : i + bs]
            c, r, _ = _pair_scores(scorer, tokenizer, [chosen[j] for j in idx], [rejected[j] for j in idx], config, device,
                                   feats, idx)
            rows += zip(idx, c.float().cpu().tolist(), r.float().cpu().tolist())
    if world > 1:
        from accelerate.utils import gather_object

        rows = sorted(gather_object(rows))
    rc, rr = torch.tensor([row[1] for row in rows]), torch.tensor([row[2] for row in rows])
    return {
        "eval/loss": bradley_terry_loss(rc, rr).mean().item(),
        "eval/rm/accuracy": (rc > rr).float().mean().item(),
        "eval/rm/margin": (rc - rr).mean().item(),
    }


# ----------------------------------------------------------------------------- training


def batch_schedule(n: int, batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Training-pair indices of every optimizer step: a seeded permutation per epoch, cut into batches."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [perm[i : i + batch_size].tolist()
            for _ in range(epochs) for perm in [torch.randperm(n, generator=g)]
            for i in range(0, n, batch_size)]


def train_reward_model(config: RewardConfig, on_log: OnLog | None = None, *, run: Run | None = None) -> Run | None:
    """Train a Bradley-Terry reward model; returns its run (``run.status()["model_path"]`` is the saved folder),
    or None on the non-main processes of a DDP launch. run: a run folder created by the caller (else one is created)."""
    import torch
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    from core.checkpoint import load_optimizer_tensors, load_trainable_state_dict, rng_state, set_rng_state, trainable_state_dict
    from core.data import split
    from core.devices import make_accelerator
    from core.losses import bradley_terry_loss
    from core.models import LoraSettings, count_parameters, load_tokenizer, load_trainable_model

    config = resumed_config(config, keep=("num_epochs", "trackers", "cpu", "progress"))
    name = _default_name(config)
    from core.rewards.store import destination, save_reward_model

    # checked before training: a bad name, a taken name or a folder that is not a reward model fails now
    model_folder = destination(name, config.save_dir, config.overwrite, default_name=not config.name) if config.save_model else None
    accelerator = make_accelerator(cpu=config.cpu, log_with=available_trackers(config.trackers) or None)
    main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    # only the main process writes the run; every process reads a resumed run's checkpoint and cached features
    resumed = Run.open(config.resume_from) if config.resume_from else None
    run = (run or resumed or Run.create("reward", config, name=name)) if main else None
    if run is not None:
        run.acquire_writer()  # one writer per run, for the trainer's life (run_guard gives it back)
    with run_guard(run) if main else contextlib.nullcontext():
        seed_everything(config.seed)
        if run is not None:
            accelerator.project_configuration.set_directories(str(run.path))  # trackers write into the run folder
        if config.trackers:
            accelerator.init_trackers(name)
        t_start = time.time()
        device = accelerator.device
        log = Logger(run, on_log if main else None, accelerator)

        # 1. data --------------------------------------------------------------------------
        set_phase("loading the data")
        records, separator = _load_pairs(config)
        train, held_out = split(records, config.eval_fraction, seed=config.seed)
        if len(train) < 2:
            raise TrainingError(f"only {len(train)} training pairs in {config.dataset!r}; raise limit or lower eval_fraction")

        # 2. model -------------------------------------------------------------------------
        set_phase("loading the model")
        tokenizer = load_tokenizer(config.model_name_or_path)
        # fp32 trainable weights (core.models.load_trainable_model), dropout off; a frozen backbone is loaded in fp32
        lora = LoraSettings(r=config.lora_r, alpha=2 * config.lora_r) if config.use_lora and not config.freeze_backbone else None
        model = load_trainable_model(config.model_name_or_path, head="score", lora=lora, device=device)
        if config.freeze_backbone:
            for p in model.parameters():
                p.requires_grad_(False)
            from core.rewards.preference_rm import backbone_and_head

            for p in backbone_and_head(model)[1].parameters():
                p.requires_grad_(True)
        trainable, total = count_parameters(model)
        qa = separator == " answer: "  # QA-Feedback prompts: cut the passages in the middle, never the question
        train_c, train_r, fmt, trimmed = _texts(tokenizer, train, separator, config.max_length if qa else None)
        eval_c, eval_r, _, eval_trimmed = _texts(tokenizer, held_out, separator, config.max_length if qa else None)

        # 3. features (frozen backbone only; cached in the run folder for resumes) ----------
        train_feats = eval_feats = None
        if config.freeze_backbone:
            t0 = time.time()
            folder = run.path if run is not None else resumed.path if resumed is not None else None
            cache = folder / "features.safetensors" if folder is not None else None
            if cache is not None and cache.is_file():
                f = load_file(str(cache))
                train_feats, eval_feats = (f["train_c"], f["train_r"]), (f["eval_c"], f["eval_r"])
            else:
                model.eval()
                set_phase("feature extraction")  # frozen backbone: one forward pass per text, batched
                both = _cache_features(model, tokenizer, train_c + train_r + eval_c + eval_r, config, device, "features",
                                       accelerator)
                n, m = len(train_c), len(eval_c)
                train_feats = (both[:n], both[n : 2 * n])
                eval_feats = (both[2 * n : 2 * n + m], both[2 * n + m :])
                if run is not None:
                    save_file({"train_c": train_feats[0].contiguous(), "train_r": train_feats[1].contiguous(),
                               "eval_c": eval_feats[0].contiguous(), "eval_r": eval_feats[1].contiguous()}, str(cache))
            if resumed is None:  # a resumed run keeps the step-0 row it logged the first time
                log(0, {"time/features_s": time.time() - t0})

        # the module that scores a batch, wrapped for DDP (whose gradient all-reduce hooks on its forward pass):
        # the score head alone on cached features, else the reward model's forward as one module
        from core.rewards.preference_rm import SequenceScorer, backbone_and_head

        scorer = backbone_and_head(model)[1] if config.freeze_backbone else SequenceScorer(model)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = adamw(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        trained, optimizer = accelerator.prepare(scorer, optimizer)

        # the whole schedule of batches is fixed by the seed, so a resumed run sees the same batches
        steps_per_epoch = math.ceil(len(train) / config.batch_size)
        total_steps = steps_per_epoch * config.num_epochs
        schedule = batch_schedule(len(train), config.batch_size, config.num_epochs, config.seed)
        start = 0
        latest = resumed.latest_checkpoint() if resumed is not None else None
        if latest is not None:
            start, ckpt = latest
            load_trainable_state_dict(model, ckpt)
            load_optimizer_tensors(optimizer, ckpt)
            import json

            set_rng_state(json.loads((ckpt / "trainer_state.json").read_text())["rng"])
            if run is not None:
                run.truncate_after(start)

        # 4. train --------------------------------------------------------------------------
        bar = tqdm(total=total_steps, initial=start, desc=f"reward model ({trainable:,}/{total:,} params trained)",
                   disable=not config.progress or not main)
        for step in range(start + 1, total_steps + 1):
            t0 = time.time()
            trained.train()
            idx = schedule[step - 1]
            # each process takes every world-th pair of the batch; one left without a pair (a short last batch)
            # scores one with weight 0, so that every process joins the gradient all-reduce
            mine = idx[rank::world] or idx[:1]
            weight = world / len(idx) if rank < len(idx) else 0.0
            chosen_rewards, rejected_rewards, non_pad = _pair_scores(
                trained, tokenizer, [train_c[i] for i in mine], [train_r[i] for i in mine], config, device, train_feats, mine)
            losses = bradley_terry_loss(chosen_rewards, rejected_rewards)  # (b,)
            # DDP averages the processes' gradients: each contributes its sum / len(batch) * world, so the
            # update is that of the batch mean, as in one process
            loss = losses.sum() * weight
            check_finite(loss, step)
            accelerator.backward(loss)
            grad_norm = accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            # batch metrics over every process's pairs: sums, then one all-reduce
            c, r = chosen_rewards.detach().float(), rejected_rewards.detach().float()
            sums = torch.stack([losses.detach().float().sum(), (c > r).float().sum(), (c - r).sum(),
                                torch.tensor(float(len(mine)), device=c.device), torch.tensor(float(non_pad), device=c.device)])
            sums = accelerator.reduce(sums * (weight > 0), "sum").cpu()
            metrics = {
                "loss": float(sums[0] / sums[3]),
                "rm/accuracy": float(sums[1] / sums[3]),
                "rm/margin": float(sums[2] / sums[3]),
                "lr": config.learning_rate,
                "epoch": step / steps_per_epoch,
                "grad_norm": float(grad_norm),
                "time/step_s": time.time() - t0,
            }
            if train_feats is None:
                metrics["tokens/non_pad"] = int(sums[4])
            # 5. evaluate ---------------------------------------------------------------------
            if step % config.eval_every == 0 or step == total_steps:
                metrics.update(_evaluate(accelerator.unwrap_model(trained), tokenizer, eval_c, eval_r, config, device,
                                         eval_feats, accelerator))
            log(step, metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics.get('eval/rm/accuracy', metrics['rm/accuracy']):.2f}")
            stop = stop_requested(accelerator)  # asked to stop: checkpoint now and leave without saving a model
            if run is not None and ((config.save_every and step % config.save_every == 0) or step == total_steps or stop):
                run.save_checkpoint(step, trainable_state_dict(model), optimizer, state={"rng": rng_state()})
            if stop:
                bar.close()
                return run
        bar.close()

        # 6. save ---------------------------------------------------------------------------
        scorer = accelerator.unwrap_model(trained)
        final = _evaluate(scorer, tokenizer, eval_c, eval_r, config, device, eval_feats, accelerator)
        if run is None:  # a non-main DDP process: the main one saves
            accelerator.end_training()
            return None
        model.eval()
        with torch.no_grad():
            if train_feats is not None:
                raw = torch.cat(_pair_scores(scorer, tokenizer, [], [], config, device, train_feats, list(range(len(train))))[:2])
            else:
                from core.rewards.preference_rm import score_texts

                sample = (train_c + train_r)[:256]
                raw = torch.tensor(score_texts(model, tokenizer, sample, config.max_length, config.feature_batch_size))
        raw = raw.float().cpu()
        figures = {"train_pairs": len(train), "eval_pairs": len(held_out),
                   "eval_accuracy": final.get("eval/rm/accuracy"), "eval_margin": final.get("eval/rm/margin"),
                   "eval_loss": final.get("eval/loss"), "seconds": time.time() - t_start,
                   "trimmed_passages": {"train": trimmed, "eval": eval_trimmed},
                   "skipped": dict(getattr(records, "skipped", {}) or {})}
        meta = {
            "kind": "preference", "category": config.category or None, "level": "sequence",
            "name": "c3_completeness" if config.category == "C3" else "holistic",
            "format": fmt, "separator": separator, "max_length": config.max_length, "trim_passages": qa,
            "normalisation": {"mean": raw.mean().item(), "std": max(raw.std().item(), 1e-6) if raw.numel() > 1 else 1.0},
            "base_model": config.model_name_or_path, "backbone_frozen": config.freeze_backbone, "lora": bool(config.use_lora and not config.freeze_backbone),
            "training": {"dataset": config.dataset, "run": str(run.path), **figures},
        }
        status = {"figures": figures}
        if config.save_model:
            save_reward_model(model, tokenizer, meta, model_folder, overwrite=config.overwrite)
            status["model_path"] = str(model_folder)
        run.set_status("running", **status)
        accelerator.end_training()
    return run


@entry_point
def main() -> None:
    import tyro

    config = tyro.cli(RewardConfig)
    run = train_reward_model(config)
    if run is None:  # a non-main DDP process
        return
    st = run.status()
    f = st.get("figures", {})
    print(f"run {run.path}: held-out pairwise accuracy {f.get('eval_accuracy'):.3f} on {f.get('eval_pairs')} pairs "
          f"({f.get('train_pairs')} training pairs, {f.get('seconds'):.0f} s)")
    if "model_path" in st:
        print(f"saved reward model: {st['model_path']}")


if __name__ == "__main__":
    main()
