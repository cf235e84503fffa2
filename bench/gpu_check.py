"""GPU readiness: every trainer for a few steps on a ~0.5B model, with throughput, MFU and peak memory.

What it does: builds a randomly initialised model of the default family (no download) and
runs SFT, the reward model, DPO, SimPO and PPO on it for a few steps each, full fine-tunes
(no LoRA, so every weight is trained), through the trainers' own code: ``make_accelerator``
gives bf16 autocast on CUDA (``mixed_precision="bf16"``) while the trainable weights and the
optimizer state stay fp32 (the check reads their dtypes back from each run's checkpoint and
flags anything else). For each trainer it prints

- tokens/s: non-padding tokens trained per second of step time (the first step, warm-up,
  left out when there are more), PPO: prompt + response tokens of the batch;
- MFU, model-FLOP utilisation: 6·N·tokens/s over the GPU's dense bf16 peak; N = the weights
  of every matmul (``nn.Linear``: attention, MLP and the tied LM head; embedding look-ups and
  attention's sequence-length term left out, as in the 6N rule); PPO counts 2·N per token for
  generation, 2 × 2·N for the old-log-prob/value and reference passes, 6·N per PPO epoch;
- peak memory: ``torch.cuda.max_memory_allocated`` during the trainer;

plus the short PPO's phase split (generation / forward / scoring / update, from its
``time/*`` metrics).

The model (``--model 0.5b``): SmolLM2-135M's Llama config scaled in width, depth kept:
hidden 1024, intermediate 4096, 30 layers, 16 heads of 64 (4 key-value heads), vocabulary
49152 with tied embeddings: 506M parameters. Data: synthetic pairs of random words with
fixed lengths (prompt ~60 tokens, responses ~200), written to a work folder.

What it leaves out: LoRA runs, several GPUs, accuracy (the weights are random).

    python bench/gpu_check.py                         # on a CUDA machine (a few minutes)
    python bench/gpu_check.py --json gpu.json         # and keep the figures
    python bench/gpu_check.py --tiny                  # tiny random Llama, 1-2 steps each, runs on a CPU
    python bench/gpu_check.py --peak-tflops 989       # MFU against this peak (unknown GPU names)
Results: docs/benchmarks.md (## GPU check).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL_05B = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=30, num_attention_heads=16,
                 num_key_value_heads=4, head_dim=64)
"""SmolLM2-135M (576 / 1536 / 30 layers / 9 heads, 3 key-value heads) scaled in width to ~0.5B parameters."""

PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("H100", 989.4), ("H200", 989.4),
                    ("GH200", 989.4), ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0))
"""Dense bf16 tensor-core peaks (no sparsity) from NVIDIA's data sheets, matched in order against the device name."""

TRAINERS = ("sft", "reward", "dpo", "simpo", "ppo")


@dataclasses.dataclass
class Sizes:
    steps: int            # optimizer steps per trainer (PPO: iterations)
    max_length: int       # prompt + response tokens
    prompt_words: int
    response_words: int
    batch: int            # SFT rows / DPO and SimPO pairs per step
    rm_batch: int         # reward-model pairs per step
    ppo_batch: int        # PPO rollouts per iteration
    ppo_minibatch: int
    new_tokens: int       # PPO response length (fixed: min_new_tokens = max_new_tokens)
    eval_size: int


GPU_SIZES = Sizes(steps=6, max_length=512, prompt_words=40, response_words=140, batch=16, rm_batch=16,
                  ppo_batch=32, ppo_minibatch=16, new_tokens=128, eval_size=8)
TINY_SIZES = Sizes(steps=2, max_length=64, prompt_words=6, response_words=10, batch=2, rm_batch=2,
                   ppo_batch=2, ppo_minibatch=2, new_tokens=4, eval_size=2)


# ----------------------------------------------------------------------------- model and data


def build_model(work: Path, tiny: bool) -> Path:
    """A model folder: the cached tiny random Llama, or the ~0.5B random Llama saved (bf16) under ``work``."""
    from core.models import ensure_default_model, ensure_tiny_model

    if tiny:
        return ensure_tiny_model()
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = work / "llama-0.5b-random"
    if (folder / "model.safetensors").is_file():
        return folder
    default = ensure_default_model()
    config = LlamaConfig.from_pretrained(str(default))
    for k, v in MODEL_05B.items():
        setattr(config, k, v)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config)
    # bf16 on disk halves the file; every value is exact when a trainer loads it in fp32
    model.to(torch.bfloat16).save_pretrained(str(folder), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(default)).save_pretrained(str(folder))
    del model
    return folder


