"""Reward-weight lab: set a weight per reward component and β, run a short PPO, compare before and after.

What it shows: "Run short PPO" builds ``core.trainers.ppo.short_ppo_config`` with the
sliders' weights and β (a preset, ``workbench.lab.PRESETS``, sets them and brings its own
prompts and run settings) and trains it in its own process (``workbench.jobs``): a rerun, a
page switch or a second browser tab neither kills nor corrupts it, and every tab sees
its progress (read from the run store). Live curves poll the run; Stop ends it after the
current iteration with a checkpoint (Resume continues it). When it ends, the first and
last logged rollouts are shown side by side with the change of each reward component.
Several lab runs share the comparison charts.

What it leaves out: long runs (use ``python -m core.trainers.ppo``).
Registered in ``workbench/app.py``; run ``streamlit run workbench/app.py``.
"""

from pathlib import Path

import streamlit as st

from workbench import components, limits, state, training
from workbench.jobs import registry

PAGE = "lab"
K = lambda name: state.key(PAGE, name)  # noqa: E731

NOT_REWARD = {"kl", "value", "values", "advantage", "advantages", "return", "returns", "logprob", "ref_logprob",
              "logprobs", "ref_logprobs", "entropy", "mask", "total", "score", "scores", "reward", "rlhf_reward"}


def preset_picker(names: list[str]):
    """A preset (``workbench.lab.PRESETS``) sets the sliders and β; its run settings (prompts, iterations, ...) go with it."""
    from workbench import lab

    def apply() -> None:  # before the rerun draws the sliders, so they show the preset's values
        chosen = lab.PRESETS.get(st.session_state[K("preset")])
        if chosen is not None:
            for n in names:
                st.session_state[K(f"w_{n}")] = float(chosen.weights.get(n, 0.0))
            st.session_state[K("beta")] = float(chosen.kl_coef)

    name = st.selectbox("Preset", ["none", *lab.PRESETS], key=K("preset"), on_change=apply,
                        format_func=lambda n: "none: the sliders and the short PPO's defaults" if n == "none"
                        else f"{n}: {lab.PRESETS[n].title}")
    chosen = lab.PRESETS.get(name)
    if chosen is None:
        st.caption("Without a preset the short PPO is a quick look (3 iterations of 8 prompts): its held-out change is "
                   "usually within the noise. For a change beyond the noise in about a minute on 2 CPU cores, pick `detox`.")
        return None
    settings = lab.preset_settings(chosen)
    missing = [n for n in chosen.weights if n not in names]
    if missing:
        st.warning(f"This install does not offer {', '.join(missing)}: the preset runs without it.")
    st.caption(f"Expected: {chosen.expect}. Runs with " + ", ".join(f"{k}={v}" for k, v in settings.items())
               + (" and the demo prompts (../shared/data is absent)" if "prompts" not in settings else "")
               + ". Moving a slider keeps these settings.")
    return chosen


