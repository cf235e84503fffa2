"""The feedback studio's library: the SQLite store, bad input, exports through the trainers' loaders, agreement maths.

Fast (no model): everything here runs on the standard library, ``datasets`` and torch only.
Training from labels is in tests/test_feedback_train.py, the page in tests/test_feedback_page.py.

    .venv/bin/python -m pytest tests/test_feedback.py -q
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core.feedback import agreement as ag
from core.feedback import export as ex
from core.feedback.sampling import read_prompt_file
from core.feedback.store import FLAG_NAMES, SCHEMA_VERSION, FeedbackError, FeedbackStore

ROOT = Path(__file__).resolve().parent.parent
ITEMS = [
    {"prompt": "Why is the sky blue?", "responses": ["Rayleigh scattering of sunlight.", "Because it reflects the sea.", "Blue paint."]},
    {"prompt": "Name a prime.", "responses": ["7", "Eight is prime.", "Nine, probably."]},
]


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_WORKBENCH_FEEDBACK_DB", str(tmp_path / "fb.sqlite"))
    return FeedbackStore()


@pytest.fixture
def project(db):
    pid = db.create_project("sky", policy="tiny-random-llama", k=3, seed=0, items=ITEMS)
    return pid, [it["id"] for it in db.items(pid)]


# ----------------------------------------------------------------------------- the store


def test_default_path_follows_the_environment_and_the_file_is_wal_with_the_current_schema(db, tmp_path):
    assert db.path == tmp_path / "fb.sqlite" and db.path.is_file()
    con = sqlite3.connect(db.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [r[0] for r in con.execute("SELECT version FROM schema_migrations")] == list(range(1, SCHEMA_VERSION + 1))
    con.close()


def test_labels_are_stored_replaced_and_listed(db, project):
    pid, (a, b) = project
    assert db.submit_rating("r1", "Ada", a, 0, 6, {"harmful_advice": True}, "fine") is True
    assert db.submit_ranking("k1", "Ada", a, [1, 2, 2]) is True
    assert db.submit_spans("s1", "ada", a, 1, [{"start": 8, "end": 28, "category": "C2", "error_type": "Wrong-Grounding"}])
    assert db.submit_correction("c1", "Bob", a, "Sunlight scatters off air molecules.", response_idx=1)
    assert db.submit_skip("x1", "Bob", b, "not sure")
    assert db.submit_rating("r2", "ADA", a, 0, 7) is True  # a new submission replaces Ada's rating (names ignore case)
    labels = db.labels(pid)
    assert [(r["annotator"], r["score"], r["flags"]["harmful_advice"]) for r in labels["ratings"]] == [("Ada", 7, False)]
    assert labels["rankings"] == [{"item_id": a, "annotator": "Ada", "ranks": [1, 2, 2]}]
    assert labels["spans"][0]["spans"] == [{"start": 8, "end": 28, "category": "C2", "error_type": "Wrong-Grounding", "segment": None, "note": ""}]
    assert labels["corrections"][0]["text"].startswith("Sunlight") and labels["skips"][0]["reason"] == "not sure"
    assert db.annotators() == ["Ada", "Bob"]
    assert db.queue(pid, "ada") == [b] and db.queue(pid, "bob") == [a]
    assert db.progress(pid, "Ada") == {"total": 2, "ready": 2, "ranked": 1, "skipped": 0, "done": 1, "remaining": 1}
    con = sqlite3.connect(db.path)
    assert con.execute("SELECT COUNT(*) FROM submissions").fetchone()[0] == 6  # both versions of the rating are kept
    assert set(FLAG_NAMES) <= {r[1] for r in con.execute("PRAGMA table_info(ratings)")}


def test_resubmission_is_idempotent_and_a_reused_id_with_other_content_is_refused(db, project):
    pid, (a, _) = project
    assert db.submit_ranking("same", "ada", a, [1, 2, 3]) is True
    assert db.submit_ranking("same", "ada", a, [1, 2, 3]) is False  # the retried click: nothing changes
    with pytest.raises(FeedbackError, match="already used for a different label"):
        db.submit_ranking("same", "ada", a, [3, 2, 1])
    assert db.labels(pid)["rankings"][0]["ranks"] == [1, 2, 3]


def test_a_bad_label_writes_nothing(db, project):
    pid, (a, _) = project
    with pytest.raises(FeedbackError, match="overlap"):
        db.submit_spans("s", "ada", a, 0, [{"start": 0, "end": 10, "category": "C1"}, {"start": 5, "end": 12, "category": "C2"}])
    con = sqlite3.connect(db.path)
    assert con.execute("SELECT COUNT(*) FROM submissions").fetchone()[0] == 0
    assert con.execute("SELECT COUNT(*) FROM span_reviews").fetchone()[0] == 0
    assert db.submit_spans("s", "ada", a, 0, []) is True  # the id is still free; [] = reviewed, no errors


@pytest.mark.parametrize("call, message", [
    (lambda db, i: db.submit_rating("x", "ada", i, 0, 8), "from 1 .worst. to 7"),
    (lambda db, i: db.submit_rating("x", "ada", i, 0, 3, {"rude": True}), "unknown flags"),
    (lambda db, i: db.submit_rating("x", "ada", i, 3, 3), "response index must be 0..2"),
    (lambda db, i: db.submit_ranking("x", "ada", i, [1, 2]), "expected 3 ranks"),
    (lambda db, i: db.submit_ranking("x", "ada", i, [1, 1, 1]), "same rank"),
    (lambda db, i: db.submit_ranking("x", "ada", i, [0, 1, 2]), "from 1 .best. to 3"),
    (lambda db, i: db.submit_spans("x", "ada", i, 0, [{"start": 5, "end": 99, "category": "C1"}]), "outside the response of 32"),
    (lambda db, i: db.submit_spans("x", "ada", i, 0, [{"start": 3, "end": 3, "category": "C1"}]), "outside the response|empty"),
    (lambda db, i: db.submit_spans("x", "ada", i, 0, [{"start": 0, "end": 3, "category": "C4"}]), "C1, C2 or C3"),
    (lambda db, i: db.submit_spans("x", "ada", i, 0, [{"start": 0, "end": 3, "category": "C1", "error_type": "Unverifiable"}]), "not a C1 type"),
    (lambda db, i: db.submit_correction("x", "ada", i, "   "), "cannot be empty"),
    (lambda db, i: db.submit_skip("", "ada", i), "submission id"),
    (lambda db, i: db.submit_skip("x", " ", i), "needs a name"),
    (lambda db, i: db.submit_skip("x", "ada", 999), "no item with id 999"),
])
def test_bad_labels_are_refused_with_a_clear_message(db, project, call, message):
    _, (a, _) = project
    with pytest.raises(FeedbackError, match=message):
        call(db, a)


def test_bad_projects_are_refused(db):
    with pytest.raises(FeedbackError, match="from 2 to 9, got 10"):
        db.create_project("p", "m", 10, 0, [{"prompt": "q"}])
    with pytest.raises(FeedbackError, match="from 2 to 9, got 1"):
        db.create_project("p", "m", 1, 0, [{"prompt": "q"}])
    with pytest.raises(FeedbackError, match="prompt 2: response 2 is empty"):
        db.create_project("p", "m", 2, 0, [{"prompt": "q", "responses": ["a", "b"]}, {"prompt": "r", "responses": ["a", " "]}])
    with pytest.raises(FeedbackError, match="prompt 1 of project 'p' is empty"):
        db.create_project("p", "m", 2, 0, [{"prompt": ""}])
    assert db.projects() == []  # nothing half-made
    pid = db.create_project("p", "m", 2, 0, [{"prompt": "q"}])
    with pytest.raises(FeedbackError, match="exists already"):
        db.create_project("p", "m", 2, 0, [{"prompt": "q"}])
    item = db.items(pid)[0]["id"]
    with pytest.raises(FeedbackError, match="no responses yet"):
        db.submit_skip("x", "ada", item)
    with pytest.raises(FeedbackError, match="response 1 is empty"):
        db.add_responses(item, ["", "b"])
    assert db.add_responses(item, ["a", "b"]) is True and db.add_responses(item, ["a", "b"]) is False
    with pytest.raises(FeedbackError, match="never regenerated"):
        db.add_responses(item, ["c", "d"])


def test_prompt_files_name_the_file_and_line(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "a", "topic": "x"}\n\n{"prompt": "b"}\n')
    assert read_prompt_file(good) == [{"prompt": "a", "meta": {"topic": "x"}}, {"prompt": "b", "meta": {}}]
    assert read_prompt_file("up.txt", text="one\n\ntwo\n") == [{"prompt": "one", "meta": {}}, {"prompt": "two", "meta": {}}]
    for body, problem in [('{"prompt": "a"}\n{"prompt": "b"\n', "line 2: not valid JSON"),
                          ('{"prompt": "a"}\n\n["b"]\n', "line 3: a JSON list"),
                          ('{"prompt": "a"}\n{"text": "b"}\n', 'line 2: "prompt" must be non-empty')]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(body)
        with pytest.raises(FeedbackError, match=f"{bad}, {problem}"):
            read_prompt_file(bad)
    with pytest.raises(FeedbackError, match="no prompts"):
        read_prompt_file("e.jsonl", text="\n\n")


# ----------------------------------------------------------------------------- files: schema, read-only, locked


def test_a_newer_schema_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "new.sqlite"
    FeedbackStore(path)
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(FeedbackError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this workbench understands"):
        FeedbackStore(path)
    assert path.read_bytes() == before


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_text("these are my notes, not a database " * 100)
    with pytest.raises(FeedbackError, match="not a SQLite feedback database"):
        FeedbackStore(path)
    assert path.read_text().startswith("these are my notes")


def test_migrations_run_once_each_in_order(tmp_path, monkeypatch):
    from core.feedback import store as store_mod

    path = tmp_path / "m.sqlite"
    FeedbackStore(path)
    extra = ("a notes column on projects", ["ALTER TABLE projects ADD COLUMN notes TEXT NOT NULL DEFAULT ''"])
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS + [extra])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    FeedbackStore(path)
    FeedbackStore(path)  # already current: nothing to do
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert [r[0] for r in con.execute("SELECT description FROM schema_migrations ORDER BY version")][-1] == extra[0]
    assert "notes" in {r[1] for r in con.execute("PRAGMA table_info(projects)")}


def test_a_read_only_file_can_be_read_but_not_written(db, project):
    pid, (a, _) = project
    db.submit_ranking("k", "ada", a, [1, 2, 3])
    os.chmod(db.path, 0o444)
    try:
        ro = FeedbackStore(db.path)
        assert ro.labels(pid)["rankings"][0]["ranks"] == [1, 2, 3]
        with pytest.raises(FeedbackError, match="read-only"):
            ro.submit_skip("x", "ada", a)
    finally:
        os.chmod(db.path, 0o644)
    assert ro.submit_skip("x", "ada", a) is True


def test_a_locked_file_gives_a_clear_message_and_loses_nothing(db, project):
    pid, (a, _) = project
    quick = FeedbackStore(db.path, timeout=0.2)
    holder = sqlite3.connect(db.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(FeedbackError, match="is locked.*NOT saved"):
            quick.submit_ranking("k", "ada", a, [1, 2, 3])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert quick.submit_ranking("k", "ada", a, [1, 2, 3]) is True
    assert len(db.labels(pid)["rankings"]) == 1


# ----------------------------------------------------------------------------- concurrency and durability


def test_concurrent_writers_from_threads_lose_nothing(db, project):
    pid, items = project

    def annotate(name):
        for n in range(15):
            db.submit_rating(f"{name}-{n}", name, items[n % 2], n % 3, 1 + n % 7)
            db.submit_rating(f"{name}-{n}", name, items[n % 2], n % 3, 1 + n % 7)  # a double click

    threads = [threading.Thread(target=annotate, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    con = sqlite3.connect(db.path)
    assert con.execute("SELECT COUNT(*) FROM submissions").fetchone()[0] == 60
    assert len(db.labels(pid)["ratings"]) == 4 * 6  # 4 annotators x 2 items x 3 responses (later ratings replace)


WRITER = """
import sys
from core.feedback.store import FeedbackStore
db = FeedbackStore(sys.argv[1])
name, item = sys.argv[2], int(sys.argv[3])
for n in range(int(sys.argv[4])):
    db.submit_rating(f"{name}-{n}", name, item, n % 3, 1 + n % 7)
