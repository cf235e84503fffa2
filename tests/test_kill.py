"""SIGKILL of a real training process: the run is reported "interrupted", its lock is free, and resuming it gives the
same metrics as a run that was never killed (tiny model, DPO on the demo pairs, CPU).

The kill lands at a seeded point after the first checkpoint (a step, a metrics append or a checkpoint write); a
temporary checkpoint folder left by a kill inside a write is cleaned when the run is taken again.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.runstore import Run, list_runs

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--dataset", "demo", "--train-size", "0", "--eval-size", "2", "--max-length", "64", "--max-prompt-length", "32",
         "--batch-size", "2", "--gradient-accumulation-steps", "1", "--num-steps", "8", "--eval-every", "4",
         "--num-samples", "0", "--save-every", "2", "--no-lora", "--learning-rate", "1e-3", "--cpu"]


def _dpo(*extra: str, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "core.trainers.dpo", *FLAGS, *extra], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time") and k != "tokens/per_second"} for r in rows]


@pytest.mark.parametrize("seed", [0])
def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny_model_path, tmp_path, monkeypatch, seed):
    env = dict(os.environ, RLHF_WORKBENCH_RUNS=str(tmp_path / "full"))
    full = _dpo("--model-name-or-path", str(tiny_model_path), env=env)
    assert full.wait(300) == 0, full.stderr.read()
    (reference,) = list_runs(tmp_path / "full")

    env = dict(os.environ, RLHF_WORKBENCH_RUNS=str(tmp_path / "killed"))
    proc = _dpo("--model-name-or-path", str(tiny_model_path), env=env)
    kill_after = random.Random(seed).uniform(0.0, 1.5)  # seconds after the first checkpoint appears
    deadline = time.time() + 300
    while not list((tmp_path / "killed").glob("*/checkpoints/step-*")):
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run,) = list_runs(tmp_path / "killed")
    if run.status()["status"] == "finished":
        pytest.skip("the run finished before the kill landed (a fast machine)")
    st = run.effective_status()
    assert st["status"] == "interrupted" and not run.writer_alive() and st["resumable_from"] >= 2

    resumed = _dpo("--model-name-or-path", str(tiny_model_path), "--resume-from", str(run.path), env=env)
    assert resumed.wait(300) == 0, resumed.stderr.read()
    run = Run.open(run.path)
    assert run.status()["status"] == "finished" and not list(run.path.glob("checkpoints/.step-*"))
    got, want = _comparable(run.metrics()), _comparable(reference.metrics())
    assert [r["step"] for r in got] == [r["step"] for r in want]  # no step missing, none twice
    for a, b in zip(want, got):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k)
