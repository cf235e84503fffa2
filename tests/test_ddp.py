"""Multi-process training: `accelerate launch --multi_gpu --num_processes 2` with no visible GPU (DDP over gloo on
the CPU; see launch() for why not `--cpu`) on the tiny random Llama.

Each test launches tests/ddp_train.py, which runs one trainer for two steps in both
processes and records each process's trainable parameters (and, for PPO, every update of
the adaptive KL controller). The checks:
- the processes hold the same trained parameters, and those differ from the initial ones
  (each process sees different data, so they agree only if the gradients are synchronised);
- only the main process wrote the run store: one run folder, each step logged once, and its
  checkpoint equals what the processes hold;
- PPO: the adaptive KL controller saw the same KL and ends with the same beta in both processes,
  and that beta is the one checkpointed;
- reward model: two processes split each batch and train the same model as one process.

Each test starts two or three Python processes: about 70 s of CPU time for the file. Skipped where two
processes cannot be launched.
    pytest tests/test_ddp.py -q
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_trainers_preference import PAIRS  # the same ten short pairs

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("ddp_train.py")
WORLD = 2


def _launch_problem() -> str | None:
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        return "accelerate is not installed"
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        return "this torch build has no torch.distributed gloo backend"
    if sys.platform not in ("linux", "darwin"):
        return f"launching {WORLD} local processes is not supported on {sys.platform}"
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
    except OSError as exc:
        return f"cannot open a local port for the process group: {exc}"
    return None


_PROBLEM = _launch_problem()
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=f"cannot launch {WORLD} processes: {_PROBLEM}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(kind: str, config: dict, tmp_path: Path, world: int = WORLD) -> tuple[list[dict], list[dict], Path]:
    """Run ``kind`` in ``world`` processes; (per-rank tensors, per-rank records, run store folder)."""
    out, runs = tmp_path / f"out-{world}", tmp_path / f"runs-{world}"
    out.mkdir()
    config_file = out / "config.json"
    config_file.write_text(json.dumps(config))
    env = {**os.environ, "RLHF_WORKBENCH_RUNS": str(runs), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # `--multi_gpu` selects accelerate's torchrun launcher; with no visible GPU the processes run on the CPU over
    # gloo. (`--cpu --num_processes 2` alone starts ONE process in accelerate 1.x unless an MPI hostfile is given.)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(world),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), str(DRIVER), kind, str(config_file), str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    tensors = [load_file(str(out / f"rank{r}.safetensors")) for r in range(world)]
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    assert [(r["rank"], r["world"]) for r in records] == [(r, world) for r in range(world)]
    return tensors, records, runs


def _final(tensors: dict) -> dict:
    return {k.removeprefix("final/"): v for k, v in tensors.items() if k.startswith("final/")}


def assert_ranks_agree_and_trained(tensors: list[dict]) -> None:
    finals = [_final(t) for t in tensors]
    assert finals[0] and all(f.keys() == finals[0].keys() for f in finals)
    for f in finals[1:]:
        for k in finals[0]:
            assert torch.equal(f[k], finals[0][k]), f"processes disagree on {k}"
    initial = {k.removeprefix("initial/"): v for k, v in tensors[0].items() if k.startswith("initial/")}
    assert initial.keys() == finals[0].keys()
    assert any(not torch.equal(initial[k], finals[0][k]) for k in initial), "training changed no parameter"


def the_one_run(runs: Path, records: list[dict]):
    """The only run folder of the store, written by the main process alone."""
    from core.runstore import Run

    folders = [p for p in runs.iterdir() if p.is_dir()]
    assert len(folders) == 1, f"expected one run folder, found {[p.name for p in folders]}"
    assert records[0]["run"] == str(folders[0]) and all(r["run"] is None for r in records[1:])
    run = Run.open(folders[0])
    assert run.status()["status"] == "finished"
    return run


def assert_checkpoint_is(run, tensors: dict) -> None:
    """The run's last checkpoint holds the parameters the processes hold (names as in trainable_state_dict)."""
    saved = load_file(str(run.latest_checkpoint()[1] / "model.safetensors"))
    final = {k.partition(".")[2]: v for k, v in _final(tensors).items()}
    assert len(saved) == len(final)
    for name, value in saved.items():
        assert torch.equal(value.float(), final[name]), name




