"""Checkpoint helpers: optimizer state and RNG state as safetensors + JSON (no pickles).

``optimizer_to_tensors`` flattens ``optimizer.state_dict()`` into a dict of tensors
(``state.<param>.<key>``) plus JSON metadata (param groups, scalar state);
``load_optimizer_tensors`` reverses it. ``rng_state``/``set_rng_state`` capture
Python, NumPy and torch generators so a resumed run draws the same samples as an
uninterrupted one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file


def optimizer_to_tensors(optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{key}"] = value
    meta = {"param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, meta


def load_optimizer_tensors(optimizer, folder: Path) -> None:
    tensors = load_file(str(Path(folder) / "optimizer.safetensors"))
    meta = json.loads((Path(folder) / "optimizer.json").read_text())
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def trainable_state_dict(model) -> dict:
    """The parameters that training changes (all of them, or only the LoRA adapter and heads)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state_dict(model, folder: Path) -> None:
    tensors = load_file(str(Path(folder) / "model.safetensors"))
    params = dict(model.named_parameters())
    unknown = [k for k in tensors if k not in params]
    if unknown:
        raise ValueError(f"checkpoint {folder} holds parameters this model lacks: {unknown[:3]} (a different model or LoRA setting?)")
    with torch.no_grad():
        for k, v in tensors.items():
            params[k].copy_(v.to(params[k].device, params[k].dtype))
