"""Sampling a project's responses and training a reward model on its labels (tiny random Llama, CPU, seconds).

    .venv/bin/python -m pytest tests/test_feedback_train.py -q
"""

from __future__ import annotations

import pytest
import torch

from core.feedback.store import FeedbackError, FeedbackStore


@pytest.fixture
def db(tmp_path):
    return FeedbackStore(tmp_path / "fb.sqlite")


def test_ranking_loss_with_ties_equals_the_core_ranking_loss_without_ties_and_skips_tied_pairs():
    from core.feedback.train import ranking_loss_with_ties
    from core.losses import ranking_loss

    torch.manual_seed(0)
    rewards = torch.randn(5, 4)
    order = torch.stack([torch.randperm(4) for _ in range(5)])  # order[g] = response indices best first
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(1, 5).expand(5, 4).contiguous())
    best_first = torch.gather(rewards, 1, order)
    torch.testing.assert_close(ranking_loss_with_ties(rewards, ranks), ranking_loss(best_first))
    # ties: ranks [1, 2, 2] -> pairs (0, 1) and (0, 2) only; absent (0) responses take no part
    r = torch.tensor([[1.0, 0.0, 3.0], [2.0, 1.0, 0.0]])
    expected = (-torch.nn.functional.logsigmoid(torch.tensor(1.0)) - torch.nn.functional.logsigmoid(torch.tensor(-2.0))) / 2
    out = ranking_loss_with_ties(r, torch.tensor([[1, 2, 2], [1, 2, 0]]))
    torch.testing.assert_close(out, torch.stack([expected, -torch.nn.functional.logsigmoid(torch.tensor(1.0))]))


def test_fill_project_samples_k_seeded_responses_once_and_resumes_the_same(db, tiny_model_path):
    from core.feedback.sampling import fill_project
    from core.models import load_causal_lm, load_tokenizer

    tok, policy = load_tokenizer(str(tiny_model_path)), load_causal_lm(str(tiny_model_path), device="cpu")
    prompts = [{"prompt": "Why is the sky blue?"}, {"prompt": "Name a prime."}]
    settings = {"max_new_tokens": 4}
    a = db.create_project("a", str(tiny_model_path), k=2, seed=3, items=prompts, settings=settings)
    seen = []
    assert fill_project(db, a, policy, tok, on_progress=lambda d, t: seen.append((d, t))) == 2
    assert seen == [(1, 2), (2, 2)]
    first = [it["responses"] for it in db.items(a)]
    assert all(len(r) == 2 and all(x.strip() for x in r) for r in first)
    assert fill_project(db, a, policy, tok) == 0  # stored responses are never regenerated
    # a project that samples item 2 alone (as after a crash) gets the same responses
    b = db.create_project("b", str(tiny_model_path), k=2, seed=3, items=[prompts[0] | {"responses": first[0]}, prompts[1]],
                          settings=settings)
    fill_project(db, b, policy, tok)
    assert db.items(b)[1]["responses"] == first[1]


def _labelled_project(db):
    """Items whose best response ends in 'excellent', the middle one 'fine', the worst 'terrible'; two annotators."""
    topics = ["bread", "rain", "tides", "glass", "rust", "ice", "salt", "wind", "moss", "clay", "fog", "ink"]
    items = [{"prompt": f"Tell me about {t}.", "responses": [f"About {t}: fine", f"About {t}: terrible", f"About {t}: excellent"]}
             for t in topics]
    pid = db.create_project("endings", "tiny-random-llama", k=3, seed=0, items=items)
    for n, it in enumerate(db.items(pid)):
        db.submit_ranking(f"ada-{n}", "ada", it["id"], [2, 3, 1])
        if n % 2:
            db.submit_ranking(f"bob-{n}", "bob", it["id"], [2, 3, 1])
        else:  # bob rates instead of ranking: a ranking read off complete ratings
            for i, s in enumerate([4, 1, 7]):
                db.submit_rating(f"bob-{n}-{i}", "bob", it["id"], i, s)
    return pid


def test_train_from_labels_agrees_with_held_out_labels_and_is_listed_in_the_reward_store(db, tiny_model_path, tmp_path, monkeypatch):
    from core.feedback.train import FeedbackRMConfig, ranking_groups, train_feedback_reward_model
    from core.rewards import store

    pid = _labelled_project(db)
    groups = ranking_groups(db, pid)
    assert len(groups) == 24 and sum(g["from"] == "ratings" for g in groups) == 6
    assert all(g["ranks"] == [2, 3, 1] for g in groups)
    monkeypatch.setattr(store, "reward_models_dir", lambda: tmp_path / "rms")
    logged = []
    result = train_feedback_reward_model(FeedbackRMConfig(project="endings", model_name_or_path=str(tiny_model_path), num_steps=150,
                                                          learning_rate=5e-2), db, on_log=lambda s, m: logged.append(m["loss"]))
    f = result["figures"]
    assert f["eval_items"] == 3 and f["train_items"] == 9  # 25% of 12 items held out, grouped by item
    assert logged[-1] < logged[0]
    assert f["train_agreement"] == 1.0 and f["eval_agreement"] == 1.0
    assert set(f["eval_agreement_by_annotator"]) == {"ada", "bob"}
    again = train_feedback_reward_model(FeedbackRMConfig(project="endings", model_name_or_path=str(tiny_model_path),
                                                         num_steps=150, learning_rate=5e-2, save_model=False), db)
    assert again["figures"]["features_reused"] == 36 and again["scores"] == result["scores"]  # features computed once
    listed = [m for m in store.list_reward_models() if not m.get("shipped")]  # the user's own, not the shipped heads
    assert [m["path"] for m in listed] == [result["model_path"]] and listed[0]["kind"] == "preference"
    assert listed[0]["training"]["dataset"] == "feedback:endings"
    rm = store.load_reward_component(result["model_path"])
    good, bad = rm.score_texts(["Tell me about snow."] * 2, ["About snow: excellent", "About snow: terrible"])
    assert good > bad  # the saved model scores like the trained head


