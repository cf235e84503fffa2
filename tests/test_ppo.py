"""PPO trainer tests on the tiny random Llama: it runs, its phases are right, it resumes exactly.

Each trainer run is 1-3 iterations of 2-4 rollouts of a few tokens (seconds on a CPU).
    pytest tests/test_ppo.py -q
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from core.trainers.ppo import PPOConfig, build_models, compute_advantages, train_ppo
from core.rollout import mask_after_eos

PROMPTS = ["You are a", "I think that the", "The weather today is", "My friend said", "Why do people", "Tell me about"]


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture
def config(tiny_model_path, prompt_file):
    return PPOConfig(model_name_or_path=str(tiny_model_path), prompts=str(prompt_file), num_prompts=4, eval_prompts=2,
                     rewards="toxicity", batch_size=4, minibatch_size=2, ppo_epochs=2, num_iterations=2,
                     max_new_tokens=6, eval_every=0, save_every=1, learning_rate=1e-2, cpu=True)


def _last_weights(run):
    step, folder = run.latest_checkpoint()
    return load_file(str(folder / "model.safetensors"))


def _no_time(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time") and k != "time"} for r in rows]


def test_two_iterations_finite_and_parameters_change(config):
    run = train_ppo(config)
    assert run.status()["status"] == "finished"
    rows = [r for r in run.metrics() if r["step"] > 0]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("loss/policy_avg", "loss/value_avg", "objective/kl", "objective/scores", "policy/entropy_avg"):
            assert math.isfinite(r[key]), key
    torch.manual_seed(config.seed)  # same init as the trainer's
    fresh, _ = build_models(config, "cpu")
    before = {n: p.detach() for n, p in fresh.named_parameters() if p.requires_grad}
    after = _last_weights(run)
    assert set(after) == set(before)
    changed = [n for n in after if not torch.equal(after[n], before[n])]
    assert any("lora_B" in n for n in changed) and any("v_head" in n for n in changed)


def test_lora_layers_puts_adapters_in_the_last_blocks_only(config):
    from dataclasses import replace

    from core.models import LoraSettings, apply_lora, load_causal_lm

    run = train_ppo(replace(config, lora_layers=1))  # the tiny model has 2 blocks
    after = _last_weights(run)
    adapters = [n for n in after if "lora_" in n]
    assert adapters and all(".layers.1." in n for n in adapters)  # none in block 0, even after the reference passes
    assert any("lora_B" in n and after[n].abs().sum() > 0 for n in adapters)  # B starts at 0: it trained
    every = apply_lora(load_causal_lm(config.model_name_or_path, device="cpu"), LoraSettings(r=4, alpha=8, layers=5))
    assert any(".layers.0." in n for n, p in every.named_parameters() if p.requires_grad)  # >= the blocks: all of them
    with pytest.raises(ValueError, match="LoRA layers must be >= 0"):
        apply_lora(load_causal_lm(config.model_name_or_path, device="cpu"), LoraSettings(layers=-1))
    from core.trainers.common import TrainingError

    with pytest.raises(TrainingError, match="lora_layers must be >= 0"):
        train_ppo(replace(config, lora_layers=-1))


def test_a_temperature_of_zero_is_refused_before_the_run_starts(config, tmp_path):
    from dataclasses import replace

    from core.trainers.common import TrainingError

    with pytest.raises(TrainingError, match="temperature must be > 0"):  # greedy decoding has no log-probs to ratio
        train_ppo(replace(config, temperature=0.0))


def test_advantages_with_gamma_lambda_one_only_change_up_to_the_reward_token():
    torch.manual_seed(0)
    B, T, t = 2, 7, 3
    values = torch.randn(B, T)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]])
    base = torch.randn(B, T) * mask
    bumped = base.clone()
    bumped[:, t] += 1.0
    a0, _, _ = compute_advantages(base, values, mask, gamma=1.0, lam=1.0, whiten=False)
    a1, _, _ = compute_advantages(bumped, values, mask, gamma=1.0, lam=1.0, whiten=False)
    diff = a1 - a0
    torch.testing.assert_close(diff[:, : t + 1], torch.ones(B, t + 1))  # every earlier token sees the full reward
    assert torch.all(diff[:, t + 1:] == 0)


def test_ptx_coef_zero_is_exactly_plain_ppo(config, tmp_path):
    ptx_file = tmp_path / "ptx.txt"
    ptx_file.write_text("The capital of France is Paris.\nWater boils at 100 degrees Celsius.\n")
    base = dict(num_iterations=1, save_every=0)
    plain = train_ppo(PPOConfig(**{**config.__dict__, **base, "ptx_coef": 0.0, "ptx_dataset": "/does/not/matter"}))
    zero = train_ppo(PPOConfig(**{**config.__dict__, **base, "ptx_coef": 0.0, "ptx_dataset": str(ptx_file)}))
    mixed = train_ppo(PPOConfig(**{**config.__dict__, **base, "ptx_coef": 0.5, "ptx_dataset": str(ptx_file)}))
    assert _no_time(plain.metrics()) == _no_time(zero.metrics())
    w_plain, w_zero, w_mixed = _last_weights(plain), _last_weights(zero), _last_weights(mixed)
    assert all(torch.equal(w_plain[k], w_zero[k]) for k in w_plain)
    assert mixed.metrics()[-1]["loss/ptx_avg"] > 0  # -gamma * mean log p > 0
    assert any(not torch.equal(w_plain[k], w_mixed[k]) for k in w_plain)


def test_resume_gives_the_same_next_metrics(config):
    cfg = PPOConfig(**{**config.__dict__, "num_iterations": 3})
    full = train_ppo(cfg)

    def interrupt(step, metrics):
        if step == 2:
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        train_ppo(cfg, on_log=interrupt)
    from core.runstore import list_runs

    interrupted = next(r for r in list_runs() if r.status()["status"] == "failed")
    assert interrupted.latest_checkpoint()[0] == 1
    resumed = train_ppo(PPOConfig(**{**cfg.__dict__, "resume_from": str(interrupted.path)}))
    assert resumed.path == interrupted.path and resumed.status()["status"] == "finished"
    assert [r["step"] for r in resumed.metrics()] == [1, 2, 3]
    got, want = _no_time(resumed.metrics()), _no_time(full.metrics())
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in w:
            assert g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-6), (g["step"], k)
    w_full, w_resumed = _last_weights(full), _last_weights(resumed)
    for k in w_full:
        torch.testing.assert_close(w_resumed[k], w_full[k], rtol=1e-5, atol=1e-6)


def test_samples_hold_the_per_token_decomposition(config):
    run = train_ppo(PPOConfig(**{**config.__dict__, "num_iterations": 1, "rewards": "toxicity,toxicity_sentence"}))
    samples = run.samples(1)
    assert len(samples) == config.samples_per_log
    for s in samples:
        n = len(s["token_ids"])
        assert n >= 1 and len(s["tokens"]) == n and "".join(s["tokens"]).strip() == s["response"].strip()
        fields = ("reward/toxicity", "reward/toxicity_sentence", "kl", "value", "advantage", "return", "logprob", "ref_logprob")
        for f in fields:
            assert len(s["per_token"][f]) == n, f
        assert sum(s["per_token"]["reward/toxicity"]) == pytest.approx(s["totals"]["toxicity"], abs=1e-6)
        assert {seg["component"] for seg in s["segments"]} <= {"toxicity", "toxicity_sentence"}
        # return = advantage + value on every token (GAE targets)
        for a, v, r in zip(s["per_token"]["advantage"], s["per_token"]["value"], s["per_token"]["return"]):
            assert r == pytest.approx(a + v, abs=1e-5)


def test_tokens_after_the_first_eos_are_masked():
    eos = 2
    ids = torch.tensor([[5, eos, 7, eos, 9], [5, 6, 7, 8, 9], [eos, 3, 3, 3, 3]])
    mask, ended = mask_after_eos(ids, [eos])
    assert mask.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]


def test_generate_pads_to_the_longest_response_and_masks_padding(tiny_model, tokenizer):
    from core.rollout import generate

    torch.manual_seed(0)
    ro = generate(tiny_model, tokenizer, PROMPTS[:3], max_new_tokens=5)
    assert ro.response_ids.shape == ro.response_mask.shape
    assert ro.response_ids.shape[1] == int(ro.response_mask.sum(1).max()) <= 5
    assert torch.all(ro.response_ids[~ro.response_mask.bool()] == tokenizer.pad_token_id)
    assert ro.query_mask.sum(1).tolist() == [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS[:3]]


def test_min_new_tokens_gives_fixed_length_responses(tiny_model, tokenizer):
    from core.rollout import generate

    eos = tokenizer.eos_token_id

    def eos_everywhere(module, inputs, out):  # make EOS the model's overwhelming choice
        out[..., eos] += 50.0
        return out

    hook = tiny_model.lm_head.register_forward_hook(eos_everywhere)
    try:
        torch.manual_seed(0)
        ro = generate(tiny_model, tokenizer, PROMPTS[:3], max_new_tokens=5)
        assert ro.response_mask.sum(1).tolist() == [1, 1, 1] and ro.ended.all()  # EOS first, nothing after it
        ro = generate(tiny_model, tokenizer, PROMPTS[:3], max_new_tokens=5, min_new_tokens=5)
        assert ro.response_ids.shape == (3, 5) and ro.response_mask.bool().all() and not ro.ended.any()
        assert not (ro.response_ids == eos).any()
        with pytest.raises(ValueError, match="min_new_tokens"):
            generate(tiny_model, tokenizer, PROMPTS[:1], max_new_tokens=5, min_new_tokens=6)
    finally:
        hook.remove()


def test_min_new_tokens_above_max_fails_before_loading(config):
    from core.trainers.common import TrainingError

    config.min_new_tokens = config.max_new_tokens + 1
    with pytest.raises(TrainingError, match="min_new_tokens"):
        train_ppo(config)


def test_user_function_reward(config):
    from core.rewards.tensor import FunctionReward

    count_the = FunctionReward(lambda prompt, response: response.lower().split().count("the"), name="the_count")
    run = train_ppo(PPOConfig(**{**config.__dict__, "num_iterations": 1, "weights": "toxicity=0.0,the_count=1.0"}),
                    extra_rewards={"the_count": count_the})
    row = run.metrics()[-1]
    assert "rewards/the_count" in row and row["rewards/the_count_weight"] == 1.0
    for s in run.samples(1):
        assert sum(s["per_token"]["reward/the_count"]) == s["response"].lower().split().count("the")
        assert s["per_token"]["reward/the_count"][:-1] == [0.0] * (len(s["tokens"]) - 1)  # sequence level: last token


def test_function_reward_by_module_path():
    from core.trainers.rewards_setup import RewardSetupError, build_reward_components, parse_weights

    from core.trainers.rewards_setup import function_rewards

    with pytest.raises(RewardSetupError, match="names Python code"):
        build_reward_components("toxicity_sentence,operator:contains")  # nothing is imported from a config alone
    comps = build_reward_components("toxicity_sentence,operator:contains", function_rewards("operator:contains"))
    assert set(comps) == {"toxicity_sentence", "contains"}
    assert comps["contains"].score(["a cat"], ["cat"], [[(0, 3)]]) == [[1.0]]  # "cat" in "a cat"
    assert parse_weights("contains=0.5", comps) == {"toxicity_sentence": 1.0, "contains": 0.5}
    with pytest.raises(RewardSetupError, match="unknown reward"):
        parse_weights("nope=1", comps)
    with pytest.raises(RewardSetupError, match="unknown reward"):
        build_reward_components("toxicity,what")


def test_empty_prompt_set_fails_clearly(config, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    from core.data import DataError
    from core.runstore import list_runs

    with pytest.raises(DataError, match="empty.txt: holds no prompts: the file is empty"):
        train_ppo(PPOConfig(**{**config.__dict__, "prompts": str(empty)}))
    (run,) = list_runs()
    status = run.status()
    assert status["status"] == "failed" and "empty" in status["error"]


def test_non_finite_loss_fails_clearly_and_keeps_the_run(config):
    from core.rewards.tensor import FunctionReward
    from core.runstore import list_runs
    from core.trainers.common import NonFiniteLossError

    broken = FunctionReward(lambda prompt, response: float("nan"), name="broken")
    with pytest.raises(NonFiniteLossError):
        train_ppo(PPOConfig(**{**config.__dict__, "num_iterations": 1}), extra_rewards={"broken": broken})
    (run,) = list_runs()
    assert run.status()["status"] == "failed" and "loss became nan" in run.status()["error"]


def test_prompt_file_rows_without_prompt_name_file_and_record(tmp_path):
    from core.data import DataError
    from core.data import load_prompts

    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "Tell me about cats."}\n{"question": "no prompt field"}\n')
    with pytest.raises(DataError, match=r"prompts.jsonl, record 1: needs a non-empty 'prompt'"):
        load_prompts(str(path), 2, seed=0)


def test_held_out_samples_are_stored_per_evaluation_for_pairing(config):
    from dataclasses import replace

    run = train_ppo(replace(config, num_iterations=1, eval_every=1, eval_samples_k=1, save_every=0))
    rows = run.eval_samples()
    assert [r["step"] for r in rows] == [0, 0, 1, 1]  # 2 held-out prompts, before training and after iteration 1
    assert [r["prompt"] for r in rows[:2]] == [r["prompt"] for r in rows[2:]]  # the same prompts: pairable
    assert all(r["kl"] == 0.0 for r in rows[:2])  # before any update the policy is the reference
    assert all(set(r["totals"]) == {"toxicity"} and r["length"] >= 1 for r in rows)
    assert {r["step"]: r for r in run.metrics()}[1]["eval/kl"] == pytest.approx(sum(r["kl"] for r in rows[2:]) / 2)


def test_cpu_bf16_autocast_keeps_fp32_weights_and_a_first_ratio_of_one(config):
    from dataclasses import replace

    from accelerate.state import AcceleratorState

    # accelerate keeps one mixed-precision setting per process (the app runs each training in its own process)
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        run = train_ppo(replace(config, cpu_bf16=True, num_iterations=1, ppo_epochs=1, minibatch_size=4))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    row = next(r for r in run.metrics() if r["step"] == 1)
    assert row["val/ratio"] == pytest.approx(1.0, abs=1e-6) and row["policy/clipfrac_avg"] == 0.0  # old = new pass
    assert all(math.isfinite(row[k]) for k in ("loss/policy_avg", "loss/value_avg", "objective/kl"))
    weights = _last_weights(run)
    assert all(t.dtype == torch.float32 for t in weights.values())
