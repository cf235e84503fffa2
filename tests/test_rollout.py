"""The rollout layer (core.rollout) and its users: chat-template prompts, the first PPO ratio, evaluation's RNG.

    pytest tests/test_rollout.py -q
"""

from __future__ import annotations

import copy
import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from core.rollout import encode_prompts, format_prompts, generate, score_tokens

PROMPTS = ["You are a", "I think that the", "Tell me about"]


def test_format_prompts_uses_the_chat_template_only_when_asked_and_present(tokenizer):
    want = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in PROMPTS]
    assert format_prompts(tokenizer, PROMPTS) == want
    assert want[0].endswith("<|im_start|>user\nYou are a<|im_end|>\n<|im_start|>assistant\n")
    assert format_prompts(tokenizer, PROMPTS, chat_template=False) == PROMPTS
    base = copy.deepcopy(tokenizer)
    base.chat_template = None  # a base model: raw text whatever is asked
    assert format_prompts(base, PROMPTS, chat_template=True) == PROMPTS


def test_max_prompt_tokens_cuts_the_raw_prompt_never_the_template(tokenizer):
    long = "one two three four five six seven eight nine ten"
    ids = tokenizer(long, add_special_tokens=False)["input_ids"]
    last3 = tokenizer.decode(ids[-3:])
    (text,) = format_prompts(tokenizer, [long], max_prompt_tokens=3)
    assert text == format_prompts(tokenizer, [last3])[0]
    query_ids, query_mask = encode_prompts(tokenizer, [long, "hi"], chat_template=True, max_prompt_tokens=3)
    assert tokenizer.decode(query_ids[0][query_mask[0].bool()]) == text  # left-padded, nothing cut after formatting
    raw_ids, raw_mask = encode_prompts(tokenizer, [long], max_prompt_tokens=3)
    assert raw_ids[0].tolist() == ids[-3:]  # raw text: the last tokens, as before


def test_generate_with_chat_template_keeps_raw_prompts_and_samples_after_the_assistant_header(tiny_model, tokenizer):
    torch.manual_seed(0)
    ro = generate(tiny_model, tokenizer, PROMPTS, max_new_tokens=4, chat_template=True)
    assert ro.prompts == PROMPTS  # what rewards and logs see
    for b, text in enumerate(format_prompts(tokenizer, PROMPTS)):
        assert tokenizer.decode(ro.query_ids[b][ro.query_mask[b].bool()]) == text


def test_generate_with_a_generator_leaves_the_global_rng_alone_and_temperature_zero_is_greedy(tiny_model, tokenizer):
    state = torch.get_rng_state()
    draw = lambda seed: generate(tiny_model, tokenizer, PROMPTS, max_new_tokens=5, temperature=0.7,  # noqa: E731
                                 generator=torch.Generator().manual_seed(seed)).response_ids
    first = draw(3)
    assert torch.equal(torch.get_rng_state(), state)  # every token came from the generator
    torch.rand(10)
    assert torch.equal(draw(3), first) and not torch.equal(draw(4), first)
    greedy = generate(tiny_model, tokenizer, PROMPTS, max_new_tokens=5, temperature=0.0)
    enc_ids, enc_mask = greedy.query_ids, greedy.query_mask
    expected = tiny_model.generate(input_ids=enc_ids, attention_mask=enc_mask, max_new_tokens=5, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)[:, enc_ids.shape[1]:]
    R = greedy.response_ids.shape[1]
    mask = greedy.response_mask.bool()
    assert torch.equal(greedy.response_ids[mask], expected[:, :R][mask])


def test_first_ppo_ratio_is_exactly_one_for_a_model_with_dropout(tiny_model_path, tokenizer, tmp_path):
    from core.trainers.ppo import PPOConfig, build_models

    folder = tmp_path / "dropout"
    shutil.copytree(tiny_model_path, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.5}))
    torch.manual_seed(0)
    model, _ = build_models(PPOConfig(model_name_or_path=str(folder), lora_r=4), "cpu")
    rollout = generate(model.policy, tokenizer, PROMPTS, max_new_tokens=6, chat_template=True)
    model.train()  # as train_ppo: the old log-probs and the update in the same mode
    old = score_tokens(model, rollout, with_entropy=True, no_grad=True)
    new = score_tokens(model, rollout, with_entropy=True)  # the first minibatch's forward, with gradients
    ratio = torch.exp(new.logprobs - old.logprobs)[rollout.response_mask.bool()]
    assert torch.equal(ratio, torch.ones_like(ratio))
    for module in model.modules():  # the dropout asked for by the config is off everywhere
        assert getattr(module, "attention_dropout", 0.0) == 0.0


def test_evaluation_forks_the_rng_of_the_policys_device(monkeypatch):
    import core.evaluation as evaluation

    class Stop(Exception):
        pass

    calls = []

    def fork_rng(devices=None, enabled=True, device_type="cuda", **kwargs):
        calls.append((list(devices), device_type))
        raise Stop

    monkeypatch.setattr(torch.random, "fork_rng", fork_rng)
    on = lambda device: SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device(device))]))  # noqa: E731
    for device in ("cuda:1", "cpu"):
        with pytest.raises(Stop):
            evaluation.evaluate_policy(on(device), None, ["a prompt"], {})
    assert calls == [([1], "cuda"), ([], "cuda")]  # the CUDA device's RNG too; CPU only on CPU


def test_evaluation_leaves_the_training_rng_where_it_was(tiny_model, tokenizer):
    from core.evaluation import evaluate_policy

    class Scorer:
        def probability(self, texts):
            return [0.0] * len(texts)

    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    metrics, samples = evaluate_policy(tiny_model, tokenizer, PROMPTS[:2], {}, k=2, max_new_tokens=3,
                                       toxicity_scorer=Scorer(), chat_template=True)
    assert torch.equal(torch.random.get_rng_state(), state)
    again, _ = evaluate_policy(tiny_model, tokenizer, PROMPTS[:2], {}, k=2, max_new_tokens=3, toxicity_scorer=Scorer(),
                               chat_template=True)
    assert again == metrics and [s["prompt"] for s in samples] == [p for p in PROMPTS[:2] for _ in range(2)]
