"""AppTest checks of the reward-weight lab's preview and paired before/after table (tiny model, throw-away store).

    .venv/bin/python -m pytest tests/test_lab_page.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "workbench" / "app.py")
LAB = str(ROOT / "pages" / "reward_lab.py")
SHORT = {"ppo": {"num_iterations": 2, "num_prompts": 2, "batch_size": 2, "minibatch_size": 2, "max_new_tokens": 6,
                 "eval_prompts": 3, "eval_every": 2, "eval_samples_k": 1, "ppo_epochs": 1, "save_every": 0,
                 "prompts": "demo", "cpu": True}}


@pytest.fixture(autouse=True)
def _tiny_lab(monkeypatch, tiny_model_path, tmp_path):
    from core.rewards import store
    from core.trainers.rewards_setup import RewardSpec
    from workbench import training

    monkeypatch.setenv("RLHF_WORKBENCH_MODEL", "tiny-random-llama")
    monkeypatch.setenv("RLHF_WORKBENCH_SHORT", json.dumps(SHORT))
    monkeypatch.setenv("RLHF_WORKBENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(store, "reward_models_dir", lambda: tmp_path / "no_reward_models")
    # the three profanity-check components only: fast, and enough to show two weights disagree
    monkeypatch.setattr(training, "ppo_reward_specs",
                        lambda: {n: RewardSpec("toxicity", n) for n in ("toxicity", "toxicity_sentence", "toxicity_token")})


def _open() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page(LAB).run()
    return at


def _clean(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_preview_samples_once_then_reranks_at_every_slider_move():
    at = _open()
    _clean(at)
    assert "lab_preview_bank" not in at.session_state  # nothing sampled before the button
    at.button(key="lab_preview_start").click().run()
    _clean(at)
    bank = at.session_state["lab_preview_bank"]
    assert bank.totals.shape[:2] == (4, 4) and bank.names == ["toxicity", "toxicity_sentence", "toxicity_token"]
    assert at.session_state["lab_preview_best"] == bank.totals[:, :, 0].argmax(1).tolist()  # w_toxicity = 1, the rest 0
    assert any(c.value.startswith("Best of 4") for c in at.caption)
    at.slider(key="lab_w_toxicity").set_value(0.0).run()
    at.slider(key="lab_w_toxicity_sentence").set_value(2.0).run()
    _clean(at)
    assert at.session_state["lab_preview_bank"] is bank  # no new sampling or scoring
    assert at.session_state["lab_preview_best"] == bank.totals[:, :, 1].argmax(1).tolist()


def test_a_preset_sets_the_sliders_and_beta_and_says_what_to_expect():
    at = _open()
    at.slider(key="lab_w_toxicity_sentence").set_value(1.5).run()
    at.selectbox(key="lab_preset").select("detox").run()
    _clean(at)
    assert [at.slider(key=f"lab_w_{n}").value for n in ("toxicity", "toxicity_sentence", "toxicity_token")] == [0.0, 0.0, 1.0]
    assert at.slider(key="lab_beta").value == 0.02
    assert any(c.value.startswith("Expected: toxicity_token") and "prompts=rude-openings" in c.value for c in at.caption)
    at.selectbox(key="lab_preset").select("qa-relevance").run()  # its C1/C3 heads are not offered here
    assert any("does not offer finegrained_c1, preference_c3" in w.value for w in at.warning)


def _fake_run(tmp_path_runs: Path):
    from core.runstore import Run

    run = Run.create("ppo", {"weights": "toxicity=1", "rewards": "toxicity", "kl_coef": 0.05}, name="lab toxicity=1",
                     root=tmp_path_runs)
    before = [{"prompt": f"p{i}", "response": "x", "length": 5, "totals": {"toxicity": -0.5}} for i in range(4)]
    after = [{"prompt": f"p{i}", "response": "y", "length": 6 + i % 2, "kl": 0.1 * (i + 1),
              "totals": {"toxicity": -0.1 + 0.01 * i}} for i in range(4)]
    run.log_eval_samples(0, before)
    run.log_eval_samples(3, after)
    for step in (0, 3):
        run.log_metrics(step, {"objective/scores": 0.0})
    run.set_status("finished")
    return run


def test_paired_table_of_a_finished_run_with_its_verdict(tmp_path):
    from core.paths import runs_dir

    _fake_run(runs_dir())
    at = _open()
    _clean(at)
    table = at.dataframe[0].value
    rows = {r["metric"]: r for r in table.to_dict("records")}
    assert set(rows) == {"toxicity", "kl", "length"}
    assert rows["toxicity"]["Δ (after − before)"] == pytest.approx(0.415) and rows["toxicity"]["beyond the noise"] == "yes"
    assert rows["kl"]["before"] == 0.0 and rows["kl"]["after"] == pytest.approx(0.25)
    assert rows["length"]["beyond the noise"] == "yes"  # 5 -> 6.5 +- small
    assert any("On 4 held-out prompts, toxicity rose by 0.415" in m.value for m in at.markdown)


def test_two_runs_final_policies_pair_by_prompt(tmp_path):
    """Wu et al.'s customisation experiment in the app: one run's final policy against another's on the same prompts."""
    from core.paths import runs_dir
    from core.runstore import Run

    first = _fake_run(runs_dir())
    second = Run.create("ppo", {"weights": "toxicity=0.5", "rewards": "toxicity", "kl_coef": 0.05, "seed": 1},
                        name="lab toxicity=0.5", root=runs_dir())
    second.log_eval_samples(0, [{"prompt": f"p{i}", "response": "x", "length": 5, "totals": {"toxicity": -0.5}} for i in range(5)])
    second.log_eval_samples(3, [{"prompt": f"p{i}", "response": "z", "length": 9 + i % 2, "kl": 0.0,
                                 "totals": {"toxicity": -0.3}} for i in range(5)])  # p4: not held out by the first run
    second.log_metrics(3, {"objective/scores": 0.0})
    second.set_status("finished")
    at = _open()
    at.selectbox(key="lab_paired_run").select(str(second.path)).run()
    at.selectbox(key="lab_paired_against").select(str(first.path)).run()
    _clean(at)
    rows = {r["metric"]: r for r in at.dataframe[-1].value.to_dict("records")}
    assert rows["length"]["prompts"] == 4  # the prompts both runs held out
    assert rows["length"]["Δ (this run − other run)"] == pytest.approx(9.5 - 6.5) and rows["length"]["beyond the noise"] == "yes"
    assert rows["toxicity"]["other run"] == pytest.approx(-0.085) and rows["toxicity"]["this run"] == pytest.approx(-0.3)
    assert any(m.value.startswith("Against ") and "On 4 held-out prompts" in m.value for m in at.markdown)
    assert any("different settings (seed)" in w.value for w in at.warning)  # seed 1 against the default


def test_short_ppo_with_evaluation_gives_a_paired_table():
    from workbench.jobs import registry

    at = _open()
    at.button(key="lab_start").click().run()
    _clean(at)
    job = next(j for j in reversed(list(registry().jobs.values())) if j.kind == "ppo")
    registry().wait(job, 300)
    assert job.state == "finished", job.error
    at.run()
    _clean(at)
    table = at.dataframe[0].value
    rows = {r["metric"]: r for r in table.to_dict("records")}
    assert {"toxicity", "kl", "length"} <= set(rows) and rows["toxicity"]["prompts"] == 3
    assert rows["kl"]["before"] == 0.0
    assert any(m.value.startswith("On 3 held-out prompts") for m in at.markdown)
