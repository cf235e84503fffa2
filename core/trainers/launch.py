"""Run one training in its own process, from a run folder: ``python -m core.trainers.launch RUN_FOLDER``.

What it is: the process boundary between the Streamlit app and the trainers. The app
creates the run folder (``Run.create(kind, config)``: ``config.json`` names the trainer
and holds its config) and starts this module with the project's interpreter; the
launcher rebuilds the trainer's own config dataclass from ``config.json`` (an unknown
field is an error, never dropped), and calls ``train_<kind>(config, run=run)``. Progress,
errors and checkpoints go to the run folder as for any other run; the app only reads
it. Each training therefore gets a fresh process: ``accelerate``'s process-wide state,
global seeding and memory settings (``core.devices.keep_freed_memory``) never reach the
app, and a second job may pick another device.

Stopping: SIGTERM (or Ctrl-C) sets the trainers' stop flag (``common.request_stop``);
the trainer finishes its current step, saves a checkpoint and marks the run
"stopped". ``--resume`` continues a stopped, interrupted (or failed) run from its newest intact
checkpoint. The launcher takes the run's writer lock first (``Run.acquire_writer``): while
another process trains the run it prints one line naming that process and exits 1, without
writing anything.

``config_class(kind)`` and ``build_config(cls, values, base)`` are also what the app
uses to build configs, so the app, the CLIs and this launcher agree on the fields.

What it leaves out: several processes (``accelerate launch -m core.trainers.dpo ...``
for DDP), queueing jobs.

    python -m core.trainers.launch runs/20260101-120000-dpo            # train
    python -m core.trainers.launch runs/20260101-120000-dpo --resume   # continue a stopped run
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from core.runstore import Run, RunStoreError
from core.trainers.common import TrainingError

# run kind -> (module, config class, train function)
TRAINERS = {
    "sft": ("core.trainers.sft", "SFTConfig", "train_sft"),
    "dpo": ("core.trainers.dpo", "DPOConfig", "train_dpo"),
    "simpo": ("core.trainers.simpo", "SimPOConfig", "train_simpo"),
    "ppo": ("core.trainers.ppo", "PPOConfig", "train_ppo"),
    "reward": ("core.trainers.reward", "RewardConfig", "train_reward_model"),
    "finegrained_rm": ("core.trainers.finegrained", "FineGrainedConfig", "train_finegrained_rm"),
}


def trainer(kind: str) -> tuple[type, Callable]:
    """(config class, train function) of a run kind ("dpo", "ppo", ...); imports the trainer."""
    if kind not in TRAINERS:
        raise TrainingError(f"no trainer for run kind {kind!r}; known kinds: {', '.join(TRAINERS)}")
    module, config_name, train_name = TRAINERS[kind]
    mod = importlib.import_module(module)
    return getattr(mod, config_name), getattr(mod, train_name)


def config_class(kind: str) -> type:
    return trainer(kind)[0]


def build_config(cls: type, values: dict[str, Any], base=None):
    """``cls(**values)`` (or ``base`` with ``values`` replaced): an unknown field raises TrainingError naming it."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TrainingError(f"{cls.__name__} has no field(s) {', '.join(map(repr, unknown))}; "
                            f"its fields are: {', '.join(sorted(known))}")
    return dataclasses.replace(base, **values) if base is not None else cls(**values)


def launch(run: Run, resume: bool = False) -> Run:
    """Train the run ``run`` describes, in this process (``resume``: from its latest checkpoint)."""
    cls, train = trainer(run.kind)
    config = build_config(cls, run.config)
    if resume:
        config = dataclasses.replace(config, resume_from=str(run.path))
    return train(config, run=run)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import signal
    import sys
    import traceback

    from core.cli import debug_requested, is_user_error
    from core.trainers.common import explain_exception, request_stop

    for sig in (signal.SIGTERM, signal.SIGINT):  # first of all: a stop sent while loading must not kill the process
        signal.signal(sig, lambda *_: request_stop())  # stop after the current step, with a checkpoint
    parser = argparse.ArgumentParser(prog="python -m core.trainers.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_folder", help="a run folder created with core.runstore.Run.create(kind, config)")
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    debug = debug_requested(sys.argv if argv is None else argv)  # --debug: tracebacks of the clear errors too
    args = parser.parse_args(argv)

    run = Run.open(args.run_folder)
    try:  # one writer per run, taken before anything is written: a refused launch leaves the run as it was
        run.acquire_writer()  # the trainer's own acquire_writer (open_run) then finds it held by this process
    except RunStoreError as exc:
        print(f"[rlhf-workbench] error: cannot {'resume' if args.resume else 'train'}: {exc}", file=sys.stderr)
        return 1
    if args.resume:  # until the trainer takes over, a failure must not leave the old "stopped" behind
        run.set_status("running", error=None)
    try:
        launch(run, resume=args.resume)
    except BaseException as exc:  # noqa: BLE001 - any failure must reach status.json, even before the trainer ran
        if is_user_error(exc) and not debug:  # bad data, a setting that cannot work: one line (core.cli)
            print(f"[rlhf-workbench] error: {exc}", file=sys.stderr)
        else:
            traceback.print_exc()
        if run.status().get("status") == "running":  # the trainer's run_guard was not reached
            run.set_status("failed", error=explain_exception(exc))
        return 1
    finally:
        run.release_writer()  # (the trainer's run_guard released it already unless it failed before starting)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
