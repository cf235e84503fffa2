"""Starting trainers from the app: build the trainer's own config dataclass, then hand it to the job runner.

What it is: the pages never construct configs by hand; they pass the user's choices
(model, weights, β, ...) here, and this module builds the trainer's config class, looked
up by run kind (``core.trainers.launch.config_class``: the same dataclass the CLI, the
notebooks and the job launcher build). A field the config class does not have is an
error that names it, never silently dropped. ``RLHF_WORKBENCH_SHORT`` (JSON, e.g.
'{"ppo": {"num_iterations": 1}, "preference": {"num_steps": 2}}') overrides fields for
tests and quick demos; it must name real fields too.

What it leaves out: the training itself (``core.trainers.*``), the process (``workbench.jobs``).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

SHORT_ENV = "RLHF_WORKBENCH_SHORT"


def env_overrides(section: str) -> dict:
    """The ``section`` ("ppo" | "preference") part of RLHF_WORKBENCH_SHORT, {} when unset or unreadable."""
    raw = os.environ.get(SHORT_ENV, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    part = value.get(section) if isinstance(value, dict) else None
    return part if isinstance(part, dict) else {}


def build(kind: str, overrides: dict, base=None):
    """The config of trainer ``kind`` ("ppo", "dpo", "simpo", ...): ``base`` (default: the class defaults) with
    ``overrides``; a field the class does not have raises ``TrainingError`` naming it."""
    from core.trainers.launch import build_config, config_class

    cls = config_class(kind)
    return build_config(cls, overrides, base=base if base is not None else cls())


def ppo_reward_specs() -> dict:
    """Name -> ``RewardSpec`` (``core.trainers.rewards_setup``) for every usable component: values, never strings.

    The profanity-check toxicity rewards always; each learned RM in the store as a
    "model" spec and its redistributed form as a "redistributed" one. Nothing the app
    builds names Python code ("function" specs come only from the command line).
    """
    from core.trainers.rewards_setup import RewardSpec
    from workbench.scoring import available_components

    kinds = {"toxicity": "toxicity", "store": "model", "redistributed": "redistributed"}
    return {c.name: RewardSpec(kinds[c.source], c.name, "" if c.source == "toxicity" else str(c.ref))
            for c in available_components() if c.source in kinds}


def short_ppo(model: str, weights: dict[str, float], kl_coef: float, **extra):
    """The lab's short PPO config (``PPOConfig``) with these reward weights and β, bf16 autocast on a CPU."""
    from core.trainers.ppo import short_ppo_config
    from core.trainers.rewards_setup import format_rewards

    specs = ppo_reward_specs()
    names = [n for n, w in weights.items() if w != 0.0 and n in specs] or [n for n in weights if n in specs][:1]
    from core.paths import shared_data_dir

    # Davidson openings need the real data; the 8 demo prompts are split 6 for training, 2 held out
    data = {} if shared_data_dir().is_dir() else {"prompts": "demo", "num_prompts": 6, "eval_prompts": 2}
    overrides = {
        "model_name_or_path": model,
        **data,
        "rewards": format_rewards(specs[n] for n in names),  # refuses a name or folder that would not read back
        "weights": ",".join(f"{n}={weights[n]:g}" for n in names),
        "kl_coef": float(kl_coef),
        "cpu_bf16": True,  # the app trains in a child process of its own: bf16 autocast there (docs/benchmarks.md)
        **extra,
        **env_overrides("ppo"),
    }
    config = build("ppo", overrides, base=short_ppo_config())
    if config.eval_every and config.eval_prompts:  # held-out toxicity/perplexity before the first and after the last iteration
        config = replace(config, eval_every=config.num_iterations)
    return config


def preference(algorithm: str, model: str, dataset: str, beta: float, label_smoothing: float = 0.0,
               gamma_beta_ratio: float = 0.5, num_steps: int = 10, **extra):
    """The config of a short DPO or SimPO run on ``dataset`` (name or .jsonl path); its kind is ``algorithm.lower()``."""
    per_algorithm = {"label_smoothing": float(label_smoothing)} if algorithm == "DPO" else {"gamma_beta_ratio": float(gamma_beta_ratio)}
    overrides = {
        "model_name_or_path": model, "dataset": dataset, "beta": float(beta), **per_algorithm,
        "num_steps": int(num_steps), "lora": True,
        # a short run: only the pairs the steps will see (the reference pass covers the whole train set) and a small eval set
        "train_size": min(256, max(16, int(num_steps) * 8)), "eval_size": 16,
        **extra, **env_overrides("preference"),
    }
    return build(algorithm.lower(), overrides)
