"""Model loading: the real default model offline, the cache, aliases, clear errors, LoRA reference, value head,
fp32 trainable weights on a bf16 model, dropout off."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from core.models import (
    DEFAULT_MODEL,
    ModelLoadError,
    apply_lora,
    cache_problem,
    ensure_default_model,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    reference_mode,
    resolve_model,
)


def test_import_core_is_cheap():
    code = (
        "import sys, core, core.paths, core.metrics, core.runstore, core.models, core.devices\n"
        "heavy = [m for m in ('torch', 'transformers', 'streamlit', 'accelerate') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_model_answers_paris(default_model_path):
    tok = load_tokenizer()
    model = load_causal_lm(device="cpu")
    assert model.dtype == torch.float32
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_cache_reloads_with_identical_logits_to_gguf(default_model_path):
    """The converted safetensors folder gives exactly the logits of the GGUF-loaded model."""
    from transformers import AutoModelForCausalLM

    from core.models import _default_gguf_path

    gguf = _default_gguf_path()
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    cached = load_causal_lm(str(default_model_path), device="cpu")
    ids = load_tokenizer()("The quick brown fox jumps over the lazy dog.", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(cached(**ids).logits, ref(**ids).logits, rtol=0, atol=0)


def test_cached_load_is_fast(default_model_path):
    import time

    load_causal_lm(device="cpu")  # warm imports
    t0 = time.perf_counter()
    load_causal_lm(device="cpu")
    load_tokenizer()
    assert time.perf_counter() - t0 < 10  # the docs report ~2.5 s on 2 cores; generous bound against noisy CI


def test_malformed_cache_is_rebuilt(default_model_path, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    target = cache / "models" / default_model_path.name
    shutil.copytree(default_model_path, target)
    weights = target / "model.safetensors"
    with open(weights, "r+b") as f:  # truncate: a crash half-way through a copy
        f.truncate(1000)
    assert "wrong size" in cache_problem(target)
    monkeypatch.setenv("RLHF_WORKBENCH_CACHE", str(cache))
    rebuilt = ensure_default_model(verbose=False)
    assert rebuilt == target and cache_problem(target) is None
    assert weights.stat().st_size == (default_model_path / "model.safetensors").stat().st_size


def test_garbage_manifest_is_not_trusted(default_model_path, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(default_model_path, target)
    (target / "workbench_manifest.json").write_text("{not json")
    assert cache_problem(target) == "no readable manifest"


def test_unknown_model_id_gives_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        resolve_model("no-such-owner/no-such-model-xyz")
    msg = str(err.value)
    assert "\n" not in msg and "no-such-owner/no-such-model-xyz" in msg and "Fix:" in msg


def test_missing_folder_gives_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found: no local folder"):
        resolve_model(str(tmp_path / "missing"))


def test_folder_without_safetensors_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelLoadError, match="only safetensors"):
        resolve_model(str(tmp_path))


def test_default_alias_resolves_to_cache(default_model_path):
    assert resolve_model(DEFAULT_MODEL) == str(default_model_path)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == str(default_model_path)


def test_lora_reference_is_adapter_disabled_policy(tiny_model_path):
    torch.manual_seed(0)
    base = load_causal_lm(str(tiny_model_path), device="cpu")
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        base_logits = base(ids).logits.clone()
    model = apply_lora(base)
    # Make the adapter do something: B is zero-initialised, so perturb it.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
        adapted = model(ids).logits
        with reference_mode(model):
            ref = model(ids).logits
    torch.testing.assert_close(ref, base_logits)
    assert not torch.allclose(adapted, base_logits)


def test_reward_model_has_scalar_head(tiny_model_path):
    rm = load_reward_model(str(tiny_model_path), device="cpu")
    tok = load_tokenizer(str(tiny_model_path))
    batch = tok(["a short text", "a somewhat longer piece of text"], return_tensors="pt", padding=True)
    with torch.no_grad():
        scores = rm(**batch).logits
    assert scores.shape == (2, 1)


def test_value_head_starts_at_zero(tiny_model):
    from core.value_head import CausalLMWithValueHead

    model = CausalLMWithValueHead(tiny_model)
    ids = torch.tensor([[1, 5, 9, 13]])
    logits, values = model(ids, torch.ones_like(ids))
    assert logits.shape[:2] == values.shape == (1, 4)
    assert torch.count_nonzero(values) == 0


def test_cpu_defaults_to_fp32():
    from core.devices import default_dtype, mixed_precision_for

    assert default_dtype("cpu") == torch.float32
    assert mixed_precision_for("cpu") == "no"


# ----------------------------------------------------------------------------- fp32 trainable weights, dropout off


def _one_adamw_step(model, forward):
    """One AdamW step (the trainers' own) on a bf16 autocast forward; returns the optimizer."""
    from core.trainers.common import adamw

    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as accelerate's mixed_precision="bf16" does on CUDA
        loss = forward(model)
    loss.float().backward()
    optimizer.step()
    return optimizer


def _assert_fp32_training(model, optimizer):
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    state = [t for s in optimizer.state.values() for name, t in s.items() if name != "step"]
    assert len(state) == 2 * len(trainable) and all(t.dtype == torch.float32 for t in state)  # exp_avg, exp_avg_sq


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_trainable_weights_and_adamw_state_are_fp32_on_a_bf16_model(tiny_model_path, lora):
    from core.models import LoraSettings, load_trainable_model

    model = load_trainable_model(str(tiny_model_path), lora=LoraSettings(r=4, alpha=8) if lora else None,
                                 device="cpu", dtype=torch.bfloat16)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == ({torch.bfloat16} if lora else set())  # LoRA: the frozen backbone stays bf16 (memory)
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    optimizer = _one_adamw_step(model, lambda m: m(input_ids=ids, labels=ids).loss)
    _assert_fp32_training(model, optimizer)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("value_model", ["shared", "separate"])
def test_ppo_policy_value_heads_and_critic_train_in_fp32_on_a_bf16_model(tiny_model_path, lora, value_model):
    from core.models import LoraSettings
    from core.value_head import build_policy_with_value

    model, reference = build_policy_with_value(str(tiny_model_path), "cpu", lora=LoraSettings(r=4, alpha=8) if lora else None,
                                               value_model=value_model, dtype=torch.bfloat16)
    if lora:
        assert reference is None
    else:  # the frozen reference copy stays in the configured dtype
        assert {p.dtype for p in reference.parameters()} == {torch.bfloat16}
        assert not any(p.requires_grad for p in reference.parameters())
    heads = [n for n, p in model.named_parameters() if p.requires_grad and ("v_head" in n or "score" in n)]
    assert heads  # the value head / the critic's score head is trained, so it is fp32 too
    ids = torch.tensor([[1, 5, 9, 13, 2], [1, 7, 3, 2, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])

    def loss(m):
        logits, values = m(ids, mask)
        return logits.float().logsumexp(-1).mean() + values.float().pow(2).mean() + values.float().mean()

    optimizer = _one_adamw_step(model, loss)
    _assert_fp32_training(model, optimizer)


def _tiny_model_with_dropout(tiny_model_path, folder, p: float = 0.5):
    """A copy of the tiny model whose config asks for attention dropout p."""
    import json

    shutil.copytree(tiny_model_path, folder)
    config = json.loads((folder / "config.json").read_text())
    config["attention_dropout"] = p
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_trainable_models_have_dropout_off_unless_kept(tiny_model_path, tmp_path):
    from core.models import LoraSettings, load_trainable_model

    folder = _tiny_model_with_dropout(tiny_model_path, tmp_path / "dropout")
    ids = torch.tensor([[1, 5, 9, 13, 2, 8, 4]])
    kept = load_trainable_model(str(folder), device="cpu", keep_dropout=True).train()
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.equal(kept(ids).logits, kept(ids).logits)  # the test can fail: dropout is live in train mode
    model = load_trainable_model(str(folder), lora=LoraSettings(r=4, alpha=8, dropout=0.1), device="cpu").train()
    assert model.config.attention_dropout == 0.0
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)
        train_logits = model(ids).logits
        assert torch.equal(train_logits, model.eval()(ids).logits)
