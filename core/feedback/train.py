"""Train reward models on a feedback project's labels: a holistic RM from the rankings, fine-grained RMs from the spans.

Paper: Ouyang et al. 2022 (InstructGPT), sec. 3.5, eq. 1: the reward model sees all
K-choose-2 pairs of a ranking as ONE batch element,

    loss(r) = -1 / C(K, 2) * sum_{y_w ranked above y_l} log sigmoid( r(x, y_w) - r(x, y_l) )

``ranking_loss_with_ties`` is that loss (``core.losses.ranking_loss``) for rankings with
ties: tied pairs contribute nothing and the mean is over the strictly ordered pairs;
without ties the two are equal (tests/test_feedback.py checks it).

Phases of ``train_feedback_reward_model``:
    1. labels    every (item, annotator) ranking; with ``use_ratings`` an annotator's 1-7
                 ratings of all K responses stand in for a ranking they did not give;
                 items split train / held-out (grouped by item: no item on both sides)
    2. model     scalar-head model (``core.models.load_reward_model``), backbone frozen
    3. features  the last-token hidden state of every (prompt, response), computed once
                 (``FEATURE_CACHE`` in a process, and ``feature_cache_dir`` between processes:
                 a retrain after more labels computes only the new responses)
    4. train     full-batch AdamW on the score head, ranking loss per (item, annotator)
    5. evaluate  each annotator's agreement with the model on held-out items (and on train)
    6. save      normalisation + the model folder via ``core.rewards.store`` (kind
                 "preference"), so the token explorer and the reward-weight lab list it

Deviations: InstructGPT fine-tunes a 6B RM; here a linear head on a frozen 135M backbone
(seconds on a CPU for a few hundred responses). The whole backbone is saved with the head
(``core.rewards.store`` stores full models).

How the app runs it: ``train_in_child_process`` starts ``python -m core.feedback.train ...
--result-file F`` and reads F, so the training's ``torch.manual_seed``, model and memory stay
out of the server (other sessions sample from the server's global generator).

``train_finegrained_from_spans`` writes the span labels in QA-Feedback format
(``core.feedback.export``) and runs ``core.trainers.finegrained.train_finegrained_rm`` on them.

What it leaves out: LoRA / full fine-tuning from the studio (use ``core.trainers.reward``
with the exported preferences.jsonl), ensembles, active learning.

    from core.feedback.train import FeedbackRMConfig, train_feedback_reward_model
    result = train_feedback_reward_model(FeedbackRMConfig(project="demo"), store)
    result["model_path"], result["figures"]["eval_agreement"]

    python -m core.feedback.train --project demo
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from core.feedback.agreement import reward_model_agreement
from core.feedback.export import write_qa_feedback
from core.cli import entry_point
from core.feedback.store import FeedbackError, FeedbackStore
from core.models import DEFAULT_MODEL, load_reward_model, load_tokenizer
from core.rewards.preference_rm import backbone_and_head, encode, format_pair, gather_last, hidden_states
from core.rewards import store as reward_store
from core.trainers.finegrained import FineGrainedConfig, train_finegrained_rm


@dataclass
class FeedbackRMConfig:
    """Fit a holistic reward model to a feedback project's rankings. Defaults take seconds on a CPU."""

    project: str = ""
    """feedback project name (or id)"""
    db: str = ""
    """feedback database file (default: core.feedback.store.default_db_path())"""
    model_name_or_path: str = DEFAULT_MODEL
    """backbone: an alias, a local folder or a Hugging Face id"""
    eval_fraction: float = 0.25
    """fraction of items held out (grouped by item) to measure agreement with the annotators"""
    use_ratings: bool = True
    """an annotator's ratings of all K responses count as a ranking when they did not rank the item"""
    max_length: int = 128
    """tokens per prompt + response; longer inputs are truncated from the left (the response end is kept)"""
    num_steps: int = 100
    """full-batch optimizer steps on the head"""
    learning_rate: float = 1e-3
    """AdamW learning rate of the head"""
    weight_decay: float = 1e-3
    """AdamW weight decay"""
    feature_batch_size: int = 8
    """texts per forward pass when computing features"""
    seed: int = 0
    """random seed (split, head initialisation)"""
    name: str = ""
    """saved model name (default 'feedback-<project>')"""
    save_model: bool = True
    """save the model in the reward-model store"""
    save_dir: str = ""
    """where to save it (default: reward_models_dir()/<name>)"""
    device: str = "cpu"
    """device for the features and the head"""
    feature_cache_dir: str = ""
    """folder keeping the backbone's features between processes (a file per backbone and max_length); '': this process only"""
    result_file: str = ""
    """write the result (model path, figures, meta, scores) here as JSON (how the app reads a training it ran in a child process)"""


# ----------------------------------------------------------------------------- loss


