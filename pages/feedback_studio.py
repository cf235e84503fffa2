"""Feedback studio: collect ratings, rankings, error spans and corrections, then train a reward model on them.

What it shows: an annotator gives a name, picks (or creates) a feedback project and works
through a queue: per prompt, rate each of the K responses 1-7 with InstructGPT's eight
flags and notes, rank them (ties allowed), mark error spans (C1/C2/C3) by segment or
character range, write a corrected response, or skip. Every click is saved at once in
the SQLite store (``core.feedback.store``), so a refresh or a server restart loses
nothing. The other tabs create projects (built-in prompts, a .jsonl upload or typed
prompts; the sidebar's model samples K responses in the background) or import
QA-Feedback / HH-RLHF, show agreement, export every format, and train a reward model on
the labels that the token explorer and the reward-weight lab list at once.

Threads and processes: sampling runs in a background thread of the server with the
project's cached policy, drawing from a ``torch.Generator`` of its own (never the global
one other sessions sample from); every training runs in a child process
(``core.feedback.train.train_in_child_process``, ``python -m core.trainers.launch`` for the
fine-grained models) that a background thread waits for, so a training's seeding and
memory never reach the server.

What it leaves out: drag-and-drop ranking (number inputs per response are as quick),
accounts (the app serves 127.0.0.1). All logic lives in ``core.feedback``.
Registered in ``workbench/app.py``; run ``streamlit run workbench/app.py``.
"""

import json
import threading
import time
import uuid
from pathlib import Path

import streamlit as st

from core.feedback import agreement, export
from core.feedback.sampling import BUILTIN_SETS, builtin_prompts, fill_project, read_prompt_file
from core.feedback.store import (ERROR_TYPES, FLAGS, K_MAX, K_MIN, FeedbackError, FeedbackStore, check_ranks, check_spans,
                                 default_db_path)
from workbench import components, state

PAGE = "fs"
K = lambda name: state.key(PAGE, name)  # noqa: E731
CATEGORY_LABELS = {"C1": "C1 irrelevant / redundant / incoherent", "C2": "C2 inaccurate or unverifiable fact",
                   "C3": "C3 missing information"}


@st.cache_resource(show_spinner=False)
def _store(path: str) -> FeedbackStore:
    return FeedbackStore(path)


def store() -> FeedbackStore:
    return _store(str(default_db_path()))


@st.cache_resource(show_spinner=False)
def tasks() -> dict:
    """Background tasks shared by every session: key -> {thread, done, error, result, label}."""
    return {}


def start_task(key: str, label: str, fn) -> None:
    """Run fn() off the script thread (a rerun does not stop it); its result or error lands in tasks()[key]."""
    entry = {"done": False, "error": None, "result": None, "label": label, "started": time.time()}

    def body():
        try:
            entry["result"] = fn()
        except Exception as exc:  # noqa: BLE001 - shown on the page
            entry["error"] = components.friendly(exc)
        finally:
            entry["done"] = True

    entry["thread"] = threading.Thread(target=body, daemon=True, name=f"feedback-{key}")
    tasks()[key] = entry
    entry["thread"].start()


def task_running(key: str) -> bool:
    t = tasks().get(key)
    return bool(t) and not t["done"]


def submission_id(name: str) -> str:
    """The id of the form ``name`` (kept until it is saved, so a repeated click is a no-op)."""
    return st.session_state.setdefault(K(f"sid_{name}"), str(uuid.uuid4()))


def saved(name: str) -> None:
    st.session_state.pop(K(f"sid_{name}"), None)


def submit(name: str, call) -> bool:
    """Send one label; show the store's message on a problem."""
    try:
        call(submission_id(name))
    except FeedbackError as exc:
        st.error(str(exc))
        return False
    saved(name)
    return True


# ----------------------------------------------------------------------------- projects


def sample_in_background(pid: int, name: str, model: str) -> None:
    """Sample the project's missing responses with its own policy ``model`` in a background thread."""
    device = state.current_device()
    tokenizer, policy = state.get_tokenizer(model), state.get_policy(model, device)  # cached, read-only
    db = store()
    start_task(f"sample_{pid}", f"sampling '{name}'", lambda: fill_project(db, pid, policy, tokenizer))


