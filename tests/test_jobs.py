"""Jobs started from the app: each training in its own process, a clean Stop, Resume, strict configs.

The jobs run ``python -m core.trainers.launch RUN_FOLDER`` on the tiny random Llama for a
few steps; most of their time is the child process importing torch and transformers.

    .venv/bin/python -m pytest tests/test_jobs.py -q
"""

from __future__ import annotations

import json
import os
import time

import pytest

DPO = {"model_name_or_path": "tiny-random-llama", "dataset": "demo", "train_size": 8, "eval_size": 4, "num_steps": 2,
       "batch_size": 2, "max_length": 96, "max_prompt_length": 48, "eval_every": 1, "save_every": 100, "num_samples": 1}
PPO = {"model_name_or_path": "tiny-random-llama", "prompts": "demo", "rewards": "toxicity", "weights": "toxicity=1",
       "num_prompts": 2, "batch_size": 2, "minibatch_size": 2, "max_new_tokens": 6, "eval_prompts": 0, "eval_every": 0,
       "ppo_epochs": 1, "save_every": 0, "cpu": True}


@pytest.fixture
def jobs(tiny_model_path):
    """A fresh registry; any job still running at the end is stopped and waited for."""
    from workbench.jobs import JobRegistry

    reg = JobRegistry()
    yield reg
    for job in reg.jobs.values():
        if job.alive:
            job.process.kill()
            job.process.wait(30)


def test_unknown_config_field_is_rejected(monkeypatch):
    from core.trainers.common import TrainingError
    from core.trainers.launch import build_config
    from core.trainers.ppo import PPOConfig
    from workbench import training

    with pytest.raises(TrainingError, match="DPOConfig has no field.*'num_iterations'"):
        training.preference("DPO", "tiny-random-llama", "demo", 0.1, num_iterations=3)
    monkeypatch.setenv(training.SHORT_ENV, json.dumps({"ppo": {"epochs": 2}}))  # PPO spells it ppo_epochs
    with pytest.raises(TrainingError, match="PPOConfig has no field.*'epochs'"):
        training.short_ppo("tiny-random-llama", {"toxicity": 1.0}, 0.05)
    with pytest.raises(TrainingError, match="'cliprange_typo'"):
        build_config(PPOConfig, {"cliprange_typo": 0.1})
    assert training.preference("SimPO", "tiny-random-llama", "demo", 2.0, gamma_beta_ratio=0.25).gamma_beta_ratio == 0.25


def test_launcher_marks_a_run_with_a_bad_config_failed():
    """A failure before the trainer starts (here: a field the config class lacks) still ends in status.json."""
    from core.runstore import Run
    from core.trainers.launch import main

    run = Run.create("dpo", {**DPO, "no_such_field": 1})
    assert main([str(run.path)]) == 1
    status = run.status()
    assert status["status"] == "failed" and "no_such_field" in status["error"]


def test_dpo_jobs_run_in_their_own_processes_and_switch_device(jobs):
    """Two jobs in a row on different device settings (cpu=True, then cpu=False): both finish.

    In-process, the second one failed with "AcceleratorState has already been initialized".
    """
    from accelerate.state import AcceleratorState

    from core.runstore import Run
    from workbench import training

    AcceleratorState._reset_state(reset_partial_state=True)  # in-process trainers of earlier tests leave it set
    for cpu in (True, False):
        job = jobs.start("dpo", training.build("dpo", {**DPO, "cpu": cpu}), label=f"dpo cpu={cpu}")
        jobs.wait(job, 240)
        assert job.state == "finished", (job.error, (job.run_path / "train.log").read_text()[-2000:])
        run = Run.open(job.run_path)
        assert run.kind == "dpo" and run.config["cpu"] is cpu and run.meta["name"] == f"dpo cpu={cpu}"
        assert run.status()["pid"] == job.process.pid != os.getpid()  # trained in the child process
        assert [m["step"] for m in run.metrics() if "loss" in m] == [1, 2]
        assert run.latest_checkpoint()[0] == 2
    assert not AcceleratorState._shared_state  # nothing of accelerate's process-wide state reached this process


def test_stop_ppo_job_keeps_a_checkpoint_and_resumes(jobs):
    from core.runstore import Run
    from workbench import training

    total = 6
    job = jobs.start("ppo", training.build("ppo", {**PPO, "num_iterations": total}), label="stop me")
    deadline = time.time() + 240
    while job.alive and (job.last_step or 0) < 1 and time.time() < deadline:
        time.sleep(0.2)
    assert job.alive, f"the job ended before it could be stopped: {job.state} {job.error}"
    jobs.stop(job)
    assert job.state == "stopping"
    jobs.wait(job, 240)
    run = Run.open(job.run_path)
    assert job.state == "stopped" and run.status()["status"] == "stopped", job.error
    step, _ = run.latest_checkpoint()
    assert 1 <= step < total and run.status()["step"] == step  # stopped after the iteration it was in, with its checkpoint
    assert max(m["step"] for m in run.metrics()) == step
    assert not (run.path / "model").exists()  # exported only once it finishes

    resumed = jobs.resume(job)
    assert resumed.run_path == job.run_path
    jobs.wait(resumed, 300)
    assert resumed.state == "finished", (resumed.error, (run.path / "train.log").read_text()[-2000:])
    assert [m["step"] for m in run.metrics()] == list(range(1, total + 1))  # one history, no repeated iterations
    assert run.latest_checkpoint()[0] == total and (run.path / "model").is_dir()