def ranking_loss_with_ties(rewards, ranks):
    """InstructGPT's K-wise ranking loss for rankings with ties.

    rewards: (G, K) scores; ranks: (G, K) integer ranks, 1 = best, equal = tie, 0 = absent.
    Returns losses (G,): the mean of -log sigmoid(r_w - r_l) over the pairs with
    rank_w < rank_l (0 for a group without such pairs).
    """
    present = ranks > 0  # (G, K)
    above = (ranks.unsqueeze(2) < ranks.unsqueeze(1)) & present.unsqueeze(2) & present.unsqueeze(1)  # (G, K, K): i above j
    diffs = rewards.unsqueeze(2) - rewards.unsqueeze(1)  # (G, K, K): r_i - r_j
    pair_losses = torch.where(above, -F.logsigmoid(diffs), torch.zeros_like(diffs))
    return pair_losses.sum(dim=(1, 2)) / above.sum(dim=(1, 2)).clamp(min=1)


# ----------------------------------------------------------------------------- labels


def ranking_groups(store: FeedbackStore, project_id: int, use_ratings: bool = True) -> list[dict]:
    """``{item_id, annotator, ranks}`` for every ranking, plus (use_ratings) rankings read off complete ratings
    (a higher score = a better rank; equal scores tie; skipped when all K scores are equal)."""
    labels = store.labels(project_id)
    groups = [{"item_id": r["item_id"], "annotator": r["annotator"], "ranks": r["ranks"], "from": "ranking"}
              for r in labels["rankings"]]
    if use_ratings:
        ranked = {(g["item_id"], g["annotator"]) for g in groups}
        k = store.project(project_id)["k"]
        scores: dict[tuple, dict] = {}
        for r in labels["ratings"]:
            scores.setdefault((r["item_id"], r["annotator"]), {})[r["response_idx"]] = r["score"]
        for (item_id, annotator), s in scores.items():
            if (item_id, annotator) in ranked or len(s) != k or len(set(s.values())) == 1:
                continue
            levels = sorted(set(s.values()), reverse=True)
            groups.append({"item_id": item_id, "annotator": annotator, "ranks": [levels.index(s[i]) + 1 for i in range(k)],
                           "from": "ratings"})
    return groups


FEATURE_CACHE: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
"""(backbone, max_length) -> {text: (H,) feature}: the frozen backbone's features, kept for the life of the
process, so retraining after a few more labels only computes the new responses (the app's trainings each run
in a fresh process and keep them in ``feature_cache_dir`` instead)."""


def response_features(model, tokenizer, texts: list[str], max_length: int, batch_size: int, device,
                      cache: dict | None = None) -> tuple[torch.Tensor, int]:
    """((N, H) fp32 last-token hidden states of a frozen scalar-head model's backbone, how many came from ``cache``).

    Texts are run shortest first, so a batch pads little; ``cache`` (text -> feature) is read and filled.
    """
    cache = {} if cache is None else cache
    todo = sorted({t for t in texts if t not in cache}, key=len)
    with torch.no_grad():
        for i in range(0, len(todo), batch_size):
            batch = todo[i : i + batch_size]
            enc = encode(tokenizer, batch, max_length)
            mask = enc["attention_mask"].to(device)
            h = gather_last(hidden_states(model, enc["input_ids"].to(device), mask), mask).float().cpu()  # (b, H)
            cache.update(zip(batch, h))
    reused = len(set(texts)) - len(todo)
    return (torch.stack([cache[t] for t in texts]) if texts else torch.zeros(0)), reused


def feature_cache_file(config) -> Path | None:
    """``feature_cache_dir/<backbone>-<max_length>.safetensors``, or None without a cache folder."""
    if not config.feature_cache_dir:
        return None
    return Path(config.feature_cache_dir) / f"{reward_store.safe_name(str(config.model_name_or_path))}-{config.max_length}.safetensors"


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_features(path: Path, texts: list[str], cache: dict) -> None:
    """Put the features of ``texts`` stored in ``path`` (keyed by the text's sha256) into ``cache``; a bad file is ignored."""
    if not path.is_file():
        return
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            stored = set(f.keys())
            for t in texts:
                if t not in cache and _text_key(t) in stored:
                    cache[t] = f.get_tensor(_text_key(t))
    except Exception:  # noqa: BLE001 - a cache: a truncated or foreign file is recomputed, never fatal
        return


def save_features(path: Path, cache: dict) -> None:
    """Write every feature of ``cache`` to ``path`` atomically (a temporary file, then a rename)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({_text_key(t): v.contiguous() for t, v in cache.items()}, str(tmp))
    os.replace(tmp, path)


def _split(records, eval_fraction, seed, key):
    """The project's one deterministic grouped split (``core.data.split``)."""
    from core.data import split

    return split(records, eval_fraction, seed=seed, key=key)