def create_panel() -> None:
    st.subheader("New project")
    c = st.columns([2, 1, 1, 1])
    name = c[0].text_input("Project name", key=K("new_name"), placeholder="e.g. demo-k4")
    k = c[1].number_input("K responses", K_MIN, K_MAX, 4, key=K("new_k"))
    seed = c[2].number_input("Seed", 0, 10**6, 0, key=K("new_seed"))
    max_new = c[3].number_input("New tokens", 4, 256, 48, key=K("new_tokens"))
    source = st.radio("Prompts", ["built-in", "upload a .jsonl", "type them"], horizontal=True, key=K("new_source"))
    items = None
    try:
        if source == "built-in":
            b = st.columns(2)
            which = b[0].selectbox("Set", BUILTIN_SETS, key=K("new_set"))
            b[1].number_input("How many", 1, 500, 8, key=K("new_n"))
            st.caption(f"The first prompts of the '{which}' set are read when you create the project.")
        elif source == "upload a .jsonl":
            up = st.file_uploader('JSON lines, one {"prompt": "..."} per line (or a .txt, a prompt per line)',
                                  type=["jsonl", "json", "txt"], key=K("new_upload"))
            if up is not None:
                items = read_prompt_file(up.name, text=up.getvalue().decode("utf-8", errors="replace"), name=up.name)
                st.caption(f"'{up.name}': {len(items)} prompts.")
        else:
            typed = st.text_area("One prompt per line", key=K("new_typed"))
            items = read_prompt_file("typed", text=typed, name="the typed prompts") if typed.strip() else None
    except FeedbackError as exc:
        st.error(str(exc))
        items = None
    st.caption(f"Policy: `{state.current_model()}` (change it in the sidebar). Responses are sampled once and stored.")
    if st.button("Create and sample", key=K("new_create"), type="primary"):
        if source == "built-in" and items is None:
            try:
                items = [{"prompt": p} for p in builtin_prompts(st.session_state[K("new_set")], int(st.session_state[K("new_n")]))]
            except Exception as exc:  # noqa: BLE001 - e.g. the real data is absent
                st.error(components.friendly(exc))
        if not items:
            st.error("No prompts yet: pick a set, upload a file or type some prompts.")
            return
        try:
            pid = store().create_project(name.strip() or f"project-{int(time.time())}", state.current_model(), int(k), int(seed),
                                         items, source=source, settings={"max_new_tokens": int(max_new), "temperature": 1.0})
        except FeedbackError as exc:
            st.error(str(exc))
            return
        st.session_state[K("want_project")] = pid  # selected on the next run, before the selectbox exists
        sample_in_background(pid, name, state.current_model())
        st.rerun()


def import_panel() -> None:
    st.subheader("Import labelled data")
    c = st.columns([2, 2, 1])
    what = c[0].radio("Data set", ["QA-Feedback", "HH-RLHF"], horizontal=True, key=K("imp_what"))
    name = c[1].text_input("Project name", value=f"{what.lower()}-import", key=K("imp_name"))
    limit = c[2].number_input("Records", 1, 2000, 20, key=K("imp_limit"))
    if st.button("Import", key=K("imp_go")):
        fn = export.import_qa_feedback if what == "QA-Feedback" else export.import_hh_rlhf
        try:
            pid, counts = fn(store(), name.strip(), limit=int(limit))
        except Exception as exc:  # noqa: BLE001 - DataError (missing file) and FeedbackError alike
            st.error(components.friendly(exc))
            return
        st.session_state[K("want_project")] = pid  # selected on the next run, before the selectbox exists
        st.session_state[K("flash")] = f"Imported {counts['items']} items into '{name}' (pre-labelled by '{what.lower()}')."
        st.rerun()


def projects_tab() -> None:
    projects = store().projects()
    for p in projects:
        key = f"sample_{p['id']}"
        line = f"**{p['name']}** · K = {p['k']} · {p['n_ready']}/{p['n_items']} items sampled · policy `{p['policy']}`"
        cols = st.columns([5, 1])
        cols[0].markdown(line)
        t = tasks().get(key)
        if t and t["error"]:
            cols[0].error(f"Sampling stopped: {t['error']}")
        if p["n_ready"] < p["n_items"] and not task_running(key):
            if cols[1].button("Resume sampling", key=K(f"resume_{p['id']}")):
                sample_in_background(p["id"], p["name"], p["policy"])  # the policy that sampled the others
                st.rerun()
    if not projects:
        st.info("No feedback projects yet: create one below, or import QA-Feedback / HH-RLHF.")
    create_panel()
    import_panel()
    st.caption(f"Labels are kept in `{store().path}` (set RLHF_WORKBENCH_FEEDBACK_DB to move it).")


