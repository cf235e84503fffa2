"""Training curves: metrics of several runs on shared axes, live while a run is going, and a rollout browser.

What it shows: toxicity, perplexity, each reward component, KL, clip fraction and length
against step for the runs picked (e.g. holistic vs fine-grained), polled with
``st.fragment(run_every=...)`` while any of them is running; then, per logged step, the
rollouts the trainer saved (``run.samples(step)``) as token heatmaps of every per-token
field (reward components, KL, value, advantage, return).

A run started from the app shows its progress with a Stop button while it goes; a run
whose process died ("interrupted", e.g. the server or the trainer was killed) or that was
stopped shows its last step and a Resume button (from its newest intact checkpoint).

What it leaves out: starting runs (the lab and preference pages, or the trainer CLIs).
Registered in ``workbench/app.py``; run ``streamlit run workbench/app.py``.
"""

from pathlib import Path

import streamlit as st

from workbench import charts, components, state
from workbench.jobs import registry

PAGE = "curves"
K = lambda name: state.key(PAGE, name)  # noqa: E731

PRESET = [
    "eval/toxicity", "eval/toxicity_avg_max", "eval/perplexity", "objective/scores", "objective/kl",
    "policy/clipfrac_avg", "eval/length", "eval/distinct_2", "rewards/chosen", "rewards/rejected", "rewards/margins",
    "rewards/accuracies", "loss", "rm/accuracy",
]


def rollout_browser(run_paths: list[str]) -> None:
    st.subheader("Rollout browser")
    labels = {p: components.label_for_path(p) for p in run_paths}  # computed once: a deleted folder keeps its label
    run_path = st.selectbox("Run", run_paths, key=K("browse_run"), format_func=lambda p: labels.get(p, Path(p).name))
    run = components.open_run(run_path)
    if run is None:
        return
    samples = run.samples()
    steps = sorted({s.get("step", 0) for s in samples})
    if not steps:
        st.info("This run saved no samples yet (trainers save them on logged/eval steps).")
        return
    step = st.select_slider("Step", steps, value=steps[-1], key=K("browse_step")) if len(steps) > 1 else steps[0]
    at_step = [s for s in samples if s.get("step") == step]
    i = st.number_input(f"Sample (0–{len(at_step) - 1}) at step {step}", 0, len(at_step) - 1, 0, key=K("browse_sample"))
    sample = at_step[int(i)]
    st.markdown(f"**Prompt:** {sample.get('prompt', '')[-500:]}")
    for field in ("response", "chosen", "rejected"):
        if field in sample:
            st.markdown(f"**{field.capitalize()}:** {sample[field]}")
    per_token = sample.get("per_token") or {}
    tokens = sample.get("tokens") or []
    pair_parts = [p for p in ("chosen", "rejected") if isinstance(sample.get(f"{p}_tokens"), list)]
    if pair_parts:  # DPO / SimPO: one heatmap per response of the pair
        for part in pair_parts:
            rows = {k[len(part) + 1:]: v for k, v in per_token.items() if k.startswith(part + "_") and isinstance(v, list)}
            reward = sample.get(f"{part}_reward")
            title = f"{part}" + (f" · implicit reward {reward:+.4f}" if isinstance(reward, (int, float)) else "")
            if rows:
                st.plotly_chart(charts.token_heatmap(sample[f"{part}_tokens"], rows, title=title, per_row_scale=True),
                                key=K(f"heat_{part}"), width="stretch")
        return
    rows = {k: v for k, v in per_token.items() if isinstance(v, list) and v and not isinstance(v[0], (list, dict, str))}
    if not tokens or not rows:
        st.info("This sample has no per-token fields to draw.")
        return
    st.caption("Each row is coloured on its own scale (÷ its max |value|); hover for the exact values.")
    st.plotly_chart(charts.token_heatmap(tokens, rows, per_row_scale=True), key=K("heatmap"), width="stretch")
    if sample.get("totals"):
        st.caption("Totals: " + " · ".join(f"{k} = {v:+.4f}" for k, v in sample["totals"].items() if isinstance(v, (int, float))))


def main() -> None:
    st.title("Training curves")
    runs = components.all_runs()
    paths = [str(r.path) for r in runs]
    kept = [p for p in st.session_state.get(K("runs"), []) if p not in paths and (Path(p) / "config.json").is_file()]
    paths += kept  # a picked run that failed (hidden from the picker) stays picked
    gone = [p for p in st.session_state.get(K("runs"), []) if p not in paths]
    if gone:  # deleted or moved while being viewed: say so, keep the rest
        st.warning(f"Run folder(s) {', '.join(Path(p).name for p in gone)} disappeared (deleted or moved); they are no longer shown.")
        st.session_state[K("runs")] = [p for p in st.session_state[K("runs")] if p in paths]
    if not paths:
        st.info("No runs yet. Start one in the Reward-weight lab or Preference optimisation pages, or with "
                "`python -m core.trainers.ppo --help`." + components.hidden_note())
        return
    default = [st.session_state["frame_run"]] if st.session_state.get("frame_run") in paths else paths[:1]
    picked = st.multiselect("Runs (several share the axes)", paths, default=default, key=K("runs"), format_func=components.label_for_path)
    if not picked:
        st.info("Pick one or more runs.")
        return
    from core.runstore import Run

    present = [p for p in picked if (Path(p) / "config.json").is_file()]
    rows = [r for p in present for r in Run(Path(p)).metrics()]
    found = components.metric_names(rows)
    preset = [m for m in PRESET if m in found] + [m for m in found if m.startswith("rewards/") and m not in PRESET and not m.endswith("_weight")]
    metrics = st.multiselect("Metrics", found, default=preset or found[:6], key=K("metrics"))
    live = any(components.run_is_live(Run(Path(p))) for p in present)
    for p in present:  # interrupted (its process died) or stopped, and no job of this server trains it: Resume
        components.resume_panel(Run(Path(p)), K("resume"), K("jobs"))
    if live:
        st.caption("🔴 live: a run is still going; the charts refresh every couple of seconds.")
    jobs = [j for j in (registry().for_run(p) for p in present) if j is not None and j.alive]  # started from this app
    header = (lambda: [components.job_status(j, K("job"), K("jobs")) for j in jobs]) if jobs else None
    components.live_curves(picked, metrics, key_prefix=K("chart"), live=live, header=header)
    if present:
        rollout_browser(present)


with components.page_guard("the training curves page"):
    main()
