"""RED / R3HF token-level redistribution: batched equals prefix-by-prefix, sums telescope, mapping keeps sums."""

import pytest
import torch

from core.rewards.redistribution import map_to_tokens, redistribute, rm_token_rewards, slow_redistribution

PROMPTS = ["\n\nHuman: What is the capital of France?\n\nAssistant:", "Say hi.", "Q: 2+2?"]
RESPONSES = ["Paris is the capital; it is lovely in spring.", "Hi!", "It is 4, of course — naïve café ✓."]


@pytest.fixture(scope="module")
def tiny_rm(tiny_model_path):
    from core.models import load_reward_model, load_tokenizer

    torch.manual_seed(0)
    model = load_reward_model(str(tiny_model_path), device="cpu")
    torch.nn.init.normal_(model.score.weight, std=1.0)  # a non-trivial head
    return model, load_tokenizer(str(tiny_model_path))


def test_redistribute_closed_form():
    scores = torch.tensor([[9.0, 1.0, 3.0, 6.0, 0.0], [0.0, 2.0, 5.0, 4.0, 7.0]])
    attn = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]])  # right, left padding
    resp = torch.tensor([[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]])
    r = redistribute(scores, resp, attn)
    torch.testing.assert_close(r, torch.tensor([[0.0, 0.0, 2.0, 3.0, 0.0], [0.0, 0.0, 0.0, -1.0, 3.0]]))
    z = redistribute(scores, resp, attn, first_token="zero")
    torch.testing.assert_close(z, torch.tensor([[0.0, 0.0, 3.0, 3.0, 0.0], [0.0, 0.0, 0.0, 4.0, 3.0]]))
    # no prompt: the baseline is 0 even under left padding
    only = redistribute(scores, torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]]), attn)
    torch.testing.assert_close(only.sum(-1), torch.tensor([6.0, 7.0]))


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("first_token", ["prompt", "zero"])
def test_batched_equals_prefix_by_prefix(tiny_rm, padding_side, first_token):
    model, tok = tiny_rm
    rewards, spans, totals = rm_token_rewards(model, tok, PROMPTS, RESPONSES, first_token=first_token, padding_side=padding_side)
    for b, (p, y) in enumerate(zip(PROMPTS, RESPONSES)):
        slow = slow_redistribution(model, tok, p, y, first_token=first_token)
        torch.testing.assert_close(torch.tensor(rewards[b]), torch.tensor(slow))  # fp32 default tolerances
        assert len(spans[b]) == len(rewards[b]) and spans[b][-1][1] == len(y)
        # telescoping: the sum is the holistic score minus the prompt-alone score (or minus 0)
        from core.rewards.preference_rm import score_texts

        whole = score_texts(model, tok, [p + " " + y])[0]
        base = score_texts(model, tok, [p])[0] if first_token == "prompt" else 0.0
        assert totals[b] == pytest.approx(whole, abs=1e-4)
        assert sum(rewards[b]) == pytest.approx(whole - base, abs=1e-4)


def test_map_to_other_tokens_preserves_sum(tiny_rm):
    from core.rewards.align import text_token_char_spans

    model, tok = tiny_rm
    rewards, spans, _ = rm_token_rewards(model, tok, PROMPTS, RESPONSES)
    for r, s, y in zip(rewards, spans, RESPONSES):
        chars = [(i, i + 1) for i in range(len(y))]  # a "policy" with one token per character
        words, k = [], 0
        for w in y.split(" "):  # and one with a token per word (spaces glued to the next word)
            words.append((k, k + len(w) + (k > 0)))
            k += len(w) + (k > 0)
        for target in (chars, words, text_token_char_spans(tok, y)[1]):
            mapped = map_to_tokens(r, s, target)
            assert len(mapped) == len(target)
            assert sum(mapped) == pytest.approx(sum(r), abs=1e-5)


def test_map_to_tokens_exact():
    # RM tokens "ab|cd|e" onto policy tokens "a|bcd|e": 'ab' ends in 'bcd', 'cd' too, 'e' in 'e'
    assert map_to_tokens([1.0, 2.0, 4.0], [(0, 2), (2, 4), (4, 5)], [(0, 1), (1, 4), (4, 5)]) == [0.0, 3.0, 4.0]
    # an RM token outside the response (chat end-of-turn, clamped to (5, 5)) goes to the last token
    assert map_to_tokens([1.0, 8.0], [(0, 5), (5, 5)], [(0, 1), (1, 5), (5, 5)]) == [0.0, 9.0, 0.0]


