"""Benchmark: our DPO, reward-model, SimPO and PPO trainers against Hugging Face TRL's on identical work.

    ./wb python bench/compare_trl.py            # all four, reference settings, 2 repeats each (~30 min on 2 cores)
    ./wb python bench/compare_trl.py --quick    # all four, small work, 1 repeat (~6 min)
    ./wb python bench/compare_trl.py --trainer dpo,reward   # a comma list of dpo, reward, simpo, ppo (default all)

Pairs of runs, in alternation (ours, TRL, ours, TRL...), each side in its own subprocess: ours with
.venv/bin/python, TRL in its own virtual environment that this script creates on first use and that
is never a project dependency: bench/.trl-venv (TRL 1.16.0: DPOTrainer, RewardTrainer,
experimental CPOTrainer) and bench/.trl112-venv (TRL 1.12.0, the last release with
trl.experimental.ppo). Each side writes a JSON result; this script prints per pair seconds per
optimizer step (PPO: per iteration), non-pad tokens per second, peak RSS, the ratio ours/TRL
(min-median-max over the repeats) and a same-work check. It exits non-zero if a check fails.

Common to all: the converted default model (SmolLM2-135M-Instruct), fp32, full fine-tune (no
LoRA), AdamW, constant learning rate, no warm-up, gradient accumulation 1, TRL with
gradient_checkpointing=False and bf16=False (ours does neither on CPU), no evaluation or saving
in the timed steps. Every TRL sampler is sequential over a file that lists the examples in the
order ours consumes them, so step s of both sides trains on the same examples.

DPO (beta 0.1) and SimPO (beta 2.0, gamma/beta 0.5; TRL CPOTrainer(loss_type="simpo",
cpo_alpha=0, simpo_gamma = 0.5 * 2.0 = 1.0: TRL's gamma is absolute, ours is gamma/beta): the first
HH-RLHF harmless pairs that fit max_length with no truncation, {prompt, chosen, rejected};
reference log-probs precomputed once on both sides (DPO); CPOTrainer's BOS insertion switched off
(ours adds none for this tokenizer). Checks: same steps, identical non-pad tokens in every step,
step-1 loss (DPO 1e-4: ln 2 on both; SimPO 1e-3) and step-1 chosen / rejected log-probs (1e-3 rel).

Reward model (Bradley-Terry, RewardTrainer): the same pairs as prompt + " " + response, given to TRL
pre-tokenised (chosen_ids / rejected_ids, so TRL appends no EOS and both read the score at the same
last token); both start from one saved model, the backbone plus one seeded score head. Checks:
same steps and tokens, step-1 loss and margin within 1e-4.

PPO (TRL 1.12 PPOTrainer): 16 HH-RLHF prompts of <= 128 tokens, 32-token responses (EOS suppressed
until 32 tokens on both sides: min_new_tokens), batch 8, 2 minibatches, 4 PPO epochs, 2
iterations, temperature 0.7, k1 KL with coefficient 0.05, GAE gamma 1 lambda 0.95, clip 0.2 /
0.2, vf_coef 0.1, learning rate 3e-6, weight decay 0.01, no gradient clipping (TRL's PPO loop
does not clip). Four models on both sides: policy, frozen reference copy, separate value model
(trained with the policy by one optimizer) and a frozen reward model (the backbone plus one
seeded score head, saved once and loaded by both). Checks: same iterations, same optimizer steps
(16), identical prompt tokens in every iteration (sha256 of the ids each side actually
generated from) and identical non-pad token counts. Sampled responses differ between the sides
(different RNG streams), so no loss is compared; s/iteration is the median over all iterations.

Timing: s/step and tokens/s are medians over steps 2..S (step 1 is warm-up, printed apart); load,
tokenisation and the reference pass are not in it (they are in the wall time, printed too).
Results are recorded in docs/benchmarks.md (## Against TRL).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TRL_VENV = BENCH / ".trl-venv"
TRL_PY = TRL_VENV / "bin" / "python"
TRL_PINS = ["torch==2.13.0", "trl==1.16.0", "transformers==5.23.0", "accelerate==1.15.0", "peft==0.21.2", "datasets"]
TRL112_VENV = BENCH / ".trl112-venv"  # PPO: TRL 1.12.0, the last release with trl.experimental.ppo
TRL112_PY = TRL112_VENV / "bin" / "python"
TRL112_PINS = ["torch==2.13.0", "trl==1.12.0", "transformers==5.23.0", "accelerate==1.15.0", "datasets"]
TRAINERS = ("dpo", "reward", "simpo", "ppo")
DEFAULT_BETA = {"dpo": 0.1, "simpo": 2.0, "reward": 0.0, "ppo": 0.0}
# step-1 quantities both sides log, computed before any update: name -> (tolerance, "abs" | "rel")
STEP1_CHECKS = {
    "dpo": {"loss": (1e-4, "abs"), "logps/chosen": (1e-3, "rel"), "logps/rejected": (1e-3, "rel")},  # loss = ln 2
    # SimPO's step-1 loss is -logsigmoid(2 (avg_c - avg_r) - 1), not a constant; beta = 2 scales differences
    "simpo": {"loss": (1e-3, "abs"), "logps/chosen": (1e-3, "rel"), "logps/rejected": (1e-3, "rel")},
    "reward": {"loss": (1e-4, "abs"), "margin": (1e-4, "abs")},  # the same seeded head on both sides
    "ppo": {},  # sampled responses differ between the sides: no step-1 value to compare (see same_work)
}


def ensure_venv(venv: Path, pins: list[str]) -> Path:
    """TRL's own virtual environment (never the project's): created with pinned versions on first use."""
    python = venv / "bin" / "python"
    trl_pin = next(p for p in pins if p.startswith("trl=="))
    check = f"import trl, sys; sys.exit(trl.__version__ != {trl_pin.split('==')[1]!r})"
    if python.exists() and subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0:
        return python
    print(f"[bench] creating {venv} with {' '.join(pins)}", flush=True)
    subprocess.run(["python3", "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)
    return python


# ----------------------------------------------------------------------------- data


def build_data(model: str, n_pairs: int, max_length: int, max_prompt_length: int, batch: int, steps: int,
               seed: int, work: Path) -> dict:
    """Write ours.jsonl (the pairs ours reads) and trl.jsonl (the same pairs in ours' consumption order)."""
    from types import SimpleNamespace

    from core.data import load_hh_rlhf
    from core.models import load_tokenizer
    from core.trainers.batching import batch_indices, encode_prompt_response, tokenize_preferences, train_eval_examples

    tokenizer = load_tokenizer(model)
    records = []
    for r in load_hh_rlhf(limit=20 * n_pairs + 50):
        response_fix = {}
        for k in ("chosen", "rejected"):  # the seam space ours adds, written out so TRL tokenises the same text
            text = r[k]
            response_fix[k] = text if (r["prompt"][-1:].isspace() or text[:1].isspace()) else " " + text
        rec = {"prompt": r["prompt"], **response_fix}
        p, c = encode_prompt_response(tokenizer, rec["prompt"], rec["chosen"])
        _, j = encode_prompt_response(tokenizer, rec["prompt"], rec["rejected"])
        if len(p) <= max_prompt_length and len(p) + max(len(c), len(j)) <= max_length:  # no truncation on either side
            records.append(rec)
        if len(records) == n_pairs + 4:  # + a few for ours' held-out split (eval_size=1)
            break
    if len(records) < n_pairs + 4:
        raise SystemExit(f"only {len(records)} HH-RLHF pairs fit max_length={max_length}")
    # ours' data step exactly (train_dpo's settings: eval_size=1, train_size=n_pairs)
    settings = SimpleNamespace(max_length=max_length, max_prompt_length=max_prompt_length, eval_size=1, seed=seed,
                               train_size=n_pairs)
    train, held_out, dropped = train_eval_examples(tokenize_preferences, tokenizer, records, settings)
    assert not any(dropped.values()), dropped
    index = {(r["prompt"], r["chosen"], r["rejected"]): i for i, r in enumerate(records)}
    if len(train) < n_pairs:
        raise SystemExit(f"ours' split left {len(train)} < {n_pairs} training pairs")
    order = [index[(e.prompt, e.chosen, e.rejected)] for s in range(1, steps + 1)
             for e in (train[i] for i in batch_indices(len(train), seed, s, 0, batch, 1))]
    (work / "ours.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (work / "trl.jsonl").write_text("".join(json.dumps(records[i]) + "\n" for i in order))
    return {"ours": str(work / "ours.jsonl"), "trl": str(work / "trl.jsonl")}


def build_reward_data(model: str, n_pairs: int, max_length: int, batch: int, steps: int, seed: int, work: Path) -> dict:
    """Reward model: ours.jsonl ({prompt, chosen, rejected}: ours scores prompt + " " + response), the same texts
    tokenised for TRL (chosen_ids / rejected_ids, one row per pair in ours' consumption order; pre-tokenised, so
    TRL appends no EOS and both read the score at the same last token) and rm-init, the shared starting model
    (the backbone plus ONE seeded score head, so step 1 is the same function on both sides)."""
    import torch

    from core.data import load_hh_rlhf
    from core.models import load_reward_model, load_tokenizer
    from core.rewards.preference_rm import encode, format_pair
    from core.trainers.reward import batch_schedule

    tokenizer = load_tokenizer(model)
    records, ids = [], []
    for r in load_hh_rlhf(limit=20 * n_pairs + 50):
        rec = {"prompt": r["prompt"], "chosen": r["chosen"].lstrip(), "rejected": r["rejected"].lstrip()}
        texts = [format_pair(tokenizer, rec["prompt"], rec[k], "text", " ")[0] for k in ("chosen", "rejected")]
        enc = [encode(tokenizer, [t], 10**6)["input_ids"][0].tolist() for t in texts]
        if max(len(e) for e in enc) <= max_length:  # no truncation on either side
            records.append(rec)
            ids.append(enc)
        if len(records) == n_pairs:
            break
    if len(records) < n_pairs:
        raise SystemExit(f"only {len(records)} HH-RLHF pairs fit max_length={max_length}")
    if (batch * steps) % n_pairs or n_pairs % batch:
        raise SystemExit(f"reward model: batch {batch} x {steps} steps must be whole epochs of {n_pairs} pairs")
    epochs = batch * steps // n_pairs
    order = [i for step in batch_schedule(n_pairs, batch, epochs, seed)[:steps] for i in step]
    (work / "ours-rm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (work / "trl-rm.jsonl").write_text("".join(json.dumps({"chosen_ids": ids[i][0], "rejected_ids": ids[i][1]}) + "\n"
                                               for i in order))
    torch.manual_seed(seed)
    init = work / "rm-init"
    rm = load_reward_model(model)
    rm.save_pretrained(init)
    tokenizer.save_pretrained(init)
    return {"ours": str(work / "ours-rm.jsonl"), "trl": str(work / "trl-rm.jsonl"), "model": str(init), "epochs": epochs}


PPO_FULL = dict(num_prompts=16, response_length=32, batch_size=8, num_mini_batches=2, num_ppo_epochs=4, num_iterations=2)
PPO_QUICK = dict(num_prompts=8, response_length=16, batch_size=4, num_mini_batches=2, num_ppo_epochs=2, num_iterations=2)
PPO_PROMPT_TOKENS = 128


def build_ppo_data(model: str, quick: bool, seed: int, work: Path) -> dict:
    """PPO: prompts (the first HH-RLHF harmless prompts of <= 128 tokens), ours' file and TRL's file (the prompts in
    the order ours' iterations draw them, which TRL reads sequentially), and the reward model both sides load as
    reward model (frozen) and TRL as value model: the backbone plus one seeded score head, saved with ours'
    reward-model metadata (text format, no separator: the score of prompt + response as TRL reads it, no
    normalisation)."""
    import torch

    from core.data import load_hh_rlhf, load_prompts
    from core.models import load_reward_model, load_tokenizer
    from core.rewards.store import save_reward_model
    from core.trainers.batching import iteration_generator, iteration_prompts

    shape = PPO_QUICK if quick else PPO_FULL
    tokenizer = load_tokenizer(model)
    prompts = []
    for r in load_hh_rlhf(limit=400):
        if r["prompt"] not in prompts and len(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]) <= PPO_PROMPT_TOKENS:
            prompts.append(r["prompt"])
        if len(prompts) == shape["num_prompts"]:
            break
    ours = work / "ours-ppo-prompts.jsonl"
    ours.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    train_prompts = load_prompts(str(ours), shape["num_prompts"], seed)  # ours' own reading of the file
    consumed = [p for it in range(1, shape["num_iterations"] + 1)
                for p in iteration_prompts(train_prompts, shape["batch_size"], iteration_generator(seed, it))]
    trl = work / "trl-ppo-prompts.jsonl"
    trl.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in consumed))
    torch.manual_seed(seed)
    rm = work / "ppo-rm"
    meta = {"kind": "preference", "category": None, "level": "sequence", "name": "rm", "format": "text", "separator": "",
            "max_length": 1024, "normalisation": {"mean": 0.0, "std": 1.0}}
    save_reward_model(load_reward_model(model), tokenizer, meta, rm, overwrite=True)  # this script's own scratch folder
    spec = {**shape, "reward_model": str(rm), "min_new_tokens": shape["response_length"], "temperature": 0.7,
            "kl_coef": 0.05, "cliprange": 0.2, "cliprange_value": 0.2, "vf_coef": 0.1, "gamma": 1.0, "lam": 0.95,
            "learning_rate": 3e-6, "weight_decay": 0.01, "lr_scheduler_type": "constant"}
    setting = (f"{shape['num_prompts']} HH-RLHF prompts (<= {PPO_PROMPT_TOKENS} tokens), {shape['response_length']} "
               f"response tokens, batch {shape['batch_size']}, {shape['num_mini_batches']} minibatches, "
               f"{shape['num_ppo_epochs']} PPO epochs, {shape['num_iterations']} iterations")
    return {"ours": str(ours), "trl": str(trl), "spec": spec, "setting": setting}


