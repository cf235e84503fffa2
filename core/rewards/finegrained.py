"""Fine-grained reward models C1 (relevance) and C2 (factuality): training, inference, reward components.

Paper: Wu et al. 2023, "Fine-Grained Human Feedback Gives Better Rewards for Language
Model Training" (sec. 3.2, Appendix D; code allenai/FineGrainedRLHF). Each error
category has its own reward model, a token classifier that judges every segment at
the token where the segment ends:

    C1  irrelevance, repetition, incoherence   one judgement per SUB-SENTENCE
    C2  incorrect or unverifiable facts        one judgement per SENTENCE
    C3  incompleteness                         a preference RM (core.trainers.reward, dataset="qa_feedback")

and the reward of segment j of category k, placed on its last token (eq. 1), is

    r^k_j = +positive_reward   if the RM says segment j is clean   (P(error) < threshold)
            negative_reward    otherwise

(upstream ``SubSentenceVerbosityReward`` / ``FactualityReward``: argmax over the
classes, +1 / -1 by default; their PPO config then scales C1 by 0.3 and C2 by 0.5,
which here are the trainer's component weights).

Labels from the human spans of QA-Feedback (``core.data.load_qa_feedback_spans``):
a segment (``core.rewards.segments``) is erroneous (label 1) when it overlaps, by at
least one character, a human span of that category; otherwise it is clean (0).
RM input, as upstream: C1 reads ``question: Q answer: Y`` (no passages), C2 reads the
full prompt with the Wikipedia passages then `` answer: Y`` (facts are checked against them).

Deviations: upstream fine-tunes Longformer-base (bidirectional) with a ``</s>`` inserted
before each segment and predicts at those markers; we read a causal backbone
(SmolLM2-135M by default) at the segment's own last token, so a segment is judged from
the text up to its end only. Default training is a frozen backbone + a linear head
(logistic regression on cached hidden states) with class-balanced weights, minutes on
a CPU; ``freeze_backbone=False`` fine-tunes everything (or LoRA with use_lora) on a GPU.

What it leaves out: C3 (see above), upstream's 3-class C2 head (we use 2 classes:
error / no error), spaCy sentence splitting (pysbd, see ``segments``).

    python -m core.rewards.finegrained train --category C1
    python -m core.rewards.finegrained train --category C2 --limit 200
    rm = load_reward_component(cache_dir() / "reward_models" / "c1-relevance")   # FineGrainedReward
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

CATEGORIES = {
    "C1": {"level": "subsentence", "name": "c1_relevance", "input": "question"},
    "C2": {"level": "sentence", "name": "c2_factuality", "input": "prompt"},
}
SEPARATOR = " answer: "


# ----------------------------------------------------------------------------- labels


def segment_labels(response: str, spans: list[dict], category: str) -> list[tuple[tuple[int, int], int]]:
    """[((start, end), label)] for every segment of ``response`` at the category's level.

    spans: human error spans ``{start, end, category}`` (as from ``load_qa_feedback_spans``).
    label 1 when the segment shares at least one character with a span of ``category``.
    """
    from core.rewards.segments import segment_spans

    level = CATEGORIES[category]["level"]
    marked = [(s["start"], s["end"]) for s in spans if s["category"] == category]
    return [((a, b), int(any(s < b and a < e for s, e in marked))) for a, b in segment_spans(response, level)]


def rm_prefix(prompt: str, category: str) -> str:
    """What the category's RM reads before the answer: the question alone (C1) or the whole prompt (C2)."""
    if CATEGORIES[category]["input"] == "question":
        return prompt.split(" context: ")[0]  # "question: Q" from the QA-Feedback prompt
    return prompt


# ----------------------------------------------------------------------------- model helpers


def load_token_classifier(name_or_path: str, device=None):
    """A 2-class token classifier (0 clean, 1 error) on any backbone, fp32 on CPU / bf16 on CUDA."""
    from transformers import AutoModelForTokenClassification

    from core.devices import default_dtype, pick_device
    from core.models import resolve_model

    device = pick_device(device)
    model = AutoModelForTokenClassification.from_pretrained(
        resolve_model(name_or_path), num_labels=2, dtype=default_dtype(device), use_safetensors=True)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model.to(device).eval()