def write_data(work: Path, sizes: Sizes, n_pairs: int, n_prompts: int) -> tuple[Path, Path]:
    """(TRL-schema pairs .jsonl, prompts .txt) of random words from the demo set, lengths fixed by ``sizes``."""
    from core.paths import demo_data_dir

    words = sorted({w for line in (demo_data_dir() / "demo.jsonl").read_text().splitlines()
                    for text in json.loads(line).values() if isinstance(text, str) for w in text.split()})
    rng = random.Random(0)
    text = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    pairs, prompts = work / "pairs.jsonl", work / "prompts.txt"
    pairs.write_text("".join(json.dumps({"prompt": f"{i}. {text(sizes.prompt_words)}?", "chosen": text(sizes.response_words),
                                         "rejected": text(sizes.response_words)}) + "\n" for i in range(n_pairs)))
    prompts.write_text("".join(f"{i}. {text(sizes.prompt_words)}\n" for i in range(n_prompts)))
    return pairs, prompts


def matmul_params(folder: Path, reward_model: bool = False) -> int:
    """N of the MFU formula: the weights of every nn.Linear (built on the meta device, nothing allocated)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(str(folder), num_labels=1)
    with torch.device("meta"):
        model = (AutoModelForSequenceClassification if reward_model else AutoModelForCausalLM).from_config(config)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key.lower() in device_name.lower()), None)


# ----------------------------------------------------------------------------- the trainers


def trainer_configs(model: Path, pairs: Path, prompts: Path, s: Sizes, cpu: bool) -> dict:
    """name -> (train function, config): full fine-tunes, evaluation and samples kept to the minimum."""
    from core.trainers.dpo import DPOConfig, train_dpo
    from core.trainers.ppo import PPOConfig, train_ppo
    from core.trainers.reward import RewardConfig, train_reward_model
    from core.trainers.sft import SFTConfig, train_sft
    from core.trainers.simpo import SimPOConfig, train_simpo

    n_train = s.batch * s.steps
    common = dict(model_name_or_path=str(model), dataset=str(pairs), train_size=n_train, eval_size=s.eval_size,
                  max_length=s.max_length, max_prompt_length=s.max_length // 4, batch_size=s.batch,
                  gradient_accumulation_steps=1, num_steps=s.steps, eval_every=0, num_samples=0, save_every=0,
                  lora=False, learning_rate=1e-5, cpu=cpu)
    rm_pairs = s.rm_batch * s.steps + s.eval_size
    return {
        "sft": (train_sft, SFTConfig(**common, sample_max_new_tokens=0, eval_batch_size=s.batch)),
        "reward": (train_reward_model, RewardConfig(
            model_name_or_path=str(model), dataset=str(pairs), limit=rm_pairs, eval_fraction=s.eval_size / rm_pairs,
            max_length=s.max_length, freeze_backbone=False, use_lora=False, num_epochs=1, batch_size=s.rm_batch,
            learning_rate=1e-5, feature_batch_size=s.rm_batch, eval_every=10 ** 6, save_every=0,
            save_model=False, cpu=cpu, progress=False)),
        "dpo": (train_dpo, DPOConfig(**common, eval_batch_size=s.batch)),
        "simpo": (train_simpo, SimPOConfig(**common, eval_batch_size=s.batch)),
        "ppo": (train_ppo, PPOConfig(
            model_name_or_path=str(model), prompts=str(prompts), num_prompts=s.ppo_batch * s.steps,
            eval_prompts=0, rewards="toxicity", batch_size=s.ppo_batch, minibatch_size=s.ppo_minibatch, ppo_epochs=1,
            num_iterations=s.steps, max_new_tokens=s.new_tokens, min_new_tokens=s.new_tokens,
            max_prompt_tokens=s.max_length // 4, samples_per_log=s.ppo_batch, eval_every=0, save_every=0,
            learning_rate=1e-6, lora=False, cpu=cpu)),
    }


def checkpoint_dtypes(run) -> tuple[list[str], list[str]]:
    """(dtypes of the trained weights, dtypes of the optimizer state), as saved in the last checkpoint."""
    from safetensors import safe_open

    latest = run.latest_checkpoint()
    if latest is None:
        return [], []
    found = []
    for name in ("model.safetensors", "optimizer.safetensors"):
        path = latest[1] / name
        if not path.is_file():
            found.append([])
            continue
        with safe_open(str(path), framework="pt") as f:
            found.append(sorted({str(f.get_slice(k).get_dtype()) for k in f.keys()}))
    return found[0], found[1]


def _measured(rows: list[dict]) -> list[dict]:
    """The training rows to time: every step but the first (warm-up) when there are several."""
    rows = [r for r in rows if r["step"] > 0 and "time/step_s" in r]
    return rows[1:] if len(rows) > 1 else rows


def ppo_tokens(run, tokenizer, max_prompt_tokens: int) -> dict[int, tuple[int, int]]:
    """iteration -> (prompt tokens, response tokens) of its whole batch, from samples.jsonl (every rollout is logged)."""
    out: dict[int, tuple[int, int]] = {}
    for row in run.samples():
        p = len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"][-max_prompt_tokens:])
        a, b = out.get(row["step"], (0, 0))
        out[row["step"]] = (a + p, b + len(row["token_ids"]))
    return out


def run_one(name: str, train, config, n_flop: int, peak: float | None, tokenizer) -> dict:
    """Run one trainer; its throughput, MFU, peak memory and the dtypes it trained in."""
    import gc

    import torch

    cuda = torch.cuda.is_available() and not config.cpu
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run = train(config)
    wall = time.perf_counter() - t0
    peak_mem = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None
    rows = _measured(run.metrics())
    step_s = sum(r["time/step_s"] for r in rows)
    weights, optimizer = checkpoint_dtypes(run)
    result = {"steps": len([r for r in run.metrics() if r["step"] > 0 and "time/step_s" in r]), "timed_steps": len(rows),
              "step_s": step_s / max(len(rows), 1), "wall_s": wall, "peak_memory_gib": peak_mem,
              "trainable_dtypes": weights, "optimizer_state_dtypes": optimizer, "n_flop_params": n_flop,
              "status": run.status()["status"]}
    if name != "ppo":
        tokens = sum(r["tokens/non_pad"] for r in rows)
        result["tokens_per_s"] = tokens / step_s
        flops = 6 * n_flop * tokens
    else:
        counts = ppo_tokens(run, tokenizer, config.max_prompt_tokens)
        phases = {p: sum(r[f"time/{p}_s"] for r in rows) for p in ("generation", "forward", "scoring", "update")}
        prompt_t = sum(counts.get(r["step"], (0, 0))[0] for r in rows)
        response_t = sum(counts.get(r["step"], (0, 0))[1] for r in rows)
        total_t = prompt_t + response_t
        phase_flops = {"generation": 2 * n_flop * total_t, "forward": 2 * 2 * n_flop * total_t,
                       "update": 6 * n_flop * total_t * config.ppo_epochs}
        flops = sum(phase_flops.values())
        result["tokens_per_s"] = total_t / step_s
        result["generated_tokens_per_s"] = response_t / phases["generation"]
        result["phases"] = {p: {"s_per_step": t / len(rows), "share": t / step_s,
                                "mfu": (phase_flops[p] / t / 1e12 / peak) if peak and p in phase_flops else None}
                            for p, t in phases.items()}
    result["mfu"] = flops / step_s / 1e12 / peak if peak else None
    result["fp32_master_weights"] = weights == ["F32"] and optimizer in ([], ["F32"])
    shutil.rmtree(run.path, ignore_errors=True)  # full-model checkpoints and exports: scratch here
    return result


# ----------------------------------------------------------------------------- report


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def print_report(report: dict) -> None:
    print(f"\n{report['device']} · torch {report['torch']} · {report['precision']}")
    print(f"model: {report['model']['description']}, {report['model']['parameters'] / 1e6:.1f}M parameters, "
          f"N (matmul weights) = {report['model']['n_flop_params'] / 1e6:.1f}M")
    print(f"MFU against a bf16 peak of {_fmt(report['peak_tflops'], '.1f')} TFLOPS\n")
    print(f"{'trainer':<8} {'steps':>5} {'step s':>8} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9} {'trained in':>16}")
    for name, r in report["trainers"].items():
        if r["status"] != "finished":
            print(f"{name:<8} FAILED: {r.get('error')}")
            continue
        dtype = "fp32 + fp32 Adam" if r["fp32_master_weights"] else ",".join(r["trainable_dtypes"]) + " (!)"
        print(f"{name:<8} {r['steps']:>5} {r['step_s']:>8.3f} {r['tokens_per_s']:>10.0f} "
              f"{_pct(r['mfu']):>7} {_fmt(r['peak_memory_gib'], '.2f'):>9} {dtype:>16}")
    ppo = report["trainers"].get("ppo")
    if ppo and "phases" in ppo:
        print(f"\nPPO phases per iteration ({ppo['generated_tokens_per_s']:.0f} generated tokens/s):")
        for p, v in ppo["phases"].items():
            print(f"  {p:<11} {v['s_per_step']:>8.3f} s  {100 * v['share']:>5.1f}% of the step   MFU {_pct(v['mfu'])}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny random Llama, 1-2 steps each (runs on a CPU)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when CUDA is present (fp32)")
    parser.add_argument("--trainers", default=",".join(TRAINERS), help=f"comma list of {', '.join(TRAINERS)}")
    parser.add_argument("--steps", type=int, default=0, help="steps per trainer (default: 6 on a GPU, 2 with --tiny)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak of the GPU for MFU (default: by its name)")
    parser.add_argument("--json", default="", help="write the results to this file")
    parser.add_argument("--work", default="", help="work folder (model, data, runs); default: a temporary one, removed")
    args = parser.parse_args(argv)

    import torch

    from core.models import load_tokenizer

    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda and not args.tiny:
        parser.error("no CUDA device: the ~0.5B check needs a GPU; use --tiny for the CPU smoke run")
    sizes = TINY_SIZES if args.tiny else GPU_SIZES
    if args.steps:
        sizes = dataclasses.replace(sizes, steps=args.steps)
    names = [n.strip() for n in args.trainers.split(",") if n.strip()]
    unknown = set(names) - set(TRAINERS)
    if unknown:
        parser.error(f"unknown trainers {sorted(unknown)}: use {', '.join(TRAINERS)}")

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    old_runs = os.environ.get("RLHF_WORKBENCH_RUNS")
    os.environ["RLHF_WORKBENCH_RUNS"] = str(work / "runs")
    try:
        model = build_model(work, args.tiny)
        tokenizer = load_tokenizer(str(model))
        pairs, prompts = write_data(work, sizes, n_pairs=max(sizes.batch, sizes.rm_batch) * sizes.steps + 2 * sizes.eval_size,
                                    n_prompts=sizes.ppo_batch * sizes.steps)
        device_name = torch.cuda.get_device_name() if cuda else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
        peak = peak_tflops(device_name, args.peak_tflops) if cuda else args.peak_tflops
        n_flop = matmul_params(model)
        config = json.loads((model / "config.json").read_text())
        with torch.device("meta"):
            from transformers import AutoConfig, AutoModelForCausalLM

            total = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model))).parameters())
        report = {
            "device": device_name, "torch": torch.__version__, "peak_tflops": peak,
            "precision": "bf16 autocast (accelerate mixed_precision='bf16'), fp32 trainable weights" if cuda
                         else "fp32 on the CPU",
            "model": {"description": "tiny random Llama" if args.tiny else "random Llama, SmolLM2 config scaled to ~0.5B",
                      "config": {k: config.get(k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                            "num_attention_heads", "num_key_value_heads", "vocab_size",
                                                            "tie_word_embeddings")},
                      "parameters": total, "n_flop_params": n_flop},
            "sizes": dataclasses.asdict(sizes), "trainers": {},
        }
        configs = trainer_configs(model, pairs, prompts, sizes, cpu=not cuda)
        for name in names:
            train, config = configs[name]
            n = matmul_params(model, reward_model=True) if name == "reward" else n_flop
            print(f"[gpu_check] {name} ...", flush=True)
            try:
                report["trainers"][name] = run_one(name, train, config, n, peak, tokenizer)
            except Exception as exc:  # noqa: BLE001 - a readiness check reports every trainer, failed ones too
                report["trainers"][name] = {"status": "failed", "error": f"{exc.__class__.__name__}: {exc}"[:500]}
    finally:
        if old_runs is None:
            os.environ.pop("RLHF_WORKBENCH_RUNS", None)
        else:
            os.environ["RLHF_WORKBENCH_RUNS"] = old_runs
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"\nwritten to {args.json}")
    return report


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        results = main()
        sys.exit(0 if all(r["status"] == "finished" for r in results["trainers"].values()) else 1)
