"""Fine-grained reward-model trainer: C1 (relevance) and C2 (factuality) token classifiers.

Paper: Wu et al. 2023, "Fine-Grained Human Feedback Gives Better Rewards for Language
Model Training" (sec. 3.2, Appendix D; code allenai/FineGrainedRLHF). The reward
component, its categories and its segment labels are in ``core.rewards.finegrained``;
this file fits one category's classifier to QA-Feedback's human error spans:

    loss = -(1/sum_i w_{y_i}) sum_i w_{y_i} log p(y_i | text up to the end of segment i)

over every segment i of the training answers (label y_i = 1 when a human span of the
category touches the segment), with class weights w = inverse class frequency
(errors are the minority) or w = 1 (balance_classes=False).

Phases of ``train_finegrained_rm``:
    1. data      answers with their segments and labels, split train / held-out by question
    2. model     2-class token classifier; frozen backbone (head only), LoRA, or full fine-tuning
    3. features  frozen backbone only: one pass caches the hidden state at every segment end
    4. train     weighted cross-entropy on segment-end tokens
    5. evaluate  accuracy and F1 on the error class against the human labels, with the
                 majority-class baseline
    6. save      the model folder via ``core.rewards.store`` (kind "finegrained")

Deviations from the paper: upstream fine-tunes Longformer-base; the default here is a
frozen causal backbone + a linear head (logistic regression on cached hidden states)
with class-balanced weights, minutes on a CPU; ``freeze_backbone=False`` fine-tunes
everything (or LoRA with use_lora) on a GPU.

What it leaves out: C3 (a preference RM: ``core.trainers.reward``), upstream's 3-class C2 head.

    python -m core.trainers.finegrained --help
    python -m core.trainers.finegrained --category C1
    python -m core.trainers.finegrained --category C2 --limit 200
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from core.cli import entry_point
from core.data import load_qa_feedback_spans, split
from core.devices import pick_device
from core.models import LoraSettings, apply_lora, disable_dropout, fp32_trainable, load_tokenizer
from core.rewards.finegrained import CATEGORIES, SEPARATOR, load_token_classifier, rm_prefix, segment_end_states, segment_labels
from core.rewards.preference_rm import backbone_and_head, format_pair
from core.rewards.store import destination, save_reward_model
from core.runstore import Run
from core.trainers.common import Logger, TrainingError, adamw, check_finite, run_guard, seed_everything


@dataclass
class FineGrainedConfig:
    """Train a C1 or C2 fine-grained reward model on QA-Feedback's human error spans."""

    category: str = "C1"
    """'C1' (irrelevance/repetition/incoherence, sub-sentences) or 'C2' (wrong/unverifiable facts, sentences)"""
    model_name_or_path: str = "smollm2-135m-instruct"
    """backbone: an alias, a local folder or a Hugging Face id"""
    data: str = ""
    """QA-Feedback folder or feedback.json (default: the shared data folder)"""
    limit: int = 200
    """use at most this many answers (0 = all 409)"""
    eval_fraction: float = 0.2
    """fraction of questions held out (grouped by question)"""
    max_length: int = 256
    """RM input tokens (truncated from the left; the answer is at the end)"""
    freeze_backbone: bool = True
    """train only the linear head on cached segment-end features (CPU-friendly)"""
    use_lora: bool = False
    """with freeze_backbone=False: LoRA adapters + head instead of all weights"""
    num_epochs: int = 200
    """passes over the training segments (head: cheap full-batch steps; fine-tuning: use 2-3)"""
    batch_size: int = 4096
    """segments per step with a frozen backbone; answers per step when fine-tuning"""
    learning_rate: float = 3e-3
    """AdamW learning rate (1e-3..1e-2 for the head, ~2e-5 for fine-tuning)"""
    weight_decay: float = 1e-2
    """AdamW weight decay"""
    balance_classes: bool = True
    """weight the cross-entropy by inverse class frequency (errors are the minority)"""
    feature_batch_size: int = 4
    """answers per forward pass when caching features or evaluating"""
    positive_reward: float = 1.0
    """reward of a segment judged clean (FineGrainedRLHF default 1.0)"""
    negative_reward: float = -1.0
    """reward of a segment judged erroneous (FineGrainedRLHF default -1.0)"""
    threshold: float = 0.5
    """a segment is erroneous when P(error) >= threshold (0.5 = upstream's argmax)"""
    seed: int = 0
    """random seed"""
    name: str = ""
    """model / run name (default 'c1-relevance' / 'c2-factuality')"""
    save_model: bool = True
    """save the model with core.rewards.store"""
    save_dir: str = ""
    """where to save (default: cache_dir()/reward_models/<name>; a taken default name gets a time stamp)"""
    overwrite: bool = False
    """replace a saved model at the same name / save_dir (a folder that is not a saved reward model: never)"""
    cpu: bool = False
    """force CPU"""
    progress: bool = True
    """show tqdm progress bars"""


# ----------------------------------------------------------------------------- data


