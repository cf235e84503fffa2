"""The run store: appends, atomic status, checkpoints with optimizer state, truncation on resume."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from core.checkpoint import load_optimizer_tensors, load_trainable_state_dict, rng_state, set_rng_state, trainable_state_dict
from core.metrics import describe, is_defined
from core.runstore import Run, RunStoreError, list_runs
from core.trainers.common import Logger, NonFiniteLossError, check_finite, run_guard


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