def start_panel(model: str) -> None:
    from workbench import lab

    names = list(training.ppo_reward_specs())
    st.subheader("Weights and β")
    chosen = preset_picker(names)
    cols = st.columns(min(len(names), 4) + 1)
    weights = {}
    for i, name in enumerate(names):
        st.session_state.setdefault(K(f"w_{name}"), 1.0 if i == 0 else 0.0)  # a preset sets these keys too
        weights[name] = cols[i % (len(cols) - 1)].slider(f"w · {name}", 0.0, 2.0, step=0.1, key=K(f"w_{name}"))
    st.session_state.setdefault(K("beta"), 0.05)
    beta = cols[-1].slider("β (KL coefficient)", 0.0, 0.5, step=0.01, key=K("beta"))
    st.caption("What the weights do: the per-token reward is Σ wₖ·rₖ − β·KL, and PPO then whitens the advantages "
               "(divides them by their spread over the batch). So with one component on, doubling its weight mostly "
               "cancels out: the same samples and updates, only `objective/scores` doubles. Weights matter through their "
               "ratios when several components are on, and through their size against β·KL. β pulls towards the "
               "reference: in a run of a few iterations it shows first in `objective/kl`, rarely in the samples.")
    row = st.columns([3, 1], vertical_alignment="bottom")
    auto = f"lab {chosen.name + ' ' if chosen else ''}{'+'.join(f'{n}={w:g}' for n, w in weights.items() if w)} β={beta:g}"
    label = row[0].text_input("Run name (optional)", key=K("label"), placeholder=auto, max_chars=limits.MAX_RUN_NAME_CHARS).strip() or auto
    busy = registry().running()
    if row[1].button("Run short PPO", key=K("start"), type="primary", disabled=busy is not None, width="stretch"):
        if not any(weights.values()):
            st.error("All weights are 0: the policy would only be pulled towards the reference. Give at least one component a weight.")
            return
        settings = lab.preset_settings(chosen) if chosen else {}
        config = training.short_ppo(model, weights, beta, cpu=state.current_device() == "cpu", **settings)
        components.start_job(lambda: registry().start("ppo", config, label), K("jobs"))
    if busy is not None:
        st.caption(f"A training is running ('{busy.label}'); the button comes back when it ends.")


def job_panel() -> None:
    """Progress and live curves of the running (or this session's last) lab job."""
    reg = registry()
    mine = [reg.get(j) for j in st.session_state.get(K("jobs"), [])]
    job = reg.running() or next((j for j in reversed(mine) if j is not None), None)
    if job is None or job.kind != "ppo":
        return
    names = list(training.ppo_reward_specs())
    components.live_curves([job.run_path], ["objective/scores", "objective/kl", "eval/toxicity", "eval/perplexity"]
                           + [f"rewards/{n}" for n in names],
                           key_prefix=K(f"live_{job.id}"), live=job.alive, columns=3,
                           header=lambda: components.job_status(job, K("job"), K("jobs")))


def component_totals(sample: dict, names: list[str]) -> dict[str, float]:
    """Σ_t r_k,t of each reward component of one logged rollout (its ``totals``, else summed ``per_token``)."""
    totals = sample.get("totals") or {}
    if totals:
        keep = [n for n in names if n in totals] or [k for k in totals if k not in NOT_REWARD]
        return {k: float(totals[k]) for k in keep if isinstance(totals[k], (int, float))}
    per_token = sample.get("per_token") or {}
    out = {}
    for key, values in per_token.items():
        name = key.removeprefix("reward/").removeprefix("rewards/")
        if isinstance(values, list) and (name in names or key.startswith("reward")):
            out[name] = float(sum(v for v in values if isinstance(v, (int, float))))
    return out


def before_after(run_path: str) -> None:
    run = components.open_run(run_path)
    if run is None:
        return
    samples = run.samples()
    steps = sorted({s.get("step", 0) for s in samples})
    if len(steps) < 1:
        st.info("This run saved no samples yet.")
        return
    first, last = steps[0], steps[-1]
    names = [n.split("=")[0].strip() for n in str(run.config.get("rewards", "")).split(",") if n.strip()]
    before = {s.get("prompt"): s for s in samples if s.get("step") == first}
    after = {s.get("prompt"): s for s in samples if s.get("step") == last}
    common = [p for p in after if p in before] if first != last else []
    pairs = [(before[p], after[p]) for p in common] or list(zip(before.values(), after.values()))
    if not common:
        st.caption("The first and last logged steps sampled different prompts; shown in order.")
    st.markdown(f"**Step {first} → step {last}**")
    if run.config.get("prompts") == "davidson":
        st.caption("Content warning: the prompts are openings of offensive tweets (Davidson et al. 2017), chosen to provoke toxic text.")
    for i, (b, a) in enumerate(pairs[:4]):
        tb, ta = component_totals(b, names), component_totals(a, names)
        left, right = st.columns(2)
        left.markdown(f"*Prompt:* {b.get('prompt', '')[-300:]}\n\n**Before:** {b.get('response', '')}")
        right.markdown(f"*Prompt:* {a.get('prompt', '')[-300:]}\n\n**After:** {a.get('response', '')}")
        if ta:
            right.caption(" · ".join(f"{k}: {tb.get(k, 0):+.3f} → {ta[k]:+.3f} (Δ {ta[k] - tb.get(k, 0):+.3f})" for k in ta))


