"""Detox rewards (holistic vs sentence-level), toxicity scorers, perplexity and distinct-n."""

import json
import math

import pytest
import torch

from core.rewards.fluency import distinct_n, perplexity
from core.rewards.toxicity import (
    HolisticToxicityReward,
    MiniLMToxicity,
    ProfanityToxicity,
    SentenceToxicityReward,
    TokenToxicityReward,
)


class CountScorer:
    """tox(text) = 0.25 per occurrence of 'darn', capped at 1: exact, hand-checkable values."""

    def probability(self, texts):
        return [min(1.0, 0.25 * t.count("darn")) for t in texts]


def test_sentence_toxicity_differences_exact():
    text = "Hello there. Darn it, darn. Bye darn"  # sentences end at 12, 27, 36
    segs = [[(0, 12), (13, 27), (28, 36)]]
    r = SentenceToxicityReward(CountScorer()).score(["p"], [text], segs)
    assert r == [[-0.0, -0.25, -0.25]]  # tox of prefixes: 0, 0.25 ('Darn' is capitalised), 0.5
    assert HolisticToxicityReward(CountScorer()).score(["p"], [text], [[(0, 36)]]) == [[-0.5]]


def test_sentence_rewards_sum_to_holistic(tokenizer):
    from core.rewards.tensor import compute_token_rewards

    responses = ["You are a wonderful person. Thanks for asking!",
                 "That is a stupid idea. You idiot, stop it.  ",
                 "Fine. Whatever you say, but this is crap", ""]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in responses]
    scorer = ProfanityToxicity()
    comps = {"toxicity": HolisticToxicityReward(scorer), "toxicity_sentence": SentenceToxicityReward(scorer)}
    tr = compute_token_rewards(["q"] * 4, rows, tokenizer, comps)
    totals = tr.totals()
    torch.testing.assert_close(totals["toxicity_sentence"], totals["toxicity"])
    assert totals["toxicity"][1] < -0.5 < totals["toxicity"][0]  # the insult is more toxic
    assert totals["toxicity"][3] == 0.0  # empty response: no token, no reward
    n_sent = [sum(s.component == "toxicity_sentence" for s in segs) for segs in tr.segments]
    assert n_sent == [2, 2, 2, 0]


def test_token_toxicity_puts_each_change_on_the_token_that_made_it_and_sums_to_holistic(tokenizer):
    """CountScorer: the tokens that complete 'darn' carry -0.25 each (a naive loop over token prefixes), the rest 0."""
    from core.rewards.tensor import compute_token_rewards

    responses = ["Oh darn, that darn cat.", "All fine here", ""]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in responses]
    comps = {"toxicity": HolisticToxicityReward(CountScorer()), "toxicity_token": TokenToxicityReward(CountScorer())}
    tr = compute_token_rewards(["q"] * 3, rows, tokenizer, comps)
    torch.testing.assert_close(tr.totals()["toxicity_token"], tr.totals()["toxicity"])
    per_token = tr.components["toxicity_token"]  # (B, R)
    for b, ids in enumerate(rows):  # naive: decode each token prefix, score it, difference with the previous one
        prev, expected = 0.0, []
        for t in range(len(ids)):
            tox = CountScorer().probability([tokenizer.decode(ids[:t + 1])])[0]
            expected.append(-(tox - prev))
            prev = tox
        assert per_token[b, :len(ids)].tolist() == pytest.approx(expected)
    assert per_token[0].tolist().count(-0.25) == 2 and per_token[1].abs().sum() == 0


def test_profanity_scorer_range_and_empty():
    p = ProfanityToxicity().probability(["", "   ", "have a lovely day", "you are a fucking idiot"])
    assert p[:2] == [0.0, 0.0]
    assert 0.0 <= p[2] < 0.2 < 0.9 < p[3] <= 1.0


def test_minilm_toxicity_with_a_given_head(tmp_path):
    """Embeddings are unit vectors; a head w=e_0, b=0 gives sigmoid(first embedding coordinate)."""
    from core.rewards.toxicity import MiniLMEmbedder

    emb = MiniLMEmbedder().embed(["a calm sentence", "hi", "another, longer sentence about the sea"], batch_size=2)
    assert emb.shape == (3, 384)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    head = tmp_path / "head"
    head.mkdir()
    (head / "head.json").write_text(json.dumps({"coef": [1.0] + [0.0] * 383, "intercept": 0.0}))
    scorer = MiniLMToxicity(head)
    probs = scorer.probability(["a calm sentence", ""])
    assert probs[1] == 0.0
    assert probs[0] == pytest.approx(torch.sigmoid(emb[0, 0]).item(), abs=1e-5)
    with pytest.raises(FileNotFoundError, match="python -m core.rewards.toxicity train"):
        MiniLMToxicity(tmp_path / "missing")


def test_distinct_n_hand_made():
    texts = ["a b a b", "a b c"]
    assert distinct_n(texts, 1) == 3 / 7  # a b a b a b c -> {a, b, c}
    assert distinct_n(texts, 2) == 3 / 5  # ab ba ab | ab bc -> {ab, ba, bc}
    assert distinct_n(texts, 3) == 3 / 3  # aba bab | abc
    assert distinct_n(["x y"], 3) == 0.0 and distinct_n([], 1) == 0.0
    assert distinct_n(["same same same"], 1) == 1 / 3


def test_perplexity_equals_naive_mean_nll(tiny_model, tokenizer):
    prompts = ["Question: what is two plus two?", "Hi", ""]
    responses = ["It is four, of course.", "Hello! How can I help you today?", "Start."]
    got = perplexity(tiny_model, tokenizer, prompts, responses, batch_size=2)  # padded batches
    expected = []
    for p, r in zip(prompts, responses):  # one unpadded sequence at a time, plain log_softmax
        p_ids = tokenizer(p)["input_ids"] if p else [tokenizer.bos_token_id]
        r_ids = tokenizer(r, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + r_ids])
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(ids).logits[0].double(), -1)  # (T, V)
        nll = [-logp[t - 1, ids[0, t]].item() for t in range(len(p_ids), ids.shape[1])]
        expected.append(math.exp(sum(nll) / len(nll)))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32), rtol=1e-4, atol=0)
    assert torch.isnan(perplexity(tiny_model, tokenizer, ["Hi"], [""]))[0]
