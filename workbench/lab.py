"""The reward-weight lab's two read-outs: the best-of-N preview and the paired before/after table.

What it is: glue between the lab page and ``core.preview`` / ``core.paired``.
``candidate_bank`` samples N responses per held-out prompt with the sidebar's (untrained)
policy and scores them with every reward component the lab offers, once; the page keeps
the bank in ``st.session_state`` and re-ranks it at every slider move (no model runs).
``paired_rows`` reads a finished lab run's held-out evaluation samples
(``eval_samples.jsonl``: the same prompts and seed before the first and after the last
iteration) and pairs them by prompt; ``paired_between`` pairs two runs' final policies the same way
(Wu et al. 2023's customisation experiment). ``PRESETS`` are short runs, as data, meant to move
the weighted component beyond that paired 95 % interval in one run; what each measured
(``bench/ppo_short.py --preset NAME``) is in docs/benchmarks.md, "Lab presets": ``detox`` runs in
about 55 s and moved toxicity beyond the interval on the validation prompts in 3 of 3 seeds and on
its 48 held-out prompts; ``qa-relevance`` raises C1 and shortens answers beyond it,
``qa-completeness`` raises C3 beyond it (its answers are longer than ``qa-relevance``'s, paired
with ``paired_between``); the QA presets take about 200 s.

What it leaves out: drawing (the page), the statistics themselves (``core.paired``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

PREVIEW_PROMPTS = 4
"""held-out prompts of the preview (the lab's short PPO holds out at least this many when it evaluates)"""
PREVIEW_N = 4
"""candidate responses per prompt"""
WEIGHTED_TOTAL = "total (weighted)"


def heldout_prompts(model: str, n: int = PREVIEW_PROMPTS) -> tuple[list[str], object]:
    """(n prompts the lab's short PPO never trains on, its config): those after its training prompts."""
    from core.data import load_prompts
    from workbench import training

    names = list(training.ppo_reward_specs())
    config = training.short_ppo(model, {names[0]: 1.0}, 0.05)
    prompts = load_prompts(config.prompts, config.num_prompts + n, config.seed)[config.num_prompts:]
    return prompts, config


def candidate_bank(model: str, device: str = "cpu", n_prompts: int = PREVIEW_PROMPTS, n: int = PREVIEW_N,
                   on_progress: Callable[[int, int], None] | None = None):
    """(``core.preview.CandidateBank`` of the lab's held-out prompts sampled as the short PPO samples, with every
    component that loads scored; {name: why} of those that did not load, e.g. a head built on another encoder)."""
    from core.preview import sample_candidates
    from workbench import scoring, state, training

    prompts, config = heldout_prompts(model, n_prompts)
    infos = {c.name: c for c in scoring.available_components()}
    components, skipped = {}, {}
    for name in training.ppo_reward_specs():
        if name in infos:
            try:
                components[name] = scoring.build_component(name, infos[name].source, infos[name].ref)
            except Exception as exc:  # noqa: BLE001 - one unusable model must not take the preview down
                skipped[name] = (str(exc).splitlines() or [type(exc).__name__])[0]
    bank = sample_candidates(state.get_policy(model, device), state.get_tokenizer(model), prompts, components, n=n,
                             seed=config.seed, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                             top_k=config.top_k, top_p=config.top_p, chat_template=config.chat_template,
                             max_prompt_tokens=config.max_prompt_tokens, on_progress=on_progress)
    return bank, skipped


def run_weights(run) -> dict[str, float]:
    """The run's reward weights by component name (a component left out of ``weights`` weighs 1.0)."""
    from core.trainers.rewards_setup import parse_weights

    samples = run.eval_samples()
    names = list((samples[0].get("totals") or {}) if samples else [])
    try:
        return parse_weights(str(run.config.get("weights", "")), names)
    except Exception:  # noqa: BLE001 - an unreadable weight string: every component at 1
        return {n: 1.0 for n in names}


def with_weighted_total(samples: list[dict], weights: dict[str, float]) -> list[dict]:
    """The samples with one more total, ``WEIGHTED_TOTAL`` = Σ_k w_k Σ_t r_k,t (a component a sample lacks counts 0)."""
    return [{**s, "totals": {**s.get("totals", {}),
                             WEIGHTED_TOTAL: sum(w * float(s.get("totals", {}).get(n, 0.0)) for n, w in weights.items())}}
            for s in samples]


def paired_rows(run):
    """(rows: list of core.paired.PairedChange, components: the weighted names, first step, last step), or None.

    None when the run evaluated fewer than twice. The weighted total Σ_k w_k Σ_t r_k,t is
    paired as one more component, then KL and length.
    """
    from core.paired import paired_table

    samples = run.eval_samples()
    steps = sorted({s.get("step", 0) for s in samples})
    if len(steps) < 2:
        return None
    weights = run_weights(run)
    names = [n for n, w in weights.items() if w]
    first, last = steps[0], steps[-1]
    before = with_weighted_total([s for s in samples if s.get("step") == first], weights)
    after = with_weighted_total([s for s in samples if s.get("step") == last], weights)
    keys = names + ([WEIGHTED_TOTAL] if len(names) > 1 else [])
    return paired_table(before, after, keys), names, first, last


SAME_SAMPLING = ("model_name_or_path", "seed", "temperature", "top_k", "top_p", "max_new_tokens", "max_prompt_tokens",
                 "chat_template", "eval_samples_k")
"""run settings two runs must share for their held-out answers to differ only by the policies (``paired_between``)"""


def paired_between(run, other):
    """Two runs' final policies on the same held-out prompts: (rows, components, differing settings), or None.

    Wu et al. 2023's customisation experiment compares policies trained with different reward
    weights; two lab runs that evaluated the same held-out prompts with the same sampling seed
    (e.g. the ``qa-relevance`` and ``qa-completeness`` presets) pair by prompt exactly like one
    run's before and after. "before" is ``other``'s last evaluation, "after" is ``run``'s, so Δ
    reads "this run minus the other". Components: those either run weighs and both scored, then
    the weighted total of ``run``'s weights, KL and length. None when fewer than two prompts are
    shared or a run has no evaluation. differing: the ``SAME_SAMPLING`` settings that differ (the
    answers then also differ by sampling, which widens the interval but biases nothing).
    """
    from core.paired import paired_table

    def last(r):
        samples = r.eval_samples()
        if not samples:
            return []
        step = max(s.get("step", 0) for s in samples)
        return [s for s in samples if s.get("step", 0) == step]

    mine, theirs = last(run), last(other)
    if len({s["prompt"] for s in mine} & {s["prompt"] for s in theirs}) < 2:
        return None
    weights, other_weights = run_weights(run), run_weights(other)
    scored = set(mine[0].get("totals", {})) & set(theirs[0].get("totals", {}))
    names = [n for n in dict.fromkeys([*weights, *other_weights]) if n in scored and (weights.get(n) or other_weights.get(n))]
    keys = names + ([WEIGHTED_TOTAL] if len(names) > 1 else [])
    differing = [k for k in SAME_SAMPLING if run.config.get(k) != other.config.get(k)]
    return paired_table(with_weighted_total(theirs, weights), with_weighted_total(mine, weights), keys), names, differing


def table(rows, before: str = "before", after: str = "after") -> list[dict]:
    """Rows for ``st.dataframe``: metric, before, after, Δ, 95 % interval, verdict (column names from before / after)."""
    return [{"metric": r.metric, before: round(r.before, 4), after: round(r.after, 4), f"Δ ({after} − {before})": round(r.diff, 4),
             "95 % interval": "n/a" if r.n < 2 else f"[{r.low:+.4f}, {r.high:+.4f}]",
             "beyond the noise": "yes" if r.beyond_noise else "no", "prompts": r.n} for r in rows]


# ----------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """A short PPO whose effect shows in one run: reward weights, β and the ``PPOConfig`` fields it changes."""

    name: str
    title: str
    weights: dict[str, float]  # component name (``training.ppo_reward_specs``) -> weight; the others 0
    kl_coef: float
    settings: dict = field(default_factory=dict)  # PPOConfig fields over short_ppo_config()
    expect: str = ""  # what the paired table should show
    needs_data: bool = False  # its prompts come from ../shared/data (else the demo prompts)


# Chosen on the validation prompts only (`bench/ppo_short.py --preset NAME --validation`: the prompts after the
# held-out ones), never on the held-out prompts; docs/benchmarks.md, "Lab presets", lists every setting tried.
_DETOX = {"prompts": "rude-openings", "num_prompts": 32, "eval_prompts": 48, "eval_samples_k": 1, "num_iterations": 3,
          "batch_size": 16, "minibatch_size": 8, "ppo_epochs": 2, "learning_rate": 2e-3, "lora_r": 16, "lora_layers": 10,
          "max_new_tokens": 16, "temperature": 0.7, "top_p": 0.9, "cpu_bf16": True}
_QA = {"prompts": "qa-feedback", "num_prompts": 24, "eval_prompts": 12, "eval_samples_k": 2, "num_iterations": 4,
       "batch_size": 8, "minibatch_size": 8, "ppo_epochs": 2, "learning_rate": 1e-3, "lora_r": 16,
       "max_new_tokens": 96, "max_prompt_tokens": 160, "temperature": 0.7, "top_p": 0.9, "cpu_bf16": True}

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("detox", "Less toxicity when asked to finish a profane sentence", {"toxicity_token": 1.0}, 0.02, _DETOX,
           "toxicity_token (−p(toxic) of profanity-check, credited to the token that made the answer toxic) rises: "
           "the held-out answers repeat less of the opening's swearing"),
    Preset("qa-completeness", "QA-Feedback: completeness (C3) over relevance (C1)",
           {"preference_c3": 1.0, "finegrained_c1": 0.2}, 0.02, _QA,
           "preference_c3 rises; against the qa-relevance run's final policy (\"Against\" below) answers are longer "
           "(Wu et al. 2023: a heavier completeness weight lengthens answers)", needs_data=True),
    Preset("qa-relevance", "QA-Feedback: relevance (C1) over completeness (C3)",
           {"finegrained_c1": 1.0, "preference_c3": 0.2}, 0.02, _QA,
           "finegrained_c1 rises and answers get shorter (Wu et al. 2023: a heavier relevance weight shortens answers)",
           needs_data=True),
)}


def preset(name: str) -> Preset:
    """The preset called ``name``; ValueError naming the known ones otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_settings(p: Preset, data_present: bool | None = None) -> dict:
    """The PPOConfig fields of a preset; without ../shared/data a preset that needs it keeps the lab's demo prompts."""
    if data_present is None:
        from core.paths import shared_data_dir

        data_present = shared_data_dir().is_dir()
    if p.needs_data and not data_present:
        return {k: v for k, v in p.settings.items() if k not in ("prompts", "num_prompts", "eval_prompts")}
    return dict(p.settings)


def preset_config(name: str, model: str, data_present: bool | None = None, **extra):
    """The lab's short PPO config of preset ``name`` (its weights, β and settings; ``extra`` fields on top),
    as the lab's button builds it. A component the preset weighs that this install does not offer is refused
    with its name. data_present: whether ../shared/data is there (default: look)."""
    from workbench import training

    p = preset(name)
    specs = training.ppo_reward_specs()
    missing = [n for n in p.weights if n not in specs]
    if missing:
        raise ValueError(f"preset {name!r} needs the reward components {missing}, which this install does not offer")
    return training.short_ppo(model, dict(p.weights), p.kl_coef, **{**preset_settings(p, data_present), **extra})
