"""Reward components the app can offer, and scoring one (prompt, response) into ``TokenRewards``.

What it is: the explorer's bridge to ``core.rewards``. ``available_components()`` lists
what can score text right now: the toxicity rewards (profanity-check; holistic and
sentence-level "toxicity change", Wu et al. 2023 sec. 3) always, the learned reward
models saved in the reward-model store (``core.rewards.store``) when some were trained,
and a redistributed (token-level) view of a holistic RM when that module exists.
Components are built once per server (``st.cache_resource``) and only read.

``score_texts`` runs ``core.rewards.tensor.compute_token_rewards`` ONCE for a
(model, prompt, response, components) key and keeps the result in
``st.session_state``; weight sliders then only call ``TokenRewards.combined``.

What it leaves out: training reward models (``python -m core.trainers.reward``).
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from workbench import state

STORE_ENV = "RLHF_WORKBENCH_REWARD_MODELS"  # optional: the folder of saved reward models to offer
SCORE_CALLS = "explorer_score_calls"  # session counter: how often a model scored text (tests read it)
TRAIN_RM_HINT = (
    "No learned reward model found. Train one with: `python -m core.trainers.reward --help` "
    "(e.g. a holistic RM on HH-RLHF); it is saved to the reward-model store and appears here."
)


@dataclass
class ComponentInfo:
    name: str
    label: str
    level: str
    source: str  # "toxicity" | "store" | "redistributed"
    ref: str = ""  # folder of a stored reward model


def _stored_models() -> list[tuple[str, dict]]:
    """(folder, metadata) of every saved reward model; [] when the store is empty or unreadable."""
    import os

    from core.rewards import store

    out = []
    root = os.environ.get(STORE_ENV) or None  # e.g. tests: a folder of their own instead of the user's cache
    try:
        entries = store.list_reward_models(root)
    except Exception:  # noqa: BLE001 - an unreadable store is the same as an empty one here
        return []
    for e in entries or []:
        if isinstance(e, (tuple, list)) and len(e) == 2:
            folder, meta = e
        elif isinstance(e, dict):
            folder, meta = e.get("folder") or e.get("path"), e
        else:
            folder, meta = e, getattr(e, "meta", {}) or {}
        out.append((str(folder), dict(meta) if isinstance(meta, dict) else {}))
    return out


def available_components() -> list[ComponentInfo]:
    comps = [
        ComponentInfo("toxicity", "toxicity (holistic, −p(toxic) on the last token)", "sequence", "toxicity"),
        ComponentInfo("toxicity_sentence", "toxicity change per sentence (fine-grained)", "sentence", "toxicity"),
    ]
    for folder, meta in _stored_models():
        from pathlib import Path

        base = Path(folder).name
        cat = meta.get("category")
        name = f"{meta.get('kind', 'rm')}_{cat}" if cat else base
        name = name.lower().replace("-", "_")
        if any(c.name == name for c in comps):
            name = base
        comps.append(ComponentInfo(name, f"{name} ({meta.get('kind', 'rm')}, {meta.get('level', '?')})", meta.get("level", "sequence"), "store", folder))
        if meta.get("kind") == "preference":
            comps.append(ComponentInfo(f"{name}_redistributed", f"{name} redistributed over tokens (RED)", "token", "redistributed", folder))
    return comps


def has_learned_models() -> bool:
    return bool(_stored_models())


@st.cache_resource(show_spinner=False, max_entries=16)
def build_component(name: str, source: str, ref: str = ""):
    """The RewardComponent behind a ComponentInfo (cached per server, never mutated)."""
    if source == "toxicity":
        from core.rewards.toxicity import HolisticToxicityReward, SentenceToxicityReward

        cls = HolisticToxicityReward if name == "toxicity" else SentenceToxicityReward
        return cls(scorer=_profanity(), name=name)
    from core.rewards import store

    if source == "store":
        comp = store.load_reward_component(ref)
        comp.name = name
        return comp
    if source == "redistributed":
        comp = store.load_reward_component(ref, redistribute=True)
        comp.name = name
        return comp
    raise ValueError(f"unknown component source {source!r}")


@st.cache_resource(show_spinner=False)
def _profanity():
    from core.rewards.toxicity import ProfanityToxicity

    return ProfanityToxicity()


def response_ids(model: str, response: str) -> list[int]:
    tok = state.get_tokenizer(model)
    return tok(response, add_special_tokens=False)["input_ids"]


def score_texts(model: str, prompt: str, response: str, infos: list[ComponentInfo]):
    """TokenRewards of one pair for the chosen components, computed once per key (session cache)."""
    from core.rewards.tensor import compute_token_rewards

    cache = st.session_state.setdefault("explorer_token_rewards", {})
    key = (model, prompt, response, tuple((c.name, c.source, c.ref) for c in infos))
    if key not in cache:
        tok = state.get_tokenizer(model)
        comps = {c.name: build_component(c.name, c.source, c.ref) for c in infos}
        ids = response_ids(model, response)
        cache.clear()  # one pair at a time: keeps the session small
        cache[key] = compute_token_rewards([prompt], [ids], tok, comps)
        st.session_state[SCORE_CALLS] = st.session_state.get(SCORE_CALLS, 0) + 1
    return cache[key]


def token_texts(tr, b: int = 0) -> list[str]:
    text = tr.texts[b]
    return [text[s:e] for s, e in tr.token_spans[b]]


# ----------------------------------------------------------------------------- implicit rewards (preference page)


def as_text(x) -> str:
    """A TRL field as text: a string as is, chat messages joined by their contents."""
    if isinstance(x, str):
        return x
    return "\n".join(str(m.get("content", "")) for m in x)


def implicit_rewards(model: str, records: list[dict], beta: float, max_tokens: int = 384, on_progress=None) -> list[dict]:
    """DPO-style summed and SimPO-style averaged implicit rewards of each chosen/rejected response.

    For a response y of |y| tokens under the CURRENT policy π (the sidebar's model):
      summed   β · Σ_t log π(y_t | x, y_<t)          (DPO's implicit reward before subtracting log π_ref)
      averaged β · (1/|y|) Σ_t log π(y_t | x, y_<t)  (SimPO eq. 4, without the margin γ)
    Uses ``core.logprobs`` for the token log-probs; one forward pass per response.
    Returns points {length, reward, kind, which}.
    """
    import torch

    from core.logprobs import completion_logprobs, sequence_logprobs

    tok = state.get_tokenizer(model)
    policy = state.get_policy(model, state.current_device())
    points = []
    for i, rec in enumerate(records):
        prompt_ids = tok(as_text(rec["prompt"]), add_special_tokens=False)["input_ids"]
        for which in ("chosen", "rejected"):
            resp_ids = tok(as_text(rec[which]), add_special_tokens=False)["input_ids"][:max_tokens]
            if not resp_ids:
                continue
            keep_prompt = max(1, max_tokens - len(resp_ids))
            ids = torch.tensor([prompt_ids[-keep_prompt:] + resp_ids], device=policy.device)  # (1, T)
            mask = torch.zeros_like(ids)
            mask[:, -len(resp_ids):] = 1  # completion_mask (1, T)
            with torch.inference_mode():
                logits = policy(input_ids=ids, attention_mask=torch.ones_like(ids)).logits  # (1, T, V)
            per_token_logps = completion_logprobs(logits, ids, mask)  # (1, T)
            summed = float(sequence_logprobs(per_token_logps, mask)[0])
            averaged = float(sequence_logprobs(per_token_logps, mask, average=True)[0])
            label = f"pair {i} · {which}"
            points.append({"length": len(resp_ids), "reward": beta * summed, "kind": "DPO-style: β·Σ log π", "which": label})
            points.append({"length": len(resp_ids), "reward": beta * averaged, "kind": "SimPO-style: β·mean log π", "which": label})
        if on_progress is not None:
            on_progress((i + 1) / len(records))
    return points
