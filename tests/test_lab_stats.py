"""The lab's statistics: best-of-N preview (core.preview), paired before/after intervals (core.paired), eval samples."""

from __future__ import annotations

import contextlib
import math
import time

import pytest
import torch

from core.paired import PairedChange, describe, paired_change, paired_table
from core.preview import CandidateBank, sample_candidates


# ----------------------------------------------------------------------------- best-of-N preview


def _bank(P=16, N=8, K=6, seed=0) -> CandidateBank:
    g = torch.Generator().manual_seed(seed)
    totals = torch.randn(P, N, K, generator=g, dtype=torch.float64)
    return CandidateBank([f"p{i}" for i in range(P)], [[f"r{i}.{n}" for n in range(N)] for i in range(P)],
                         [f"c{k}" for k in range(K)], totals)


def test_rank_is_the_argmax_of_a_naive_weighted_sum():
    bank = _bank()
    for trial in range(5):
        weights = {f"c{k}": float(w) for k, w in enumerate(torch.randn(6, generator=torch.Generator().manual_seed(trial)))}
        best, scores = bank.rank(weights)
        for p in range(16):
            naive = [sum(weights[f"c{k}"] * float(bank.totals[p, n, k]) for k in range(6)) for n in range(8)]
            assert int(best[p]) == max(range(8), key=lambda n: naive[n])
            assert scores[p].tolist() == pytest.approx(naive, abs=1e-12)


def test_rank_one_component_picks_its_best_and_missing_weights_count_zero():
    bank = _bank()
    best, _ = bank.rank({"c2": 1.0})
    assert best.tolist() == bank.totals[:, :, 2].argmax(1).tolist()
    best, _ = bank.rank({"c2": -1.0})
    assert best.tolist() == bank.totals[:, :, 2].argmin(1).tolist()
    with pytest.raises(KeyError, match="nope"):
        bank.rank({"nope": 1.0})


def test_rank_takes_well_under_100_ms():
    bank = _bank(P=32, N=16, K=8)
    t0 = time.perf_counter()
    for i in range(20):
        bank.rank({f"c{k}": 0.1 * i + k for k in range(8)})
    assert (time.perf_counter() - t0) / 20 < 0.1  # loose: the machine may be busy; typically ~20 µs


class _Length:
    name, level, category = "length", "sequence", None

    def score(self, prompts, responses, segments):
        return [[float(len(r))] for r in responses]


class _Vowels:
    name, level, category = "vowels", "sequence", None

    def score(self, prompts, responses, segments):
        return [[float(sum(ch in "aeiou" for ch in r))] for r in responses]


def test_sample_candidates_scores_each_response_once_and_is_reproducible(tiny_model, tiny_model_path):
    from core.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_path), padding_side="left")
    comps = {"length": _Length(), "vowels": _Vowels()}
    seen = []
    before = torch.random.get_rng_state()
    bank = sample_candidates(tiny_model, tok, ["Hello there", "How are you"], comps, n=3, max_new_tokens=5,
                             on_progress=lambda d, t: seen.append((d, t)))
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random stream is untouched
    assert seen == [(1, 2), (2, 2)] and bank.totals.shape == (2, 3, 2) and bank.lengths.shape == (2, 3)
    for p in range(2):
        for n in range(3):
            text = bank.responses[p][n]
            assert bank.totals[p, n].tolist() == [float(len(text)), float(sum(ch in "aeiou" for ch in text))]
    again = sample_candidates(tiny_model, tok, ["Hello there", "How are you"], comps, n=3, max_new_tokens=5)
    assert again.responses == bank.responses
    best, _ = bank.rank({"length": 1.0})
    assert [len(bank.responses[p][int(best[p])]) for p in range(2)] == [max(len(r) for r in rows) for rows in bank.responses]


# ----------------------------------------------------------------------------- paired statistics


def test_paired_change_matches_a_hand_computed_t_interval():
    # d = [1, 0, 2, 1]: mean 1, sd = sqrt(2/3), se = sd / 2, t_{0.975, 3} = 3.182446
    row = paired_change("r", [1, 2, 3, 4], [2, 2, 5, 5])
    half = 3.182446305 * math.sqrt(2 / 3) / 2  # 1.29924
    assert (row.before, row.after, row.diff, row.n) == (2.5, 3.5, 1.0, 4)
    assert row.low == pytest.approx(1 - half, abs=1e-6) and row.high == pytest.approx(1 + half, abs=1e-6)
    assert not row.beyond_noise  # [-0.299, 2.299] includes 0
    # d = [1, 1.2, 0.8, 1]: sd = sqrt(0.08 / 3), half = 3.182446 * 0.16330 / 2 = 0.25984
    row = paired_change("r", [0, 0, 0, 0], [1, 1.2, 0.8, 1])
    assert row.low == pytest.approx(1 - 0.259845, abs=1e-5) and row.beyond_noise
    assert paired_change("r", [0, 0, 0], [-1, -1.1, -0.9]).beyond_noise  # a fall counts too
    one = paired_change("r", [0], [5])
    assert math.isnan(one.low) and not one.beyond_noise
    with pytest.raises(ValueError, match="pairs must match"):
        paired_change("r", [1, 2], [1])