def compare_panel() -> None:
    runs = components.all_runs(kind="ppo")
    if not runs:
        return
    st.subheader("Compare runs")
    paths = [str(r.path) for r in runs]
    mine = [str(registry().get(j).run_path) for j in st.session_state.get(K("jobs"), []) if registry().get(j) and registry().get(j).run_path]
    default = [p for p in mine if p in paths][-2:] or paths[:1]
    picked = st.multiselect("PPO runs", paths, default=default, key=K("compare"), format_func=components.label_for_path)
    if not picked:
        return
    names = list(training.ppo_reward_specs())
    components.draw_curves(picked, ["objective/scores", "objective/kl", "eval/toxicity", "eval/perplexity"] + [f"rewards/{n}" for n in names],
                           columns=3, key_prefix=K("cmp"))
    st.caption("`eval/toxicity` and `eval/perplexity` (under the reference model) are measured on held-out prompts "
               "the run never trains on, before the first and after the last iteration: two points per run.")
    st.subheader("Before / after")
    finished = [p for p in picked if (Path(p) / "samples.jsonl").is_file()]
    if finished:
        labels = {p: components.label_for_path(p) for p in finished}
        which = st.selectbox("Run", finished, key=K("ba_run"), format_func=lambda p: labels.get(p, Path(p).name))
        before_after(which)


# ----------------------------------------------------------------------------- preview and paired verdict (workbench.lab)


def preview_panel(model: str) -> None:
    """Best-of-N under the current sliders: N responses per held-out prompt sampled and scored once, re-ranked at every move."""
    import time

    from workbench import lab

    st.subheader("Instant preview: which response do these weights prefer?")
    names = list(training.ppo_reward_specs())
    weights = {n: float(st.session_state.get(K(f"w_{n}"), 1.0 if i == 0 else 0.0)) for i, n in enumerate(names)}
    key = (model, state.current_device(), tuple(names))
    bank = st.session_state.get(K("preview_bank"))
    if bank is None or st.session_state.get(K("preview_key")) != key:
        st.caption(f"Samples {lab.PREVIEW_N} responses to each of {lab.PREVIEW_PROMPTS} held-out prompts with the untrained "
                   "policy and scores each with every component, once; then every slider move only re-ranks them (no training).")
        if not st.button("Sample candidates for the preview", key=K("preview_start")):
            return
        bar = st.progress(0.0, text="Sampling and scoring candidates…")
        bank, skipped = lab.candidate_bank(model, state.current_device(),
                                           on_progress=lambda d, t: bar.progress(d / t, text=f"Sampled and scored prompt {d}/{t}"))
        st.session_state[K("preview_bank")], st.session_state[K("preview_key")] = bank, key
        st.session_state[K("preview_skipped")] = skipped
        bar.empty()
    for name, why in st.session_state.get(K("preview_skipped"), {}).items():
        st.caption(f"ℹ️ {name} is left out of the preview: {why}")
    t0 = time.perf_counter()
    best, scores = bank.rank({n: w for n, w in weights.items() if n in bank.names})
    ms = 1000 * (time.perf_counter() - t0)
    st.session_state[K("preview_best")] = best.tolist()
    st.caption(f"Best of {scores.shape[1]} by Σₖ wₖ·(Σₜ rₖ,ₜ) under the sliders' weights (re-ranked in {ms:.1f} ms; "
               "no KL term: all candidates come from the untrained policy). It shows which way the weights push, "
               "not what PPO would write.")
    for p, prompt in enumerate(bank.prompts):
        b = int(best[p])
        with st.container(border=True):
            st.markdown(f"*Prompt:* {prompt[-300:]}\n\n**Preferred ({b + 1}/{scores.shape[1]}):** {bank.responses[p][b]}")
            st.caption(f"weighted {float(scores[p, b]):+.3f} · " + " · ".join(
                f"{n}: {float(bank.totals[p, b, k]):+.3f}" for k, n in enumerate(bank.names)) + f" · {int(bank.lengths[p, b])} tokens")


