"""Per-user choices and shared (cached) resources of the workbench app.

What it is: the one place that knows
- which model and device the user picked in the sidebar (``st.session_state``,
  keys prefixed ``frame_``; every page prefixes its own keys with its name, see ``key``);
- which model is the default (``RLHF_WORKBENCH_MODEL``, else SmolLM2-135M-Instruct;
  tests set it to ``tiny-random-llama``);
- the cached, read-only models (``st.cache_resource``). A cached model is shared by
  every session and is NEVER trained in place: trainers load their own copy.

What it leaves out: training (``workbench.jobs``), drawing (``workbench.charts``).
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from core.models import DEFAULT_MODEL, TINY_MODEL

MODEL_ENV = "RLHF_WORKBENCH_MODEL"
OTHER = "other (type a path or hub id)"


def key(page: str, name: str) -> str:
    """Session-state key of widget/value ``name`` on ``page`` (page-prefixed, so pages never collide)."""
    return f"{page}_{name}"


def default_model() -> str:
    return os.environ.get(MODEL_ENV, "").strip() or DEFAULT_MODEL


def model_choices() -> list[str]:
    """The default models, then finished runs' exported policies (their folders), then OTHER."""
    choices = [DEFAULT_MODEL, TINY_MODEL]
    if default_model() not in choices:
        choices.insert(0, default_model())
    return choices + list(trained_models()) + [OTHER]


def model_label(choice: str) -> str:
    """What the model selector shows for ``choice``: "run name · kind · time" for an exported run."""
    return trained_models().get(choice, choice)


def trained_models() -> dict[str, str]:
    """folder -> label of the exported policies of finished runs in the run store (core.export)."""
    from core.paths import runs_dir

    return _trained_models(str(runs_dir()))


@st.cache_data(ttl=5, show_spinner=False)
def _trained_models(root: str) -> dict[str, str]:
    from core.export import exported_models

    return dict(exported_models(Path(root)))


def current_model() -> str:
    """The model chosen in the sidebar (the default before the sidebar ran)."""
    return st.session_state.get("frame_model_name") or default_model()


def current_device() -> str:
    return st.session_state.get("frame_device") or "cpu"


def available_devices() -> list[str]:
    import torch

    return (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]


# ----------------------------------------------------------------------------- cached resources (read-only)


@st.cache_resource(show_spinner=False, max_entries=4)
def get_tokenizer(model: str):
    from core.models import load_tokenizer

    return load_tokenizer(model, padding_side="left")


@st.cache_resource(show_spinner=False, max_entries=2)
def get_policy(model: str, device: str = "cpu"):
    """A frozen, eval-mode policy for sampling and scoring. Never train it: it is shared by every session."""
    from core.models import load_causal_lm

    policy = load_causal_lm(model, device=device)
    policy.requires_grad_(False)
    return policy


@st.cache_resource(show_spinner=False, max_entries=8)
def model_context_length(model: str) -> int:
    """How many tokens the policy can attend to (prompt + response), read from its config (no weights loaded)."""
    from transformers import AutoConfig

    from core.models import adapter_base, resolve_model

    path = resolve_model(model)
    config = AutoConfig.from_pretrained(adapter_base(path) or path)  # an adapter folder: its base's config
    return int(getattr(config, "max_position_embeddings", 2048) or 2048)


def check_model(model: str) -> str | None:
    """None if ``model`` loads, else the ModelLoadError message (what was tried, how to fix it)."""
    from core.models import ModelLoadError

    try:
        get_tokenizer(model)
    except ModelLoadError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - any loading failure becomes a message, never a traceback
        return f"Could not load '{model}': {exc.__class__.__name__}: {exc}"
    return None
