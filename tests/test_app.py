"""AppTest checks of every workbench page (headless, no browser): renders, widgets, short runs, bad input.

Runs the real ``workbench/app.py`` frame with the tiny random Llama (``RLHF_WORKBENCH_MODEL``)
and a very short training config (``RLHF_WORKBENCH_SHORT``), in a throw-away run store.

    .venv/bin/python -m pytest tests/test_app.py -q
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "workbench" / "app.py")
PAGES = {name: str(ROOT / "pages" / f"{name}.py") for name in ("home", "token_explorer", "training_curves", "reward_lab", "preference")}
SHORT = {
    # the lab's own held-out evaluation (eval_prompts, eval_every) is kept: its charts ask for eval/toxicity
    "ppo": {"num_iterations": 2, "num_prompts": 2, "batch_size": 2, "minibatch_size": 2, "max_new_tokens": 6,
            "eval_samples_k": 1, "ppo_epochs": 1, "save_every": 0, "prompts": "demo"},
    "preference": {"train_size": 8, "eval_size": 4, "num_steps": 2, "batch_size": 2, "max_length": 96,
                   "max_prompt_length": 48, "gradient_accumulation_steps": 1, "eval_every": 1, "save_every": 100,
                   "num_samples": 1, "cpu": True},
}


@pytest.fixture(autouse=True)
def _tiny_app(monkeypatch, tiny_model_path, tmp_path):
    monkeypatch.setenv("RLHF_WORKBENCH_MODEL", "tiny-random-llama")
    monkeypatch.setenv("RLHF_WORKBENCH_SHORT", json.dumps(SHORT))
    monkeypatch.delenv("RLHF_WORKBENCH_REWARD_MODELS", raising=False)
    try:  # an empty reward-model store: the tests must not depend on (or wait for) RMs in the user's cache
        from core.rewards import store
    except ImportError:
        return
    monkeypatch.setattr(store, "reward_models_dir", lambda: tmp_path / "no_reward_models")


def _open(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    if page != "home":
        at.switch_page(PAGES[page])
        at.run()
    return at


def _clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _charts(at: AppTest) -> list:
    return list(at.get("plotly_chart"))


def _wait_for_job(kind: str, timeout: float = 90.0):
    from workbench.jobs import registry

    job = next(j for j in reversed(list(registry().jobs.values())) if j.kind == kind)
    registry().wait(job, timeout)
    assert not job.alive, f"the {kind} job did not finish within {timeout} s"
    return job


def test_home_and_frame():
    at = _open("home")
    _clean(at)
    assert at.title[0].value == "RLHF Workbench"
    assert at.sidebar.selectbox(key="frame_model_choice").value == "tiny-random-llama"
    assert at.sidebar.selectbox(key="frame_device") is not None
    assert at.session_state["frame_model_name"] == "tiny-random-llama"


def test_frame_bad_model_shows_message_and_keeps_working():
    at = _open("home")
    at.sidebar.selectbox(key="frame_model_choice").set_value("other (type a path or hub id)").run()
    at.sidebar.text_input(key="frame_model_custom").set_value("/no/such/model/folder").run()
    assert not at.exception
    assert any("not found" in e.value for e in at.sidebar.error)
    assert at.session_state["frame_model_name"] == "tiny-random-llama"  # falls back to the default


def test_explorer_renders_and_sliders_recombine_without_rescoring():
    at = _open("token_explorer")
    _clean(at)
    assert at.radio(key="explorer_source").value == "Demo set"
    sliders = {s.key: s for s in at.slider}
    assert {"explorer_w_toxicity", "explorer_w_toxicity_sentence"} <= set(sliders)
    assert len(_charts(at)) == 1
    assert at.session_state["explorer_score_calls"] == 1
    before = list(at.session_state["explorer_last_total"])
    tox = at.session_state["explorer_token_rewards"]
    tr = next(iter(tox.values()))
    for key in sliders:  # the shipped reward models have sliders too: only toxicity_sentence stays on
        if key != "explorer_w_toxicity_sentence":
            at.slider(key=key).set_value(0.0).run()
    at.slider(key="explorer_w_toxicity_sentence").set_value(2.0).run()
    _clean(at)
    after = list(at.session_state["explorer_last_total"])
    assert at.session_state["explorer_score_calls"] == 1  # the sliders never re-ran a scorer
    expected = (2.0 * tr.components["toxicity_sentence"][0][tr.mask[0].bool()]).tolist()
    assert after == pytest.approx(expected)
    assert after != pytest.approx(before) or not any(before)
    # the demo answer's human span (Irrelevant, C1) is underlined on exactly its tokens in the coloured text
    marks, tokens = at.session_state["explorer_text_marks"], [tr.texts[0][a:b] for a, b in tr.token_spans[0]]
    on = [i for i, m in enumerate(marks) if m]
    assert "".join(tokens[i] for i in on).strip() == "My grandmother baked bread every Sunday, and she always sang while kneading."
    assert on == list(range(on[0], on[-1] + 1))
    html = next(m.value for m in at.markdown if "data-span=" in m.value)
    assert html.count('data-span="Irrelevant (C1)"') == len(on)


def test_span_marks_put_each_human_span_on_the_tokens_it_overlaps():
    from workbench import charts, components

    token_spans = [(0, 3), (3, 8), (8, 12), (12, 15)]
    spans = [{"start": 4, "end": 9, "label": "Irrelevant (C1)", "title": "off topic"},
             {"start": 14, "end": 20, "label": "Unverifiable (C2)", "title": "Unverifiable (C2)"}]
    marks = components.span_marks(token_spans, spans)
    assert marks == [[], [("#d97706", "Irrelevant (C1): off topic")], [("#d97706", "Irrelevant (C1): off topic")],
                     [("#ea580c", "Unverifiable (C2)")]]
    html = charts.coloured_text_html(["The", " cat ", "sat ", "on."], [0.0, -0.5, 0.0, 0.0], bound=1.0, marks=marks)
    assert html.count("border-bottom:3px solid #d97706") == 2 and html.count("border-bottom") == 3
    assert 'title="-0.5 · Irrelevant (C1): off topic"' in html  # the value and the category on one hover
    assert 'title="Irrelevant (C1): off topic"' in html  # a token with no reward keeps its span
    assert html.startswith('<div style="line-height:1.7;white-space:pre-wrap">The<span')


def test_explorer_bad_inputs():
    at = _open("token_explorer")
    at.radio(key="explorer_source").set_value("Type your own").run()
    at.text_area(key="explorer_prompt").set_value("   ").run()
    assert not at.exception
    assert any("prompt is empty" in w.value for w in at.warning)
    at.text_area(key="explorer_prompt").set_value("Say something.").run()
    at.text_area(key="explorer_response").set_value("word " * 1100).run()  # under the character limit, over the context
    assert not at.exception
    assert any("reads at most" in e.value for e in at.error)


def test_explorer_samples_from_the_policy():
    at = _open("token_explorer")
    at.radio(key="explorer_source").set_value("Sample from the policy").run()
    at.slider(key="explorer_sample_tokens").set_value(8).run()
    at.button(key="explorer_sample_btn").click().run()
    _clean(at)
    model, prompt, response = at.session_state["explorer_sampled"]
    assert model == "tiny-random-llama" and prompt
    if response.strip():  # a random model may sample only special tokens
        assert len(_charts(at)) == 1


def test_job_survives_reruns_page_switches_and_a_second_tab_then_stops(monkeypatch):
    """A training started from one session runs in its own process while sessions rerun and switch pages;
    other tabs see it; its Stop button ends it cleanly (status "stopped", a checkpoint, a Resume button)."""
    import os
    import time

    from core.runstore import Run
    from workbench import training
    from workbench.jobs import registry

    tab1 = _open("reward_lab")
    # long enough to be stopped even on an idle machine (RLHF_WORKBENCH_SHORT's 2 iterations would win over an argument)
    monkeypatch.setenv("RLHF_WORKBENCH_SHORT", json.dumps({**SHORT, "ppo": {**SHORT["ppo"], "num_iterations": 200}}))
    config = training.short_ppo("tiny-random-llama", {"toxicity": 1.0}, 0.05, cpu=True)
    job = registry().start("ppo", config, label="long lab run")
    try:
        tab1.session_state["lab_jobs"] = [job.id]
        tab1.run()
        _clean(tab1)
        assert tab1.button(key="lab_start").disabled  # one training at a time
        tab2 = _open("reward_lab")  # a second browser tab: another session, same server
        assert tab2.button(key="lab_start").disabled
        assert any("long lab run" in c.value for c in tab2.caption)
        tab1.switch_page(PAGES["training_curves"]).run()
        tab1.switch_page(PAGES["reward_lab"]).run()
        assert job.alive and job.process.pid != os.getpid()
        deadline = time.time() + 120
        while job.alive and (job.last_step or 0) < 1 and time.time() < deadline:
            time.sleep(0.2)
        tab1.run()
        tab1.button(key=f"lab_job_stop_{job.id}").click().run()
        assert job.state == "stopping"
        registry().wait(job, 120)
    finally:
        if job.alive:
            job.process.kill()
    run = Run.open(job.run_path)
    assert job.state == "stopped" and run.status()["status"] == "stopped", job.error
    assert run.latest_checkpoint() is not None and run.latest_checkpoint()[0] == run.status()["step"] >= 1
    assert run.meta["name"] == "long lab run"
    tab2.run()
    _clean(tab2)
    assert not tab2.button(key="lab_start").disabled
    tab1.run()
    _clean(tab1)
    assert not tab1.button(key=f"lab_job_resume_{job.id}").disabled


def test_curves_page_with_runs_and_deleted_folder():
    from core.runstore import Run

    at = _open("training_curves")
    _clean(at)
    assert any("No runs yet" in i.value for i in at.info)
    run = Run.create("ppo", {"rewards": "toxicity"}, name="fake")
    for step in range(3):
        run.log_metrics(step, {"objective/scores": -0.1 * step, "objective/kl": 0.01 * step, "rewards/toxicity": -0.2})
    run.log_samples(2, [{"prompt": "p", "response": "a b", "tokens": ["a", " b"],
                         "per_token": {"toxicity": [0.0, -0.2], "kl": [0.01, 0.02], "value": [0.1, 0.2], "advantage": [0.3, -0.1]}}])
    run.set_status("finished")
    at = _open("training_curves")
    _clean(at)
    assert at.multiselect(key="curves_runs").value == [str(run.path)]
    keys = [c.proto.id for c in _charts(at)]
    assert len(keys) >= 4  # 3 metric curves + the rollout heatmap
    shutil.rmtree(run.path)
    at.run()
    assert not at.exception
    assert at.warning, "a deleted run folder must give a message"


def test_reward_lab_short_ppo_completes_and_curves_appear():
    pytest.importorskip("core.trainers.ppo", reason="the PPO trainer is not in this checkout yet")
    at = _open("reward_lab")
    _clean(at)
    assert at.slider(key="lab_beta").value == pytest.approx(0.05)
    assert at.slider(key="lab_w_toxicity") is not None
    at.button(key="lab_start").click().run()
    assert not at.exception
    job = _wait_for_job("ppo", timeout=240)  # a loaded 2-core machine: process start, 2 iterations, 2 evaluations
    assert job.state == "finished", job.error
    assert job.run_path is not None and (job.run_path / "metrics.jsonl").is_file()
    at.run()
    _clean(at)
    assert _charts(at), "the curves of the finished run must appear"
    assert any("finished" in p.proto.text for p in at.get("progress"))
    # held-out toxicity and perplexity before the first and after the last iteration (the lab's charts ask for them)
    from core.runstore import Run

    config = Run.open(job.run_path).config
    from core.paths import shared_data_dir

    held_out = 4 if shared_data_dir().is_dir() else 2  # Davidson openings with the real data, else 2 of the 8 demo prompts
    assert (config["eval_prompts"], config["eval_every"], config["num_iterations"]) == (held_out, 2, 2)
    evals = {r["step"]: r for r in Run.open(job.run_path).metrics() if "eval/toxicity" in r}
    assert sorted(evals) == [0, 2] and all(0 < evals[s]["eval/perplexity"] < float("inf") for s in evals)
    drawn = {json.loads(c.proto.spec)["layout"]["title"]["text"]: json.loads(c.proto.spec) for c in _charts(at)}
    assert {"eval/toxicity", "eval/perplexity"} <= set(drawn), (sorted(drawn))
    assert all(len(drawn[m]["data"][0]["x"]) == 2 for m in ("eval/toxicity", "eval/perplexity"))  # start and end


def test_preference_page_upload_validation_and_short_dpo():
    pytest.importorskip("core.trainers.dpo", reason="the DPO trainer is not in this checkout yet")
    at = _open("preference")
    _clean(at)
    assert at.radio(key="pref_algorithm").value == "DPO"
    at.radio(key="pref_dataset").set_value("upload a .jsonl").run()
    at.file_uploader(key="pref_upload").set_value(("bad.jsonl", b"this is not json\n", "application/json")).run()
    assert not at.exception
    assert any("not usable" in e.value for e in at.error)
    at.file_uploader(key="pref_upload").set_value(("nofields.jsonl", b'{"prompt": "hi"}\n', "application/json")).run()
    assert any("chosen" in e.value for e in at.error)
    at.radio(key="pref_dataset").set_value("demo").run()
    _clean(at)
    at.button(key="pref_start").click().run()
    assert not at.exception
    job = _wait_for_job("dpo")
    assert job.state == "finished", job.error
    at.run()
    _clean(at)
    assert _charts(at)
    at.button(key="pref_scatter_btn").click().run()
    _clean(at)
    scatter = [c for c in _charts(at) if "scatter" in c.proto.id]
    assert scatter


def test_explorer_shows_learned_and_redistributed_reward_models(tmp_path, monkeypatch, tiny_model_path):
    """A reward model saved in the store appears as a row, and as a redistributed (token-level) row."""
    store = pytest.importorskip("core.rewards.store", reason="the reward-model store is not in this checkout yet")
    from core.models import load_reward_model, load_tokenizer

    rm = load_reward_model(str(tiny_model_path), device="cpu")
    store.save_reward_model(rm, load_tokenizer(str(tiny_model_path)), {"kind": "preference", "category": None, "level": "sequence"},
                            tmp_path / "rms" / "tiny-hh")
    monkeypatch.setattr(store, "reward_models_dir", lambda: tmp_path / "rms")
    at = _open("token_explorer")
    _clean(at)
    names = at.multiselect(key="explorer_components").value
    assert "tiny_hh" in names and "tiny_hh_redistributed" in names, names
    tr = next(iter(at.session_state["explorer_token_rewards"].values()))
    red, holistic = tr.components["tiny_hh_redistributed"][0], tr.components["tiny_hh"][0]
    assert (red != 0).sum() > 1  # spread over tokens, while the holistic score sits on the last token only
    assert (holistic != 0).sum() <= 1


def test_context_cuts_names_the_components_that_cannot_read_everything(monkeypatch):
    """The explorer names each chosen component whose context_cut says it cannot read the whole pair."""
    from workbench import scoring

    class Reads:
        def __init__(self, limit):
            self.limit = limit

        def context_cut(self, prompts, responses):
            return [len(p) + len(r) > self.limit for p, r in zip(prompts, responses)]

    built = {"short": Reads(10), "long": Reads(10_000), "plain": object()}
    monkeypatch.setattr(scoring, "build_component", lambda name, source, ref="": built[name])
    infos = [scoring.ComponentInfo(name=n, source="store", ref="", label=n, level="sequence") for n in built]
    assert scoring.context_cuts("a prompt", "a response", infos) == ["short"]
    assert scoring.context_cuts("p", "r", infos) == []
