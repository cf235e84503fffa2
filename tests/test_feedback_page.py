"""AppTest of the feedback studio page: create a project (sampled in the background), label, mark a span, export, train
(in a child process).

Runs the real ``workbench/app.py`` frame with the tiny random Llama, a throw-away feedback
database and an empty reward-model store.

    .venv/bin/python -m pytest tests/test_feedback_page.py -q
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from core.feedback.store import FeedbackStore  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "workbench" / "app.py")
PAGE = str(ROOT / "pages" / "feedback_studio.py")


@pytest.fixture(autouse=True)
def _env(monkeypatch, tiny_model_path, tmp_path):
    monkeypatch.setenv("RLHF_WORKBENCH_MODEL", "tiny-random-llama")
    monkeypatch.setenv("RLHF_WORKBENCH_FEEDBACK_DB", str(tmp_path / "fb.sqlite"))
    from core.rewards import store

    monkeypatch.setattr(store, "reward_models_dir", lambda: tmp_path / "rms")


def _open() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page(PAGE)
    at.run()
    return at


def _clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _wait(cond, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_create_sample_label_span_correct_skip_export_and_train(tmp_path):
    db = FeedbackStore(tmp_path / "fb.sqlite")
    at = _open()
    _clean(at)
    assert at.title[0].value == "Feedback studio"
    assert any("Enter your name" in i.value for i in at.info)

    # a project from typed prompts, sampled off the script thread
    at.radio(key="fs_new_source").set_value("type them").run()
    at.text_input(key="fs_new_name").set_value("typed")
    at.number_input(key="fs_new_k").set_value(3)
    at.number_input(key="fs_new_tokens").set_value(4)
    at.text_area(key="fs_new_typed").set_value("Why is the sky blue?\nName a prime.\nSay hi.").run()
    at.button(key="fs_new_create").click().run()
    _clean(at)
    pid = db.project("typed")["id"]
    _wait(lambda: db.project(pid)["n_ready"] == 3)
    items = db.items(pid)
    assert all(len(it["responses"]) == 3 for it in items)

    at.text_input(key="fs_annotator").set_value("ada").run()
    _clean(at)
    first = items[0]["id"]
    # bad input: every response ranked the same is refused with the store's message, nothing saved
    for i in range(3):
        at.number_input(key=f"fs_rank_{first}_{i}").set_value(1)
    at.button(key=f"fs_submit_{first}").click().run()
    assert any("same rank" in e.value for e in at.error)
    assert db.labels(pid)["rankings"] == [] and db.labels(pid)["ratings"] == []  # a refused ranking saves none of the form

    # rate + flag + rank (with a tie)
    for i, (score, rank) in enumerate([(6, 1), (2, 2), (2, 2)]):
        at.slider(key=f"fs_score_{first}_{i}").set_value(score)
        at.number_input(key=f"fs_rank_{first}_{i}").set_value(rank)
    at.checkbox(key=f"fs_flag_{first}_1_harmful_advice").check()
    at.button(key=f"fs_submit_{first}").click().run()
    _clean(at)
    labels = db.labels(pid)
    assert labels["rankings"] == [{"item_id": first, "annotator": "ada", "ranks": [1, 2, 2]}]
    assert [r["score"] for r in labels["ratings"]] == [6, 2, 2] and labels["ratings"][1]["flags"]["harmful_advice"]

    # the queue moved on: mark a span by character range on item 2, correct it, then skip it
    second = items[1]["id"]
    assert at.number_input(key=f"fs_rank_{second}_0") is not None
    at.radio(key=f"fs_span_how_{second}").set_value("character range").run()
    at.number_input(key=f"fs_span_start_{second}_0").set_value(0)
    at.number_input(key=f"fs_span_end_{second}_0").set_value(2).run()
    at.button(key=f"fs_span_add_{second}").click().run()
    _clean(at)
    at.button(key=f"fs_span_save_{second}").click().run()
    _clean(at)
    spans = db.labels(pid)["spans"]
    assert spans[0]["item_id"] == second and [(s["start"], s["end"], s["category"]) for s in spans[0]["spans"]] == [(0, 2, "C1")]
    at.text_area(key=f"fs_fix_text_{second}_0").set_value("A better answer.")
    at.button(key=f"fs_fix_save_{second}").click().run()
    at.button(key=f"fs_skip_{second}").click().run()
    _clean(at)
    assert db.labels(pid)["corrections"][0]["text"] == "A better answer."
    assert db.progress(pid, "ada") == {"total": 3, "ready": 3, "ranked": 1, "skipped": 1, "done": 2, "remaining": 1}

    # export every format to a folder
    at.text_input(key="fs_exp_folder").set_value(str(tmp_path / "out")).run()
    at.button(key="fs_exp_all").click().run()
    _clean(at)
    assert (tmp_path / "out" / "preferences.jsonl").read_text().count("\n") == 2  # (0 > 1), (0 > 2)
    assert (tmp_path / "out" / "dataset.parquet").is_file() and (tmp_path / "out" / "qa_feedback" / "feedback.json").is_file()

    # train on the labels (in the background); the model lands in the reward-model store
    at.button(key="fs_train").click().run()
    # (in a child process: the model is saved before that process ends and hands back its result)
    _wait(lambda: any((tmp_path / "rms").glob("feedback-typed/workbench_reward.json")), timeout=90)
    _wait(lambda: any("listed in the token explorer" in s.value for s in at.run().success), timeout=60)
    _clean(at)
    # the saved model is offered for agreement with the annotators (beside the shipped ones), and scores every response
    pick = at.selectbox(key=f"fs_rm_pick_{pid}")
    trained = [o for o in pick.options if o.endswith("feedback-typed")]
    assert trained, pick.options
    pick.select(trained[0]).run()
    at.button(key=f"fs_rm_score_{pid}").click().run()
    _clean(at)
    folder, scores = at.session_state[f"fs_rm_scores_{pid}"]
    assert Path(folder).name == "feedback-typed" and sorted(scores) == [it["id"] for it in items]
    assert any("Agreement of each annotator with `feedback-typed`" in c.value for c in at.caption)


def test_a_database_from_a_newer_version_is_reported_not_touched(tmp_path):
    import sqlite3

    from core.feedback.store import SCHEMA_VERSION

    path = tmp_path / "fb.sqlite"
    FeedbackStore(path)
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    con.commit()
    con.close()
    at = _open()
    assert not at.exception
    assert any("newer than this workbench understands" in e.value for e in at.error)


def test_pre_labelled_import_and_agreement_tab(tmp_path):
    from core.feedback.export import import_hh_rlhf

    rows = [{"chosen": f"\n\nHuman: q{i}\n\nAssistant: good {i}", "rejected": f"\n\nHuman: q{i}\n\nAssistant: bad {i}"} for i in range(4)]
    (tmp_path / "hh.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    db = FeedbackStore(tmp_path / "fb.sqlite")
    pid, _ = import_hh_rlhf(db, "hh", tmp_path / "hh.jsonl", limit=4)
    for n, it in enumerate(db.items(pid)):  # a second annotator who agrees on all but one pair
        ranks = next(r["ranks"] for r in db.labels(pid)["rankings"] if r["item_id"] == it["id"])
        db.submit_ranking(f"b{n}", "bob", it["id"], ranks if n else ranks[::-1])
    at = _open()
    at.text_input(key="fs_annotator").set_value("ada").run()
    _clean(at)
    assert at.metric[0].value == "75%"  # ranking agreement hh-rlhf vs bob: 3 of 4 pairs
    assert any("4 to go of 4" in p.proto.text for p in at.get("progress"))
