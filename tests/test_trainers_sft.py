"""SFT trainer on the tiny random Llama: completion-only loss by hand, it trains, resume, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

ROWS = [("Q: 2+2? A:", "4"), ("Q: capital of Italy? A:", "Rome"), ("Q: colour of grass? A:", "green"),
        ("Q: opposite of up? A:", "down"), ("Q: a pet? A:", "a cat"), ("Q: 3+3? A:", "6")]


@pytest.fixture
def sft_file(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in ROWS))
    return path


def _config(model, data, **kw):
    from core.trainers.sft import SFTConfig

    base = dict(model_name_or_path=str(model), dataset=str(data), train_size=0, eval_size=2, max_length=32,
                max_prompt_length=16, batch_size=2, gradient_accumulation_steps=1, num_steps=3, eval_every=2,
                num_samples=1, sample_max_new_tokens=4, save_every=2, lora=False, learning_rate=1e-3, cpu=True)
    base.update(kw)
    return SFTConfig(**base)


def test_loss_is_the_mean_nll_over_completion_tokens_only(tiny_model):
    from core.trainers.batching import SFTExample, collate_sft
    from core.trainers.sft import completion_nll

    examples = [SFTExample([11, 12, 13], [14, 15], "", ""), SFTExample([21], [22, 23, 24], "", "")]
    with torch.no_grad():
        nll, n = completion_nll(tiny_model, collate_sft(examples, pad_id=0))
        naive = []
        for e in examples:  # unpadded, full log-softmax, completion positions only
            ids = torch.tensor([e.prompt_ids + e.completion_ids])
            logp = torch.log_softmax(tiny_model(ids).logits[0].float(), -1)
            for t in range(len(e.prompt_ids), ids.shape[1]):
                naive.append(-logp[t - 1, ids[0, t]])
    assert int(n) == 5
    torch.testing.assert_close(nll / n, torch.stack(naive).mean(), rtol=1e-5, atol=1e-5)


def test_sft_trains_and_changes_parameters(tiny_model_path, sft_file):
    from safetensors.torch import load_file

    from core.trainers.sft import train_sft

    # seed 2 holds out "Q: 2+2? A: 4" (and "green") while "Q: 3+3? A: 6" trains: 3 steps lower the held-out loss
    run = train_sft(_config(tiny_model_path, sft_file, seed=2))
    assert run.status()["status"] == "finished"
    rows = [r for r in run.metrics() if "loss" in r]
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)
    assert rows[0]["sft/perplexity"] == pytest.approx(math.exp(rows[0]["loss"]), rel=1e-6)
    evals = [r for r in run.metrics() if "eval/loss" in r]
    assert [r["step"] for r in evals] == [0, 2, 3] and evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    sample = run.samples(step=3)[0]
    assert len(sample["per_token"]["logps"]) == len(sample["tokens"]) and "response" in sample
    step, folder = run.latest_checkpoint()
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(load_file(str(tiny_model_path / "model.safetensors"))[name],
                           load_file(str(folder / "model.safetensors"))[name])


def test_sft_resume_gives_the_same_next_metrics(tiny_model_path, sft_file):
    import os
    from pathlib import Path

    from core.runstore import Run
    from core.trainers.sft import train_sft

    config = _config(tiny_model_path, sft_file, num_steps=4, sample_max_new_tokens=0)
    full = train_sft(config).metrics()

    def stop(step, metrics):
        if step == 3 and "loss" in metrics:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        train_sft(config, on_log=stop)
    path = sorted(Path(os.environ["RLHF_WORKBENCH_RUNS"]).iterdir())[-1]
    assert Run.open(path).status()["status"] == "failed"
    got = train_sft(_config(tiny_model_path, sft_file, num_steps=4, resume_from=str(path))).metrics()
    assert [r["step"] for r in got] == [r["step"] for r in full]
    for a, b in zip(full, got):
        for k in ("loss", "eval/loss", "grad_norm"):
            if k in a:
                assert a[k] == pytest.approx(b[k], rel=1e-6), (a["step"], k)


def test_sft_bad_rows_and_empty_data(tiny_model_path, tmp_path):
    from core.data import DataError
    from core.trainers.common import TrainingError
    from core.trainers.sft import train_sft

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + json.dumps({"prompt": "a"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl, record 1"):
        train_sft(_config(tiny_model_path, bad))
    good = tmp_path / "long.jsonl"
    good.write_text(json.dumps({"prompt": "a", "completion": "word " * 50}) + "\n")
    with pytest.raises(TrainingError, match="empty after filtering by max_length=32"):
        train_sft(_config(tiny_model_path, good))