def sampling_progress(project: dict) -> None:
    key = f"sample_{project['id']}"
    if not task_running(key) and project["n_ready"] == project["n_items"]:
        return

    @st.fragment(run_every=components.POLL_SECONDS if task_running(key) else None)
    def _poll():
        p = store().project(project["id"])
        st.progress(p["n_ready"] / max(p["n_items"], 1), text=f"Sampled {p['n_ready']}/{p['n_items']} prompts (background)")
        t = tasks().get(key)
        if t and t["done"] and st.session_state.get(K("sampled")) != key:
            st.session_state[K("sampled")] = key
            st.rerun()

    _poll()


# ----------------------------------------------------------------------------- labelling


def span_label(s: dict) -> dict:
    return {"start": s["start"], "end": s["end"], "label": s["error_type"], "title": f"{s['category']}: {s['note']}"}


def rating_and_ranking(item: dict, who: str, mine: dict) -> None:
    k = len(item["responses"])
    old_ratings = {r["response_idx"]: r for r in mine["ratings"]}
    old_ranks = mine["rankings"][0]["ranks"] if mine["rankings"] else list(range(1, k + 1))
    spans = {r["response_idx"]: r["spans"] for r in mine["spans"]}
    iid = item["id"]
    with st.form(K(f"form_{iid}")):
        for i, text in enumerate(item["responses"]):
            st.markdown(f"**Response {i + 1}**")
            st.html(components.highlighted(text, [span_label(s) for s in spans.get(i, [])]))
            c = st.columns([2, 1, 3])
            old = old_ratings.get(i, {})
            c[0].slider("Rating (1 worst, 7 best)", 1, 7, old.get("score", 4), key=K(f"score_{iid}_{i}"))
            c[1].number_input("Rank (1 = best)", 1, k, old_ranks[i], key=K(f"rank_{iid}_{i}"),
                              help="Equal ranks are ties.")
            c[2].text_input("Notes", old.get("notes", ""), key=K(f"notes_{iid}_{i}"))
            with st.expander("Flags"):
                for f, label in FLAGS:
                    st.checkbox(label, old.get("flags", {}).get(f, False), key=K(f"flag_{iid}_{i}_{f}"))
        sent = st.form_submit_button("Submit ratings and ranking", type="primary", key=K(f"submit_{iid}"))
    if not sent:
        return
    db = store()
    ranks = [int(st.session_state[K(f"rank_{iid}_{i}")]) for i in range(k)]
    try:
        check_ranks(ranks, k)  # refuse a bad ranking before saving any of the form's labels
    except FeedbackError as exc:
        st.error(str(exc))
        return
    ok = True
    for i in range(k):
        flags = {f: st.session_state[K(f"flag_{iid}_{i}_{f}")] for f, _ in FLAGS}
        ok &= submit(f"rating_{iid}_{i}", lambda sid, i=i, flags=flags: db.submit_rating(
            sid, who, iid, i, int(st.session_state[K(f"score_{iid}_{i}")]), flags, st.session_state[K(f"notes_{iid}_{i}")]))
    ok &= submit(f"ranking_{iid}", lambda sid: db.submit_ranking(sid, who, iid, ranks))
    if ok:
        st.session_state[K("flash")] = f"Saved ratings and ranking of prompt {item['position'] + 1}."
        st.rerun()


