"""Benchmark: our DPO and SimPO trainers against Hugging Face TRL's DPOTrainer / CPOTrainer(simpo) on identical work.

    ./wb python bench/compare_trl.py            # reference setting: 64 pairs, max length 256, batch 4, 16 steps, 2 repeats
    ./wb python bench/compare_trl.py --quick    # 8 pairs, max length 128, batch 4, 4 steps (2 epochs), 1 repeat: a few minutes
    ./wb python bench/compare_trl.py --trainer simpo   # one trainer only: dpo | simpo | all (default all: DPO, then SimPO)

SimPO: ours core.trainers.simpo (beta 2.0, gamma_beta_ratio 0.5, length-averaged log-probs)
against trl.experimental.cpo.CPOTrainer(loss_type="simpo", cpo_alpha=0, simpo_gamma = 0.5 * 2.0
= 1.0: TRL's simpo_gamma is the absolute gamma). Both compute -logsigmoid(beta*(avg_c - avg_r) - gamma);
no reference model on either side. CPOTrainer's BOS insertion is switched off on the TRL side
(ours adds no BOS for this tokenizer), so both see the same tokens. Same-work check as for DPO,
except the step-1 loss is not ln 2 (no reference), so its tolerance is 1e-3 (beta = 2 scales the
log-prob differences); the logged log-probs are the length-averaged ones on both sides.

What it does: builds the data both sides read (the first HH-RLHF harmless pairs that fit
max_length without any truncation, in TRL schema {prompt, chosen, rejected}), then runs
ours (core.trainers.dpo, in .venv) and TRL (in its own venv, bench/.trl-venv, created on the
first run and never a project dependency) each in a subprocess, in alternation A, B, A, B...
Each side writes a JSON result; this script prints, per pair of runs, seconds per optimizer
step, non-pad tokens per second and peak RSS, the ratio ours/TRL (min-median-max over the
repeats) and a same-work check: same number of optimizer steps, the same non-pad token count
in every step, and step-1 loss and policy log-probs (computed before any update, so policy =
reference) equal within a tolerance.

Same work, how: fp32, full fine-tune (ours: lora=False), AdamW, constant learning rate, no
warm-up, grad-norm clip 10, β = 0.1, gradient accumulation 1, no evaluation / saving in the
timed steps, reference log-probs precomputed once before training on both sides. Ours takes
its batches from a seeded permutation; the TRL file lists the pairs in exactly that order
and TRL's sampler is sequential, so step s of both trains on the same pairs.

Timing: s/step and tokens/s are medians over steps 2..S (step 1 is warm-up, printed apart); load, tokenisation and the
reference pass are not in it (they are in the wall time, printed too).
Not done yet: reward model, PPO, profiling.
Results are recorded in docs/benchmarks.md (## Against TRL).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
LOSS_ATOL = 1e-4  # step-1 loss (ln 2 on both sides when policy = reference)
LOGPS_RTOL = 1e-3  # step-1 mean summed log-probs of chosen / rejected (SimPO: length-averaged)
SIMPO_LOSS_ATOL = 1e-3  # SimPO step-1 loss: -logsigmoid(2 * (avg_c - avg_r) - 1), not a constant
TRAINERS = ("dpo", "simpo")
DEFAULT_BETA = {"dpo": 0.1, "simpo": 2.0}


def ensure_trl_venv() -> None:
    if TRL_PY.exists() and subprocess.run([str(TRL_PY), "-c", "import trl"], capture_output=True).returncode == 0:
        return
    print(f"[bench] creating {TRL_VENV} with {' '.join(TRL_PINS)}", flush=True)
    subprocess.run(["python3", "-m", "venv", str(TRL_VENV)], check=True)
    subprocess.run([str(TRL_PY), "-m", "pip", "install", "-q", *TRL_PINS], check=True)


# ----------------------------------------------------------------------------- data


def build_data(model: str, n_pairs: int, max_length: int, max_prompt_length: int, batch: int, steps: int,
               seed: int, work: Path) -> dict:
    """Write ours.jsonl (the pairs ours reads) and trl.jsonl (the same pairs in ours' consumption order)."""
    from core.data import load_hh_rlhf
    from core.models import load_tokenizer
    from core.trainers import preference_data as pd

    tokenizer = load_tokenizer(model)
    records = []
    for r in load_hh_rlhf(limit=20 * n_pairs + 50):
        response_fix = {}
        for k in ("chosen", "rejected"):  # the seam space ours adds, written out so TRL tokenises the same text
            text = r[k]
            response_fix[k] = text if (r["prompt"][-1:].isspace() or text[:1].isspace()) else " " + text
        rec = {"prompt": r["prompt"], **response_fix}
        p, c = pd.encode_prompt_response(tokenizer, rec["prompt"], rec["chosen"])
        _, j = pd.encode_prompt_response(tokenizer, rec["prompt"], rec["rejected"])
        if len(p) <= max_prompt_length and len(p) + max(len(c), len(j)) <= max_length:  # no truncation on either side
            records.append(rec)
        if len(records) == n_pairs + 4:  # + a few for ours' held-out split (eval_size=1)
            break
    if len(records) < n_pairs + 4:
        raise SystemExit(f"only {len(records)} HH-RLHF pairs fit max_length={max_length}")
    examples = pd.tokenize_preferences(tokenizer, records, max_length, max_prompt_length)
    assert len(examples) == len(records)
    index = {id(e): i for i, e in enumerate(examples)}
    train, _ = pd.split_examples(examples, 1, seed, n_pairs)
    if len(train) < n_pairs:
        raise SystemExit(f"ours' split left {len(train)} < {n_pairs} training pairs")
    order = [index[id(train[i])] for s in range(1, steps + 1)
             for i in pd.batch_indices(len(train), seed, s, 0, batch, 1)]
    (work / "ours.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (work / "trl.jsonl").write_text("".join(json.dumps(records[i]) + "\n" for i in order))
    return {"ours": str(work / "ours.jsonl"), "trl": str(work / "trl.jsonl")}


# ----------------------------------------------------------------------------- ours (worker)


def ours_worker(spec_path: str, out_path: str) -> None:
    import resource

    t_start = time.perf_counter()
    import torch

    spec = json.load(open(spec_path))
    if spec.get("trainer", "dpo") == "simpo":
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
    import transformers
    json.dump({"side": "ours", "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
               "optim": "torch.optim.AdamW", "steps": rows, "wall_s": time.perf_counter() - t_start,
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "torch_threads": torch.get_num_threads()}, open(out_path, "w"), indent=1)


# ----------------------------------------------------------------------------- driver


def run_side(side: str, spec: dict, work: Path, tag: str) -> dict:
    spec_path, out_path = work / f"spec-{tag}.json", work / f"result-{tag}.json"
    spec_path.write_text(json.dumps(spec))
    if side == "ours":
        cmd = [str(ROOT / ".venv" / "bin" / "python"), str(Path(__file__).resolve()), "--worker", str(spec_path), str(out_path)]
    else:
        cmd = [str(TRL_PY), str(BENCH / "trl_side.py"), str(spec_path), str(out_path)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{side} run failed (exit {proc.returncode})")
    result = json.loads(out_path.read_text())
    result["process_wall_s"] = wall
    return result


def summarise(result: dict) -> dict:
    steps = result["steps"]
    timed = steps[1:] if len(steps) > 1 else steps  # step 1 is warm-up
    s_per_step = statistics.median(r["step_s"] for r in timed)
    tok_s = statistics.median(r["non_pad"] / r["step_s"] for r in timed)
    return {"steps": len(steps), "s_per_step": s_per_step, "tok_s": tok_s, "step1": steps[0]["step_s"],
            "rss": result["peak_rss_mib"],
            "wall": result["process_wall_s"]}


def same_work(ours: dict, trl: dict, loss_atol: float = LOSS_ATOL) -> tuple[bool, str]:
    problems = []
    if len(ours["steps"]) != len(trl["steps"]):
        problems.append(f"steps {len(ours['steps'])} vs {len(trl['steps'])}")
    tok_o, tok_t = [r["non_pad"] for r in ours["steps"]], [r.get("non_pad") for r in trl["steps"]]
    if tok_o != tok_t:
        problems.append(f"non-pad tokens per step {tok_o} vs {tok_t}")
    o1, t1 = ours["steps"][0], trl["steps"][0]
    if abs(o1["loss"] - t1["loss"]) > loss_atol:
        problems.append(f"step-1 loss {o1['loss']:.6f} vs {t1['loss']:.6f}")
    for k in ("logps/chosen", "logps/rejected"):
        if k in t1 and abs(o1[k] - t1[k]) > LOGPS_RTOL * abs(t1[k]):
            problems.append(f"step-1 {k} {o1[k]:.4f} vs {t1[k]:.4f}")
    detail = (f"steps {len(ours['steps'])}={len(trl['steps'])}, tokens {sum(tok_o)}"
              f"{'=' if tok_o == tok_t else '≠'}{sum(t or 0 for t in tok_t)}, "
              f"step-1 loss {o1['loss']:.6f}/{t1['loss']:.6f}, "
              f"logps/chosen {o1['logps/chosen']:.3f}/{t1.get('logps/chosen', float('nan')):.3f}, "
              f"logps/rejected {o1['logps/rejected']:.3f}/{t1.get('logps/rejected', float('nan')):.3f}")
    return not problems, detail + ("" if not problems else "  PROBLEMS: " + "; ".join(problems))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        return ours_worker(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 pairs, max length 128, batch 4, 4 steps (2 epochs), 1 repeat")
    ap.add_argument("--pairs", type=int)
    ap.add_argument("--max-length", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--learning-rate", type=float, default=1e-6, help="TRL DPOConfig's default")
    ap.add_argument("--trainer", choices=(*TRAINERS, "all"), default="all", help="which comparison(s) to run")
    ap.add_argument("--beta", type=float, help="default: 0.1 for DPO, 2.0 for SimPO")
    ap.add_argument("--gamma-beta-ratio", type=float, default=0.5, help="SimPO gamma/beta (TRL simpo_gamma = this * beta)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write every result to this file")
    a = ap.parse_args()
    quick = dict(pairs=8, max_length=128, batch=4, steps=4, repeats=1)
    full = dict(pairs=64, max_length=256, batch=4, steps=16, repeats=2)
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.pairs < a.batch * a.steps:
        print(f"[bench] note: {a.steps} steps x batch {a.batch} > {a.pairs} pairs: pairs are reused (epochs > 1)")

    from core.models import ensure_default_model

    ensure_trl_venv()
    model = str(ensure_default_model(verbose=False))
    max_prompt_length = a.max_length // 2
    work = Path(tempfile.mkdtemp(prefix="bench-trl-"))
    files = build_data(model, a.pairs, a.max_length, max_prompt_length, a.batch, a.steps, a.seed, work)
    trainers = TRAINERS if a.trainer == "all" else (a.trainer,)
    outcomes = {t: compare(t, a, model, max_prompt_length, files, work) for t in trainers}
    if a.json:
        results = {t: r for t, (r, _) in outcomes.items()}
        Path(a.json).write_text(json.dumps(results[trainers[0]] if len(trainers) == 1 else results, indent=1))
    failed = [t for t, (_, ok) in outcomes.items() if not ok]
    if failed:
        raise SystemExit(f"same-work check FAILED for {', '.join(failed)} (see above)")


def compare(trainer: str, a, model: str, max_prompt_length: int, files: dict, work: Path) -> tuple[list, bool]:
    """One trainer's comparison: a.repeats pairs of runs (ours, TRL), its table; returns (results, same work held)."""
    beta = a.beta if a.beta is not None else DEFAULT_BETA[trainer]
    base = dict(model=model, num_pairs=a.pairs, max_length=a.max_length, max_prompt_length=max_prompt_length,
                batch_size=a.batch, num_steps=a.steps, learning_rate=a.learning_rate, beta=beta, seed=a.seed,
                trainer=trainer, gamma_beta_ratio=a.gamma_beta_ratio)
    label = "DPO" if trainer == "dpo" else (f"SimPO (beta {beta}, gamma/beta {a.gamma_beta_ratio}; "
                                             f"TRL CPOTrainer simpo_gamma {a.gamma_beta_ratio * beta})")
    print(f"\n[bench] {label}, fp32, full fine-tune: {a.pairs} pairs, max length {a.max_length}, batch {a.batch}, "
          f"{a.steps} steps, {a.repeats} repeat(s); {platform.machine()}, {os.cpu_count()} CPUs; data in {work}",
          flush=True)
    pairs, all_results = [], []
    for rep in range(a.repeats):
        ours = run_side("ours", {**base, "data": files["ours"]}, work, f"ours-{trainer}-{rep}")
        trl = run_side("trl", {**base, "data": files["trl"]}, work, f"trl-{trainer}-{rep}")
        so, st = summarise(ours), summarise(trl)
        ok, detail = same_work(ours, trl, SIMPO_LOSS_ATOL if trainer == "simpo" else LOSS_ATOL)
        ratio = so["s_per_step"] / st["s_per_step"]
        pairs.append((so, st, ratio, ok))
        all_results.append({"ours": ours, "trl": trl})
        print(f"pair {rep + 1}: ours {so['s_per_step']:.2f} s/step {so['tok_s']:.0f} tok/s {so['rss']:.0f} MiB "
              f"(step 1 {so['step1']:.1f} s, wall {so['wall']:.0f} s) | TRL {st['s_per_step']:.2f} s/step {st['tok_s']:.0f} tok/s "
              f"{st['rss']:.0f} MiB (step 1 {st['step1']:.1f} s, wall {st['wall']:.0f} s) | ours/TRL {ratio:.3f} | same work: "
              f"{'yes' if ok else 'NO'} ({detail})", flush=True)
    ratios = sorted(p[2] for p in pairs)
    print(f"\n{label}: versions: ours {all_results[0]['ours']['versions']}; TRL side {all_results[0]['trl']['versions']} "
          f"(optimizer {all_results[0]['trl']['optim']})")
    print("| pair | ours s/step | TRL s/step | ours tok/s | TRL tok/s | ours peak RSS (MiB) | TRL peak RSS (MiB) | ours/TRL s/step | same work |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, (so, st, r, ok) in enumerate(pairs, 1):
        print(f"| {i} | {so['s_per_step']:.2f} | {st['s_per_step']:.2f} | {so['tok_s']:.0f} | {st['tok_s']:.0f} | "
              f"{so['rss']:.0f} | {st['rss']:.0f} | {r:.3f} | {'yes' if ok else 'NO'} |")
    print(f"\nratio ours/TRL (s/step), min-median-max over {len(ratios)} repeat(s): "
          f"{ratios[0]:.3f} - {statistics.median(ratios):.3f} - {ratios[-1]:.3f}")
    return all_results, all(p[3] for p in pairs)


if __name__ == "__main__":
    main()
