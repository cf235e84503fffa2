"""Home page: what each page of the workbench teaches, and the notebooks (with a button that starts JupyterLab).

Thin on purpose: text, the notebooks found in ``notebooks/`` and the current choices.
Run with ``streamlit run workbench/app.py`` (this file is registered there).
"""

import re
from pathlib import Path

import streamlit as st

from workbench import components, jupyter, state

ROOT = Path(__file__).resolve().parent.parent

def _title(path: Path) -> str:
    """The first Markdown heading of a notebook, or its file name."""
    import json

    try:
        cells = json.loads(path.read_text()).get("cells", [])
    except (OSError, ValueError):
        return path.stem
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", [])).splitlines():
                if line.startswith("#"):
                    return re.sub(r"^(\d+)\. ", r"\1\\. ", line.lstrip("# ").strip())  # "1. x" stays text, not a list
    return path.stem


with components.page_guard("Home"):
    st.title("RLHF Workbench")
    st.markdown(
        """
Learn RLHF by taking it apart on a real small language model (SmolLM2-135M-Instruct, on your CPU).

| page | what it teaches |
| --- | --- |
| **Token reward explorer** | where a reward lands on the tokens: a holistic score on the last token, fine-grained (sentence/sub-sentence) rewards where each segment ends (Wu et al. 2023), a redistributed score spread over every token; how weights combine them. |
| **Training curves** | what PPO does step by step: reward components, KL to the reference, clip fraction, toxicity, perplexity and length; a rollout browser with per-token reward, KL, value and advantage. |
| **Reward-weight lab** | how the reward weights and the KL coefficient β steer a short PPO run, with before/after samples. |
| **Preference optimisation** | DPO vs SimPO: implicit rewards, margins and accuracy, and why SimPO's length normalisation changes which responses win. |
"""
    )
    st.subheader("Notebooks")
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    lab = jupyter.running()
    if not notebooks:
        st.caption("No notebooks in notebooks/ yet.")
    elif lab is None:
        if jupyter.exited():
            st.warning(jupyter.exited() + ". Start it again, or by hand with the command below.")
        st.markdown("\n".join(f"- {_title(p)} · `notebooks/{p.name}`" for p in notebooks))
        if st.button("Start JupyterLab", key="home_jupyter", help="Runs JupyterLab on 127.0.0.1 beside this app; the links appear here."):
            jupyter.start(ROOT / "notebooks")
            st.rerun()
    else:
        st.markdown("\n".join(f"- [{_title(p)}]({lab.url(p.name)}) · `notebooks/{p.name}`" for p in notebooks))
        st.caption(f"JupyterLab runs on 127.0.0.1:{lab.port} (started by this app; it stops with it)"
                   + ("" if lab.ready() else " — still starting: give it a few seconds before opening a link") + ".")
    st.caption(f"Or start it yourself from the project root: `{jupyter.COMMAND}` "
               "(the order to read the notebooks in: `notebooks/README.md`).")
    st.caption(f"Model: `{state.current_model()}` · device: `{state.current_device()}` · change them in the sidebar.")
