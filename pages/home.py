"""Home page: what each page of the workbench teaches, and where the notebooks are.

Thin on purpose: text, the notebooks found in ``notebooks/`` and the current choices.
Run with ``streamlit run workbench/app.py`` (this file is registered there).
"""

from pathlib import Path

import streamlit as st

from workbench import components, state

ROOT = Path(__file__).resolve().parent.parent
JUPYTER = "http://127.0.0.1:8888"  # JupyterLab's default address when started from the project root

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
                    return line.lstrip("# ").strip()
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
    if notebooks:
        st.markdown("\n".join(f"- [{_title(p)}]({JUPYTER}/lab/tree/notebooks/{p.name}) · `notebooks/{p.name}`" for p in notebooks))
    else:
        st.caption("No notebooks in notebooks/ yet.")
    st.caption(f"The links open in JupyterLab once it runs: `.venv/bin/jupyter lab --port 8888` from the project root "
               "(the order to read them in: `notebooks/README.md`).")
    st.caption(f"Model: `{state.current_model()}` · device: `{state.current_device()}` · change them in the sidebar.")
