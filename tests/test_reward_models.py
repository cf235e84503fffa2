"""Reward models: Bradley-Terry trainer, fine-grained labels and RMs, persistence, bad input."""

import json
import random

import pytest
import torch

from core.data import DataError

WORDS = "the a cat dog runs sits blue red fast slow happy sad tree house river".split()


def write_keyword_pairs(path, n=80, seed=0):
    """Separable preferences: the chosen response is the rejected one plus the word 'banana'."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            base = " ".join(rng.choices(WORDS, k=6))
            f.write(json.dumps({"prompt": f"Q{i}: " + " ".join(rng.choices(WORDS, k=4)),
                                "chosen": base + " banana", "rejected": base}) + "\n")
    return path


def tiny_config(tmp_path, **kw):
    from core.trainers.reward import RewardConfig

    defaults = dict(model_name_or_path="tiny-random-llama", dataset=str(write_keyword_pairs(tmp_path / "pairs.jsonl")), limit=0,
                    num_epochs=25, batch_size=16, learning_rate=1e-2, max_length=48, save_dir=str(tmp_path / "rm"),
                    progress=False, eval_every=20)
    defaults.update(kw)
    return RewardConfig(**defaults)


# ----------------------------------------------------------------------------- scoring primitives


def test_format_pair_text_and_chat(tokenizer):
    from core.rewards.preference_rm import format_pair

    text, start = format_pair(tokenizer, "Q: hi?", "Hello.", "text", " answer: ")
    assert text == "Q: hi? answer: Hello." and text[start:] == "Hello."
    text, start = format_pair(tokenizer, [{"role": "user", "content": "hi?"}], [{"role": "assistant", "content": "Hello."}])
    assert text[start:].startswith("Hello.") and text.endswith("<|im_end|>\n")


def test_sequence_scores_ignore_padding_side(tiny_model_path):
    from core.models import load_reward_model, load_tokenizer
    from core.rewards.preference_rm import encode, sequence_scores

    torch.manual_seed(0)
    model, tok = load_reward_model(str(tiny_model_path), device="cpu"), load_tokenizer(str(tiny_model_path))
    torch.nn.init.normal_(model.score.weight)
    texts = ["a short one", "a much longer text that needs no padding at all <|im_end|>", "mid length text"]
    with torch.no_grad():
        right = sequence_scores(model, **{k: v for k, v in encode(tok, texts, 64, "right").items() if k != "offset_mapping"})
        left = sequence_scores(model, **{k: v for k, v in encode(tok, texts, 64, "left").items() if k != "offset_mapping"})
        alone = torch.cat([sequence_scores(model, **{k: v for k, v in encode(tok, [t], 64).items() if k != "offset_mapping"})
                           for t in texts])
    torch.testing.assert_close(right, alone)
    torch.testing.assert_close(left, alone)


# ----------------------------------------------------------------------------- trainer


def test_tiny_rm_learns_separable_preferences_and_round_trips(tmp_path):
    from core.rewards.store import list_reward_models, load_reward_component, read_meta
    from core.trainers.reward import train_reward_model

    logged = []
    run = train_reward_model(tiny_config(tmp_path), on_log=lambda s, m: logged.append((s, m)))
    status = run.status()
    assert status["status"] == "finished"
    assert status["figures"]["eval_accuracy"] >= 0.9  # chance is 0.5
    assert status["figures"]["eval_pairs"] == 16 and status["figures"]["train_pairs"] == 64
    names = set().union(*(m.keys() for _, m in logged))
    assert {"loss", "rm/accuracy", "rm/margin", "eval/rm/accuracy", "time/features_s"} <= names
    assert run.latest_checkpoint() is not None

    # save/load round trip: same scores, same metadata
    meta = read_meta(tmp_path / "rm")
    assert meta["kind"] == "preference" and meta["level"] == "sequence" and meta["category"] is None
    assert meta["normalisation"]["std"] > 0
    assert [m["path"] for m in list_reward_models(tmp_path)] == [str(tmp_path / "rm")]
    comp = load_reward_component(tmp_path / "rm", device="cpu")
    prompts, responses = ["Q1: the cat", "Q2: a dog"], ["red tree banana", "red tree"]
    raw = comp.score_texts(prompts, responses)
    assert raw[0] > raw[1]
    from core.models import load_reward_model, load_tokenizer
    from core.rewards.preference_rm import PreferenceReward

    again = PreferenceReward(load_reward_model(str(tmp_path / "rm"), device="cpu"), load_tokenizer(str(tmp_path / "rm")), meta)
    assert again.score_texts(prompts, responses) == raw
    n = meta["normalisation"]
    assert comp.score(prompts, responses, [[(0, 1)], [(0, 1)]]) == [[(r - n["mean"]) / n["std"]] for r in raw]


def test_lora_training_changes_adapters_and_resumes(tmp_path):
    from core.runstore import Run
    from core.trainers.reward import train_reward_model

    cfg = tiny_config(tmp_path, freeze_backbone=False, use_lora=True, lora_r=4, num_epochs=1, batch_size=16,
                      learning_rate=1e-3, save_every=2, save_model=False)
    run = train_reward_model(cfg)
    rows = [r for r in run.metrics() if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and run.latest_checkpoint()[0] == 4
    assert all(r["tokens/non_pad"] > 0 for r in rows)  # fine-tuning steps count the tokens of their forward pass
    from safetensors.torch import load_file

    adapters = load_file(str(run.latest_checkpoint()[1] / "model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapters.items())  # lora_B starts at 0
    # resume: a second epoch continues at step 5 in the same run folder
    cfg.num_epochs, cfg.resume_from = 2, str(run.path)
    train_reward_model(cfg)
    steps = [r["step"] for r in Run.open(run.path).metrics() if "loss" in r]
    assert steps == list(range(1, 9))


def test_resumed_frozen_backbone_run_logs_step_zero_once(tmp_path):
    from core.runstore import Run
    from core.trainers.reward import train_reward_model

    cfg = tiny_config(tmp_path, num_epochs=1, save_every=2, save_model=False)
    run = train_reward_model(cfg)
    cfg.num_epochs, cfg.resume_from = 2, str(run.path)
    train_reward_model(cfg)
    steps = [r["step"] for r in Run.open(run.path).metrics()]
    assert steps.count(0) == 1 and [s for s in steps if s > 0] == sorted(set(s for s in steps if s > 0))


# ----------------------------------------------------------------------------- persistence


def test_interrupted_save_leaves_no_folder_and_keeps_the_old_one(tmp_path, tiny_model_path, monkeypatch):
    from core.models import load_reward_model, load_tokenizer
    from core.rewards.store import read_meta, save_reward_model

    model, tok = load_reward_model(str(tiny_model_path), device="cpu"), load_tokenizer(str(tiny_model_path))
    meta = {"kind": "preference", "category": None, "level": "sequence", "name": "holistic"}

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(type(tok), "save_pretrained", crash)
    with pytest.raises(OSError):
        save_reward_model(model, tok, meta, tmp_path / "rm")
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary left behind
    monkeypatch.undo()
    save_reward_model(model, tok, meta, tmp_path / "rm")
    monkeypatch.setattr(type(tok), "save_pretrained", crash)
    with pytest.raises(OSError):
        save_reward_model(model, tok, {**meta, "name": "other"}, tmp_path / "rm", overwrite=True)
    assert read_meta(tmp_path / "rm")["name"] == "holistic"  # the complete old model is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]
    with pytest.raises(ValueError, match="kind"):
        save_reward_model(model, tok, {**meta, "kind": "magic"}, tmp_path / "bad")


# ----------------------------------------------------------------------------- fine-grained labels


def test_segment_labels_from_spans_exact():
    from core.rewards.finegrained import segment_labels

    response = ("Paris is the capital of France. It has many museums, shops, cafes and parks, "
                "and the river Seine runs through it. The moon is made of cheese.")
    # sentences: [0, 31) [32, 113) [114, 141)
    # sub-sentences of sentence 2: "It has many museums," is too short (< 5 words) to stand alone,
    # so the split falls after "parks," -> [32, 76) and [77, 113)
    spans = [
        {"start": 118, "end": 122, "category": "C2"},   # "moon" -> sentence 3 wrong
        {"start": 80, "end": 90, "category": "C1"},     # inside "the river Seine..." -> that sub-sentence
    ]
    assert segment_labels(response, spans, "C2") == [((0, 31), 0), ((32, 113), 0), ((114, 141), 1)]
    assert segment_labels(response, spans, "C1") == [((0, 31), 0), ((32, 76), 0), ((77, 113), 1), ((114, 141), 0)]
    # a span touching a boundary without sharing a character marks nothing
    assert segment_labels(response, [{"start": 31, "end": 32, "category": "C2"}], "C2") == [((0, 31), 0), ((32, 113), 0), ((114, 141), 0)]


def test_classification_figures_with_majority_baseline():
    from core.trainers.finegrained import classification_figures

    labels = torch.tensor([0, 0, 0, 1, 1])
    f = classification_figures(torch.tensor([0, 1, 0, 1, 0]), labels, train_labels=torch.tensor([0, 0, 1]))
    assert f["accuracy"] == pytest.approx(0.6) and f["f1"] == pytest.approx(0.5)
    assert f["majority_class"] == 0 and f["majority_accuracy"] == pytest.approx(0.6) and f["majority_f1"] == 0.0


# ----------------------------------------------------------------------------- bad input


def test_missing_chosen_names_file_and_record(tmp_path):
    from core.trainers.reward import train_reward_model

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
                    + json.dumps({"prompt": "p", "rejected": "b"}) + "\n")
    cfg = tiny_config(tmp_path, dataset=str(path))
    with pytest.raises(DataError, match=r"bad\.jsonl, record 1: missing 'chosen'"):
        train_reward_model(cfg)
    assert not (tmp_path / "rm").exists()
    path.write_text(json.dumps({"prompt": "p", "chosen": "  ", "rejected": "b"}) + "\n")
    with pytest.raises(DataError, match="record 0: 'chosen' is empty"):
        train_reward_model(cfg)


def _feedback_file(tmp_path, error):
    rec = {"question": "Who?", "passages": [["T", "Bob is here."]], "gold": "", "prediction 1": "Bob is here.",
           "prediction 2": "x", "prediction 3": "y", "prediction 4": "z",
           "feedback": {"errors": [error], "missing-info": [], "corrected-prediction": ""}, "preference": [1] * 6}
    path = tmp_path / "feedback.json"
    path.write_text(json.dumps([rec, rec]))
    return path


@pytest.mark.parametrize("error, message", [
    ({"error type": "Irrelevant", "start": 5, "end": 99}, "record 0: span .* outside the response"),
    ({"error type": "Boring", "start": 0, "end": 3}, "record 0: unknown error type 'Boring'"),
])
def test_bad_spans_name_file_and_record(tmp_path, error, message):
    from core.trainers.finegrained import FineGrainedConfig, train_finegrained_rm

    path = _feedback_file(tmp_path, error)
    with pytest.raises(DataError, match=message) as info:
        train_finegrained_rm(FineGrainedConfig(data=str(path), model_name_or_path="tiny-random-llama",
                                               save_dir=str(tmp_path / "fg"), progress=False))
    assert "feedback.json" in str(info.value)
    assert not (tmp_path / "fg").exists()


# ----------------------------------------------------------------------------- real data (skipped without it)


def test_real_data_training_paths(shared_data, tmp_path):
    """HH-RLHF, QA-Feedback preferences (C3) and spans (C1) on a handful of records with the tiny model."""
    from core.rewards.store import list_reward_models, load_reward_component
    from core.rewards.tensor import compute_token_rewards
    from core.trainers.finegrained import FineGrainedConfig, train_finegrained_rm
    from core.trainers.reward import RewardConfig, train_reward_model

    for dataset, category in (("hh-rlhf", ""), ("qa-feedback", "C3")):
        run = train_reward_model(RewardConfig(model_name_or_path="tiny-random-llama", dataset=dataset, category=category,
                                              limit=12, num_epochs=2, max_length=48, save_dir=str(tmp_path / f"rm-{dataset}"),
                                              progress=False))
        assert run.status()["status"] == "finished" and run.status()["figures"]["eval_pairs"] > 0
    run = train_finegrained_rm(FineGrainedConfig(category="C1", model_name_or_path="tiny-random-llama", limit=6, num_epochs=3,
                                                 max_length=64, save_dir=str(tmp_path / "c1"), progress=False))
    figures = run.status()["figures"]
    assert 0 <= figures["accuracy"] <= 1 and 0 <= figures["majority_accuracy"] <= 1 and figures["n"] > 0
    found = {(m["kind"], m["category"]) for m in list_reward_models(tmp_path)}
    assert found == {("preference", None), ("preference", "C3"), ("finegrained", "C1")}

    # the C1 component puts +-1 on the policy token where each sub-sentence ends
    from core.models import load_tokenizer

    c1 = load_reward_component(tmp_path / "c1", device="cpu")
    tok = load_tokenizer("tiny-random-llama")
    response = "Bob is here today, and he brought his dog with him. It rained."
    tr = compute_token_rewards(["question: Who? context: x"], [tok(response, add_special_tokens=False)["input_ids"]], tok,
                               {"c1": c1})
    values = [s.value for s in tr.segments[0]]
    assert len(values) == 2 and set(values) <= {1.0, -1.0}
    assert tr.components["c1"].abs().sum().item() == 2.0


@pytest.mark.parametrize("freeze_backbone, use_lora", [(True, False), (False, True), (False, False)])
def test_finegrained_trainer_trains_fp32_weights_on_a_bf16_backbone(tmp_path, monkeypatch, freeze_backbone, use_lora):
    """A bf16 backbone (as on CUDA): what the fine-grained trainer updates is fp32, so AdamW keeps a master copy."""
    import torch

    import core.trainers.finegrained as fg
    from core.rewards.finegrained import load_token_classifier

    recs = []
    for i, name in enumerate(["Bob", "Ann", "Eve", "Joe", "Kim"]):
        answer = f"{name} is here. {name} likes tea, and the sky is green."
        recs.append({"question": f"Who is {name}?", "passages": [["T", f"{name} is here."]], "gold": "",
                     "prediction 1": answer, "prediction 2": "x", "prediction 3": "y", "prediction 4": "z",
                     "feedback": {"errors": [{"error type": "Irrelevant", "start": answer.index("and"), "end": len(answer)}],
                                  "missing-info": [], "corrected-prediction": ""}, "preference": [1] * 6})
    path = tmp_path / "feedback.json"
    path.write_text(json.dumps(recs))

    def bf16_classifier(name_or_path, device=None):
        return load_token_classifier(name_or_path, device).to(torch.bfloat16)

    trained = []
    real_adamw = fg.adamw
    monkeypatch.setattr(fg, "load_token_classifier", bf16_classifier)
    monkeypatch.setattr(fg, "adamw", lambda params, **kw: trained.extend(params) or real_adamw(params, **kw))
    run = fg.train_finegrained_rm(fg.FineGrainedConfig(
        data=str(path), category="C1", model_name_or_path="tiny-random-llama", num_epochs=1, batch_size=8, max_length=64,
        freeze_backbone=freeze_backbone, use_lora=use_lora, eval_fraction=0.4, save_dir=str(tmp_path / "fg"), progress=False))
    assert run.status()["status"] == "finished"
    assert trained and {p.dtype for p in trained} == {torch.float32}