# ----------------------------------------------------------------------------- ours (worker)


def ours_worker(spec_path: str, out_path: str) -> None:
    t_start = time.perf_counter()
    spec = json.load(open(spec_path))
    if spec["trainer"] == "reward":
        return ours_reward_worker(spec, out_path, t_start)
    if spec["trainer"] == "ppo":
        return ours_ppo_worker(spec, out_path, t_start)
    if spec["trainer"] == "simpo":
        from core.trainers.simpo import SimPOConfig as Config, train_simpo as train
        extra = {"gamma_beta_ratio": spec["gamma_beta_ratio"]}
    else:
        from core.trainers.dpo import DPOConfig as Config, train_dpo as train
        extra = {}
    config = Config(
        **extra, model_name_or_path=spec["model"], dataset=spec["data"], train_size=spec["num_pairs"], eval_size=1,
        max_length=spec["max_length"], max_prompt_length=spec["max_prompt_length"], beta=spec["beta"],
        learning_rate=spec["learning_rate"], warmup_steps=0, max_grad_norm=10.0, weight_decay=0.0,
        batch_size=spec["batch_size"], gradient_accumulation_steps=1, num_steps=spec["num_steps"],
        eval_every=10**9, num_samples=0, save_every=0, seed=spec["seed"], lora=False, cpu=True,
        run_name="bench-compare-trl",
    )
    rows = []

    def on_log(step, m):
        if "loss" in m:
            rows.append({"step": step, "step_s": m["time/step_s"], "non_pad": int(m["tokens/non_pad"]), "loss": m["loss"],
                         "logps/chosen": m["logps/chosen"], "logps/rejected": m["logps/rejected"],
                         "grad_norm": m["grad_norm"]})

    train(config, on_log=on_log)
    write_ours_result(out_path, rows, t_start)


