"""Colour scales that do not make noise look like signal (core.rewards.scales, workbench.charts)."""

from __future__ import annotations

import re

import pytest

from core.rewards.scales import colour_scale, weighted_scale
from workbench import charts


def _alphas(html: str) -> list[float]:
    return [float(a) for a in re.findall(r"rgba\([0-9,]+,([0-9.]+)\)", html)]


def test_a_small_toxicity_on_a_harmless_sentence_is_drawn_near_neutral():
    tokens = ["The", " cat", " sat", " on", " the", " mat", "."]
    tox = [0.0] * 6 + [-0.01]  # -p(toxic) on the last token
    html = charts.coloured_text_html(tokens, tox, bound=colour_scale("toxicity"))
    assert _alphas(html) == [pytest.approx(0.0085, abs=1e-3)]  # 1 % of full colour, not the darkest red
    stretched = charts.coloured_text_html(tokens, tox)  # the old behaviour, scaled to the data: full colour
    assert _alphas(stretched) == [pytest.approx(0.85)]
    # a clearly toxic sentence is drawn strongly on the same scale
    assert _alphas(charts.coloured_text_html(tokens, [0.0] * 6 + [-0.9], bound=1.0)) == [pytest.approx(0.765)]
    # the heatmap too: the toxicity row keeps its stated scale, so -0.01 maps to -0.01 of the colour range
    fig = charts.token_heatmap(tokens, {"toxicity": tox}, scales={"toxicity": 1.0})
    assert fig.data[0].z[0][-1] == pytest.approx(-0.01) and (fig.data[0].zmin, fig.data[0].zmax) == (-1.0, 1.0)
    assert fig.data[0].customdata[0][-1][1] == "-0.01"  # hover keeps the exact value


def test_stated_scales_per_kind_and_the_weighted_total():
    assert colour_scale("toxicity") == 1.0 and colour_scale("toxicity_sentence") == 1.0 and colour_scale("my_fn") is None
    assert colour_scale("c1", {"kind": "finegrained", "positive_reward": 0.5, "negative_reward": -2.0}) == 2.0
    assert colour_scale("hh", {"kind": "preference"}) == 2.0
    assert colour_scale("hh_red", {"kind": "preference"}, redistributed=True) == 0.5
    scales = {"toxicity": 1.0, "hh": 2.0, "my_fn": None}
    assert weighted_scale({"toxicity": -1.0, "hh": 0.5, "my_fn": 0.0}, scales) == 2.0
    assert weighted_scale({"my_fn": 1.0}, scales) is None and weighted_scale({"hh": 0.0}, scales) is None


def test_heatmap_rows_on_their_own_scale_are_clipped_and_unscaled_rows_fall_back_to_their_max():
    fig = charts.token_heatmap(["a", "b"], {"hh": [1.0, 5.0], "fn": [0.5, -2.0]}, scales={"hh": 2.0, "fn": None})
    assert list(fig.data[0].z[0]) == [0.5, 1.0]  # 5 / 2 clipped to 1
    assert list(fig.data[0].z[1]) == [0.25, -1.0]


def test_coloured_text_marks_segment_ends_and_escapes_text():
    html = charts.coloured_text_html(["<b>", " ok", "."], [0.0, 0.5, 0.0], bound=1.0, segment_ends={2})
    assert "&lt;b&gt;" in html and 'title="0.5"' in html
    assert html.count("border-right") == 1 and re.search(r'border-right[^>]*>\.</span>', html)


def test_explorer_colours_the_text_of_any_length_by_a_chosen_row(monkeypatch, tiny_model_path, tmp_path):
    pytest.importorskip("streamlit")
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from core.rewards import store

    monkeypatch.setenv("RLHF_WORKBENCH_MODEL", "tiny-random-llama")
    monkeypatch.setattr(store, "reward_models_dir", lambda: tmp_path / "no_reward_models")
    root = Path(__file__).resolve().parent.parent
    at = AppTest.from_file(str(root / "workbench" / "app.py"), default_timeout=120)
    at.run()
    at.switch_page(str(root / "pages" / "token_explorer.py")).run()
    assert not at.exception, [e.value for e in at.exception]
    pick = at.selectbox(key="explorer_text_row")
    assert pick.value == "total (weighted)" and "toxicity" in pick.options  # a short demo response gets it too
    weights = {s.key.removeprefix("explorer_w_"): s.value for s in at.slider if s.key.startswith("explorer_w_")}
    assert weights["toxicity"] == 1.0
    pick.set_value("toxicity").run()
    assert at.session_state["explorer_text_bound"] == 1.0
    assert any("full colour at |value| ≥ 1" in c.value for c in at.caption)
