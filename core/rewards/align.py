"""Character spans <-> token indices: how a reward on a piece of text reaches a policy token.

What it is: fine-grained rewards are judged on text (a sentence, a sub-sentence) but
PPO needs them on tokens. Wu et al. 2023 (eq. 1) put each segment's reward on the
token where the segment ends. We do this through characters, never through a
second tokenisation of the same text:

1. ``response_token_char_spans`` decodes the tokens the policy generated and gives
   each one its (start, end) span in the decoded text;
2. scorers (possibly with their own tokenizer) judge text and return values per
   character span;
3. ``char_to_token_index`` turns the span's end into the index of the POLICY token
   that holds the segment's last character.

Byte-level BPE (GPT-2, SmolLM2, Llama-3) can split one multi-byte character across
tokens; decoding such a partial token gives U+FFFD. Here the token that completes the
character owns it, and each partial token gets an empty span ``(p, p)`` at the place
the character will start. Special tokens (EOS, padding) are skipped by default and
get an empty span at the end of the text.

What it leaves out: prompts (spans are into the response only), tokenizers without
a fast (Rust) backend for ``text_token_char_spans``.

    text, spans = response_token_char_spans(policy_tokenizer, response_ids)   # spans[k] = (start, end)
    k = char_to_token_index(spans, sentence_end)   # policy token where the sentence ends
"""

from __future__ import annotations

from bisect import bisect_left

Span = tuple[int, int]
_REPLACEMENT = "\ufffd"


def _decode(tokenizer, ids, skip_special_tokens):
    return tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)


def _spans_full_prefix(tokenizer, ids, skip_special_tokens) -> tuple[str, list[Span]]:
    """Reference O(n^2) version: decode every prefix ids[:k+1] (used as the fallback)."""
    text = _decode(tokenizer, ids, skip_special_tokens)
    spans, end = [], 0
    for k in range(len(ids)):
        prefix = _decode(tokenizer, ids[: k + 1], skip_special_tokens).rstrip(_REPLACEMENT)
        new_end = len(prefix) if text.startswith(prefix) else end
        new_end = max(new_end, end)  # never go backwards
        spans.append((end, new_end))
        end = new_end
    if spans and end < len(text):  # whatever is left belongs to the last token
        spans[-1] = (spans[-1][0], len(text))
    return text, spans


def response_token_char_spans(tokenizer, response_token_ids, skip_special_tokens: bool = True) -> tuple[str, list[Span]]:
    """Decoded response text and each token's (start, end) character span in it.

    tokenizer: the POLICY's tokenizer. response_token_ids: the generated token ids of
    one response (list of ints or 1-D tensor), without padding; a final EOS is fine.
    Returns (text, spans) with len(spans) == len(response_token_ids); the spans are
    contiguous and in order, ``"".join(text[s:e] for s, e in spans) == text``; a token
    that decodes to nothing (special token, partial multi-byte character) has s == e.

    Incremental decoding as in text-generation-inference's ``decode_token``: decode a
    short window ``ids[prefix:k+1]`` and take the finished characters it adds over
    ``ids[prefix:read]``; a trailing U+FFFD is an unfinished character. This equals
    decoding every prefix ``ids[:k+1]`` (``_spans_full_prefix``, tested). The
    result is checked against decoding everything at once, with a full-prefix
    decode as the fallback (e.g. for tokenizers that clean up spaces).
    """
    ids = [int(i) for i in (response_token_ids.tolist() if hasattr(response_token_ids, "tolist") else response_token_ids)]
    text = _decode(tokenizer, ids, skip_special_tokens)
    spans: list[Span] = []
    prefix, read, end, emitted = 0, 0, 0, 0  # emitted: chars given to tokens after `read`
    for k in range(len(ids)):
        before = _decode(tokenizer, ids[prefix:read], skip_special_tokens)
        window = _decode(tokenizer, ids[prefix : k + 1], skip_special_tokens)
        finished = window.rstrip(_REPLACEMENT)  # an unfinished character decodes to U+FFFD
        n_new = len(finished) - len(before) - emitted if finished.startswith(before) else 0
        n_new = max(n_new, 0)
        spans.append((end, end + n_new))  # (end, end) for a token that finishes no character
        end, emitted = end + n_new, emitted + n_new
        if finished == window and window.startswith(before):
            prefix, read, emitted = read, k + 1, 0
    if end != len(text) or "".join(text[s:e] for s, e in spans) != text:
        return _spans_full_prefix(tokenizer, ids, skip_special_tokens)
    return text, spans


def text_token_char_spans(tokenizer, text: str, add_special_tokens: bool = False) -> tuple[list[int], list[Span]]:
    """Tokenise ``text`` and return (token_ids, spans) from the fast tokenizer's offsets.

    For scorers that re-tokenise a response with their own (reward-model) tokenizer.
    Spans come from ``return_offsets_mapping=True``: special tokens get (0, 0), and
    some tokenizers (e.g. BERT WordPiece) leave whitespace outside every span.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer; offsets need one (use_fast=True)")
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(map(int, o)) for o in enc["offset_mapping"]]


def char_to_token_index(spans: list[Span], char_end: int) -> int:
    """Index of the token holding the last character of a segment that ends at ``char_end``.

    spans: per-token (start, end) character spans, in order (as returned above).
    char_end: exclusive end of the segment, 1 <= char_end (a segment is non-empty).
    Returns the last non-empty token whose span starts before char_end, which is the
    token containing character char_end - 1 whenever one does; if that character is
    not covered (whitespace skipped by an offsets mapping) it is the closest token
    before it; a char_end at or past the end of the text gives the last non-empty token.
    Empty tokens (partial characters, special tokens) never receive a segment.
    Raises ValueError when no non-empty token starts before char_end.
    """
    starts, index = [], []
    for k, (s, e) in enumerate(spans):
        if e > s:
            starts.append(s)
            index.append(k)
    j = bisect_left(starts, char_end) - 1  # last non-empty token with start < char_end
    if j < 0:
        raise ValueError(f"no token starts before character {char_end} (spans: {spans[:5]}...)")
    return index[j]


def transfer_token_index(from_spans: list[Span], index: int, to_spans: list[Span]) -> int:
    """Map a token index of one tokenizer (e.g. a reward model's) to another's (the policy's).

    The token ``from_spans[index]`` ends at some character; the result is the token of
    ``to_spans`` holding that character. Both span lists must be into the same text.
    """
    s, e = from_spans[index]
    if e <= s:
        raise ValueError(f"token {index} has an empty span {from_spans[index]}; it holds no character")
    return char_to_token_index(to_spans, e)
