"""Model loading: the real default model offline, the cache, aliases, clear errors, LoRA reference, value head."""

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
