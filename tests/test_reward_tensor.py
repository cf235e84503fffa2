"""TokenRewards: linear combination, placement on the last / segment-end token, compute_token_rewards end to end."""

import json

import pytest
import torch

from core.rewards.tensor import (
    FunctionReward,
    RewardComponent,
    Segment,
    TokenRewards,
    compute_token_rewards,
    place_segment_rewards,
    place_sequence_reward,
)


def _toy():
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    a = torch.tensor([[0.0, 1.0, 2.0, 0.0], [0.0, 0.5, 0.0, -1.0]])
    b = torch.tensor([[1.0, 0.0, -3.0, 0.0], [0.0, 0.0, 0.0, 4.0]])
    return TokenRewards(components={"a": a, "b": b}, mask=mask, segments=[[], []],
                        token_spans=[[(0, 1), (1, 2), (2, 3)], [(0, 2), (2, 3), (3, 3)]], texts=["abc", "xyz"])


def test_combined_is_linear_and_exact():
    tr = _toy()
    w1, w2 = {"a": 1.0, "b": 2.0}, {"a": 0.5}
    torch.testing.assert_close(tr.combined(w1) + tr.combined(w2), tr.combined({"a": 1.5, "b": 2.0}))
    assert tr.combined(w1).tolist() == [[2.0, 1.0, -4.0, 0.0], [0.0, 0.5, 0.0, 7.0]]
    assert tr.combined({}).tolist() == [[0.0] * 4, [0.0] * 4]  # missing weights count 0
    assert tr.combined({"b": 1.0}).tolist() == tr.components["b"].tolist()
    with pytest.raises(KeyError, match="unknown reward component.*'c'.*available"):
        tr.combined({"c": 1.0})
    assert {k: v.tolist() for k, v in tr.totals().items()} == {"a": [3.0, -0.5], "b": [-2.0, 4.0]}


def test_place_sequence_reward_right_and_left_padding():
    scores = torch.tensor([1.5, -2.0])
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert place_sequence_reward(scores, right).tolist() == [[0, 0, 1.5, 0], [0, -2.0, 0, 0]]
    assert place_sequence_reward(scores, left).tolist() == [[0, 0, 0, 1.5], [0, 0, 0, -2.0]]
    assert place_sequence_reward(scores, torch.tensor([[0, 0], [0, 1]])).tolist() == [[0, 0], [0, -2.0]]


def test_place_segment_rewards_counts_response_tokens_and_adds_up():
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    r = place_segment_rewards([[1.0, 2.0, 0.5], [3.0]], [[0, 2, 2], [1]], left)
    assert r.tolist() == [[0, 0, 1.0, 0, 2.5], [0, 3.0, 0, 0, 0]]  # index 0 = first masked position
    with pytest.raises(IndexError):
        place_segment_rewards([[1.0]], [[3]], torch.tensor([[1, 1, 0]]))


class _SentenceIndex:
    """Sentence-level toy component: value = 10 * (sentence number + 1)."""

    name, level, category = "sent", "sentence", "C2"

    def score(self, prompts, responses, segments):
        return [[10.0 * (j + 1) for j in range(len(s))] for s in segments]


def test_compute_token_rewards_left_padded_tensor(tokenizer):
    texts = ["It rained. We stayed in", "Fine."]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    # 'It',' ra','ined','.',' We',' stayed',' in',EOS  /  'Fine','.',EOS
    assert [len(r) for r in rows] == [8, 3]
    T, pad = 9, tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (T - len(r)) + r for r in rows])  # left padding
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    comps = {"len": FunctionReward(lambda p, r: len(r) / 10, name="len"), "sent": _SentenceIndex()}
    assert isinstance(comps["sent"], RewardComponent)
    tr = compute_token_rewards(["q1", "q2"], ids, tokenizer, comps, response_mask=mask)
    assert tr.texts == texts and tr.mask.tolist() == mask.tolist()
    assert tr.components["len"].tolist() == [[0] * 8 + [pytest.approx(2.3)], [0] * 8 + [0.5]]  # on EOS, the last token
    # sentence ends: '.' (token 3) and ' in' (token 6, no final full stop), one column later because of
    # the padding column; 'Fine.' ends on its token 1, column 7
    assert tr.components["sent"].tolist() == [[0, 0, 0, 0, 10.0, 0, 0, 20.0, 0], [0, 0, 0, 0, 0, 0, 0, 10.0, 0]]
    assert tr.segments[0][-1] == Segment("sent", 20.0, 11, 23, 6, "C2", "sentence")
    assert tr.segments[0][0] == Segment("len", 2.3, 0, 23, 7, None, "sequence")
    torch.testing.assert_close(tr.combined({"len": 1.0, "sent": 0.1}).sum(-1), torch.tensor([5.3, 1.5]))
    rec = tr.to_records()
    json.dumps(rec)  # JSON-able
    assert rec[1]["rewards"]["sent"] == [0.0, 10.0, 0.0] and rec[1]["totals"]["len"] == pytest.approx(0.5)
    assert rec[0]["token_spans"][:3] == [[0, 2], [2, 5], [5, 9]]


def test_compute_token_rewards_lists_and_errors(tokenizer):
    rows = [tokenizer("Hello there.", add_special_tokens=False)["input_ids"], []]
    tr = compute_token_rewards(["a", "b"], rows, tokenizer, {"one": FunctionReward(lambda p, r: 1.0)})
    assert tr.mask.tolist() == [[1, 1, 1], [0, 0, 0]]  # right padded; the empty response gets nothing
    assert tr.components["one"].tolist() == [[0, 0, 1.0], [0, 0, 0]]

    class Bad(_SentenceIndex):
        def score(self, prompts, responses, segments):
            return [[1.0, 2.0, 3.0] for _ in responses]

    with pytest.raises(ValueError, match="'bad', example 0: 3 values for 1 sentence segments"):
        compute_token_rewards(["a"], rows[:1], tokenizer, {"bad": Bad()})