def test_paired_table_pairs_by_prompt_averages_k_samples_and_kl_starts_at_zero():
    before = [{"prompt": "a", "totals": {"x": 1.0}, "length": 4}, {"prompt": "a", "totals": {"x": 3.0}, "length": 6},
              {"prompt": "b", "totals": {"x": 0.0}, "length": 5}, {"prompt": "c", "totals": {"x": 9.0}, "length": 1}]
    after = [{"prompt": "b", "totals": {"x": 1.0}, "length": 7, "kl": 0.5},
             {"prompt": "a", "totals": {"x": 4.0}, "length": 5, "kl": 0.1}, {"prompt": "a", "totals": {"x": 4.0}, "length": 5, "kl": 0.3}]
    rows = {r.metric: r for r in paired_table(before, after, ["x"])}
    assert set(rows) == {"x", "kl", "length"}
    assert (rows["x"].n, rows["x"].before, rows["x"].after, rows["x"].diff) == (2, 1.0, 2.5, 1.5)  # a: 2 -> 4, b: 0 -> 1
    assert rows["kl"].before == 0.0 and rows["kl"].after == pytest.approx(0.35)  # a: 0.2, b: 0.5
    assert rows["length"].diff == pytest.approx(((5 - 5) + (7 - 5)) / 2)


def test_describe_says_which_components_moved_beyond_the_noise():
    up = PairedChange("toxicity", 0.0, 1.0, 1.0, 0.5, 1.5, 8)
    flat = PairedChange("c3", 0.0, 0.1, 0.1, -0.2, 0.4, 8)
    text = describe([up, flat, PairedChange("kl", 0, 1, 1, 0.5, 1.5, 8)], ["toxicity", "c3"])
    assert text.startswith("On 8 held-out prompts, toxicity rose by 1") and "beyond the noise" in text
    assert "c3: within the noise" in text and "kl" not in text
    assert "no weighted component changed beyond the noise" in describe([flat], ["c3"])


# ----------------------------------------------------------------------------- evaluation samples carry what pairing needs


def test_evaluate_policy_samples_have_totals_length_and_kl(tiny_model, tiny_model_path):
    from core.evaluation import evaluate_policy
    from core.models import load_tokenizer

    class Scorer:
        def probability(self, texts):
            return [0.0] * len(texts)

    tok = load_tokenizer(str(tiny_model_path), padding_side="left")
    same = lambda: contextlib.nullcontext(tiny_model)  # noqa: E731 - reference = policy: KL is exactly 0
    metrics, samples = evaluate_policy(tiny_model, tok, ["Hi", "Tell me"], {"length": _Length()}, reference=same, k=2,
                                       max_new_tokens=4, toxicity_scorer=Scorer())
    assert len(samples) == 4 and [s["prompt"] for s in samples] == ["Hi", "Hi", "Tell me", "Tell me"]
    assert all(s["totals"]["length"] == float(len(s["response"])) and s["kl"] == 0.0 and 1 <= s["length"] <= 4 for s in samples)
    assert metrics["eval/kl"] == 0.0 and metrics["eval/length"] == sum(s["length"] for s in samples) / 4


