"""TRL side of the PPO benchmark: one trl.experimental.ppo.PPOTrainer run (TRL 1.12.0, the last release with
PPO), written as JSON. Runs in bench/.trl112-venv, never in .venv:

    python3 -m venv bench/.trl112-venv
    bench/.trl112-venv/bin/pip install torch==2.13.0 trl==1.12.0 transformers==5.23.0 accelerate==1.15.0 datasets
    bench/.trl112-venv/bin/python bench/trl_ppo_side.py SPEC.json OUT.json

SPEC: model (local HF folder of the policy; a second, frozen copy is the reference policy), reward_model (local
folder of an AutoModelForSequenceClassification with num_labels=1; TRL's reward_model, frozen, AND value_model,
trained, are both loaded from it, as in TRL's own PPO example), prompts (.jsonl of {"prompt": ...}, consumed in
file order), response_length, min_new_tokens (optional; = response_length makes every response exactly
response_length tokens), batch_size, num_mini_batches, num_ppo_epochs, num_iterations, learning_rate, kl_coef,
temperature, cliprange, cliprange_value, vf_coef, gamma, lam, seed; optional weight_decay (0.0) and
lr_scheduler_type ("constant"; TRL's default "linear" would decay the learning rate over the iterations).

Three small interventions, none of which changes what TRL computes:
  - order: PPOTrainer.__init__ builds DataLoader(shuffle=True); SequentialPPOTrainer replaces it, right after,
    with the same DataLoader but shuffle=False (also passed through accelerator.prepare), so iteration i uses
    rows (i-1)*B .. i*B-1 of the prompts file. The script checks this on the queries it sees.
  - fixed length: train() builds its GenerationConfig from a local dict (max_new_tokens, temperature, top_k=0,
    top_p=1, do_sample); the module-level name GenerationConfig is replaced by a factory adding
    min_new_tokens and eos_token_id (the tokenizer's EOS). eos_token_id is needed because with stop_token=None
    TRL sets the policy's generation_config.eos_token_id = None, and transformers only installs its
    MinNewTokensLengthLogitsProcessor (EOS logit -> -inf) when an EOS id is known.
  - timing: the module-level functions train() calls are wrapped: batch_generation (generation_s), forward
    under no_grad (the reference pass) and get_reward (value + reward passes) (rollout_forward_s); forward
    with grad enabled marks the start of the PPO update, the optimizer's step() its end (and counts steps;
    minibatch_s lists the seconds up to each step). non_pad / query_tokens / response_tokens count the tokens
    that are not the pad id in the query+response batch TRL generates.

OUT also has "steps" (the iteration rows again, with "step" = iteration) and "prompt_ids_sha": sha256 of
json.dumps(list of the prompt token-id lists of every rollout row, in consumption order, pads removed).
    step_s runs from one on_step_end callback (or on_train_begin) to the next.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

METRIC_KEYS = (
    "objective/kl", "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward", "objective/scores",
    "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg",
    "policy/entropy_avg", "val/ratio", "val/ratio_var", "val/num_eos_tokens", "lr", "episode", "eps",
)


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    out_path = sys.argv[2]
    t_start = time.perf_counter()

    import torch
    import transformers
    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_mod
    from datasets import load_dataset
    from torch.utils.data import DataLoader
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              GenerationConfig, TrainerCallback, set_seed)
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    set_seed(spec["seed"])  # python, numpy (PPO's minibatch permutations) and torch
    B = spec["batch_size"]

    # ------------------------------------------------------------------ data: tokenised, in file order
    tokenizer = AutoTokenizer.from_pretrained(spec["model"], padding_side="left")  # left-padded queries
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    pad_id = tokenizer.pad_token_id
    dataset = load_dataset("json", data_files=spec["prompts"], split="train")
    dataset = dataset.map(lambda row: {"input_ids": tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]},
                          remove_columns=dataset.column_names)
    expected_ids = [list(ids) for ids in dataset["input_ids"]]

    # ------------------------------------------------------------------ fixed-length responses
    min_new = spec.get("min_new_tokens")
    if min_new:
        def generation_config_with_min_new_tokens(**kwargs):
            return GenerationConfig(**kwargs, min_new_tokens=min_new, eos_token_id=tokenizer.eos_token_id)

        ppo_mod.GenerationConfig = generation_config_with_min_new_tokens

    # ------------------------------------------------------------------ phase timing (wrappers)
    iters: dict[int, dict] = {}
    cur: dict = {}
    order_ok: list[bool] = []
    consumed: list[list[int]] = []  # the prompt token ids of every rollout row, in order

    def new_iteration() -> None:
        cur.clear()
        cur.update(generation_s=0.0, rollout_forward_s=0.0, update_start=None, update_end=None, optimizer_steps=0,
                   minibatch_s=[])

    new_iteration()
    orig_batch_generation, orig_forward, orig_get_reward = ppo_mod.batch_generation, ppo_mod.forward, ppo_mod.get_reward

    def batch_generation(model, queries, *args, **kwargs):
        it = len(iters)  # 0-based index of the iteration being rolled out
        rows = expected_ids[(it * B) % len(expected_ids):][:B]
        seen = [q[q != pad_id].tolist() for q in queries]
        consumed.extend(seen)
        order_ok.append(seen == rows)
        t = time.perf_counter()
        query_responses, logitss = orig_batch_generation(model, queries, *args, **kwargs)
        cur["generation_s"] += time.perf_counter() - t
        context_length = queries.shape[1]
        cur["non_pad"] = int((query_responses != pad_id).sum())
        cur["response_tokens"] = int((query_responses[:, context_length:] != pad_id).sum())
        cur["query_tokens"] = int((queries != pad_id).sum())
        cur["response_lengths"] = sorted(set(((query_responses[:, context_length:] != pad_id).sum(1)).tolist()))
        return query_responses, logitss

    def forward(model, query_responses, pad_token_id):
        if torch.is_grad_enabled():  # the policy+value forward of a PPO minibatch
            if cur["update_start"] is None:
                cur["update_start"] = time.perf_counter()
            return orig_forward(model, query_responses, pad_token_id)
        t = time.perf_counter()  # the reference policy's rollout forward
        out = orig_forward(model, query_responses, pad_token_id)
        cur["rollout_forward_s"] += time.perf_counter() - t
        return out

    def get_reward(model, query_responses, pad_token_id, context_length):
        t = time.perf_counter()  # value model (rollout values) and reward model (scores)
        out = orig_get_reward(model, query_responses, pad_token_id, context_length)
        cur["rollout_forward_s"] += time.perf_counter() - t
        return out

    ppo_mod.batch_generation, ppo_mod.forward, ppo_mod.get_reward = batch_generation, forward, get_reward

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t_prev = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs:
                iters.setdefault(state.global_step, {}).update({k: logs[k] for k in METRIC_KEYS if k in logs})

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            row = iters.setdefault(state.global_step, {})
            row["step_s"] = now - self.t_prev
            self.t_prev = now
            row["generation_s"] = cur["generation_s"]
            row["rollout_forward_s"] = cur["rollout_forward_s"]
            row["update_s"] = (cur["update_end"] - cur["update_start"]) if cur["update_end"] else 0.0
            for k in ("non_pad", "query_tokens", "response_tokens", "response_lengths", "optimizer_steps",
                      "minibatch_s"):
                row[k] = cur.get(k)
            new_iteration()

    class SequentialPPOTrainer(PPOTrainer):
        """PPOTrainer whose prompt DataLoader is sequential (TRL's own is built with shuffle=True)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.dataloader = self.accelerator.prepare(DataLoader(
                self.train_dataset,
                batch_size=self.local_dataloader_batch_size,
                shuffle=False,
                collate_fn=self.data_collator,
                drop_last=True,
            ))

    # ------------------------------------------------------------------ models and trainer
    policy = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    ref_policy = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(spec["reward_model"], num_labels=1,
                                                                     dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(spec["reward_model"], num_labels=1,
                                                                      dtype=torch.float32)
    for m in (value_model, reward_model):
        if m.config.pad_token_id is None:
            m.config.pad_token_id = pad_id

    with tempfile.TemporaryDirectory() as out_dir:
        args = PPOConfig(
            output_dir=out_dir,
            per_device_train_batch_size=B,
            gradient_accumulation_steps=1,
            num_mini_batches=spec["num_mini_batches"],
            num_ppo_epochs=spec["num_ppo_epochs"],
            total_episodes=spec["num_iterations"] * B,
            local_rollout_forward_batch_size=B,
            learning_rate=spec["learning_rate"],
            lr_scheduler_type=spec.get("lr_scheduler_type", "constant"),
            warmup_steps=0,
            weight_decay=spec.get("weight_decay", 0.0),
            response_length=spec["response_length"],
            temperature=spec["temperature"],
            kl_coef=spec["kl_coef"],
            cliprange=spec.get("cliprange", 0.2),
            cliprange_value=spec.get("cliprange_value", 0.2),
            vf_coef=spec.get("vf_coef", 0.1),
            gamma=spec.get("gamma", 1.0),
            lam=spec.get("lam", 0.95),
            stop_token=None,
            missing_eos_penalty=None,
            num_sample_generations=0,
            bf16=False,
            use_cpu=True,
            gradient_checkpointing=False,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            seed=spec["seed"],
            dataloader_num_workers=0,
        )
        trainer = SequentialPPOTrainer(
            args=args, processing_class=tokenizer, model=policy, ref_model=ref_policy, reward_model=reward_model,
            value_model=value_model, train_dataset=dataset, callbacks=[Timer()],
        )
        opt = trainer.optimizer
        orig_step = opt.step

        def step(*a, **kw):
            out = orig_step(*a, **kw)
            cur["minibatch_s"].append(time.perf_counter() - (cur["update_end"] or cur["update_start"]))
            cur["update_end"] = time.perf_counter()
            cur["optimizer_steps"] += 1
            return out

        opt.step = step
        t_train = time.perf_counter()
        trainer.train()
        t_end = time.perf_counter()
        optim = str(args.optim)

    rows = [{"iteration": i, **iters[i]} for i in sorted(iters) if i >= 1 and "step_s" in iters[i]]
    result = {
        "side": "trl",
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
        "optim": optim,
        "prompts_in_file_order": bool(order_ok) and all(order_ok),
        "iterations": rows,
        "steps": [{"step": r["iteration"], **r} for r in rows],  # the same rows, under compare_trl.py's name
        "prompt_ids_sha": hashlib.sha256(json.dumps(consumed).encode()).hexdigest(),
        "optimizer_steps": sum(r["optimizer_steps"] or 0 for r in rows),
        "setup_s": t_train - t_start,
        "train_s": t_end - t_train,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
    }
    json.dump(result, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main()