def spans_panel(item: dict, who: str, mine: dict) -> None:
    from core.rewards.segments import sentence_spans, subsentence_spans

    iid, k = item["id"], len(item["responses"])
    st.markdown("**Error spans**")
    c = st.columns([1, 2, 2, 2])
    idx = c[0].selectbox("Response", range(k), format_func=lambda i: str(i + 1), key=K(f"span_resp_{iid}"))
    cat = c[1].selectbox("Category", list(ERROR_TYPES), format_func=CATEGORY_LABELS.get, key=K(f"span_cat_{iid}"))
    etype = c[2].selectbox("Error type", ERROR_TYPES[cat], key=K(f"span_type_{iid}_{cat}"))
    how = c[3].radio("Mark by", ["segment", "character range"], key=K(f"span_how_{iid}"), horizontal=True)
    text = item["responses"][idx]
    draft_key = K(f"draft_{iid}_{idx}")
    if draft_key not in st.session_state:
        st.session_state[draft_key] = next((r["spans"] for r in mine["spans"] if r["response_idx"] == idx), [])
    draft = st.session_state[draft_key]
    if how == "segment":
        segs = (subsentence_spans if cat == "C1" else sentence_spans)(text)
        seg = st.selectbox(f"{'Sub-sentence' if cat == 'C1' else 'Sentence'}", range(len(segs)), key=K(f"span_seg_{iid}_{idx}"),
                           format_func=lambda j: f"{j + 1}: {text[segs[j][0]:segs[j][1]][:90]}")
        start, end = segs[seg] if segs else (0, 0)
    else:
        r = st.columns(2)
        start = int(r[0].number_input("Start character", 0, max(len(text) - 1, 0), 0, key=K(f"span_start_{iid}_{idx}")))
        end = int(r[1].number_input("End character (exclusive)", 1, len(text), len(text), key=K(f"span_end_{iid}_{idx}")))
        seg = None
        st.caption(f"Selected: “{text[start:end]}”")
    note = st.text_input("Why (optional)", key=K(f"span_note_{iid}_{idx}"))
    b = st.columns(3)
    if b[0].button("Add span", key=K(f"span_add_{iid}")):
        candidate = draft + [{"start": start, "end": end, "category": cat, "error_type": etype, "segment": seg, "note": note}]
        try:
            st.session_state[draft_key] = check_spans(candidate, text)
            st.rerun()
        except FeedbackError as exc:
            st.error(str(exc))
    if b[1].button("Clear", key=K(f"span_clear_{iid}")):
        st.session_state[draft_key] = []
        st.rerun()
    if draft:
        st.html(components.highlighted(text, [span_label(s) for s in draft]))
    if b[2].button(f"Save spans of response {idx + 1}" + ("" if draft else " (no errors)"), key=K(f"span_save_{iid}")):
        if submit(f"spans_{iid}_{idx}", lambda sid: store().submit_spans(sid, who, iid, idx, draft)):
            st.session_state[K("flash")] = f"Saved {len(draft)} span(s) on response {idx + 1}."
            st.rerun()


def correction_panel(item: dict, who: str, mine: dict) -> None:
    iid, k = item["id"], len(item["responses"])
    st.markdown("**Corrected response** (a demonstration for SFT)")
    base = st.selectbox("Start from response", range(k), format_func=lambda i: str(i + 1), key=K(f"fix_base_{iid}"))
    old = mine["corrections"][0]["text"] if mine["corrections"] else item["responses"][base]
    text = st.text_area("Corrected response", old, key=K(f"fix_text_{iid}_{base}"), height=120)
    if st.button("Save correction", key=K(f"fix_save_{iid}")):
        if submit(f"fix_{iid}", lambda sid: store().submit_correction(sid, who, iid, text, base)):
            st.session_state[K("flash")] = "Saved the correction."
            st.rerun()


def label_tab(who: str, project: dict) -> None:
    db = store()
    sampling_progress(project)
    q = db.queue(project["id"], who, with_done=True)
    prog = q["progress"]
    st.progress(prog["done"] / max(prog["total"], 1),
                text=f"{who}: {prog['ranked']} ranked, {prog['skipped']} skipped, {prog['remaining']} to go of {prog['total']}")
    if st.session_state.get(K("flash")):
        st.success(st.session_state.pop(K("flash")))
    if not q["todo"]:
        st.info("Your queue is empty: every sampled prompt is ranked or skipped." if prog["ready"] == prog["total"]
                else "Waiting for the next sampled prompt…")
        return
    item = db.item(q["todo"][0])
    mine = db.item_labels(item["id"], who)
    st.markdown(f"#### Prompt {item['position'] + 1} of {prog['total']}")
    if len(item["prompt"]) < 400:
        st.markdown(f"> {item['prompt']}")
    else:
        with st.expander("Prompt (long)"):
            st.text(item["prompt"])
    rating_and_ranking(item, who, mine)
    spans_panel(item, who, mine)
    correction_panel(item, who, mine)
    if st.button("Skip this prompt", key=K(f"skip_{item['id']}")):
        if submit(f"skip_{item['id']}", lambda sid: db.submit_skip(sid, who, item["id"])):
            st.rerun()