BEFORE_TRAINING = "this run before training"


def between_panel(which: str, against: str) -> None:
    """Two runs' final policies paired by held-out prompt (``workbench.lab.paired_between``)."""
    from core.paired import describe
    from workbench import lab

    result = lab.paired_between(components.open_run(which), components.open_run(against))
    if result is None:
        st.info("These two runs share fewer than two held-out prompts (or one has no evaluation): nothing to pair.")
        return
    rows, names, differing = result
    st.dataframe(lab.table(rows, before="other run", after="this run"), hide_index=True)
    st.markdown(f"Against {components.label_for_path(against)}: " + describe(rows, names + [lab.WEIGHTED_TOTAL]))
    if differing:
        st.warning(f"The two runs sampled with different settings ({', '.join(differing)}): their answers differ by more "
                   "than the policies, so the intervals are wider than they need be.")
    st.caption("Each run's last evaluation, on the prompts both held out, paired by prompt: Δ is the mean over prompts "
               "of this run − the other run, with Student's t 95 % interval. The weighted total uses this run's weights.")


def paired_panel() -> None:
    """A finished lab run's held-out samples before and after training, paired by prompt, with 95 % intervals."""
    from workbench import lab

    runs = [r for r in components.all_runs(kind="ppo") if (r.path / "eval_samples.jsonl").is_file()]
    if not runs:
        return
    st.subheader("Held-out before / after, paired by prompt")
    paths = [str(r.path) for r in runs]
    chosen = st.session_state.get(K("ba_run"))
    which = st.selectbox("Run", paths, index=paths.index(chosen) if chosen in paths else 0, key=K("paired_run"),
                         format_func=components.label_for_path)
    others = [p for p in paths if p != which]
    against = st.selectbox("Against", [BEFORE_TRAINING] + others, key=K("paired_against"),
                           format_func=lambda p: p if p == BEFORE_TRAINING else f"the final policy of {components.label_for_path(p)}",
                           help="Another run's final policy on the same held-out prompts: Wu et al. 2023 compare policies "
                                "trained with different reward weights (e.g. the qa-relevance and qa-completeness presets).")
    if against != BEFORE_TRAINING:
        between_panel(which, against)
        return
    result = lab.paired_rows(components.open_run(which))
    if result is None:
        st.info("This run evaluated its held-out prompts fewer than twice (before and after training): nothing to pair.")
        return
    rows, names, first, last = result
    st.dataframe(lab.table(rows), hide_index=True)
    from core.paired import describe

    st.markdown(describe(rows, names + [lab.WEIGHTED_TOTAL]))
    st.caption(f"Step {first} → step {last}: the same held-out prompts, sampled with the same seed. Per prompt, the mean of "
               "its samples; Δ is the mean over prompts of after − before, with Student's t 95 % interval "
               "(mean ± t₀.₉₇₅,ₙ₋₁·sd/√n). Beyond the noise: the interval excludes 0. KL (Σₜ log π − log π_ref) is 0 "
               "before training.")


def main() -> None:
    st.title("Reward-weight lab")
    st.caption("How do reward weights and β steer PPO? Set them, run a short PPO (LoRA, a few iterations), compare.")
    model = state.current_model()
    start_panel(model)
    job_panel()
    preview_panel(model)
    compare_panel()
    paired_panel()


with components.page_guard("the reward-weight lab"):
    main()
