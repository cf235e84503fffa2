"""Preference optimisation: a short DPO or SimPO run, its implicit-reward curves, and length effects.

What it shows: pick DPO (β, label smoothing = conservative DPO) or SimPO (β, γ/β) and a
data set (the built-in demo pairs, HH-RLHF, or an uploaded TRL-schema .jsonl validated
by ``core.data.load_preference_file``); "Run" trains it in its own process
(``workbench.jobs``); the curves of rewards/chosen, rewards/rejected, rewards/margins and
rewards/accuracies poll the run store; Stop ends the run after the current step with a
checkpoint. A scatter of a trained run's implicit reward against response length on its
held-out pairs (DPO: β·(log π − log π_ref), computed by ``core.implicit_rewards`` exactly
as the trainer does; SimPO: β·mean log π) shows whether the reward tracks length.

What it leaves out: IPO and SFT (CLI only: ``python -m core.trainers.dpo --help``).
Registered in ``workbench/app.py``; run ``streamlit run workbench/app.py``.
"""

import hashlib

import streamlit as st

from workbench import charts, components, limits, scoring, state, training, uploads
from workbench.jobs import registry

PAGE = "pref"
K = lambda name: state.key(PAGE, name)  # noqa: E731
CURVES = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
          "eval/rewards/margins", "eval/rewards/accuracies", "loss"]


def dataset_choice():
    """(dataset argument for the trainer, records for the scatter) or (None, None) with a message shown."""
    from core.paths import shared_data_dir

    import core.data as data

    options = ["demo", "hh-rlhf", "upload a .jsonl"]
    choice = st.radio("Data set", options, horizontal=True, key=K("dataset"))
    if choice == "demo":
        return "demo", data.load_demo_set().preferences
    if choice == "hh-rlhf":
        if not shared_data_dir().is_dir():
            st.info(f"HH-RLHF is not on this machine (looked in {shared_data_dir()}); use the demo set or upload a file.")
            return None, None
        return "hh-rlhf", data.load_hh_rlhf(limit=200)
    upload = st.file_uploader("Preference data: JSON lines with prompt, chosen, rejected (text or chat messages)", type=["jsonl", "json", "txt"], key=K("upload"))
    if upload is None:
        uploads.forget(st.session_state, K("upload_file"))
        st.caption('One JSON object per line: {"prompt": "...", "chosen": "...", "rejected": "..."}')
        return None, None
    # written and checked once per file, in this session's private folder; a training gets its own copy (run_panel)
    kept = uploads.keep(st.session_state, K("upload_file"), upload, data.load_preference_records)
    if kept.error is not None:
        st.error(f"'{upload.name}' is not usable preference data: {kept.error}. Fix the file (one JSON object per line "
                 "with prompt, chosen and rejected) and upload it again.")
        return None, None
    st.success(f"'{upload.name}': {len(kept.value)} pairs.")
    return str(kept.path), kept.value


def held_out_choice(dataset, records) -> int:
    """Held-out pairs for the eval/ curves, sized to the data (about a fifth, at most 16) and bounded so some pairs train."""
    if not records:
        return 0
    most = limits.preference_max_eval_size(records)
    auto = limits.preference_eval_size(records)
    if most == 0:
        st.caption(f"{len(records)} pair(s) with one prompt: all of them train, none is held out (no eval/ curves).")
        return 0
    return int(st.number_input(f"Held-out pairs (eval/ curves; 0–{most} of {len(records)})", 0, most, auto,
                               key=K(f"eval_size_{hashlib.sha256(str(dataset).encode()).hexdigest()[:8]}_{len(records)}")))


def run_panel(model: str, dataset, records) -> None:
    cols = st.columns(5)
    algorithm = cols[0].radio("Algorithm", ["DPO", "SimPO"], key=K("algorithm"))
    beta = cols[1].slider("β", 0.01, 5.0, 0.1 if algorithm == "DPO" else 2.0, 0.01, key=K(f"beta_{algorithm}"))
    if algorithm == "DPO":
        smoothing = cols[2].slider("label smoothing (conservative DPO)", 0.0, 0.45, 0.0, 0.05, key=K("smoothing"))
        gamma_ratio = 0.0
    else:
        gamma_ratio = cols[2].slider("γ/β (target margin ratio)", 0.0, 2.0, 0.5, 0.05, key=K("gamma_ratio"))
        smoothing = 0.0
    steps = cols[3].number_input("Steps", 1, 200, 10, key=K("steps"))
    with cols[4]:
        eval_size = held_out_choice(dataset, records)
    problem = limits.preference_problem(records, eval_size) if dataset is not None else None
    if problem:
        st.warning(problem)
    busy = registry().running()
    if st.button(f"Run short {algorithm}", key=K("start"), type="primary", disabled=busy is not None or dataset is None or bool(problem)):
        kept = st.session_state.get(K("upload_file"))
        if kept is not None and dataset == str(kept.path):  # the run reads its data for its whole life, resumes included
            dataset = str(uploads.training_copy(kept))
        config = training.preference(algorithm, model, dataset, beta, smoothing, gamma_ratio, int(steps),
                                     eval_size=eval_size, cpu=state.current_device() == "cpu")
        components.start_job(lambda: registry().start(algorithm.lower(), config, f"{algorithm} β={beta:g}"), K("jobs"))
    if busy is not None:
        st.caption(f"A training is running ('{busy.label}'); the button comes back when it ends.")