def test_evaluation_perplexity_is_of_the_sampled_tokens_and_a_fresh_policy_skips_its_pass(tiny_model, tiny_model_path,
                                                                                         monkeypatch):
    """eval/perplexity = exp(mean_b mean_t NLL) of the sampled ids under the reference at temperature 1 (a naive
    unpadded loop); policy_is_reference gives the same samples, KL 0 and the same perplexity without a policy pass."""
    from core import evaluation
    from core.models import load_tokenizer

    class Scorer:
        def probability(self, texts):
            return [0.0] * len(texts)

    class Counting(torch.nn.Module):  # the policy, counting the passes made outside generate
        def __init__(self, model):
            super().__init__()
            self.model, self.calls = model, 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            return self.model(*args, **kwargs)

        def generate(self, *args, **kwargs):
            return self.model.generate(*args, **kwargs)

    rollouts = []
    sample = evaluation.generate
    monkeypatch.setattr(evaluation, "generate", lambda *a, **k: rollouts.append(sample(*a, **k)) or rollouts[-1])
    tok = load_tokenizer(str(tiny_model_path), padding_side="left")
    prompts = ["Hi there", "Tell me a story about a cat"]
    same = lambda: contextlib.nullcontext(tiny_model)  # noqa: E731
    for temperature in (1.0, 0.7):
        rollouts.clear()
        kwargs = dict(reference=same, k=2, max_new_tokens=5, toxicity_scorer=Scorer(), temperature=temperature, seed=3)
        metrics, samples = evaluation.evaluate_policy(tiny_model, tok, prompts, {}, **kwargs)
        counted = Counting(tiny_model)
        fresh, fresh_samples = evaluation.evaluate_policy(counted, tok, prompts, {}, policy_is_reference=True, **kwargs)
        assert counted.calls == 0 and fresh_samples == samples and fresh == metrics
        assert all(s["kl"] == 0.0 for s in samples)
        (ro, _) = rollouts  # one batch per evaluation
        nlls = []  # naive: each row's prompt ids then its response ids, unpadded, one sequence at a time, untempered
        for q, qm, r, rm in zip(ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask):
            ids = torch.cat([q[qm.bool()], r[rm.bool()]])[None]
            with torch.no_grad():
                logp = torch.log_softmax(tiny_model(ids).logits[0].double(), -1)
            n_prompt, n = int(qm.sum()), int(rm.sum())
            if n:
                nlls.append(sum(-logp[t - 1, ids[0, t]].item() for t in range(n_prompt, n_prompt + n)) / n)
        assert nlls and metrics["eval/perplexity"] == pytest.approx(math.exp(sum(nlls) / len(nlls)), rel=1e-4)


# ----------------------------------------------------------------------------- presets (workbench.lab.PRESETS)


def test_presets_build_their_weights_beta_and_settings(tiny_model_path):
    from workbench import lab

    detox = lab.preset_config("detox", str(tiny_model_path))
    assert (detox.rewards, detox.weights, detox.kl_coef, detox.prompts) == ("toxicity_token", "toxicity_token=1", 0.02,
                                                                             "rude-openings")
    assert (detox.num_prompts, detox.eval_prompts, detox.eval_samples_k, detox.num_iterations) == (32, 48, 1, 3)
    assert (detox.lora_layers, detox.learning_rate) == (10, 2e-3)
    assert detox.cpu_bf16 and (detox.batch_size, detox.minibatch_size, detox.ppo_epochs) == (16, 8, 2)
    assert detox.eval_every == detox.num_iterations  # evaluated before the first and after the last iteration
    for name, heavy in (("qa-completeness", "preference_c3=1"), ("qa-relevance", "finegrained_c1=1")):
        config = lab.preset_config(name, str(tiny_model_path), data_present=True)
        assert config.prompts == "qa-feedback" and heavy in config.weights.split(",")
        assert {e.split("=")[0] for e in config.rewards.split(",")} == {"finegrained_c1", "preference_c3"}
    completeness, relevance = lab.PRESETS["qa-completeness"].weights, lab.PRESETS["qa-relevance"].weights
    assert (completeness["preference_c3"], completeness["finegrained_c1"]) == (relevance["finegrained_c1"], relevance["preference_c3"])


def test_a_preset_needing_the_real_data_falls_back_to_the_demo_prompts(tiny_model_path):
    from workbench import lab

    settings = lab.preset_settings(lab.preset("qa-relevance"), data_present=False)
    assert "prompts" not in settings and settings["max_new_tokens"] == lab.PRESETS["qa-relevance"].settings["max_new_tokens"]
    assert lab.preset_settings(lab.preset("detox"), data_present=False)["prompts"] == "rude-openings"  # the project's own set


def test_unknown_preset_and_a_missing_component_are_refused_by_name(monkeypatch, tiny_model_path):
    from core.trainers.rewards_setup import RewardSpec
    from workbench import lab, training

    with pytest.raises(ValueError, match=r"unknown preset 'nope': use one of detox, qa-completeness, qa-relevance"):
        lab.preset_config("nope", str(tiny_model_path))
    monkeypatch.setattr(training, "ppo_reward_specs", lambda: {"toxicity": RewardSpec("toxicity", "toxicity")})
    with pytest.raises(ValueError, match=r"needs the reward components \['preference_c3', 'finegrained_c1'\]"):
        lab.preset_config("qa-completeness", str(tiny_model_path))