def _examples(config: FineGrainedConfig, tokenizer) -> list[dict]:
    """One dict per usable answer: its record plus the RM input ``text``, where the answer ``start``s in it,
    and its ``segments`` (spans into the answer) with their ``labels`` (1 = a human span of the category).
    C2 prompts longer than max_length lose the middle of their passages (``trimmed``), never the question."""
    records = load_qa_feedback_spans(config.data or None)
    records = [r for r in records if r["response"].strip()]
    if config.limit:
        records = records[: config.limit]
    out = []
    for r in records:
        seg_labels = segment_labels(r["response"], r["spans"], config.category)
        if not seg_labels:
            continue
        prefix = rm_prefix(r["prompt"], config.category, tokenizer, r["response"], config.max_length)
        text, start = format_pair(None, prefix, r["response"], "text", SEPARATOR)
        out.append({**r, "text": text, "start": start, "segments": [s for s, _ in seg_labels],
                    "labels": [y for _, y in seg_labels], "trimmed": prefix != rm_prefix(r["prompt"], config.category)})
    return out


# ----------------------------------------------------------------------------- training


def train_finegrained_rm(config: FineGrainedConfig, on_log=None, *, run: Run | None = None) -> Run:
    """Train a C1/C2 token-classification RM; returns its run (``status()["figures"]``, ``["model_path"]``).

    run: the run to write to (e.g. one the app created); by default a new one."""
    if config.category not in CATEGORIES:
        raise TrainingError(f"category must be C1 or C2 (C3 is a preference RM: core.trainers.reward), got {config.category!r}")
    spec = CATEGORIES[config.category]
    name = config.name or {"C1": "c1-relevance", "C2": "c2-factuality"}[config.category]
    folder = destination(name, config.save_dir, config.overwrite, default_name=not config.name) if config.save_model else None
    run = run or Run.create("finegrained_rm", config, name=name)
    run.acquire_writer()  # one writer per run, for the trainer's life (run_guard gives it back)
    with run_guard(run):
        seed_everything(config.seed)
        t_start = time.time()
        device = pick_device("cpu" if config.cpu else None)
        log = Logger(run, on_log)

        # 1. data: segments and their labels from the human spans -----------------------------
        tokenizer = load_tokenizer(config.model_name_or_path)
        examples = _examples(config, tokenizer)
        train, held_out = split(examples, config.eval_fraction, seed=config.seed, key="question_id")
        if not train or not held_out:
            raise TrainingError(f"{len(examples)} usable answers: too few to split; raise limit")
        y_train = torch.tensor([y for e in train for y in e["labels"]])
        y_eval = torch.tensor([y for e in held_out for y in e["labels"]])

        # 2. model ---------------------------------------------------------------------------
        model = load_token_classifier(config.model_name_or_path, device)
        if config.freeze_backbone:
            for p in model.parameters():
                p.requires_grad_(False)
            for p in backbone_and_head(model)[1].parameters():
                p.requires_grad_(True)
        elif config.use_lora:
            model = apply_lora(model, LoraSettings(), task_type="TOKEN_CLS")
        disable_dropout(fp32_trainable(model))  # fp32 trained weights (AdamW needs a master copy) even on a bf16 backbone
        _, head = backbone_and_head(model)
        # the trained copy's dtype (fp32; with LoRA the head wrapper also holds the frozen original): states are cast to it
        head_dtype = next((p for p in head.parameters() if p.requires_grad), next(head.parameters())).dtype
        low_precision = any(p.dtype != torch.float32 for p in model.parameters() if p.is_floating_point())
        amp = lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=low_precision)  # noqa: E731

        def features(exs, desc):
            feats = []
            with torch.no_grad():
                for i in tqdm(range(0, len(exs), config.feature_batch_size), desc=desc, disable=not config.progress, leave=False):
                    b = exs[i : i + config.feature_batch_size]
                    with amp():
                        feats += segment_end_states(model, tokenizer, [e["text"] for e in b], [e["start"] for e in b],
                                                    [e["segments"] for e in b], config.max_length, device)
            return torch.cat(feats).float()  # (n_segments, H)

        # 3. features (frozen backbone) -------------------------------------------------------
        x_train = x_eval = None
        if config.freeze_backbone:
            t0 = time.time()
            model.eval()
            x_train, x_eval = features(train, "features (train)"), features(held_out, "features (eval)")
            log(0, {"time/features_s": time.time() - t0})

        counts = torch.bincount(y_train, minlength=2).float()
        weight = (counts.sum() / (2 * counts.clamp(min=1))).to(device) if config.balance_classes else None
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = adamw(params, lr=config.learning_rate, weight_decay=config.weight_decay)

        def eval_logits():
            model.eval()
            with torch.no_grad():
                return head(x_eval.to(device, head_dtype)).float().cpu() if x_eval is not None else features_logits(held_out)

        def features_logits(exs):
            return head(features(exs, "eval").to(device, head_dtype)).float().cpu()

        # 4. train: cross-entropy on segment-end tokens ----------------------------------------
        steps_per_epoch = (len(y_train) if config.freeze_backbone else len(train)) // config.batch_size + 1
        total = steps_per_epoch * config.num_epochs
        g = torch.Generator().manual_seed(config.seed)
        bar = tqdm(total=total, desc=f"{config.category} reward model", disable=not config.progress)
        step = 0
        for epoch in range(config.num_epochs):
            n = len(y_train) if config.freeze_backbone else len(train)
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, config.batch_size):
                t0 = time.time()
                model.train()
                idx = perm[i : i + config.batch_size]
                if config.freeze_backbone:
                    logits, labels = head(x_train[idx].to(device, head_dtype)), y_train[idx].to(device)  # (b, 2), (b,)
                else:
                    b = [train[j] for j in idx.tolist()]
                    with amp():  # fp32 adapters on a bf16 backbone: mixed precision, as accelerate's bf16 does
                        states = segment_end_states(model, tokenizer, [e["text"] for e in b], [e["start"] for e in b],
                                                    [e["segments"] for e in b], config.max_length, device)
                    logits = head(torch.cat(states).to(head_dtype))
                    labels = torch.tensor([y for e in b for y in e["labels"]], device=device)
                losses = torch.nn.functional.cross_entropy(logits.float(), labels, weight=weight, reduction="none")  # (b,)
                loss = losses.sum() / (weight[labels].sum() if weight is not None else len(labels))  # weighted mean
                check_finite(loss, step)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)
                metrics = {"loss": loss.item(), "epoch": epoch + 1, "time/step_s": time.time() - t0}
                if step % max(total // 10, 1) == 0 or step == total:
                    ev = classification_figures(eval_logits().softmax(-1)[:, 1].ge(config.threshold).long(), y_eval, y_train)
                    metrics.update({"eval/fg/accuracy": ev["accuracy"], "eval/fg/f1": ev["f1"]})
                    bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{ev['accuracy']:.2f}", f1=f"{ev['f1']:.2f}")
                log(step, metrics)
        bar.close()

        # 5. evaluate against the human labels, with the majority-class baseline ---------------
        p_err = eval_logits().softmax(-1)[:, 1]
        figures = classification_figures(p_err.ge(config.threshold).long(), y_eval, y_train)
        figures.update({"train_answers": len(train), "eval_answers": len(held_out), "train_segments": int(len(y_train)),
                        "trimmed_passages": sum(e["trimmed"] for e in examples),
                        "seconds": time.time() - t_start})
        run.set_status("running", figures=figures)

        # 6. save ------------------------------------------------------------------------------
        if config.save_model:
            meta = {"kind": "finegrained", "category": config.category, "level": spec["level"], "name": spec["name"],
                    "input": spec["input"], "format": "text", "separator": SEPARATOR, "max_length": config.max_length,
                    "positive_reward": config.positive_reward, "negative_reward": config.negative_reward,
                    "threshold": config.threshold, "normalisation": {"mean": 0.0, "std": 1.0}, "trim_passages": True,
                    "base_model": config.model_name_or_path, "backbone_frozen": config.freeze_backbone,
                    "training": {"dataset": "qa-feedback", "run": str(run.path), **figures}}
            save_reward_model(model, tokenizer, meta, folder, overwrite=config.overwrite)
            run.set_status("running", model_path=str(folder))
    return run


# ----------------------------------------------------------------------------- evaluation


def classification_figures(pred: torch.Tensor, labels: torch.Tensor, train_labels: torch.Tensor) -> dict:
    """Accuracy and F1 on the error class, with the majority-class baseline (majority taken on train)."""
    tp = ((pred == 1) & (labels == 1)).sum().item()
    fp = ((pred == 1) & (labels == 0)).sum().item()
    fn = ((pred == 0) & (labels == 1)).sum().item()
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    majority = int(train_labels.float().mean().item() >= 0.5)
    base_pred = torch.full_like(labels, majority)
    btp = ((base_pred == 1) & (labels == 1)).sum().item()
    return {
        "accuracy": (pred == labels).float().mean().item(),
        "f1": f1,
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
        "majority_class": majority,
        "majority_accuracy": (base_pred == labels).float().mean().item(),
        "majority_f1": 2 * btp / max(2 * btp + (base_pred == 1).sum().item() - btp + (labels == 1).sum().item() - btp, 1),
        "error_rate": labels.float().mean().item(),
        "n": int(labels.numel()),
    }


@entry_point
def main() -> None:
    import tyro

    config = tyro.cli(FineGrainedConfig)
    run = train_finegrained_rm(config)
    f = run.status()["figures"]
    print(f"{config.category} held-out: accuracy {f['accuracy']:.3f} (majority {f['majority_accuracy']:.3f}), "
          f"F1(error) {f['f1']:.3f} (majority {f['majority_f1']:.3f}) on {f['n']} segments; {f['seconds']:.0f} s; run {run.path}")
    if "model_path" in run.status():
        print(f"saved reward model: {run.status()['model_path']}")


if __name__ == "__main__":
    main()
