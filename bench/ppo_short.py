"""Benchmark: the "short PPO" of the app's reward-weight lab, phase by phase.

What it does: runs `core.trainers.ppo.short_ppo_config()` (SmolLM2-135M-Instruct, LoRA,
3 iterations x 8 prompts, 24 new tokens, held-out evaluation on 4 prompts x 2 samples
before the first and after the last iteration) and prints the seconds of each phase per
iteration (generation, forward = old log-probs/values + reference pass, scoring =
reward components, update = PPO epochs, eval = held-out evaluation), the total wall time
including model loading, and which phase dominates. With --preset NAME it runs one of the
lab's presets (``workbench.lab.PRESETS``: the config the lab's button starts) and also
prints its paired before/after table (Δ per component with its 95 % interval, KL, length);
--validation evaluates on the prompts after the held-out ones instead (how the presets'
settings were chosen, so the held-out prompts never steer a choice). The process's CPU
seconds are printed beside the wall time: on a shared machine the wall time measures the
other jobs too. With --ablate it also times the slow alternatives this
trainer avoids, on the same batch:
  - generation without the KV cache (use_cache=False: every new token re-runs the whole prefix);
  - a duplicate forward pass (old log-probs and values recomputed separately);
  - a frozen reference copy instead of the adapter-disabled policy (extra memory and load time).

What it leaves out: GPU timings (run it on one to get them), accuracy.

    python bench/ppo_short.py                  # the short PPO, phase table
    python bench/ppo_short.py --ablate         # + the before/after of each optimisation
    python bench/ppo_short.py --prompts demo   # without ../shared/data
    python bench/ppo_short.py --cpu-bf16       # bf16 autocast on CPU (fp32 trainable weights)
    python bench/ppo_short.py --model tiny-random-llama --prompts demo   # the test model
    python bench/ppo_short.py --preset detox   # a lab preset + its paired table (qa-completeness, qa-relevance)
    python bench/ppo_short.py --preset detox --validation --seed 1   # choose settings: validation prompts, seed 1
Results are recorded in docs/benchmarks.md (## Short PPO).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PHASES = ("generation", "forward", "scoring", "update")


def run_short(prompts: str, model: str | None = None, cpu_bf16: bool = False, preset: str = "",
              validation: bool = False, seed: int | None = None) -> dict:
    import resource

    from core.trainers.ppo import short_ppo_config, train_ppo

    rows = []
    t0 = time.perf_counter()
    overrides = {**({"cpu_bf16": True} if cpu_bf16 else {}), **({"model_name_or_path": model} if model else {})}
    if preset:
        from core.models import DEFAULT_MODEL
        from workbench.lab import preset_config

        config = preset_config(preset, model or DEFAULT_MODEL, cpu=True, **overrides)
    else:
        config = short_ppo_config(prompts=prompts, **overrides)
    if validation or seed is not None:
        split_prompts(config.num_prompts, config.eval_prompts, config.seed, validation)
    if seed is not None:
        from dataclasses import replace

        config = replace(config, seed=seed)
    t_config = time.perf_counter() - t0
    run = train_ppo(config, on_log=lambda step, m: rows.append((step, m)))
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = usage.ru_utime + usage.ru_stime
    print(f"{'iter':>4} " + " ".join(f"{p + '_s':>13}" for p in PHASES) + f" {'eval_s':>8} {'step_s':>8}")
    for step, m in rows:  # step 0: the held-out evaluation before training only
        print(f"{step:>4} " + " ".join(f"{m.get(f'time/{p}_s', 0.0):>13.2f}" for p in PHASES)
              + f" {m.get('time/eval_s', 0.0):>8.2f} {m.get('time/step_s', m.get('time/eval_s', 0.0)):>8.2f}")
    totals = {p: sum(m.get(f"time/{p}_s", 0.0) for _, m in rows) for p in PHASES}
    evals = sum(m.get("time/eval_s", 0.0) for _, m in rows)
    steps = sum(m.get("time/step_s", m.get("time/eval_s", 0.0)) for _, m in rows)
    print("total " + " ".join(f"{totals[p]:>13.2f}" for p in PHASES) + f" {evals:>8.2f} {steps:>8.2f}")
    dominant = max(totals, key=totals.get)
    print(f"wall time (incl. loading, setup): {wall:.1f} s (setup before training {t_config:.1f} s, loading and the "
          f"rest {wall - t_config - steps:.1f} s); CPU time of this process {cpu_s:.1f} s; dominant phase: {dominant} "
          f"({100 * totals[dominant] / steps:.0f}% of the iterations and evaluations); load average now "
          f"{os.getloadavg()[0]:.1f}")
    print(f"run: {run.path}")
    if preset or config.eval_prompts:
        print_paired(run)
    return {"wall": wall, "cpu_s": cpu_s, "eval": evals, **totals}


def split_prompts(num_prompts: int, eval_prompts: int, split_seed: int, validation: bool) -> None:
    """Make the trainer's prompt split that of ``split_seed`` whatever its own seed (--seed changes the training
    randomness only, so no seed's validation prompts are another seed's held-out ones); with ``validation`` it
    evaluates on prompts [n + e, n + 2e) of that order instead of the held-out [n, n + e)."""
    import core.trainers.ppo as ppo

    load = ppo.load_prompts

    def split(spec, n, seed=0):
        if not validation:
            return load(spec, n, split_seed)
        prompts = load(spec, n + eval_prompts, split_seed)
        return prompts[:num_prompts] + prompts[num_prompts + eval_prompts:]

    ppo.load_prompts = split


def print_paired(run) -> None:
    """The lab's paired before/after table of the run's held-out samples (workbench.lab.paired_rows)."""
    from core.paired import describe
    from workbench import lab

    result = lab.paired_rows(run)
    if result is None:
        print("no paired table: the run evaluated fewer than twice")
        return
    rows, names, first, last = result
    print(f"paired before/after (step {first} -> {last}), per prompt the mean of its samples, Student t 95 % interval:")
    print(f"{'metric':>28} {'before':>9} {'after':>9} {'delta':>9} {'95 % interval':>22} beyond")
    for r in rows:
        print(f"{r.metric:>28} {r.before:>9.4f} {r.after:>9.4f} {r.diff:>+9.4f} {f'[{r.low:+.4f}, {r.high:+.4f}]':>22} "
              f"{'yes' if r.beyond_noise else 'no'}")
    print(describe(rows, names + [lab.WEIGHTED_TOTAL]))
    tox = [s.get("toxicity") for s in run.eval_samples()]
    if all(t is not None for t in tox):
        from core.paired import paired_table

        samples = run.eval_samples()
        as_totals = lambda step: [{**s, "totals": {"p_toxic": s["toxicity"]}} for s in samples if s.get("step") == step]  # noqa: E731
        r = paired_table(as_totals(first), as_totals(last), ["p_toxic"], extra=())[0]
        print(f"profanity-check p(toxic) of the held-out samples: {r.before:.4f} -> {r.after:.4f}, "
              f"delta {r.diff:+.4f} [{r.low:+.4f}, {r.high:+.4f}]")


def ablate(prompts: str, max_new_tokens: int = 24, batch: int = 8) -> None:
    import torch

    from core.data import load_prompts
    from core.models import DEFAULT_MODEL, apply_lora, load_causal_lm, load_tokenizer
    from core.rollout import generate, score_tokens
    from core.value_head import PolicyWithValue

    tok = load_tokenizer(DEFAULT_MODEL)
    policy = apply_lora(load_causal_lm(DEFAULT_MODEL, device="cpu"))
    model = PolicyWithValue(policy).eval()
    batch_prompts = load_prompts(prompts, batch, 0)
    enc = tok(batch_prompts, return_tensors="pt", padding=True, add_special_tokens=False)

    def timed(fn, repeat=2):
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        return best

    def gen(use_cache):
        torch.manual_seed(0)
        with torch.no_grad():
            policy.generate(**enc, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=True,
                            top_k=0, use_cache=use_cache, pad_token_id=tok.pad_token_id)

    cached, uncached = timed(lambda: gen(True)), timed(lambda: gen(False))
    print(f"generation {batch} x {max_new_tokens} tokens: KV cache {cached:.2f} s, no cache {uncached:.2f} s")
    torch.manual_seed(0)
    ro = generate(policy, tok, batch_prompts, max_new_tokens=max_new_tokens)
    one = timed(lambda: score_tokens(model, ro, no_grad=True))
    print(f"old log-probs + values: one pass {one:.2f} s; two separate passes {2 * one:.2f} s (estimate)")
    t = time.perf_counter()
    load_causal_lm(DEFAULT_MODEL, device="cpu").eval().requires_grad_(False)
    print(f"frozen reference copy: +{time.perf_counter() - t:.2f} s to load, "
          f"+{sum(p.numel() for p in policy.parameters()) * 4 / 2**20:.0f} MiB; adapter-disabled policy: 0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", default="davidson", help="prompt set (davidson, demo, or a file)")
    parser.add_argument("--ablate", action="store_true", help="also time the slow alternatives")
    parser.add_argument("--model", default=None, help="policy model (default: the short PPO's, SmolLM2-135M-Instruct)")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="bf16 autocast on CPU, fp32 trainable weights (a preset keeps its own setting without it)")
    parser.add_argument("--preset", default="", help="a lab preset (workbench.lab.PRESETS): detox, qa-completeness, qa-relevance")
    parser.add_argument("--validation", action="store_true",
                        help="evaluate on the prompts after the held-out ones (to choose settings without the held-out prompts)")
    parser.add_argument("--seed", type=int, default=None,
                        help="training seed (sampling, value head); the train / held-out / validation prompts stay the preset's")
    parser.add_argument("--set", default="", help="JSON of PPOConfig fields over the preset's, e.g. '{\"learning_rate\": 5e-4}'")
    args = parser.parse_args()
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    if args.set:
        import json

        from workbench import training

        os.environ[training.SHORT_ENV] = json.dumps({"ppo": json.loads(args.set)})  # applied last, as in the tests
    run_short(args.prompts, args.model, args.cpu_bf16, args.preset, args.validation, args.seed)
    if args.ablate:
        ablate(args.prompts)


if __name__ == "__main__":
    main()