def segment_end_states(model, tokenizer, texts: list[str], starts: list[int], segments: list[list[tuple[int, int]]],
                       max_length: int, device) -> list[torch.Tensor]:
    """Hidden states (n_segments, H) at the RM token holding each segment's last character.

    texts[b]: the RM input; starts[b]: where the response starts in it; segments[b]:
    (start, end) spans into the response. One batched forward pass (keeps the graph
    when grad is enabled, for fine-tuning).
    """
    from core.rewards.preference_rm import encode, hidden_states

    enc = encode(tokenizer, texts, max_length)
    hidden = hidden_states(model, enc["input_ids"].to(device), enc["attention_mask"].to(device))  # (B, T, H)
    out = []
    for b, segs in enumerate(segments):
        spans = [tuple(o) for o in enc["offset_mapping"][b].tolist()]
        spans = [(s, e) if m else (0, 0) for (s, e), m in zip(spans, enc["attention_mask"][b].tolist())]
        first = int(enc["attention_mask"][b].nonzero()[0])
        idx = [_token_at(spans, starts[b] + e, first) for _, e in segs]
        out.append(hidden[b, idx])
    return out


def _token_at(spans, char_end: int, first: int) -> int:
    """The token holding character char_end - 1, or the first kept token when truncation cut that far."""
    from core.rewards.align import char_to_token_index

    try:
        return char_to_token_index(spans, char_end)
    except ValueError:
        return first


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


# ----------------------------------------------------------------------------- training


@dataclass
class FineGrainedConfig:
    """Train a C1 or C2 fine-grained reward model on QA-Feedback's human error spans."""

    category: str = "C1"
    """'C1' (irrelevance/repetition/incoherence, sub-sentences) or 'C2' (wrong/unverifiable facts, sentences)"""
    model: str = "smollm2-135m-instruct"
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
    epochs: int = 200
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
    """where to save (default: cache_dir()/reward_models/<name>)"""
    cpu: bool = False
    """force CPU"""
    progress: bool = True
    """show tqdm progress bars"""


def _examples(config: FineGrainedConfig):
    """(records, texts, starts, segments, labels) with one entry per answer."""
    from core.data import load_qa_feedback_spans
    from core.rewards.preference_rm import format_pair

    records = load_qa_feedback_spans(config.data or None)
    records = [r for r in records if r["response"].strip()]
    if config.limit:
        records = records[: config.limit]
    out = []
    for r in records:
        seg_labels = segment_labels(r["response"], r["spans"], config.category)
        if not seg_labels:
            continue
        text, start = format_pair(None, rm_prefix(r["prompt"], config.category), r["response"], "text", SEPARATOR)
        out.append({**r, "text": text, "start": start, "segments": [s for s, _ in seg_labels],
                    "labels": [y for _, y in seg_labels]})
    return out


def train_finegrained_rm(config: FineGrainedConfig, on_log=None):
    """Train a C1/C2 token-classification RM; returns its run (``status()["figures"]``, ``["model_path"]``)."""
    from tqdm.auto import tqdm

    from core.data import split
    from core.devices import pick_device
    from core.models import LoraSettings, apply_lora, load_tokenizer
    from core.runstore import Run
    from core.trainers.common import Logger, TrainingError, adamw, check_finite, run_guard, seed_everything

    if config.category not in CATEGORIES:
        raise TrainingError(f"category must be C1 or C2 (C3 is a preference RM: core.trainers.reward), got {config.category!r}")
    spec = CATEGORIES[config.category]
    name = config.name or {"C1": "c1-relevance", "C2": "c2-factuality"}[config.category]
    run = Run.create("finegrained_rm", config, name=name)
    with run_guard(run):
        seed_everything(config.seed)
        t_start = time.time()
        device = pick_device("cpu" if config.cpu else None)
        log = Logger(run, on_log)

        # 1. data: segments and their labels from the human spans -----------------------------
        examples = _examples(config)
        train, held_out = split(examples, config.eval_fraction, seed=config.seed, key="question_id")
        if not train or not held_out:
            raise TrainingError(f"{len(examples)} usable answers: too few to split; raise limit")
        y_train = torch.tensor([y for e in train for y in e["labels"]])
        y_eval = torch.tensor([y for e in held_out for y in e["labels"]])

        # 2. model ---------------------------------------------------------------------------
        tokenizer = load_tokenizer(config.model)
        model = load_token_classifier(config.model, device)
        from core.rewards.preference_rm import backbone_and_head

        if config.freeze_backbone:
            for p in model.parameters():
                p.requires_grad_(False)
            for p in backbone_and_head(model)[1].parameters():
                p.requires_grad_(True)
        elif config.use_lora:
            model = apply_lora(model, LoraSettings(), task_type="TOKEN_CLS")
        _, head = backbone_and_head(model)
        head_dtype = next(head.parameters()).dtype  # cached features are fp32; the head may be bf16 on GPU

        def features(exs, desc):
            feats = []
            with torch.no_grad():
                for i in tqdm(range(0, len(exs), config.feature_batch_size), desc=desc, disable=not config.progress, leave=False):
                    b = exs[i : i + config.feature_batch_size]
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
        total = steps_per_epoch * config.epochs
        g = torch.Generator().manual_seed(config.seed)
        bar = tqdm(total=total, desc=f"{config.category} reward model", disable=not config.progress)
        step = 0
        for epoch in range(config.epochs):
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
                    states = segment_end_states(model, tokenizer, [e["text"] for e in b], [e["start"] for e in b],
                                                [e["segments"] for e in b], config.max_length, device)
                    logits = head(torch.cat(states))
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
                        "seconds": time.time() - t_start})
        run.set_status("running", figures=figures)

        # 6. save ------------------------------------------------------------------------------
        if config.save_model:
            from core.rewards.store import reward_models_dir, save_reward_model

            meta = {"kind": "finegrained", "category": config.category, "level": spec["level"], "name": spec["name"],
                    "input": spec["input"], "format": "text", "separator": SEPARATOR, "max_length": config.max_length,
                    "positive_reward": config.positive_reward, "negative_reward": config.negative_reward,
                    "threshold": config.threshold, "normalisation": {"mean": 0.0, "std": 1.0},
                    "base_model": config.model, "backbone_frozen": config.freeze_backbone,
                    "training": {"dataset": "qa_feedback", "run": str(run.path), **figures}}
            folder = Path(config.save_dir) if config.save_dir else reward_models_dir() / name
            save_reward_model(model, tokenizer, meta, folder)
            run.set_status("running", model_path=str(folder))
    return run