def write_ours_result(out_path: str, rows: list[dict], t_start: float, **extra) -> None:
    """Our side's JSON result: versions, per-step rows, wall time, peak RSS (unless given in extra), threads."""
    import resource

    import torch
    import transformers

    json.dump({"side": "ours", "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
               "optim": "torch.optim.AdamW(fused=True)", "steps": rows, "wall_s": time.perf_counter() - t_start,
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "torch_threads": torch.get_num_threads(), **extra}, open(out_path, "w"), indent=1)


def ours_reward_worker(spec: dict, out_path: str, t_start: float) -> None:
    from core.trainers.reward import RewardConfig, train_reward_model

    config = RewardConfig(
        model_name_or_path=spec["model"], dataset=spec["data"], limit=0, eval_fraction=0.0, max_length=spec["max_length"],
        freeze_backbone=False, use_lora=False, num_epochs=spec["epochs"], batch_size=spec["batch_size"],
        learning_rate=spec["learning_rate"], weight_decay=0.0, max_grad_norm=10.0, eval_every=10**9,
        save_every=0, seed=spec["seed"], save_model=False, cpu=True, progress=False, name="bench-compare-trl-rm",
    )
    rows = []

    def on_log(step, m):
        if "loss" in m:
            rows.append({"step": step, "step_s": m["time/step_s"], "non_pad": int(m["tokens/non_pad"]), "loss": m["loss"],
                         "margin": m["rm/margin"], "grad_norm": m["grad_norm"]})

    train_reward_model(config, on_log=on_log)
    write_ours_result(out_path, rows, t_start)


