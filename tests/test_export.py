"""Exported models (core.export) load back with transformers / peft and give identical logits.

Tiny random Llama, 1-step runs: a full SFT run loads with ``AutoModelForCausalLM``; a LoRA
DPO run and a LoRA PPO run load with ``PeftModel`` (PPO without its value head); the merged
model equals the adapter within fp32 tolerance; the card lists the config and final metrics;
the app's model selector offers the exported folders and ``load_causal_lm`` loads them.
    pytest tests/test_export.py -q
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

EXACT = dict(rtol=1e-6, atol=1e-6)
PAIRS = [("What colour is the sky?", "Blue, on a clear day.", "Green."), ("Name a fruit.", "An apple.", "A chair."),
         ("How many legs has a cat?", "Four.", "Seven, usually."), ("What is 2 + 2?", "It is 4.", "It is 5."),
         ("Capital of France?", "Paris.", "Berlin, I think."), ("Name a planet.", "Mars.", "The Moon.")]


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS))
    return path


@pytest.fixture
def input_ids(tokenizer):
    return tokenizer(["The sky is blue because", "Name a fruit: an"], return_tensors="pt", padding=True)


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _from_checkpoint(run, base_path, lora=None):
    """The trained policy rebuilt from the run's last checkpoint (base + trainable weights)."""
    from core.checkpoint import load_trainable_state_dict
    from core.models import LoraSettings, apply_lora, load_causal_lm

    model = load_causal_lm(str(base_path), device="cpu")
    if lora is not None:
        model = apply_lora(model, LoraSettings(r=lora[0], alpha=lora[1]))
    load_trainable_state_dict(model, run.latest_checkpoint()[1])
    return model.eval()


def test_full_sft_run_exports_a_transformers_folder(tiny_model_path, pairs_file, input_ids):
    from transformers import AutoModelForCausalLM

    from core.models import load_causal_lm
    from core.trainers.sft import SFTConfig, train_sft

    run = train_sft(SFTConfig(model_name_or_path=str(tiny_model_path), dataset=str(pairs_file), train_size=0, eval_size=2,
                              max_length=32, max_prompt_length=16, batch_size=2, gradient_accumulation_steps=1,
                              num_steps=1, num_samples=1, sample_max_new_tokens=2, lora=False, learning_rate=1e-2, cpu=True))
    folder = run.path / "model"
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md"):
        assert (folder / name).is_file(), name
    assert not (folder / "adapter_config.json").exists() and json.loads((folder / "config.json").read_text())["use_cache"]
    exported = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    trained = _from_checkpoint(run, tiny_model_path)
    torch.testing.assert_close(_logits(exported, input_ids), _logits(trained, input_ids), **EXACT)
    base = load_causal_lm(str(tiny_model_path), device="cpu")
    assert not torch.allclose(_logits(exported, input_ids), _logits(base, input_ids))  # training changed it

    card = (folder / "README.md").read_text()
    last = [r for r in run.metrics() if "loss" in r][-1]
    assert f"| loss | {last['loss']:.6g} |" in card and "| eval/loss |" in card
    assert "| learning_rate | `0.01` |" in card and "| lora | `false` |" in card and "library_name: transformers" in card