def test_redistributed_component_on_policy_tokens(tiny_rm):
    from core.rewards.redistribution import RedistributedReward
    from core.rewards.tensor import compute_token_rewards

    model, tok = tiny_rm
    comp = RedistributedReward(model, tok, {"normalisation": {"mean": 5.0, "std": 2.0}})
    ids = [tok(y, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for y in RESPONSES]
    tr = compute_token_rewards(PROMPTS, ids, tok, {"redistributed": comp})
    rewards, _, _ = rm_token_rewards(model, tok, PROMPTS, RESPONSES)
    torch.testing.assert_close(tr.totals()["redistributed"], torch.tensor([sum(r) / 2.0 for r in rewards]), rtol=1e-4, atol=1e-5)


def test_red_and_holistic_scales_differ_by_the_prompt_baseline(tiny_rm):
    """What the explorer's labels state: holistic = (R(x,y) − μ)/σ, Σ_t RED_t = (R(x,y) − R(x))/σ, same σ.

    R(x,y) and R(x) are computed here by separate forward passes (the full text, and its prompt
    tokens alone), so the two rows differ by exactly (μ − R(x))/σ.
    """
    from core.rewards.preference_rm import PreferenceReward, encode, format_pair, sequence_scores
    from core.rewards.redistribution import RedistributedReward
    from core.rewards.tensor import compute_token_rewards

    model, tok = tiny_rm
    mean, std = 5.0, 2.0
    meta = {"normalisation": {"mean": mean, "std": std}}
    comps = {"holistic": PreferenceReward(model, tok, meta), "red": RedistributedReward(model, tok, meta)}
    ids = [tok(y, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for y in RESPONSES]
    totals = compute_token_rewards(PROMPTS, ids, tok, comps).totals()
    texts = [tok.decode(i, skip_special_tokens=True) for i in ids]  # the responses the components scored
    for b, (prompt, response) in enumerate(zip(PROMPTS, texts)):
        text, start = format_pair(tok, prompt, response)
        enc = encode(tok, [text], 1024)
        first = next(c for c in range(enc["input_ids"].shape[1]) if enc["offset_mapping"][0, c, 1] > start)
        with torch.no_grad():
            full = sequence_scores(model, enc["input_ids"], enc["attention_mask"]).item()  # R(x, y)
            prompt_only = enc["input_ids"][:, :first]
            r_x = sequence_scores(model, prompt_only, torch.ones_like(prompt_only)).item()  # R(x)
        assert float(totals["holistic"][b]) == pytest.approx((full - mean) / std, abs=1e-4)
        assert float(totals["red"][b]) == pytest.approx((full - r_x) / std, abs=1e-4)
        assert float(totals["red"][b] - totals["holistic"][b]) == pytest.approx((mean - r_x) / std, abs=1e-4)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_identity_beyond_max_length(tiny_rm, padding_side):
    """A prompt + response longer than max_length: every response token gets credit, the sum telescopes to the
    windowed holistic scores R(x, y) - R(x), and batched windows equal prefix-by-prefix scoring."""
    from core.rewards.preference_rm import score_texts
    from core.rewards.redistribution import context_cut

    model, tok = tiny_rm
    L = 24
    long_y = " ".join(["the river runs fast and the blue house sits by the tree"] * 6)  # ~70 tokens > L
    prompts, responses = [PROMPTS[0], PROMPTS[1], "x " * 40], [long_y, RESPONSES[1], long_y]  # mixed: long, short, long prompt
    assert context_cut(tok, prompts, responses, max_length=L) == [True, False, True]
    rewards, spans, totals = rm_token_rewards(model, tok, prompts, responses, max_length=L, padding_side=padding_side,
                                              batch_size=5)
    for b, (p, y) in enumerate(zip(prompts, responses)):
        whole = score_texts(model, tok, [p + " " + y], max_length=L)[0]
        alone = score_texts(model, tok, [p], max_length=L)[0]
        assert totals[b] == pytest.approx(whole, abs=1e-4)
        assert sum(rewards[b]) == pytest.approx(whole - alone, abs=1e-4)
        assert spans[b][0][0] == 0 and spans[b][-1][1] == len(y)  # the whole response is covered
        torch.testing.assert_close(torch.tensor(rewards[b]), torch.tensor(slow_redistribution(model, tok, p, y, max_length=L)))
    assert sum(abs(v) > 0 for v in rewards[0]) > L  # credit beyond the first window, not only its start