# ----------------------------------------------------------------------------- training


def train_feedback_reward_model(config: FeedbackRMConfig, store: FeedbackStore | None = None, on_log=None) -> dict:
    """Fit and save a holistic RM on a project's labels. Returns {model_path (None if not saved), figures, meta}.

    on_log(step, metrics) is called during training (the page draws it; may be None).
    """
    t_start = time.time()
    store = store or FeedbackStore(config.db or None)
    project = store.project(int(config.project) if str(config.project).isdigit() else config.project)
    items = {it["id"]: it for it in store.items(project["id"])}

    # 1. labels ----------------------------------------------------------------------------------
    groups = ranking_groups(store, project["id"], config.use_ratings)
    if not groups:
        raise FeedbackError(f"project {project['name']!r} has no rankings yet (nor complete ratings): label some items first")
    train, held_out = _split(groups, config.eval_fraction, seed=config.seed, key="item_id")
    if not train:
        raise FeedbackError(f"all {len(groups)} labelled items went to the held-out side; label more items or lower eval_fraction")

    # 2. model: frozen backbone, trainable score head -------------------------------------------------
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(config.model_name_or_path)
    model = load_reward_model(config.model_name_or_path, device=config.device, dtype=torch.float32)
    model.requires_grad_(False)
    _, head = backbone_and_head(model)
    head.requires_grad_(True)

    # 3. features of every response of every labelled item ---------------------------------------------
    used = sorted({g["item_id"] for g in groups})
    texts = [format_pair(tokenizer, items[i]["prompt"], r, "text", " ")[0] for i in used for r in items[i]["responses"]]
    t0 = time.time()
    cache = FEATURE_CACHE.setdefault((str(config.model_name_or_path), config.max_length), {})
    cache_file = feature_cache_file(config)
    if cache_file:
        load_features(cache_file, texts, cache)
    feats, reused = response_features(model, tokenizer, texts, config.max_length, config.feature_batch_size,
                                      config.device, cache)
    if cache_file and reused < len(set(texts)):
        save_features(cache_file, cache)
    k = project["k"]
    row = {item_id: n for n, item_id in enumerate(used)}
    feats = feats.view(len(used), k, -1)  # (items, K, H)
    features_s = time.time() - t0

    def batch(gs):
        idx = torch.tensor([row[g["item_id"]] for g in gs])
        return feats[idx].to(config.device), torch.tensor([g["ranks"] for g in gs], device=config.device)  # (G, K, H), (G, K)

    x_train, y_train = batch(train)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)

    # 4. train: full-batch steps on the head ------------------------------------------------------
    for step in range(1, config.num_steps + 1):
        rewards = head(x_train).squeeze(-1)  # (G, K)
        loss = ranking_loss_with_ties(rewards, y_train).mean()  # every (item, annotator) ranking counts once
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if on_log and (step % max(config.num_steps // 20, 1) == 0 or step == config.num_steps):
            on_log(step, {"loss": loss.item()})

    # 5. evaluate: agreement with the annotators, on held-out items and on training items -------------
    with torch.no_grad():
        all_scores = head(feats.to(config.device)).squeeze(-1).float().cpu()  # (items, K)
    scores = {item_id: all_scores[row[item_id]].tolist() for item_id in used}
    held = reward_model_agreement(held_out, scores)
    figures = {
        "train_rankings": len(train), "eval_rankings": len(held_out),
        "train_items": len({g["item_id"] for g in train}), "eval_items": len({g["item_id"] for g in held_out}),
        "eval_agreement": held.get("all", {}).get("agreement"),
        "eval_agreement_by_annotator": {a: v for a, v in held.items() if a != "all"},
        "train_agreement": reward_model_agreement(train, scores)["all"]["agreement"],
        "final_loss": loss.item(), "features_s": features_s, "features_reused": reused, "seconds": time.time() - t_start,
    }
    train_scores = torch.stack([all_scores[row[g["item_id"]]] for g in train]).flatten()
    name = config.name or reward_store.safe_name(f"feedback-{project['name']}")
    meta = {
        "kind": "preference", "category": None, "level": "sequence", "name": "holistic",
        "format": "text", "separator": " ", "max_length": config.max_length,
        "normalisation": {"mean": train_scores.mean().item(),
                          "std": max(train_scores.std().item(), 1e-6) if train_scores.numel() > 1 else 1.0},
        "base_model": config.model_name_or_path, "backbone_frozen": True, "lora": False,
        "training": {"dataset": f"feedback:{project['name']}", "feedback_db": str(store.path), "project_id": project["id"],
                     "loss": "ranking (InstructGPT eq. 1, ties allowed)", **figures},
    }

    # 6. save --------------------------------------------------------------------------------------
    path = None
    if config.save_model:
        # a default name already taken gets a time stamp; a chosen one or a save_dir is never replaced silently
        path = reward_store.destination(name, config.save_dir, default_name=not config.name)
        reward_store.save_reward_model(model.eval(), tokenizer, meta, path)
        figures["seconds"] = time.time() - t_start
    return {"model_path": str(path) if path else None, "figures": figures, "meta": meta, "scores": scores}


ROOT = Path(__file__).resolve().parents[2]


def config_flags(config: FeedbackRMConfig) -> list[str]:
    """The command-line flags that rebuild ``config`` in ``main`` (tyro's spelling: --a-b VALUE, --x / --no-x)."""
    flags = []
    for field, value in vars(config).items():
        flag = "--" + field.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + field.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    return flags


def run_module(*args: str) -> int:
    """``python -m ARGS`` with this interpreter, from the project folder; returns the child's pid.

    FeedbackError with the child's one-line message (``core.cli``), the last line of its
    traceback, or the signal that killed it, when it fails.
    """
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate()
    if proc.returncode != 0:
        lines = [x.strip() for x in err.splitlines() if x.strip()]
        raise FeedbackError(lines[-1].removeprefix("[rlhf-workbench] error: ") if lines else (
            f"the training process was killed by signal {-proc.returncode}" if proc.returncode < 0
            else f"the training process ended with exit status {proc.returncode}"))
    return proc.pid


def train_in_child_process(config: FeedbackRMConfig) -> dict:
    """``train_feedback_reward_model(config)`` in a fresh ``python -m core.feedback.train`` process; returns its result.

    How the app trains: the child's seeding (``torch.manual_seed``), its memory and its model
    never touch the server process. The result comes back through ``result_file`` (item ids
    as ints again, plus the child's ``pid``); features are shared between trainings through
    ``feature_cache_dir``. Failures raise FeedbackError (``run_module``).
    """
    with tempfile.TemporaryDirectory(prefix="feedback-train-") as tmp:
        result_file = Path(tmp) / "result.json"
        child = FeedbackRMConfig(**{**vars(config), "result_file": str(result_file)})
        run_module("core.feedback.train", *config_flags(child))
        result = json.loads(result_file.read_text(encoding="utf-8"))
    result["scores"] = {int(k): v for k, v in result["scores"].items()}
    return result


def train_finegrained_from_spans(store: FeedbackStore, project_id: int, category: str = "C1",
                                 model_name_or_path: str = DEFAULT_MODEL, folder=None, *, child_process: bool = False,
                                 **overrides):
    """A C1 or C2 fine-grained RM (``core.trainers.finegrained``) on the project's span labels; returns its run.

    folder: where to write the QA-Feedback export (default: a temporary folder). overrides go
    to ``FineGrainedConfig`` (e.g. num_epochs=50, save_dir=...). child_process: train in a
    fresh ``python -m core.trainers.launch RUN_FOLDER`` process (how the app trains; the run
    folder and the model folder are chosen here, so the child writes where this process looks).
    """

    if category not in ("C1", "C2"):
        raise FeedbackError(f"fine-grained models exist for C1 and C2 (C3 is learnt from rankings), got {category!r}")
    project = store.project(project_id)
    folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="feedback-qa-"))
    write_qa_feedback(store, project["id"], folder)
    from core.rewards.store import destination, safe_name

    name = overrides.pop("name", None) or destination(safe_name(f"feedback-{project['name']}-{category.lower()}"),
                                                      default_name=True).name  # a new model, never a silent replacement
    config = FineGrainedConfig(category=category, model_name_or_path=model_name_or_path, data=str(folder), limit=0, name=name,
                               progress=False, **overrides)
    if not child_process:
        return train_finegrained_rm(config)
    from core.runstore import Run

    config.save_dir = config.save_dir or str(reward_store.reward_models_dir() / name)
    run = Run.create("finegrained_rm", config, name=name)
    run_module("core.trainers.launch", str(run.path))
    return Run.open(run.path)


@entry_point
def main() -> None:
    import tyro

    config = tyro.cli(FeedbackRMConfig)
    result = train_feedback_reward_model(config)  # a FeedbackError, DataError, ...: one line (core.cli)
    if config.result_file:
        Path(config.result_file).write_text(json.dumps({**result, "pid": os.getpid()}), encoding="utf-8")
    f = result["figures"]
    ev = f["eval_agreement"]
    print(f"held-out agreement with the annotators: {'n/a' if ev is None else f'{ev:.3f}'} on {f['eval_rankings']} rankings "
          f"({f['train_rankings']} training rankings, {f['seconds']:.1f} s)")
    if result["model_path"]:
        print(f"saved reward model: {result['model_path']}")


if __name__ == "__main__":
    main()