def test_lora_export_equals_the_model_in_memory_and_merges(tiny_model_path, tokenizer, input_ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from core.export import export_model
    from core.models import LoraSettings, apply_lora, is_peft_model, load_causal_lm
    from core.runstore import Run

    run = Run.create("dpo", {"model_name_or_path": str(tiny_model_path), "lora": True, "beta": 0.1}, name="tiny-dpo")
    run.log_metrics(1, {"loss": 0.625, "rewards/margins": 0.25})
    policy = apply_lora(load_causal_lm(str(tiny_model_path), device="cpu"), LoraSettings(r=4, alpha=8)).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # a trained adapter: lora_B starts at 0
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    expected = _logits(policy, input_ids)
    folder = export_model(run, policy, tokenizer, merge=True)

    assert is_peft_model(policy) and torch.equal(_logits(policy, input_ids), expected)  # left as it was
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {p.name for p in folder.iterdir()}
    adapter = PeftModel.from_pretrained(load_causal_lm(str(tiny_model_path), device="cpu"), str(folder)).eval()
    torch.testing.assert_close(_logits(adapter, input_ids), expected, **EXACT)
    merged = AutoModelForCausalLM.from_pretrained(str(run.path / "model-merged")).eval()
    torch.testing.assert_close(_logits(merged, input_ids), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_logits(load_causal_lm(str(folder), device="cpu"), input_ids), expected, rtol=1e-5, atol=1e-5)

    card = (folder / "README.md").read_text()
    assert "LoRA adapter" in card and f"base model: `{tiny_model_path}`" in card
    assert "| loss | 0.625 |" in card and "| rewards/margins | 0.25 |" in card and "| beta | `0.1` |" in card


def test_lora_dpo_run_exports_an_adapter_the_app_offers(tiny_model_path, pairs_file, input_ids, monkeypatch):
    from peft import PeftModel

    from core import export
    from core.models import load_causal_lm, load_tokenizer
    from core.trainers.dpo import DPOConfig, train_dpo
    from workbench import state

    run = train_dpo(DPOConfig(model_name_or_path=str(tiny_model_path), dataset=str(pairs_file), train_size=0, eval_size=2,
                              max_length=64, max_prompt_length=32, batch_size=2, gradient_accumulation_steps=1,
                              num_steps=1, eval_batch_size=4, num_samples=1, lora=True, lora_r=4, lora_alpha=8,
                              learning_rate=1e-2, run_name="tiny-dpo", cpu=True))
    assert run.status()["status"] == "finished"
    folder = run.path / "model"
    adapter = PeftModel.from_pretrained(load_causal_lm(str(tiny_model_path), device="cpu"), str(folder)).eval()
    trained = _from_checkpoint(run, tiny_model_path, lora=(4, 8))
    torch.testing.assert_close(_logits(adapter, input_ids), _logits(trained, input_ids), **EXACT)

    # the app's model selector offers it, by name, kind and time; load_causal_lm loads it (merged)
    assert str(folder) in state.model_choices()
    assert state.model_label(str(folder)).startswith("tiny-dpo · dpo · ")
    assert load_tokenizer(str(folder)).get_vocab() == load_tokenizer(str(tiny_model_path)).get_vocab()
    torch.testing.assert_close(_logits(load_causal_lm(str(folder), device="cpu"), input_ids),
                               _logits(trained, input_ids), rtol=1e-5, atol=1e-5)

    # after the fact, from the checkpoint: the same adapter, plus a merged full model
    before = load_file(str(folder / "adapter_model.safetensors"))
    monkeypatch.setattr("sys.argv", ["core.export", str(run.path), "--merge"])
    export.main()
    after = load_file(str(folder / "adapter_model.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert (run.path / "model-merged" / "model.safetensors").is_file()


def test_ppo_exports_the_policy_without_the_value_head(tiny_model_path, tmp_path, input_ids):
    from peft import PeftModel

    from core.export import export_run
    from core.models import load_causal_lm
    from core.trainers.ppo import PPOConfig, build_models, train_ppo

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("You are a\nI think that the\nThe weather today is\nMy friend said\n")
    config = PPOConfig(model_name_or_path=str(tiny_model_path), prompts=str(prompts), num_prompts=4, eval_prompts=0,
                       rewards="toxicity", batch_size=2, minibatch_size=2, ppo_epochs=1, num_iterations=1,
                       max_new_tokens=4, eval_every=0, save_every=1, learning_rate=1e-2, lora_r=4, lora_alpha=8, cpu=True)
    run = train_ppo(config)
    folder = run.path / "model"
    weights = load_file(str(folder / "adapter_model.safetensors"))
    assert weights and not any("v_head" in k for k in weights)
    assert "value head / critic is not part" in (folder / "README.md").read_text()

    model, _ = build_models(config, "cpu")  # the trained PolicyWithValue, from the checkpoint
    from core.checkpoint import load_trainable_state_dict

    load_trainable_state_dict(model, run.latest_checkpoint()[1])
    expected = _logits(model.policy.eval(), input_ids)
    adapter = PeftModel.from_pretrained(load_causal_lm(str(tiny_model_path), device="cpu"), str(folder)).eval()
    torch.testing.assert_close(_logits(adapter, input_ids), expected, **EXACT)
    base = load_causal_lm(str(tiny_model_path), device="cpu")
    assert not torch.allclose(expected, _logits(base, input_ids))

    export_run(run.path)  # after the fact: the policy's weights picked out of the PolicyWithValue checkpoint
    again = load_file(str(folder / "adapter_model.safetensors"))
    assert again.keys() == weights.keys() and all(torch.equal(again[k], weights[k]) for k in weights)