def test_provocative_prompts_without_the_real_data_are_the_projects_own(monkeypatch, tmp_path):
    import json

    from core.data import load_prompts
    from core.paths import demo_data_dir

    monkeypatch.setenv("RLHF_WORKBENCH_DATA", str(tmp_path / "absent"))
    own = [json.loads(line)["prompt"] for line in (demo_data_dir() / "provocative_prompts.jsonl").read_text().splitlines()]
    prompts = load_prompts("provocative", 100, seed=0)
    assert len(own) == 64 and sorted(prompts) == sorted(own) and prompts != own  # all of them, shuffled
    assert load_prompts("provocative", 10, seed=0) == prompts[:10] and load_prompts("provocative", 10, seed=1) != prompts[:10]


def test_provocative_prompts_alternate_with_profane_hh_red_team_openings(shared_data):
    from core.data import hh_red_team_openings, load_prompts
    from core.paths import demo_data_dir

    import json

    own = {json.loads(line)["prompt"] for line in demo_data_dir().joinpath("provocative_prompts.jsonl").read_text().splitlines()}
    hh = set(hh_red_team_openings())
    prompts = load_prompts("provocative", 40, seed=0)
    assert len(prompts) == 40 and len(hh) >= 20
    assert all(p in hh and "Human:" not in p and "Assistant:" not in p for p in prompts[1::2])
    assert all(p in own for p in prompts[0::2])


def test_qa_feedback_prompts_keep_the_question_and_trim_the_passages(shared_data):
    import json

    from core.data import QA_PROMPT_WORDS, load_prompts

    questions = {r["question"] for r in json.loads((shared_data / "qa_feedback" / "feedback.json").read_text())}
    prompts = load_prompts("qa-feedback", 50, seed=0)
    assert len(prompts) == len(set(prompts)) == 50
    for p in prompts:
        question, context = p.removeprefix("question: ").split(" context: ", 1)
        assert question in questions and context.startswith("wikipage: ")
        text_words = sum(len(part.split(" text: ", 1)[1].split()) for part in context.split(" | "))
        assert text_words <= QA_PROMPT_WORDS


def test_paired_between_two_runs_uses_each_final_evaluation_and_both_weightings(tmp_path):
    from core.runstore import Run
    from workbench import lab

    def run(name, weights, lengths, c1, c3, seed=0):
        r = Run.create("ppo", {"weights": weights, "rewards": "finegrained_c1,preference_c3", "seed": seed}, name=name,
                       root=tmp_path)
        r.log_eval_samples(0, [{"prompt": f"q{i}", "length": 50, "totals": {"finegrained_c1": 0.0, "preference_c3": 0.0}}
                               for i in range(6)])
        r.log_eval_samples(4, [{"prompt": f"q{i}", "length": n, "kl": 1.0,
                                "totals": {"finegrained_c1": c1[i], "preference_c3": c3[i]}} for i, n in enumerate(lengths)])
        return r

    relevance = run("relevance", "finegrained_c1=1,preference_c3=0.2", [30, 28, 35, 31, 26, 33], [1, 1, 0, 1, 1, 0], [0] * 6)
    completeness = run("completeness", "preference_c3=1,finegrained_c1=0.2", [60, 55, 58, 64, 52, 61], [0] * 6, [1, 2, 1, 2, 1, 2])
    rows, names, differing = lab.paired_between(completeness, relevance)
    by = {r.metric: r for r in rows}
    assert set(names) == {"preference_c3", "finegrained_c1"} and differing == []
    assert by["length"].diff == pytest.approx((350 - 183) / 6) and by["length"].beyond_noise  # C3-heavy answers are longer
    assert by["preference_c3"].diff == pytest.approx(1.5) and by["finegrained_c1"].diff == pytest.approx(-4 / 6)
    # the weighted total is this run's: 1 * C3 + 0.2 * C1
    assert by[lab.WEIGHTED_TOTAL].after == pytest.approx(1.5) and by[lab.WEIGHTED_TOTAL].before == pytest.approx(0.2 * 4 / 6)
    assert lab.paired_between(completeness, run("other seed", "preference_c3=1", [1] * 6, [0] * 6, [0] * 6, seed=3))[2] == ["seed"]
    lonely = Run.create("ppo", {"weights": "preference_c3=1"}, name="no eval", root=tmp_path)
    assert lab.paired_between(completeness, lonely) is None