# ----------------------------------------------------------------------------- agreement, export, training


@st.cache_resource(show_spinner=False, max_entries=2)
def _reward_component(folder: str):
    from core.rewards.store import load_reward_component

    return load_reward_component(folder, device="cpu")


def reward_model_panel(project: dict):
    """Pick a holistic reward model and score the project's responses: (folder, item_id -> K scores) or None."""
    import os

    from core.rewards.store import list_reward_models

    key = K(f"rm_scores_{project['id']}")
    models = [m["path"] for m in list_reward_models(os.environ.get("RLHF_WORKBENCH_REWARD_MODELS") or None)
              if m.get("kind") == "preference"]
    if not models:
        st.caption("No holistic reward model yet: train one in the Train tab to see how it agrees with each annotator.")
        return st.session_state.get(key)
    c = st.columns([3, 1])
    folder = c[0].selectbox("Reward model to compare with the annotators", models, format_func=lambda p: Path(p).name,
                            key=K(f"rm_pick_{project['id']}"))
    if c[1].button("Score responses", key=K(f"rm_score_{project['id']}")):
        with st.spinner("Scoring every response…"):
            scores = agreement.reward_model_scores(_reward_component(folder), store().items(project["id"]))
        st.session_state[key] = (folder, scores)
    return st.session_state.get(key)


def agreement_tab(project: dict) -> None:
    db = store()
    rm_choice = reward_model_panel(project)
    res = agreement.project_agreement(db, project["id"], scores=rm_choice[1] if rm_choice else None)
    r = res["rankings"]
    c = st.columns(3)
    c[0].metric("Ranking agreement (pairs)", "–" if r["overall"] is None else f"{r['overall']:.0%}", help=f"{r['n_pairs']} comparable pairs")
    for col, metric in zip(c[1:], ("interval", "ordinal")):
        a = res["ratings"][metric]
        col.metric(f"Krippendorff's α ({metric})", "–" if a["alpha"] is None else f"{a['alpha']:.2f}",
                   help=f"{a['n_units']} responses rated by 2+ annotators")
    if r["pairs"]:
        st.dataframe([{"annotators": " & ".join(p["annotators"]), "agreement": p["agreement"], "pairs": p["n_pairs"],
                       "tied": p["n_tied"], "items": p["n_items"]} for p in r["pairs"]], hide_index=True)
    if "reward_model" in res:
        st.caption(f"Agreement of each annotator with `{Path(rm_choice[0]).name}` (all their rankings; equal scores count ½):")
        st.dataframe([{"annotator": a, **v} for a, v in res["reward_model"].items()], hide_index=True)

    st.subheader("Export")
    pairs = export.preference_pairs(db, project["id"], st.radio("Pairs", export.MODES, horizontal=True, key=K("exp_mode")))
    d = st.columns(4)
    jsonl = lambda rows: "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows)  # noqa: E731
    d[0].download_button(f"TRL preferences ({len(pairs)})", jsonl(pairs), f"{project['name']}-preferences.jsonl", key=K("dl_pref"))
    d[1].download_button("K-wise rankings", jsonl(export.ranking_records(db, project["id"])), f"{project['name']}-rankings.jsonl", key=K("dl_rank"))
    d[2].download_button("SFT (corrections)", jsonl(export.sft_records(db, project["id"])), f"{project['name']}-sft.jsonl", key=K("dl_sft"))
    d[3].download_button("QA-Feedback JSON", json.dumps(export.qa_feedback_records(db, project["id"])[0]),
                         f"{project['name']}-feedback.json", key=K("dl_qa"))
    folder = st.text_input("Folder for every format (with the datasets folder and parquet)",
                           str(Path(db.path).parent / "exports" / project["name"]), key=K("exp_folder"))
    if st.button("Export all", key=K("exp_all")):
        try:
            paths = export.export_project(db, project["id"], folder, agreement=res)
        except (OSError, FeedbackError) as exc:
            st.error(f"Export failed: {exc}")
        else:
            st.success("Written: " + ", ".join(f"`{p}`" for p in paths.values()))


def config_with_destination(config, project: dict):
    """``config`` with its save folder chosen here (the store's folder as this server sees it; a taken default name
    gets a time stamp), so the child process saves exactly where the explorer and the lab look."""
    from dataclasses import replace

    from core.rewards import store as reward_store

    name = reward_store.safe_name(f"feedback-{project['name']}")
    return replace(config, name=name, save_dir=str(reward_store.destination(name, default_name=True)))


