"""AppTest checks that pages work on their defaults and on awkward input: tiny data sets, long texts, failed runs.

The preference page must size its held-out split to the data (the demo set has 10 pairs),
1-pair and 2-pair uploads must train, failed and empty runs stay out of the pickers
unless asked for, charts label and colour runs readably, long texts get a message, and
Home starts JupyterLab. Tiny random Llama, throw-away run store, no browser.

    .venv/bin/python -m pytest tests/test_app_defaults.py -q
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from test_app import PAGES, _clean, _open  # noqa: E402  (the app tests' helpers: open a page, no errors)

# Short, but the held-out and train sizes are the page's own (no eval_size / train_size override).
SHORT = {"preference": {"num_steps": 1, "batch_size": 2, "max_length": 96, "max_prompt_length": 48,
                        "gradient_accumulation_steps": 1, "eval_every": 1, "save_every": 100, "num_samples": 1, "cpu": True}}


@pytest.fixture(autouse=True)
def _tiny_app(monkeypatch, tiny_model_path, tmp_path):
    monkeypatch.setenv("RLHF_WORKBENCH_MODEL", "tiny-random-llama")
    monkeypatch.setenv("RLHF_WORKBENCH_SHORT", json.dumps(SHORT))
    monkeypatch.delenv("RLHF_WORKBENCH_REWARD_MODELS", raising=False)
    try:
        from core.rewards import store
    except ImportError:
        return
    monkeypatch.setattr(store, "reward_models_dir", lambda: tmp_path / "no_reward_models")


def _train_and_wait(at: AppTest, kind: str, timeout: float = 120.0):
    from workbench.jobs import registry

    before = set(registry().jobs)
    at.button(key="pref_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    new = [j for i, j in registry().jobs.items() if i not in before and j.kind == kind]
    assert new, "the Run button started no job"
    registry().wait(new[-1], timeout)
    return new[-1]


def _upload(at: AppTest, pairs: list[dict]) -> None:
    body = "".join(json.dumps(p) + "\n" for p in pairs).encode()
    at.radio(key="pref_dataset").set_value("upload a .jsonl").run()
    at.file_uploader(key="pref_upload").set_value((f"{len(pairs)}-pairs.jsonl", body, "application/json")).run()


def _pairs(n: int) -> list[dict]:
    return [{"prompt": f"Question {i}: what is {i} + {i}?", "chosen": f"It is {2 * i}.", "rejected": "No idea, go away."}
            for i in range(n)]


# ----------------------------------------------------------------------------- 1. preference page defaults


def test_held_out_size_follows_the_data():
    from workbench.limits import preference_eval_size, preference_max_eval_size, preference_problem

    assert preference_eval_size(_pairs(10)) == 2  # a fifth of the demo set's 10 pairs
    assert preference_eval_size(_pairs(200)) == 16  # capped
    assert preference_eval_size(_pairs(2)) == 1 and preference_max_eval_size(_pairs(2)) == 1
    assert preference_eval_size(_pairs(1)) == 0 and preference_max_eval_size(_pairs(1)) == 0
    same_prompt = [dict(p, prompt="one prompt") for p in _pairs(3)]
    assert preference_max_eval_size(same_prompt) == 0  # one prompt: its pairs cannot be split
    assert preference_problem(_pairs(10), 10) and "at most 9" in preference_problem(_pairs(10), 10)
    assert preference_problem(_pairs(10), 2) is None
    assert preference_problem([], 0)


@pytest.mark.parametrize("algorithm", ["DPO", "SimPO"])
def test_preference_page_trains_on_its_defaults(algorithm):
    pytest.importorskip("core.trainers.dpo", reason="the DPO trainer is not in this checkout yet")
    at = _open("preference")
    _clean(at)
    assert at.radio(key="pref_dataset").value == "demo"
    at.radio(key="pref_algorithm").set_value(algorithm).run()
    held_out = [n for n in at.number_input if n.key.startswith("pref_eval_size")]
    assert len(held_out) == 1 and held_out[0].value == 2  # 10 demo pairs: 2 held out, 8 train
    job = _train_and_wait(at, algorithm.lower())
    assert job.state == "finished", job.error
    assert job.config.eval_size == 2
    at.run()
    _clean(at)


@pytest.mark.parametrize("n", [1, 2])
def test_preference_page_small_uploads_train(n):
    pytest.importorskip("core.trainers.dpo", reason="the DPO trainer is not in this checkout yet")
    at = _open("preference")
    _upload(at, _pairs(n))
    _clean(at)
    assert any(f"{n} pairs" in s.value for s in at.success)
    assert not at.button(key="pref_start").disabled
    held_out = [x for x in at.number_input if x.key.startswith("pref_eval_size")]
    if n == 1:
        assert not held_out and any("none is held out" in c.value for c in at.caption)
    else:
        assert held_out[0].max == 1 and held_out[0].value == 1
    job = _train_and_wait(at, "dpo")
    assert job.state == "finished", job.error
    at.run()
    _clean(at)
    at.button(key="pref_scatter_btn").click().run()  # the scatter has at most one held-out pair to score
    _clean(at)


# ----------------------------------------------------------------------------- 2. failed and empty runs


def _run(kind: str, config: dict, name: str, status: str = "finished", steps: int = 3, scale: float = 1.0):
    from core.runstore import Run

    run = Run.create(kind, config, name=name)
    for step in range(steps):
        run.log_metrics(step, {"rewards/margins": scale * step, "rewards/accuracies": 0.5, "loss": 0.69 - 0.01 * step})
    run.set_status(status, error="boom" if status == "failed" else None)
    time.sleep(1.05)  # folder names carry the second they were made: keep the order of creation
    return run


def test_failed_and_empty_runs_are_hidden_unless_asked_for():
    good = _run("dpo", {"beta": 0.1}, "DPO-b-0.1-0123abcd")
    empty = _run("dpo", {"beta": 0.2}, "DPO-b-0.2-1123abcd", steps=0)
    failed = _run("dpo", {"beta": 0.3}, "DPO-b-0.3-2123abcd", status="failed")  # the newest
    at = _open("preference")
    _clean(at)
    compare = at.multiselect(key="pref_compare")
    assert compare.options == [components_label(good)] and compare.value == [str(good.path)]
    sidebar = at.sidebar.selectbox(key="frame_run")
    assert sidebar.value == str(good.path) and len(sidebar.options) == 1
    at.sidebar.checkbox(key="frame_show_hidden").check().run()
    assert len(at.multiselect(key="pref_compare").options) == 3
    assert at.multiselect(key="pref_compare").value == [str(good.path)]  # the default never moves to a failed run
    assert len(at.sidebar.selectbox(key="frame_run").options) == 3
    assert any(o.endswith("failed") for o in at.sidebar.selectbox(key="frame_run").options), (empty, failed)
    at.sidebar.checkbox(key="frame_show_hidden").uncheck().run()
    at.switch_page(PAGES["training_curves"]).run()
    _clean(at)
    assert at.multiselect(key="curves_runs").value == [str(good.path)]


def components_label(run) -> str:
    from workbench.components import label_for_path

    return label_for_path(run.path)  # what the pickers show


def test_sidebar_shows_a_run_that_appears_after_the_page_opened():
    at = _open("home")
    assert at.sidebar.selectbox(key="frame_run").value is None
    run = _run("ppo", {"weights": "toxicity=1", "kl_coef": 0.05}, "lab-toxicity=1-=0.05-e7de7992")
    at.run()
    assert at.session_state["frame_run"] == str(run.path)
    assert at.sidebar.selectbox(key="frame_run").value == str(run.path)
    assert any("finished" in c.value for c in at.sidebar.caption)


# ----------------------------------------------------------------------------- 3. charts a newcomer can read


def test_run_labels_are_readable():
    from workbench.components import run_label

    lab = _run("ppo", {"weights": "toxicity=1,toxicity_sentence=0.5", "kl_coef": 0.05}, "lab-toxicity=1-=0.05-e7de7992", steps=1)
    label = run_label(lab)
    assert label.startswith("PPO toxicity×1 toxicity_sentence×0.5 β=0.05 · ") and label.endswith(" · finished"), label
    assert "-0.05" not in label and "e7de7992" not in label and lab.path.name not in label
    named = _run("dpo", {"beta": 0.1, "label_smoothing": 0.1, "loss_type": "dpo"}, "baseline-0123abcd", steps=1)
    assert run_label(named, status=False).startswith("baseline (DPO β=0.1 ε=0.1) · ")
    simpo = _run("simpo", {"beta": 2.0, "gamma_beta_ratio": 0.5}, "SimPO-b-2-0123abcd", steps=1)
    assert run_label(simpo).startswith("SimPO β=2 γ/β=0.5 · ")


def test_one_colour_per_run_on_every_chart_and_separate_axes_for_dpo_and_simpo():
    dpo = _run("dpo", {"beta": 0.1}, "DPO-0123abcd", scale=0.01)
    simpo = _run("simpo", {"beta": 2.0, "gamma_beta_ratio": 0.5}, "SimPO-0123abcd", scale=2.0)
    at = _open("preference")
    at.multiselect(key="pref_compare").set_value([str(dpo.path), str(simpo.path)]).run()
    _clean(at)
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if "cmp" in c.proto.id]
    assert len(figs) == 3  # margins, accuracies, loss
    colours = [{t["name"]: t["line"]["color"] for t in f["data"]} for f in figs]
    assert all(c == colours[0] for c in colours) and len(set(colours[0].values())) == 2
    margins = next(f for f in figs if f["layout"]["title"]["text"] == "rewards/margins")
    assert {t.get("yaxis", "y") for t in margins["data"]} == {"y", "y2"}  # 0.01 vs 2: an axis each
    accuracies = next(f for f in figs if f["layout"]["title"]["text"] == "rewards/accuracies")
    assert {t.get("yaxis", "y") for t in accuracies["data"]} == {"y"}  # same scale: one axis
    assert any("DPO β=0.1" in m.value and "SimPO β=2" in m.value for m in at.markdown)  # one colour key above the charts
    assert any(c.value.startswith("Not logged by these runs:") and "eval/rewards/margins" in c.value for c in at.caption)


def test_curves_legend_sits_above_the_plot():
    from workbench import charts

    fig = charts.curves({"a": [(0, 1.0), (1, 2.0)], "b": [(0, 1.5), (1, 2.5)]}, "objective/kl", names={"a": "run A", "b": "run B"})
    assert fig.layout.legend.orientation == "h" and fig.layout.legend.y > 1 and fig.layout.legend.yanchor == "bottom"
    assert fig.layout.margin.t >= 36 + 2 * 22  # room for the legend between the title and the plot
    heat = charts.token_heatmap(["a", "b"], {"x": [1.0, 2.0]}, per_row_scale=True)
    assert heat.data[0].colorbar.title.side == "right"


# ----------------------------------------------------------------------------- 4. long inputs


def _type_own(at: AppTest, prompt: str, response: str) -> None:
    at.radio(key="explorer_source").set_value("Type your own").run()
    at.text_area(key="explorer_prompt").set_value(prompt).run()
    at.text_area(key="explorer_response").set_value(response).run()


def test_explorer_refuses_a_20000_character_response_at_once():
    from workbench.limits import MAX_RESPONSE_CHARS

    at = _open("token_explorer")
    _type_own(at, "Say something.", "Fine.")
    start = time.perf_counter()
    at.text_area(key="explorer_response").set_value(("This is a long sentence about nothing. " * 520)[:20_000]).run()
    elapsed = time.perf_counter() - start
    assert not at.exception
    assert any(f"at most {MAX_RESPONSE_CHARS:,}" in e.value for e in at.error), [e.value for e in at.error]
    assert not list(at.get("plotly_chart"))
    assert elapsed < 5, elapsed  # a message, not minutes of scoring and drawing
    at.text_area(key="explorer_prompt").set_value("x" * 20_000).run()
    assert any("The prompt has 20,000 characters" in e.value for e in at.error)


def test_explorer_long_response_gets_index_axis_and_coloured_text():
    from workbench.limits import TOKEN_LABELS_UP_TO

    at = _open("token_explorer")
    _type_own(at, "Say something.", "It is a damn fine day. " * 40)  # ~240 tokens
    _clean(at)
    heat = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert len(heat["data"][0]["x"]) > TOKEN_LABELS_UP_TO
    assert "ticktext" not in heat["layout"].get("xaxis", {})  # no per-token labels: indices, the token on hover
    assert any("rgba(" in m.value for m in at.markdown)  # the coloured-text view of the response


def test_token_heatmap_for_1000_tokens_builds_fast():
    import random

    from workbench import charts

    tokens = [f" w{i}" for i in range(1000)]
    rows = {n: [random.uniform(-1, 1) for _ in tokens] for n in ("toxicity", "toxicity_sentence", "total (weighted)")}
    start = time.perf_counter()
    fig = charts.token_heatmap(tokens, rows)
    fig.to_json()  # what Streamlit sends to the browser
    charts.coloured_text_html(tokens, rows["total (weighted)"])
    assert time.perf_counter() - start < 2.0
    assert fig.layout.xaxis.ticktext is None


# ----------------------------------------------------------------------------- 5. Home: notebooks


def test_home_starts_jupyterlab_on_localhost_and_links_to_it(monkeypatch):
    from workbench import jupyter

    started = []

    class FakeProcess:
        def __init__(self, command, **kwargs):
            started.append((command, kwargs))

        def poll(self):
            return None

        def terminate(self):
            pass

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(jupyter.subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(jupyter, "_LAB", None)
    at = _open("home")
    _clean(at)
    assert any(jupyter.COMMAND in c.value for c in at.caption)
    assert not any("127.0.0.1:8888" in m.value for m in at.markdown)  # no links to a server nobody started
    at.button(key="home_jupyter").click().run()
    _clean(at)
    assert len(started) == 1
    command = started[0][0]
    assert command[1:4] == ["-m", "jupyter", "lab"] and "--ServerApp.ip=127.0.0.1" in command
    lab = jupyter.running()
    links = [m.value for m in at.markdown if lab.url("") .split("?")[0] in m.value]
    assert links and f"?token={lab.token}" in links[0] and ".ipynb" in links[0]
    monkeypatch.setattr(jupyter, "_LAB", None)


# ----------------------------------------------------------------------------- 3. progress of long phases


def _job_panel_script():
    import os
    from pathlib import Path

    from workbench import components
    from workbench.jobs import Job

    class Running:  # a training process that is still going
        returncode = None

        def poll(self):
            return None

    job = Job(id="t", kind="dpo", label="DPO β=0.1", config=None, run_path=Path(os.environ["PANEL_RUN"]), process=Running())
    components.job_status(job, "t_job", "t_jobs")


def test_job_panel_names_the_long_phase_and_its_progress(tmp_path, monkeypatch):
    from core.runstore import Run

    run = Run.create("dpo", {"beta": 0.1}, root=tmp_path)
    monkeypatch.setenv("PANEL_RUN", str(run.path))
    run.set_status("running", step=0, phase="reference pass", phase_done=37, phase_total=120)
    at = AppTest.from_function(_job_panel_script, default_timeout=30).run()
    _clean(at)
    bars = [p.proto.text for p in at.get("progress")]
    assert any("step 0/" in b for b in bars) and "reference pass 37/120" in bars
    assert [p.proto.value for p in at.get("progress") if p.proto.text == "reference pass 37/120"] == [30]  # percent
    run.set_status("running", phase="loading the model", phase_done=None, phase_total=None)
    at.run()
    assert any(c.value == "loading the model…" for c in at.caption)
    run.set_status("running", step=1, phase=None, phase_done=None, phase_total=None)  # a logged step ends the phase
    at.run()
    assert [p.proto.text for p in at.get("progress") if "reference" in p.proto.text] == []
    assert not any("…" in c.value for c in at.caption)
