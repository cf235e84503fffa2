"""Saving, finding and loading trained reward models: ordinary Hugging Face folders plus one metadata file.

What it is: a trained reward model lives in ``cache_dir()/"reward_models"/<name>/`` as

    config.json, model.safetensors           save_pretrained: loads with from_pretrained
    tokenizer.json, tokenizer_config.json    the reward model's own tokenizer
    workbench_reward.json                    what the workbench needs to use it:
        kind           "preference" | "finegrained" | "toxicity"
        category       None | "C1" | "C2" | "C3"
        level          "sequence" | "sentence" | "subsentence" | "token"
        name           component name in TokenRewards (e.g. "holistic", "c1_relevance")
        format, separator, max_length    how (prompt, response) becomes text (preference_rm.format_pair)
        normalisation  {"mean", "std"} of the raw scores on the training set; the
                       component returns (score - mean) / std
        training       data, sizes, held-out figures, config, seconds
        (finegrained)  positive_reward, negative_reward, threshold

Frozen backbone + trained head: we still save the FULL model (backbone + head),
~540 MB for SmolLM2-135M in fp32. Choice: one format that any tool opens with
``from_pretrained`` (the PPO trainer, the app, a notebook), at the cost of disk; a
LoRA model is merged before saving, for the same reason.

Writes are atomic: everything goes to a hidden temporary folder beside the target,
which is renamed over it only once complete; on any exception the temporary folder
is deleted and an existing model at the target is left untouched.

Writes are safe: a model name is one plain folder name (letters, digits, ``_ . -``; no
path separator, no ``..``), so it cannot leave the store; a folder that holds anything
but a saved reward model (no ``workbench_reward.json``) is never replaced; an existing
model is replaced only with ``overwrite=True`` (``--overwrite``); and a trainer's default
name gets a time stamp when taken (``destination``), so retraining never replaces a model
silently.

Shipped models: the small heads in ``core/reward_heads/`` (``core.rewards.heads``; metadata
with ``backend: "head"`` and ``shipped: true``) are listed after the user's own models, so a
fresh install offers them with no training step; loading one checks its encoder's hash and
refuses a mismatch with one line naming the rebuild command.

What it leaves out: toxicity scorers (``core.rewards.toxicity`` owns their format;
this module lists them but does not load them), uploading to the Hub.

    from core.rewards.store import save_reward_model, load_reward_component, list_reward_models
    save_reward_model(model, tokenizer, {"kind": "preference", "level": "sequence", ...}, folder)
    rm = load_reward_component(folder)        # PreferenceReward / FineGrainedReward
    [m["path"] for m in list_reward_models()]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from core.models import load_reward_model, load_tokenizer
from core.paths import cache_dir
from core.runstore import _jsonable

META_FILE = "workbench_reward.json"
KINDS = ("preference", "finegrained", "toxicity")
CATEGORIES = (None, "C1", "C2", "C3")
LEVELS = ("sequence", "sentence", "subsentence", "token")


class RewardModelError(RuntimeError):
    """A reward model folder is missing, incomplete or of an unknown kind; the message names the folder."""


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_name(name: str) -> str:
    """A reward model name as one plain folder name (RewardModelError otherwise): it cannot leave the store."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise RewardModelError(f"reward model name {name!r} must be 1-100 letters, digits, '_', '.' or '-', "
                               "start with a letter or digit, and contain no path separator or '..'")
    return name


def safe_name(text: str) -> str:
    """``text`` made into a valid model name (``check_name``): other characters become '-', cut to 100."""
    name = re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9_.-]+|\.{2,}", "-", str(text))).strip(".-_")[:100].rstrip(".-_")
    return name or "model"


def check_destination(folder: str | Path, overwrite: bool = False) -> Path:
    """``folder`` if a model may be saved there: absent, empty, or (with overwrite) a saved reward model."""
    folder = Path(folder)
    if not folder.exists():
        return folder
    if not folder.is_dir():
        raise RewardModelError(f"{folder} is a file, not a reward model folder; choose another --save-dir")
    if not any(folder.iterdir()):
        return folder
    if not (folder / META_FILE).is_file():
        raise RewardModelError(f"{folder} exists and is not a saved reward model (no {META_FILE}); it is never "
                               "replaced: choose another --save-dir or --name")
    if not overwrite:
        raise RewardModelError(f"a reward model already exists at {folder}; pass --overwrite to replace it, "
                               "or choose another --name")
    return folder


def destination(name: str, save_dir: str = "", overwrite: bool = False, default_name: bool = False) -> Path:
    """Where a trainer saves its model, checked before training: ``save_dir``, else the store folder ``name``.

    default_name: the name was not chosen by the user; if that model exists, the new one
    gets ``name-YYYYmmdd-HHMMSS`` instead of replacing it.
    """
    check_name(name)
    if save_dir:
        return check_destination(Path(save_dir).expanduser(), overwrite)
    folder = reward_models_dir() / name
    if default_name and not overwrite:
        stamped, n = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}", 1
        while folder.exists():
            folder = reward_models_dir() / (stamped if n == 1 else f"{stamped}-{n}")
            n += 1
    return check_destination(folder, overwrite)


def reward_models_dir() -> Path:
    """Default root of saved reward models: ``cache_dir()/"reward_models"``."""
    return cache_dir() / "reward_models"


