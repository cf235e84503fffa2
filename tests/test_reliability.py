"""Bad input, attacks through stored data, and unsafe store writes: each is refused with a message that says
where and what (docs/reliability.md lists every case and the test here that keeps it)."""

import gzip
import json
import os

import pytest

from core.data import (DataError, MAX_TEXT_CHARS, load_preference_file, load_preference_records, load_prompts,
                       load_qa_feedback_preferences, load_qa_feedback_spans, load_rows, load_sft_records)
from test_runstore import _hold_writer_lock


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


PAIR = {"prompt": "P", "chosen": "A", "rejected": "B"}


# ----------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("name, data, line", [
    ("p.jsonl", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n', 2),
    ("p.csv", b"prompt,chosen,rejected\nok,b,c\n\xff\xfe,b,c\n", 3),
    ("p.txt", b"first\n\x80second\n", 2),
])
def test_non_utf8_bytes_name_the_file_line_and_offset(tmp_path, name, data, line):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataError) as e:
        load_rows(path)
    offset = data.index(next(bytes([b]) for b in data if b >= 0x80))
    assert str(e.value) == (f"{path}: not UTF-8 text: byte 0x{data[offset]:02x} at offset {offset} (line {line}); "
                            "save the file as UTF-8")


@pytest.mark.parametrize("name, text, problem", [
    ("n.jsonl", "null\n", "n.jsonl, record 0: line 1 is a JSON null, not an object"),  # crashed pyarrow's reader
    ("n.json", "null", "n.json: expected a JSON list of records, got a JSON null"),
    ("l.json", '[{"prompt": "a"}, null]', "l.json, record 1: is a JSON null, not an object"),
])
def test_json_that_is_not_records_never_reaches_the_table_reader(tmp_path, name, text, problem):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError) as e:
        load_rows(tmp_path / name)
    assert str(e.value) == f"{tmp_path}/{problem}"


def test_non_utf8_inside_gzip_and_a_truncated_gzip(tmp_path):
    path = tmp_path / "p.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b'{"prompt": "\xe9"}\n')
    with pytest.raises(DataError, match=r"p.jsonl.gz: not UTF-8 text: byte 0xe9 at offset 12 \(line 1\)"):
        load_rows(path)
    path.write_bytes(path.read_bytes()[:12])
    with pytest.raises(DataError, match=r"p.jsonl.gz: cannot be read"):
        load_rows(path)


