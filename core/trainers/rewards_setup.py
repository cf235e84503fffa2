"""Build the reward components a trainer config names, and their weights.

What it is: the translation from two flat config strings to the
``core.rewards.tensor.RewardComponent`` objects PPO scores with, so that the CLI,
the app and notebooks name rewards the same way:

    rewards = "toxicity_sentence,holistic=~/.cache/rlhf-workbench/reward_models/hh,my_mod:polite"
    weights = "toxicity_sentence=1.0,holistic=0.5"      # unnamed components weigh 1.0

Each comma-separated entry of ``rewards`` is one of
- ``toxicity``           -r = tox(response) on the last token (holistic, Wu et al. 2023 sec. 3);
- ``toxicity_sentence``  sentence-level toxicity change (fine-grained, Wu et al. 2023 sec. 3);
- ``toxicity_token``     the same change per policy token (the penalty lands on the toxic word);
  all three score with profanity-check (``ProfanityToxicity``); ``toxicity_minilm``,
  ``toxicity_sentence_minilm`` and ``toxicity_token_minilm`` use the MiniLM head instead (train it first);
- ``NAME=FOLDER``        a trained reward model saved by ``core.rewards.store`` (holistic
  preference RM, fine-grained C1/C2 RM, C3 RM: its metadata says which), under NAME;
- ``NAME=redistributed:FOLDER``  a holistic RM's score redistributed over tokens (RED);
- ``module:function``    a Python ``fn(prompt, response) -> float``, sequence level,
  named after the function (``FunctionReward``).
Python objects (e.g. a lambda) are passed to ``train_ppo(..., extra_rewards=...)``.

The string is parsed into ``RewardSpec`` values (``parse_rewards``); a program that
builds rewards (the app) builds ``RewardSpec`` values and writes them with
``format_rewards``, which refuses any value that would not read back as itself, so a
folder named ``json:dumps,x`` can never turn into another entry.

No code from data: building components never imports anything. A ``module:function``
entry is only a name; its function must come with the call, imported by
``function_rewards`` from what the user typed on the command line or passed from
Python (``train_ppo(config, extra_rewards=function_rewards(config.rewards))``). A
config read back from a run folder (``--resume-from``) or written by the app therefore
cannot make the trainer import or call anything: such an entry is refused until the
same ``module:function`` is given again on the command line.

What it leaves out: scoring itself (``core.rewards.tensor.compute_token_rewards``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

TOXICITY_BUILTINS = ("toxicity", "toxicity_sentence", "toxicity_token", "toxicity_minilm", "toxicity_sentence_minilm",
                     "toxicity_token_minilm")


class RewardSetupError(ValueError):
    """A reward or weight string that cannot be understood; the message says what is accepted."""


@dataclass(frozen=True)
class RewardSpec:
    """One entry of ``rewards`` as a value.

    kind: "toxicity" (target "") | "model" (target: a store folder) | "redistributed"
    (target: a holistic RM's folder) | "function" (target: "package.module:function").
    name: the component's name in TokenRewards, metrics and weights.
    """

    kind: str
    name: str
    target: str = ""

    def entry(self) -> str:
        """The spec in the ``rewards`` string syntax."""
        if self.kind == "toxicity":
            return self.name
        if self.kind == "function":
            return self.target
        return f"{self.name}={'redistributed:' if self.kind == 'redistributed' else ''}{self.target}"


KINDS = ("toxicity", "model", "redistributed", "function")


def _parse_entry(entry: str) -> RewardSpec:
    if entry in TOXICITY_BUILTINS:
        return RewardSpec("toxicity", entry)
    if "=" in entry:
        name, _, target = (s.strip() for s in entry.partition("="))
        if not name or not target:
            raise RewardSetupError(f"reward {entry!r} must look like NAME=FOLDER")
        if target.startswith("redistributed:"):
            return RewardSpec("redistributed", name, target.removeprefix("redistributed:"))
        return RewardSpec("model", name, target)
    if ":" in entry:
        module_name, _, attr = entry.partition(":")
        if not module_name or not attr:
            raise RewardSetupError(f"reward function {entry!r} must look like 'package.module:function'")
        return RewardSpec("function", attr, entry)
    raise RewardSetupError(
        f"unknown reward {entry!r}: use one of {', '.join(TOXICITY_BUILTINS)}, NAME=FOLDER, "
        "NAME=redistributed:FOLDER or module:function")


def parse_rewards(rewards) -> list[RewardSpec]:
    """The comma list ``rewards`` (or already parsed specs) as ``RewardSpec`` values, in order."""
    if not isinstance(rewards, str):
        return [_check_spec(s) for s in rewards or ()]
    return [_parse_entry(e) for e in (e.strip() for e in rewards.split(",")) if e]


def _check_spec(spec) -> RewardSpec:
    if not isinstance(spec, RewardSpec) or spec.kind not in KINDS:
        raise RewardSetupError(f"{spec!r} is not a RewardSpec of kind {KINDS}")
    return spec


def format_rewards(specs) -> str:
    """``RewardSpec`` values -> the ``rewards`` string; refuses a value that would not read back as itself."""
    specs = [_check_spec(s) for s in specs]
    text = ",".join(s.entry() for s in specs)
    try:
        again = parse_rewards(text)
    except RewardSetupError:
        again = None
    if again != specs:
        raise RewardSetupError(f"rewards {specs!r} cannot be written as a rewards string: a name or folder "
                               "contains ',', '=' or ':' (rename the folder)")
    return text


def function_rewards(rewards) -> dict:
    """Import the ``module:function`` entries of ``rewards``: entry -> ``FunctionReward``.

    Call this only on what a person typed or wrote in Python (the command line does);
    pass the result as ``extra_rewards``. Never call it on a config read from a file.
    """
    from core.rewards.tensor import FunctionReward

    out = {}
    for spec in parse_rewards(rewards):
        if spec.kind == "function":
            fn = load_function(spec.target)
            out[spec.target] = FunctionReward(fn, name=fn.__name__)
    return out


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
    from core.rewards.toxicity import MiniLMToxicity, reward_class

    scorer = MiniLMToxicity() if name.endswith("_minilm") else None
    return reward_class(name)(scorer=scorer, name=name)


def _reward_model(name: str, folder: str, redistributed: bool):
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise RewardSetupError(f"reward model folder for {name!r} not found: {path} (train one with python -m core.trainers.reward)")
    from core.rewards.store import load_reward_component

    component = load_reward_component(str(path), redistribute=redistributed)
    component.name = name
    return component


def build_reward_components(rewards, extra: dict | None = None) -> dict:
    """Name -> RewardComponent for every entry of ``rewards`` (a comma list or ``RewardSpec`` values) plus ``extra``.

    extra: name -> component objects, and, for each ``module:function`` entry of
    ``rewards``, its component under that entry (``function_rewards``): nothing is imported here.
    """
    extra = dict(extra or {})
    components: dict = {}
    for spec in parse_rewards(rewards):
        if spec.kind == "toxicity":
            name, component = spec.name, _toxicity(spec.name)
        elif spec.kind in ("model", "redistributed"):
            name, component = spec.name, _reward_model(spec.name, spec.target, spec.kind == "redistributed")
        elif spec.target in extra:
            component = extra.pop(spec.target)
            name = getattr(component, "name", spec.name)
        else:
            raise RewardSetupError(
                f"reward {spec.target!r} names Python code, which is imported only from the command line or from "
                f"Python, never from a stored config or the app: give --rewards {spec.target!r} again on the command "
                "line, or pass extra_rewards=function_rewards(config.rewards)")
        if name in components:
            raise RewardSetupError(f"reward name {name!r} appears twice")
        components[name] = component
    for name, component in extra.items():
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
