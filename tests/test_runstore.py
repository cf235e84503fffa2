"""The run store: appends, atomic status, checkpoints with optimizer state, truncation on resume."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from core.checkpoint import load_optimizer_tensors, load_trainable_state_dict, rng_state, set_rng_state, trainable_state_dict
from core.metrics import describe, is_defined
from core.runstore import Run, RunStoreError, list_runs
from core.trainers import common
from core.trainers.common import Logger, NonFiniteLossError, check_finite, progress, run_guard, set_phase


@dataclass
class Cfg:
    lr: float = 1e-3
    name: str = "x"


def test_create_log_read(tmp_path):
    run = Run.create("dpo", Cfg(), root=tmp_path)
    assert run.config == {"lr": 1e-3, "name": "x"} and run.kind == "dpo"
    assert run.status()["status"] == "running"
    run.log_metrics(1, {"loss": 0.5})
    run.log_metrics(2, {"loss": 0.25})
    run.log_samples(2, [{"prompt": "p", "response": "r", "per_token": {"kl": [0.1, 0.2]}}])
    assert [m["loss"] for m in run.metrics()] == [0.5, 0.25]
    assert run.samples(2)[0]["per_token"]["kl"] == [0.1, 0.2]
    assert list_runs(tmp_path)[0].path == run.path
    assert list_runs(tmp_path, kind="ppo") == []


def test_partial_line_is_skipped(tmp_path):
    run = Run.create("ppo", Cfg(), root=tmp_path)
    run.log_metrics(1, {"loss": 1.0})
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # a writer caught mid-line
    assert len(run.metrics()) == 1


def test_truncate_after(tmp_path):
    run = Run.create("ppo", Cfg(), root=tmp_path)
    for s in range(1, 6):
        run.log_metrics(s, {"loss": float(s)})
    run.truncate_after(3)
    assert [m["step"] for m in run.metrics()] == [1, 2, 3]


def test_checkpoint_round_trip_with_optimizer(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    run = Run.create("sft", Cfg(), root=tmp_path)
    path = run.save_checkpoint(7, trainable_state_dict(model), optimizer=opt, state={"rng": rng_state()})
    assert run.latest_checkpoint() == (7, path)

    model2 = torch.nn.Linear(4, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.1)
    load_trainable_state_dict(model2, path)
    load_optimizer_tensors(opt2, path)
    torch.testing.assert_close(model2.weight, model.weight)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    for k in s1:
        for key in s1[k]:
            torch.testing.assert_close(torch.as_tensor(s2[k][key]), torch.as_tensor(s1[k][key]))
    state = json.loads((path / "trainer_state.json").read_text())
    set_rng_state(state["rng"])
    a = torch.rand(3)
    set_rng_state(state["rng"])
    torch.testing.assert_close(torch.rand(3), a)


def test_old_checkpoints_are_pruned(tmp_path):
    run = Run.create("sft", Cfg(), root=tmp_path)
    for step in (1, 2, 3):
        run.save_checkpoint(step, {"w": torch.ones(2)}, keep=2)
    assert [s for s, _ in run.checkpoints()] == [2, 3]


def test_run_guard_marks_failure_and_keeps_metrics(tmp_path):
    run = Run.create("dpo", Cfg(), root=tmp_path)
    run.log_metrics(1, {"loss": 1.0})
    with pytest.raises(NonFiniteLossError):
        with run_guard(run):
            check_finite(torch.tensor(float("nan")), step=2)
    status = run.status()
    assert status["status"] == "failed" and "step 2" in status["error"]
    assert len(run.metrics()) == 1


def test_phase_progress_is_throttled_and_ended_by_a_logged_step(tmp_path, monkeypatch):
    run = Run.create("dpo", Cfg(), root=tmp_path)
    writes = []
    set_status = Run.set_status
    monkeypatch.setattr(Run, "set_status", lambda self, *a, **kw: (writes.append(kw.get("phase_done")), set_status(self, *a, **kw))[1])
    set_phase("reference pass")  # outside run_guard: nothing is written
    assert list(progress(range(3))) == [0, 1, 2] and writes == []
    with run_guard(run):
        set_phase("reference pass")
        assert run.status()["phase"] == "reference pass" and run.status()["phase_total"] is None
        seen = []
        monkeypatch.setattr(common, "PHASE_WRITE_INTERVAL_S", 60.0)  # 50 items within the interval: first and last written
        for i in progress(range(50)):
            seen.append(i)
            assert run.status()["phase_done"] == 0 and run.status()["phase_total"] == 50
        assert seen == list(range(50))
        assert (run.status()["phase_done"], run.status()["phase_total"]) == (50, 50)
        assert writes == [None, 0, 50]
        monkeypatch.setattr(common, "PHASE_WRITE_INTERVAL_S", 0.0)  # interval passed at every item: each one written
        assert list(progress(range(3))) == [0, 1, 2] and writes[3:] == [0, 1, 2, 3]
        del writes[3:]
        Logger(run)(1, {"loss": 0.5})
        assert run.status()["phase"] is None and run.status()["step"] == 1
        assert list(progress(range(2))) == [0, 1] and len(writes) == 4  # no phase after a step: only the Logger wrote
    assert run.status()["status"] == "finished" and run.status()["phase"] is None


def test_open_deleted_run_is_clear(tmp_path):
    with pytest.raises(RunStoreError, match="not a run folder"):
        Run.open(tmp_path / "gone")


def test_metric_names_are_defined_once():
    assert "k1" in describe("objective/kl") or "KL" in describe("objective/kl")
    assert is_defined("rewards/toxicity_sentence") and is_defined("eval/toxicity_avg_max")
    assert not is_defined("made/up")


def test_logger_rejects_undefined_names(tmp_path):
    seen = []
    log = Logger(Run.create("dpo", Cfg(), root=tmp_path), on_log=lambda s, m: seen.append((s, m)))
    log(1, {"loss": torch.tensor(0.5)})
    assert seen == [(1, {"loss": 0.5})]
    with pytest.raises(KeyError, match="not defined"):
        log(2, {"made/up": 1.0})


def test_resumed_config_keeps_saved_settings_unless_changed(tmp_path, monkeypatch):
    from dataclasses import dataclass as dc

    from core.trainers.common import resumed_config

    @dc
    class TrainCfg:
        lr: float = 1e-3
        num_steps: int = 50
        cpu: bool = False
        trackers: str = ""
        resume_from: str = ""

    run = Run.create("dpo", TrainCfg(lr=5e-4, num_steps=6), root=tmp_path)
    same = resumed_config(TrainCfg(resume_from=str(run.path)))  # e.g. `--resume-from RUN` alone
    assert (same.lr, same.num_steps) == (5e-4, 6)
    longer = resumed_config(TrainCfg(lr=9.0, num_steps=12, resume_from=str(run.path)))
    assert (longer.lr, longer.num_steps) == (5e-4, 12)  # lr is not in `keep`: the saved one stays


# ----------------------------------------------------------------------------- one writer, intact checkpoints


def _hold_writer_lock(run_path):
    """A separate process that takes the run's writer lock and keeps it until killed."""
    import subprocess
    import sys

    code = ("import sys, time; from core.runstore import Run; Run.open(sys.argv[1]).acquire_writer(); "
            "print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_path)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_one_writer_per_run_and_a_dead_writer_is_interrupted(tmp_path):
    import signal
    from types import SimpleNamespace

    import torch

    from core.trainers.common import TrainingError, open_run

    run = Run.create("dpo", {"lr": 1.0}, root=tmp_path)
    run.save_checkpoint(2, {"w": torch.zeros(2)})
    run.set_status("running", step=2)
    owner = _hold_writer_lock(run.path)
    try:
        with pytest.raises(RunStoreError, match=rf"being written by another process \(pid {owner.pid}\)"):
            Run.open(run.path).acquire_writer()
        with pytest.raises(TrainingError, match=rf"cannot resume: .* \(pid {owner.pid}\)"):
            open_run("dpo", SimpleNamespace(resume_from=str(run.path)), is_main=True)
        assert run.effective_status()["status"] == "running" and run.writer_alive()
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    st = run.effective_status()
    assert st["status"] == "interrupted" and st["step"] == 2 and st["resumable_from"] == 2 and "resume" in st["error"]
    assert run.status()["status"] == "running"  # what is on disk is untouched: only the reading changes
    resumed, step, folder = open_run("dpo", SimpleNamespace(resume_from=str(run.path)), is_main=True)  # stale lock taken over
    try:
        assert step == 2 and folder.name == "step-000002" and resumed.effective_status()["status"] == "running"
    finally:
        resumed.release_writer()


def test_a_run_never_taken_by_a_trainer_is_interrupted_once_its_process_is_gone(tmp_path):
    run = Run.create("ppo", {}, root=tmp_path)
    assert run.effective_status()["status"] == "running"  # this process wrote it and lives
    status = {**run.status(), "pid": 2**22 + 12345}  # written by a process that no longer exists
    (run.path / "status.json").write_text(json.dumps(status))
    assert run.effective_status()["status"] == "interrupted"


def test_broken_latest_checkpoint_falls_back_before_anything_is_truncated(tmp_path):
    from types import SimpleNamespace

    import torch

    from core.runstore import check_checkpoint
    from core.trainers.common import open_run

    run = Run.create("dpo", {}, root=tmp_path)
    for step in (2, 4, 6):
        run.save_checkpoint(step, {"w": torch.arange(1000.0)}, keep=3)
    for step in range(1, 7):
        run.log_metrics(step, {"loss": float(step)})
    model = run.path / "checkpoints" / "step-000006" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-100])  # killed mid-write, or a disk error
    (run.path / "checkpoints" / "step-000004" / "trainer_state.json").write_text('{"step": 4, "rng"')
    stale = run.path / "checkpoints" / ".step-000008.tmp-999999"
    stale.mkdir()
    assert check_checkpoint(model.parent) == "model.safetensors: truncated (3972 of 4072 bytes)"
    assert "trainer_state.json unreadable" in check_checkpoint(model.parent.with_name("step-000004"))
    assert [s for s, _ in run.checkpoints()] == [2] and [s for s, _, _ in run.broken_checkpoints()] == [4, 6]
    with pytest.warns(UserWarning, match=r"resuming from step-000002; skipped the broken step-000004 .*step-000006 "
                                         r"\(model.safetensors: truncated"):
        resumed, step, folder = open_run("dpo", SimpleNamespace(resume_from=str(run.path)), is_main=True)
    try:
        assert (step, folder.name) == (2, "step-000002")
        assert [r["step"] for r in run.metrics()] == [1, 2]  # truncated after the intact checkpoint only
        assert not stale.exists()  # the killed write's temporary folder is cleaned
        resumed.save_checkpoint(3, {"w": torch.zeros(1)}, keep=2)
        assert [p.name for p in sorted((run.path / "checkpoints").iterdir())] == ["step-000002", "step-000003"]
    finally:
        resumed.release_writer()


def test_checkpoint_files_and_folders_are_fsynced(tmp_path, monkeypatch):
    import torch

    import core.runstore as runstore

    synced = []
    real = runstore._fsync_path
    monkeypatch.setattr(runstore, "_fsync_path", lambda p: synced.append(Path(p).name) or real(p))
    Run.create("dpo", {}, root=tmp_path).save_checkpoint(1, {"w": torch.zeros(1)}, optimizer=None)
    assert {"model.safetensors", "trainer_state.json", ".step-000001.tmp-" + str(__import__("os").getpid()),
            "checkpoints"} <= set(synced)