def test_malformed_first_line_of_an_sft_file(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text('{"prompt": "a", "completion": \n{"prompt": "b", "completion": "c"}\n')
    with pytest.raises(DataError, match=r"sft.jsonl, record 0: line 1 is not JSON"):
        load_sft_records(str(path))


def _qa(tmp_path, **changes):
    record = {"question": "Q?", "passages": [["T", "S1.", "S2."]], "prediction 1": "One two.", "prediction 2": "b",
              "prediction 3": "c", "prediction 4": "d", "preference": [1] * 6,
              "feedback": {"errors": [], "missing-info": [], "corrected-prediction": ""}}
    record.update(changes)
    (tmp_path / "feedback.json").write_text(json.dumps([record]))
    return tmp_path


@pytest.mark.parametrize("changes, problem", [
    ({"feedback": "looks fine"}, "'feedback' must be a dict"),
    ({"feedback": {"errors": ["Irrelevant 0-3"], "missing-info": []}}, "'feedback.errors' must be a list of dict"),
    ({"feedback": {"errors": [], "missing-info": [7]}}, "'feedback.missing-info' must be a list of dict"),
    ({"feedback": {"errors": [], "missing-info": [{"passage_id": 1, "sentence_id": "1"}]}}, "'sentence_id' must be a list"),
    ({"passages": "T. S1. S2."}, "'passages' must be a list, got str"),
    ({"passages": ["T. S1. S2."]}, "passage 1 must be a non-empty list"),
])
def test_malformed_qa_feedback_names_the_record(tmp_path, changes, problem):
    folder = _qa(tmp_path, **changes)
    for load in (load_qa_feedback_spans, load_qa_feedback_preferences):
        with pytest.raises(DataError) as e:
            load(folder)
        assert str(e.value).startswith(f"{folder / 'feedback.json'}, record 0: ") and problem in str(e.value)


def test_missing_prediction_of_a_preference_is_a_data_error(tmp_path):
    folder = _qa(tmp_path, **{"prediction 4": None})  # written as null: absent once read
    with pytest.raises(DataError, match=r"record 0: missing 'prediction 4'"):
        load_qa_feedback_preferences(folder)


def test_chat_messages_with_unknown_roles_are_refused(tmp_path):
    path = _jsonl(tmp_path / "chat.jsonl", [{"prompt": [{"role": "wizard", "content": "hi"}], "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match=r"chat.jsonl, record 0: 'prompt' message 0 has role 'wizard'; "
                                        r"use one of system, user, assistant"):
        load_preference_file(path)


def test_an_empty_file_is_not_blamed_on_max_length(tmp_path):
    for name in ("empty.jsonl", "blank.txt"):
        (tmp_path / name).write_text("\n\n")
    with pytest.raises(DataError, match=r"empty.jsonl: holds no preference records: the file is empty"):
        load_preference_records(str(tmp_path / "empty.jsonl"))
    with pytest.raises(DataError, match=r"empty.jsonl: holds no records"):
        load_sft_records(str(tmp_path / "empty.jsonl"))
    with pytest.raises(DataError, match=r"blank.txt: holds no prompts"):
        load_prompts(str(tmp_path / "blank.txt"), 4)


def test_a_one_megabyte_prompt_is_refused(tmp_path):
    huge = "x" * 1_000_000
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"prompt": huge}])
    with pytest.raises(DataError, match=rf"p.jsonl, record 1: 'prompt' is 1,000,000 characters, over the limit of "
                                        rf"{MAX_TEXT_CHARS:,}"):
        load_prompts(str(path), 4)
    (tmp_path / "p.txt").write_text("fine\n" + huge + "\n")
    with pytest.raises(DataError, match=r"p.txt, record 1: 'line 2' is 1,000,000 characters"):
        load_prompts(str(tmp_path / "p.txt"), 4)
    pairs = _jsonl(tmp_path / "pairs.jsonl", [{**PAIR, "chosen": huge}])
    with pytest.raises(DataError, match=r"pairs.jsonl, record 0: 'chosen' is 1,000,000 characters"):
        load_preference_records(str(pairs))


def test_a_prompts_json_file_is_read_as_records_never_as_one_prompt(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps([{"prompt": "first"}, {"prompt": "second"}]))
    assert sorted(load_prompts(str(tmp_path / "p.json"), 5)) == ["first", "second"]
    (tmp_path / "s.json").write_text(json.dumps(["first", "second"]))
    with pytest.raises(DataError, match=r"s.json, record 0: is a JSON str, not an object"):
        load_prompts(str(tmp_path / "s.json"), 5)


# ----------------------------------------------------------------------------- command lines


def test_command_line_prints_one_line_for_a_data_error(tmp_path, monkeypatch, capsys):
    from core.trainers import dpo

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a"}\n')
    monkeypatch.setattr("sys.argv", ["dpo", "--dataset", str(bad), "--model-name-or-path", "tiny-random-llama"])
    monkeypatch.delenv("RLHF_WORKBENCH_DEBUG", raising=False)
    with pytest.raises(SystemExit) as e:
        dpo.main()
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"[rlhf-workbench] error: {bad}, record 0: missing 'rejected'"  # after the cleared bar
    assert not any("Traceback" in line for line in err)
    monkeypatch.setattr("sys.argv", ["dpo", "--dataset", str(bad), "--model-name-or-path", "tiny-random-llama", "--debug"])
    with pytest.raises(DataError):  # --debug: the exception itself, with its traceback
        dpo.main()


def test_every_user_error_named_by_the_command_lines_exists():
    import importlib

    from core.cli import USER_ERRORS, is_user_error

    for name in USER_ERRORS:
        module, _, cls = name.rpartition(".")
        error = getattr(importlib.import_module(module), cls)
        assert issubclass(error, Exception) and is_user_error(error("x") if cls != "DataError" else error("f", 0, "x"))


