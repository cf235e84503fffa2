"""Kill one tiny training run again and again at seeded durable-write events, resume it each time, and record what
was seen after every kill. Used by tests/test_kill.py, which asserts on the report.

    python tests/kill_chain.py {dpo|ppo} MODEL_FOLDER WORK_DIR SEED     -> WORK_DIR/report.json

One process per trainer imports torch and the trainer once, then runs every training in a forked child (a fork
costs milliseconds, a new Python with torch seconds), all on one thread:
1. a one-step WARM-UP run lists the modules a run imports; this process imports them before the other forks;
2. the REFERENCE: one uninterrupted run with core.faults logging every durable-write event
   (``RLHF_WORKBENCH_FAULT_LOG``): their labels, e.g. ``checkpoint step-000003: model.safetensors written#1``,
   name the same moment in a run and in a resumed copy of it;
3. the CHAIN, in one run folder: a fresh run killed at the first chosen event, then ``resume_from`` it killed at
   the next, and so on, with a few resumes killed inside their own start (an event number: the lock, cutting the
   files back, the status), and a last resume to the end. ``core.faults`` sends SIGKILL from inside the child at
   exactly the chosen event (``RLHF_WORKBENCH_KILL_AT``);
4. TIMED kills from outside, on a copy of the run as the first kill left it, then a resume to the end: a seeded
   delay after a seeded number of events, so they land between events, somewhere in the training (where exactly
   depends on the machine: they come on top of the exact ones);
5. EARLY kills, each in a new run, before the first checkpoint: nothing to resume; a resume must say so.

The events are drawn with ``random.Random(SEED)``: >= 20 for the chain, at least one of each class in
``CLASSES``, and only events a resume can reach (after the checkpoint the previous kill leaves as the latest).
``progress()`` writes the status at most once a second; that clock is switched off here so that the events of a
run do not depend on the machine's speed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

N_POINTS = 20  # chained kills at seeded events (at least), per trainer
N_RESUME_KILLS = 3  # extra: resumes killed inside their own start (the lock, truncation, status)
N_TIMED_KILLS = 2  # extra: SIGKILL from outside, a seeded delay after a seeded event (lands between events)
N_EARLY_KILLS = 2  # extra, each in a new run: before the first checkpoint
RESUME_START_EVENTS = 7  # a resume's first events: the lock, metrics and samples cut (2 each), status (2)

# kill-point classes the chain must contain (label patterns; the seed draws one event of each, then any events)
CLASSES = {
    "checkpoint: between its files": r"^checkpoint .*: (model|optimizer)\.(safetensors|json) written",
    "checkpoint: written and fsynced, not renamed": r"^checkpoint .*: files fsynced",
    "checkpoint: an old one set aside, not yet deleted": r"^checkpoint .*: step-\d+ set aside",
    "metrics append: a torn last line": r"^metrics\.jsonl step \d+: half a line",
    "samples append: a torn last line": r"^samples\.jsonl step \d+: half a line",
    "status: temporary written, not renamed": r"^status\.json running .*: temporary written",
    "export: the old model removed, the new not in place": r"^export model: old one removed",
    "the final status written, not renamed": r"^status\.json finished .*: temporary written",
}

PAIRS = [("What colour is the sky?", "Blue, on a clear day.", "Green."), ("Name a fruit.", "An apple.", "A chair."),
         ("How many legs has a cat?", "Four.", "Seven, usually."), ("Say hello.", "Hello, nice to meet you!", "Go away."),
         ("What is 2 + 2?", "It is 4.", "It is 5."), ("Capital of France?", "Paris.", "Berlin, I think.")]
PROMPTS = ["You are a", "I think that the", "The weather today is", "My friend said", "Why do people", "Tell me about"]


def trainer(kind: str, model: str, work: Path):
    """(config, train function) of a tiny run: LoRA, a checkpoint every step, an evaluation every other step."""
    if kind == "dpo":
        from core.trainers.dpo import DPOConfig, train_dpo

        data = work / "pairs.jsonl"
        data.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS))
        return DPOConfig(model_name_or_path=model, dataset=str(data), train_size=0, eval_size=2, max_length=64,
                         max_prompt_length=32, batch_size=2, gradient_accumulation_steps=1, num_steps=5, eval_every=2,
                         eval_batch_size=4, num_samples=1, save_every=1, lora_r=4, learning_rate=1e-2, cpu=True), train_dpo
    from core.trainers.ppo import PPOConfig, train_ppo

    prompts = work / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return PPOConfig(model_name_or_path=model, prompts=str(prompts), num_prompts=4, eval_prompts=2, rewards="toxicity",
                     batch_size=2, minibatch_size=2, ppo_epochs=1, num_iterations=5, max_new_tokens=4, eval_every=2,
                     eval_samples_k=1, samples_per_log=1, save_every=1, lora_r=4, learning_rate=1e-2, cpu=True), train_ppo


def read_events(path: Path) -> list[str]:
    """The "LABEL#K" of every event in a core.faults log, in order."""
    return [line.split("\t", 1)[1] for line in path.read_text().splitlines()] if path.is_file() else []


def choose_points(events: list[str], rng: random.Random) -> list[int]:
    """Sorted event indices for the chain: an event of every class, then uniform draws, keeping only reachable ones."""
    done = []  # done[i]: the latest complete checkpoint once event i happened (None before the first)
    save_end: dict[int, int] = {}  # step -> index of the last event of that checkpoint's save (its pruning included)
    latest = None
    for i, e in enumerate(events):
        if m := re.match(r"checkpoint step-(\d+): ", e):
            save_end[int(m.group(1))] = i
            if ": renamed#" in e:
                latest = int(m.group(1))
        done.append(latest)
    first = next(i for i, c in enumerate(done) if c is not None)
    last = next(i for i, e in enumerate(events) if e.startswith("status.json finished") and ": renamed#" in e)
    candidates = range(first, last)  # resumable, and not yet finished

    def reachable(points):  # a resume from checkpoint c repeats only the events after c's save
        kept, c = [], None
        for p in sorted(points):
            if c is None or p > save_end[c]:
                kept.append(p)
                c = done[p]
        return kept

    points: set[int] = set()
    for _ in range(10_000):
        kept = reachable(points)
        missing = [pattern for pattern in CLASSES.values() if not any(re.search(pattern, events[p]) for p in kept)]
        if not missing and len(kept) >= N_POINTS:
            return kept
        points.add(rng.choice([i for i in candidates if re.search(missing[0], events[i])] if missing else candidates))
    raise RuntimeError(f"no chain of {N_POINTS} reachable events covering every class: {missing}")


def expected_checkpoint(events: list[str], index: int) -> int:
    """The step of the latest complete checkpoint once event ``index`` of the reference happened."""
    return max(int(m.group(1)) for e in events[:index + 1] if (m := re.match(r"checkpoint step-(\d+): renamed#", e)))


def comparable(rows: list[dict]) -> list[dict]:
    """Metric rows without their timings (wall-clock values differ between any two runs)."""
    return [{k: v for k, v in r.items() if not k.startswith("time") and k != "tokens/per_second"} for r in rows]


def main(kind: str, model: str, work: Path, seed: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy and torch load
        os.environ[var] = "1"
    import importlib
    import threading

    import torch
    from tqdm import tqdm

    torch.set_num_threads(1)  # one thread: the same float results in every child
    # A fork copies this process's locks as they are, and SIGKILL ends a child holding a lock that it shares with this
    # process: so no thread runs here when a child is forked (``threads_at_fork`` in the report), and tqdm's
    # process-shared lock (a semaphore; a child killed while drawing a bar would leave it taken for good) is replaced
    # by a per-process one, without tqdm's monitor thread.
    tqdm.monitor_interval = 0
    tqdm.set_lock(threading.RLock())
    from core import faults
    from core.runstore import Run, list_runs
    from core.trainers import common

    common.PHASE_WRITE_INTERVAL_S = math.inf  # status writes paced by the clock would make the events machine-dependent
    config, train = trainer(kind, model, work)
    rng = random.Random(seed)
    report: dict = {"kind": kind, "seed": seed, "segments": [], "early": [], "threads_at_fork": 0}

    def use_store(name: str) -> Path:
        os.environ["RLHF_WORKBENCH_RUNS"] = str(work / name)
        return work / name

    def child(cfg, kill_at=None, delay=None, log=None, task=None) -> dict:
        """Run ``train(cfg)`` (or ``task()``) in a forked child, killed at event ``kill_at`` (core.faults) or, with
        ``delay=(n, seconds)``, from here that many seconds after its n-th event; exit status 0 when it returns,
        1 on an exception."""
        report["threads_at_fork"] = max(report["threads_at_fork"], threading.active_count())
        sys.stdout.flush()
        sys.stderr.flush()
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                faults.configure(kill_at=kill_at, log=log)
                task() if task else train(cfg)
            except BaseException:  # noqa: BLE001 - reported through the exit code
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        if delay is not None:
            n, seconds = delay
            running = lambda: os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None  # noqa: E731
            while len(read_events(log)) < n and running():
                time.sleep(0.01)
            time.sleep(seconds)
            os.kill(pid, signal.SIGKILL)  # a child that already ended is a zombie until waited for: no error
        _, status, _ = os.wait4(pid, 0)
        return {"killed": os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL,
                "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                "seconds": round(time.perf_counter() - t0, 2)}

    def observe(store: Path, log: Path | None, reference_rows: list[dict]) -> dict:
        runs = list_runs(store)
        if not runs:
            return {"run": None}
        (run,) = runs
        st = run.effective_status()
        rows = comparable(run.metrics())
        events = read_events(log) if log else []
        return {"run": str(run.path), "status": st["status"], "resumable_from": st.get("resumable_from"),
                "writer_alive": run.writer_alive(), "last_event": events[-1] if events else None,
                "rows": len(rows), "rows_are_a_prefix": rows == reference_rows[:len(rows)]}

    # ---- 1. a one-step run lists the modules a run imports; this process imports them, so that every child starts
    #      with them (faster, and the same for all: one of them draws from Python's random when first imported)
    def warm_up():
        train(dataclasses.replace(config, **{"num_steps" if kind == "dpo" else "num_iterations": 1}))
        (work / "modules.txt").write_text("\n".join(sys.modules))

    use_store("warm-up")
    assert child(config, task=warm_up)["exit"] == 0, "the one-step run failed"
    for name in (work / "modules.txt").read_text().split():
        if name not in sys.modules and not name.startswith("__"):
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    # ---- 2. the reference, logging its events
    store = use_store("reference")
    result = child(config, log=work / "reference.events")
    assert result["exit"] == 0, f"the uninterrupted run failed: {result}"
    report["reference_seconds"] = result["seconds"]
    (reference,) = list_runs(store)
    report["reference"] = str(reference.path)
    events = read_events(work / "reference.events")
    reference_rows = comparable(reference.metrics())
    report["events"] = len(events)

    # ---- 3. the chain: kills at the chosen events in reference order, a few resumes killed in their own start
    points = choose_points(events, rng)
    resume_kills_after = set(rng.sample(range(len(points) - 1), N_RESUME_KILLS))
    plan = []
    for n, p in enumerate(points):
        plan.append(("event", events[p], expected_checkpoint(events, p)))
        if n in resume_kills_after:
            plan.append(("resume start", rng.randint(1, RESUME_START_EVENTS), None))
    plan.append(("to the end", None, None))
    report["classes"] = {name: [e for e in (events[p] for p in points) if re.search(pattern, e)]
                         for name, pattern in CLASSES.items()}

    def chain(name: str, plan: list, run_path: str | None = None) -> list[dict]:
        store, segments = use_store(name), []
        for i, (how, at, expect) in enumerate(plan):
            cfg = config if run_path is None else dataclasses.replace(config, resume_from=run_path)
            log = work / f"{name}-{i:02d}.events"
            result = child(cfg, kill_at=at if how in ("event", "resume start") else None,
                           delay=at if how == "timer" else None, log=log)
            seen = observe(store, log, reference_rows)
            run_path = run_path or seen["run"]
            segments.append({"how": how, "at": at, "expected_checkpoint": expect, **result, **seen})
            if i == 0 and name == "chain":  # the run as the first kill left it: where the timed kills start from
                shutil.copytree(run_path, work / "timed" / Path(run_path).name, symlinks=True)
        return segments

    report["segments"] = chain("chain", plan)

    # ---- 4. kills from outside, a seeded delay after a seeded event, on a copy of the run as the first kill left it,
    #      then a resume to the end: where they land depends on the machine, so they come on top of the exact ones
    timed = [("timer", (rng.randint(RESUME_START_EVENTS, 60), round(rng.uniform(0.0, 0.5), 2)), None)
             for _ in range(N_TIMED_KILLS)]
    (copy,) = (work / "timed").iterdir()
    report["timed"] = chain("timed", timed + [("to the end", None, None)], run_path=str(copy))

    # ---- 5. early kills: a new run each, killed before its first checkpoint; a resume is refused clearly
    first = next(i for i, e in enumerate(events) if re.match(r"checkpoint step-\d+: renamed#", e))
    def refused_resume(run_path: str) -> None:  # in the resuming process itself: a refusal gives the lock back
        try:
            train(dataclasses.replace(config, resume_from=run_path))
        except common.TrainingError as exc:
            (work / "refusal.json").write_text(json.dumps({"refusal": str(exc),
                                                           "writer_alive_after_refusal": Run(run_path).writer_alive()}))

    for j, p in enumerate(sorted(rng.sample(range(first), N_EARLY_KILLS))):
        store = use_store(f"early-{j}")
        result = child(config, kill_at=events[p])
        seen = observe(store, None, reference_rows)
        if seen["run"]:
            (work / "refusal.json").unlink(missing_ok=True)
            child(config, task=lambda: refused_resume(seen["run"]))
            seen.update(json.loads((work / "refusal.json").read_text()) if (work / "refusal.json").is_file()
                        else {"refusal": None})
        report["early"].append({"at": events[p], **result, **seen})

    t = os.times()
    report["cpu_seconds"] = round(t.user + t.system + t.children_user + t.children_system, 1)
    (work / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
