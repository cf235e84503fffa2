"""Token reward explorer: where each reward lands on the response tokens, and how weights combine them.

What it shows: one heatmap row per reward component (holistic toxicity, toxicity change
per sentence, learned RMs and their redistributed form when trained) plus the weighted
total, one cell per response token, exact values on hover; the response as text coloured by
one row, with the human-labelled error spans (QA-Feedback, demo set) underlined on the same
tokens; human spans beside the model's segments. The pair is scored ONCE (cached in
``st.session_state``); the weight sliders only recombine with ``TokenRewards.combined``.

What it leaves out: training reward models (see the hint on the page).
Registered in ``workbench/app.py``; run ``streamlit run workbench/app.py``.
"""

import streamlit as st

from core.rewards.scales import weighted_scale
from workbench import charts, components, limits, scoring, state

PAGE = "explorer"
K = lambda name: state.key(PAGE, name)  # noqa: E731

SOURCES = ["Demo set", "QA-Feedback (human spans)", "HH-RLHF pair", "Type your own", "Sample from the policy"]


def _load(source: str):
    """Records {prompt, response, spans?} of a data source, or (None, message)."""
    from core.paths import shared_data_dir

    import core.data as data

    if source == "Demo set":
        demo = data.load_demo_set()
        return [{"prompt": r["prompt"], "response": r["response"], "spans": _spans_of(r)} for r in demo.spans], None
    if not shared_data_dir().is_dir():
        return None, f"The real data sets are not on this machine (looked in {shared_data_dir()}); use the demo set, or set RLHF_WORKBENCH_DATA."
    if source == "QA-Feedback (human spans)":
        recs = _cached_qa_spans()
        return [{"prompt": r.get("prompt", r.get("question", "")), "response": r.get("response", r.get("prediction", "")),
                 "spans": _spans_of(r)} for r in recs], None
    recs = _cached_hh()
    out = []
    for r in recs:
        out.append({"prompt": r["prompt"], "response": r["chosen"], "spans": [], "note": "chosen"})
        out.append({"prompt": r["prompt"], "response": r["rejected"], "spans": [], "note": "rejected"})
    return out, None


@st.cache_data(show_spinner=False)
def _cached_qa_spans():
    from core.data import load_qa_feedback_spans

    return [dict(r) for r in load_qa_feedback_spans()][:200]


@st.cache_data(show_spinner=False)
def _cached_hh():
    from core.data import load_hh_rlhf

    return [dict(r) for r in load_hh_rlhf(limit=100)]


def _spans_of(record: dict) -> list[dict]:
    spans = record.get("spans") or record.get("errors") or []
    out = []
    for s in spans:
        label = s.get("error_type") or s.get("error type") or s.get("label") or "span"
        if s.get("category"):
            label = f"{label} ({s['category']})"
        title = s.get("explanation") or label
        out.append({"start": int(s["start"]), "end": int(s["end"]), "label": str(label), "title": str(title)})
    return out


def _sample(model: str, prompt: str, max_new_tokens: int) -> str:
    """One response, sampled as PPO samples (``core.rollout``: the prompt as a chat turn when the model has a template)."""
    from core.rollout import generate, response_texts

    tok = state.get_tokenizer(model)
    policy = state.get_policy(model, state.current_device())
    rollout = generate(policy, tok, [prompt], max_new_tokens=max_new_tokens, top_p=0.95, max_prompt_tokens=None,
                       chat_template=True)
    return response_texts(tok, rollout)[0]


