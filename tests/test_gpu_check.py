"""bench/gpu_check.py runs every trainer on the CPU with --tiny, and its MFU arithmetic is the stated formula.

    pytest tests/test_gpu_check.py -q        (~30-60 s on 2 CPU cores)
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tiny_run_of_every_trainer_on_cpu(tiny_model_path, tmp_path, capsys):
    gpu_check = _gpu_check()
    out = tmp_path / "gpu.json"
    report = gpu_check.main(["--tiny", "--cpu", "--steps", "1", "--peak-tflops", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert list(report["trainers"]) == ["sft", "reward", "dpo", "simpo", "ppo"]

    # N = every nn.Linear weight: per layer q, o (h x h), k, v (h x kv heads·head dim), 3 MLP matrices; plus the tied LM head
    c = json.loads((tiny_model_path / "config.json").read_text())
    h, i, kv = c["hidden_size"], c["intermediate_size"], c["num_key_value_heads"] * c["hidden_size"] // c["num_attention_heads"]
    n = c["num_hidden_layers"] * (2 * h * h + 2 * h * kv + 3 * h * i)
    assert report["model"]["n_flop_params"] == n + c["vocab_size"] * h
    assert report["trainers"]["reward"]["n_flop_params"] == n + h  # the score head, no LM head

    for name, r in report["trainers"].items():
        assert r["status"] == "finished" and r["steps"] == 1, name
        assert r["fp32_master_weights"] and r["trainable_dtypes"] == ["F32"], name
        assert r["tokens_per_s"] > 0 and r["peak_memory_gib"] is None, name  # no CUDA: no peak memory
        if name != "ppo":
            assert r["mfu"] == pytest.approx(6 * r["n_flop_params"] * r["tokens_per_s"] / 1e12 / 1.0), name
    ppo = report["trainers"]["ppo"]
    shares = [v["share"] for v in ppo["phases"].values()]
    assert all(s > 0 for s in shares) and 0.5 < sum(shares) <= 1.0
    table = capsys.readouterr().out
    assert "PPO phases per iteration" in table and "fp32 + fp32 Adam" in table


def test_without_cuda_the_full_check_asks_for_tiny(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        _gpu_check().main([])
