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
``run_implicit_rewards`` gives the preference page DPO's / SimPO's implicit rewards of a
trained run through the trainers' own path (``core.implicit_rewards``).

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

    root = os.environ.get(STORE_ENV) or None  # e.g. tests: a folder of their own instead of the user's cache
    try:
        return [(m["path"], m) for m in store.list_reward_models(root)]
    except Exception:  # noqa: BLE001 - an unreadable store is the same as an empty one here
        return []


def available_components() -> list[ComponentInfo]:
    comps = [
        ComponentInfo("toxicity", "toxicity (holistic, −p(toxic) on the last token)", "sequence", "toxicity"),
        ComponentInfo("toxicity_sentence", "toxicity change per sentence (fine-grained)", "sentence", "toxicity"),
        ComponentInfo("toxicity_token", "toxicity change per token (redistributed: the word that made it toxic)",
                      "token", "toxicity"),
    ]
    for folder, meta in _stored_models():
        from pathlib import Path

        base = Path(folder).name
        cat = meta.get("category")
        name = f"{meta.get('kind', 'rm')}_{cat}" if cat else base
        name = name.lower().replace("-", "_")
        if any(c.name == name for c in comps):
            name = base
        if meta.get("kind") == "preference":  # two scales: see SCALES_NOTE
            comps.append(ComponentInfo(name, f"{name} (holistic: (R(x,y) − μ)/σ on the last token)", "sequence", "store", folder))
            comps.append(ComponentInfo(f"{name}_redistributed", f"{name} redistributed (RED): r_t/σ, Σ_t = (R(x,y) − R(x))/σ",
                                       "token", "redistributed", folder))
        else:
            comps.append(ComponentInfo(name, f"{name} ({meta.get('kind', 'rm')}, {meta.get('level', '?')})", meta.get("level", "sequence"), "store", folder))
    return comps


SCALES_NOTE = (
    "A holistic reward model and its redistributed (RED) row are on different baselines: the holistic score is "
    "(R(x,y) − μ)/σ (μ, σ: the model's training-set statistics), the RED tokens sum to (R(x,y) − R(x))/σ, with R(x) "
    "the score of the prompt alone. Both are divided by the same σ; they differ by (R(x) − μ)/σ, a constant of the "
    "prompt, so they rank responses to one prompt identically but their sums are not equal."
)


def colour_scales(infos: list[ComponentInfo]) -> dict[str, float | None]:
    """name -> the component's stated colour scale (``core.rewards.scales``); None when it has none."""
    from core.rewards import store
    from core.rewards.scales import colour_scale

    out = {}
    for c in infos:
        meta = None
        if c.source in ("store", "redistributed"):
            try:
                meta = store.read_meta(c.ref)
            except Exception:  # noqa: BLE001 - unreadable metadata: no stated scale, scaled to the data
                out[c.name] = None
                continue
        out[c.name] = colour_scale(c.name, meta, redistributed=c.source == "redistributed")
    return out


def has_learned_models() -> bool:
    return bool(_stored_models())


@st.cache_resource(show_spinner=False, max_entries=16)
def build_component(name: str, source: str, ref: str = ""):
    """The RewardComponent behind a ComponentInfo (cached per server, never mutated)."""
    if source == "toxicity":
        from core.rewards.toxicity import reward_class

        return reward_class(name)(scorer=_profanity(), name=name)
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


def context_cuts(prompt: str, response: str, infos: list[ComponentInfo]) -> list[str]:
    """Names of the chosen components that cannot read all of this prompt + response (their ``context_cut``)."""
    cut = []
    for c in infos:
        comp = build_component(c.name, c.source, c.ref)
        check = getattr(comp, "context_cut", None)
        if check is not None and any(check([prompt], [response])):
            cut.append(c.name)
    return cut


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


def run_implicit_rewards(run_path: str, n: int, device: str = "cpu") -> list[dict]:
    """Implicit rewards of the first ``n`` held-out pairs of a DPO or SimPO run, as its trainer computes them.

    Policy: the run's latest checkpoint; reference (DPO): the run's base model. Returns
    points {length, reward, kind, which} for ``charts.length_scatter`` (length: response
    tokens, EOS included; [] when the run held out no pairs). See ``core.implicit_rewards``.
    """
    import torch

    from core.implicit_rewards import held_out_examples, implicit_rewards, run_config, trained_policy
    from core.models import load_causal_lm, load_tokenizer
    from core.runstore import Run

    run = Run.open(run_path)
    config = run_config(run)
    tokenizer = load_tokenizer(config.model_name_or_path)
    examples = held_out_examples(config, tokenizer)[:n]
    if not examples:  # eval_size=0 (e.g. a 1-pair upload): no held-out pair to score
        return []
    policy = trained_policy(run, device)
    reference = None  # LoRA: the policy with its adapters off; SimPO: none
    if run.kind == "dpo" and not config.lora:
        reference = load_causal_lm(config.model_name_or_path, device=device, dtype=torch.float32)
    chosen, rejected = implicit_rewards(config, examples, policy, tokenizer.pad_token_id, reference)
    return _points(examples, chosen, rejected, REWARD_LABELS[run.kind])


def untrained_simpo_rewards(model: str, records: list[dict], beta: float, n: int) -> list[dict]:
    """SimPO's implicit reward (β/|y|) log π(y|x) of the sidebar's (untrained) model on ``n`` pairs of ``records``.

    Reference-free, so it is defined before any training; tokenised as the SimPO trainer does.
    """
    from core.implicit_rewards import implicit_rewards
    from core.trainers.batching import tokenize_preferences
    from core.trainers.simpo import SimPOConfig

    config = SimPOConfig(model_name_or_path=model, beta=float(beta))
    tokenizer = state.get_tokenizer(model)
    examples = tokenize_preferences(tokenizer, records[:n], config.max_length, config.max_prompt_length)
    policy = state.get_policy(model, state.current_device())  # frozen, shared: pair_logps only reads it
    chosen, rejected = implicit_rewards(config, examples, policy, tokenizer.pad_token_id)
    return _points(examples, chosen, rejected, REWARD_LABELS["simpo"])


REWARD_LABELS = {"dpo": "DPO: β·(log π − log π_ref)", "simpo": "SimPO: β·mean log π"}


def _points(examples, chosen, rejected, kind: str) -> list[dict]:
    points = []
    for i, e in enumerate(examples):
        for which, ids, reward in (("chosen", e.chosen_ids, chosen[i]), ("rejected", e.rejected_ids, rejected[i])):
            points.append({"length": len(ids), "reward": float(reward), "kind": kind, "which": f"pair {i} · {which}"})
    return points