# ----------------------------------------------------------------------------- reward component


class FineGrainedReward:
    """A trained C1/C2 RM as a ``RewardComponent``: +positive / negative reward per segment."""

    def __init__(self, model, tokenizer, meta: dict, name: str | None = None, batch_size: int = 4):
        self.model, self.tokenizer, self.meta = model.eval(), tokenizer, dict(meta)
        self.category = meta["category"]
        self.level = meta.get("level", CATEGORIES[self.category]["level"])
        self.name = name or meta.get("name", CATEGORIES[self.category]["name"])
        self.max_length = int(meta.get("max_length", 1024))
        self.batch_size = batch_size

    @classmethod
    def from_folder(cls, folder, device=None, **kwargs):
        from core.models import load_tokenizer
        from core.rewards.store import read_meta

        return cls(load_token_classifier(str(folder), device), load_tokenizer(str(folder)), read_meta(folder), **kwargs)

    @torch.no_grad()
    def error_probabilities(self, prompts: list[str], responses: list[str], segments) -> list[list[float]]:
        """P(error) for every segment of every response."""
        from core.rewards.preference_rm import backbone_and_head, format_pair

        _, head = backbone_and_head(self.model)
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(prompts), self.batch_size):
            items = [(format_pair(None, rm_prefix(p, self.category), r, "text", self.meta.get("separator", SEPARATOR)), segs)
                     for p, r, segs in zip(prompts[i : i + self.batch_size], responses[i : i + self.batch_size],
                                           segments[i : i + self.batch_size])]
            todo = [k for k, (_, segs) in enumerate(items) if segs]
            probs = {}
            if todo:
                states = segment_end_states(self.model, self.tokenizer, [items[k][0][0] for k in todo],
                                            [items[k][0][1] for k in todo], [items[k][1] for k in todo], self.max_length, device)
                for k, h in zip(todo, states):
                    probs[k] = head(h).float().softmax(-1)[:, 1].cpu().tolist()
            out += [probs.get(k, []) for k in range(len(items))]
        return out

    def score(self, prompts, responses, segments):
        pos, neg = float(self.meta.get("positive_reward", 1.0)), float(self.meta.get("negative_reward", -1.0))
        thr = float(self.meta.get("threshold", 0.5))
        return [[neg if p >= thr else pos for p in row] for row in self.error_probabilities(prompts, responses, segments)]


def main(argv: list[str] | None = None) -> None:
    import tyro

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "train":
        print("usage: python -m core.rewards.finegrained train --category C1|C2 [options]  (train --help for all)")
        raise SystemExit(2)
    config = tyro.cli(FineGrainedConfig, args=argv[1:])
    run = train_finegrained_rm(config)
    f = run.status()["figures"]
    print(f"{config.category} held-out: accuracy {f['accuracy']:.3f} (majority {f['majority_accuracy']:.3f}), "
          f"F1(error) {f['f1']:.3f} (majority {f['majority_f1']:.3f}) on {f['n']} segments; {f['seconds']:.0f} s; run {run.path}")
    if "model_path" in run.status():
        print(f"saved reward model: {run.status()['model_path']}")


if __name__ == "__main__":
    main()