def train_tab(project: dict) -> None:
    from core.feedback.train import FeedbackRMConfig, train_finegrained_from_spans, train_in_child_process

    db = store()
    key = f"train_{project['id']}"
    st.caption(f"A holistic reward model on `{state.current_model()}` features, K-wise ranking loss (InstructGPT eq. 1), "
               "a quarter of the items held out to measure agreement with your labels.")
    if st.button("Train a reward model on these labels", key=K("train"), type="primary", disabled=task_running(key)):
        config = FeedbackRMConfig(project=str(project["id"]), db=str(db.path), model_name_or_path=state.current_model(),
                                  device=state.current_device(), feature_cache_dir=str(Path(db.path).parent / "feature-cache"))
        start_task(key, "training", lambda: train_in_child_process(config_with_destination(config, project)))
        st.rerun()
    if st.button("Train C1 and C2 models on the span labels", key=K("train_fg"), disabled=task_running(key + "_fg")):
        model = state.current_model()
        start_task(key + "_fg", "fine-grained", lambda: [
            str(train_finegrained_from_spans(db, project["id"], c, model, child_process=True).path) for c in ("C1", "C2")])
        st.rerun()

    @st.fragment(run_every=components.POLL_SECONDS if task_running(key) or task_running(key + "_fg") else None)
    def _status():
        for k_, what in ((key, "reward model"), (key + "_fg", "fine-grained models")):
            t = tasks().get(k_)
            if t is None:
                continue
            if not t["done"]:
                st.info(f"Training the {what}… {time.time() - t['started']:.0f} s (background)")
            elif t["error"]:
                st.error(f"Training the {what} failed: {t['error']}")
            elif k_ == key:
                f = t["result"]["figures"]
                st.session_state.setdefault(K(f"rm_scores_{project['id']}"), (t["result"]["model_path"], t["result"]["scores"]))
                ev = f["eval_agreement"]
                st.success(f"Saved `{t['result']['model_path']}`: it is listed in the token explorer and the reward-weight lab.")
                c = st.columns(3)
                c[0].metric("Held-out agreement", "–" if ev is None else f"{ev:.0%}", help=f"{f['eval_items']} held-out items")
                c[1].metric("Training agreement", f"{f['train_agreement']:.0%}")
                c[2].metric("Seconds", f"{f['seconds']:.1f}")
                st.dataframe([{"annotator": a, **v} for a, v in f["eval_agreement_by_annotator"].items()], hide_index=True)
            else:
                st.success("Saved fine-grained models: " + ", ".join(f"`{p}`" for p in t["result"]))

    _status()


def main() -> None:
    st.title("Feedback studio")
    st.caption("Rate, rank, mark error spans and correct the responses of a policy; every click is saved, and a reward "
               "model trains on the labels in seconds.")
    who = st.text_input("Your name (labels are saved under it)", key=K("annotator")).strip()
    try:
        projects = store().projects()
    except FeedbackError as exc:  # a newer, read-only, locked or foreign database file
        st.error(str(exc))
        return
    names = {p["id"]: p["name"] for p in projects}
    if st.session_state.get(K("want_project")) in names:
        st.session_state[K("project")] = st.session_state.pop(K("want_project"))
    if st.session_state.get(K("project")) not in names:
        st.session_state.pop(K("project"), None)
    pid = st.selectbox("Project", list(names), format_func=names.get, key=K("project"), index=0 if names else None,
                       placeholder="no projects yet: create one in the Projects tab")
    project = next((p for p in projects if p["id"] == pid), None)
    if st.session_state.get(K("flash")) and (not who or project is None):
        st.success(st.session_state.pop(K("flash")))
    label, agree, train, manage = st.tabs(["Label", "Agreement & export", "Train", "Projects"])
    with label:
        if not who:
            st.info("Enter your name above to get your queue.")
        elif project is None:
            st.info("Create or import a project in the Projects tab.")
        else:
            label_tab(who, project)
    with agree:
        if project is not None:
            agreement_tab(project)
    with train:
        if project is not None:
            train_tab(project)
    with manage:
        projects_tab()


with components.page_guard("the feedback studio"):
    main()