def test_dpo_two_processes_agree_and_only_main_writes(tiny_model_path, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS))
    config = dict(model_name_or_path=str(tiny_model_path), dataset=str(data), train_size=0, eval_size=2, max_length=64,
                  max_prompt_length=32, batch_size=2, gradient_accumulation_steps=1, num_steps=2, eval_every=0,
                  eval_batch_size=4, num_samples=1, save_every=0, lora=False, learning_rate=1e-3, cpu=True)
    tensors, records, runs = launch("dpo", config, tmp_path)
    assert_ranks_agree_and_trained(tensors)
    run = the_one_run(runs, records)
    train_steps = [r["step"] for r in run.metrics() if "loss" in r]
    eval_steps = [r["step"] for r in run.metrics() if "eval/loss" in r]
    assert train_steps == [1, 2] and eval_steps == [0, 2]
    assert_checkpoint_is(run, tensors[0])


def test_ppo_two_processes_agree_on_parameters_and_adaptive_beta(tiny_model_path, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("You are a\nI think that the\nThe weather today is\nMy friend said\nWhy do people\nTell me about\n")
    config = dict(model_name_or_path=str(tiny_model_path), prompts=str(prompts), num_prompts=4, eval_prompts=0,
                  rewards="toxicity", batch_size=2, minibatch_size=2, ppo_epochs=1, num_iterations=2, max_new_tokens=4,
                  eval_every=0, save_every=0, learning_rate=1e-2, adaptive_kl=True, kl_coef=0.1, kl_target=0.01,
                  kl_horizon=10, cpu=True)
    tensors, records, runs = launch("ppo", config, tmp_path)
    assert_ranks_agree_and_trained(tensors)
    run = the_one_run(runs, records)
    assert [r["step"] for r in run.metrics()] == [1, 2]
    assert_checkpoint_is(run, tensors[0])

    # the controller saw the KL of the whole global batch (the same in every process), so beta is the same
    updates = [r["kl_updates"] for r in records]
    assert len(updates[0]) == 2 and all(u == updates[0] for u in updates[1:])
    assert all(n == 2 * WORLD for _, n, _ in updates[0])
    assert updates[0][-1][2] != config["kl_coef"]
    state = json.loads((run.latest_checkpoint()[1] / "trainer_state.json").read_text())
    assert state["kl_coef"] == updates[0][-1][2]
    assert [r["objective/kl_coef"] for r in run.metrics()] == [config["kl_coef"], updates[0][0][2]]


# (saving a LoRA model merges its adapters in place, so that variant keeps the model unsaved to compare it)
@pytest.mark.parametrize("backbone", [{}, {"freeze_backbone": False, "use_lora": True, "lora_r": 4, "save_model": False}],
                         ids=["head", "lora"])
def test_reward_model_two_processes_train_what_one_process_trains(tiny_model_path, tmp_path, backbone):
    import random

    from core.runstore import Run
    from core.trainers.reward import RewardConfig, train_reward_model

    rng, words = random.Random(0), "the a cat dog runs sits blue red fast slow happy sad tree house river".split()
    data = tmp_path / "pairs.jsonl"
    with open(data, "w") as f:
        for i in range(20):  # separable: chosen = rejected + " banana"
            base = " ".join(rng.choices(words, k=6))
            f.write(json.dumps({"prompt": f"Q{i}: " + " ".join(rng.choices(words, k=4)), "chosen": base + " banana",
                                "rejected": base}) + "\n")
    # 16 training pairs in batches of 5: the last batch has one pair, so process 1 has none there
    config = dict(model_name_or_path=str(tiny_model_path), dataset=str(data), limit=0, eval_fraction=0.2, num_epochs=1,
                  batch_size=5, learning_rate=1e-2, max_length=48, eval_every=2, save_every=0, progress=False, cpu=True,
                  **backbone)
    tensors, records, runs = launch("reward", {**config, "save_dir": str(tmp_path / "rm-2")}, tmp_path)
    assert_ranks_agree_and_trained(tensors)
    run = the_one_run(runs, records)
    if config.get("save_model", True):
        assert run.status()["model_path"] == str(tmp_path / "rm-2") and (tmp_path / "rm-2").is_dir()

    one = train_reward_model(RewardConfig(**{**config, "save_dir": str(tmp_path / "rm-1")}))
    rows, want = run.metrics(), Run.open(one.path).metrics()
    assert [r["step"] for r in rows] == [r["step"] for r in want] == ([0] if not backbone else []) + [1, 2, 3, 4]
    for got, expected in zip(rows, want):
        assert got.keys() == expected.keys()
        for k in expected:
            if not k.startswith("time"):
                assert got[k] == pytest.approx(expected[k], rel=1e-4, abs=1e-6), (got["step"], k)
    w2, w1 = (load_file(str(r.latest_checkpoint()[1] / "model.safetensors")) for r in (run, Run.open(one.path)))
    assert w2.keys() == w1.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)