def test_implicit_rewards_equal_a_naive_computation(tiny_model_path):
    """DPO's implicit reward β(log π(y|x) − log π_ref(y|x)) of a trained run: one unpadded forward pass per response
    under the run's policy and under the base model gives the same numbers as the trainer's batched path,
    and their mean is what the trainer logged as eval/rewards/chosen. An untrained policy gives exactly 0."""
    import torch

    from core.implicit_rewards import held_out_examples, implicit_rewards, run_config, trained_policy
    from core.models import load_causal_lm, load_tokenizer
    from core.trainers.dpo import DPOConfig, train_dpo

    run = train_dpo(DPOConfig(**{**DPO, "learning_rate": 1e-2, "beta": 0.5, "cpu": True}))
    config = run_config(run)
    tokenizer = load_tokenizer(config.model_name_or_path)
    examples = held_out_examples(config, tokenizer)
    policy = trained_policy(run, device="cpu")
    chosen, rejected = implicit_rewards(config, examples, policy, tokenizer.pad_token_id)

    base = load_causal_lm(str(tiny_model_path), device="cpu", dtype=torch.float32)

    def naive_logp(model, prompt_ids, response_ids):
        ids = torch.tensor([prompt_ids + response_ids])
        with torch.no_grad():
            logps = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)  # (T, V)
        return sum(logps[len(prompt_ids) + k - 1, t].item() for k, t in enumerate(response_ids))

    for i, e in enumerate(examples):
        for reward, ids in ((chosen[i], e.chosen_ids), (rejected[i], e.rejected_ids)):
            naive = config.beta * (naive_logp(policy, e.prompt_ids, ids) - naive_logp(base, e.prompt_ids, ids))
            assert float(reward) == pytest.approx(naive, abs=2e-4)
    assert chosen.abs().max() > 1e-3, "the run did not move the policy: the comparison would be trivial"
    logged = [m for m in run.metrics() if "eval/rewards/chosen" in m][-1]
    assert float(chosen.mean()) == pytest.approx(logged["eval/rewards/chosen"], abs=1e-5)
    assert float(rejected.mean()) == pytest.approx(logged["eval/rewards/rejected"], abs=1e-5)

    untrained_c, untrained_r = implicit_rewards(config, examples, base, tokenizer.pad_token_id, reference=base)
    assert untrained_c.abs().max() == 0 and untrained_r.abs().max() == 0


def test_a_killed_lab_run_is_interrupted_and_resumes_from_its_checkpoint(jobs, monkeypatch):
    """The lab's short PPO checkpoints every iteration: SIGKILL after one, and the run reads "interrupted"
    (never "running" or "failed"); a resume is refused while the training process holds the run, and another
    server (a fresh registry: no job owns the run) resumes it after the kill to one history, no step twice."""
    import signal

    from core.runstore import Run
    from core.trainers.rewards_setup import RewardSpec
    from workbench import training
    from workbench.jobs import JobRegistry

    monkeypatch.setattr(training, "ppo_reward_specs", lambda: {"toxicity": RewardSpec("toxicity", "toxicity")})
    small = {k: v for k, v in PPO.items() if k not in ("rewards", "weights", "save_every", "model_name_or_path")}
    config = training.short_ppo("tiny-random-llama", {"toxicity": 1.0}, 0.05, **{**small, "num_iterations": 6})
    assert config.save_every == 1  # the lab's cadence, not overridden here
    job = jobs.start("ppo", config, label="lab killed")
    other_server = JobRegistry()
    deadline = time.time() + 240
    while job.alive and Run(job.run_path).latest_checkpoint() is None and time.time() < deadline:
        time.sleep(0.05)
    assert job.alive, f"the job ended before it could be killed: {job.state} {job.error}"
    with pytest.raises(RuntimeError, match=rf"'lab killed' is being trained by another process \(pid {job.process.pid}\)"):
        other_server.resume_run(job.run_path)
    job.process.send_signal(signal.SIGKILL)
    job.process.wait(30)
    run = Run.open(job.run_path)
    status = run.effective_status()
    assert job.state == "interrupted" and status["status"] == "interrupted", (job.state, status)
    assert 1 <= status["resumable_from"] < 6 and run.status()["status"] == "running"  # nothing rewritten on disk

    resumed = other_server.resume_run(job.run_path)
    assert (resumed.kind, resumed.label, resumed.total_steps) == ("ppo", "lab killed", 6)
    other_server.wait(resumed, 300)
    try:
        assert resumed.state == "finished", (resumed.error, (run.path / "train.log").read_text()[-2000:])
        assert [m["step"] for m in run.metrics()] == list(range(1, 7))  # one history, nothing missing or twice
    finally:
        if resumed.alive:
            resumed.process.kill()