def test_train_without_labels_says_what_to_do(db, tiny_model_path):
    from core.feedback.train import FeedbackRMConfig, train_feedback_reward_model

    db.create_project("bare", "m", 2, 0, [{"prompt": "q", "responses": ["a", "b"]}])
    with pytest.raises(FeedbackError, match="no rankings yet"):
        train_feedback_reward_model(FeedbackRMConfig(project="bare", model_name_or_path=str(tiny_model_path), save_model=False), db)


def test_finegrained_model_from_span_labels(db, tiny_model_path, tmp_path):
    from core.feedback.train import train_finegrained_from_spans
    from core.rewards.store import read_meta

    items = [{"prompt": f"Question {n}?", "responses": [f"A fact about {n}. My cat sat on the mat today.", f"Only facts about {n} here."]}
             for n in range(8)]
    pid = db.create_project("spans", "m", 2, 0, items)
    for it in db.items(pid):
        text = it["responses"][0]
        db.submit_spans(f"s-{it['id']}", "ada", it["id"], 0,
                        [{"start": text.index("My cat"), "end": len(text), "category": "C1", "error_type": "Irrelevant"}])
        db.submit_spans(f"t-{it['id']}", "ada", it["id"], 1, [])
    run = train_finegrained_from_spans(db, pid, "C1", str(tiny_model_path), folder=tmp_path / "qa", num_epochs=5,
                                       save_dir=str(tmp_path / "c1"))
    f = run.status()["figures"]
    assert f["train_answers"] + f["eval_answers"] == 16 and f["n"] > 0
    assert read_meta(tmp_path / "c1")["category"] == "C1"
    with pytest.raises(FeedbackError, match="C1 and C2"):
        train_finegrained_from_spans(db, pid, "C3", str(tiny_model_path))


def test_sampling_draws_from_its_own_generator_and_leaves_the_global_rng_alone(tiny_model_path):
    """The studio samples in a server thread: torch's global RNG state is unchanged, and the seed alone fixes the text."""
    from core.feedback.sampling import sample_responses
    from core.models import load_causal_lm, load_tokenizer

    tok, policy = load_tokenizer(str(tiny_model_path)), load_causal_lm(str(tiny_model_path), device="cpu")
    before = torch.get_rng_state()
    first = sample_responses(policy, tok, "Why is the sky blue?", k=3, seed=7, max_new_tokens=5)
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(100)  # another session's draws from the global generator change nothing
    assert sample_responses(policy, tok, "Why is the sky blue?", k=3, seed=7, max_new_tokens=5) == first
    assert sample_responses(policy, tok, "Why is the sky blue?", k=3, seed=8, max_new_tokens=5) != first


def test_the_studio_trains_in_a_child_process(db, tiny_model_path, tmp_path):
    """train_in_child_process: the result comes back from another pid, the server's global RNG is untouched, the
    features are kept for the next training's process, and a failed child is its one-line message."""
    import os

    import dataclasses

    from core.feedback.train import FEATURE_CACHE, FeedbackRMConfig, train_feedback_reward_model, train_in_child_process

    pid = _labelled_project(db)
    before = torch.get_rng_state()
    config = FeedbackRMConfig(project=str(pid), db=str(db.path), model_name_or_path=str(tiny_model_path), num_steps=150,
                              learning_rate=5e-2, save_dir=str(tmp_path / "rm"), name="endings",
                              feature_cache_dir=str(tmp_path / "features"))
    result = train_in_child_process(config)
    assert result["pid"] != os.getpid() and torch.equal(torch.get_rng_state(), before)
    assert result["model_path"] == str(tmp_path / "rm") and (tmp_path / "rm" / "workbench_reward.json").is_file()
    assert result["figures"]["train_agreement"] == 1.0 and sorted(result["scores"]) == [it["id"] for it in db.items(pid)]
    assert result["figures"]["features_reused"] == 0 and any((tmp_path / "features").iterdir())
    FEATURE_CACHE.clear()  # as in the next training's fresh process: the 36 features come from the cache folder
    again = train_feedback_reward_model(dataclasses.replace(config, save_model=False, num_steps=1), db)
    assert again["figures"]["features_reused"] == 36
    from core.feedback.train import run_module

    (tmp_path / "bad.json").write_text("x")
    with pytest.raises(FeedbackError, match=r"^Expecting value: line 1"):  # a failed child: its last stderr line
        run_module("json.tool", str(tmp_path / "bad.json"))