def curves_panel() -> None:
    reg = registry()
    jobs = [reg.get(j) for j in st.session_state.get(K("jobs"), []) if reg.get(j) is not None]
    job = jobs[-1] if jobs else None
    if job is not None:
        components.live_curves([job.run_path], CURVES, key_prefix=K(f"live_{job.id}"), live=job.alive, columns=4,
                               header=lambda: components.job_status(job, K("job"), K("jobs")))
    runs = [r for kind in ("dpo", "simpo") for r in components.all_runs(kind=kind)]
    if runs:
        paths = [str(r.path) for r in runs]
        picked = st.multiselect("Compare preference runs", paths, default=paths[:1], key=K("compare"), format_func=components.label_for_path)
        if picked:
            components.draw_curves(picked, CURVES, columns=4, key_prefix=K("cmp"))


UNTRAINED = "the sidebar's model (untrained)"


def scatter_panel(model: str, records) -> None:
    st.subheader("Implicit reward vs length")
    st.caption("DPO's implicit reward is β·(log π(y|x) − log π_ref(y|x)): each summed log-probability falls with every "
               "token, but the reference's falls alike and cancels it, so the reward measures how far training moved "
               "the policy, not the length. A sum over tokens can still grow with length once the policy has moved "
               "(every token adds its log-ratio); SimPO's β·mean log π averages per token and needs no reference. "
               "Computed on held-out pairs exactly as the trainer computes its eval/rewards metrics.")
    runs = [r for kind in ("dpo", "simpo") for r in components.all_runs(kind=kind) if r.latest_checkpoint() is not None]
    options = [str(r.path) for r in runs] + [UNTRAINED]
    mine = [str(j.run_path) for j in (registry().get(i) for i in st.session_state.get(K("jobs"), [])) if j is not None]
    default = next((options.index(p) for p in reversed(mine) if p in options), 0)
    source = st.selectbox("Policy", options, index=default, key=K("scatter_source"),
                          format_func=lambda p: p if p == UNTRAINED else components.label_for_path(p))
    most = 32  # a run: its own held-out pairs (the scorer takes at most that many)
    if source == UNTRAINED:
        st.info("Before training the policy is its own reference (π = π_ref), so DPO's implicit reward is exactly 0 "
                "for every response, whatever its length: there is nothing to plot for DPO. Train a run above, or "
                "pick one, to see it. SimPO's reward needs no reference and is shown for this model.")
        if not records:
            st.info("Pick a data set first.")
            return
        from core.data import split

        held_out = split(list(records), 0.5, seed=0)[1] or list(records)
        most = min(32, len(held_out))
    if most > 1:
        n = st.slider("Held-out pairs to score", 1, most, min(8, most), key=K(f"n_pairs_{most}"))
    else:
        n = 1
        st.caption("One pair to score (the data set has too few pairs to hold more out).")
    if st.button("Compute implicit rewards", key=K("scatter_btn")):
        with st.spinner("Scoring held-out responses with the policy (and its reference)…"):
            if source == UNTRAINED:
                beta = st.session_state.get(K("beta_SimPO"), 2.0)
                points = scoring.untrained_simpo_rewards(model, held_out, beta, n)
            else:
                points = scoring.run_implicit_rewards(source, n, state.current_device())
        st.session_state[K("points")] = (source, model, points)
    stored = st.session_state.get(K("points"))
    if stored and stored[0] == source and (source != UNTRAINED or stored[1] == model):
        if stored[2]:
            st.plotly_chart(charts.length_scatter(stored[2]), key=K("scatter"), width="stretch")
        else:
            st.info("This run held out no pairs (its data set was too small to keep any out of training): there is no "
                    "held-out pair to score.")


def main() -> None:
    st.title("Preference optimisation")
    st.caption("DPO and SimPO learn from pairs without a reward model: the policy itself defines an implicit reward.")
    model = state.current_model()
    dataset, records = dataset_choice()
    run_panel(model, dataset, records)
    curves_panel()
    scatter_panel(model, records)


with components.page_guard("the preference optimisation page"):
    main()