def pick_pair(model: str) -> tuple[str, str, list[dict]]:
    top = st.columns([3, 1])
    source = top[0].radio("Example", SOURCES, key=K("source"), horizontal=True)
    prompt, response, spans = "", "", []
    if source in SOURCES[:3]:
        recs, note = _load(source)
        if recs is None:
            st.info(note)
            source = "Type your own"
        elif not recs:
            st.warning("This data set is empty.")
        else:
            i = top[1].number_input(f"Record (0–{len(recs) - 1})", 0, len(recs) - 1, 0, key=K(f"index_{source}"))
            rec = recs[int(i)]
            prompt, response, spans = rec["prompt"], rec["response"], rec.get("spans", [])
            if len(prompt) > limits.MAX_PROMPT_CHARS:  # long dialogues: the model answers the end of it
                st.caption(f"The prompt has {len(prompt):,} characters: only its last {limits.MAX_PROMPT_CHARS:,} are used.")
                prompt = prompt[-limits.MAX_PROMPT_CHARS:]
            if rec.get("note"):
                st.caption(f"HH-RLHF: the {rec['note']} response. Content warning: HH-RLHF contains offensive text.")
            with st.expander(f"Prompt: {prompt[:90]}…" if len(prompt) > 90 else f"Prompt: {prompt}", expanded=False):
                st.text(prompt[-3000:])
    if source == "Type your own":
        prompt = st.text_area("Prompt", key=K("prompt"), value="Tell me about your weekend.", height=80)
        response = st.text_area("Response", key=K("response"), value="It was great. I went hiking with friends, and we saw a damn bear! Then we ate pizza.", height=100)
    if source == "Sample from the policy":
        prompt = st.text_area("Prompt", key=K("sample_prompt"), value="Write two sentences about the sea.", height=80)
        n = st.slider("New tokens", 8, 96, 32, key=K("sample_tokens"))
        if st.button("Sample a response", key=K("sample_btn")):
            if not prompt.strip():
                st.error("The prompt is empty: type a prompt first.")
            elif limits.text_problem(prompt):
                st.error(limits.text_problem(prompt))
            else:
                with st.spinner("Sampling from the policy…"):
                    st.session_state[K("sampled")] = (model, prompt, _sample(model, prompt, n))
        sampled = st.session_state.get(K("sampled"))
        response = sampled[2] if sampled and sampled[0] == model and sampled[1] == prompt else ""
        if response:
            with st.container(border=True):
                st.caption("Sampled response")
                st.text(response)
        else:
            st.caption("Press the button to sample a response from the model chosen in the sidebar.")
    return prompt, response, spans


def coloured_text(tokens: list[str], rows: dict[str, list[float]], scales: dict, tr, response: str, human_spans: list[dict]) -> None:
    """The response as text coloured by one row (a component or the weighted total), values on hover, with the
    human spans underlined on the same tokens (their category on hover) and the row's segment ends marked."""
    names = list(rows)
    which = st.selectbox("Colour the text by", names, index=len(names) - 1, key=K("text_row"))
    ends = {seg.token_index for seg in tr.segments[0] if seg.component == which} if which in tr.components else set()
    bound = scales.get(which)
    st.session_state[K("text_bound")] = bound
    # human spans index the record's text; the scored text is its decoding, which the tokenizer may change
    aligned = bool(human_spans) and tr.texts[0] == response
    marks = components.span_marks(tr.token_spans[0], human_spans) if aligned else None
    st.session_state[K("text_marks")] = marks
    st.markdown(charts.coloured_text_html(tokens, rows[which], bound=bound, segment_ends=ends, marks=marks), unsafe_allow_html=True)
    scale = f"full colour at |value| ≥ {bound:g} (its stated scale)" if bound else "scaled to this response's max |value| (no stated scale)"
    st.caption(f"{which}: blue > 0 > red, {scale}; hover a token for its value"
               + ("; a bar marks where each of its segments ends" if ends else "")
               + ("; human error spans are underlined (category on hover):" if marks else "."))
    if marks:
        st.markdown(components.span_legend(human_spans), unsafe_allow_html=True)
    elif human_spans:
        st.caption("The human spans cannot be drawn on these tokens (the tokenizer changed the text); see them below.")


