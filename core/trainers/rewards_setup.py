"""Build the reward components a trainer config names, and their weights.

What it is: the translation from two flat config strings to the
``core.rewards.tensor.RewardComponent`` objects PPO scores with, so that the CLI,
the app and notebooks name rewards the same way:

    rewards = "toxicity_sentence,holistic=~/.cache/rlhf-workbench/reward_models/hh,my_mod:polite"
    weights = "toxicity_sentence=1.0,holistic=0.5"      # unnamed components weigh 1.0

Each comma-separated entry of ``rewards`` is one of
- ``toxicity``           -r = tox(response) on the last token (holistic, Wu et al. 2023 sec. 3);
- ``toxicity_sentence``  sentence-level toxicity change (fine-grained, Wu et al. 2023 sec. 3);
  both score with profanity-check (``ProfanityToxicity``); ``toxicity_minilm`` and
  ``toxicity_sentence_minilm`` use the MiniLM head instead (train it first);
- ``NAME=FOLDER``        a trained reward model saved by ``core.rewards.store`` (holistic
  preference RM, fine-grained C1/C2 RM, C3 RM: its metadata says which), under NAME;
- ``NAME=redistributed:FOLDER``  a holistic RM's score redistributed over tokens (RED);
- ``module:function``    a Python ``fn(prompt, response) -> float``, sequence level,
  named after the function (``FunctionReward``).
Python objects (e.g. a lambda) are passed to ``train_ppo(..., extra_rewards=...)``.

What it leaves out: scoring itself (``core.rewards.tensor.compute_token_rewards``).
"""

from __future__ import annotations

import importlib
from pathlib import Path

TOXICITY_BUILTINS = ("toxicity", "toxicity_sentence", "toxicity_minilm", "toxicity_sentence_minilm")


class RewardSetupError(ValueError):
    """A reward or weight string that cannot be understood; the message says what is accepted."""


def load_function(spec: str):
    """``"package.module:function"`` -> the function (imported by name, never exec'd)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise RewardSetupError(f"reward function {spec!r} must look like 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise RewardSetupError(f"cannot import reward function {spec!r}: {exc}") from None
    if not callable(fn):
        raise RewardSetupError(f"{spec!r} is not callable")
    return fn


def _toxicity(name: str):
    from core.rewards.toxicity import HolisticToxicityReward, MiniLMToxicity, SentenceToxicityReward

    scorer = MiniLMToxicity() if name.endswith("_minilm") else None
    cls = SentenceToxicityReward if name.startswith("toxicity_sentence") else HolisticToxicityReward
    return cls(scorer=scorer, name=name)


def _reward_model(name: str, folder: str, redistributed: bool):
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise RewardSetupError(f"reward model folder for {name!r} not found: {path} (train one with python -m core.trainers.reward)")
    from core.rewards.store import load_reward_component

    component = load_reward_component(str(path), redistribute=redistributed)
    component.name = name
    return component


def build_reward_components(rewards: str, extra: dict | None = None) -> dict:
    """Name -> RewardComponent for every entry of the comma list ``rewards`` plus ``extra`` (objects)."""
    from core.rewards.tensor import FunctionReward

    components: dict = {}
    for entry in (e.strip() for e in (rewards or "").split(",")):
        if not entry:
            continue
        if entry in TOXICITY_BUILTINS:
            name, component = entry, _toxicity(entry)
        elif "=" in entry:
            name, _, target = (s.strip() for s in entry.partition("="))
            redistributed = target.startswith("redistributed:")
            component = _reward_model(name, target.removeprefix("redistributed:"), redistributed)
        elif ":" in entry:
            fn = load_function(entry)
            name = fn.__name__
            component = FunctionReward(fn, name=name)
        else:
            raise RewardSetupError(
                f"unknown reward {entry!r}: use one of {', '.join(TOXICITY_BUILTINS)}, NAME=FOLDER, "
                "NAME=redistributed:FOLDER or module:function")
        if name in components:
            raise RewardSetupError(f"reward name {name!r} appears twice")
        components[name] = component
    for name, component in (extra or {}).items():
        if name in components:
            raise RewardSetupError(f"reward name {name!r} appears twice")
        components[name] = component
    if not components:
        raise RewardSetupError("no reward component: set rewards, e.g. rewards='toxicity_sentence'")
    return components


def parse_weights(weights: str, names) -> dict[str, float]:
    """``"a=1.0,b=0.5"`` -> {name: w} over ``names``; a component left out weighs 1.0."""
    out = {name: 1.0 for name in names}
    for entry in (e.strip() for e in (weights or "").split(",")):
        if not entry:
            continue
        name, sep, value = (s.strip() for s in entry.partition("="))
        if not sep:
            raise RewardSetupError(f"weight {entry!r} must look like name=1.0")
        if name not in out:
            raise RewardSetupError(f"weight for unknown reward {name!r}; rewards are {sorted(out)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise RewardSetupError(f"weight {entry!r}: {value!r} is not a number") from None
    return out
