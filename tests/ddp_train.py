"""Run one trainer for a few steps in every process of `accelerate launch`, then record what each process holds.

Used by tests/test_ddp.py; the trainers are called as a user would call them, and what the
test needs is observed from outside (the accelerator a trainer makes, the KL controller's
updates), so the trainers carry no test-only code.

    accelerate launch --num_processes 2 --cpu tests/ddp_train.py {dpo|ppo|reward} CONFIG.json OUT_DIR

Writes, per process i:
    OUT_DIR/rank{i}.safetensors  the trainable parameters of every prepared model, as
                                 "initial/<model>.<name>" (when prepared) and "final/<model>.<name>"
    OUT_DIR/rank{i}.json         {"rank", "world", "run": the run folder or null,
                                  "kl_updates": [[kl given to the adaptive controller, n_steps, beta after], ...]}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TRAINERS = {
    "dpo": ("core.trainers.dpo", "DPOConfig", "train_dpo"),
    "ppo": ("core.trainers.ppo", "PPOConfig", "train_ppo"),
    "reward": ("core.trainers.reward", "RewardConfig", "train_reward_model"),
}


def trainable(models) -> dict:
    return {f"{i}.{name}": p.detach().float().cpu().clone()
            for i, model in enumerate(models) for name, p in model.named_parameters() if p.requires_grad}


def main(kind: str, config_file: str, out_dir: str) -> None:
    import importlib

    from safetensors.torch import save_file

    import core.devices
    import core.rl

    accelerators, initial, kl_updates = [], {}, []

    make_accelerator = core.devices.make_accelerator

    def recording_accelerator(*args, **kwargs):
        accelerator = make_accelerator(*args, **kwargs)
        prepare = accelerator.prepare

        def recording_prepare(*objects, **kw):
            import torch

            initial.update(trainable([o for o in objects if isinstance(o, torch.nn.Module)]))
            return prepare(*objects, **kw)

        accelerator.prepare = recording_prepare
        accelerators.append(accelerator)
        return accelerator

    core.devices.make_accelerator = recording_accelerator
    update = core.rl.AdaptiveKLController.update

    def recording_update(self, current_kl, n_steps):
        value = update(self, current_kl, n_steps)
        kl_updates.append([float(current_kl), int(n_steps), float(self.value)])
        return value

    core.rl.AdaptiveKLController.update = recording_update

    module, config_class, train = TRAINERS[kind]
    module = importlib.import_module(module)
    config = getattr(module, config_class)(**json.loads(Path(config_file).read_text()))
    run = getattr(module, train)(config)

    (accelerator,) = accelerators
    final = trainable([accelerator.unwrap_model(m) for m in accelerator._models])
    tensors = {**{f"initial/{k}": v for k, v in initial.items()}, **{f"final/{k}": v for k, v in final.items()}}
    rank, out = accelerator.process_index, Path(out_dir)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world": accelerator.num_processes, "run": str(run.path) if run is not None else None,
        "kl_updates": kl_updates,
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
