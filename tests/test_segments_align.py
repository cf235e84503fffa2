"""Segmentation (pysbd + the FineGrainedRLHF sub-sentence rule) and char -> policy-token mapping, exact numbers.

The expected spans and token indices below were written by hand after printing the
SmolLM2 tokenizer's tokens for TEXT (listed in the comment) and checking them.
"""

import pytest

from core.rewards.align import (
    _spans_full_prefix,
    char_to_token_index,
    response_token_char_spans,
    text_token_char_spans,
    transfer_token_index,
)
from core.rewards.segments import segment_spans, sentence_spans, split_sentence, subsentence_spans

TEXT = "My café opened in 2019, and it was busy from the first day. The 🦜 parrot greets everyone, sings songs, and never sleeps at night. We love it"
# SmolLM2 tokens of TEXT + EOS, with their char spans (k: token (start, end)):
#  0 'My' (0,2)   1 ' café' (2,7)   4 ' ' (17,18) 5-8 '2','0','1','9'   9 ',' (22,23)   18 '.' (58,59)
# 19 ' The' (59,63)  20 ' ' + first bytes of 🦜 (63,64)  21 middle byte (64,64)  22 last byte -> '🦜' (64,65)
# 27 ',' (88,89)  37 '.' (128,129)  38 ' We' (129,132)  39 ' love' (132,137)  40 ' it' (137,140)  41 EOS (140,140)
SENTENCES = [(0, 59), (60, 129), (130, 140)]
SUBSENTENCES = [(0, 23), (24, 59), (60, 89), (90, 129), (130, 140)]


def test_sentence_spans_exact_and_trimmed():
    assert sentence_spans(TEXT) == SENTENCES
    assert [TEXT[s:e] for s, e in SENTENCES][-1] == "We love it"  # no final full stop
    assert sentence_spans("  Hi there.  How are you?\n") == [(2, 11), (13, 25)]
    assert sentence_spans("") == [] and sentence_spans(" \n ") == []
    assert sentence_spans("Yes. Yes. Yes.") == [(0, 4), (5, 9), (10, 14)]  # repeated sentences keep their places


def test_subsentence_rule_of_fine_grained_rlhf():
    assert subsentence_spans(TEXT) == SUBSENTENCES
    # A short piece after a split joins the sub-sentence before it (the previous start moves).
    s = "Alpha beta gamma delta epsilon, zeta eta, theta iota kappa lambda mu nu."
    assert [s[a:b] for a, b in split_sentence(s, 0, len(s))] == [
        "Alpha beta gamma delta epsilon, zeta eta,", "theta iota kappa lambda mu nu."]
    # A sentence that opens with short pieces is not split there.
    s = "Yes, well, the committee finally approved the new budget today."
    assert split_sentence(s, 0, len(s)) == [(0, len(s))]
    # Too few words left after the comma: no split.
    s = "We tried hard for many years, and then won."
    assert split_sentence(s, 0, len(s)) == [(0, len(s))]
    assert segment_spans(TEXT, "sequence") == [(0, 140)]
    with pytest.raises(ValueError, match="unknown reward level"):
        segment_spans(TEXT, "paragraph")


def test_policy_token_spans_with_multibyte_characters(tokenizer):
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(ids) == 42
    text, spans = response_token_char_spans(tokenizer, ids)
    assert text == TEXT
    assert "".join(text[s:e] for s, e in spans) == text
    assert spans[1] == (2, 7) and text[2:7] == " café"  # é is 2 bytes inside one token
    assert spans[20:23] == [(63, 64), (64, 64), (64, 65)]  # 🦜 split over 3 tokens: the last one owns it
    assert text[64:65] == "🦜"
    assert spans[40] == (137, 140) and spans[41] == (140, 140)  # EOS: empty span at the end
    assert (text, spans) == _spans_full_prefix(tokenizer, ids, True)  # incremental == decode every prefix
    # Chinese characters split across byte-level tokens too.
    ids2 = tokenizer("ok 漢字", add_special_tokens=False)["input_ids"]
    assert response_token_char_spans(tokenizer, ids2) == ("ok 漢字", [(0, 2), (2, 3), (3, 3), (3, 4), (4, 5)])


def test_char_to_token_index_segment_ends(tokenizer):
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    _, spans = response_token_char_spans(tokenizer, ids)
    assert [char_to_token_index(spans, e) for _, e in SENTENCES] == [18, 37, 40]  # '.', '.', ' it' (not EOS)
    assert [char_to_token_index(spans, e) for _, e in SUBSENTENCES] == [9, 18, 27, 37, 40]
    assert char_to_token_index(spans, 65) == 22  # a segment ending with the emoji -> the token that completes it
    assert char_to_token_index(spans, 64) == 20  # ending on the space before it
    assert char_to_token_index(spans, 60) == 19  # ending on whitespace -> the token holding that space
    assert char_to_token_index(spans, 999) == 40  # past the end -> last non-empty token
    with pytest.raises(ValueError):
        char_to_token_index(spans, 0)


def test_reward_model_tokenizer_differs_from_policy(tokenizer):
    """A BERT (MiniLM) tokenizer sees other tokens; its judgement still lands on the policy token where the segment ends."""
    from transformers import AutoTokenizer

    from core.rewards.toxicity import minilm_model_dir

    bert = AutoTokenizer.from_pretrained(str(minilm_model_dir()))
    bert_ids, bert_spans = text_token_char_spans(bert, TEXT)
    assert len(bert_ids) == 34
    assert bert.convert_ids_to_tokens(bert_ids[1]) == "cafe" and bert_spans[1] == (3, 7)  # accent stripped, offsets kept
    assert bert_spans[16] == (64, 65)  # the emoji is [UNK] with its char span
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    _, policy_spans = response_token_char_spans(tokenizer, ids)
    # The last BERT token of each sentence -> the policy token holding the same last character.
    assert [char_to_token_index(bert_spans, e) for _, e in SENTENCES] == [14, 30, 33]
    assert [transfer_token_index(bert_spans, k, policy_spans) for k in (14, 30, 33)] == [18, 37, 40]
    assert transfer_token_index(bert_spans, 16, policy_spans) == 22  # [UNK] emoji -> completing byte token
    assert transfer_token_index(bert_spans, 1, policy_spans) == 1  # 'cafe' -> ' café'