def test_entry_point_keeps_tracebacks_of_bugs(monkeypatch):
    from core.cli import entry_point

    monkeypatch.setattr("sys.argv", ["x"])

    @entry_point
    def main():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        main()


def test_every_command_line_of_the_package_prints_clear_errors_in_one_line():
    """Every ``python -m core....`` module's main goes through ``core.cli.entry_point`` (directly, or through the
    trainers' ``cli_main``); the app's launcher applies the same rule itself (it also records the error in the run)."""
    import ast
    from pathlib import Path

    core = Path(__file__).resolve().parents[1] / "core"
    modules = [p for p in core.rglob("*.py") if 'if __name__ == "__main__"' in p.read_text()]
    assert len(modules) >= 12
    for path in modules:
        tree = ast.parse(path.read_text())
        main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
        decorated = any(getattr(d, "id", None) == "entry_point" for d in main.decorator_list)
        via_cli_main = any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "cli_main" for n in ast.walk(main))
        own = path.name == "launch.py" and "is_user_error(exc) and not debug" in path.read_text()
        assert decorated or via_cli_main or own, f"{path.relative_to(core.parent)}: main is not wrapped by entry_point"


def test_the_launcher_prints_one_line_for_a_user_error_and_records_it(tmp_path, capsys):
    from core.runstore import Run
    from core.trainers.launch import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a"}\n')
    run = Run.create("dpo", {"model_name_or_path": "tiny-random-llama", "dataset": str(bad), "cpu": True})
    assert main([str(run.path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"[rlhf-workbench] error: {bad}, record 0: missing 'rejected'" and not any("Traceback" in x for x in err)
    assert run.status()["status"] == "failed" and "missing 'rejected'" in run.status()["error"]


# ----------------------------------------------------------------------------- no code from data


def test_reward_specs_are_values_that_read_back_as_themselves():
    from core.trainers.rewards_setup import RewardSetupError, RewardSpec, format_rewards, parse_rewards

    specs = [RewardSpec("toxicity", "toxicity_sentence"), RewardSpec("model", "hh", "/rms/hh"),
             RewardSpec("redistributed", "hh_red", "/rms/hh"), RewardSpec("function", "polite", "my_pkg.rewards:polite")]
    text = format_rewards(specs)
    assert text == "toxicity_sentence,hh=/rms/hh,hh_red=redistributed:/rms/hh,my_pkg.rewards:polite"
    assert parse_rewards(text) == specs
    for evil in (RewardSpec("model", "x", "/rms/json:dumps,x"), RewardSpec("model", "a,json:dumps", "/rms/a"),
                 RewardSpec("model", "a=b", "/rms/a")):
        with pytest.raises(RewardSetupError, match="cannot be written as a rewards string"):
            format_rewards([evil])


def test_a_config_alone_never_imports_code(tmp_path, monkeypatch):
    import importlib

    from core.trainers.rewards_setup import RewardSetupError, build_reward_components

    imported = []
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: imported.append(name) or real(name, *a))
    with pytest.raises(RewardSetupError, match="'shutil:rmtree' names Python code"):
        build_reward_components("shutil:rmtree")
    assert imported == []


def test_resume_refuses_a_stored_function_reward(tmp_path):
    """The attack: a run folder whose config.json names shutil:rmtree as a reward and prompts naming a folder."""
    import torch

    from core.runstore import Run
    from core.trainers.ppo import PPOConfig, train_ppo
    from core.trainers.rewards_setup import RewardSetupError

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    (tmp_path / "prompts.txt").write_text(f"{victim}\n")
    run = Run.create("ppo", PPOConfig(model_name_or_path="tiny-random-llama", prompts=str(tmp_path / "prompts.txt"),
                                      rewards="shutil:rmtree", cpu=True))
    run.save_checkpoint(1, {"w": torch.zeros(1)})
    with pytest.raises(RewardSetupError, match="give --rewards 'shutil:rmtree' again on the command line"):
        train_ppo(PPOConfig(resume_from=str(run.path), cpu=True))
    assert (victim / "keep.txt").read_text() == "precious"
    assert Run.open(run.path).status()["status"] == "failed"


# ----------------------------------------------------------------------------- reward-model store


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "a\\b", "..", ".hidden", "", "x" * 101, "two words"])
def test_reward_model_names_cannot_leave_the_store(name):
    from core.rewards.store import RewardModelError, check_name

    with pytest.raises(RewardModelError, match="no path separator or '..'"):
        check_name(name)


