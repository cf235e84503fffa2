"""RLHF Workbench: the Streamlit entry file, i.e. the frame and the router.

What it is: registers the pages in ``pages/`` explicitly with ``st.navigation`` (not the
legacy auto-discovered folder) and draws the sidebar shared by every page: the model
(default SmolLM2-135M-Instruct, the tiny random Llama for speed, or any folder/hub id),
the device and a run picker (an interrupted run picked there, one whose process died, gets
a Resume button). Pages read these choices through ``workbench.state``.

What it leaves out: the pages' content (one thin script per page in ``pages/``).

Run from the project root:

    streamlit run workbench/app.py
    RLHF_WORKBENCH_MODEL=tiny-random-llama streamlit run workbench/app.py   # fast, for trying things out
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run workbench/app.py` puts only workbench/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from workbench import components, limits, state  # noqa: E402

st.set_page_config(page_title="RLHF Workbench", page_icon=":material/science:", layout="wide")
# Less empty space above the title, so a page's main chart fits a 1280×800 screen.
st.html("<style>.block-container{padding-top:2.2rem;padding-bottom:2rem} h1{padding-top:0.2rem}</style>")

PAGES = [
    st.Page(ROOT / "pages" / "home.py", title="Home", icon=":material/home:", default=True),
    st.Page(ROOT / "pages" / "token_explorer.py", title="Token reward explorer", icon=":material/grid_on:", url_path="explorer"),
    st.Page(ROOT / "pages" / "training_curves.py", title="Training curves", icon=":material/show_chart:", url_path="curves"),
    st.Page(ROOT / "pages" / "reward_lab.py", title="Reward-weight lab", icon=":material/tune:", url_path="lab"),
    st.Page(ROOT / "pages" / "preference.py", title="Preference optimisation", icon=":material/balance:", url_path="preference"),
    st.Page(ROOT / "pages" / "feedback_studio.py", title="Feedback studio", icon=":material/rate_review:", url_path="feedback"),
]


def sidebar() -> None:
    """Model, device and run picker; the results land in st.session_state['frame_*']."""
    sb = st.sidebar
    sb.markdown("### Model")
    choices = state.model_choices()
    choice = sb.selectbox("Policy model", choices, index=choices.index(state.default_model()), key="frame_model_choice", format_func=state.model_label,
                          help="The tiny random Llama is for speed only: its text is gibberish. Finished runs appear by name, kind and time.")
    name = choice
    if choice == state.OTHER:
        name = sb.text_input("Model folder or hub id", key="frame_model_custom", placeholder="/path/to/model or owner/name").strip()
    problem = state.check_model(name) if name else "Type a model folder or hub id."
    if problem:
        sb.error(problem)
        sb.caption(f"Using the default '{state.default_model()}' until this is fixed.")
        name = state.default_model()
    st.session_state["frame_model_name"] = name
    sb.selectbox("Device", state.available_devices(), key="frame_device")

    sb.markdown("### Runs")
    runs = components.all_runs()
    paths = [str(r.path) for r in runs]
    labels = {str(r.path): components.picker_label(r) for r in runs}
    if not paths:
        st.session_state.pop("frame_run", None)
    elif st.session_state.get("frame_run") not in paths:
        st.session_state["frame_run"] = paths[0]  # set, not just defaulted: the browser then shows it too
    sb.selectbox(
        "Run", paths, key="frame_run", index=0 if paths else None, format_func=lambda p: labels.get(p, p),
        placeholder="no runs yet", help="Runs in the run store (RLHF_WORKBENCH_RUNS); the curves page shows this one first.",
    )
    sb.checkbox("show failed/empty runs", key=components.SHOW_HIDDEN_KEY,
                help="Failed runs and runs that logged no metric are left out of every run picker unless this is ticked.")
    picked = st.session_state.get("frame_run")
    if picked:
        run = components.open_run(picked)
        if run is not None:
            status = components.safe_status(run)
            if components.resumable(run, ("interrupted",)) is not None:  # its process died: say so, offer Resume
                components.resume_panel(run, "frame_resume", "frame_jobs", where=sb, states=("interrupted",))
            else:
                sb.caption(f"{status.get('status', '?')} · step {status.get('step', '?')}" + (f" · {status['error']}" if status.get("error") else ""))
    if sb.button("Reload models", help="Drop cached models (e.g. after retraining a reward model)."):
        st.cache_resource.clear()


_exposed = limits.exposure_problem(st.get_option("server.address"), st.context.headers.get("Host"),
                                   os.environ.get(limits.ALLOW_REMOTE_ENV))
if _exposed:  # a server reachable from other machines serves nothing but this message
    st.error(_exposed)
    st.stop()

navigation = st.navigation(PAGES)
with components.page_guard("the sidebar"):
    sidebar()
navigation.run()
