"""DPO / IPO / SimPO trainers and their shared data plumbing, on the tiny random Llama (a few seconds each).

Exact checks: collation by hand; one concatenated (2B, T) pass equals separate unpadded
passes; DPO's step-0 loss is log 2 (IPO's 1/(4β²)) when policy = reference; with LoRA the
reference is the adapter-disabled policy; a resumed run logs the same next metrics as an
uninterrupted one; bad input gives the clear errors; samples carry per-token fields.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

PAIRS = [
    ("What colour is the sky?", "Blue, on a clear day.", "Green."),
    ("Name a fruit.", "An apple.", "A chair is a fruit."),
    ("How many legs has a cat?", "Four.", "Seven, usually."),
    ("Say hello politely.", "Hello, nice to meet you!", "Go away."),
    ("What is 2 + 2?", "It is 4.", "It is 5."),
    ("Capital of France?", "Paris.", "Berlin, I think."),
    ("Is water wet?", "Water makes things wet.", "No."),
    ("Give me a colour.", "Red.", "Seventeen."),
    ("Name a planet.", "Mars.", "The Moon is a planet."),
    ("What do bees make?", "Honey.", "Cheese."),
]


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS))
    return path


def _dpo_config(model, data, **kw):
    from core.trainers.dpo import DPOConfig

    base = dict(model_name_or_path=str(model), dataset=str(data), train_size=0, eval_size=2, max_length=64,
                max_prompt_length=32, batch_size=2, gradient_accumulation_steps=2, num_steps=3, eval_every=2,
                eval_batch_size=4, num_samples=2, save_every=2, lora=False, learning_rate=1e-3, cpu=True)
    base.update(kw)
    return DPOConfig(**base)


def _simpo_config(model, data, **kw):
    from core.trainers.simpo import SimPOConfig

    base = dict(model_name_or_path=str(model), dataset=str(data), train_size=0, eval_size=2, max_length=64,
                max_prompt_length=32, batch_size=2, gradient_accumulation_steps=2, num_steps=3, eval_every=2,
                eval_batch_size=4, num_samples=2, save_every=2, lora=False, learning_rate=1e-3, cpu=True)
    base.update(kw)
    return SimPOConfig(**base)


def _final_weights(run):
    from safetensors.torch import load_file

    step, folder = run.latest_checkpoint()
    return load_file(str(folder / "model.safetensors"))


# ----------------------------------------------------------------------------- data plumbing


def test_collate_preferences_by_hand():
    from core.trainers.batching import PreferenceExample, collate_preferences

    ex = [PreferenceExample([5, 6], [7], [8, 9], "", "", ""), PreferenceExample([5], [7, 7, 7], [9], "", "", "")]
    b = collate_preferences(ex, pad_id=0)
    # rows: chosen_0, chosen_1, rejected_0, rejected_1, left-padded to the longest row (4)
    assert b["input_ids"].tolist() == [[0, 5, 6, 7], [5, 7, 7, 7], [5, 6, 8, 9], [0, 0, 5, 9]]
    assert b["attention_mask"].tolist() == [[0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]]
    assert b["completion_mask"].tolist() == [[0, 0, 0, 1], [0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]]
    assert b["completion_lengths"].tolist() == [1, 3, 2, 1]
    assert set(b) == {"input_ids", "attention_mask", "completion_mask", "completion_lengths"}  # positions come from the mask


def test_tokenize_truncates_prompt_left_and_drops_long_pairs(tokenizer):
    from core.trainers.batching import tokenize_preferences

    records = [{"prompt": "one two three four five six seven", "chosen": "yes", "rejected": "no"},
               {"prompt": "hi", "chosen": "word " * 80, "rejected": "no"}]
    out = tokenize_preferences(tokenizer, records, max_length=16, max_prompt_length=3)
    assert len(out) == 1 and out.dropped == 1  # the second pair's chosen response does not fit: dropped, not cut
    assert out[0].prompt_ids == tokenizer(records[0]["prompt"])["input_ids"][-3:]
    assert out[0].chosen_ids[-1] == tokenizer.eos_token_id


def _with_long_pairs(tmp_path, long=(0, 3, 6)):
    """PAIRS, the chosen response of pairs ``long`` too long for max_length=64 (eval_size=4, seed=0 holds out 2, 3, 6, 7)."""
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "chosen": "word " * 80 if i in long else c, "rejected": r}) + "\n"
                            for i, (p, c, r) in enumerate(PAIRS)))
    return path


def test_over_length_pairs_are_counted_per_split(tokenizer, tmp_path):
    from types import SimpleNamespace

    from core.data import load_preference_records
    from core.trainers.batching import tokenize_preferences, train_eval_examples

    records = load_preference_records(str(_with_long_pairs(tmp_path)))
    config = SimpleNamespace(max_length=64, max_prompt_length=32, eval_size=4, seed=0, train_size=0)
    train, held_out, dropped = train_eval_examples(tokenize_preferences, tokenizer, records, config)
    assert dropped == {"data/dropped_train": 1, "data/dropped_eval": 2}  # pair 0 trains, pairs 3 and 6 are held out
    assert [e.prompt for e in held_out] == [PAIRS[2][0], PAIRS[7][0]]
    assert len(train) == 5 and not {e.prompt for e in train} & {e.prompt for e in held_out}  # 6 train records, 1 dropped
    config.train_size = 4
    train, _, _ = train_eval_examples(tokenize_preferences, tokenizer, records, config)
    assert len(train) == 4


def test_dropped_pairs_are_logged_stored_and_printed(tiny_model_path, tmp_path, monkeypatch, capsys):
    import sys

    from core.trainers.common import cli_main
    from core.trainers.dpo import DPOConfig, train_dpo

    run = train_dpo(_dpo_config(tiny_model_path, _with_long_pairs(tmp_path), eval_size=4, num_steps=1, save_every=0))
    first = run.metrics()[0]
    assert first["step"] == 0 and (first["data/dropped_train"], first["data/dropped_eval"]) == (1, 2)
    assert "eval/loss" in first and not any("data/dropped_train" in r for r in run.metrics()[1:])
    monkeypatch.setattr(sys, "argv", ["dpo", "--max-length", "64"])
    cli_main(DPOConfig, lambda config, on_log: on_log(0, {"data/dropped_train": 1.0, "data/dropped_eval": 2.0}))
    assert "dropped 1 training and 2 held-out records longer than max_length=64" in capsys.readouterr().out


def test_batch_order_is_a_function_of_seed_and_step():
    from core.trainers.batching import batch_indices

    a = [batch_indices(10, 3, s, m, 2, 2) for s in (1, 2, 3) for m in (0, 1)]
    b = [batch_indices(10, 3, s, m, 2, 2) for s in (1, 2, 3) for m in (0, 1)]
    assert a == b
    first_epoch = sum(a[:5], [])
    assert sorted(first_epoch) == list(range(10))  # each example once per epoch
    # two DDP processes split each micro-batch of the global stream
    both = batch_indices(10, 3, 1, 0, 2, 2, rank=0, world=2) + batch_indices(10, 3, 1, 0, 2, 2, rank=1, world=2)
    assert both == a[0] + a[1]


def test_concatenated_forward_equals_separate_passes(tiny_model, tokenizer, pairs_file):
    from core.logprobs import completion_logprobs, sequence_logprobs
    from core.data import load_preference_records
    from core.trainers.batching import collate_preferences, completion_forward, tokenize_preferences

    examples = tokenize_preferences(tokenizer, load_preference_records(str(pairs_file)), 64, 32)[:3]
    with torch.no_grad():
        per_token, mask = completion_forward(tiny_model, collate_preferences(examples, tokenizer.pad_token_id))
        joint = per_token.sum(-1)  # (2B,)
        separate = []
        for response in ("chosen_ids", "rejected_ids"):
            for e in examples:  # one unpadded sequence at a time, the naive way
                ids = torch.tensor([e.prompt_ids + getattr(e, response)])
                m = torch.zeros_like(ids)
                m[0, len(e.prompt_ids):] = 1
                separate.append(sequence_logprobs(completion_logprobs(tiny_model(ids).logits, ids, m), m)[0])
    torch.testing.assert_close(joint, torch.stack(separate), rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------- DPO


def test_dpo_trains_from_log2_and_changes_parameters(tiny_model_path, pairs_file):
    from safetensors.torch import load_file

    from core.trainers.dpo import train_dpo

    logs = []
    run = train_dpo(_dpo_config(tiny_model_path, pairs_file), on_log=lambda s, m: logs.append((s, m)))
    assert run.status()["status"] == "finished"
    rows = run.metrics()
    # policy == reference before the first update: h = 0, so the loss is -log σ(0) = log 2
    assert rows[0]["step"] == 0 and rows[0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert rows[0]["eval/rewards/margins"] == 0.0
    assert rows[1]["step"] == 1 and rows[1]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    train_rows = [r for r in rows if "loss" in r]
    assert len(train_rows) == 3 and all(math.isfinite(r["loss"]) for r in train_rows)
    assert train_rows[-1]["loss"] < math.log(2)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                 "logps/rejected", "time/step_s", "tokens/non_pad", "tokens/per_second"):
        assert name in train_rows[0]
    assert [s for s, m in logs if "eval/loss" in m] == [0, 2, 3]
    initial = load_file(str(tiny_model_path / "model.safetensors"))
    final = _final_weights(run)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(initial[name], final[name])


def test_dpo_reports_its_phases_with_counts(tiny_model_path, pairs_file, monkeypatch):
    from core.runstore import Run
    from core.trainers.dpo import train_dpo

    phases = []
    set_status = Run.set_status

    def spy(self, status, error=None, **extra):
        if extra.get("phase"):
            phases.append((extra["phase"], extra.get("phase_done"), extra.get("phase_total")))
        set_status(self, status, error, **extra)

    monkeypatch.setattr(Run, "set_status", spy)
    run = train_dpo(_dpo_config(tiny_model_path, pairs_file, num_steps=1, eval_batch_size=2))
    # 8 training pairs in batches of 2: "reference pass 0/4" ... "4/4"; the page shows the last one written
    assert ("reference pass", 0, 4) in phases and ("reference pass", 4, 4) in phases
    assert ("reference pass, held-out pairs", 1, 1) in phases and ("held-out evaluation", 1, 1) in phases
    assert [p[0] for p in phases][:2] == ["loading and tokenising the data", "loading the model"]
    assert run.status()["status"] == "finished" and run.status()["phase"] is None


def test_ipo_and_conservative_dpo(tiny_model_path, pairs_file):
    from core.trainers.dpo import train_dpo

    run = train_dpo(_dpo_config(tiny_model_path, pairs_file, loss_type="ipo", beta=0.5, num_steps=1, save_every=0))
    assert run.metrics()[0]["eval/loss"] == pytest.approx(1 / (4 * 0.5**2), rel=1e-5)  # (0 - 1/(2β))²
    run = train_dpo(_dpo_config(tiny_model_path, pairs_file, label_smoothing=0.2, num_steps=1, save_every=0))
    assert run.metrics()[0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-6)  # cDPO at h = 0 is still log 2


def test_lora_reference_is_the_adapter_disabled_policy(tiny_model_path, tokenizer, pairs_file):
    from core.models import LoraSettings, apply_lora, load_causal_lm
    from core.trainers.dpo import reference_logps
    from core.data import load_preference_records
    from core.trainers.batching import pair_logps, tokenize_preferences

    examples = tokenize_preferences(tokenizer, load_preference_records(str(pairs_file)), 64, 32)[:4]
    config = _dpo_config(tiny_model_path, pairs_file, lora=True)
    base = load_causal_lm(str(tiny_model_path), device="cpu")
    base_chosen, base_rejected, _ = pair_logps(base, examples, 4, tokenizer.pad_token_id)
    policy = apply_lora(load_causal_lm(str(tiny_model_path), device="cpu"), LoraSettings(r=4, alpha=8))
    torch.manual_seed(1)
    with torch.no_grad():  # a trained adapter: the policy now differs from the base
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    ref_chosen, ref_rejected, _ = reference_logps(policy, examples, config, tokenizer.pad_token_id)
    torch.testing.assert_close(ref_chosen, base_chosen)
    torch.testing.assert_close(ref_rejected, base_rejected)
    pol_chosen, _, _ = pair_logps(policy, examples, 4, tokenizer.pad_token_id)
    assert not torch.allclose(pol_chosen, base_chosen)


def test_dpo_with_lora_trains_only_the_adapters(tiny_model_path, pairs_file):
    from core.trainers.dpo import train_dpo

    run = train_dpo(_dpo_config(tiny_model_path, pairs_file, lora=True, lora_r=4, lora_alpha=8, lora_layers=1))
    rows = run.metrics()
    assert rows[1]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    weights = _final_weights(run)
    assert weights and all("lora_" in k and "layers.1." in k for k in weights)  # lora_layers=1: the last block only
    assert any(("lora_B" in k) and v.abs().sum() > 0 for k, v in weights.items())  # B starts at 0


class _Stop(Exception):
    pass


@pytest.mark.parametrize("trainer", ["dpo", "simpo"])
def test_resume_gives_the_same_next_metrics(tiny_model_path, pairs_file, trainer):
    from core.runstore import Run
    from core.trainers.dpo import train_dpo
    from core.trainers.simpo import train_simpo

    train, make = (train_dpo, _dpo_config) if trainer == "dpo" else (train_simpo, _simpo_config)
    config = make(tiny_model_path, pairs_file, num_steps=5, save_every=2, eval_every=2)
    full = train(config).metrics()

    def stop_at_3(step, metrics):
        if step == 3 and "loss" in metrics:
            raise _Stop()

    with pytest.raises(_Stop):
        train(config, on_log=stop_at_3)
    runs = sorted(_runs_root().iterdir())
    interrupted = Run.open(runs[-1])
    assert interrupted.status()["status"] == "failed"
    assert interrupted.latest_checkpoint()[0] == 2
    resumed = train(make(tiny_model_path, pairs_file, num_steps=5, resume_from=str(interrupted.path)))
    assert resumed.path == interrupted.path and resumed.status()["status"] == "finished"
    got = resumed.metrics()
    assert [r["step"] for r in got] == [r["step"] for r in full]
    for a, b in zip(full, got):
        for k in a:
            if k not in ("time", "time/step_s", "tokens/per_second"):
                assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), (a["step"], k)


def _runs_root():
    import os
    from pathlib import Path

    return Path(os.environ["RLHF_WORKBENCH_RUNS"])


def test_samples_hold_per_token_fields(tiny_model_path, pairs_file):
    from core.trainers.dpo import train_dpo
    from core.trainers.simpo import train_simpo

    for run, fields in ((train_dpo(_dpo_config(tiny_model_path, pairs_file, num_steps=2)), "logratio"),
                        (train_simpo(_simpo_config(tiny_model_path, pairs_file, num_steps=2)), "reward")):
        samples = run.samples(step=2)
        assert len(samples) == 2
        for s in samples:
            assert {"prompt", "chosen", "rejected", "chosen_tokens", "rejected_tokens"} <= set(s)
            for side in ("chosen", "rejected"):
                values = s["per_token"][f"{side}_{fields}"]
                assert len(values) == len(s[f"{side}_tokens"]) == len(s["per_token"][f"{side}_logps"])
                assert sum(values) == pytest.approx(s[f"{side}_reward"], rel=1e-4, abs=1e-5)


# ----------------------------------------------------------------------------- SimPO


def test_simpo_trains_and_changes_parameters(tiny_model_path, pairs_file):
    from safetensors.torch import load_file

    from core.trainers.simpo import train_simpo

    run = train_simpo(_simpo_config(tiny_model_path, pairs_file, beta=2.0, gamma_beta_ratio=0.5))
    rows = [r for r in run.metrics() if "loss" in r]
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)
    # the implicit reward is β · (length-averaged log π)
    first = rows[0]
    assert first["rewards/chosen"] == pytest.approx(2.0 * first["logps/chosen"], rel=1e-5)
    initial = load_file(str(tiny_model_path / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    assert not torch.equal(initial[name], _final_weights(run)[name])


# ----------------------------------------------------------------------------- bad input


def test_malformed_row_names_file_and_record(tiny_model_path, tmp_path):
    from core.data import DataError
    from core.runstore import Run
    from core.trainers.dpo import train_dpo

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n" + json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl, record 1: missing 'rejected'"):
        train_dpo(_dpo_config(tiny_model_path, bad))
    run = Run.open(sorted(_runs_root().iterdir())[-1])
    assert run.status()["status"] == "failed" and "record 1" in run.status()["error"]


def test_empty_after_filtering_is_a_clear_error(tiny_model_path, pairs_file):
    from core.trainers.common import TrainingError
    from core.trainers.simpo import train_simpo

    with pytest.raises(TrainingError, match="empty after filtering by max_length=4"):
        train_simpo(_simpo_config(tiny_model_path, pairs_file, max_length=4))


def test_non_finite_loss_fails_the_run_and_keeps_the_checkpoint(tiny_model_path, pairs_file, monkeypatch):
    import core.trainers.dpo as dpo

    real = dpo.dpo_objective
    calls = {"n": 0}

    def poisoned(config):
        loss = real(config)

        def f(*args):
            calls["n"] += args[0].requires_grad  # count training calls only, not evaluation
            losses, c, r = loss(*args)
            return (losses * float("nan") if calls["n"] > 2 else losses), c, r  # step 2 (2 micro-batches per step)
        return f

    monkeypatch.setattr(dpo, "dpo_objective", poisoned)
    with pytest.raises(Exception, match="loss became nan at step 2"):
        dpo.train_dpo(_dpo_config(tiny_model_path, pairs_file, save_every=1))
    from core.runstore import Run

    run = Run.open(sorted(_runs_root().iterdir())[-1])
    assert run.status()["status"] == "failed" and "step 2" in run.status()["error"]
    assert run.latest_checkpoint()[0] == 1
    assert [r["step"] for r in run.metrics() if "loss" in r] == [1]
