"""TRL side of bench/compare_trl.py: one DPOTrainer, RewardTrainer or CPOTrainer (SimPO) run, written as JSON.
Runs in bench/.trl-venv, never in .venv.

    bench/.trl-venv/bin/python bench/trl_side.py SPEC.json OUT.json

SPEC (written by compare_trl.py): model (a local HF folder), data (a .jsonl in TRL schema
{prompt, chosen, rejected}, already in the order the batches are to be consumed), max_length,
batch_size, num_steps, learning_rate, beta, seed, and trainer ("dpo", the default, or "simpo":
trl.experimental.cpo.CPOTrainer with loss_type="simpo", cpo_alpha=0 and the ABSOLUTE margin
simpo_gamma = gamma_beta_ratio * beta, also read from the spec; or "reward": RewardTrainer on
pre-tokenised rows {chosen_ids, rejected_ids} starting from the model folder, which holds the
backbone plus the seeded score head both sides start from). The sampler is sequential, so TRL's step s
trains on rows (s-1)*B .. s*B-1 of the file: the same pairs our trainer uses in its step s.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    out_path = sys.argv[2]
    t_start = time.perf_counter()

    import torch
    import transformers
    import trl
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    simpo = spec.get("trainer", "dpo") == "simpo"
    reward = spec.get("trainer") == "reward"
    if simpo:
        import trl.experimental.cpo.cpo_trainer as cpo_trainer
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        # CPOTrainer prepends the tokenizer's BOS (<|im_start|> for SmolLM2) to every prompt; ours, like
        # DPOTrainer here, tokenises the prompt with add_special_tokens=True, which adds none for this
        # tokenizer. Same work means the same tokens, so the BOS insertion is switched off.
        cpo_trainer.add_bos_token_if_needed = lambda bos, pl, p, cl, c, rl, r: (p, c, r)

    torch.manual_seed(spec["seed"])
    steps: dict[int, dict] = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            steps.setdefault(state.global_step, {})["step_s"] = time.perf_counter() - self.t0

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                steps.setdefault(state.global_step, {}).update(
                    {k: logs[k] for k in ("loss", "logps/chosen", "logps/rejected", "margin", "grad_norm") if k in logs})

    class CountingDPOTrainer(DPOTrainer):
        """DPOTrainer that also counts the non-pad tokens of each optimizer step (gradient accumulation is 1)."""

        def training_step(self, model, inputs, *args, **kwargs):
            non_pad = int(inputs["attention_mask"].sum())
            steps.setdefault(self.state.global_step + 1, {})["non_pad"] = non_pad
            return super().training_step(model, inputs, *args, **kwargs)

    class CountingCPOTrainer(CPOTrainer if simpo else object):
        """CPOTrainer that also counts the non-pad tokens (prompt + chosen and prompt + rejected rows) of each step."""

        def training_step(self, model, inputs, *args, **kwargs):
            non_pad = int(inputs["chosen_attention_mask"].sum()) + int(inputs["rejected_attention_mask"].sum())
            steps.setdefault(self.state.global_step + 1, {})["non_pad"] = non_pad
            return super().training_step(model, inputs, *args, **kwargs)

    class CountingRewardTrainer(RewardTrainer if reward else object):
        """RewardTrainer that also counts the non-pad tokens (chosen rows + rejected rows) of each step."""

        def training_step(self, model, inputs, *args, **kwargs):
            steps.setdefault(self.state.global_step + 1, {})["non_pad"] = int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, *args, **kwargs)

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    if reward:  # the shared starting model: backbone + the seeded score head written by compare_trl.py
        model = AutoModelForSequenceClassification.from_pretrained(spec["model"], num_labels=1, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    dataset = load_dataset("json", data_files=spec["data"], split="train")
    with tempfile.TemporaryDirectory() as out_dir:
        common = dict(
            output_dir=out_dir,
            per_device_train_batch_size=spec["batch_size"],
            gradient_accumulation_steps=1,
            max_steps=spec["num_steps"],
            learning_rate=spec["learning_rate"],
            lr_scheduler_type="constant",  # ours: linear warm-up (0 steps here) then constant
            warmup_steps=0,
            max_grad_norm=10.0,  # ours: the configs' max_grad_norm default
            weight_decay=0.0,
            max_length=spec["max_length"],
            bf16=False,  # fp32, like ours on CPU without LoRA
            gradient_checkpointing=False,  # ours does not checkpoint activations
            train_sampling_strategy="sequential",  # the pairs in our trainer's order
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            seed=spec["seed"],
            dataloader_num_workers=0,
        )
        if reward:
            # the rows are pre-tokenised (chosen_ids / rejected_ids): TRL then appends no EOS, so both sides
            # score exactly the same tokens; all fit max_length (TRL would drop longer ones)
            args = RewardConfig(**common, disable_dropout=True, center_rewards_coefficient=None)
            trainer = CountingRewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                            callbacks=[Timer()])
        elif simpo:
            args = CPOConfig(
                **common,
                beta=spec["beta"],
                loss_type="simpo",
                cpo_alpha=0.0,  # pure SimPO: no NLL (behaviour-cloning) term
                simpo_gamma=spec["gamma_beta_ratio"] * spec["beta"],  # TRL's gamma is absolute; ours is gamma/beta
            )
            trainer = CountingCPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                         callbacks=[Timer()])
        else:
            args = DPOConfig(
                **common,
                beta=spec["beta"],
                loss_type=["sigmoid"],
                precompute_ref_log_probs=True,  # ours precomputes the reference log-probs once, before training
            )
            trainer = CountingDPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                         callbacks=[Timer()])
        t_train = time.perf_counter()
        trainer.train()
        t_end = time.perf_counter()
        optim = str(args.optim)
    rows = [{"step": s, **steps[s]} for s in sorted(steps) if s >= 1 and "step_s" in steps[s]]
    result = {
        "side": "trl",
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
        "optim": optim,
        "steps": rows,
        "setup_s": t_train - t_start,
        "train_s": t_end - t_train,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
    }
    json.dump(result, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main()