print("done", flush=True)
"""


def test_two_processes_writing_at_once_lose_nothing(db, project):
    pid, items = project
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db.path), name, str(items[0]), "25"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("p1", "p2")]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    con = sqlite3.connect(db.path)
    assert dict(con.execute("SELECT a.name, COUNT(*) FROM submissions s JOIN annotators a ON a.id = s.annotator_id GROUP BY a.name")) \
        == {"p1": 25, "p2": 25}


def test_a_label_survives_sigkill_once_submit_returned(db, project):
    _, items = project
    script = ("import sys, time\nfrom core.feedback.store import FeedbackStore\n"
              "FeedbackStore(sys.argv[1]).submit_ranking('k', 'ada', int(sys.argv[2]), [3, 1, 2])\n"
              "print('saved', flush=True)\ntime.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", script, str(db.path), str(items[0])], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "saved"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    assert FeedbackStore(db.path).labels(db.project("sky")["id"])["rankings"][0]["ranks"] == [3, 1, 2]


# ----------------------------------------------------------------------------- exports through the project's loaders


@pytest.fixture
def labelled(db, project):
    pid, (a, b) = project
    db.submit_ranking("k1", "ada", a, [1, 3, 2])
    db.submit_ranking("k2", "bob", a, [1, 2, 2])
    db.submit_ranking("k3", "ada", b, [1, 2, 3])
    db.submit_spans("s1", "ada", a, 1, [{"start": 8, "end": 28, "category": "C2", "error_type": "Unverifiable", "note": "no"},
                                        {"start": 0, "end": 7, "category": "C1", "error_type": "Redundant"}])
    db.submit_spans("s2", "bob", b, 0, [{"start": 0, "end": 1, "category": "C3", "note": "why 7?"}])
    db.submit_correction("c1", "ada", a, "Air scatters blue light more than red.", response_idx=1)
    for n, (i, s) in enumerate([(0, 7), (1, 2), (2, 4)]):
        db.submit_rating(f"r{n}", "ada", a, i, s)
    db.submit_skip("x1", "cy", b)
    return pid, (a, b)


def test_ordered_pairs_all_and_best_vs_rest_with_ties():
    assert ex.ordered_pairs([2, 1, 3, 1], "all") == [(1, 0), (0, 2), (3, 0), (1, 2), (3, 2)]
    assert ex.ordered_pairs([2, 1, 3, 1], "best_vs_rest") == [(1, 0), (3, 0), (1, 2), (3, 2)]
    assert ex.ordered_pairs([1, 2, 3], "all") == [(0, 1), (0, 2), (1, 2)]
    with pytest.raises(FeedbackError, match="pair mode"):
        ex.ordered_pairs([1, 2], "some")


def test_trl_preferences_and_rankings_round_trip(db, labelled, tmp_path):
    from core.data import load_preference_file, load_preference_records

    pid, (a, b) = labelled
    pairs = load_preference_file(ex.write_jsonl(ex.preference_pairs(db, pid), tmp_path / "p.jsonl"))
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in load_preference_records(str(tmp_path / "p.jsonl"))] == \
        [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs]  # what the reward, DPO and SimPO trainers read
    r = ITEMS[0]["responses"]
    assert [(p["annotator"], p["chosen"], p["rejected"]) for p in pairs if p["item_id"] == a] == [
        ("ada", r[0], r[1]), ("ada", r[0], r[2]), ("ada", r[2], r[1]), ("bob", r[0], r[1]), ("bob", r[0], r[2])]
    assert len(pairs) == 5 + 3
    best = load_preference_file(ex.write_jsonl(ex.preference_pairs(db, pid, "best_vs_rest"), tmp_path / "b.jsonl"))
    assert len(best) == 2 + 2 + 2
    rows = [json.loads(x) for x in (ex.write_jsonl(ex.ranking_records(db, pid), tmp_path / "r.jsonl")).read_text().splitlines()]
    assert rows[0]["ranks"] == [1, 3, 2] and rows[0]["ordered"] == [r[0], r[2], r[1]] and rows[0]["prompt"] == ITEMS[0]["prompt"]


def test_qa_feedback_export_is_read_by_the_fine_grained_loader(db, labelled, tmp_path):
    from core.data import load_qa_feedback_spans

    pid, (a, b) = labelled
    folder = ex.write_qa_feedback(db, pid, tmp_path / "qa")
    recs = load_qa_feedback_spans(folder)
    assert len(recs) == 2
    first = recs[0]
    assert first["prompt"] == ITEMS[0]["prompt"] and first["response"] == ITEMS[0]["responses"][1]
    assert [(s["start"], s["end"], s["category"], s["error_type"]) for s in first["spans"]] == [(0, 7, "C1", "Redundant"), (8, 28, "C2", "Unverifiable")]
    assert first["corrected"] == "Air scatters blue light more than red."
    raw = json.loads((folder / "feedback.json").read_text())
    assert raw[0]["preference"] == [2, 2, 1]  # prediction 1 = response 1 (rank 3) vs responses 0 (1) and 2 (2); then 0 vs 2
    assert recs[1]["spans"] == [] and raw[1]["studio-missing-info"] == [{"start": 0, "end": 1, "note": "why 7?"}]


def test_sft_export_is_read_by_the_sft_loader(db, labelled, tmp_path):
    from core.data import load_sft_records

    pid, (a, _) = labelled
    recs = load_sft_records(str(ex.write_jsonl(ex.sft_records(db, pid), tmp_path / "sft.jsonl")))
    assert recs == [{"prompt": ITEMS[0]["prompt"], "completion": "Air scatters blue light more than red."}]


def test_dataset_export_save_to_disk_and_parquet(db, labelled, tmp_path):
    from datasets import Dataset, load_from_disk

    pid, (a, b) = labelled
    paths = ex.export_project(db, pid, tmp_path / "out")
    ds = load_from_disk(str(paths["dataset"]))
    assert ds.num_rows == 5  # (a: ada, bob), (b: ada, bob, cy)
    pq = Dataset.from_parquet(str(paths["parquet"]))
    assert pq.to_list() == ds.to_list()
    ada_a = next(r for r in ds if r["annotator"] == "ada" and r["item_id"] == a)
    assert ada_a["ranks"] == [1, 3, 2] and [x["score"] for x in ada_a["ratings"]] == [7, 2, 4]
    assert [s["category"] for s in ada_a["spans"]] == ["C1", "C2"] and ada_a["correction"].startswith("Air")
    assert next(r for r in ds if r["annotator"] == "cy")["skipped"] is True
    assert json.loads(paths["agreement"].read_text())["rankings"]["pairs"][0]["annotators"] == ["ada", "bob"]
    empty = db.create_project("empty", "m", 2, 0, [{"prompt": "q", "responses": ["a", "b"]}])
    assert ex.to_dataset(db, empty).features == ds.features  # one schema, labels or not


# ----------------------------------------------------------------------------- imports


def _qa_file(tmp_path):
    passages = [["Sky", "The sky looks blue.", "Air scatters blue light."]]
    recs = [{"question": "Why is the sky blue?", "passages": passages, "gold": "x",
             "prediction 1": "Scattering. It is also the sea.", "prediction 2": "The sea.", "prediction 3": "Paint.", "prediction 4": "Air.",
             "feedback": {"errors": [{"error type": "Wrong-Grounding", "explanation": "no", "start": 12, "end": 31}],
                          "missing-info": [{"error type": "Missing-Major-Auxiliary", "passage_id": 1, "sentence_id": [2]}],
                          "corrected-prediction": "Air scatters blue light."},
             "preference": [1, 1, 2, 1, 0, 2]},
            {"question": "Empty?", "passages": passages, "prediction 1": "Fine.", "prediction 2": "", "prediction 3": "c",
             "prediction 4": "d", "feedback": {"errors": []}, "preference": [0] * 6}]
    folder = tmp_path / "qa_in"
    folder.mkdir()
    (folder / "feedback.json").write_text(json.dumps(recs))
    return folder


def test_ranks_from_pairwise_judgements():
    # 1v2, 1v3, 1v4, 2v3, 2v4, 3v4: 1 beats 2 and 3, loses to 4; 2 beats 3; 2 ~ 4; 4 beats 3 -> wins 2, 1.5, 0, 2.5
    assert ex.ranks_from_judgements([1, 1, 2, 1, 0, 2], 4) == [2, 3, 4, 1]
    assert ex.ranks_from_judgements([0] * 6, 4) is None


def test_import_qa_feedback_then_export_gives_the_same_spans(db, tmp_path):
    from core.data import load_qa_feedback_spans

    folder = _qa_file(tmp_path)
    pid, counts = ex.import_qa_feedback(db, "qa", folder)
    assert counts == {"items": 1, "rankings": 1, "span_reviews": 1, "corrections": 1, "skipped": {"empty_answer": 1}}
    original = load_qa_feedback_spans(folder)[0]
    again = load_qa_feedback_spans(ex.write_qa_feedback(db, pid, tmp_path / "qa_out"))[0]
    assert again["prompt"] == original["prompt"] and again["response"] == original["response"]
    assert again["spans"] == original["spans"] and again["corrected"] == original["corrected"]


def test_import_hh_rlhf_ranks_chosen_first(db, tmp_path):
    path = tmp_path / "hh.jsonl"
    rows = [{"chosen": f"\n\nHuman: q{i}\n\nAssistant: good {i}", "rejected": f"\n\nHuman: q{i}\n\nAssistant: bad {i}"} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pid, counts = ex.import_hh_rlhf(db, "hh", path, limit=6, seed=1)
    assert counts["items"] == 6
    pairs = ex.preference_pairs(db, pid)
    assert [p["chosen"] for p in pairs] == [f"good {i}" for i in range(6)] and all(p["rejected"].startswith("bad") for p in pairs)
    assert {p["chosen_index"] for p in pairs} == {0, 1}  # shown in both positions


# ----------------------------------------------------------------------------- agreement


KRIPPENDORFF_2011 = [  # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", sec. C: 4 observers, 12 units
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


@pytest.mark.parametrize("metric, alpha", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_alpha_matches_the_published_example(metric, alpha):
    assert ag.krippendorff_alpha(KRIPPENDORFF_2011, metric) == pytest.approx(alpha, abs=5e-4)


def _naive_interval_alpha(data):
    """Alpha from its definition as averaged pairwise disagreements, loops only (no coincidence matrix)."""
    units = [[v for v in col if v is not None] for col in zip(*data)]
    units = [u for u in units if len(u) >= 2]
    values = [v for u in units for v in u]
    n = len(values)
    within = sum(sum((a - b) ** 2 for a, b in itertools.permutations(u, 2)) / (len(u) - 1) for u in units) / n
    between = sum((a - b) ** 2 for a, b in itertools.permutations(values, 2)) / (n * (n - 1))
    return 1 - within / between


def test_krippendorff_interval_alpha_equals_a_naive_implementation():
    rng = random.Random(0)
    for _ in range(5):
        data = [[rng.choice([None, 1, 2, 3, 4, 5, 6, 7]) for _ in range(12)] for _ in range(3)]
        assert ag.krippendorff_alpha(data, "interval") == pytest.approx(_naive_interval_alpha(data))
    assert ag.krippendorff_alpha([[1, 2, 3], [1, 2, 3]], "interval") == pytest.approx(1.0)
    assert ag.krippendorff_alpha([[4, 4], [4, 4]], "interval") is None  # no variation: alpha undefined


def test_pairwise_ranking_agreement_by_hand():
    ada = {1: [1, 2, 3], 2: [1, 2, 2]}
    bob = {1: [1, 3, 2], 2: [2, 1, 3], 3: [1, 2, 3]}
    # item 1: (0,1) agree, (0,2) agree, (1,2) disagree; item 2: (0,1) disagree, (0,2) agree, (1,2) ada tie
    res = ag.pairwise_ranking_agreement(ada, bob)
    assert res == {"agreement": 3 / 5, "n_pairs": 5, "n_agree": 3, "n_tied": 1, "n_items": 2}


def test_reward_model_agreement_per_annotator():
    rankings = [{"item_id": 1, "annotator": "ada", "ranks": [1, 2, 3]}, {"item_id": 1, "annotator": "bob", "ranks": [3, 2, 1]},
                {"item_id": 2, "annotator": "ada", "ranks": [1, 1, 2]}]
    scores = {1: [3.0, 2.0, 2.0]}  # item 2 has no scores
    res = ag.reward_model_agreement(rankings, scores)
    assert res["ada"] == {"agreement": 2.5 / 3, "n_pairs": 3} and res["bob"] == {"agreement": 0.5 / 3, "n_pairs": 3}
    assert res["all"] == {"agreement": 3 / 6, "n_pairs": 6}


def test_project_agreement_on_stored_labels(db, labelled):
    pid, _ = labelled
    res = ag.project_agreement(db, pid)
    pair = res["rankings"]["pairs"][0]
    assert pair["annotators"] == ["ada", "bob"] and pair["n_pairs"] == 2 and pair["agreement"] == 1.0 and pair["n_tied"] == 1
    assert res["ratings"]["interval"]["alpha"] is None and res["ratings"]["interval"]["n_units"] == 0  # one rater: nothing to compare