def main() -> None:
    st.title("Token reward explorer")
    st.caption("Where does each reward land? Rows are reward components, cells are response tokens; hover for exact values.")
    model = state.current_model()
    prompt, response, human_spans = pick_pair(model)
    if not prompt.strip():
        st.warning("The prompt is empty: type a prompt (rewards are judged for a prompt and its response).")
        return
    if not response.strip():
        st.info("No response to score yet.")
        return
    problem = limits.text_problem(prompt, response)
    if problem:  # checked before any tokenizer or model sees the text
        st.error(problem)
        return

    infos = scoring.available_components()
    names = [c.name for c in infos]
    chosen = st.multiselect("Reward components", names, default=names, key=K("components"),
                            format_func=lambda n: next(c.label for c in infos if c.name == n))
    if not scoring.has_learned_models():
        st.caption("ℹ️ " + scoring.TRAIN_RM_HINT)
    if not chosen:
        st.warning("Pick at least one reward component.")
        return
    infos = [c for c in infos if c.name in chosen]

    tok = state.get_tokenizer(model)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    n_resp = len(scoring.response_ids(model, response))
    limit = state.model_context_length(model)
    if n_prompt + n_resp > limit:
        st.error(f"Prompt + response are {n_prompt + n_resp} tokens but the model reads at most {limit}: shorten the response (or the prompt).")
        return
    if n_resp > limits.MAX_RESPONSE_TOKENS:
        st.error(f"The response has {n_resp:,} tokens; the explorer draws at most {limits.MAX_RESPONSE_TOKENS:,}. Shorten it.")
        return

    progress = st.progress(0.0, text="Scoring the response with each reward component…")
    tr = scoring.score_texts(model, prompt, response, infos)
    progress.progress(1.0, text=f"Scored {n_resp} response tokens with {len(infos)} component(s).")

    cols = st.columns(min(len(chosen), 4))
    weights = {}
    for i, name in enumerate(chosen):
        weights[name] = cols[i % len(cols)].slider(f"w · {name}", -2.0, 2.0, 1.0, 0.1, key=K(f"w_{name}"))
    total = tr.combined(weights)[0]  # (T,) no model runs here: only a weighted sum
    keep = tr.mask[0].bool()
    rows = {name: tr.components[name][0][keep].tolist() for name in chosen}
    rows["total (weighted)"] = total[keep].tolist()
    st.session_state[K("last_total")] = rows["total (weighted)"]
    tokens = scoring.token_texts(tr)
    scales = scoring.colour_scales(infos)
    scales["total (weighted)"] = weighted_scale(weights, scales)
    st.plotly_chart(charts.token_heatmap(tokens, rows, scales=scales), key=K("heatmap"), width="stretch")
    st.caption("Colours: each row on its own stated scale [−s, s] (" + ", ".join(
        f"{n}: {'its data max' if scales.get(n) is None else f's = {scales[n]:g}'}" for n in rows)
        + "), so a value near 0 stays pale; hover a cell for the exact value.")
    if len(tokens) > limits.TOKEN_LABELS_UP_TO:
        st.caption(f"{len(tokens)} tokens: too many to label on the axis (hover a cell for its token); read them below.")
    coloured_text(tokens, rows, scales, tr, response, human_spans)
    sums = {name: round(sum(v), 4) for name, v in rows.items()}
    st.caption("Sum over tokens: " + " · ".join(f"{k} = {v}" for k, v in sums.items()))
    cut = scoring.context_cuts(prompt, response, infos)
    if cut:
        st.caption(f"ℹ️ {', '.join(cut)}: prompt + response are longer than the reward model reads at once, so it scores "
                   "them in windows of its last tokens; the start of the prompt is not seen by every window.")
    if any(c.source == "redistributed" for c in infos) and any(c.source == "store" for c in infos):
        st.caption("ℹ️ " + scoring.SCALES_NOTE)

    left, right = st.columns(2)
    with left:
        st.markdown("**Human labels**")
        if human_spans:
            st.markdown(components.highlighted(response, human_spans), unsafe_allow_html=True)
        else:
            st.caption("This example has no human span labels (QA-Feedback records have them).")
    with right:
        st.markdown("**Model segments** (where each non-zero reward sits)")
        segs = [s for s in tr.segments[0] if s.level in ("sentence", "subsentence")]
        if segs:
            spans = [{"start": s.char_start, "end": s.char_end, "label": f"{s.component} {s.value:+.3f}"} for s in segs]
            st.markdown(components.highlighted(tr.texts[0], spans), unsafe_allow_html=True)
        else:
            st.caption("No sentence-level component chosen: sequence-level scores sit on the last token.")


with components.page_guard("the token reward explorer"):
    main()