def test_reward_trainer_refuses_an_escaping_name_before_writing_anything(tmp_path, monkeypatch):
    from core.rewards.store import RewardModelError
    from core.runstore import list_runs
    from core.trainers.reward import RewardConfig, train_reward_model

    monkeypatch.setenv("RLHF_WORKBENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RewardModelError, match="'../../escaped'"):
        train_reward_model(RewardConfig(model_name_or_path="tiny-random-llama", dataset="demo", name="../../escaped"))
    assert list_runs() == [] and not (tmp_path / "escaped").exists()


def test_a_folder_that_is_not_a_reward_model_is_never_replaced(tmp_path):
    from core.rewards.store import RewardModelError, check_destination, destination

    notes = tmp_path / "mine" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("my notes")
    for overwrite in (False, True):
        with pytest.raises(RewardModelError, match="is not a saved reward model .* it is never replaced"):
            destination("rm", save_dir=str(notes.parent), overwrite=overwrite)
    assert notes.read_text() == "my notes"
    with pytest.raises(RewardModelError, match="is a file"):
        check_destination(notes)
    assert check_destination(tmp_path / "new") == tmp_path / "new"


def test_existing_models_are_replaced_only_with_overwrite_and_default_names_are_unique(tmp_path, monkeypatch):
    from core.rewards import store

    monkeypatch.setattr(store, "reward_models_dir", lambda: tmp_path)
    (tmp_path / "hh").mkdir()
    (tmp_path / "hh" / store.META_FILE).write_text("{}")
    with pytest.raises(store.RewardModelError, match="already exists at .*hh; pass --overwrite"):
        store.destination("hh")
    assert store.destination("hh", overwrite=True) == tmp_path / "hh"
    stamped = store.destination("hh", default_name=True)
    assert stamped.parent == tmp_path and stamped.name.startswith("hh-") and not stamped.exists()
    stamped.mkdir()
    again = store.destination("hh", default_name=True)
    assert again not in (stamped, tmp_path / "hh") and again.name.startswith(stamped.name)


# ----------------------------------------------------------------------------- server and uploads


def test_committed_server_config_is_local_and_bounded():
    import tomllib
    from pathlib import Path

    config = tomllib.loads((Path(__file__).resolve().parents[1] / ".streamlit" / "config.toml").read_text())
    server = config["server"]
    assert server["address"] == "127.0.0.1" and server["enableXsrfProtection"] is True and server["headless"] is True
    assert 1 <= server["maxUploadSize"] <= 50 and config["browser"]["gatherUsageStats"] is False


class FakeUpload:
    def __init__(self, name, raw, file_id):
        self.name, self.raw, self.file_id, self.size, self.reads = name, raw, file_id, len(raw), 0

    def getvalue(self):
        self.reads += 1
        return self.raw


def test_uploads_are_written_and_checked_once_privately_and_removed_when_replaced(tmp_path):
    import hashlib
    import os
    import stat

    from workbench import uploads

    state, checks = {}, []

    def validate(path):
        checks.append(path)
        return load_preference_records(str(path))

    first = FakeUpload("../../etc/evil.jsonl", (json.dumps(PAIR) + "\n").encode(), "id-1")
    kept = uploads.keep(state, "k", first, validate)
    assert kept.value == [PAIR] and kept.error is None and kept.sha256 == hashlib.sha256(first.raw).hexdigest()
    folder = kept.path.parent
    assert folder.name.startswith("rlhf-workbench-upload-") and "evil" not in kept.path.name
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700 and stat.S_IMODE(os.stat(kept.path).st_mode) == 0o600
    for _ in range(3):  # reruns: no re-read, no re-hash, no re-validation
        assert uploads.keep(state, "k", first, validate) is kept
    assert first.reads == 1 and len(checks) == 1
    second = FakeUpload("bad.jsonl", b"\xff\xfe not utf-8\n", "id-2")
    again = uploads.keep(state, "k", second, validate)
    assert not kept.path.exists() and again.path.parent == folder  # the replaced file is gone
    assert isinstance(again.error, DataError) and "not UTF-8" in str(again.error)
    for_training = uploads.training_copy(again, root=tmp_path / "runs")
    assert for_training == tmp_path / "runs" / ".uploads" / f"{again.sha256}.jsonl" and for_training.read_bytes() == second.raw
    assert uploads.training_copy(again, root=tmp_path / "runs") == for_training  # once per content
    uploads.forget(state, "k")
    assert list(folder.iterdir()) == [] and for_training.is_file()  # the run's copy outlives the session's
    uploads._remove_folders()
    assert not folder.exists()


def test_an_interrupted_run_no_job_owns_shows_its_step_and_resumes_from_the_app(monkeypatch, tiny_model_path):
    """A run whose trainer died (here: an earlier server's job) reads "interrupted" with its last step and a Resume
    button on the curves page and in the sidebar; while another process trains it, it reads "running" with no
    button, and the launcher refuses it; once that process is gone, Resume relaunches it with --resume."""
    import signal
    from pathlib import Path

    import torch
    from streamlit.testing.v1 import AppTest

    from core.runstore import Run
    from core.trainers.launch import main as launch_main
    from workbench import jobs, training

    monkeypatch.setenv("RLHF_WORKBENCH_MODEL", "tiny-random-llama")
    run = Run.create("dpo", training.build("dpo", {"model_name_or_path": "tiny-random-llama", "dataset": "demo"}),
                     name="my dpo")
    run.acquire_writer()
    for step in (1, 2, 3):
        run.log_metrics(step, {"loss": 0.7})
    run.save_checkpoint(2, {"w": torch.zeros(2)})
    run.set_status("running", step=3)
    run.release_writer()  # as if its process died: the lock is free, status.json still says "running"
    spawned = []

    class Finished:  # the relaunched process, ended at once (nothing trains in this test)
        pid, returncode = 0, 0

        def poll(self):
            return 0

    monkeypatch.setattr(jobs, "_spawn", lambda path, *args: spawned.append((Path(path), args)) or Finished())
    root = Path(__file__).resolve().parents[1]
    at = AppTest.from_file(str(root / "workbench" / "app.py"), default_timeout=60)
    at.run()
    at.switch_page(str(root / "pages" / "training_curves.py")).run()
    assert not at.exception, [e.value for e in at.exception]
    said = [w.value for w in at.warning]
    notice = ("' was interrupted at step 3; its process ended without finishing it. "
              "It can resume from its checkpoint of step 2.")
    assert sum(w.startswith("'my dpo (DPO β=0.1) · ") and w.endswith(notice) for w in said) == 2, said  # page, sidebar
    key = f"curves_resume_{run.path.name}"
    assert at.button(key=key) and at.button(key=f"frame_resume_{run.path.name}")

    owner = _hold_writer_lock(run.path)  # e.g. `python -m core.trainers.launch RUN --resume` in a terminal
    try:
        at.run()
        assert not [w.value for w in at.warning if "interrupted" in w.value]
        assert not [b for b in at.button if b.key and "resume" in b.key]
        assert launch_main([str(run.path), "--resume"]) == 1  # refused before it writes anything
        assert run.status()["status"] == "running" and run.status()["pid"] == os.getpid()
        with pytest.raises(RuntimeError, match=rf"being trained by another process \(pid {owner.pid}\)"):
            jobs.registry().resume_run(run.path)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    at.run()
    at.button(key=key).click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert spawned == [(run.path.resolve(), ("--resume",))]
    job = jobs.registry().for_run(run.path)
    assert (job.kind, job.label, job.config.dataset) == ("dpo", "my dpo", "demo")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


EXPLORER_GROWTH_MB = 25
"""the most the app may grow over 10 explorer scorings after its warm-up (measured: < 1 MB; docs/benchmarks.md)"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS from /proc (Linux)")
def test_explorer_scorings_do_not_grow_the_app_memory(monkeypatch, tmp_path, tiny_model_path):
    """10 new responses scored (each a model call, counted) and a weight moved after each: after a warm-up, the
    app's resident memory grows by less than EXPLORER_GROWTH_MB. In-process (AppTest): the app's own caches and
    session state, not Streamlit's server; bench/server_memory.py measures the real server."""
    import gc
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    sentences = ["It was a fine day by the sea.", "The damn bus was late again.", "What a stupid idea that was.",
                 "We walked to the old lighthouse and back.", "Rain fell softly on the tin roof all night."]
    monkeypatch.setenv("RLHF_WORKBENCH_MODEL", "tiny-random-llama")
    monkeypatch.setenv("RLHF_WORKBENCH_REWARD_MODELS", str(tmp_path / "no_reward_models"))
    root = Path(__file__).resolve().parents[1]
    at = AppTest.from_file(str(root / "workbench" / "app.py"), default_timeout=120)
    at.run()
    at.switch_page(str(root / "pages" / "token_explorer.py")).run()
    at.radio(key="explorer_source").set_value("Type your own").run()

    def score(i):
        at.text_area(key="explorer_response").set_value(" ".join(sentences[(i + k) % 5] for k in range(1 + i % 4)) + f" {i}.").run()
        at.slider(key="explorer_w_toxicity").set_value(round(1.0 - 0.1 * (i % 5), 1)).run()

    for i in range(2):  # warm-up: models loaded, first figures built
        score(i)
    gc.collect()
    calls, before = at.session_state["explorer_score_calls"], _rss_mb()
    for i in range(2, 12):
        score(i)
    gc.collect()
    assert not at.exception and not at.error, [e.value for e in list(at.exception) + list(at.error)]
    assert at.session_state["explorer_score_calls"] == calls + 10  # ten new responses were scored, not served from a cache
    assert _rss_mb() - before < EXPLORER_GROWTH_MB, f"{before:.0f} MB -> {_rss_mb():.0f} MB after 10 scorings"


# ----------------------------------------------------------------------------- what already held, kept


@pytest.mark.parametrize("name", ["../../escaped", "/etc/passwd", "..", "a/../../b", "~root", "x\x00y"])
def test_run_names_never_leave_the_run_store(tmp_path, name):
    from core.runstore import Run

    run = Run.create("dpo", {"lr": 1.0}, name=name, root=tmp_path)
    assert run.path.parent == tmp_path and "/" not in run.path.name and run.path.name not in (".", "..")


def test_response_text_and_span_labels_are_escaped_in_html():
    from workbench.charts import coloured_text_html
    from workbench.components import highlighted

    evil = '<script>alert(1)</script>" onmouseover="x'
    page = highlighted(evil, [{"start": 0, "end": 8, "label": "<img src=x onerror=y>", "title": '"><b>'}])
    assert "<script>" not in page and "<img" not in page and '"><b>' not in page and "&lt;script&gt;" in page
    assert "<script>" not in coloured_text_html([evil, "<b>"], [1.0, -1.0])


def test_a_server_reachable_from_other_machines_is_refused_unless_allowed():
    from workbench.limits import exposure_problem

    assert exposure_problem("127.0.0.1", "127.0.0.1:8501", None) is None
    assert exposure_problem("localhost", "localhost:8501", None) is None
    assert exposure_problem(None, None, None) is None  # no browser attached (AppTest): nothing to refuse
    everywhere = exposure_problem(None, "192.168.1.7:8501", None)
    assert "every network interface" in everywhere and "--server.address 127.0.0.1" in everywhere
    assert "'0.0.0.0'" in exposure_problem("0.0.0.0", "192.168.1.7:8501", "0")
    assert exposure_problem("0.0.0.0", "192.168.1.7:8501", "1") is None  # RLHF_WORKBENCH_ALLOW_REMOTE=1