def _check_meta(meta: dict) -> dict:
    meta = dict(meta)
    if meta.get("kind") not in KINDS:
        raise ValueError(f"meta['kind'] must be one of {KINDS}, got {meta.get('kind')!r}")
    if meta.get("category") not in CATEGORIES:
        raise ValueError(f"meta['category'] must be one of {CATEGORIES}, got {meta.get('category')!r}")
    if meta.get("level") not in LEVELS:
        raise ValueError(f"meta['level'] must be one of {LEVELS}, got {meta.get('level')!r}")
    norm = meta.setdefault("normalisation", {"mean": 0.0, "std": 1.0})
    if not (isinstance(norm, dict) and float(norm.get("std", 1.0)) > 0):
        raise ValueError(f"meta['normalisation'] must be {{'mean', 'std' > 0}}, got {norm!r}")
    meta.setdefault("format", "text")
    meta.setdefault("created", time.time())
    return meta


def save_reward_model(model, tokenizer, meta: dict[str, Any], folder: str | Path, overwrite: bool = False) -> Path:
    """Save ``model`` (full weights, safetensors), ``tokenizer`` and ``meta`` to ``folder`` atomically.

    A peft (LoRA) model is merged into its base first (this modifies ``model``).
    Returns the folder. On failure nothing is left at a new folder, and an existing
    one keeps its previous contents. An existing saved model is replaced only with
    overwrite; any other non-empty folder never (RewardModelError, nothing deleted).
    """
    meta = _check_meta(meta)
    folder = check_destination(folder, overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    old = folder.parent / f".{folder.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
            model = model.merge_and_unload()
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / META_FILE).write_text(json.dumps(_jsonable(meta), indent=2))
        if folder.exists():
            os.replace(folder, old)
        try:
            os.replace(tmp, folder)
        except BaseException:
            if old.exists():
                os.replace(old, folder)  # put the previous model back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return folder


def read_meta(folder: str | Path) -> dict:
    """The ``workbench_reward.json`` of a saved reward model (RewardModelError if absent or unreadable)."""
    path = Path(folder) / META_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RewardModelError(f"{folder} is not a saved reward model (no {META_FILE})") from None
    except ValueError as exc:
        raise RewardModelError(f"{path} is not valid JSON ({exc})") from None


def shipped_models_dir() -> Path:
    """The reward heads that ship in the repository (``core/reward_heads``)."""
    return Path(__file__).resolve().parents[1] / "reward_heads"


def _scan(root: Path) -> list[dict]:
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if not p.is_dir() or p.name.startswith("."):
            continue
        try:
            meta = read_meta(p)
        except RewardModelError:
            continue
        out.append({**meta, "path": str(p)})
    return out


def list_reward_models(root: str | Path | None = None, include_shipped: bool | None = None,
                       shipped_root: str | Path | None = None) -> list[dict]:
    """Saved reward models under ``root`` (default ``reward_models_dir()``), newest first, then the shipped ones.

    Each entry is its metadata plus ``path``. Temporary folders of a save in progress
    and folders without readable metadata are skipped. include_shipped (default: when
    root is the default) adds the models under ``shipped_root`` (default
    ``shipped_models_dir()``), by name, each with ``shipped: True``.
    """
    user = _scan(Path(root) if root is not None else reward_models_dir())
    out = sorted(user, key=lambda m: m.get("created", 0), reverse=True)
    if include_shipped if include_shipped is not None else root is None:
        shipped = _scan(Path(shipped_root) if shipped_root is not None else shipped_models_dir())
        out += sorted(({**m, "shipped": True} for m in shipped), key=lambda m: Path(m["path"]).name)
    return out


def load_reward_component(folder: str | Path, device=None, redistribute: bool = False, **kwargs):
    """A ``RewardComponent`` for a saved reward model.

    kind "preference" -> ``PreferenceReward`` (sequence level), or with
    redistribute=True a ``RedistributedReward`` (token level, RED);
    kind "finegrained" -> ``FineGrainedReward`` (C1 sub-sentence / C2 sentence).
    kwargs go to the component (e.g. name=, batch_size=).
    """
    folder = Path(folder)
    meta = read_meta(folder)
    kind = meta.get("kind")
    if kind not in ("preference", "finegrained"):
        raise RewardModelError(
            f"{folder}: reward models of kind {kind!r} are not loaded here "
            f"(toxicity scorers are loaded by core.rewards.toxicity; known kinds: preference, finegrained)"
        )
    if redistribute and kind != "preference":
        raise RewardModelError(f"{folder}: redistribution applies to holistic (preference) models, not {kind}")
    if meta.get("backend") == "head":  # a shipped head on frozen MiniLM features (core.rewards.heads)
        from core.rewards.heads import HeadBackboneError, load_head_component

        try:
            return load_head_component(folder, meta, redistribute=redistribute, name=kwargs.get("name"))
        except HeadBackboneError as exc:
            raise RewardModelError(str(exc)) from None
    # imported here, not at the top: listing and reading saved models stays free of torch
    from core.rewards.finegrained import FineGrainedReward, load_token_classifier
    from core.rewards.preference_rm import PreferenceReward
    from core.rewards.redistribution import RedistributedReward

    tokenizer = load_tokenizer(str(folder))
    if kind == "finegrained":
        return FineGrainedReward(load_token_classifier(str(folder), device), tokenizer, meta, **kwargs)
    component = RedistributedReward if redistribute else PreferenceReward
    return component(load_reward_model(str(folder), device=device), tokenizer, meta, **kwargs)