def ours_ppo_worker(spec: dict, out_path: str, t_start: float) -> None:
    """Our PPO on the same work as TRL 1.12's PPOTrainer: full fine-tune, frozen reference copy, separate critic,
    the reward model as a frozen scalar-head model, fixed-length responses, no gradient clipping (TRL's PPO loop
    does not clip), AdamW weight decay 0.01 on both sides, constant learning rate, no evaluation or samples, raw
    prompt text (no chat template: TRL's side tokenises the prompts as they are)."""
    import hashlib
    import resource

    import torch

    import core.trainers.ppo as ppo_module
    from core.trainers.ppo import PPOConfig, train_ppo

    B = spec["batch_size"]
    config = PPOConfig(
        model_name_or_path=spec["model"], prompts=spec["prompts"], num_prompts=spec["num_prompts"], eval_prompts=0,
        rewards=f"rm={spec['reward_model']}", kl_coef=spec["kl_coef"], kl_estimator="k1", whiten_rewards=False,
        whiten_advantages=True, gamma=spec["gamma"], lam=spec["lam"], cliprange=spec["cliprange"],
        cliprange_value=spec["cliprange_value"], vf_coef=spec["vf_coef"], ppo_epochs=spec["num_ppo_epochs"],
        batch_size=B, minibatch_size=B // spec["num_mini_batches"], learning_rate=spec["learning_rate"],
        max_grad_norm=0.0, max_new_tokens=spec["response_length"], min_new_tokens=spec["min_new_tokens"],
        max_prompt_tokens=PPO_PROMPT_TOKENS, chat_template=False, temperature=spec["temperature"], top_k=0, top_p=1.0,
        num_iterations=spec["num_iterations"], value_model="separate", lora=False, eval_every=0, samples_per_log=0,
        seed=spec["seed"], save_every=0, run_name="bench-compare-trl-ppo", cpu=True,
    )
    rollouts, steps, rows = [], [0], []
    generate = ppo_module.generate

    def recording_generate(*args, **kwargs):  # observe the work actually done: prompt ids and token counts
        rollout = generate(*args, **kwargs)
        rollouts.append(rollout)
        return rollout

    ppo_module.generate = recording_generate
    adamw_step = torch.optim.AdamW.step

    def counting_step(self, *args, **kwargs):
        steps[0] += 1
        return adamw_step(self, *args, **kwargs)

    torch.optim.AdamW.step = counting_step
    rss_at_last_iteration = [0.0]

    def on_log(it, m):
        if "time/step_s" not in m:
            return
        r = rollouts[-1]
        rows.append({"step": it, "step_s": m["time/step_s"], "generation_s": m["time/generation_s"],
                     "rollout_forward_s": m["time/forward_s"] + m["time/scoring_s"], "update_s": m["time/update_s"],
                     "non_pad": int(r.query_mask.sum()) + int(r.response_mask.sum()),
                     "response_tokens": int(r.response_mask.sum()),
                     **{k: float(m[k]) for k in ("objective/kl", "objective/scores", "loss/policy_avg", "loss/value_avg",
                                                 "policy/approxkl_avg", "policy/clipfrac_avg", "val/clipfrac_avg")}})
        rss_at_last_iteration[0] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    train_ppo(config, on_log=on_log)
    consumed = [row[mask.bool()].tolist() for r in rollouts for row, mask in zip(r.query_ids, r.query_mask)]
    # peak_rss_mib: the peak up to the end of the last iteration; the final checkpoint written after it (TRL's side
    # saves none) is not training work
    write_ours_result(out_path, rows, t_start, optimizer_steps=steps[0], peak_rss_mib=rss_at_last_iteration[0],
                      prompt_ids_sha=hashlib.sha256(json.dumps(consumed).encode()).hexdigest(),
                      peak_rss_with_checkpoint_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


# ----------------------------------------------------------------------------- driver


def run_side(side: str, spec: dict, work: Path, tag: str) -> dict:
    spec_path, out_path = work / f"spec-{tag}.json", work / f"result-{tag}.json"
    spec_path.write_text(json.dumps(spec))
    if side == "ours":
        cmd = [str(ROOT / ".venv" / "bin" / "python"), str(Path(__file__).resolve()), "--worker", str(spec_path), str(out_path)]
    elif spec["trainer"] == "ppo":
        cmd = [str(TRL112_PY), str(BENCH / "trl_ppo_side.py"), str(spec_path), str(out_path)]
    else:
        cmd = [str(TRL_PY), str(BENCH / "trl_side.py"), str(spec_path), str(out_path)]
    runs = work / f"runs-{tag}"  # ours' run folder (metrics, full-model checkpoints): scratch, removed right after
    env = {**os.environ, "RLHF_WORKBENCH_RUNS": str(runs)}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{side} {spec['trainer']} run failed (exit {proc.returncode})")
    result = json.loads(out_path.read_text())
    result["process_wall_s"] = wall
    return result


def summarise(result: dict, warmup: bool = True) -> dict:
    """s/step and tokens/s: medians over steps 2.. (step 1 is warm-up); PPO: over every iteration (warmup=False)."""
    steps = result["steps"]
    timed = steps[1:] if warmup and len(steps) > 1 else steps
    s_per_step = statistics.median(r["step_s"] for r in timed)
    tok_s = statistics.median(r["non_pad"] / r["step_s"] for r in timed)
    return {"steps": len(steps), "s_per_step": s_per_step, "tok_s": tok_s, "step1": steps[0]["step_s"],
            "rss": result["peak_rss_mib"], "wall": result["process_wall_s"]}


def same_work(trainer: str, ours: dict, trl: dict) -> tuple[bool, str]:
    """Same number of steps, the same non-pad tokens in every step, and the step-1 checks of STEP1_CHECKS."""
    problems = []
    if len(ours["steps"]) != len(trl["steps"]):
        problems.append(f"steps {len(ours['steps'])} vs {len(trl['steps'])}")
    tok_o, tok_t = [r["non_pad"] for r in ours["steps"]], [r.get("non_pad") for r in trl["steps"]]
    if tok_o != tok_t:
        problems.append(f"non-pad tokens per step {tok_o} vs {tok_t}")
    o1, t1 = ours["steps"][0], trl["steps"][0]
    detail = [f"steps {len(ours['steps'])}={len(trl['steps'])}",
              f"tokens {sum(tok_o)}{'=' if tok_o == tok_t else '≠'}{sum(t or 0 for t in tok_t)}"]
    if trainer == "ppo":
        opt_o, opt_t = ours["optimizer_steps"], trl["optimizer_steps"]
        detail.append(f"optimizer steps {opt_o}={opt_t}" if opt_o == opt_t else f"optimizer steps {opt_o}≠{opt_t}")
        if opt_o != opt_t:
            problems.append(f"optimizer steps {opt_o} vs {opt_t}")
        if ours["prompt_ids_sha"] != trl["prompt_ids_sha"]:
            problems.append("the prompt tokens of the iterations differ")
        detail.append("prompt tokens identical" if ours["prompt_ids_sha"] == trl["prompt_ids_sha"] else "prompt tokens DIFFER")
    for k, (tol, kind) in STEP1_CHECKS[trainer].items():
        if k not in o1 or k not in t1:
            problems.append(f"step-1 {k} missing on one side")
            continue
        err = abs(o1[k] - t1[k]) / (abs(t1[k]) if kind == "rel" else 1.0)
        detail.append(f"step-1 {k} {o1[k]:.6g}/{t1[k]:.6g}")
        if err > tol:
            problems.append(f"step-1 {k} {o1[k]:.6g} vs {t1[k]:.6g} (tolerance {tol} {kind})")
    return not problems, ", ".join(detail) + ("" if not problems else "  PROBLEMS: " + "; ".join(problems))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        return ours_worker(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small work, 1 repeat (a few minutes per trainer)")
    ap.add_argument("--pairs", type=int)
    ap.add_argument("--max-length", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--learning-rate", type=float, default=1e-6, help="TRL DPOConfig's default")
    ap.add_argument("--trainer", default="all", help="comma list of dpo, reward, simpo, ppo, or all (the default)")
    ap.add_argument("--beta", type=float, help="default: 0.1 for DPO, 2.0 for SimPO")
    ap.add_argument("--gamma-beta-ratio", type=float, default=0.5, help="SimPO gamma/beta (TRL simpo_gamma = this * beta)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write every result to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (data files, specs, results, models)")
    a = ap.parse_args()
    quick = dict(pairs=8, max_length=128, batch=4, steps=4, repeats=1)
    full = dict(pairs=64, max_length=256, batch=4, steps=16, repeats=2)
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    trainers = TRAINERS if a.trainer == "all" else tuple(t.strip() for t in a.trainer.split(","))
    unknown = [t for t in trainers if t not in TRAINERS]
    if unknown:
        raise SystemExit(f"--trainer: unknown {', '.join(unknown)}; choose from {', '.join(TRAINERS)} or all")
    if a.pairs < a.batch * a.steps:
        print(f"[bench] note: {a.steps} steps x batch {a.batch} > {a.pairs} pairs: pairs are reused (epochs > 1)")

    from core.models import ensure_default_model

    if any(t != "ppo" for t in trainers):
        ensure_venv(TRL_VENV, TRL_PINS)
    if "ppo" in trainers:
        ensure_venv(TRL112_VENV, TRL112_PINS)
    model = str(ensure_default_model(verbose=False))
    max_prompt_length = a.max_length // 2
    work = Path(tempfile.mkdtemp(prefix="bench-trl-"))
    try:
        outcomes = run_all(a, trainers, model, max_prompt_length, work)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)  # ~0.5-1 GB of model copies per trainer
    if a.json:
        results = {t: r for t, (r, _) in outcomes.items()}
        Path(a.json).write_text(json.dumps(results, indent=1))
    failed = [t for t, (_, ok) in outcomes.items() if not ok]
    if len(outcomes) > 1:
        print("\n## Summary: ours/TRL time per step (PPO: per iteration), min - median - max over the repeats")
        for t, (results, ok) in outcomes.items():
            ratios = sorted(summarise(r["ours"], t != "ppo")["s_per_step"] / summarise(r["trl"], t != "ppo")["s_per_step"]
                            for r in results)
            print(f"{t}: {ratios[0]:.3f} - {statistics.median(ratios):.3f} - {ratios[-1]:.3f}; same work: {'yes' if ok else 'NO'}")
    if failed:
        raise SystemExit(f"same-work check FAILED for {', '.join(failed)} (see above)")


def run_all(a, trainers, model: str, max_prompt_length: int, work: Path) -> dict:
    """Every trainer's comparison in turn: {trainer: (results, same work held)}."""
    outcomes = {}
    for t in trainers:
        base = dict(trainer=t, model=model, num_pairs=a.pairs, max_length=a.max_length, max_prompt_length=max_prompt_length,
                    batch_size=a.batch, num_steps=a.steps, learning_rate=a.learning_rate, seed=a.seed,
                    beta=a.beta if a.beta is not None else DEFAULT_BETA[t], gamma_beta_ratio=a.gamma_beta_ratio)
        if t in ("dpo", "simpo"):
            files = build_data(model, a.pairs, a.max_length, max_prompt_length, a.batch, a.steps, a.seed, work)
            sides = ({**base, "data": files["ours"]}, {**base, "data": files["trl"]})
            label = "DPO" if t == "dpo" else (f"SimPO (beta {base['beta']}, gamma/beta {a.gamma_beta_ratio}; "
                                               f"TRL CPOTrainer simpo_gamma {a.gamma_beta_ratio * base['beta']})")
            setting = f"{a.pairs} pairs, max length {a.max_length}, batch {a.batch}, {a.steps} steps"
        elif t == "reward":
            files = build_reward_data(model, a.pairs, a.max_length, a.batch, a.steps, a.seed, work)
            base.update(model=files["model"], epochs=files["epochs"])
            sides = ({**base, "data": files["ours"]}, {**base, "data": files["trl"]})
            label = "Reward model (Bradley-Terry)"
            setting = f"{a.pairs} pairs, max length {a.max_length}, batch {a.batch}, {a.steps} steps"
        else:
            ppo = build_ppo_data(model, a.quick, a.seed, work)
            base.update(ppo["spec"])
            sides = ({**base, "prompts": ppo["ours"]}, {**base, "prompts": ppo["trl"]})
            label = "PPO"
            setting = ppo["setting"]
        outcomes[t] = compare(t, label, setting, sides, a.repeats, work)
    return outcomes


def compare(trainer: str, label: str, setting: str, sides: tuple[dict, dict], repeats: int, work: Path) -> tuple[list, bool]:
    """One trainer's comparison: `repeats` pairs of runs (ours, TRL), its table; returns (results, same work held)."""
    unit = "iteration" if trainer == "ppo" else "step"
    print(f"\n[bench] {label}, fp32, full fine-tune: {setting}, {repeats} repeat(s); "
          f"{platform.machine()}, {os.cpu_count()} CPUs; data in {work} (removed at the end unless --keep)", flush=True)
    pairs, all_results = [], []
    for rep in range(repeats):
        ours = run_side("ours", sides[0], work, f"ours-{trainer}-{rep}")
        trl = run_side("trl", sides[1], work, f"trl-{trainer}-{rep}")
        so, st = summarise(ours, trainer != "ppo"), summarise(trl, trainer != "ppo")
        ok, detail = same_work(trainer, ours, trl)
        ratio = so["s_per_step"] / st["s_per_step"]
        pairs.append((so, st, ratio, ok))
        all_results.append({"ours": ours, "trl": trl})
        print(f"pair {rep + 1}: ours {so['s_per_step']:.2f} s/{unit} {so['tok_s']:.0f} tok/s {so['rss']:.0f} MiB "
              f"(first {unit} {so['step1']:.1f} s, wall {so['wall']:.0f} s) | TRL {st['s_per_step']:.2f} s/{unit} "
              f"{st['tok_s']:.0f} tok/s {st['rss']:.0f} MiB (first {unit} {st['step1']:.1f} s, wall {st['wall']:.0f} s) | "
              f"ours/TRL {ratio:.3f} | same work: {'yes' if ok else 'NO'} ({detail})", flush=True)
    ratios = sorted(p[2] for p in pairs)
    print(f"\n{label}: versions: ours {all_results[0]['ours']['versions']}; TRL side {all_results[0]['trl']['versions']} "
          f"(optimizer {all_results[0]['trl']['optim']})")
    print(f"| pair | ours s/{unit} | TRL s/{unit} | ours tok/s | TRL tok/s | ours peak RSS (MiB) | TRL peak RSS (MiB) "
          f"| ours/TRL s/{unit} | same work |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, (so, st, r, ok) in enumerate(pairs, 1):
        print(f"| {i} | {so['s_per_step']:.2f} | {st['s_per_step']:.2f} | {so['tok_s']:.0f} | {st['tok_s']:.0f} | "
              f"{so['rss']:.0f} | {st['rss']:.0f} | {r:.3f} | {'yes' if ok else 'NO'} |")
    print(f"\nratio ours/TRL (s/{unit}), min-median-max over {len(ratios)} repeat(s): "
          f"{ratios[0]:.3f} - {statistics.median(ratios):.3f} - {ratios[-1]:.3f}")
    return all_results, all(p[3] for p in pairs)


if __name__ == "__main__":
    main()
